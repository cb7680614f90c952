"""Where a value stands in a formula, and what it gives one value for.

A formula without aggregates gives one value per *position* (every axis of ``y`` but the last).
``sum(e)``, ``mean(e)`` and the example-level losses (``dice``, ``tversky``) give one value per
*example*, and with ``batch=true`` one value for the whole *batch*. Values of different levels
meet only as the rules below allow; the checker reports the rest with a caret.

>>> from lossdsl import parse
>>> f = parse("divide_no_nan(sum(bce(cls) where true(u0) > 0), sum(1 where true(u0) > 0))")
>>> facts = node_facts(f.expr)
>>> facts.level(f.expr), facts.problems
(<Level.EXAMPLE: 2>, [])
>>> combine(Level.POSITION, Level.EXAMPLE) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from lossdsl import ast
from lossdsl.catalog import Aggregate, LossEntry, MathFunction, lookup

__all__ = ["CONDITION", "TOP", "Facts", "Level", "Place", "combine", "node_facts"]

Problem = tuple[ast.Node, str, str | None]
"""Where the problem is, what it is, and a hint."""


class Level(IntEnum):
    """What an expression gives one value for."""

    CONSTANT = 0
    POSITION = 1
    EXAMPLE = 2
    BATCH = 3

    @property
    def per(self) -> str:
        """``"position"``, ``"example"``, ... as the messages and ``explain`` say it."""
        return {0: "constant", 1: "position", 2: "example", 3: "batch"}[int(self)]


def combine(a: Level, b: Level) -> Level | None:
    """The level of arithmetic on values of levels ``a`` and ``b``: a constant takes the
    other's level, and a batch-wide value meets each example's; ``None`` where they cannot
    meet (a per-position value with a per-example one, outside any aggregate)."""
    if a is Level.CONSTANT or a == b:
        return b
    if b is Level.CONSTANT:
        return a
    if {a, b} == {Level.EXAMPLE, Level.BATCH}:
        return Level.EXAMPLE
    return None


class Facts(NamedTuple):
    """What the checks and the compiler know of each node under a root, by the node's ``id``."""

    levels: dict[int, Level]
    """Each node's level; empty for a formula without aggregates or example-level losses,
    where every node that reads the data gives one value per position (see ``level``)."""
    data: set[int]
    """The nodes that depend on ``y_true`` or ``y_pred`` (those that are not constants)."""
    problems: list[Problem]
    """Each place where values of different levels meet in a way that has no meaning."""

    def level(self, node: ast.Node) -> Level:
        """What ``node`` gives one value for."""
        if self.levels:
            return self.levels[id(node)]
        return Level.POSITION if id(node) in self.data else Level.CONSTANT


def node_facts(root: ast.Node) -> Facts:
    """Which nodes under ``root`` depend on the data, their levels, and the problems. Levels
    differ only where an aggregate or an example-level loss stands, so only then are they
    found, in a second walk (the tree's depth is bounded by the parser, so the recursion is)."""
    facts = Facts({}, set(), [])
    if _visit_data(root, facts.data):
        _visit(root, facts)
    return facts


def _visit_data(node: ast.Node, data: set[int]) -> bool:
    """Record the nodes that depend on the data; whether any gives one value per example."""
    wide = False
    reads = ast.reads_data(node)
    for child in node.children():
        wide = _visit_data(child, data) or wide
        reads = reads or id(child) in data
    if reads:
        data.add(id(node))
    if isinstance(node, ast.Call):
        entry = lookup(node.name)
        wide = wide or isinstance(entry, Aggregate)
        wide = wide or (isinstance(entry, LossEntry) and entry.level == "example")
    return wide


def _visit(node: ast.Node, facts: Facts) -> Level:
    children = [(child, _visit(child, facts)) for child in node.children()]
    if children or isinstance(node, ast.Call):
        level = _level(node, children, facts.problems)
    else:  # a number, a name or a unit selector
        level = Level.CONSTANT
    facts.levels[id(node)] = level
    return level


def _level(
    node: ast.Node, children: list[tuple[ast.Node, Level]], problems: list[Problem]
) -> Level:
    if isinstance(node, ast.Call):
        entry = lookup(node.name)
        if isinstance(entry, Aggregate):
            for arg, level in children[:1]:
                if level >= Level.EXAMPLE:
                    problems.append(
                        (
                            arg,
                            f"{node.name}() aggregates per-position values, but {arg} gives "
                            f"one value per {level.per} already.",
                            "aggregates do not nest: aggregate the per-position values once, "
                            "or add the inner aggregate as a term of its own.",
                        )
                    )
            return Level.BATCH if _flag(node, "batch") else Level.EXAMPLE
        if isinstance(entry, LossEntry) and entry.level == "example":
            return Level.BATCH if _flag(node, "batch") else Level.EXAMPLE
        if not isinstance(entry, MathFunction):
            return Level.POSITION  # a loss, pred() or true() (or an unknown function)
    if isinstance(node, ast.Where):
        return _where(node, children[0][1], children[1][1], problems)
    return _mix(children, problems)


def _mix(items: Sequence[tuple[ast.Node, Level]], problems: list[Problem]) -> Level:
    """The level of arithmetic or a condition on ``items`` (operands and their levels)."""
    level, position = Level.CONSTANT, None
    for node, item in items:
        if item is Level.POSITION and position is None:
            position = node
        mixed = combine(level, item)
        if mixed is None:
            problems.append(
                (
                    position or node,
                    f"'{position}' gives one value per position, where one value per example "
                    "is needed: outside an aggregate the two cannot meet.",
                    f"aggregate it over each example: mean({position}).",
                )
            )
            return Level.EXAMPLE
        level = mixed
    return level


def _where(node: ast.Where, term: Level, cond: Level, problems: list[Problem]) -> Level:
    if term is Level.BATCH:
        problems.append(
            (
                node,
                "A batch-wide term cannot be selected with 'where': it has one value for the "
                "whole batch.",
                "select inside the aggregate: sum(e where c, batch=true).",
            )
        )
    elif term is Level.EXAMPLE and cond is Level.POSITION:
        problems.append(
            (
                node.cond,
                f"The condition '{node.cond}' gives one value per position, but the term it "
                "selects gives one per example.",
                "aggregate the condition over each example, such as sum(true(u0)) > 0.",
            )
        )
    elif term is Level.POSITION and cond >= Level.EXAMPLE:
        problems.append(
            (
                node.cond,
                f"The condition '{node.cond}' gives one value per example, but the term it "
                "selects gives one per position.",
                f"aggregate the term too: mean({node.term}) where {node.cond}.",
            )
        )
    if term is Level.CONSTANT:  # 1 where c, a count: the condition's level
        return max(cond, Level.POSITION)
    return term


def _flag(node: ast.Call, name: str) -> bool:
    """Whether ``node`` has the keyword ``name=true``."""
    return any(k.name == name and ast.literal(k.value) is True for k in node.kwargs)


@dataclass(frozen=True)
class Place:
    """Where a value stands, as far as the rules on ``where`` care."""

    linear: bool = True
    """Its weight in the term is a constant, so a ``where`` may stand here."""
    in_arg: bool = False
    in_cond: bool = False
    in_where: bool = False
    in_constant: bool = False
    """Inside a constant that was already evaluated as a whole."""

    def where_problem(self) -> tuple[str, str | None] | None:
        """Why a ``where`` term cannot stand here (message and hint), or ``None``."""
        if self.in_cond:
            return "'where' cannot appear inside a condition.", None
        if self.in_where:
            return (
                "A 'where' term cannot be nested inside another 'where' term.",
                "combine the conditions with 'and': T where A and B.",
            )
        if self.in_arg:
            return (
                "'where' cannot appear inside a function argument.",
                "'where' qualifies a whole additive term; put it after the call: "
                "abs(pred(u1) - true(u1)) where true(u0) == 1.",
            )
        if not self.linear:
            return (
                "A 'where' term cannot be multiplied by, or divide, a per-sample value.",
                "its value is a mean over the selected samples; scale it only by numbers and "
                "parameters, or move the factor inside: (x * T) where C.",
            )
        return None


TOP = Place()
"""A top-level term, or the argument of an aggregate (a formula of its own)."""
CONDITION = Place(linear=False, in_cond=True)
"""An operand of a comparison."""
