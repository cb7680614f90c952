"""The ``units`` and ``params`` a formula is checked against.

``units`` is ``None`` (the width is taken from ``y_pred`` when the loss is called), the output
width, or a mapping of unit names to a column index, ``[start, stop]``, or a label layout
``{"pred": S, "true": S}`` whose sides read different columns of ``y_pred`` and ``y_true``.
``params`` maps parameter names to finite numbers. Each problem is reported at the first use of
the name in the formula, since the arguments have no text of their own.

>>> table, problems = unit_table({"presence": 0, "cls": {"pred": [1, 5], "true": 1}})
>>> table.names["cls"], table.names["cls"].sparse, problems
(Binding(true=(1, 2), pred=(1, 5)), True, [])
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from lossdsl import ast
from lossdsl.catalog import check_identifier, lookup
from lossdsl.constants import F32_MAX, is_real, to_float
from lossdsl.errors import LossDSLError, LossValidationError, Span, echo
from lossdsl.parser import MAX_UNITS
from lossdsl.suggest import did_you_mean

__all__ = [
    "WHERE_MEANS",
    "Binding",
    "Columns",
    "Locate",
    "Problem",
    "UnitTable",
    "UnitsArg",
    "WhereMean",
    "bounded",
    "param_problems",
    "unit_table",
]

UnitsArg = int | Mapping[str, Any] | None
WhereMean = Literal["selected", "batch"]
"""How a ``where`` term is averaged: over the samples it selects, or over the whole batch."""
WHERE_MEANS: tuple[str, ...] = get_args(WhereMean)
Locate = Callable[[str], Span | None]
"""The span of a name's first use in the formula, or ``None``."""
Problem = tuple[str, str | None]
"""What is wrong, and a hint on how to fix it."""


Columns = tuple[int, int]
"""A range ``[start, stop)`` of the last axis."""


@dataclass(frozen=True)
class Binding:
    """What a unit stands for on each side: its columns of ``y_true`` and of ``y_pred``.

    A side is ``None`` when the unit has none (``{"true": 5}`` is a column of labels or
    weights the model does not predict). When the true side is one column and the pred side
    ``k >= 2`` columns, the label is a class index (``sparse``)."""

    true: Columns | None
    pred: Columns | None

    @property
    def sparse(self) -> bool:
        return (
            self.true is not None
            and self.pred is not None
            and self.true[1] - self.true[0] == 1
            and self.pred[1] - self.pred[0] >= 2
        )

    @property
    def width(self) -> int:
        """How many units a loss over it compares: the pred side's width (the true side's
        for a unit without one)."""
        side = self.pred or self.true
        assert side is not None
        return side[1] - side[0]


@dataclass(frozen=True)
class UnitTable:
    """The caller's view of the last axis: its width (if known) and unit names."""

    width: int | None = None
    names: Mapping[str, Binding] = field(default_factory=dict)
    invalid: frozenset[str] = frozenset()
    """Names given with a binding that was already reported as wrong."""

    @property
    def layout(self) -> bool:
        """Whether some unit reads other columns of ``y_true`` than of ``y_pred`` (then the
        two need the same leading shape, not the same width)."""
        return any(b.true != b.pred for b in self.names.values())

    def resolve(self, node: ast.Node) -> Binding | None:
        """What a selector names, or ``None`` if it names nothing."""
        if isinstance(node, ast.Unit):
            return Binding((node.index, node.index + 1), (node.index, node.index + 1))
        if isinstance(node, ast.UnitSlice):
            return Binding((node.start, node.stop), (node.start, node.stop))
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        return None

    def select(
        self, node: ast.Expr, fn: str, params: Collection[str]
    ) -> tuple[Binding | None, Problem | None]:
        """What ``node``, the first argument of ``fn()``, selects, and what is wrong with it
        (message and hint). ``params`` are the parameters' names."""
        if isinstance(node, ast.UnitSlice) and node.start >= node.stop:
            lo, hi = sorted((node.start, node.stop))
            return None, (
                f"The slice {node} selects no units: start must be below stop.",
                f"u[{lo}:{max(hi, lo + 1)}] selects columns {lo} up to, not including, "
                f"{max(hi, lo + 1)}.",
            )
        if isinstance(node, ast.Name) and node.id not in self.names:
            if node.id in self.invalid:
                return None, None  # its binding is already reported
            return None, self._unknown(node.id, params)
        binding = self.resolve(node)
        if binding is None:
            return None, (
                f"The first argument of {fn}() must select units. Received: {node}.",
                f"write {fn}(u0), {fn}(u[0:3]) or {fn}(name) with units={{'name': 0}}.",
            )
        width = self.width
        stop = max(binding.true[1] if binding.true else 0, binding.pred[1] if binding.pred else 0)
        if width is not None and stop > width:
            last = f"u0..u{width - 1}" if width > 1 else "only u0"
            return binding, (
                f"{node} is out of range: the output has {width} unit"
                f"{'s' if width != 1 else ''} ({last}).",
                f"units={width} was given; select columns below {width}.",
            )
        return binding, None

    def _unknown(self, name: str, params: Collection[str]) -> Problem:
        """What to say of a unit name that is not in the table: the near unit first, then how
        to declare one."""
        if name in params:
            return f"'{name}' is a parameter, not a unit.", None
        suggestion = did_you_mean(name, self.names)
        message = f"Unknown unit '{name}'.{suggestion}"
        if suggestion:
            return message, None
        known = list(itertools.islice(self.names, _NAMES_SHOWN + 1))
        if not known:
            return message, (
                f"units are u0, u1, ..., slices u[1:4], or names declared as units={{'{name}': 0}}."
            )
        shown = ", ".join(known[:_NAMES_SHOWN])
        if len(known) > _NAMES_SHOWN:
            shown += f", ... ({len(self.names):,} in all)"
        return message, f"the unit names declared are {shown}; or select columns: u0, u[1:4]."


_NAMES_SHOWN = 10


MAX_ITEMS = 100_000
"""Most numbers, names and nested entries a ``units`` or ``params`` argument may hold."""
MAX_NESTING = 4
"""Deepest nesting of a ``units`` or ``params`` argument (a label layout is 3 deep)."""


def bounded(value: object, what: str) -> None:
    """Refuse a ``units`` or ``params`` argument that holds more than ``MAX_ITEMS`` items or
    nests deeper than ``MAX_NESTING``, before anything walks it whole: a YAML alias repeats a
    list without copying it, so 500 bytes can describe billions of items."""
    if type(value) in _SCALARS:
        return
    level: list[object] = [value]
    depth = items = 0
    while level:
        depth += 1
        following: list[object] = []
        for v in level:
            kind = type(v)
            if kind in _SCALARS:
                continue
            if kind is dict or isinstance(v, Mapping):
                children = list(v.values())  # type: ignore[attr-defined]
            elif kind is list or kind is tuple or isinstance(v, list | tuple):
                children = list(v)  # type: ignore[call-overload]
            else:
                continue
            if depth > MAX_NESTING:
                raise LossValidationError(
                    f"{what} is nested more than {MAX_NESTING} levels deep. "
                    f"Received: {echo(value)}.",
                    hint=f"see the {what} argument's forms in the docs.",
                )
            items += len(children)
            if items > MAX_ITEMS:
                raise LossValidationError(
                    f"{what} holds more than {MAX_ITEMS:,} items. Received: {echo(value)}.",
                    hint="a spec this large is almost certainly generated by mistake.",
                )
            following.extend(children)
        level = following


_SCALARS = frozenset({int, float, str, bool, type(None)})


def _is_int(x: object) -> bool:
    # An int is by far the common case, and the ABC check is slow on anything else.
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def _columns(value: object) -> Columns | None:
    """An index or ``[start, stop]`` as columns, or ``None`` if it is neither."""
    if _is_int(value) and 0 <= value < MAX_UNITS:  # type: ignore[operator]
        return int(value), int(value) + 1  # type: ignore[call-overload]
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_is_int(v) for v in value)
        and 0 <= value[0] < value[1] <= MAX_UNITS
    ):
        return int(value[0]), int(value[1])
    return None


def _binding(value: object) -> Binding | None:
    """A units entry as a binding: one range for both sides, or each side of its own."""
    cols = _columns(value)
    if cols is not None:
        return Binding(cols, cols)
    if isinstance(value, Mapping):
        if not value or not set(value) <= {"pred", "true"}:
            return None
        sides = {side: _columns(v) for side, v in value.items()}
        if any(cols is None for cols in sides.values()):
            return None
        return Binding(sides.get("true"), sides.get("pred"))
    return None


def _no_use(name: str) -> Span | None:
    return None


def unit_table(units: UnitsArg, locate: Locate = _no_use) -> tuple[UnitTable, list[LossDSLError]]:
    """The table ``units`` describes, and what is wrong with it."""
    problems: list[LossDSLError] = []
    if units is None:
        return UnitTable(), problems
    if _is_int(units):
        assert isinstance(units, numbers.Integral)
        if not 1 <= int(units) <= MAX_UNITS:
            problems.append(
                LossValidationError(
                    f"units must be between 1 and {MAX_UNITS:,}. Received: units={echo(units)}."
                )
            )
            return UnitTable(), problems
        return UnitTable(width=int(units)), problems
    if not isinstance(units, Mapping):
        problems.append(
            LossValidationError(
                "units must be the output width (an int) or a mapping of names to an index "
                f"or [start, stop]. Received: {echo(units)}."
            )
        )
        return UnitTable(), problems
    names: dict[str, Binding] = {}
    invalid: set[str] = set()
    for key, value in units.items():
        problem = check_identifier(key, "unit")
        if problem is None and lookup(key) is not None:
            problem = f"{echo(key)} is a function name and cannot name a unit."
        if problem:
            if isinstance(key, str):  # a name the formula may use (others cannot be)
                invalid.add(key)
            span = locate(key) if isinstance(key, str) else None
            problems.append(LossValidationError(problem, span=span))
            continue
        binding = _binding(value)
        if binding is None:
            invalid.add(key)
            problems.append(
                LossValidationError(
                    f"Unit {echo(key)} must be a column index >= 0, [start, stop] with "
                    '0 <= start < stop, or {"pred": ..., "true": ...} with one of them or '
                    f"both. Received: {echo(value)}.",
                    span=locate(key),
                    hint=f"units={{'{key}': 0}} names column 0; "
                    f"units={{'{key}': [2, 6]}} names columns 2 to 5; "
                    f"units={{'{key}': {{'pred': [4, 84], 'true': 4}}}} reads class indices "
                    "from y_true column 4 against 80 columns of y_pred.",
                )
            )
            continue
        names[key] = binding
    return UnitTable(names=MappingProxyType(names), invalid=frozenset(invalid)), problems


def param_problems(
    params: Mapping[str, Any], units: UnitTable, locate: Locate = _no_use
) -> list[LossDSLError]:
    """What is wrong with the ``params`` argument: names, and values that are not finite
    numbers within float32's range."""
    out: list[LossDSLError] = []
    for key, value in params.items():
        problem = check_identifier(key, "parameter")
        if problem is None and key in units.names:
            problem = f"{echo(key)} names both a unit and a parameter."
        if problem:
            span = locate(key) if isinstance(key, str) else None
            out.append(LossValidationError(problem, span=span))
            continue
        number = to_float(value) if is_real(value) else math.nan
        if math.isnan(number) or (math.isinf(number) and not isinstance(value, numbers.Rational)):
            out.append(
                LossValidationError(
                    f"Parameter {key!r} must be a finite number. Received: {echo(value)}.",
                    span=locate(key),
                    hint="parameters are weights; give each a finite float.",
                )
            )
        elif abs(number) > F32_MAX:
            out.append(
                LossValidationError(
                    f"Parameter {key!r} is {echo(value)}, beyond the float32 range (about "
                    "3.4e38) its variable holds, where it would be inf.",
                    span=locate(key),
                )
            )
    return out
