"""The value of a constant expression: numbers, parameters and math functions of them.

The checks evaluate constants in float64 before any tensor exists, to reject what float32
cannot compute (``exp(100)``, ``1 / 0``, ``log(-1)``) and to find each term's weight.

>>> from lossdsl import parse
>>> evaluate(parse("2 * max(alpha, 0.5)").expr, {"alpha": 0.25})
1.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from lossdsl import ast
from lossdsl.catalog import MATH

__all__ = [
    "F32_MAX",
    "F32_TINY",
    "Undefined",
    "evaluate",
    "is_real",
    "never_negative",
    "outside_float32",
    "to_float",
]

# The default compute dtype is float32: a literal or weight outside its range would silently
# become inf or 0 in the compiled loss.
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38


def outside_float32(value: float) -> bool:
    """Whether float32 would hold ``value`` as inf, or as 0 (or a subnormal) though it is not."""
    return abs(value) > F32_MAX or 0 < abs(value) < F32_TINY


def is_real(x: object) -> bool:
    """A real number, ``bool`` excluded."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def to_float(x: numbers.Real) -> float:
    """``float(x)``, or an infinity of ``x``'s sign where ``x`` (a 400-digit integer, a
    ``Fraction`` of them) is beyond float64's range."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf  # type: ignore[operator]  # Real orders


class Undefined(Exception):
    """The math is undefined at ``node``; ``message`` says why, or is empty when the cause
    is reported elsewhere (an unknown parameter, a wrong arity)."""

    def __init__(self, node: ast.Node, message: str = "") -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def evaluate(node: ast.Node, params: Mapping[str, object]) -> float:
    """The value of a constant expression; raises ``Undefined`` where the math is."""
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Name):
        value = params.get(node.id)
        number = to_float(value) if is_real(value) else math.nan  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise Undefined(node)  # reported as a parameter problem
        return number
    if isinstance(node, ast.Neg):
        return -evaluate(node.operand, params)
    if isinstance(node, ast.Sum):
        total = 0.0
        for op, e in node.terms:
            v = evaluate(e, params)
            total = total - v if op == "-" else total + v
        return _finite(node, total)
    if isinstance(node, ast.Product):
        out = 1.0
        for op, e in node.factors:
            v = evaluate(e, params)
            if op == "/" and v == 0:
                raise Undefined(e, "Division by zero: this constant divisor is 0.")
            out = out / v if op == "/" else out * v
        return _finite(node, out)
    function = MATH.get(node.name) if isinstance(node, ast.Call) else None
    if isinstance(node, ast.Call) and function is not None and not node.kwargs:
        if len(node.args) != function.arity:
            raise Undefined(node)  # the arity is reported by the checks
        args = [evaluate(a, params) for a in node.args]
        try:
            value = function.py(*args)
        except OverflowError:
            raise Undefined(node, f"{node} overflows to a non-finite value.") from None
        except (ValueError, TypeError):
            shown = ", ".join(ast.format_number(a) for a in args)
            raise Undefined(node, f"{node.name}() is undefined for {shown}.") from None
        return _finite(node, value)
    raise Undefined(node)


def _finite(node: ast.Node, value: float) -> float:
    if not math.isfinite(value):
        raise Undefined(node, "This constant expression overflows to a non-finite value.")
    return value


_NEVER_NEGATIVE = frozenset({"abs", "exp", "sigmoid", "sqrt", "square"})
"""Math functions whose value is never negative, whatever their argument."""


def never_negative(node: ast.Node, params: Mapping[str, object], learned: frozenset[str]) -> bool:
    """Whether a constant expression stays at or above 0 whatever values its ``learned``
    parameters take (the others have their values in ``params``): ``exp(-s)``,
    ``0.5*square(s)``, ``sigmoid(s)/2``; not ``s``, ``1 - s`` or ``log(s)``. Sums of such
    values and products and quotients of them are; so is any expression without a learned
    parameter whose value is not negative."""
    if not any(isinstance(n, ast.Name) and n.id in learned for n in ast.walk(node)):
        try:
            return evaluate(node, params) >= 0
        except Undefined:
            return False
    if isinstance(node, ast.Call):
        if node.name in _NEVER_NEGATIVE:
            return True
        if node.name in ("max", "min"):
            known = [never_negative(a, params, learned) for a in node.args]
            return any(known) if node.name == "max" else all(known)
        return False
    if isinstance(node, ast.Product):
        return all(never_negative(e, params, learned) for _, e in node.factors)
    if isinstance(node, ast.Sum):
        return all(op == "+" and never_negative(e, params, learned) for op, e in node.terms)
    return False  # a learned parameter itself, or its negation
