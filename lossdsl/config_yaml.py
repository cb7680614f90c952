"""YAML config files: PyYAML's safe loader (its C version when there is one), which here
refuses a key given twice in one mapping, and the node tree that locates keys and values.

Every YAML error shows where the YAML went wrong, the line of the file with a caret:

>>> from pathlib import Path
>>> try:
...     load(Path("c.yaml"), "loss:\\n  expression: mse(u0)\\n  expression: bce(u0)\\n")
... except LossValidationError as e:
...     print(e)
c.yaml is not valid YAML: the key 'expression' appears twice in one mapping, on lines 2 and 3.
  line 3, column 3:
      expression: bce(u0)
      ^^^^^^^^^^
  Hint: a key may appear once in a mapping; remove one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lossdsl.errors import LossValidationError

__all__ = ["load", "node_at", "non_string_key"]

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_TAG_NAMES = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true or false",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class _Duplicate(yaml.YAMLError):
    def __init__(self, key: Any, first: yaml.Node, again: yaml.Node) -> None:
        super().__init__()
        self.key, self.first, self.again = key, first, again


class _Loader(_SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Compare the keys as Python does (1, 1.0 and true are one key); merged keys (<<)
        # may be overridden, so only the keys written in this mapping are compared.
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: the base class reports it
                continue
            if first is not key_node:
                raise _Duplicate(key, first, key_node)
        return super().construct_mapping(node, deep=deep)


def _at(message: str, text: str, offset: int, hint: str | None = None) -> LossValidationError:
    offset = max(0, min(offset, len(text)))
    return LossValidationError(message, source=text, span=(offset, offset + 1), hint=hint)


def _hint(text: str, offset: int) -> str | None:
    line = text[text.rfind("\n", 0, offset) + 1 :].split("\n", 1)[0].lstrip()
    if line[:1] in ("+", "-", "*", "/") or line.startswith("where"):
        return (
            "a formula in a | block must not be indented less on a later line than on its "
            "first: start it at the block's indentation, with the lines that begin with + "
            "under it (docs/language.md, 'Comments and layout')."
        )
    return None


def load(path: Path, text: str) -> tuple[Any, yaml.Node | None]:
    """The data in the YAML ``text`` and its node tree (``None`` for an empty file)."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except _Duplicate as e:
        first, again = e.first.start_mark, e.again.start_mark
        lines = f"lines {first.line + 1} and {again.line + 1}"
        if first.line == again.line:
            lines = f"line {first.line + 1}"
        written = [getattr(n, "value", e.key) for n in (e.first, e.again)]
        if written[0] == written[1]:
            what = f"the key {written[0]!r} appears twice in one mapping"
        else:  # 1 and true, 1 and 1.0
            what = f"the keys {written[0]!r} and {written[1]!r} are one key in one mapping"
        error = _at(
            f"{path} is not valid YAML: {what}, on {lines}.",
            text,
            again.index,
            hint="a key may appear once in a mapping; remove one of them.",
        )
        error.span = (again.index, max(again.index + 1, e.again.end_mark.index))
        raise error from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "not YAML"
        if e.context and e.problem and e.context_mark is not None:
            problem += f" ({e.context} on line {e.context_mark.line + 1})"
        if mark is None:
            raise LossValidationError(f"{path} is not valid YAML: {problem}.") from None
        raise _at(
            f"{path} is not valid YAML: {problem}.", text, mark.index, _hint(text, mark.index)
        ) from None
    except yaml.reader.ReaderError as e:
        raise _at(f"{path} is not valid YAML: {e.reason}.", text, e.position) from None
    finally:
        loader.dispose()
    return data, root


def node_at(root: yaml.Node | None, key: str | None, field: str | None = None) -> yaml.Node | None:
    """The node at the dotted ``key`` under ``root`` and, when that is a mapping, the value
    of its ``field``; ``None`` where there is none."""
    node = root
    parts = key.split(".") if key else []
    if field is not None and isinstance(_walk(node, parts), yaml.MappingNode):
        parts.append(field)
    return _walk(node, parts)


def _walk(node: Any, parts: list[str]) -> yaml.Node | None:
    for part in parts:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next(
            (v for k, v in node.value if k.tag == _STR and getattr(k, "value", None) == part),
            None,
        )
    return node if isinstance(node, yaml.Node) else None


def non_string_key(text: str, root: yaml.Node | None, key: str | None, origin: str) -> None:
    """Refuse a key that is not a string (``5:``, ``~:``, ``true:``) in the spec at ``key``,
    with a caret under it: every key of a spec is a field, a unit or a parameter name."""
    spec = node_at(root, key)
    stack: list[tuple[yaml.Node, int]] = [(spec, 0)] if spec is not None else []
    seen = 0
    while stack and seen < 10_000:
        node, depth = stack.pop()
        if not isinstance(node, yaml.MappingNode) or depth > 3:
            continue
        for k, v in node.value:
            seen += 1
            if k.tag == _MERGE:
                continue
            if k.tag != _STR or not isinstance(k, yaml.ScalarNode):
                start, end = k.start_mark.index, k.end_mark.index
                written = text[start:end] or str(getattr(k, "value", ""))
                kind = _TAG_NAMES.get(k.tag, "not a string")
                raise LossValidationError(
                    f"{origin}: the key {written!r} on line {k.start_mark.line + 1} is not a "
                    f"string: YAML reads it as {kind}. The keys of a loss spec (fields, unit "
                    "and parameter names) are strings.",
                    source=text,
                    span=(start, max(end, start + 1)),
                    hint=f"quote it ('{written}': ...) if it is a name, or remove it.",
                )
            stack.append((v, depth + 1))
