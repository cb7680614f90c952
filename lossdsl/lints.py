"""Lints: formulas that are valid but probably not what was meant.

Each lint has a stable code. ``validate`` warns with a ``LossDSLWarning`` by
default and raises them as a ``LossValidationError`` with ``strict=True``;
``lossdsl check --strict`` exits 1 on them.

=======  ================================================================
LD101    a term conditioned on a prediction of a unit the same term trains
LD102    a condition on a probability unit that can never or always hold
LD103    a declared unit name the formula never uses
LD104    a declared parameter the formula never uses
LD105    the same top-level term written twice
=======  ================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

from lossdsl import ast
from lossdsl.catalog import LOSSES
from lossdsl.errors import LossValidationError
from lossdsl.validate import Checked, Facts

__all__ = ["CODES", "LossDSLWarning", "lint", "report"]

CODES = {
    "LD101": "a term conditioned on a prediction of a unit it trains",
    "LD102": "a condition on a probability unit that never or always holds",
    "LD103": "a declared unit name that is never used",
    "LD104": "a declared parameter that is never used",
    "LD105": "the same term written twice",
}
_PROBABILITY_LOSSES = ("bce", "focal", "cce")


class LossDSLWarning(UserWarning):
    """A lint, as a warning; ``str`` shows the code, the message and the caret."""


def _columns(checked: Checked, node: ast.Node, fn: tuple[str, ...]) -> set[int]:
    """Columns read by calls named in ``fn`` under ``node``."""
    out: set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and n.name in fn and n.args:
            cols = checked.units.resolve(n.args[0])
            if cols is not None:
                out.update(range(*cols))
    return out


def _trained(checked: Checked, node: ast.Node) -> set[int]:
    return _columns(checked, node, (*LOSSES, "pred"))


def _probability_units(checked: Checked, calls: Iterable[ast.Call]) -> set[int]:
    """Columns that a ``bce``, ``focal`` or ``cce`` call reads as probabilities."""
    out: set[int] = set()
    for n in calls:
        if n.name in _PROBABILITY_LOSSES and n.args:
            logits = any(
                k.name == "from_logits" and isinstance(k.value, ast.Name) and k.value.id == "true"
                for k in n.kwargs
            )
            cols = checked.units.resolve(n.args[0])
            if cols is not None and not logits:
                out.update(range(*cols))
    return out


def _number(node: ast.Expr) -> float | None:
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Neg) and isinstance(node.operand, ast.Number):
        return -node.operand.value
    return None


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _verdict(op: str, c: float) -> str | None:
    """For x in [0, 1]: 'never' or 'always' when ``x op c`` is decided, else None."""
    never = {
        ">": c >= 1, ">=": c > 1, "<": c <= 0, "<=": c < 0, "==": c < 0 or c > 1, "!=": False,
    }  # fmt: skip
    always = {
        ">": c < 0, ">=": c <= 0, "<": c > 1, "<=": c >= 1, "==": False, "!=": c < 0 or c > 1,
    }  # fmt: skip
    return "never" if never[op] else "always" if always[op] else None


def lint(checked: Checked) -> list[LossValidationError]:
    """Every lint of a checked formula, each a ``LossValidationError`` with ``code``."""
    return list(_lints(checked))


def _make(code: str, node: ast.Node | None, message: str, hint: str) -> LossValidationError:
    err = LossValidationError(f"{code}: {message}", span=node.span if node else None, hint=hint)
    err.code = code  # type: ignore[attr-defined]
    return err


def _facts(expr: ast.Expr) -> Facts:
    """What the lints look at, for a ``Checked`` made without them."""
    calls: list[ast.Call] = []
    used: set[str] = set()
    compares: list[ast.Compare] = []
    wheres: list[ast.Where] = []
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            calls.append(node)
        elif isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Compare):
            compares.append(node)
        elif isinstance(node, ast.Where):
            wheres.append(node)
    return Facts(tuple(calls), frozenset(used), tuple(compares), tuple(wheres))


def _lints(checked: Checked) -> Iterator[LossValidationError]:
    calls, used, compares, wheres = checked.facts or _facts(checked.formula.expr)
    for where in wheres:
        conditioned = _columns(checked, where.cond, ("pred",))
        shared = conditioned and conditioned & _trained(checked, where.term)
        if shared:
            units = ", ".join(f"u{c}" for c in sorted(shared))
            yield _make(
                "LD101",
                where.cond,
                f"The term is conditioned on a prediction of a unit it trains ({units}).",
                "the unit then learns only from samples it already predicts that way; "
                "condition on the label instead, such as true(u0) == 1.",
            )
    probability = _probability_units(checked, calls) if compares else set()
    for node in compares:
        for side, other, op in (
            (node.left, node.right, node.op),
            (node.right, node.left, _FLIP[node.op]),
        ):
            c = _number(other)
            if c is None or not isinstance(side, ast.Call) or side.name not in ("pred", "true"):
                continue
            cols = checked.units.resolve(side.args[0]) if side.args else None
            if cols is None or cols[0] not in probability:
                continue
            verdict = _verdict(op, c)
            if verdict:
                yield _make(
                    "LD102",
                    node,
                    f"The condition '{node}' {verdict} holds: {side} is a probability, "
                    "between 0 and 1.",
                    "compare with a threshold between 0 and 1, or pass from_logits=true if "
                    "the unit holds logits.",
                )
    for name in checked.units.names:
        if name not in used:
            yield _make(
                "LD103",
                None,
                f"The unit name '{name}' is declared but never used.",
                "remove it from units, or use it.",
            )
    for name in checked.params:
        if name not in used:
            yield _make(
                "LD104",
                None,
                f"The parameter '{name}' is declared but never used.",
                "remove it from params, or use it.",
            )
    # Terms compared only with earlier terms of the same shape: equality stops
    # at the first difference, where hashing would walk every term whole.
    earlier: dict[tuple[object, ...], list[ast.Expr]] = {}
    for term in checked.terms:
        same_shape = earlier.setdefault(_shape(term.expr), [])
        if any(term.expr == e for e in same_shape):
            yield _make(
                "LD105",
                term.expr,
                f"The term '{term.expr}' is written twice.",
                f"write it once with a weight: 2*{term.expr}"
                if isinstance(term.expr, ast.Call)
                else f"write it once with a weight: 2*({term.expr}).",
            )
        else:
            same_shape.append(term.expr)


def _shape(node: ast.Node) -> tuple[object, ...]:
    """What two equal terms share: their types and call names, one level down."""
    if isinstance(node, ast.Call):
        return (ast.Call, node.name)
    return (type(node), *((type(c), getattr(c, "name", None)) for c in node.children()))


def report(checked: Checked, *, strict: bool) -> list[LossValidationError]:
    """Raise the lints (``strict``) or warn with them; returns them either way."""
    found = lint(checked)
    for e in found:
        e.with_source(checked.formula.text())
    if found and strict:
        raise LossValidationError.collect(found)
    for e in found:
        warnings.warn(LossDSLWarning(str(e)), stacklevel=3)
    return found
