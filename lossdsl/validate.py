"""Formula plus context (units, parameters) to a checked formula.

``validate`` answers one question before any tensor exists: can this formula
mean something for an output with these units and these parameters? It walks
the AST once, collects *every* problem (each with the span of the offending
text) and raises them together as one ``LossValidationError``.

What it checks: known function names (with "did you mean"); loss calls have
one unit selector and known, well-typed, in-range keywords; units exist and
slices are non-empty; parameters exist and are finite; ``where`` qualifies a
whole additive term (not a function argument, a condition, another ``where``
or a product with a per-sample value); constant weights are finite and, unless
``allow_negative``, no term enters the loss with a negative weight (a negative
term makes the loss unbounded below); the formula depends on the data.

>>> validate("0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1",
...          units={"presence": 0, "loc": 1})
Formula(expr=Sum(...))
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from lossdsl import ast
from lossdsl.catalog import (
    ACCESSORS,
    LOSSES,
    MATH,
    check_identifier,
    function_names,
    registry_version,
)
from lossdsl.errors import LossDSLError, LossValidationError, Span
from lossdsl.parser import parse

__all__ = [
    "Checked",
    "Facts",
    "Term",
    "UnitTable",
    "check",
    "constant_value",
    "split_term",
    "unit_table",
    "validate",
]

UnitsArg = int | Mapping[str, Any] | None


@dataclass(frozen=True)
class UnitTable:
    """The caller's view of the last axis: its width (if known) and unit names."""

    width: int | None = None
    names: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    invalid: frozenset[str] = frozenset()
    """Names given with a binding that was already reported as wrong."""

    def resolve(self, node: ast.Node) -> tuple[int, int] | None:
        """Columns ``(start, stop)`` a selector names, or ``None`` if it names none."""
        if isinstance(node, ast.Unit):
            return node.index, node.index + 1
        if isinstance(node, ast.UnitSlice):
            return node.start, node.stop
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        return None


@dataclass(frozen=True)
class Term:
    """A top-level additive term: ``sign`` (+1/-1) and its expression."""

    sign: int
    expr: ast.Expr


@dataclass(frozen=True)
class Checked:
    """What the compiler needs: a formula proven meaningful in its context."""

    formula: ast.Formula
    units: UnitTable
    params: Mapping[str, float]
    allow_negative: bool
    terms: tuple[Term, ...]
    max_stop: int
    """One past the highest column the formula reads."""
    max_stop_span: Span | None
    """Where the selector reading that column is written."""
    facts: Facts | None = field(default=None, compare=False, repr=False)
    """What the lints look at, gathered by the checks' own walk (``None``: walk again)."""


class Facts(NamedTuple):
    """Nodes of a checked formula that later passes look at, in pre-order."""

    calls: tuple[ast.Call, ...]
    names: frozenset[str]
    """Every bare name used: units, parameters and keyword values."""
    compares: tuple[ast.Compare, ...]
    wheres: tuple[ast.Where, ...]


def _suggest(name: str, candidates: Iterable[str]) -> str:
    pool = list(candidates)
    lower = {c.lower(): c for c in pool}
    if name.lower() in lower:  # MSE, Bce
        return f" Did you mean '{lower[name.lower()]}'?"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _suggest_function(name: str) -> str:
    for entry in LOSSES.values():  # Keras's own names: binary_crossentropy -> bce
        if entry.keras_name and name.lower() in (entry.keras_name, f"{entry.keras_name}_loss"):
            return f" Did you mean '{entry.name}' (keras.losses.{entry.keras_name})?"
    return _suggest(name, function_names())


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# The default compute dtype is float32: a literal or weight outside its range
# would silently become inf or 0 in the compiled loss.
_F32_MAX = 3.4028234663852886e38
_F32_TINY = 1.1754943508222875e-38


def _outside_float32(value: float) -> bool:
    return abs(value) > _F32_MAX or 0 < abs(value) < _F32_TINY


def unit_table(
    units: UnitsArg, locate: Callable[[str], Span | None] = lambda name: None
) -> tuple[UnitTable, list[LossDSLError]]:
    """Check the ``units`` argument: ``None``, a width, or names to an index or
    ``[start, stop]``. ``locate(name)`` gives the span of a name's use, so a
    problem with a unit's binding points at where the formula uses it."""
    problems: list[LossDSLError] = []
    if units is None:
        return UnitTable(), problems
    if isinstance(units, numbers.Integral) and not isinstance(units, bool):
        if units < 1:
            problems.append(
                LossValidationError(f"units must be at least 1. Received: units={units}.")
            )
            return UnitTable(), problems
        return UnitTable(width=int(units)), problems
    if not isinstance(units, Mapping):
        problems.append(
            LossValidationError(
                "units must be the output width (an int) or a mapping of names to an index "
                f"or [start, stop]. Received: {units!r}."
            )
        )
        return UnitTable(), problems
    names: dict[str, tuple[int, int]] = {}
    invalid: set[str] = set()
    for key, value in units.items():
        invalid.add(str(key))
        problem = check_identifier(key, "unit")
        if problem is None and key in function_names():
            problem = f"{key!r} is a function name and cannot name a unit."
        if problem:
            problems.append(LossValidationError(problem, span=locate(str(key))))
            continue
        invalid.discard(key)
        if _is_int(value) and value >= 0:
            names[key] = (int(value), int(value) + 1)
        elif (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(_is_int(v) for v in value)
            and 0 <= value[0] < value[1]
        ):
            names[key] = (int(value[0]), int(value[1]))
        else:
            invalid.add(key)
            problems.append(
                LossValidationError(
                    f"Unit {key!r} must be a column index >= 0 or [start, stop] with "
                    f"0 <= start < stop. Received: {value!r}.",
                    span=locate(key),
                    hint=f"units={{'{key}': 0}} names column 0; "
                    f"units={{'{key}': [2, 6]}} names columns 2 to 5.",
                )
            )
    return UnitTable(names=MappingProxyType(names), invalid=frozenset(invalid)), problems


def _param_problems(
    params: Mapping[str, Any], units: UnitTable, locate: Callable[[str], Span | None]
) -> list[LossDSLError]:
    out: list[LossDSLError] = []
    for key, value in params.items():
        problem = check_identifier(key, "parameter")
        if problem is None and key in units.names:
            problem = f"{key!r} names both a unit and a parameter."
        if problem:
            out.append(LossValidationError(problem, span=locate(str(key))))
        elif not _is_real(value) or not math.isfinite(value):
            out.append(
                LossValidationError(
                    f"Parameter {key!r} must be a finite number. Received: {value!r}.",
                    span=locate(key),
                    hint="parameters are weights; give each a finite float.",
                )
            )
        elif abs(value) > _F32_MAX:
            out.append(
                LossValidationError(
                    f"Parameter {key!r} is {value:g}, beyond the float32 range (about 3.4e38) "
                    "its variable holds, where it would be inf.",
                    span=locate(key),
                )
            )
    return out


class _Undefined(Exception):
    def __init__(self, node: ast.Node, message: str) -> None:
        self.node = node
        self.message = message


def _evaluate(node: ast.Node, params: Mapping[str, float]) -> float:
    """Value of a constant expression; ``_Undefined`` where the math is."""
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Name):
        value = params.get(node.id)
        if not _is_real(value) or not math.isfinite(value):  # type: ignore[arg-type]
            raise _Undefined(node, "")  # reported as a parameter problem
        return float(value)  # type: ignore[arg-type]
    if isinstance(node, ast.Neg):
        return -_evaluate(node.operand, params)
    if isinstance(node, ast.Sum):
        total = 0.0
        for op, e in node.terms:
            v = _evaluate(e, params)
            total = total - v if op == "-" else total + v
        return _finite(node, total)
    if isinstance(node, ast.Product):
        out = 1.0
        for op, e in node.factors:
            v = _evaluate(e, params)
            if op == "/":
                if v == 0:
                    raise _Undefined(e, "Division by zero: this constant divisor is 0.")
                out /= v
            else:
                out *= v
        return _finite(node, out)
    if isinstance(node, ast.Call) and node.name in MATH and not node.kwargs:
        if len(node.args) != MATH[node.name]:
            raise _Undefined(node, "")  # the arity is reported by math_call
        args = [_evaluate(a, params) for a in node.args]
        try:
            value = _MATH_FNS[node.name](*args)
        except OverflowError:
            raise _Undefined(node, f"{node} overflows to a non-finite value.") from None
        except (ValueError, TypeError):
            raise _Undefined(
                node,
                f"{node.name}() is undefined for {', '.join(ast.format_number(a) for a in args)}.",
            ) from None
        return _finite(node, value)
    raise _Undefined(node, "")


def _finite(node: ast.Node, value: float) -> float:
    if not math.isfinite(value):
        raise _Undefined(node, "This constant expression overflows to a non-finite value.")
    return value


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


_MATH_FNS: dict[str, Any] = {
    "abs": abs,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "square": lambda x: x * x,
    "min": min,
    "max": max,
    "clip": _clip,
}


_COMMENT = re.compile(r"#[^\n]*")


class _Checker:
    """One walk over the AST, collecting problems instead of stopping at the first."""

    def __init__(self, units: UnitTable, params: Mapping[str, float], source: str) -> None:
        self.source = source
        self._data: dict[int, bool] = {}  # ast.has_data by id, filled on demand
        self._factors: set[int] = set()  # ids of the factors of products
        # What the lints look at, gathered on the way (see Facts).
        self.calls: list[ast.Call] = []
        self.names: set[str] = set()
        self.compares: list[ast.Compare] = []
        self.wheres: list[ast.Where] = []
        self.units = units
        self.params = params
        self.problems: list[LossDSLError] = []
        self.max_stop = 0
        self.max_stop_span: Span | None = None

    def error(self, node: ast.Node | Span | None, message: str, hint: str | None = None) -> None:
        if any(p.message == message for p in self.problems):
            return  # the same mistake again (a name used twice): report its first use
        span = node.span if isinstance(node, ast.Node) else node
        self.problems.append(LossValidationError(message, span=span, hint=hint))

    def has_data(self, node: ast.Node) -> bool:
        """``ast.has_data(node)``, remembered for the nodes with children. A loss
        or ``pred`` call reads the data whatever its arguments, so most answers
        need no walk below the node asked about."""
        if ast.reads_data(node):
            return True
        children = node.children()
        if not children:
            return False
        known = self._data.get(id(node))
        if known is None:
            known = False
            for child in children:
                if self.has_data(child):
                    known = True
                    break
            self._data[id(node)] = known
        return known

    # -- values ---------------------------------------------------------------

    def expr(  # noqa: PLR0917 - positional flags: the checks' hot path
        self,
        node: ast.Expr,
        linear: bool = True,
        in_arg: bool = False,
        in_cond: bool = False,
        in_where: bool = False,
        in_const: bool = False,
    ) -> None:
        """Check a value. ``linear``: the value's own weight is a constant (a
        ``where`` may stand here); ``in_arg``, ``in_cond``, ``in_where``: inside a
        function's argument, a condition, a ``where`` term; ``in_const``: inside a
        constant already checked as a whole."""
        kind = type(node)
        if kind is ast.Call and node.name in LOSSES:  # type: ignore[union-attr]
            self.calls.append(node)  # type: ignore[arg-type]
            self.loss_call(node)  # type: ignore[arg-type]
            return
        if kind is ast.Number:
            if _outside_float32(node.value):  # type: ignore[union-attr]
                self.error(
                    node,
                    f"The number {ast.format_number(node.value)} is outside the float32 "  # type: ignore[union-attr]
                    "range (about 1.2e-38 to 3.4e38), so the compiled loss would see inf or 0.",
                )
            return
        if kind is ast.Name:
            self.value_name(node)  # type: ignore[arg-type]
            return
        const = not self.has_data(node)
        if const and not in_const:
            self.constant(node)
        if isinstance(node, ast.Call):
            self.call(node, in_cond=in_cond, in_where=in_where, in_const=const)
        elif isinstance(node, ast.Sum):
            terms = node.terms
            for _, e in terms:
                self.expr(e, linear, in_arg, in_cond, in_where, const)
            for i in range(1, len(terms)):
                before, (op, after) = terms[i - 1][1], terms[i]
                if (
                    isinstance(before, ast.Where)
                    and not self.closed(before, after)
                    and not self.has_data(after)
                ):
                    self.error(
                        after,
                        f"A constant follows a condition: '{op} {after}' is a term of its own, "
                        "not part of the comparison before it.",
                        hint="a condition ends at the next + or -. To compare with an "
                        f"expression, parenthesise it: where x > (1 {op} {after}); to add a "
                        "constant, put it first or parenthesise the where-term.",
                    )
        elif isinstance(node, ast.Product):
            factors = node.factors
            data = [self.has_data(e) for _, e in factors]
            per_sample = data.count(True)
            factor_ids = self._factors
            for (op, e), d in zip(factors, data, strict=True):
                factor_ids.add(id(e))
                # This factor's weight is constant when no other factor reads the data.
                others_const = per_sample == (1 if d else 0)
                scaled = linear and op == "*" and others_const
                self.expr(e, scaled, in_arg, in_cond, in_where, const)
                if op == "/" and not d:
                    self.constant_divisor(e)
        elif isinstance(node, ast.Neg):
            self.expr(node.operand, linear, in_arg, in_cond, in_where, const)
        elif isinstance(node, ast.Where):
            self.where(node, linear=linear, in_arg=in_arg, in_cond=in_cond, in_where=in_where)
        elif isinstance(node, ast.Unit | ast.UnitSlice):
            self.error(
                node,
                f"The unit {node} is not a value by itself.",
                hint=f"use pred({node}) or true({node}) for one unit's values, or pass it to a "
                f"loss: mse({node}).",
            )

    def where(
        self,
        node: ast.Where,
        *,
        linear: bool,
        in_arg: bool,
        in_cond: bool,
        in_where: bool,
    ) -> None:
        self.wheres.append(node)
        if in_cond:
            self.error(node, "'where' cannot appear inside a condition.")
        elif in_where:
            self.error(
                node,
                "A 'where' term cannot be nested inside another 'where' term.",
                hint="combine the conditions with 'and': T where A and B.",
            )
        elif in_arg:
            self.error(
                node,
                "'where' cannot appear inside a function argument.",
                hint="'where' qualifies a whole additive term; put it after the call: "
                "abs(pred(u1) - true(u1)) where true(u0) == 1.",
            )
        elif not linear:
            self.error(
                node,
                "A 'where' term cannot be multiplied by, or divide, a per-sample value.",
                hint="its value is a mean over the selected samples; scale it only by "
                "numbers and parameters, or move the factor inside: (x * T) where C.",
            )
        self.expr(node.term, in_where=True, in_arg=in_arg, in_cond=in_cond)
        self.cond(node.cond)

    def closed(self, where: ast.Where, after: ast.Expr) -> bool:
        """Whether a parenthesis ends ``where``'s condition before the term
        ``after``: ``(T where C) + 1`` and ``(S + T where C) + 1`` (the parser
        splices the inner sum into the outer one), unlike ``T where C + 1``."""
        if not where.span or not after.span:
            return False
        if self.source[where.span[0] : where.span[0] + 1] == "(":
            return True
        between = self.source[where.span[1] : after.span[0]]
        return ")" in _COMMENT.sub("", between)

    def constant_divisor(self, node: ast.Expr) -> None:
        try:
            if _evaluate(node, self.params) == 0:
                self.error(node, "Division by zero: this constant divisor is 0.")
        except _Undefined:
            pass  # reported by constant()

    def constant(self, node: ast.Expr) -> None:
        """Report a constant sub-expression whose value is undefined (log(-1), 1/0),
        or, unless it is a factor of a product (those are multiplied together in
        float64 and checked as a term's weight), one float32 cannot hold."""
        try:
            value = _evaluate(node, self.params)
        except _Undefined as u:
            if u.message:
                self.error(u.node, u.message)
            return
        if id(node) not in self._factors and _outside_float32(value):
            self.error(
                node,
                f"The constant {node} is {value:g}, outside the float32 range (about 1.2e-38 "
                "to 3.4e38), so the compiled loss would see inf or 0.",
            )

    def value_name(self, node: ast.Name) -> None:
        self.names.add(node.id)
        if node.id in self.params:
            return
        if node.id in self.units.names:
            self.error(
                node,
                f"'{node.id}' is a unit, not a value.",
                hint=f"use pred({node.id}) or true({node.id}), or pass it to a loss: "
                f"mse({node.id}).",
            )
        elif node.id in ("true", "false"):
            self.error(
                node,
                f"'{node.id}' is a boolean; booleans are only keyword values.",
                hint="write them as keyword arguments, such as bce(u0, from_logits=true); "
                "true(u0) reads unit u0 of y_true.",
            )
        else:
            known = [*self.params, *self.units.names]
            self.error(
                node,
                f"Unknown parameter '{node.id}'.{_suggest(node.id, known)}",
                hint=f"pass its value: params={{'{node.id}': 0.5}}."
                if not _suggest(node.id, known)
                else None,
            )

    # -- calls --------------------------------------------------------------------

    def call(self, node: ast.Call, *, in_cond: bool, in_where: bool, in_const: bool) -> None:
        self.calls.append(node)
        if node.name in LOSSES:
            self.loss_call(node)
        elif node.name in ACCESSORS:
            self.accessor_call(node)
        elif node.name in MATH:
            self.math_call(node, in_cond=in_cond, in_where=in_where, in_const=in_const)
        else:
            self.error(
                node.name_span,
                f"Unknown function '{node.name}'.{_suggest_function(node.name)}",
                hint="losses: " + ", ".join(LOSSES) + "; math: " + ", ".join(MATH) + "; and "
                "pred(), true().",
            )
            for a in node.args:
                if isinstance(a, ast.Unit | ast.UnitSlice | ast.Name):
                    continue  # a selector or a parameter: fine for whatever was meant
                self.expr(a, linear=False, in_arg=True, in_cond=in_cond, in_where=in_where)

    def loss_call(self, node: ast.Call) -> None:
        entry = LOSSES[node.name]
        if not node.args:
            self.error(
                node,
                f"{node.name}() needs the units it applies to.",
                hint=f"write {node.name}(u0), {node.name}(u[0:3]) or {node.name}(name).",
            )
        elif len(node.args) > 1:
            self.error(
                node.args[1],
                f"{node.name}() takes one unit selector, then keyword arguments. "
                f"Received {len(node.args)} positional arguments.",
                hint="select several columns with a slice, u[1:4], or a name bound to a "
                "range, units={'box': [1, 4]}.",
            )
        if node.args:
            cols = self.selector(node.args[0], node.name)
            if cols is not None and cols[1] - cols[0] < entry.min_units:
                self.error(
                    node.args[0],
                    f"{node.name}() needs at least {entry.min_units} units; "
                    f"{node.args[0]} selects {cols[1] - cols[0]}.",
                    hint=f"select a slice: {node.name}(u[0:{entry.min_units}]).",
                )
        seen: set[str] = set()
        for kw in node.kwargs:
            if kw.name in seen:
                self.error(kw, f"Keyword '{kw.name}' is given twice.")
                continue
            seen.add(kw.name)
            spec = entry.keywords.get(kw.name)
            if spec is None:
                known = list(entry.keywords)
                accepted = ", ".join(known) if known else "none"
                self.error(
                    kw,
                    f"{node.name}() has no keyword '{kw.name}'.{_suggest(kw.name, known)}",
                    hint=f"{node.name}() accepts: {accepted}.",
                )
                continue
            self.keyword_value(node.name, kw, spec.type is bool, spec)

    def keyword_value(self, fn: str, kw: ast.Keyword, want_bool: bool, spec: Any) -> None:
        value = kw.value
        if isinstance(value, ast.Name):
            self.names.add(value.id)
        is_bool = isinstance(value, ast.Name) and value.id in ("true", "false")
        number: float | None = None
        if isinstance(value, ast.Number):
            number = value.value
        elif isinstance(value, ast.Neg) and isinstance(value.operand, ast.Number):
            number = -value.operand.value
        if not is_bool and number is None:
            capital = isinstance(value, ast.Name) and value.id in ("True", "False")
            self.error(
                value,
                f"Keyword values must be literal numbers or true/false. Received: "
                f"{kw.name}={value}.",
                hint=f"booleans are lower-case: {kw.name}={value.id.lower()}."  # type: ignore[union-attr]
                if capital
                else None,
            )
        elif want_bool and not is_bool:
            self.error(
                value,
                f"{fn}(..., {kw.name}=...) expects true or false. Received: {value}.",
            )
        elif not want_bool and is_bool:
            self.error(
                value,
                f"{fn}(..., {kw.name}=...) expects {spec.describe_range()}. Received: {value}.",
            )
        elif number is not None and (not spec.accepts(number) or _outside_float32(number)):
            self.error(
                value,
                f"{fn}(..., {kw.name}=...) expects {spec.describe_range()}. "
                f"Received: {ast.format_number(number)}.",
            )

    def selector(self, node: ast.Expr, fn: str) -> tuple[int, int] | None:
        """Check a unit selector; its columns, or ``None`` if it is not one."""
        if isinstance(node, ast.UnitSlice) and node.start >= node.stop:
            lo, hi = sorted((node.start, node.stop))
            self.error(
                node,
                f"The slice {node} selects no units: start must be below stop.",
                hint=f"u[{lo}:{max(hi, lo + 1)}] selects columns {lo} up to, not including, "
                f"{max(hi, lo + 1)}.",
            )
            return None
        if isinstance(node, ast.Name):
            self.names.add(node.id)
            if node.id in self.units.invalid:
                return None  # its binding is already reported
            if node.id not in self.units.names:
                known = list(self.units.names)
                if node.id in self.params:
                    msg = f"'{node.id}' is a parameter, not a unit."
                else:
                    msg = f"Unknown unit '{node.id}'.{_suggest(node.id, known)}"
                hint = (
                    "units are u0, u1, ..., slices u[1:4], or names passed as "
                    f"units={{'{node.id}': 0}}"
                    + (f"; the names defined are {', '.join(known)}." if known else ".")
                )
                self.error(node, msg, hint=hint)
                return None
        elif not isinstance(node, ast.Unit | ast.UnitSlice):
            self.error(
                node,
                f"The first argument of {fn}() must select units. Received: {node}.",
                hint=f"write {fn}(u0), {fn}(u[0:3]) or {fn}(name) with units={{'name': 0}}.",
            )
            return None
        cols = self.units.resolve(node)
        assert cols is not None
        width = self.units.width
        if width is not None and cols[1] > width:
            last = f"u0..u{width - 1}" if width > 1 else "only u0"
            self.error(
                node,
                f"{node} is out of range: the output has {width} unit"
                f"{'s' if width != 1 else ''} ({last}).",
                hint=f"units={width} was given; select columns below {width}.",
            )
        elif cols[1] > self.max_stop:
            self.max_stop, self.max_stop_span = cols[1], node.span
        return cols

    def accessor_call(self, node: ast.Call) -> None:
        what = "y_pred" if node.name == "pred" else "y_true"
        if len(node.args) != 1 or node.kwargs:
            self.error(
                node,
                f"{node.name}() takes exactly one unit and no keywords.",
                hint=f"{node.name}(u1) is unit u1 of {what}, one value per sample.",
            )
        if node.args:
            cols = self.selector(node.args[0], node.name)
            if cols is not None and cols[1] - cols[0] != 1:
                self.error(
                    node.args[0],
                    f"{node.name}() reads one unit; {node.args[0]} selects {cols[1] - cols[0]}.",
                    hint=f"write {node.name}(u{cols[0]}), or use a loss over the slice.",
                )

    def math_call(self, node: ast.Call, *, in_cond: bool, in_where: bool, in_const: bool) -> None:
        arity = MATH[node.name]
        if node.kwargs:
            self.error(node.kwargs[0], f"{node.name}() takes no keyword arguments.")
        if len(node.args) != arity:
            signature = {1: "x", 2: "a, b", 3: "x, lo, hi"}[arity]
            self.error(
                node,
                f"{node.name}() takes {arity} argument{'s' if arity > 1 else ''}, "
                f"{node.name}({signature}). Received {len(node.args)}.",
            )
        for a in node.args:
            self.expr(
                a, linear=False, in_arg=True, in_cond=in_cond, in_where=in_where, in_const=in_const
            )
        if node.name == "clip" and len(node.args) == 3:
            lo, hi = node.args[1], node.args[2]
            if not self.has_data(lo) and not self.has_data(hi):
                try:
                    if _evaluate(lo, self.params) > _evaluate(hi, self.params):
                        self.error(node, "clip(x, lo, hi) needs lo <= hi.")
                except _Undefined:
                    pass

    # -- conditions -----------------------------------------------------------------

    def cond(self, node: ast.Cond) -> None:
        if not self.has_data(node) and not any(isinstance(n, ast.Name) for n in ast.walk(node)):
            self.error(
                node,
                f"The condition '{node}' compares numbers only, so it is always true or "
                "always false.",
                hint="compare per-sample values such as pred(u0) or true(u0), or a parameter "
                "you can change during training.",
            )
            return
        if isinstance(node, ast.Compare):
            self.compares.append(node)
            self.expr(node.left, linear=False, in_cond=True)
            self.expr(node.right, linear=False, in_cond=True)
        elif isinstance(node, ast.And | ast.Or):
            for c in node.items:
                self.cond(c)
        elif isinstance(node, ast.Not):
            self.cond(node.operand)

    # -- weights ----------------------------------------------------------------------

    def weights(self, expr: ast.Expr, allow_negative: bool) -> None:
        terms = expr.terms if isinstance(expr, ast.Sum) else (("+", expr),)
        for op, term in terms:  # term by term, so problems come in the order of the text
            found: list[tuple[ast.Expr, ast.Expr, float]] = []
            self.leaves(term, -1.0 if op == "-" else 1.0, term, found)
            self.signs(found, allow_negative)

    def signs(self, found: list[tuple[ast.Expr, ast.Expr, float]], allow_negative: bool) -> None:
        for leaf, origin, weight in found:
            if weight < 0 and not allow_negative:
                shown = ast.format_number(weight)
                self.error(
                    origin,
                    f"The term '{origin}' enters the loss with a negative weight ({shown}).",
                    hint="a negative term makes the loss unbounded below, so training can "
                    "push it to -infinity; pass allow_negative=True if this is intended "
                    f"(for instance when '{leaf}' is itself never positive).",
                )

    def leaves(
        self,
        node: ast.Expr,
        coef: float,
        origin: ast.Expr,
        found: list[tuple[ast.Expr, ast.Expr, float]],
    ) -> None:
        """Append each per-sample part of the top-level term ``origin`` with
        its constant weight (signs, numbers and parameters multiplied out).

        Only the formula's own sum is split (by ``weights``): a parenthesised
        sum inside a term is one part, so ``0.5*beta*(square(mu) + exp(lv) - lv
        - 1)`` (a KL divergence, never negative) is a term of weight ``0.5*beta``."""
        while True:
            if not self.has_data(node):
                return
            if isinstance(node, ast.Neg):
                node, coef = node.operand, -coef
            elif isinstance(node, ast.Where):
                node = node.term
            elif isinstance(node, ast.Product):
                data = []
                try:
                    for op, e in node.factors:
                        if self.has_data(e):
                            data.append((op, e))
                        else:
                            v = _evaluate(e, self.params)
                            coef = coef / v if op == "/" else coef * v
                except (_Undefined, ZeroDivisionError):
                    return  # reported where the constant is checked
                if not math.isfinite(coef) or _outside_float32(coef):
                    self.error(
                        origin,
                        f"The weight of '{origin}' ({coef:g}) is outside the float32 range.",
                    )
                    return
                if len(data) != 1 or data[0][0] != "*":
                    found.append((node, origin, coef))
                    return
                node = data[0][1]
            else:
                found.append((node, origin, coef))
                return


def split_term(
    expr: ast.Expr,
) -> tuple[list[tuple[str, ast.Expr]], ast.Expr, ast.Cond | None]:
    """A top-level term as ``(scalar factors, body, condition)``: the numbers,
    parameters and signs that weight it, what remains, and its ``where``
    condition if the term is one. ``-0.3*(mse(u1) where C)`` gives
    ``([("*", -1), ("*", 0.3)], mse(u1), C)``."""
    scalars: list[tuple[str, ast.Expr]] = []
    cond: ast.Cond | None = None
    node = expr
    while True:
        if isinstance(node, ast.Neg):
            scalars.append(("*", ast.Number(-1.0)))
            node = node.operand
        elif isinstance(node, ast.Where) and cond is None:
            cond = node.cond
            node = node.term
        elif isinstance(node, ast.Product):
            data = [(op, e) for op, e in node.factors if ast.has_data(e)]
            consts = [(op, e) for op, e in node.factors if not ast.has_data(e)]
            if not consts or not data:
                break
            scalars.extend(consts)
            if len(data) == 1 and data[0][0] == "*":
                node = data[0][1]
                continue
            # Several per-sample factors, or one divided by: they stay the body.
            head = data if data[0][0] == "*" else [("*", ast.Number(1.0)), *data]
            node = ast.Product(tuple(head), span=node.span)
            break
        else:
            break
    return scalars, node, cond


def constant_value(node: ast.Expr, params: Mapping[str, float]) -> float:
    """The value of a constant expression (numbers, parameters, math on them)."""
    try:
        return _evaluate(node, params)
    except _Undefined as u:
        raise LossValidationError(
            u.message or f"{node} is not a constant.", span=node.span
        ) from None


def _top_terms(expr: ast.Expr) -> tuple[Term, ...]:
    if isinstance(expr, ast.Sum):
        return tuple(Term(-1 if op == "-" else 1, e) for op, e in expr.terms)
    return (Term(1, expr),)


def _freeze(value: Any) -> Any:
    """A hashable copy of a units or params argument (``TypeError`` if impossible)."""
    kind = type(value)
    if kind is int or kind is str or kind is float:
        return (kind.__name__, value)
    if kind is dict or isinstance(value, Mapping):
        return tuple(sorted([(str(k), _freeze(v)) for k, v in value.items()]))
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        return tuple([_freeze(v) for v in value])
    hash(value)
    return (type(value).__name__, value)


def check(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
) -> Checked:
    """Validate and return what the compiler needs (see ``validate``).

    Results are cached by the formula's text and the frozen arguments, so a
    service that sees the same spec again answers at once."""
    text = formula if isinstance(formula, str) else getattr(formula, "source", None)
    try:
        frozen_units = _freeze(units)
        key: tuple[Any, ...] = (
            text,
            formula,  # the text again, or the tree (hashed and compared by structure)
            frozen_units,
            _freeze(params or {}),
            allow_negative,
            registry_version(),
        )
    except TypeError:  # an unhashable argument: check it uncached (and report it)
        return _check(formula, units=units, params=params, allow_negative=allow_negative)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _check(
            formula,
            units=units,
            params=params,
            allow_negative=allow_negative,
            units_key=frozen_units,
        )
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()  # a crude bound; a service's specs repeat far less than this
        _CACHE[key] = hit
    return hit


_CACHE: dict[tuple[Any, ...], Checked] = {}
_CACHE_SIZE = 4096
_UNIT_TABLES: dict[Any, UnitTable] = {}
"""Valid ``units`` arguments, frozen, to their table: a service checks many
formulas against the same units."""


def _check(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
    units_key: Any = None,
) -> Checked:
    if isinstance(formula, str):
        formula = parse(formula)
    elif not isinstance(formula, ast.Formula):
        raise TypeError(
            f"validate() expects formula text or a Formula. Received: {type(formula).__name__}."
        )
    if params is not None and not isinstance(params, Mapping):
        raise LossValidationError(
            f"params must map names to numbers. Received: {params!r}.",
            hint="params={'alpha': 0.7}",
        )
    params = {k: float(v) if _is_real(v) else v for k, v in (params or {}).items()}
    table = _UNIT_TABLES.get(units_key) if units_key is not None else None
    problems: list[LossDSLError] = []
    if table is None:
        table, problems = unit_table(units, locate=lambda n: _first_use(formula, n))
        if not problems and units_key is not None:
            if len(_UNIT_TABLES) >= _CACHE_SIZE:
                _UNIT_TABLES.clear()
            _UNIT_TABLES[units_key] = table
    problems += _param_problems(params, table, locate=lambda n: _first_use(formula, n))
    checker = _Checker(table, params, formula.text())
    checker.expr(formula.expr)
    if not checker.has_data(formula.expr):
        checker.error(
            formula.expr,
            "The formula does not depend on the model's output or labels.",
            hint="a constant loss has zero gradient; use a loss such as mse(u0).",
        )
    if not checker.problems:
        checker.weights(formula.expr, allow_negative)
    problems += checker.problems
    if problems:
        raise LossValidationError.collect(problems).with_source(formula.text())
    return Checked(
        formula=formula,
        units=table,
        params=MappingProxyType(params),
        allow_negative=allow_negative,
        terms=_top_terms(formula.expr),
        max_stop=checker.max_stop,
        max_stop_span=checker.max_stop_span,
        facts=Facts(
            tuple(checker.calls),
            frozenset(checker.names),
            tuple(checker.compares),
            tuple(checker.wheres),
        ),
    )


def _first_use(formula: ast.Formula, name: str) -> Span | None:
    """Span of the first ``Name`` node called ``name`` (for problems in the
    ``units`` or ``params`` arguments, which have no text of their own)."""
    for node in ast.walk(formula.expr):
        if isinstance(node, ast.Name) and node.id == name:
            return node.span
    return None


def validate(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
    strict: bool = False,
) -> ast.Formula:
    """Check ``formula`` against the output's ``units`` and the ``params``.

    Args:
        formula: formula text or a parsed ``Formula``.
        units: the output width (``int``), a mapping of unit names to a column
            index or ``[start, stop]``, or ``None`` when the width is only known
            when the loss is called (names are then unavailable).
        params: parameter names to finite float values.
        allow_negative: accept terms with negative constant weights.
        strict: raise the lints (``LD101`` ...) as errors instead of warning
            with them (see ``lossdsl.lints``).

    Returns the parsed ``Formula``. Raises ``LossSyntaxError`` or
    ``LossValidationError`` listing every problem, each with its caret.
    """
    from lossdsl.lints import report

    checked = check(formula, units=units, params=params, allow_negative=allow_negative)
    report(checked, strict=strict)
    return checked.formula
