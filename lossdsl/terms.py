"""The top-level terms of a formula: each one's sign, constant weight, body and condition.

A formula is a sum of terms, those its outermost ``+`` and ``-`` separate. Every stage that
speaks of a term reads it from here: the checks (a term's weight must not be negative), the
compiler and its metrics (a term's raw and weighted value), ``lossdsl explain`` and the lints.

>>> from lossdsl import parse
>>> second = split_terms(parse("bce(u0) - 0.3*alpha*(mse(u1) where true(u0) == 1)").expr)[1]
>>> second.sign, [str(e) for _, e in second.factors], str(second.body), str(second.cond)
(-1, ['0.3', 'alpha'], 'mse(u1)', 'true(u0) == 1')
>>> second.weight({"alpha": 2.0})
-0.6
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lossdsl import ast
from lossdsl.constants import evaluate

__all__ = ["Factor", "Term", "split_term", "split_terms"]

Factor = tuple[str, ast.Expr]
"""A constant factor of a term and its operator, ``*`` or ``/``."""


@dataclass(frozen=True)
class Term:
    """A top-level term: ``sign * factors * body``, counted only where ``cond`` holds.

    ``levels`` holds the constant factors (numbers, parameters and math of them) by product,
    from the outside in: ``2 * (3 * mse(u0) / 4)`` has the levels ``[*2]`` and ``[*3, /4]``.
    The compiler multiplies each level's factors together before they meet the data.
    """

    expr: ast.Expr
    """The term as written, without the sign that precedes it."""
    sign: int
    levels: tuple[tuple[Factor, ...], ...]
    body: ast.Expr
    """What is left: the per-sample part (the term itself if it is a constant)."""
    cond: ast.Cond | None
    """The condition of a ``where`` term, else ``None``."""

    @property
    def factors(self) -> tuple[Factor, ...]:
        return tuple(f for level in self.levels for f in level)

    def partial_weights(self, params: Mapping[str, object]) -> list[float]:
        """The weight with each level's factors multiplied in, outside in (float64); the last
        is the term's weight. Raises ``constants.Undefined`` where a factor is."""
        weight, out = float(self.sign), []
        for level in self.levels:
            for op, e in level:
                v = evaluate(e, params)
                weight = weight / v if op == "/" else weight * v
            out.append(weight)
        return out

    def weight(self, params: Mapping[str, object]) -> float:
        """The term's constant weight: its sign times its factors."""
        partial = self.partial_weights(params)
        return partial[-1] if partial else float(self.sign)


def split_term(
    expr: ast.Expr, sign: int = 1, reads_data: Callable[[ast.Node], bool] = ast.has_data
) -> Term:
    """``expr`` as a term: signs, ``where`` and constant factors peeled off its body.
    ``reads_data`` tells a per-sample factor from a constant one (the checks know it already).

    Only a product with one per-sample factor is looked into: ``2 * mse(u0) / pred(u1)``
    has the weight 2 and the body ``mse(u0) / pred(u1)``, and a parenthesised sum is one
    body, so ``0.5*beta*(square(mu) + exp(lv) - lv - 1)`` (a KL divergence, never negative)
    has the weight ``0.5*beta``.
    """
    levels: list[tuple[Factor, ...]] = []
    cond: ast.Cond | None = None
    node = expr
    while True:
        if isinstance(node, ast.Neg):
            sign, node = -sign, node.operand
        elif isinstance(node, ast.Where) and cond is None:
            cond, node = node.cond, node.term
        elif isinstance(node, ast.Product):
            data = [(op, e) for op, e in node.factors if reads_data(e)]
            consts = tuple((op, e) for op, e in node.factors if not reads_data(e))
            if not consts or not data:
                break
            levels.append(consts)
            if len(data) == 1 and data[0][0] == "*":
                node = data[0][1]
                continue
            # Several per-sample factors, or one divided by: they stay the body.
            head = data if data[0][0] == "*" else [("*", ast.Number(1.0)), *data]
            node = ast.Product(tuple(head), span=node.span)
            break
        else:
            break
    return Term(expr, sign, tuple(levels), node, cond)


def split_terms(
    expr: ast.Expr, reads_data: Callable[[ast.Node], bool] = ast.has_data
) -> tuple[Term, ...]:
    """The top-level terms of a formula's expression, in the order of the text."""
    if isinstance(expr, ast.Sum):
        return tuple(split_term(e, -1 if op == "-" else 1, reads_data) for op, e in expr.terms)
    return (split_term(expr, 1, reads_data),)
