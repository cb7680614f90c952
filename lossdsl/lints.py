"""Lints: formulas that are valid but probably not what was meant.

Each lint has a stable code. ``validate`` warns with a ``LossDSLWarning`` by default and raises
them as a ``LossValidationError`` with ``strict=True``; ``lossdsl check --strict`` exits 1 on
them.

=======  ================================================================
LD101    a term conditioned on a prediction of a unit the same term trains
LD102    a condition on a probability unit that can never or always hold
LD103    a declared unit name the formula never uses
LD104    a declared parameter the formula never uses
LD105    the same top-level term written twice
LD100    stands for the lints past the first 49, which are not shown
=======  ================================================================

>>> from lossdsl import parse
>>> from lossdsl.checker import check
>>> [e.code for e in lint(check(parse("bce(u0) where pred(u0) >= 0.5"), units=1))]
['LD101']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from lossdsl import ast
from lossdsl.catalog import LOSSES
from lossdsl.checker import Checked
from lossdsl.errors import MAX_REPORTED, LossValidationError

__all__ = ["CODES", "LossDSLWarning", "lint"]

CODES = {
    "LD101": "a term conditioned on a prediction of a unit it trains",
    "LD102": "a condition on a probability unit that never or always holds",
    "LD103": "a declared unit name that is never used",
    "LD104": "a declared parameter that is never used",
    "LD105": "the same term written twice",
    "LD100": "more lints than are shown",
}
_PROBABILITY_LOSSES = ("bce", "focal", "cce")


class LossDSLWarning(UserWarning):
    """A lint, as a warning; ``str`` shows the code, the message and the caret."""


def _predicted(checked: Checked, node: ast.Node, fn: tuple[str, ...]) -> set[int]:
    """Columns of ``y_pred`` read by calls named in ``fn`` under ``node``."""
    out: set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and n.name in fn and n.args:
            binding = checked.units.resolve(n.args[0])
            if binding is not None and binding.pred is not None:
                out.update(range(*binding.pred))
    return out


def _probability_units(checked: Checked, nodes: list[ast.Node]) -> set[tuple[str, int]]:
    """The ``("pred", column)`` and ``("true", column)`` that a ``bce``, ``focal`` or ``cce``
    call among ``nodes`` reads as probabilities (class-index labels are not)."""
    out: set[tuple[str, int]] = set()
    for n in nodes:
        if isinstance(n, ast.Call) and n.name in _PROBABILITY_LOSSES and n.args:
            logits = any(
                k.name == "from_logits" and isinstance(k.value, ast.Name) and k.value.id == "true"
                for k in n.kwargs
            )
            binding = checked.units.resolve(n.args[0])
            if binding is None or binding.pred is None or binding.true is None:
                continue
            if not logits:
                out.update(("pred", c) for c in range(*binding.pred))
            if not binding.sparse:
                out.update(("true", c) for c in range(*binding.true))
    return out


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
    """Every lint of a checked formula, each a ``LossValidationError`` with ``code``, pointing
    into the formula's text; past ``MAX_REPORTED`` lints, the last says how many more there
    are."""
    found = list(_lints(checked))
    if len(found) > MAX_REPORTED:
        more = len(found) - MAX_REPORTED + 1
        found = found[: MAX_REPORTED - 1]
        found.append(_make("LD100", None, f"{more:,} more lints are not shown.", ""))
    for e in found:
        e.with_source(checked.formula.text())
    return found


def _make(code: str, node: ast.Node | None, message: str, hint: str) -> LossValidationError:
    err = LossValidationError(f"{code}: {message}", span=node.span if node else None, hint=hint)
    err.code = code  # type: ignore[attr-defined]
    return err


def _lints(checked: Checked) -> Iterator[LossValidationError]:
    nodes = list(ast.walk(checked.formula.expr))
    for where in (n for n in nodes if isinstance(n, ast.Where)):
        conditioned = _predicted(checked, where.cond, ("pred",))
        shared = conditioned & _predicted(checked, where.term, (*LOSSES, "pred"))
        if shared:
            units = ", ".join(f"u{c}" for c in sorted(shared))
            yield _make(
                "LD101",
                where.cond,
                f"The term is conditioned on a prediction of a unit it trains ({units}).",
                "the unit then learns only from samples it already predicts that way; "
                "condition on the label instead, such as true(u0) == 1.",
            )
    compares = [n for n in nodes if isinstance(n, ast.Compare)]
    probability = _probability_units(checked, nodes) if compares else set()
    for node in compares:
        for side, other, op in (
            (node.left, node.right, node.op),
            (node.right, node.left, _FLIP[node.op]),
        ):
            c = ast.literal(other)
            if isinstance(c, bool) or c is None:
                continue
            if not isinstance(side, ast.Call) or side.name not in ("pred", "true"):
                continue
            binding = checked.units.resolve(side.args[0]) if side.args else None
            cols = None if binding is None else getattr(binding, side.name)
            if cols is None or (side.name, cols[0]) not in probability:
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
    used = {n.id for n in nodes if isinstance(n, ast.Name)}
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
    # Terms are hashed (a walk of each) only where another term has the same shape.
    shapes = [_shape(term.expr) for term in checked.terms]
    counts = Counter(shapes)
    seen: set[ast.Expr] = set()
    for term, shape in zip(checked.terms, shapes, strict=True):
        if counts[shape] == 1:
            continue
        if term.expr in seen:
            shown = str(term.expr) if isinstance(term.expr, ast.Call) else f"({term.expr})"
            yield _make(
                "LD105",
                term.expr,
                f"The term '{term.expr}' is written twice.",
                f"write it once with a weight: 2*{shown}.",
            )
        seen.add(term.expr)


def _shape(node: ast.Node) -> tuple[object, ...]:
    """What two equal terms share, found without a walk: their kind and their children's kinds
    (calls by name)."""
    return (
        node.name if isinstance(node, ast.Call) else type(node),
        *(c.name if isinstance(c, ast.Call) else type(c) for c in node.children()),
    )
