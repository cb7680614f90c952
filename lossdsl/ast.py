"""The frozen AST of a formula and its canonical text.

Nodes are frozen, slotted dataclasses. Positions (``span``) take no part in
equality or hashing, so two parses of the same formula compare equal whatever
their spacing and comments. ``str(node)`` prints canonical source with the
fewest parentheses that keep the tree, so ``parse(str(f)) == f``:

>>> from lossdsl import parse
>>> str(parse("0.7*bce( presence )+0.3*mse(loc)where true(presence)==1  # lesions"))
'0.7 * bce(presence) + 0.3 * mse(loc) where true(presence) == 1'

Sums, products and ``and``/``or`` chains are n-ary, so a long formula is a
wide tree, not a deep one; the parser bounds the depth. Equality, hashing, ``repr``,
``str``, pickling and copying work for a tree of any depth (``lossdsl.frozen``).

A tree the parser built is marked well formed (``mark_well_formed``), as is one that
``lossdsl.trees`` accepted; validation checks any other tree before it uses it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lossdsl.catalog import MATH
from lossdsl.errors import Span
from lossdsl.frozen import Frozen, fold

__all__ = [
    "And",
    "Call",
    "Compare",
    "Cond",
    "Expr",
    "Formula",
    "Keyword",
    "Name",
    "Neg",
    "Node",
    "Not",
    "Number",
    "Or",
    "Product",
    "Sum",
    "Unit",
    "UnitSlice",
    "Where",
    "format_number",
    "has_data",
    "is_marked_well_formed",
    "literal",
    "mark_well_formed",
    "reads_data",
    "walk",
]


_second = operator.itemgetter(1)


class Node(Frozen):
    """Base of every AST node. Equality, hashing, ``repr``, pickling and copying are
    ``lossdsl.frozen``'s, which work at any depth; ``str`` uses a stack, not recursion."""

    __slots__ = ("_well_formed",)
    span: Span | None
    _well_formed: bool

    def children(self) -> tuple[Node, ...]:
        return ()

    def __str__(self) -> str:
        return fold(self, _children, str, _bare)


# -- values -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Number(Node):
    """A numeric literal (never negative when parsed: ``-2`` is ``Neg(Number(2))``)."""

    value: float
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Name(Node):
    """A bare identifier: a parameter, or a unit name bound by the caller."""

    id: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Unit(Node):
    """``u3``: one column of the last axis."""

    index: int
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class UnitSlice(Node):
    """``u[1:5]``: columns ``start`` .. ``stop - 1``."""

    start: int
    stop: int
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Keyword(Node):
    """``name=value`` inside a call."""

    name: str
    value: Expr
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.value,)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Call(Node):
    """``name(args..., kw=value...)``: a loss, a math function, ``pred`` or ``true``."""

    name: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)
    name_span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return self.args + self.kwargs if self.kwargs else self.args


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Neg(Node):
    """Unary minus."""

    operand: Expr
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Sum(Node):
    """``a + b - c``: ``terms`` pairs each operand with its operator; the first is ``+``."""

    terms: tuple[tuple[str, Expr], ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return tuple(map(_second, self.terms))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Product(Node):
    """``a * b / c``: ``factors`` pairs each operand with its operator; the first is ``*``."""

    factors: tuple[tuple[str, Expr], ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return tuple(map(_second, self.factors))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Where(Node):
    """``term where cond``: ``term`` counts only for samples where ``cond`` holds."""

    term: Expr
    cond: Cond
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.term, self.cond)


# -- conditions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Compare(Node):
    """``left op right`` with ``op`` one of ``< <= > >= == !=``."""

    op: str
    left: Expr
    right: Expr
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class And(Node):
    items: tuple[Cond, ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Or(Node):
    items: tuple[Cond, ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Not(Node):
    operand: Cond
    span: Span | None = field(default=None, compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


Expr = Number | Name | Unit | UnitSlice | Call | Neg | Sum | Product | Where
Cond = Compare | And | Or | Not


@dataclass(frozen=True, slots=True)
class Formula:
    """A parsed formula: the root expression and the text it came from.

    Equality and hashing use the tree only; ``source`` is kept so that later
    stages can point at the user's own text. ``str`` gives the canonical text.
    """

    expr: Expr
    source: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return str(self.expr)

    def text(self) -> str:
        """The text errors point into: the original source, or the canonical text."""
        return self.source or str(self)

    def __copy__(self) -> Formula:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Formula:
        return self


def walk(node: Node) -> Iterator[Node]:
    """Every node under ``node`` (itself included), parents before children,
    without recursion."""
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        yield n
        children = n.children()
        if children:
            stack.extend(reversed(children))


# -- canonical text -----------------------------------------------------------

# Precedence of what a node prints as; a child printed below the level its
# parent requires gets parentheses.
_SUM, _WHERE, _PRODUCT, _UNARY, _ATOM = 1, 2, 3, 4, 5
_OR, _AND, _NOT, _CMP = 1, 2, 3, 4


def format_number(value: float) -> str:
    """Shortest text that parses back to ``value``: ``2``, ``0.7``, ``1e-07``."""
    value = float(value)  # a hand-built Number may hold an int
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _prec(node: Node) -> int:
    if isinstance(node, Sum):
        return _SUM
    if isinstance(node, Where):
        return _WHERE
    if isinstance(node, Product):
        return _PRODUCT
    if isinstance(node, Neg) or (isinstance(node, Number) and node.value < 0):
        return _UNARY
    if isinstance(node, Or):
        return _OR
    if isinstance(node, And):
        return _AND
    if isinstance(node, Not):
        return _NOT
    if isinstance(node, Compare):
        return _CMP
    return _ATOM


def reads_data(node: Node) -> bool:
    """Whether ``node`` itself, not counting its children, reads ``y_true`` or
    ``y_pred``: a unit, a ``where`` or a call that is not a math function."""
    if isinstance(node, Unit | UnitSlice | Where):
        return True
    return isinstance(node, Call) and node.name not in MATH


def has_data(node: Node) -> bool:
    """Whether ``node`` depends on the data (is not a constant)."""
    return any(reads_data(n) for n in walk(node))


def literal(node: Node) -> bool | float | None:
    """The value of a literal, as keyword arguments take them: ``true``, ``false``, a number
    or a negated number; ``None`` for anything else."""
    if isinstance(node, Name) and node.id in ("true", "false"):
        return node.id == "true"
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Neg) and isinstance(node.operand, Number):
        return -node.operand.value
    return None


def _wrap(node: Node, text: str, need: int) -> str:
    """``text``, the bare text of ``node``, in parentheses if it prints below ``need``."""
    return f"({text})" if _prec(node) < need else text


def _children(node: object) -> Sequence[object]:
    if not isinstance(node, Node):
        raise TypeError(f"not a lossdsl AST node: {node!r}")
    return node.children()


def _bare(node: Any, texts: list[str]) -> str:
    """The text of ``node`` without outer parentheses, from the bare texts of its children."""
    if isinstance(node, Number):
        return format_number(node.value)
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Unit):
        return f"u{node.index}"
    if isinstance(node, UnitSlice):
        return f"u[{node.start}:{node.stop}]"
    if isinstance(node, Call):
        return f"{node.name}({', '.join(texts)})"  # a keyword prints as name=value
    if isinstance(node, Keyword):
        return f"{node.name}={texts[0]}"
    if isinstance(node, Neg):
        return "-" + _wrap(node.operand, texts[0], _UNARY)
    if isinstance(node, Sum):
        terms, out = node.terms, ""
        for i, ((op, e), bare) in enumerate(zip(terms, texts, strict=True)):
            # `T where C + 1` reads as if 1 were part of C (validation rejects it):
            # a where-term followed by a constant keeps its parentheses.
            closed = isinstance(e, Where) and i + 1 < len(terms) and not has_data(terms[i + 1][1])
            text = f"({bare})" if closed else _wrap(e, bare, _WHERE)
            out += f" {op} {text}" if i else text
        return out
    if isinstance(node, Product):
        out = ""
        for i, ((op, e), bare) in enumerate(zip(node.factors, texts, strict=True)):
            out += f" {op} {_wrap(e, bare, _UNARY)}" if i else _wrap(e, bare, _UNARY)
        return out
    if isinstance(node, Where):
        return f"{_wrap(node.term, texts[0], _PRODUCT)} where {_wrap(node.cond, texts[1], _OR)}"
    if isinstance(node, Compare):
        left, right = (_wrap(e, t, _PRODUCT) for e, t in zip(node.children(), texts, strict=True))
        return f"{left} {node.op} {right}"
    if isinstance(node, Or):
        return " or ".join(_wrap(c, t, _AND) for c, t in zip(node.items, texts, strict=True))
    if isinstance(node, And):
        return " and ".join(_wrap(c, t, _NOT) for c, t in zip(node.items, texts, strict=True))
    if isinstance(node, Not):
        return "not " + _wrap(node.operand, texts[0], _NOT)
    raise TypeError(f"not a lossdsl AST node: {node!r}")


# -- well-formed trees -----------------------------------------------------


def mark_well_formed(node: Node) -> None:
    """Record that the tree under ``node`` is well formed: the parser built it, or
    ``lossdsl.trees`` accepted it. Trees are immutable, so it stays so."""
    object.__setattr__(node, "_well_formed", True)


def is_marked_well_formed(node: Node) -> bool:
    return getattr(node, "_well_formed", False) is True
