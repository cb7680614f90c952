"""Well-formed trees: what a ``Formula`` built without the parser must hold to be validated.

``parse`` builds only well-formed trees, and marks them so. A tree built by hand, or read from a
pickle, is checked here before ``validate`` uses it (as a cache key, among other things). It is
well formed when each node holds what the parser would put there, and ``parse(str(tree))``
gives the tree back:

* each node is a ``lossdsl.ast`` node of its exact class, with an expression where an
  expression goes, a condition where a condition goes, and a ``Keyword`` only in a call's
  ``kwargs``; sequences are tuples; a span is ``None`` or two ints ``(start, end)``;
* a ``Number`` holds a finite float that is not negative (``-2`` is ``Neg(Number(2.0))``),
  or an int that a float holds exactly;
* a ``Name``, and the name of a ``Call`` or a ``Keyword``, is an ASCII identifier and not a
  keyword (``where``, ``and``, ``or``, ``not``); a name such as ``u3`` is a ``Unit``, never
  a ``Name``;
* unit indices and slice bounds are ints from 0 to ``MAX_UNITS``;
* a ``Sum`` or a ``Product`` has at least two operands, each with its operator (``+ -`` or
  ``* /``), the first ``+`` or ``*``, and its first operand is not a chain of its own kind
  (``(a + b) + c`` is the one sum ``a + b + c``); so for ``And`` and ``Or``;
* the tree, and its text, are within the parser's limits (``lossdsl.parser``).

The checks use a stack, not recursion, and do not hash the tree, so a tree of any depth is
answered at once. A problem is a ``LossValidationError`` naming the node and where it stands
(``expr.terms[1][1].args[0]``); a tree beyond a limit is a ``LossSyntaxError``.

>>> from lossdsl import ast
>>> try:
...     check_well_formed(ast.Formula(ast.Call("mse", (ast.Unit(-1),))))
... except LossValidationError as e:
...     print(e.message)
expr.args[0]: a unit index is an int from 0 to 2,147,483,647. Received: Unit(index=-1), which
prints as u-1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import reprlib
from collections.abc import Callable
from typing import Any

from lossdsl import ast
from lossdsl.errors import LossSyntaxError, LossValidationError
from lossdsl.parse_errors import KEYWORDS
from lossdsl.parser import MAX_LENGTH, MAX_TREE_DEPTH, MAX_UNITS, parse

__all__ = ["check_well_formed"]

_EXPR, _COND, _KEYWORD = "an expression", "a condition", "a keyword argument"
_KINDS: dict[str, frozenset[type]] = {
    _EXPR: frozenset(
        {ast.Number, ast.Name, ast.Unit, ast.UnitSlice, ast.Call, ast.Neg}
        | {ast.Sum, ast.Product, ast.Where}
    ),
    _COND: frozenset({ast.Compare, ast.And, ast.Or, ast.Not}),
    _KEYWORD: frozenset({ast.Keyword}),
}
_EXPECTED = {
    _EXPR: "an expression: a Number, Name, Unit, UnitSlice, Call, Neg, Sum, Product or Where",
    _COND: "a condition: a Compare, And, Or or Not",
    _KEYWORD: "a Keyword",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT = re.compile(r"u[0-9]+")
_HINT = "lossdsl.parse(text) builds a well-formed tree; see the rules in lossdsl.trees."

Path = tuple[Any, ...] | None
"""Where a node stands: ``(step, parent's path)``, a step such as ``".args"`` or ``0``."""
Child = tuple[Any, str, tuple[str | int, ...]]
"""A node to check next: the value, what it must be, and the steps from its parent to it."""


class _Problem(Exception):
    """A node's fields are wrong (raised by the rules, reported with the node's path)."""


def check_well_formed(formula: ast.Formula) -> None:
    """Raise ``LossValidationError`` (or ``LossSyntaxError`` for a limit) unless ``formula``
    is well formed (see the module's docstring); a tree the parser built passes at once."""
    source = getattr(formula, "source", "")
    if type(source) is not str:
        raise LossValidationError(
            f"Formula.source must be the formula text, a str. Received: {_shown(source)}.",
            hint=_HINT,
        )
    expr: Any = getattr(formula, "expr", None)
    if type(expr) in _KINDS[_EXPR] and ast.is_marked_well_formed(expr):
        return
    _check_nodes(expr, source)
    text = str(expr)
    if parse(text).expr != expr:  # the nodes' checks leave no such tree: a last safeguard
        raise LossValidationError(
            f"The tree does not print as text that parses back to it: {_short(text)}.",
            hint=_HINT,
        )
    ast.mark_well_formed(expr)


def _check_nodes(expr: object, source: str) -> None:
    size = 0  # at most the length of the tree's text, as MAX_LENGTH counts it
    stack: list[tuple[Any, str, int, Path]] = [(expr, _EXPR, 1, ("expr", None))]
    while stack:
        node, role, depth, path = stack.pop()
        if type(node) not in _KINDS[role]:
            raise _error(f"{_where(path)} must be {_EXPECTED[role]}.", node, path, source)
        if depth > MAX_TREE_DEPTH:
            raise LossSyntaxError(
                f"The tree is more than {MAX_TREE_DEPTH} nodes deep: the parser accepts no "
                "formula nested that deeply.",
                hint=_HINT,
            )
        try:
            spans = [node.span] + ([node.name_span] if isinstance(node, ast.Call) else [])
            if not all(_is_span(s) for s in spans):
                raise _Problem("a span is None or (start, end), two ints, 0 <= start <= end.")
            own, children = _RULES[type(node)](node)
        except _Problem as e:
            raise _error(f"{_where(path)}: {e}", node, path, source) from None
        except AttributeError:  # a node made without __init__
            raise _error(f"{_where(path)} lacks a field.", node, path, source) from None
        size += own
        if size > MAX_LENGTH:
            raise _too_large()
        for child, kind, steps in reversed(children):
            inner = path
            for step in steps:
                inner = (step, inner)
            stack.append((child, kind, depth + 1, inner))


def _too_large() -> LossSyntaxError:
    return LossSyntaxError(
        f"The tree is too large: its text would be longer than {MAX_LENGTH:,} characters, "
        "the parser's limit.",
        hint=_HINT,
    )


def _error(message: str, node: object, path: Path, source: str) -> LossValidationError:
    span = getattr(node, "span", None) if type(node) in _ALL else None
    return LossValidationError(
        f"{message} Received: {_shown(node)}.",
        source=source if source and _is_span(span) else None,
        span=span if _is_span(span) else None,
        hint=_HINT,
    )


def _where(path: Path) -> str:
    steps: list[str] = []
    while path is not None:
        step, path = path
        steps.append(f"[{step}]" if isinstance(step, int) else step)
    return "".join(reversed(steps))


def _is_span(span: object) -> bool:
    if span is None:
        return True
    if type(span) is not tuple or len(span) != 2:
        return False
    start, end = span
    return type(start) is int and type(end) is int and 0 <= start <= end


# -- what each node must hold ----------------------------------------------------------------


def _number(node: ast.Number) -> tuple[int, list[Child]]:
    value: object = node.value
    if type(value) is int:
        try:
            exact = float(value) == value
        except OverflowError:
            exact = False
        if not exact:
            raise _Problem("a number is a float, or an int that a float holds exactly.")
    elif type(value) is not float:
        raise _Problem("a number is a float.")
    elif not math.isfinite(value):
        raise _Problem("a number is finite.")
    if math.copysign(1.0, value) < 0:
        raise _Problem("a number is not negative: -x is Neg(Number(x)).")
    return 1, []


def _name(node: ast.Name) -> tuple[int, list[Child]]:
    _identifier(node.id, "a name")
    if _UNIT.fullmatch(node.id):
        raise _Problem(f"{_short(node.id)} is a unit: a Unit, not a Name.")
    return len(node.id), []


def _unit(node: ast.Unit) -> tuple[int, list[Child]]:
    _column(node.index, "a unit index")
    return 2, []


def _unit_slice(node: ast.UnitSlice) -> tuple[int, list[Child]]:
    _column(node.start, "a slice bound")
    _column(node.stop, "a slice bound")
    return 6, []


def _keyword(node: ast.Keyword) -> tuple[int, list[Child]]:
    _identifier(node.name, "a keyword's name")
    return len(node.name) + 1, [(node.value, _EXPR, (".value",))]


def _call(node: ast.Call) -> tuple[int, list[Child]]:
    _identifier(node.name, "a function's name")
    args, kwargs = _sequence(node.args, "Call.args"), _sequence(node.kwargs, "Call.kwargs")
    children: list[Child] = [(a, _EXPR, (".args", i)) for i, a in enumerate(args)]
    children += [(k, _KEYWORD, (".kwargs", i)) for i, k in enumerate(kwargs)]
    return len(node.name) + 1 + len(children), children


def _neg(node: ast.Neg) -> tuple[int, list[Child]]:
    return 1, [(node.operand, _EXPR, (".operand",))]


def _chain(field: str, ops: tuple[str, ...]) -> Callable[[Any], tuple[int, list[Child]]]:
    """The rule of a ``Sum`` (``field`` ``terms``) or a ``Product`` (``factors``)."""

    def rule(node: ast.Sum | ast.Product) -> tuple[int, list[Child]]:
        pairs = _sequence(getattr(node, field), f"{type(node).__name__}.{field}", at_least=2)
        children: list[Child] = []
        for i, pair in enumerate(pairs):
            if type(pair) is not tuple or len(pair) != 2:
                raise _Problem(
                    f"each of {type(node).__name__}.{field} is a pair (operator, operand)."
                )
            op, operand = pair
            if type(op) is not str or op not in (ops[:1] if i == 0 else ops):
                first = f"; the first is {ops[0]}" if i == 0 else ""
                raise _Problem(
                    f"the operator {type(node).__name__}.{field}[{i}][0] is one of "
                    f"{' '.join(ops)}{first}."
                )
            if i == 0 and type(operand) is type(node):
                raise _Problem(_joined(node, "operand"))
            children.append((operand, _EXPR, (f".{field}", i, 1)))
        return len(pairs) - 1, children

    return rule


def _where_rule(node: ast.Where) -> tuple[int, list[Child]]:
    return 5, [(node.term, _EXPR, (".term",)), (node.cond, _COND, (".cond",))]


def _compare(node: ast.Compare) -> tuple[int, list[Child]]:
    if type(node.op) is not str or node.op not in ("<", "<=", ">", ">=", "==", "!="):
        raise _Problem("a comparison's operator is one of < <= > >= == !=.")
    return len(node.op), [(node.left, _EXPR, (".left",)), (node.right, _EXPR, (".right",))]


def _logical(node: ast.And | ast.Or) -> tuple[int, list[Child]]:
    items = _sequence(node.items, f"{type(node).__name__}.items", at_least=2)
    if type(items[0]) is type(node):
        raise _Problem(_joined(node, "item"))
    return len(items) - 1, [(c, _COND, (".items", i)) for i, c in enumerate(items)]


def _not(node: ast.Not) -> tuple[int, list[Child]]:
    return 3, [(node.operand, _COND, (".operand",))]


def _joined(node: object, what: str) -> str:
    kind = type(node).__name__
    return f"the first {what} is not itself {_a(kind)}: the parser makes the two one {kind}."


def _identifier(value: object, what: str) -> None:
    if type(value) is not str or not _IDENTIFIER.fullmatch(value):
        raise _Problem(
            f"{what} is a str of ASCII letters, digits and _, not starting with a digit."
        )
    if value in KEYWORDS:
        raise _Problem(f"{what} is not a keyword ({', '.join(sorted(KEYWORDS))}).")


def _column(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_UNITS:
        raise _Problem(f"{what} is an int from 0 to {MAX_UNITS:,}.")


def _sequence(value: object, field: str, at_least: int = 0) -> tuple[Any, ...]:
    if type(value) is not tuple:
        raise _Problem(f"{field} is a tuple.")
    if len(value) < at_least:
        raise _Problem(f"{field} holds at least {at_least} items.")
    if len(value) > MAX_LENGTH:  # each item takes at least a character of the text
        raise _too_large()
    return value


_RULES: dict[type, Callable[[Any], tuple[int, list[Child]]]] = {
    ast.Number: _number,
    ast.Name: _name,
    ast.Unit: _unit,
    ast.UnitSlice: _unit_slice,
    ast.Keyword: _keyword,
    ast.Call: _call,
    ast.Neg: _neg,
    ast.Sum: _chain("terms", ("+", "-")),
    ast.Product: _chain("factors", ("*", "/")),
    ast.Where: _where_rule,
    ast.Compare: _compare,
    ast.And: _logical,
    ast.Or: _logical,
    ast.Not: _not,
}
_ALL = frozenset(_RULES)


# -- showing what was received, shortly ------------------------------------------------------


class _Short(reprlib.Repr):
    """``repr``, cut short: a few levels, a few items, short strings; a node shows its
    fields (not its spans) as deep as the levels allow."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxtuple, self.maxlist, self.maxstring, self.maxother = 3, 4, 4, 40, 40

    def repr_instance(self, x: Any, level: int) -> str:
        if type(x) not in _ALL:
            return super().repr_instance(x, level)
        if level <= 0:
            return f"{type(x).__name__}(...)"
        names = [f.name for f in dataclasses.fields(x) if f.compare]
        shown = (f"{n}={self.repr1(getattr(x, n, '?'), level - 1)}" for n in names)
        return f"{type(x).__name__}({', '.join(shown)})"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: object) -> str:
    """``value`` for a message: a short ``repr``, with the printed text of a leaf node, or the
    type of a value that is not a node."""
    kind = _a(type(value).__name__)
    try:
        shown = _short(_Short().repr(value), 160)
    except Exception:  # a value whose repr fails: its type says enough
        return kind
    if type(value) not in _ALL:
        return f"{shown} ({kind})"
    if type(value) in (ast.Number, ast.Name, ast.Unit, ast.UnitSlice):
        with contextlib.suppress(Exception):  # a leaf holding what does not print
            shown += f", which prints as {_short(str(value), 40)}"
    return shown


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'AEIOUaeiou' else 'a'} {noun}"
