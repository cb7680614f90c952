"""Formula plus context (units, parameters) to a checked formula: ``check(...) -> Checked``.

``check`` answers one question before any tensor exists: can this formula mean something for
an output with these units and these parameters? It walks the AST once, collects *every*
problem (each with the span of the offending text) and raises them together as one
``LossValidationError``.

What it checks: known function names (with "did you mean"); calls match their catalogue entry
(``lossdsl.calls``): one unit selector with both sides for a loss, known, well-typed, in-range
keywords; units exist and slices are non-empty; parameters exist and are finite; ``where``
qualifies a whole additive term (not a function argument, a condition, another ``where`` or a
product with a per-sample value); per-position, per-example and batch-wide values meet only as
``lossdsl.levels`` allows; constants are defined and fit float32; unless ``allow_negative``, no
term enters the loss with a negative weight (a negative term makes the loss unbounded below);
the formula depends on the data.

``check`` is not cached; ``lossdsl.validation.check`` is its cached form at the API boundary.

>>> from lossdsl import parse
>>> checked = check(parse("0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"),
...                 units={"presence": 0, "loc": 1})
>>> [term.weight(checked.params) for term in checked.terms]
[0.7, 0.3]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from lossdsl import ast, suggest
from lossdsl.arguments import UnitsArg, UnitTable, param_problems, unit_table
from lossdsl.calls import CallChecks
from lossdsl.constants import (
    Undefined,
    evaluate,
    is_real,
    never_negative,
    outside_float32,
    to_float,
)
from lossdsl.errors import LossDSLError, LossTypeError, LossValidationError, Span, echo
from lossdsl.levels import CONDITION, TOP, Level, Place, node_facts
from lossdsl.suggest import did_you_mean
from lossdsl.terms import Term, split_terms

__all__ = ["Checked", "check"]


@dataclass(frozen=True)
class Checked:
    """A formula proven meaningful for its units and parameters: what the compiler needs."""

    formula: ast.Formula
    units: UnitTable
    params: Mapping[str, float]
    """Every parameter's value: the fixed ones, and the learned ones' initial values."""
    allow_negative: bool
    terms: tuple[Term, ...]
    level: Level
    """``Level.POSITION`` for a formula of per-position terms, ``Level.EXAMPLE`` for one whose
    terms give one value per example (or for the whole batch)."""
    term_levels: tuple[Level, ...]
    stops: Mapping[str, tuple[int, Span | None]]
    """For ``"true"`` and ``"pred"``: one past the highest column the formula reads of
    ``y_true`` and of ``y_pred``, and where the selector reading it is written."""
    learned: frozenset[str] = frozenset()
    """The parameters that training learns (their values in ``params`` are where they start)."""


def check(
    formula: ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    learned: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
) -> Checked:
    """Check ``formula`` against ``units``, ``params`` and the ``learned`` parameters' initial
    values (see ``lossdsl.validate``)."""
    if not isinstance(formula, ast.Formula):
        raise LossTypeError(
            f"validate() expects formula text or a Formula. Received: {type(formula).__name__}."
        )
    if params is not None and not isinstance(params, Mapping):
        raise LossValidationError(
            f"params must map names to numbers. Received: {echo(params)}.",
            hint="params={'alpha': 0.7}",
        ).with_source(formula.text())
    if learned is not None and not isinstance(learned, Mapping):
        raise LossValidationError(
            f"learned must map names to initial values. Received: {echo(learned)}.",
            hint="learned={'s_box': 0.0}",
        ).with_source(formula.text())
    with suggest.limit():
        return _check(formula, units, params or {}, learned or {}, allow_negative)


def _check(
    formula: ast.Formula,
    units: UnitsArg,
    params: Mapping[str, Any],
    learned: Mapping[str, Any],
    allow_negative: bool,
) -> Checked:
    values = {k: to_float(v) if is_real(v) else v for k, v in {**params, **learned}.items()}
    locate = _FirstUse(formula.expr)
    table, problems = unit_table(units, locate=locate)
    problems += param_problems(params, table, locate=locate)
    problems += param_problems(learned, table, locate=locate)
    for name in learned:
        if name in params:
            problems.append(
                LossValidationError(
                    f"{echo(name)} is both a fixed and a learned parameter.",
                    span=locate(name) if isinstance(name, str) else None,
                )
            )
    facts = node_facts(formula.expr)
    checker = _Checker(table, values, facts.data)
    checker.learned = frozenset(k for k in learned if isinstance(k, str))
    checker.value(formula.expr, TOP)
    for node, message, hint in facts.problems:
        checker.error(node, message, hint)
    if not checker.reads_data(formula.expr):
        checker.error(
            formula.expr,
            "The formula does not depend on the model's output or labels.",
            hint="a constant loss has zero gradient; use a loss such as mse(u0).",
        )
    terms = split_terms(formula.expr, checker.reads_data)
    if not checker.problems:
        for term in terms:  # in the order of the text
            checker.weight(term, allow_negative)
    problems += checker.problems
    if problems:
        raise LossValidationError.collect(problems).with_source(formula.text())
    return Checked(
        formula=formula,
        units=table,
        params=MappingProxyType(values),
        allow_negative=allow_negative,
        terms=terms,
        level=Level.EXAMPLE if facts.level(formula.expr) >= Level.EXAMPLE else Level.POSITION,
        term_levels=tuple(facts.level(t.expr) for t in terms),
        stops=MappingProxyType(checker.stops),
        learned=checker.learned,
    )


class _FirstUse:
    """The span of the first use of a bare name in the formula (for problems in the ``units``
    or ``params`` arguments, which have no text of their own); the formula is read once, on
    the first question."""

    def __init__(self, expr: ast.Expr) -> None:
        self._expr = expr
        self._spans: dict[str, Span | None] | None = None

    def __call__(self, name: str) -> Span | None:
        if self._spans is None:
            self._spans = {}
            for n in ast.walk(self._expr):
                if isinstance(n, ast.Name):
                    self._spans.setdefault(n.id, n.span)
        return self._spans.get(name)


class _Checker(CallChecks):
    """One walk over the AST, collecting problems instead of stopping at the first."""

    def __init__(self, units: UnitTable, params: Mapping[str, Any], data: set[int]) -> None:
        self.units = units
        self.params = params
        self.problems: list[LossDSLError] = []
        self._messages: set[str] = set()
        self._data = data
        self.stops = {"true": (0, None), "pred": (0, None)}
        self.learned: frozenset[str] = frozenset()

    def error(self, node: ast.Node | Span | None, message: str, hint: str | None = None) -> None:
        if message in self._messages:
            return  # the same mistake again (a name used twice): report its first use
        self._messages.add(message)
        span = node.span if isinstance(node, ast.Node) else node
        self.problems.append(LossValidationError(message, span=span, hint=hint))

    def reads_data(self, node: ast.Node) -> bool:
        """Whether ``node`` depends on ``y_true`` or ``y_pred`` (is not a constant)."""
        return id(node) in self._data

    # -- values ------------------------------------------------------------------------------

    def value(self, node: ast.Expr, place: Place, *, factor: bool = False) -> None:
        """Check a value standing at ``place``; ``factor``: a factor of a product."""
        if isinstance(node, ast.Number):
            self.number(node)
            return
        if isinstance(node, ast.Name):
            self.value_name(node)
            return
        if not place.in_constant and not self.reads_data(node):
            self.constant(node, factor=factor)
            place = replace(place, in_constant=True)
        match node:
            case ast.Call():
                self.call(node, place)
            case ast.Sum():
                for _, e in node.terms:
                    self.value(e, place)
            case ast.Product():
                self.product(node, place)
            case ast.Neg():
                self.value(node.operand, place)
            case ast.Where():
                self.where(node, place)
            case ast.Unit() | ast.UnitSlice():
                self.error(
                    node,
                    f"The unit {node} is not a value by itself.",
                    hint=f"use pred({node}) or true({node}) for one unit's values, or pass it "
                    f"to a loss: mse({node}).",
                )

    def number(self, node: ast.Number) -> None:
        if outside_float32(node.value):
            self.error(
                node,
                f"The number {ast.format_number(node.value)} is outside the float32 range "
                "(about 1.2e-38 to 3.4e38), so the compiled loss would see inf or 0.",
            )

    def product(self, node: ast.Product, place: Place) -> None:
        per_sample = sum(self.reads_data(e) for _, e in node.factors)
        for op, e in node.factors:
            data = self.reads_data(e)
            # This factor's weight is constant when no other factor reads the data.
            linear = place.linear and op == "*" and per_sample == int(data)
            self.value(
                e, place if linear == place.linear else replace(place, linear=linear), factor=True
            )
            if op == "/" and not data:
                self.constant_divisor(e)

    def where(self, node: ast.Where, place: Place) -> None:
        problem = place.where_problem()
        if problem:
            self.error(node, *problem)
        term = Place(
            in_where=True,
            in_arg=place.in_arg,
            in_cond=place.in_cond,
            in_constant=place.in_constant,
        )
        self.value(node.term, term)
        self.cond(node.cond)

    def constant_divisor(self, node: ast.Expr) -> None:
        try:
            if evaluate(node, self.params) == 0:
                self.error(node, "Division by zero: this constant divisor is 0.")
        except Undefined:
            pass  # reported by constant()

    def constant(self, node: ast.Expr, *, factor: bool) -> None:
        """Report a constant whose value is undefined (log(-1), 1/0), or, unless it is a factor
        of a product (those are multiplied together in float64 and checked as a term's
        weight), one float32 cannot hold."""
        try:
            value = evaluate(node, self.params)
        except Undefined as u:
            if u.message:
                self.error(u.node, u.message)
            return
        if not factor and outside_float32(value):
            self.error(
                node,
                f"The constant {node} is {value:g}, outside the float32 range (about 1.2e-38 "
                "to 3.4e38), so the compiled loss would see inf or 0.",
            )

    def value_name(self, node: ast.Name) -> None:
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
            known = itertools.chain(self.params, self.units.names)
            suggestion = did_you_mean(node.id, (k for k in known if isinstance(k, str)))
            self.error(
                node,
                f"Unknown parameter '{node.id}'.{suggestion}",
                hint=None if suggestion else f"pass its value: params={{'{node.id}': 0.5}}.",
            )

    # -- conditions --------------------------------------------------------------------------

    def cond(self, node: ast.Cond) -> None:
        if not self.reads_data(node) and not any(isinstance(n, ast.Name) for n in ast.walk(node)):
            self.error(
                node,
                f"The condition '{node}' compares numbers only, so it is always true or "
                "always false.",
                hint="compare per-sample values such as pred(u0) or true(u0), or a parameter "
                "you can change during training.",
            )
            return
        match node:
            case ast.Compare():
                self.value(node.left, CONDITION)
                self.value(node.right, CONDITION)
            case ast.And() | ast.Or():
                for c in node.items:
                    self.cond(c)
            case ast.Not():
                self.cond(node.operand)

    # -- weights -----------------------------------------------------------------------------

    def weight(self, term: Term, allow_negative: bool) -> None:
        """A term's weight must fit float32 at each product (the compiler multiplies each
        product's constants into the data), and be negative only with ``allow_negative``.
        A constant term has no weight: an offset changes no gradient."""
        if not self.reads_data(term.body):
            return
        if self.learned and any(
            isinstance(n, ast.Name) and n.id in self.learned
            for _, f in term.factors
            for n in ast.walk(f)
        ):
            self.learned_weight(term, allow_negative)
            return
        try:
            partial = term.partial_weights(self.params)
        except (Undefined, ZeroDivisionError):
            return  # reported where the constant is checked
        for weight in partial:
            if not math.isfinite(weight) or outside_float32(weight):
                self.error(
                    term.expr,
                    f"The weight of '{term.expr}' ({weight:g}) is outside the float32 range.",
                )
                return
        weight = partial[-1] if partial else float(term.sign)
        if weight < 0 and not allow_negative:
            self.error(
                term.expr,
                f"The term '{term.expr}' enters the loss with a negative weight "
                f"({ast.format_number(weight)}).",
                hint="a negative term makes the loss unbounded below, so training can push it "
                "to -infinity; pass allow_negative=True if this is intended (for instance when "
                f"'{term.body}' is itself never positive).",
            )

    def learned_weight(self, term: Term, allow_negative: bool) -> None:
        """A weight that a learned parameter changes must stay at or above 0 whatever value
        training gives it (``constants.never_negative``), unless ``allow_negative``."""
        if allow_negative:
            return
        if term.sign > 0 and all(
            never_negative(f, self.params, self.learned) for _, f in term.factors
        ):
            return
        names = sorted(
            {n.id for n in ast.walk(term.expr) if isinstance(n, ast.Name)} & self.learned
        )
        self.error(
            term.expr,
            f"The weight of '{term.expr}' can turn negative as the learned parameter"
            f"{'s' if len(names) > 1 else ''} {', '.join(names)} change"
            f"{'' if len(names) > 1 else 's'} in training.",
            hint="a weight a learned parameter drives must stay at or above 0: write it as "
            f"exp(-{names[0]}), square({names[0]}) or sigmoid({names[0]}) (uncertainty "
            f"weighting: exp(-{names[0]})*{term.body} + {names[0]}), or pass "
            "allow_negative=True.",
        )
