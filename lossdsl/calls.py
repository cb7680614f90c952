"""The checks of a call against its catalogue entry: a loss's units and keywords, ``pred`` and
``true``, a math function's arity, an aggregate's argument.

``CallChecks`` is one half of the checker (``lossdsl.checker``), which mixes it in; each
method reports its problems through the checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from lossdsl import ast
from lossdsl.arguments import Binding, UnitTable
from lossdsl.catalog import (
    LOSSES,
    MATH,
    Accessor,
    Aggregate,
    KeywordSpec,
    LossEntry,
    MathFunction,
    lookup,
)
from lossdsl.constants import Undefined, evaluate, outside_float32
from lossdsl.errors import Span
from lossdsl.levels import TOP, Place
from lossdsl.suggest import did_you_mean, did_you_mean_function

__all__ = ["CallChecks"]

Sides = tuple[str, ...]


class CallChecks:
    """Checks of calls, mixed into the checker, which provides what is declared here."""

    units: UnitTable
    params: Mapping[str, Any]
    stops: dict[str, tuple[int, Span | None]]
    """For each side (``"true"``, ``"pred"``): one past the highest column read, and where."""

    def error(self, node: ast.Node | Span | None, message: str, hint: str | None = None) -> None:
        raise NotImplementedError

    def value(self, node: ast.Expr, place: Place, *, factor: bool = False) -> None:
        raise NotImplementedError

    def reads_data(self, node: ast.Node) -> bool:
        raise NotImplementedError

    def call(self, node: ast.Call, place: Place) -> None:
        match lookup(node.name):
            case LossEntry() as entry:
                self.loss_call(node, entry, place)
                return
            case Accessor() as accessor:
                self.accessor_call(node, accessor)
                return
            case MathFunction() as function:
                self.math_call(node, function, replace(place, linear=False, in_arg=True))
                return
            case Aggregate() as aggregate:
                self.aggregate_call(node, aggregate)
                return
        self.error(
            node.name_span,
            f"Unknown function '{node.name}'.{did_you_mean_function(node.name)}",
            hint="losses: " + ", ".join(LOSSES) + "; math: " + ", ".join(MATH) + "; "
            "aggregates: sum, mean; and pred(), true().",
        )
        args = replace(place, linear=False, in_arg=True)
        for a in node.args:
            if not isinstance(a, ast.Unit | ast.UnitSlice | ast.Name):
                self.value(a, args)  # a selector or a parameter: fine for either

    def selector(self, node: ast.Expr, fn: str, sides: Sides) -> Binding | None:
        """Check a unit selector and note the columns it reads on ``sides``; what it selects,
        or ``None`` if it is not a selector."""
        binding, problem = self.units.select(node, fn, self.params)
        if problem is not None:
            self.error(node, *problem)
        elif binding is not None:
            for side in sides:
                cols = binding.true if side == "true" else binding.pred
                if cols is not None and cols[1] > self.stops[side][0]:
                    self.stops[side] = (cols[1], node.span)
        return binding

    def loss_call(self, node: ast.Call, entry: LossEntry, place: Place) -> None:
        name = node.name
        if not node.args:
            self.error(
                node,
                f"{name}() needs the units it applies to.",
                hint=f"write {name}(u0), {name}(u[0:3]) or {name}(name).",
            )
        elif len(node.args) > 1:
            self.error(
                node.args[1],
                f"{name}() takes one unit selector, then keyword arguments. "
                f"Received {len(node.args)} positional arguments.",
                hint="select several columns with a slice, u[1:4], or a name bound to a "
                "range, units={'box': [1, 4]}.",
            )
        binding = self.selector(node.args[0], name, ("true", "pred")) if node.args else None
        if binding is not None:
            self.sides(node, binding, entry)
        self.keywords(node, entry.keywords, binding)
        ignore = next((k for k in node.kwargs if k.name == "ignore_class"), None)
        problem = place.where_problem() if ignore is not None else None
        if ignore is not None and problem is not None:
            message, hint = problem
            self.error(
                ignore,
                f"{name}(..., ignore_class=...) selects positions as 'where' does: "
                f"{message[0].lower()}{message[1:]}",
                hint=hint,
            )

    def sides(self, node: ast.Call, binding: Binding, entry: LossEntry) -> None:
        """A loss compares ``y_true`` with ``y_pred``: the unit needs both sides, of one width,
        unless its labels are class indices."""
        arg, name = node.args[0], node.name
        missing = "true" if binding.true is None else "pred" if binding.pred is None else None
        if missing is not None:
            self.error(
                arg,
                f"{name}() compares y_true with y_pred, but unit '{arg}' has no {missing} side.",
                hint=f"give it both sides, or read the one it has with "
                f"{'pred' if missing == 'true' else 'true'}({arg}).",
            )
            return
        assert binding.true is not None and binding.pred is not None
        true_width = binding.true[1] - binding.true[0]
        if not binding.sparse and true_width != binding.width:
            self.error(
                arg,
                f"The sides of {arg} differ in width: {true_width} columns of y_true against "
                f"{binding.width} of y_pred.",
                hint="a loss compares them unit by unit; one true column of class indices "
                "against several pred columns is the other layout lossdsl reads.",
            )
        elif binding.width < entry.min_units:
            self.error(
                arg,
                f"{name}() needs at least {entry.min_units} units; {arg} selects {binding.width}.",
                hint=f"select a slice: {name}(u[0:{entry.min_units}]).",
            )

    def keywords(
        self, node: ast.Call, specs: Mapping[str, KeywordSpec], binding: Binding | None
    ) -> None:
        name, seen = node.name, set()
        for kw in node.kwargs:
            if kw.name in seen:
                self.error(kw, f"Keyword '{kw.name}' is given twice.")
                continue
            seen.add(kw.name)
            spec = specs.get(kw.name)
            if spec is None:
                known = list(specs)
                self.error(
                    kw,
                    f"{name}() has no keyword '{kw.name}'.{did_you_mean(kw.name, known)}",
                    hint=f"{name}() accepts: {', '.join(known) if known else 'none'}.",
                )
                continue
            self.keyword_value(name, kw, spec)
            sparse = binding is not None and binding.sparse
            if spec.labels == "class indices" and binding is not None and not sparse:
                self.error(
                    kw,
                    f"{name}(..., {kw.name}=...) applies to class-index labels, and "
                    f"{node.args[0]} has one label per unit.",
                    hint="class-index labels are a unit whose true side is one column and "
                    "whose pred side has several: units={'cls': {'pred': [0, 10], 'true': 0}}.",
                )
            elif spec.labels == "one-hot" and sparse:
                self.error(
                    kw,
                    f"{name}(..., {kw.name}=...) needs one label per unit, and the labels of "
                    f"{node.args[0]} are class indices.",
                )

    def keyword_value(self, fn: str, kw: ast.Keyword, spec: KeywordSpec) -> None:
        given = ast.literal(kw.value)
        if given is None:
            capital = isinstance(kw.value, ast.Name) and kw.value.id in ("True", "False")
            self.error(
                kw.value,
                f"Keyword values must be literal numbers or true/false. Received: "
                f"{kw.name}={kw.value}.",
                hint=f"booleans are lower-case: {kw.name}={str(kw.value).lower()}."
                if capital
                else None,
            )
        elif not spec.accepts(given) or (not isinstance(given, bool) and outside_float32(given)):
            self.error(
                kw.value,
                f"{fn}(..., {kw.name}=...) expects {spec.describe_range()}. Received: {kw.value}.",
            )

    def accessor_call(self, node: ast.Call, accessor: Accessor) -> None:
        name, side = node.name, "pred" if accessor.reads_pred else "true"
        what = f"y_{side}"
        if len(node.args) != 1 or node.kwargs:
            self.error(
                node,
                f"{name}() takes exactly one unit and no keywords.",
                hint=f"{name}(u1) is unit u1 of {what}, one value per sample.",
            )
        binding = self.selector(node.args[0], name, (side,)) if node.args else None
        if binding is None:
            return
        arg, cols = node.args[0], binding.pred if accessor.reads_pred else binding.true
        if cols is None:
            self.error(
                arg,
                f"{name}({arg}) reads {what}, but unit '{arg}' has no {side} side.",
                hint=f"declare its columns of {what}: units={{'{arg}': {{'{side}': 0}}}}.",
            )
        elif cols[1] - cols[0] != 1:
            self.error(
                arg,
                f"{name}() reads one unit; {arg} selects {cols[1] - cols[0]}.",
                hint=f"write {name}(u{cols[0]}), or use a loss over the slice.",
            )

    def math_call(self, node: ast.Call, function: MathFunction, args: Place) -> None:
        if node.kwargs:
            self.error(node.kwargs[0], f"{node.name}() takes no keyword arguments.")
        if len(node.args) != function.arity:
            plural = "s" if function.arity > 1 else ""
            self.error(
                node,
                f"{node.name}() takes {function.arity} argument{plural}, "
                f"{function.signature}. Received {len(node.args)}.",
            )
        for a in node.args:
            self.value(a, args)
        if node.name == "clip" and len(node.args) == 3:
            lo, hi = node.args[1], node.args[2]
            if not self.reads_data(lo) and not self.reads_data(hi):
                try:
                    if evaluate(lo, self.params) > evaluate(hi, self.params):
                        self.error(node, "clip(x, lo, hi) needs lo <= hi.")
                except Undefined:
                    pass

    def aggregate_call(self, node: ast.Call, aggregate: Aggregate) -> None:
        if len(node.args) != 1:
            self.error(
                node,
                f"{node.name}() takes one argument, the per-position value it aggregates. "
                f"Received {len(node.args)}.",
                hint=f"{node.name}(bce(mask)), or {node.name}(1 where true(u0) > 0) to count.",
            )
        self.keywords(node, aggregate.keywords, None)
        for arg in node.args[:1]:
            self.value(arg, TOP)  # a formula of its own: a where may stand in it
