"""Loss specs in config files: ``load_spec(path, key=None) -> LossSpec``.

A spec in a file is the bare formula string, or a mapping with the
``LossSpec`` fields. ``key`` is a dotted path to it inside a larger config.
YAML (``.yaml``, ``.yml``, read with PyYAML's safe loader), TOML (``.toml``) and
JSON (``.json``) are read. Every problem is a ``LossDSLError`` that names the
file and the key, and points at the formula's line in the file with a caret.
No Keras is imported.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lossdsl.errors import LossDSLError, LossValidationError
from lossdsl.suggest import did_you_mean

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["load_spec"]

_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


def _read(path: Path, text: str) -> Any:
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LossValidationError(
            f"Cannot tell the format of {path}: the suffix must be one of "
            f"{', '.join(sorted(_FORMATS))}. Received: {path.suffix or 'none'}."
        )
    try:
        if kind == "YAML":
            import yaml

            return yaml.safe_load(text)
        if kind == "TOML":
            return tomllib.loads(text)
        return json.loads(text)
    except Exception as e:  # every parser's own error, in our words
        raise LossValidationError(f"{path} is not valid {kind}: {e}") from None


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
            available = f" Keys there: {', '.join(keys)}." if keys else " It is not a mapping."
            raise LossValidationError(
                f"{path} has no key '{part}' under {here} (looking for '{key}').{hint}{available}"
            )
        node = node[part]
        walked.append(part)
    return node


def _formula_line(text: str, path: Path, key: str | None, expression: str) -> int | None:
    """The line of the file (1-based) on which the formula's first line stands."""
    if _FORMATS.get(path.suffix.lower()) == "YAML":
        line = _yaml_line(text, key)
        if line is not None:
            return line
    first = expression.strip("\n").split("\n", 1)[0].strip()
    if not first:
        return None
    at = text.find(first)
    if at == -1 and _FORMATS.get(path.suffix.lower()) == "JSON":
        at = text.find(json.dumps(first)[1:-1])
    return None if at == -1 else text.count("\n", 0, at) + 1


def _yaml_line(text: str, key: str | None) -> int | None:
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:  # pragma: no cover - safe_load already succeeded
        return None
    for part in (key or "").split(".") if key else []:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        if node is None:
            return None
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if getattr(k, "value", None) == "expression"), None)
    if not isinstance(node, yaml.ScalarNode):
        return None
    # A block scalar (| or >) starts on the line after its indicator.
    return node.start_mark.line + (2 if node.style in ("|", ">") else 1)


def load_spec(path: str | Path, key: str | None = None) -> LossSpec:
    """Read a ``LossSpec`` from a YAML, TOML or JSON file.

    >>> import pathlib, tempfile
    >>> cfg = pathlib.Path(tempfile.mkdtemp()) / "train.toml"
    >>> _ = cfg.write_text('[training.loss]\\n'
    ...                    'expression = "bce(p) + mse(loc) where true(p) == 1"\\n'
    ...                    'units = {p = 0, loc = 1}\\n')
    >>> str(load_spec(cfg, key="training.loss").formula)
    'bce(p) + mse(loc) where true(p) == 1'
    """
    from lossdsl.spec import LossSpec

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LossValidationError(f"Cannot read {path}: {e.strerror or e}.") from None
    found = _lookup(_read(path, text), key, path)
    origin = f"{path}" + (f", key {key}" if key else "")
    if isinstance(found, str):
        found = {"expression": found}
    if not isinstance(found, Mapping):
        raise LossValidationError(
            f"The loss spec in {origin} must be the formula text or a mapping with "
            f"'expression'. Received: {type(found).__name__}."
        )
    expression = found.get("expression")
    line = _formula_line(text, path, key, expression) if isinstance(expression, str) else None
    try:
        return LossSpec.model_validate(dict(found))
    except LossDSLError as e:
        raise e.in_file(origin, line) from None
