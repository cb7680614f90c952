"""Loss specs in config files: ``load_spec(path, key=None) -> LossSpec``.

A spec in a file is the bare formula string, or a mapping with the
``LossSpec`` fields. ``key`` is a dotted path to it inside a larger config.
YAML (``.yaml``, ``.yml``, read with PyYAML's safe loader), TOML (``.toml``) and
JSON (``.json``) are read (see ``lossdsl.config_formats``). Every problem is a
``LossDSLError`` that names the file and the key, and points at the formula's
line in the file with a caret. No Keras is imported.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lossdsl.config_formats import FORMATS, MAX_CONFIG_BYTES, Document, parse_document, read_text
from lossdsl.errors import LossDSLError, LossValidationError
from lossdsl.suggest import did_you_mean

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["MAX_CONFIG_BYTES", "MAX_SPEC_VALUES", "load_spec"]

MAX_SPEC_VALUES = 100_000
"""Most values (mappings, lists and scalars, each alias counted again) the spec itself may
hold; YAML aliases can make a small file stand for a far larger structure."""

_SHOWN_KEYS = 20  # keys listed in "Keys there: ..."
_SEARCHED = 10_000  # mapping entries looked at for a spec under another key
_SEARCH_DEPTH = 4  # and how deep


def _lookup(data: Any, key: str | None, path: Path) -> Any:
    if not key:
        return data
    node = data
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            here = ".".join(walked) or "the top level"
            keys = [str(k) for k in node] if isinstance(node, Mapping) else []
            hint = did_you_mean(part, keys)
            shown = ", ".join(keys[:_SHOWN_KEYS])
            if len(keys) > _SHOWN_KEYS:
                shown += f", ... ({len(keys):,} in all)"
            available = f" Keys there: {shown}." if keys else " It is not a mapping."
            raise LossValidationError(
                f"{path} has no key '{part}' under {here} (looking for '{key}').{hint}{available}"
            )
        node = node[part]
        walked.append(part)
    return node


def _too_many_values(data: Any, cap: int) -> bool:
    """Whether ``data`` holds more than ``cap`` values, counting a shared one each time it
    is reached (so a recursive structure always has too many). Children are counted as they
    are queued, so the work and the queue stay within ``cap``."""
    stack, count = [data], 1
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple):
            children = list(value)
        else:
            continue
        count += len(children)
        if count > cap:
            return True
        stack.extend(children)
    return False


def _specs_inside(data: Mapping[Any, Any]) -> list[str]:
    """The dotted keys of mappings with an ``expression`` inside ``data``, nearest first:
    breadth-first, at most ``_SEARCH_DEPTH`` keys down and ``_SEARCHED`` entries in all."""
    found: list[str] = []
    queue: deque[tuple[tuple[str, ...], Mapping[Any, Any]]] = deque([((), data)])
    seen = 0
    while queue and seen < _SEARCHED and len(found) < 3:
        keys, mapping = queue.popleft()
        for name, value in mapping.items():
            seen += 1
            if seen > _SEARCHED:
                break
            if not isinstance(name, str) or "." in name or not isinstance(value, Mapping):
                continue
            inner = (*keys, name)
            if "expression" in value:
                found.append(".".join(inner))
            elif len(inner) < _SEARCH_DEPTH:
                queue.append((inner, value))
    return found


def _formula_line(doc: Document, path: Path, key: str | None, expression: str) -> int | None:
    """The line of the file (1-based) on which the formula's first line stands."""
    node = None
    if doc.root is not None:
        from lossdsl import config_yaml

        node = config_yaml.node_at(doc.root, key, "expression")
    if node is not None:
        # A block scalar (| or >) starts on the line after its indicator.
        return int(node.start_mark.line) + (2 if getattr(node, "style", None) in ("|", ">") else 1)
    first = expression.strip("\n").split("\n", 1)[0].strip()
    if not first:
        return None
    text = doc.text
    at = text.find(first)
    if at == -1 and FORMATS.get(path.suffix.lower()) == "JSON":
        at = text.find(json.dumps(first)[1:-1])
    return None if at == -1 else text.count("\n", 0, at) + 1


def read_spec(path: str | Path, key: str | None = None, *, key_syntax: str) -> LossSpec:
    """``load_spec``, with the way a key is passed in hints written as ``key_syntax``
    (``'key="{}"'`` for ``load_spec``, ``"--key {}"`` for the command line)."""
    from lossdsl.spec import LossSpec

    path = Path(path)
    doc = parse_document(path, read_text(path))
    found = _lookup(doc.data, key, path)
    origin = f"{path}" + (f", key {key}" if key else "")
    if isinstance(found, str):
        found = {"expression": found}
    if not isinstance(found, Mapping):
        raise LossValidationError(
            f"The loss spec in {origin} must be the formula text or a mapping with "
            f"'expression'. Received: {type(found).__name__}."
        )
    if _too_many_values(found, MAX_SPEC_VALUES):
        raise LossValidationError(
            f"The loss spec in {origin} holds more than {MAX_SPEC_VALUES:,} values (counting "
            "each use of a YAML alias).",
            hint="a loss spec is a formula and a few small mappings.",
        )
    if doc.root is not None:
        from lossdsl import config_yaml

        config_yaml.non_string_key(doc.text, doc.root, key, origin)
    if "expression" not in found:
        inside = _specs_inside(found)
        if inside:
            full = [f"{key}.{k}" if key else k for k in inside]
            where = f"key {key}" if key else "the top level"
            raise LossValidationError(
                f"{path} has no loss spec at {where}: there is no 'expression' there, but "
                f"{', '.join(full)} {'has' if len(full) == 1 else 'each have'} one.",
                hint=f"pass {key_syntax.format(full[0])} to read the spec at {full[0]}.",
            )
    expression = found.get("expression")
    line = _formula_line(doc, path, key, expression) if isinstance(expression, str) else None
    try:
        return LossSpec.model_validate(dict(found))
    except LossDSLError as e:
        raise e.in_file(origin, line) from None


def load_spec(path: str | Path, key: str | None = None) -> LossSpec:
    """Read a ``LossSpec`` from a YAML, TOML or JSON file.

    The file must be a regular file of at most ``MAX_CONFIG_BYTES`` bytes of UTF-8 text,
    without a key twice in one mapping.

    >>> import pathlib, tempfile
    >>> cfg = pathlib.Path(tempfile.mkdtemp()) / "train.toml"
    >>> _ = cfg.write_text('[training.loss]\\n'
    ...                    'expression = "bce(p) + mse(loc) where true(p) == 1"\\n'
    ...                    'units = {p = 0, loc = 1}\\n')
    >>> str(load_spec(cfg, key="training.loss").formula)
    'bce(p) + mse(loc) where true(p) == 1'
    """
    return read_spec(path, key, key_syntax='key="{}"')
