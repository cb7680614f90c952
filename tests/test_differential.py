"""Differential testing: random valid formulas, compiled by lossdsl, against an independent
NumPy float64 interpreter of the AST (``tests/oracle.py``).

Hypothesis generates a model output (groups of columns with a role each: binary probabilities,
binary logits, one-hot probabilities, one-hot logits, regression targets, positive counts; and,
with named units, label layouts: class-index units whose one label column is read against
``k`` prediction columns, units whose columns differ between ``y_true`` and ``y_pred``, and units
with one side only), a formula over it that uses every construct of the language, and inputs in
each role's domain, including rows that the conditions mask out and, in some examples, NaN or
inf in those masked rows. Two kinds of formula are generated:

* per-position formulas (``test_random_formulas_match_the_oracle``), over inputs of rank 2 or 3;
* example-level formulas (``test_random_example_formulas_match_the_oracle``): sums and means of
  per-position expressions with where-terms inside (``batch=true`` sometimes), ``dice`` and
  ``tversky``, ``divide_no_nan`` of aggregates, and where-terms on example-level terms with
  aggregate conditions, over inputs of rank 2 to 4 (batch, positions..., units).

The compiled loss must agree with the oracle:

* per sample (``FormulaLoss.call``: one value per position, or per example) and reduced
  (``loss(y_true, y_pred, sample_weight)``, the weights per position or per example), within
  1e-4 relative, widened only by the oracle's bound on float32's own rounding error
  (cancellation, division by small numbers);
* NaN exactly where the oracle has NaN;
* with a finite gradient with respect to ``y_pred`` on every sample whose oracle value is
  finite, and, along random directions, the oracle's derivative.

The generator renders each formula twice: as written for lossdsl (fewest parentheses, numbers
in varied spellings, sometimes comments and line breaks) and fully parenthesised. The oracle
evaluates both, so a parse that loses precedence or misreads a number is caught too, although
both the oracle and the compiler read lossdsl's AST.

Class-index labels are integers in ``[low, k)`` with ``low`` 0, -1 or -2 (in some examples of
several positions, all negative: an image without a positive anchor, a fully ignored
sentence); an index outside ``[0, k)`` has no class, and every loss, ``cce`` included, reads it
as a row of zeros.

``tests/cases/differential.json`` is a corpus of formulas worth keeping (tricky paths, and the
examples that found problems); ``test_corpus`` runs each against the oracle, some also under
``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oracle import BATCH, CONSTANT, EXAMPLE, POSITION, Oracle, Result

import lossdsl
from lossdsl import ast

RTOL = 1e-4
CASES = json.loads((Path(__file__).parent / "cases" / "differential.json").read_text())

# -- column roles -------------------------------------------------------------------------------
# Each role fixes the domain of its columns' labels and predictions: (lo, hi) bounds that the
# generated inputs respect and that the formula generator uses to keep sqrt, log, exp and
# division on safe ground.

ROLE_TRUE = {
    "binp": (0.0, 1.0),  # binary labels (sometimes soft), probabilities
    "binl": (0.0, 1.0),  # binary labels, logits
    "cat": (0.0, 1.0),  # one-hot labels (or soft, or none), probabilities in [0, 1]
    "catl": (0.0, 1.0),  # one-hot labels, logits
    "reg": (-8.0, 8.0),  # regression targets
    "pos": (0.0, 10.0),  # non-negative counts and sizes
}
ROLE_PRED = {
    "binp": (0.0, 1.0),
    "binl": (-12.0, 12.0),
    "cat": (0.0, 1.0),
    "catl": (-10.0, 10.0),
    "reg": (-8.0, 8.0),
    "pos": (0.0, 10.0),
}
ROLES = list(ROLE_TRUE)
PROB, LOGIT = {"binp", "cat"}, {"binl", "catl"}
# The roles whose columns each loss may read (a slice may span groups when all its roles fit).
# A class-index unit has the role "cat" or "catl": its labels are one-hot rows (or zeros).
ANY = set(ROLES)
LOSS_ROLES: dict[str, set[str]] = {
    "mse": ANY,
    "mae": ANY,
    "huber": ANY,
    "log_cosh": ANY,
    "bce": PROB | LOGIT,
    "focal": PROB | LOGIT,
    "cce": {"cat", "catl"},
    "kld": ANY,
    "poisson": {"binp", "cat", "pos"},  # predictions >= 0
    "msle": ANY,
    "mape": ANY,
    "hinge": ANY,
    "squared_hinge": ANY,
    "cosine": ANY,
    "focal_cce": {"cat", "catl"},
    "categorical_hinge": ANY,
    # Example-level: labels and predictions >= 0 keep the denominators away from 0.
    "dice": {"binp", "cat", "pos"},
    "tversky": {"binp", "cat"},
}
MIN_UNITS = {"cce": 2, "cosine": 2, "focal_cce": 2, "categorical_hinge": 2}
WHOLE_GROUP = {"cce", "focal_cce"}  # probabilities that sum to > 0 (see _slices)
SAME_KIND = {"bce", "focal", "cce", "focal_cce"}  # all probabilities or all logits
EXAMPLE_LOSSES = {"dice", "tversky"}
MATH_FUNCTIONS = set(lossdsl.catalog.MATH)
LOSS_NAMES = [n for n in LOSS_ROLES if n not in EXAMPLE_LOSSES]
UNIT_NAMES = ["presence", "loc", "box", "cls", "score", "logit", "size", "count", "extra", "mass"]
LAYOUT_NAMES = ["anchor", "token", "seg", "moved", "weight", "aux"]
PARAM_NAMES = ["alpha", "beta", "lam", "w2", "tau"]
MAX_SAMPLES = 12
BIG = 1e12  # no generated value may exceed this (float32 overflows at 3.4e38)
F32_BIG = 3.0e38

Columns = tuple[int, int]


@dataclass(frozen=True)
class Group:
    """Columns that ``y_true`` and ``y_pred`` share: the same indices on both sides."""

    role: str
    start: int
    stop: int


@dataclass(frozen=True)
class Layout:
    """A named unit with a label layout, on columns after the shared ones.

    ``kind`` is ``"index"`` (one column of class indices in ``[low, k)`` against the ``k``
    prediction columns ``pred``, probabilities for ``role="cat"``, logits for ``"catl"``),
    ``"moved"`` (a group of ``role`` whose columns differ between the sides), ``"true"`` or
    ``"pred"`` (one side only: a label column the model does not predict, or a prediction
    column without a label)."""

    name: str
    kind: str
    role: str
    true: Columns | None
    pred: Columns | None
    low: int = 0

    @property
    def binding(self) -> Any:
        """What ``units=`` gives for it."""
        out: dict[str, Any] = {}
        for side, cols in (("pred", self.pred), ("true", self.true)):
            if cols is not None:
                out[side] = cols[0] if cols[1] == cols[0] + 1 else list(cols)
        return out

    def to_json(self) -> list[Any]:
        return [self.name, self.kind, self.role, self.true, self.pred, self.low]

    @staticmethod
    def from_json(row: Sequence[Any]) -> Layout:
        name, kind, role, true, pred, low = row
        cols = [tuple(c) if c is not None else None for c in (true, pred)]
        return Layout(name, kind, role, cols[0], cols[1], low)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Target:
    """What a loss call can select: selector texts, its columns on each side, the roles of its
    columns, whether it is a whole group, and whether its labels are class indices."""

    options: tuple[str, ...]
    true: Columns
    pred: Columns
    roles: frozenset[str]
    whole: bool
    index: bool = False

    @property
    def width(self) -> int:
        return self.pred[1] - self.pred[0]


@dataclass
class Env:
    groups: list[Group]
    units: Any  # what is passed as units=
    names: dict[str, tuple[int, int]]  # names of shared columns
    params: dict[str, float]
    where_mean: str
    shape: tuple[int, ...] = (MAX_SAMPLES,)  # the inputs' leading shape
    layouts: list[Layout] = field(default_factory=list)
    roles: list[str] = field(init=False)
    _targets: dict[str, list[Target]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.roles = [g.role for g in self.groups for _ in range(g.start, g.stop)]

    @property
    def width(self) -> int:
        """The shared columns (both sides)."""
        return len(self.roles)

    @property
    def n(self) -> int:
        """Positions in the batch."""
        return math.prod(self.shape)

    @property
    def positions(self) -> int:
        """Positions of one example."""
        return math.prod(self.shape[1:])

    @property
    def examples(self) -> int:
        return self.shape[0]

    def t_range(self, a: int, b: int) -> tuple[float, float]:
        return _union(ROLE_TRUE[r] for r in self.roles[a:b])

    def p_range(self, a: int, b: int) -> tuple[float, float]:
        return _union(ROLE_PRED[r] for r in self.roles[a:b])

    def targets(self, loss: str) -> list[Target]:
        """What ``loss`` may read."""
        if loss not in self._targets:
            self._targets[loss] = self._find_targets(loss)
        return self._targets[loss]

    def _find_targets(self, loss: str) -> list[Target]:
        out = [
            Target(_options(self, a, b), (a, b), (a, b), frozenset(self.roles[a:b]), whole)
            for a, b, whole in _slices(self, loss)
        ]
        for lay in self.layouts:
            if lay.kind not in ("index", "moved"):
                continue
            assert lay.true is not None and lay.pred is not None
            t = Target(
                (lay.name,),
                lay.true,
                lay.pred,
                frozenset({lay.role}),
                True,
                lay.kind == "index",
            )
            if t.width < MIN_UNITS.get(loss, 1) or not t.roles <= LOSS_ROLES[loss]:
                continue
            if loss == "cce" and not t.index and lay.role == "catl":
                continue  # the labels of a moved group need not sum to 1 (see _slices)
            out.append(t)
        return out

    def target_range(self, t: Target) -> tuple[tuple[float, float], tuple[float, float]]:
        """Bounds on the labels a loss compares (one-hot rows for class indices), and on the
        predictions."""
        roles = sorted(t.roles)
        return _union(ROLE_TRUE[r] for r in roles), _union(ROLE_PRED[r] for r in roles)


def _union(ranges: Any) -> tuple[float, float]:
    ranges = list(ranges)
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _options(env: Env, a: int, b: int) -> tuple[str, ...]:
    """Texts selecting shared columns a..b-1: ``u3``, ``u[3:4]``, ``u[1:4]``, or a name."""
    options = [f"u[{a}:{b}]"]
    if b == a + 1:
        options.append(f"u{a}")
    options += [n for n, cols in env.names.items() if cols == (a, b)]
    return tuple(sorted(options))


# -- generated expressions -----------------------------------------------------------------------
# Precedence of what a text prints as (as in the grammar): a child below what its parent needs
# gets parentheses.
SUM, WHERE, PRODUCT, UNARY, ATOM = 1, 2, 3, 4, 5
C_OR, C_AND, C_NOT, C_CMP = 1, 2, 3, 4


@dataclass(frozen=True)
class G:
    """A generated expression: its text for lossdsl, its fully parenthesised text, the
    precedence of the former, bounds on its value, and what it gives one value for."""

    text: str
    tight: str
    prec: int
    lo: float
    hi: float
    data: bool = True
    tail_where: bool = False  # the text ends with an unparenthesised condition
    closed: str = ""  # the text with that last where-term parenthesised
    level: int = POSITION  # for data: POSITION, EXAMPLE or BATCH
    whole: bool = False  # its values are integers (class indices)

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def lv(self) -> int:
        return self.level if self.data else CONSTANT


def _mix(*items: G) -> int:
    """The level of arithmetic on ``items`` (as the oracle's)."""
    out = CONSTANT
    for g in items:
        if out == CONSTANT:
            out = g.lv
        elif g.lv not in (CONSTANT, out):
            out = EXAMPLE
    return out


@dataclass(frozen=True)
class C:
    """A generated condition."""

    text: str
    tight: str
    prec: int
    data: bool = True  # it reads the data (not only parameters)


def _wrap(g: G | C, need: int) -> str:
    return g.text if g.prec >= need else f"({g.text})"


def g_add(a: G, op: str, b: G) -> G:
    left = a.text
    if a.tail_where and not b.data:
        # A constant right after a condition would be a term of its own, so close the last
        # where-term. (Parenthesising the whole sum before it is not enough for lossdsl: see
        # the corpus case "constant-after-parenthesised-sum-ending-in-where".)
        left = a.closed
    right = _wrap(b, WHERE)
    tail = b.tail_where and b.prec >= WHERE
    closed = f"{left} {op} {b.closed if tail else right}"
    lo, hi = (a.lo + b.lo, a.hi + b.hi) if op == "+" else (a.lo - b.hi, a.hi - b.lo)
    return G(
        f"{left} {op} {right}",
        f"({a.tight} {op} {b.tight})",
        SUM,
        lo,
        hi,
        a.data or b.data,
        tail,
        closed,
        level=_mix(a, b),
    )


def _mul_range(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    xs = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    xs = [0.0 if math.isnan(x) else x for x in xs]
    return min(xs), max(xs)


def g_mul(a: G, op: str, b: G) -> G:
    if op == "*":
        lo, hi = _mul_range((a.lo, a.hi), (b.lo, b.hi))
    else:
        assert b.lo > 0 or b.hi < 0, "a divisor must keep away from 0"
        lo, hi = _mul_range((a.lo, a.hi), (1 / b.hi, 1 / b.lo))
    return G(
        f"{_wrap(a, PRODUCT)} {op} {_wrap(b, UNARY)}",
        f"({a.tight} {op} {b.tight})",
        PRODUCT,
        lo,
        hi,
        a.data or b.data,
        level=_mix(a, b),
    )


def g_neg(a: G) -> G:
    inner = _wrap(a, UNARY)
    return G(
        ("- " if inner.startswith("-") else "-") + inner,
        f"(-{a.tight})",
        UNARY,
        -a.hi,
        -a.lo,
        a.data,
        level=a.level,
    )


def g_call(name: str, args: Sequence[G], lo: float, hi: float) -> G:
    return G(
        f"{name}({', '.join(a.text for a in args)})",
        f"{name}({', '.join(a.tight for a in args)})",
        ATOM,
        lo,
        hi,
        any(a.data for a in args),
        level=_mix(*args),
    )


def g_where(term: G, cond: C, scale: float) -> G:
    """``term where cond``; ``scale`` bounds the factor of where the term stands (``N`` at
    the top with ``where_mean="selected"``, 1 inside an aggregate, which is bounded by
    aggregating the term's own bounds)."""
    text = f"{_wrap(term, PRODUCT)} where {cond.text}"
    return G(
        text,
        f"({term.tight} where {cond.tight})",
        WHERE,
        min(0.0, term.lo * scale),
        max(0.0, term.hi * scale),
        True,
        True,
        f"({text})",
        level=max(term.lv, POSITION),
    )


def c_cmp(a: G, op: str, b: G) -> C:
    text = f"{_wrap(a, PRODUCT)} {op} {_wrap(b, PRODUCT)}"
    return C(text, f"({a.tight} {op} {b.tight})", C_CMP, a.data or b.data)


def c_not(c: C) -> C:
    return C(f"not {_wrap(c, C_NOT)}", f"(not {c.tight})", C_NOT, c.data)


def c_join(word: str, items: Sequence[C]) -> C:
    need, prec = (C_NOT, C_AND) if word == "and" else (C_AND, C_OR)
    return C(
        f" {word} ".join(_wrap(c, need) for c in items),
        "(" + f" {word} ".join(c.tight for c in items) + ")",
        prec,
        any(c.data for c in items),
    )


# -- strategies ----------------------------------------------------------------------------------


def _spellings(m: int, e: int) -> list[str]:
    """Ways to write ``m * 10**e``: ``25e-2``, ``0.25``, ``.25``, ``2.5E-1`` ..."""
    value = m * 10.0**e
    out = [f"{m}e{e}", f"{m}E{e}" if e else f"{m}"]
    plain = f"{value:.10f}".rstrip("0")
    plain = plain + "0" if plain.endswith(".") else plain
    out.append(plain)
    if plain.startswith("0."):
        out.append(plain[1:])
    if plain.endswith(".0"):
        out.append(plain[:-1])  # "5."
    return out


@st.composite
def numbers(draw: Any, lo: float = 0.0, hi: float = 100.0) -> G:
    """A literal in [lo, hi] (lo >= 0), in a random spelling."""
    special = [v for v in (0.5, 1.0, 2.0, 0.1, 0.25, 3.0, 0.0, 10.0, 1e-3) if lo <= v <= hi]
    if special and draw(st.booleans()):
        value = draw(st.sampled_from(special))
        m, e = _mantissa(value)
    else:
        e = draw(st.integers(-3, 1))
        m_lo, m_hi = max(1, math.ceil(lo / 10.0**e)), math.floor(hi / 10.0**e)
        if m_lo > min(m_hi, 999):
            m, e = _mantissa(hi if hi > 0 else 0.0)
        else:
            m = draw(st.integers(m_lo, min(m_hi, 999)))
    text = draw(st.sampled_from(_spellings(m, e)))
    value = float(text)
    return G(text, repr(value), ATOM, value, value, False)


def _mantissa(value: float) -> tuple[int, int]:
    for e in (0, -1, -2, -3, -4):
        m = value / 10.0**e
        if abs(m - round(m)) < 1e-9 and round(m) < 100000:
            return round(m), e
    raise AssertionError(value)


def literal(value: float) -> G:
    text = repr(float(value)) if not float(value).is_integer() else str(int(value))
    return G(text, repr(float(value)), ATOM, float(value), float(value), False)


def signed(value: float) -> G:
    """A literal that may be negative: ``-2`` is ``-(2)``."""
    return g_neg(literal(-value)) if value < 0 else literal(value)


@st.composite
def constants(draw: Any, env: Env, *, nonzero: bool = False, depth: int = 1) -> G:
    """A constant: a number, a parameter, or a little arithmetic and math on them."""
    kinds = ["number", "number"]
    if env.params:
        kinds += ["param", "param"]
    if depth > 0:
        kinds += ["neg", "arith", "math"]
    kind = draw(st.sampled_from(kinds))
    if kind == "number":
        out = draw(numbers(0.05 if nonzero else 0.0, 10.0))
    elif kind == "param":
        name = draw(st.sampled_from(sorted(env.params)))
        value = env.params[name]
        out = G(name, name, ATOM, value, value, False)
    elif kind == "neg":
        out = g_neg(draw(constants(env, nonzero=nonzero, depth=depth - 1)))
    elif kind == "arith":
        a = draw(constants(env, depth=depth - 1))
        b = draw(constants(env, depth=depth - 1, nonzero=True))
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        out = g_mul(a, op, b) if op in "*/" else g_add(a, op, b)
    else:
        a = draw(constants(env, depth=depth - 1))
        fn = draw(st.sampled_from(["abs", "square", "sqrt", "exp", "max", "clip", "log"]))
        v = a.lo
        if (fn in ("sqrt", "log") and v <= 0.05) or (fn == "exp" and v > 3):
            fn = "abs"
        if fn == "max":
            b = draw(numbers(0.1, 2.0))
            out = g_call("max", [a, b], max(v, b.lo), max(v, b.lo))
        elif fn == "clip":
            r = min(max(v, 0.0), 1.0)
            out = g_call("clip", [a, literal(0.0), literal(1.0)], r, r)
        else:
            r = CONST_MATH[fn](v)
            out = g_call(fn, [a], r, r)
    if nonzero and abs(out.lo) < 0.05:
        out = draw(numbers(0.1, 10.0))
    if out.mag > 1e6:
        out = draw(numbers(0.1, 10.0))
    return out


CONST_MATH: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "square": lambda x: x * x,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
}


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2))


def _slices(env: Env, loss: str) -> list[tuple[int, int, bool]]:
    """The shared slices ``loss`` may read, and whether each is a whole group."""
    roles = LOSS_ROLES[loss]
    need = MIN_UNITS.get(loss, 1)
    out = []
    for a in range(env.width):
        for b in range(a + need, env.width + 1):
            cols = set(env.roles[a:b])
            if not cols <= roles:
                continue
            whole = any((g.start, g.stop) == (a, b) for g in env.groups)
            if loss in WHOLE_GROUP and not whole:
                # A whole one-hot group only: probabilities must sum to > 0, and with logits
                # TensorFlow's gradient assumes labels that sum to 1 (see the corpus case
                # "cce-logits-gradient-labels-not-summing-to-1").
                continue
            if loss in SAME_KIND and not (cols <= PROB or cols <= LOGIT):
                continue
            out.append((a, b, whole))
    return out


def _loss_range(name: str, kw: dict[str, Any], env: Env, t: Target) -> tuple[float, float]:
    """Bounds on a loss's value over a target of their roles' domains."""
    (tl, th), (pl, ph) = env.target_range(t)
    w = t.width
    err = max(abs(th - pl), abs(ph - tl))
    xent = 16.2 if not kw.get("from_logits") else max(abs(pl), abs(ph)) + 0.7
    if name == "mse":
        return 0.0, err**2
    if name in ("mae", "log_cosh"):
        return 0.0, err
    if name == "huber":
        d = kw.get("delta", 1.0)
        return 0.0, max(0.5 * min(err, d) ** 2, d * err)
    if name in ("bce", "focal"):
        return 0.0, xent
    if name == "cce":
        return 0.0, w * (xent if not kw.get("from_logits") else 2 * xent + math.log(w) + 1)
    if name == "focal_cce":
        return 0.0, kw.get("alpha", 0.25) * 16.2 * w
    if name == "kld":
        return -0.37 * w, 16.2 * w
    if name == "poisson":
        log_lo, log_hi = math.log(pl + 1e-7), math.log(ph + 1e-7)
        tlog = _mul_range((tl, th), (log_lo, log_hi))
        return pl - tlog[1], ph - tlog[0]
    if name == "msle":
        p_log = (math.log1p(max(pl, 1e-7)), math.log1p(max(ph, 1e-7)))
        t_log = (math.log1p(max(tl, 1e-7)), math.log1p(max(th, 1e-7)))
        return 0.0, max(p_log[1] - t_log[0], t_log[1] - p_log[0]) ** 2
    if name == "mape":
        smallest = 0.0 if tl <= 0 <= th else min(abs(tl), abs(th))
        return 0.0, 100 * err / max(smallest, 1e-7)
    if name in ("hinge", "squared_hinge"):
        top = 1 + max(abs(tl), abs(th), 1.0) * max(abs(pl), abs(ph))
        return 0.0, top if name == "hinge" else top**2
    if name == "categorical_hinge":
        p_mag, t_mag = max(abs(pl), abs(ph)), max(abs(tl), abs(th))
        return 0.0, 1 + p_mag * (max(abs(1 - tl), abs(1 - th)) + w * t_mag)
    if name == "cosine":
        return -1.0, 1.0
    if name == "dice":  # 2 t p <= m (t + p) for values in [0, m]
        return 1 - max(th, ph, 1.0), 1.0
    if name == "tversky":
        return 0.0, 1.0
    raise AssertionError(name)


def _keywords(draw: Any, name: str, t: Target) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for ``name`` on ``t``: their values, and their texts."""
    kw: dict[str, Any] = {}
    texts: list[str] = []

    def keyword(key: str, value: Any, text: str) -> None:
        kw[key] = value
        texts.append(f"{key}={text}")

    if name in ("bce", "cce", "focal", "focal_cce"):
        logits = t.roles <= LOGIT
        if logits or draw(st.booleans()):
            keyword("from_logits", logits, "true" if logits else "false")
        if not (name == "cce" and t.index) and draw(st.booleans()):
            s = draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), numbers(0.0, 1.0).map(_num)))
            keyword("label_smoothing", float(s), _number_text(s))
    if name in ("focal", "focal_cce"):
        if draw(st.booleans()):
            gamma = draw(
                st.one_of(st.sampled_from([0.0, 0.5, 1.0, 3.0]), numbers(0.0, 5.0).map(_num))
            )
            keyword("gamma", float(gamma), _number_text(gamma))
        if draw(st.booleans()):
            alpha = draw(st.one_of(st.sampled_from([0.0, 0.25, 1.0]), numbers(0.0, 1.0).map(_num)))
            keyword("alpha", float(alpha), _number_text(alpha))
    if name == "huber" and draw(st.booleans()):
        delta = draw(st.one_of(st.sampled_from([0.5, 1.0, 2.0]), numbers(0.01, 5.0).map(_num)))
        keyword("delta", float(delta), _number_text(delta))
    if name == "tversky":
        for key in ("alpha", "beta"):
            if draw(st.booleans()):
                value = draw(
                    st.one_of(st.sampled_from([0.0, 0.5, 1.0]), numbers(0.0, 2.0).map(_num))
                )
                keyword(key, float(value), _number_text(value))
    if name in EXAMPLE_LOSSES and draw(st.integers(0, 2)) == 0:
        batch = draw(st.booleans())
        keyword("batch", batch, "true" if batch else "false")
    return kw, texts


def _call_text(draw: Any, name: str, t: Target, texts: list[str]) -> str:
    texts = draw(st.permutations(texts)) if texts else texts
    return f"{name}({', '.join([draw(st.sampled_from(t.options)), *texts])})"


@st.composite
def loss_calls(draw: Any, env: Env) -> G:
    """A per-position loss."""
    names = [n for n in LOSS_NAMES if env.targets(n)]
    name = draw(st.sampled_from(names))
    t = draw(st.sampled_from(env.targets(name)))
    kw, texts = _keywords(draw, name, t)
    text = _call_text(draw, name, t, texts)
    lo, hi = _loss_range(name, kw, env, t)
    return G(text, text, ATOM, lo, hi)


@st.composite
def example_losses(draw: Any, env: Env) -> G:
    """``dice`` or ``tversky``: one value per example (per batch with ``batch=true``)."""
    names = [n for n in sorted(EXAMPLE_LOSSES) if env.targets(n)]
    if not names:
        return draw(aggregates(env))
    name = draw(st.sampled_from(names))
    t = draw(st.sampled_from(env.targets(name)))
    kw, texts = _keywords(draw, name, t)
    text = _call_text(draw, name, t, texts)
    lo, hi = _loss_range(name, kw, env, t)
    return G(text, text, ATOM, lo, hi, level=BATCH if kw.get("batch") else EXAMPLE)


def _ignorable(env: Env) -> list[Target]:
    """Class-index units, which ``cce(u, ignore_class=...)`` may read."""
    return [t for t in env.targets("cce") if t.index]


@st.composite
def ignored_cce(draw: Any, env: Env, scale: float) -> G:
    """``cce(u, ignore_class=c)``: a where-term of its own (``cce(u) where true(u) != c``)."""
    t = draw(st.sampled_from(_ignorable(env)))
    c = draw(st.sampled_from([-1, -1, -2, 0, 1]))
    kw, texts = _keywords(draw, "cce", t)
    texts.append(f"ignore_class={c}")
    text = _call_text(draw, "cce", t, texts)
    _, hi = _loss_range("cce", kw, env, t)
    return G(text, text, ATOM, 0.0, hi * scale)


def _num(g: G) -> float:
    return g.lo


def _number_text(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _layout_accessors(env: Env) -> list[tuple[str, str, tuple[float, float], bool]]:
    """``pred``/``true`` of the layouts' one-column sides: function, unit, bounds, and whether
    the values are integers (class indices)."""
    out = []
    for lay in env.layouts:
        if lay.kind == "index":
            assert lay.pred is not None
            out.append(("true", lay.name, (float(lay.low), lay.pred[1] - lay.pred[0] - 1.0), True))
            continue
        for fn, cols, ranges in (("true", lay.true, ROLE_TRUE), ("pred", lay.pred, ROLE_PRED)):
            if cols is not None and cols[1] == cols[0] + 1:
                out.append((fn, lay.name, ranges[lay.role], False))
    return out


@st.composite
def accessors(draw: Any, env: Env) -> G:
    extra = _layout_accessors(env)
    if extra and draw(st.integers(0, 2)) == 0:
        fn, name, (lo, hi), whole = draw(st.sampled_from(extra))
        text = f"{fn}({name})"
        return G(text, text, ATOM, lo, hi, whole=whole)
    col = draw(st.integers(0, env.width - 1))
    fn = draw(st.sampled_from(["pred", "true"]))
    lo, hi = (env.p_range if fn == "pred" else env.t_range)(col, col + 1)
    text = f"{fn}({draw(st.sampled_from(_options(env, col, col + 1)))})"
    return G(text, text, ATOM, lo, hi)


@st.composite
def leaves(draw: Any, env: Env, level: int, *, second: bool) -> G:
    """Per position: a loss, or (``second``) ``pred``/``true``. Per example: an aggregate, or
    (``second``) ``dice``/``tversky``."""
    if level == POSITION:
        return draw(accessors(env) if second else loss_calls(env))
    return draw(example_losses(env) if second else aggregates(env))


@st.composite
def positive(draw: Any, env: Env, depth: int, *, level: int = POSITION) -> G:
    """A value that is at least 0.05: for sqrt, log and divisors."""
    if level >= EXAMPLE and draw(st.booleans()):  # the mean or sum of a positive value
        body = draw(positive(env, max(depth - 1, 0)))
        return draw(aggregates(env, body=body))
    x = draw(data_exprs(env, depth, level=level))
    kind = draw(st.sampled_from(["square", "abs", "exp", "clip", "max", "shift", "sqrt"]))
    c = draw(numbers(0.1, 2.0))
    if kind == "square" and x.mag < 1e5:
        sq = g_call("square", [x], 0.0, x.mag**2)
        return g_add(sq, "+", c)
    if kind == "abs":
        return g_add(g_call("abs", [x], 0.0, x.mag), "+", c)
    if kind == "exp":
        if x.lo >= -2.0 and x.hi <= 3.0:
            return g_call("exp", [x], math.exp(x.lo), math.exp(x.hi))
        lo, hi = min(max(x.lo, -2.0), 3.0), min(max(x.hi, -2.0), 3.0)
        clipped = g_call("clip", [x, g_neg(literal(2.0)), literal(3.0)], lo, hi)
        return g_call("exp", [clipped], math.exp(lo), math.exp(hi))
    if kind == "clip":
        top = draw(numbers(2.0, 10.0))
        return g_call("clip", [x, c, top], c.lo, top.lo)
    if kind == "shift" and x.lo >= 0:
        return g_add(x, "+", c)
    if kind == "sqrt" and x.mag < 1e5:
        inner = g_add(g_call("square", [x], 0.0, x.mag**2), "+", c)
        return g_call("sqrt", [inner], math.sqrt(c.lo), math.sqrt(inner.hi))
    return g_call("max", [x, c], c.lo, max(x.hi, c.lo))


@st.composite
def zero_or_positive(draw: Any, env: Env, level: int) -> tuple[G, float]:
    """A divisor for ``divide_no_nan`` that is exactly 0 or at least some ``b > 0`` (returned
    too): a count of selected positions, or a class index."""
    index = [a for a in _layout_accessors(env) if a[3]]
    if level == POSITION:
        if index and draw(st.booleans()):
            _, name, (lo, hi), _ = draw(st.sampled_from(index))
            text = f"true({name})"
            return G(text, text, ATOM, lo, hi, whole=True), 1.0
        p = draw(positive(env, 0))
        return p, p.lo
    kind = draw(st.sampled_from(["count", "count", "any", "index"]))
    if kind == "index" and index:
        _, name, (lo, hi), _ = draw(st.sampled_from(index))
        fn = draw(st.sampled_from(["abs", "square"]))
        top = max(abs(lo), abs(hi))
        body = G(f"{fn}(true({name}))", f"{fn}(true({name}))", ATOM, 0.0, top * top)
        return draw(aggregates(env, body=body, name="sum")), 1.0
    c = literal(1.0) if draw(st.booleans()) else draw(numbers(0.1, 3.0))
    if kind == "any":  # mean(1 where C): 1 if some position is selected, else 0
        body = g_where(literal(1.0), draw(conditions(env, 1)), 1.0)
        return draw(aggregates(env, body=body, name="mean")), 1.0
    body = g_where(c, draw(conditions(env, 1)), 1.0)
    return draw(aggregates(env, body=body, name="sum")), c.lo


@st.composite
def data_exprs(draw: Any, env: Env, depth: int = 2, *, level: int = POSITION) -> G:
    """A value of ``level`` (per position or per example): leaves, and arithmetic and math on
    them."""
    kinds = ["leaf", "leaf", "second"]
    if depth > 0:
        kinds += ["unary", "binary", "binary", "scaled", "minmax", "clip", "ratio"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("leaf", "second"):
        return draw(leaves(env, level, second=kind == "second"))

    def sub(d: int = depth - 1) -> Any:
        return data_exprs(env, d, level=level)

    def pos() -> Any:
        return positive(env, depth - 1, level=level)

    x = draw(sub())
    if kind == "unary":
        fn = draw(
            st.sampled_from(["neg", "abs", "square", "sqrt", "log", "exp", "sigmoid", "tanh"])
        )
        if fn == "neg":
            return g_neg(x)
        if fn == "sigmoid":
            return g_call("sigmoid", [x], _sigmoid(x.lo), _sigmoid(x.hi))
        if fn == "tanh":
            return g_call("tanh", [x], math.tanh(x.lo), math.tanh(x.hi))
        if fn == "abs":
            return g_call(
                "abs", [x], 0.0 if x.lo <= 0 <= x.hi else min(abs(x.lo), abs(x.hi)), x.mag
            )
        if fn == "square" and x.mag < 1e5:
            return g_call("square", [x], 0.0, x.mag**2)
        if fn in ("sqrt", "log", "square"):
            p = draw(pos())
            if fn == "log":
                return g_call("log", [p], math.log(p.lo), math.log(p.hi))
            return g_call("sqrt", [p], math.sqrt(p.lo), math.sqrt(p.hi))
        if x.hi <= 10.0:
            return g_call("exp", [x], math.exp(max(x.lo, -700.0)), math.exp(x.hi))
        capped = g_call("min", [x, literal(2.0)], x.lo, 2.0)
        return g_call("exp", [capped], math.exp(max(x.lo, -700.0)), math.exp(2.0))
    if kind == "binary":
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        y = draw(pos() if op == "/" else sub())
        if op in "+-":
            return g_add(x, op, y)
        out = g_mul(x, op, y)
        return out if out.mag < BIG else g_add(x, "+", y)
    if kind == "ratio":  # divide_no_nan(x, b) with b exactly 0 or away from it
        b, smallest = draw(zero_or_positive(env, level))
        top = max(abs(b.lo), abs(b.hi), smallest)
        if b.lo >= 0:
            lo, hi = _mul_range((x.lo, x.hi), (1 / top, 1 / smallest))
        else:
            lo, hi = -x.mag / smallest, x.mag / smallest
        out = g_call("divide_no_nan", [x, b], min(lo, 0.0), max(hi, 0.0))
        return out if out.mag < BIG else x
    if kind == "scaled":
        c = draw(constants(env, nonzero=True))
        form = draw(st.sampled_from(["c*x", "x*c", "x/c", "x+c", "c-x", "c/x"]))
        if form == "c*x":
            return g_mul(c, "*", x)
        if form == "x*c":
            return g_mul(x, "*", c)
        if form == "x/c":
            return g_mul(x, "/", c)
        if form == "x+c":
            return g_add(x, "+", c)
        if form == "c-x":
            return g_add(c, "-", x)
        return g_mul(c, "/", draw(pos()))
    if kind == "minmax":
        fn = draw(st.sampled_from(["min", "max"]))
        y = draw(st.one_of(sub(), constants(env)))
        pick = min if fn == "min" else max
        return g_call(fn, draw(st.permutations([x, y])), pick(x.lo, y.lo), pick(x.hi, y.hi))
    lo = draw(constants(env, depth=0))
    hi = draw(numbers(0.0, 10.0))
    lo_v, hi_v = lo.lo, hi.lo
    if lo_v > hi_v:
        lo, hi, lo_v, hi_v = hi, lo, hi_v, lo_v
    if lo_v == hi_v:  # clip(x, c, c) is constant, but its gradient at x == c is 1 (a tie)
        hi = g_add(hi, "+", literal(1.0))
        hi_v += 1.0
    return g_call("clip", [x, lo, hi], min(max(x.lo, lo_v), hi_v), min(max(x.hi, lo_v), hi_v))


@st.composite
def conditions(draw: Any, env: Env, depth: int = 2, *, level: int = POSITION) -> C:
    """A condition per position, or (``level=EXAMPLE``) per example, on aggregates."""
    kinds = ["compare", "compare", "compare"]
    if depth > 0:
        kinds += ["and", "or", "not"]
    kind = draw(st.sampled_from(kinds))
    if kind == "not":
        return c_not(draw(conditions(env, depth - 1, level=level)))
    if kind in ("and", "or"):
        items = draw(st.lists(conditions(env, depth - 1, level=level), min_size=2, max_size=3))
        return c_join(kind, items)
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
    shape = draw(st.sampled_from(["x?t", "x?t", "t?x", "x?y", "param"]))
    if shape == "param" and env.params:
        name = draw(st.sampled_from(sorted(env.params)))
        v = env.params[name]
        return c_cmp(G(name, name, ATOM, v, v, False), op, draw(numbers(0.0, 1.0)))
    operand = (
        st.one_of(accessors(env), data_exprs(env, 1))
        if level == POSITION
        else st.one_of(example_values(env), data_exprs(env, 0, level=EXAMPLE))
    )
    x = draw(operand)
    y = draw(operand) if shape == "x?y" else draw(thresholds(env, x))
    return c_cmp(x, op, y) if shape != "t?x" else c_cmp(y, op, x)


@st.composite
def example_values(draw: Any, env: Env) -> G:
    """What an example-level condition compares: the sum or mean of a unit's labels or
    predictions, or of a loss, or a count of selected positions."""
    kind = draw(st.sampled_from(["accessor", "accessor", "loss", "count"]))
    if kind == "accessor":
        body = draw(accessors(env))
    elif kind == "loss":
        body = draw(loss_calls(env))
    else:
        body = g_where(literal(1.0), draw(conditions(env, 1)), 1.0)
    return draw(aggregates(env, body=body))


@st.composite
def thresholds(draw: Any, env: Env, x: G) -> G:
    """A number for ``x`` to be compared with: mostly inside its range, sometimes exactly a
    value it often takes (0, 0.5, 1; a whole number for class indices), sometimes outside it
    (nothing or everything selected)."""
    kind = draw(st.sampled_from(["inside", "special", "outside", "param"]))
    if kind == "param" and env.params:
        name = draw(st.sampled_from(sorted(env.params)))
        v = env.params[name]
        return G(name, name, ATOM, v, v, False)
    if x.whole and kind != "outside":
        return signed(draw(st.integers(math.floor(x.lo), math.ceil(x.hi))))
    if kind == "special":
        return literal(draw(st.sampled_from([0.0, 0.5, 1.0])))
    lo, hi = max(x.lo, -100.0), min(x.hi, 100.0)
    if kind == "outside":
        value = hi + 1.0 if draw(st.booleans()) else lo - 1.0
    else:
        frac = draw(st.integers(1, 19)) / 20
        value = lo + frac * (hi - lo)
    return signed(float(f"{value:.3g}"))


def _scale(env: Env, scope: str) -> float:
    """A bound on the factor of a where-term in ``scope`` (see ``g_where``)."""
    return env.n if scope == "top" and env.where_mean == "selected" else 1.0


@st.composite
def terms(draw: Any, env: Env, *, allow_group: bool = True, scope: str = "top") -> G:
    """One additive per-position term: plain, with a condition, ``cce(u, ignore_class=c)``, or
    a scaled sum of terms. ``scope``: what the term stands in, the top or an aggregate
    (``"sum"``, ``"mean"``, ``"mean-batch"``)."""
    scale = _scale(env, scope)
    depth = 2 if scope == "top" else 1  # aggregates keep the formula small
    kinds = ["plain", "where", "where"]
    if allow_group:
        kinds.append("group")
    if _ignorable(env):
        kinds.append("ignore")
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        x = draw(data_exprs(env, depth))
        how = draw(st.sampled_from(["bare", "c*x", "x*c", "x/c"]))
        if how != "bare":
            c = draw(constants(env, nonzero=True))
            x = g_mul(c, "*", x) if how == "c*x" else g_mul(x, how[1], c)
        return x
    if kind in ("where", "ignore"):
        if kind == "ignore":
            w = draw(ignored_cce(env, scale))
        else:
            body = draw(data_exprs(env, depth))
            if draw(st.booleans()):
                body = g_mul(draw(constants(env, nonzero=True)), "*", body)
            cond = draw(conditions(env))
            w = g_where(body, cond, scale)
        how = draw(st.sampled_from(["bare", "bare", "c*w", "w/c", "-w"]))
        if how == "c*w":
            return g_mul(draw(constants(env, nonzero=True)), "*", w)
        if how == "w/c":
            return g_mul(w, "/", draw(constants(env, nonzero=True)))
        if how == "-w":
            return g_neg(w)
        return w
    parts = draw(st.lists(terms(env, allow_group=False, scope=scope), min_size=2, max_size=3))
    out = parts[0]
    for p in parts[1:]:
        out = g_add(out, draw(st.sampled_from(["+", "-"])), p)
    return g_mul(draw(constants(env, nonzero=True)), "*", out)


@st.composite
def formulas(draw: Any, env: Env) -> G:
    """A per-position formula: a sum of terms."""
    parts = draw(st.lists(terms(env), min_size=1, max_size=4))
    return draw(_combine(env, parts))


@st.composite
def _combine(draw: Any, env: Env, parts: list[G]) -> G:
    """The terms added and subtracted, sometimes with a constant offset (which changes no
    gradient) and the first negated."""
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(parts)))
        parts.insert(at, draw(constants(env)))
    out = parts[0]
    if draw(st.integers(0, 3)) == 0:
        out = g_neg(out)
    for p in parts[1:]:
        out = g_add(out, draw(st.sampled_from(["+", "-"])), p)
    return out


@st.composite
def aggregates(
    draw: Any,
    env: Env,
    *,
    body: G | None = None,
    name: str | None = None,
    batch: bool | None = None,
) -> G:
    """``sum(e)`` or ``mean(e)``, over each example or (``batch=true``) the batch; ``e`` is
    ``body``, or a per-position formula with where-terms of the aggregate's scope."""
    if name is None:
        name = draw(st.sampled_from(["sum", "mean"]))
    if batch is None:
        batch = draw(st.integers(0, 3)) == 0
    scope = "sum" if name == "sum" else "mean-batch" if batch else "mean"
    if body is None:
        parts = draw(st.lists(terms(env, allow_group=False, scope=scope), min_size=1, max_size=2))
        body = draw(_combine(env, parts))
        if not body.data:
            body = g_add(body, "+", draw(loss_calls(env)))
    count = env.n if batch else env.positions
    lo, hi = (body.lo * count, body.hi * count) if name == "sum" else (body.lo, body.hi)
    flag = ", batch=true" if batch else ", batch=false" if draw(st.integers(0, 7)) == 0 else ""
    return G(
        f"{name}({body.text}{flag})",
        f"{name}({body.tight}{flag})",
        ATOM,
        lo,
        hi,
        level=BATCH if batch else EXAMPLE,
    )


@st.composite
def example_terms(draw: Any, env: Env, *, allow_group: bool = True) -> G:
    """One additive example-level term: plain, selected by an example-level condition (whose
    masked examples are replaced before the term is computed), or a scaled sum of terms."""
    kinds = ["plain", "plain", "where", "where"]
    if allow_group:
        kinds.append("group")
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        x = draw(data_exprs(env, level=EXAMPLE))
        how = draw(st.sampled_from(["bare", "bare", "c*x", "x/c"]))
        if how == "bare":
            return x
        c = draw(constants(env, nonzero=True))
        return g_mul(c, "*", x) if how == "c*x" else g_mul(x, "/", c)
    if kind == "where":
        nested = draw(st.integers(0, 5))
        if nested == 0:
            body = draw(numbers(0.1, 3.0))  # a constant term: 1 where C counts examples
        elif nested == 1:  # a batch-wide aggregate computed on the replaced inputs
            body = g_add(draw(aggregates(env, batch=True)), "+", draw(aggregates(env, batch=False)))
        else:
            body = draw(data_exprs(env, level=EXAMPLE))
            if body.level == BATCH:  # a batch-wide term cannot be selected
                body = g_add(body, "+", draw(aggregates(env, name="mean")))
                if body.level == BATCH:
                    body = g_add(body, "+", draw(example_losses(env)))
            if body.level == BATCH:
                return body
            if draw(st.booleans()):
                body = g_mul(draw(constants(env, nonzero=True)), "*", body)
        cond = draw(conditions(env, 1, level=EXAMPLE))
        if not cond.data and not body.data:  # 1 where alpha > 0 would be a constant
            x = draw(example_values(env))
            cond = c_join("and", [cond, c_cmp(x, ">=", draw(thresholds(env, x)))])
        scale = env.examples if env.where_mean == "selected" else 1.0
        w = replace(g_where(body, cond, scale), level=EXAMPLE)
        how = draw(st.sampled_from(["bare", "bare", "c*w", "w/c", "-w"]))
        if how == "c*w":
            return g_mul(draw(constants(env, nonzero=True)), "*", w)
        if how == "w/c":
            return g_mul(w, "/", draw(constants(env, nonzero=True)))
        if how == "-w":
            return g_neg(w)
        return w
    parts = draw(st.lists(example_terms(env, allow_group=False), min_size=2, max_size=3))
    out = parts[0]
    for p in parts[1:]:
        out = g_add(out, draw(st.sampled_from(["+", "-"])), p)
    return g_mul(draw(constants(env, nonzero=True)), "*", out)


@st.composite
def example_formulas(draw: Any, env: Env) -> G:
    """An example-level formula: a sum of example-level (and batch-wide) terms."""
    parts = draw(st.lists(example_terms(env), min_size=1, max_size=3))
    return draw(_combine(env, parts))


def _relayout(text: str, rng: np.random.Generator) -> str:
    """Comments and line breaks around some operators (whitespace is free in lossdsl)."""

    def split(m: re.Match[str]) -> str:
        r = rng.random()
        if r < 0.15:
            return f"\n  {m.group(1)} "
        if r < 0.25:
            return f"  # {m.group(1)}?\n{m.group(1)} "
        return m.group(0)

    return re.sub(r" (\+|-|\*|where|and|or) ", split, text)


@st.composite
def layouts(draw: Any, t_start: int, p_start: int) -> list[Layout]:
    """One or two units with label layouts, on columns after the shared ones."""
    out: list[Layout] = []
    t_at, p_at = t_start, p_start
    for name in LAYOUT_NAMES[: draw(st.integers(1, 2))]:
        kind = draw(st.sampled_from(["index", "index", "index", "moved", "true", "pred"]))
        if kind == "index":
            k = draw(st.integers(2, 4))
            role = draw(st.sampled_from(["cat", "catl"]))
            low = draw(st.sampled_from([0, -1, -2]))
            out.append(Layout(name, kind, role, (t_at, t_at + 1), (p_at, p_at + k), low))
            t_at, p_at = t_at + 1, p_at + k
        elif kind == "moved":
            role = draw(st.sampled_from(ROLES))
            w = draw(st.integers(2, 3) if role in ("cat", "catl") else st.integers(1, 2))
            gap = draw(st.integers(0, 1))  # the true side may start later than the pred side
            out.append(Layout(name, kind, role, (t_at + gap, t_at + gap + w), (p_at, p_at + w)))
            t_at, p_at = t_at + gap + w, p_at + w
        elif kind == "true":
            role = draw(st.sampled_from(["pos", "binp"]))
            out.append(Layout(name, kind, role, (t_at, t_at + 1), None))
            t_at += 1
        else:
            role = draw(st.sampled_from(["reg", "binl"]))
            out.append(Layout(name, kind, role, None, (p_at, p_at + 1)))
            p_at += 1
    return out


@st.composite
def envs(draw: Any, *, example: bool = False) -> Env:
    groups: list[Group] = []
    start = 0
    for _ in range(draw(st.integers(1, 4))):
        role = draw(st.sampled_from(ROLES))
        lo, hi = (2, 4) if role in ("cat", "catl") else (1, 3)
        width = draw(st.integers(lo, hi))
        groups.append(Group(role, start, start + width))
        start += width
    mode = draw(st.sampled_from(["width", "names", "names", "none"]))
    names: dict[str, tuple[int, int]] = {}
    units: Any = start if mode == "width" else None
    extra: list[Layout] = []
    if mode == "names":
        pool = iter(UNIT_NAMES)
        binding: dict[str, Any] = {}
        for g in groups:
            if draw(st.booleans()):
                name = next(pool)
                names[name] = (g.start, g.stop)
                one = g.stop == g.start + 1 and draw(st.booleans())
                binding[name] = g.start if one else [g.start, g.stop]
            if g.stop - g.start > 1 and draw(st.booleans()):
                name = next(pool)
                col = draw(st.integers(g.start, g.stop - 1))
                names[name] = (col, col + 1)
                binding[name] = col
        if draw(st.integers(0, 2)) > 0:
            extra = draw(layouts(start, start))
            binding.update({lay.name: lay.binding for lay in extra})
        units = binding
    n_params = draw(st.integers(0, 3))
    params = {}
    for name in PARAM_NAMES[:n_params]:
        v = draw(st.sampled_from([0.5, 1.0, 0.0, -0.5, 2.0, 0.3, 1.5, -1.0, 0.7]))
        params[name] = v
    where_mean = draw(st.sampled_from(["selected", "batch"]))
    if not example:
        shape: tuple[int, ...] = (draw(st.integers(1, MAX_SAMPLES)),)
        if draw(st.integers(0, 4)) == 0:
            shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    else:
        rank = draw(st.sampled_from([2, 3, 3, 3, 4]))
        if rank == 2:
            shape = (draw(st.integers(1, 6)),)
        elif rank == 3:
            shape = (draw(st.integers(1, 4)), draw(st.integers(1, 5)))
        else:
            shape = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    return Env(groups, units, names, params, where_mean, shape, extra)


@dataclass
class Case:
    formula: str
    tight: str | None
    groups: list[Group]
    units: Any
    params: dict[str, float]
    where_mean: str
    shape: tuple[int, ...]
    seed: int
    nan: str  # "none", "masked" (only in rows where-terms mask out) or "any"
    weights: bool
    layouts: list[Layout] = field(default_factory=list)
    example: bool = False  # an example-level formula
    free: frozenset[tuple[str, int]] = frozenset()
    bodies: tuple[frozenset[tuple[str, int]], ...] = ()

    def describe(self) -> str:
        out = {
            "formula": self.formula,
            "units": self.units,
            "params": self.params,
            "where_mean": self.where_mean,
            "groups": [[g.role, g.start, g.stop] for g in self.groups],
            "shape": list(self.shape),
            "seed": self.seed,
            "nan": self.nan,
            "weights": self.weights,
        }
        if self.layouts:
            out["layouts"] = [lay.to_json() for lay in self.layouts]
        return json.dumps(out)


@st.composite
def cases(draw: Any, *, example: bool = False) -> Case:
    env = draw(envs(example=example))
    g = draw(example_formulas(env) if example else formulas(env))
    assume(g.data)
    seed = draw(st.integers(0, 2**31 - 1))
    text = g.text
    if draw(st.integers(0, 3)) == 0:
        text = _relayout(text, np.random.default_rng(seed))
    case = Case(
        formula=text,
        tight=g.tight,
        groups=env.groups,
        units=env.units,
        params=env.params,
        where_mean=env.where_mean,
        shape=env.shape,
        seed=seed,
        nan=draw(st.sampled_from(["none", "none", "masked", "masked", "any"])),
        weights=draw(st.booleans()),
        layouts=env.layouts,
        example=example,
    )
    case.free, case.bodies = columns_read(case)
    return case


# -- inputs --------------------------------------------------------------------------------------


def _inject(rng: np.random.Generator, x: np.ndarray, values: Sequence[float], p: float) -> None:
    hit = rng.random(x.shape) < p
    x[hit] = rng.choice(np.asarray(values, np.float64), size=int(hit.sum()))


def _labels(rng: np.random.Generator, role: str, shape: tuple[int, ...], w: int) -> np.ndarray:
    """Labels of ``role`` for ``w`` columns, as float32 values."""
    t = np.zeros((*shape, w))
    if role in ("binp", "binl"):
        t = rng.integers(0, 2, (*shape, w)).astype(np.float64)
        if rng.random() < 0.3:
            _inject(rng, t, list(rng.uniform(0, 1, 8)), 0.5)  # soft labels
    elif role in ("cat", "catl"):
        # One-hot, soft, or (probabilities only) no class at all.
        none = 0.15 if role == "cat" else 0.0
        kind = rng.choice(3, size=shape, p=[0.7, 0.3 - none, none])
        hot = np.eye(w)[rng.integers(0, w, shape)]
        soft = rng.dirichlet(np.ones(w), size=shape)
        t = np.where((kind == 0)[..., None], hot, np.where((kind == 1)[..., None], soft, 0.0))
    elif role == "reg":
        t = np.clip(rng.normal(0, 2, (*shape, w)), -8, 8)
        _inject(rng, t, [0.0, 1.0, -1.0], 0.1)
    else:  # pos
        t = rng.uniform(0, 5, (*shape, w))
        _inject(rng, t, [0.0, 1.0, 10.0], 0.1)
    return t.astype(np.float32).astype(np.float64)


def _predictions(rng: np.random.Generator, role: str, t: np.ndarray) -> np.ndarray:
    """Predictions of ``role`` for the labels ``t`` (some exactly right)."""
    shape, w = t.shape[:-1], t.shape[-1]
    if role == "binp":
        p = rng.uniform(0, 1, (*shape, w))
        _inject(rng, p, [0.0, 1.0, 0.5, 1e-8, float(np.float32(1 - 1e-7))], 0.15)
        perfect = rng.random(p.shape) < 0.1
        p[perfect] = t[perfect]
    elif role == "binl":
        p = np.clip(rng.normal(0, 4, (*shape, w)), -12, 12)
        _inject(rng, p, [0.0, 12.0, -12.0, 0.5], 0.1)
    elif role == "cat":
        p = rng.dirichlet(np.ones(w), size=shape)
        loose = rng.random(shape) < 0.3
        p[loose] = rng.uniform(0.01, 1, (int(loose.sum()), w))
        exact = rng.random(shape) < 0.15
        p[exact] = np.where(t[exact] > 0, t[exact], 0.0)
        _inject(rng, p, [0.0, 1.0], 0.05)
        dead = p.sum(-1) <= 0
        p[dead] = 0.5
    elif role == "catl":
        p = np.clip(rng.normal(0, 3, (*shape, w)), -10, 10)
    elif role == "reg":
        p = np.clip(t + rng.normal(0, 1.5, (*shape, w)), -8, 8)
        same = rng.random(p.shape) < 0.1
        p[same] = t[same]
        _inject(rng, p, [0.0, 1.0], 0.05)
    else:
        p = rng.uniform(0.01, 10, (*shape, w))
        same = rng.random(p.shape) < 0.1
        p[same] = t[same]
        _inject(rng, p, [0.0, 1.0], 0.05)
    return p


def _class_indices(
    rng: np.random.Generator, low: int, k: int, shape: tuple[int, ...]
) -> np.ndarray:
    """Class indices in ``[low, k)``; with examples of several positions, some examples have
    no index >= 0 (an image without a positive anchor, a sentence fully ignored) and some no
    negative one."""
    index = rng.integers(low, k, shape).astype(np.float64)
    if low < 0 and len(shape) > 1:
        for i in range(shape[0]):
            r = rng.random()
            if r < 0.3:
                index[i] = rng.integers(low, 0, shape[1:])
            elif r < 0.5:
                index[i] = rng.integers(0, k, shape[1:])
    return index


def make_inputs(
    groups: Sequence[Group],
    shape: tuple[int, ...],
    seed: int,
    layouts: Sequence[Layout] = (),
    *,
    examples: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions in each group's domain, with exact special values mixed in
    (saturated probabilities, perfect predictions, zeros), as float32. The layouts' columns
    follow the shared ones. ``examples``: for an example-level formula, some examples of
    several positions have binary labels all 0 (nothing to detect)."""
    rng = np.random.default_rng(seed)
    width = max(g.stop for g in groups)
    t_width = max([width] + [lay.true[1] for lay in layouts if lay.true is not None])
    p_width = max([width] + [lay.pred[1] for lay in layouts if lay.pred is not None])
    yt = np.zeros((*shape, t_width))
    yp = np.zeros((*shape, p_width))
    for g in groups:
        t = _labels(rng, g.role, shape, g.stop - g.start)
        yt[..., g.start : g.stop] = t
        yp[..., g.start : g.stop] = _predictions(rng, g.role, t)
    more = np.random.default_rng(seed + 3)  # the groups' values do not depend on what follows
    if examples and len(shape) > 1:
        for g in groups:
            if g.role in ("binp", "binl"):
                empty = more.random(shape[0]) < 0.3
                yt[empty, ..., g.start : g.stop] = 0.0
    for lay in layouts:
        if lay.kind == "index":
            assert lay.true is not None and lay.pred is not None
            k = lay.pred[1] - lay.pred[0]
            index = _class_indices(more, lay.low, k, shape)
            hot = (index[..., None] == np.arange(k)).astype(np.float64)
            yt[..., lay.true[0]] = index
            yp[..., lay.pred[0] : lay.pred[1]] = _predictions(more, lay.role, hot)
            continue
        cols = lay.true or lay.pred
        assert cols is not None
        t = _labels(more, lay.role, shape, cols[1] - cols[0])
        p = _predictions(more, lay.role, t)
        if lay.true is not None:
            yt[..., lay.true[0] : lay.true[1]] = t
        if lay.pred is not None:
            yp[..., lay.pred[0] : lay.pred[1]] = p
    return yt.astype(np.float32), yp.astype(np.float32)


def inject_nan(
    case: Case, yt: np.ndarray, yp: np.ndarray, reads: Sequence[np.ndarray], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``"masked"``: NaN (and inf in predictions) in columns that only where-terms read, at
    positions that no where-term reading them reads (``Result.reads``). ``"any"``: NaN labels
    anywhere but in class-index columns (which TensorFlow casts to integers)."""
    rng = np.random.default_rng(seed)
    yt, yp = yt.copy(), yp.copy()
    if case.nan == "any":
        hit = rng.random(yt.shape) < 0.1
        for lay in case.layouts:
            if lay.kind == "index":
                assert lay.true is not None
                hit[..., lay.true[0]] = False
        yt[hit] = np.nan
        return yt, yp
    assert len(reads) == len(case.bodies)
    shape = yt.shape[:-1]
    for col in range(max(yt.shape[-1], yp.shape[-1])):
        masked: dict[str, np.ndarray] = {}
        for side, width in (("t", yt.shape[-1]), ("p", yp.shape[-1])):
            if col >= width or (side, col) in case.free:
                continue
            readers = [r for r, body in zip(reads, case.bodies, strict=True) if (side, col) in body]
            if readers:
                masked[side] = ~np.logical_or.reduce(readers)
        if not masked:
            continue
        hit = rng.random(shape) < 0.7
        if "t" in masked:
            yt[..., col][hit & masked["t"]] = np.nan
        bad = hit & (rng.random(shape) < 0.5)
        value = rng.choice([np.nan, np.inf, -np.inf])
        if "p" in masked:
            yp[..., col][bad & masked["p"]] = value
    return yt, yp


def sample_weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 2)
    w = rng.uniform(0, 2, shape)
    w[rng.random(shape) < 0.2] = 0.0
    return w.astype(np.float32)


# -- the comparison ------------------------------------------------------------------------------


def _assert_matches(got: np.ndarray, want: Result, what: str, case: str) -> None:
    got = np.asarray(got, np.float64)
    exp = want.per_sample
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    nan = np.isnan(exp)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN where the oracle has none\n{case}"
    inf = np.isinf(exp)
    assert np.array_equal(got[inf], exp[inf]), f"{what}: infinities differ\n{case}"
    ok = ~(nan | inf)
    tol = want.tolerance(RTOL)
    bad = ok & ~(np.abs(got - exp) <= tol)
    assert not bad.any(), (
        f"{what}: values differ at {np.argwhere(bad)[:5].tolist()}\n"
        f"got    {got[bad][:5]}\noracle {exp[bad][:5]}\ntol    {tol[bad][:5]}\n{case}"
    )


def _close_value(got: float, want: float, tol: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return abs(got - want) <= tol


def _oracle(case: Case, formula: str | None = None) -> Oracle:
    return Oracle(
        formula or case.formula, units=case.units, params=case.params, where_mean=case.where_mean
    )


def run_case(
    case: Case,
    yt: np.ndarray,
    yp: np.ndarray,
    weights: np.ndarray | None,
    *,
    discard: Callable[[], None] | None = None,
    xla: bool = False,
    hidden_nan: bool = False,
) -> None:
    """Compile the formula with lossdsl and compare it with the oracle on these inputs.
    ``hidden_nan``: skip the gradient checks where the value hides a NaN (a known bug, see
    the corpus case "divide-no-nan-hides-nan-numerator")."""
    about = case.describe()
    kwargs = {"units": case.units, "params": case.params, "where_mean": case.where_mean}
    lossdsl.validate(case.formula, units=case.units, params=case.params, allow_negative=True)
    oracle = _oracle(case)
    want = oracle(yt, yp, weights)
    if want.ambiguous.any():
        assert discard is not None, f"a comparison is too close to call in float32\n{about}"
        discard()
    if case.tight is not None:  # the same formula, fully parenthesised, means the same
        other = _oracle(case, case.tight)(yt, yp, weights)
        nan = np.isnan(want.per_sample)
        assert np.array_equal(nan, np.isnan(other.per_sample)), about
        slack = 1e-9 * np.abs(want.per_sample) + 1e-6 * 2.0**-24 * want.per_sample_err + 1e-300
        diff = np.abs(other.per_sample - want.per_sample)
        assert np.all((diff <= slack)[~nan]), (
            f"the parenthesised formula means something else:\n{case.tight}\n{about}"
        )

    loss = lossdsl.compile_loss(case.formula, allow_negative=True, **kwargs)
    t, p = tf.constant(yt), tf.constant(yp)
    with tf.GradientTape() as tape:
        tape.watch(p)
        value = loss(t, p, sample_weight=None if weights is None else tf.constant(weights))
    grad = tape.gradient(value, p)
    per = loss.call(t, p)
    _assert_matches(per.numpy(), want, "per-sample", about)
    tol = want.value_tolerance(RTOL)
    assert _close_value(float(value), want.value, tol), (
        f"reduced: got {float(value)!r}, oracle {want.value!r} (tol {tol:.3g})\n{about}"
    )
    skip = want.hidden if hidden_nan else np.zeros(want.per_sample.shape, bool)
    finite = np.isfinite(want.per_sample) & ~skip
    g = grad.numpy() if grad is not None else np.zeros_like(yp)
    bad = finite & ~np.isfinite(g).reshape(*finite.shape, -1).all(axis=-1)
    assert not bad.any(), (
        f"non-finite gradient at samples {np.argwhere(bad)[:5].tolist()} whose value is finite\n"
        f"{about}"
    )
    check_gradient_values(oracle, want, yt, yp, weights=weights, grad=g, skip=skip, about=about)
    if xla:
        compiled = tf.function(loss.call, jit_compile=True)
        _assert_matches(compiled(t, p).numpy(), want, "per-sample (XLA)", about)


def check_gradient_values(
    oracle: Oracle,
    want: Result,
    yt: np.ndarray,
    yp: np.ndarray,
    *,
    weights: np.ndarray | None,
    grad: np.ndarray,
    skip: np.ndarray,
    about: str,
    rows: int = 3,
) -> None:
    """The gradient, along a random direction in a few samples' predictions (an example's, for
    an example-level formula), against the oracle's central difference of the reduced loss
    with the masks held fixed (conditions carry no gradient). A batch-wide term makes every
    example's value depend on each example's predictions, so the difference is taken over all
    values: those that do not depend on the direction do not change.

    Skipped where the derivative is not defined (a kink within the step: a clip bound, a
    saturated probability; the oracle's kinks: a tie in min, max or clip, where the function
    may even be flat while an automatic derivative takes one side, and a saturated sigmoid or
    tanh, whose derivative float32 computes with few digits) or float32 cannot compute the
    value well."""
    rng = np.random.default_rng(int(abs(yp[np.isfinite(yp)]).sum() * 1000) % 2**32)
    shape = want.per_sample.shape
    n = want.per_sample.size
    w = np.ones(shape) if weights is None else weights.astype(np.float64)
    conditioned = 1e3 * 32 * 2.0**-24 * want.per_sample_err <= np.abs(want.per_sample) + 1e-3
    candidates = np.argwhere(np.isfinite(want.per_sample) & conditioned & ~skip & ~want.kinks)
    base = yp.astype(np.float64)
    f0 = want.per_sample
    for index in rng.permutation(len(candidates))[:rows]:
        i = tuple(candidates[index])
        direction = np.zeros(yp.shape)
        finite = np.isfinite(yp[i])
        direction[i] = rng.normal(size=yp[i].shape) * finite
        h = 1e-6 * (1 + float(np.max(np.abs(yp[i][finite]), initial=0.0)))

        def at(step: float, direction: np.ndarray = direction) -> np.ndarray:
            out = oracle(yt, base + step * direction, masks=want.masks).per_sample
            change = out - f0
            change[np.isnan(out) & np.isnan(f0)] = 0.0  # NaN, and not for this direction
            return change

        up, down, up4, down4 = at(h), at(-h), at(h / 4), at(-h / 4)
        moved = (up != 0) | (down != 0) | (up4 != 0) | (down4 != 0)
        if not np.all(conditioned[moved]):
            continue
        forward, backward = np.sum(up) / h, -np.sum(down) / h
        central, finer = np.sum(up - down) / (2 * h), np.sum(up4 - down4) / (h / 2)
        rough = max(abs(forward - backward), abs(central - finer))
        if not math.isfinite(central + finer + forward + backward) or (
            rough > 1e-3 * abs(central) + 1e-9
        ):
            continue  # a kink, or a feature smaller than the step: no derivative to compare
        expected = float(np.sum(w * (up4 - down4))) / (h / 2) / n
        terms = grad[i] * direction[i]
        got = float(np.sum(terms))
        tol = 1e-2 * (float(np.sum(np.abs(terms))) + abs(expected)) + 1e-7
        assert abs(got - expected) <= tol, (
            f"gradient at sample {list(i)} along {direction[i].tolist()}: got {got!r}, "
            f"oracle {expected!r}\n{about}"
        )


def prepare(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The case's inputs: from its seed, with NaN injected where it asks for them; the
    weights per position, or per example for an example-level formula."""
    example = _oracle(case).example
    yt, yp = make_inputs(case.groups, case.shape, case.seed, case.layouts, examples=example)
    if case.nan != "none":
        clean = _oracle(case)(yt, yp)
        yt, yp = inject_nan(case, yt, yp, clean.reads, case.seed + 1)
    shape = case.shape[:1] if example else case.shape
    weights = sample_weights(shape, case.seed) if case.weights else None
    return yt, yp, weights


# -- the tests -----------------------------------------------------------------------------------

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _random_case(case: Case) -> None:
    assert _oracle(case).example == case.example, case.describe()
    yt, yp, weights = prepare(case)
    if case.nan == "masked":
        # The oracle itself must find masked NaN harmless: nothing but where-terms reads them.
        clean = _oracle(case)(
            *make_inputs(case.groups, case.shape, case.seed, case.layouts, examples=case.example)
        )
        again = _oracle(case)(yt, yp)
        assert np.array_equal(np.isfinite(clean.per_sample), np.isfinite(again.per_sample))
    run_case(case, yt, yp, weights, discard=lambda: assume(False), hidden_nan=True)


@settings(SETTINGS, max_examples=110)
@given(cases())
def test_random_formulas_match_the_oracle(case: Case) -> None:
    _random_case(case)


@settings(SETTINGS, max_examples=80)
@given(cases(example=True))
def test_random_example_formulas_match_the_oracle(case: Case) -> None:
    _random_case(case)


def _sides(binding: Any) -> tuple[set[int], set[int]]:
    """The columns of ``y_true`` and of ``y_pred`` a ``units`` entry names."""

    def cols(b: Any) -> set[int]:
        return {b} if isinstance(b, int) else set(range(b[0], b[1]))

    if isinstance(binding, dict):
        return tuple(cols(binding[s]) if s in binding else set() for s in ("true", "pred"))  # type: ignore[return-value]
    return cols(binding), cols(binding)


def columns_read(
    case: Case,
) -> tuple[frozenset[tuple[str, int]], tuple[frozenset[tuple[str, int]], ...]]:
    """From the parsed formula: the columns read outside where-terms (conditions included),
    and those each where-term reads (``cce(u, ignore_class=c)`` is one), in text order (what
    ``inject_nan`` needs), as ``("t", j)`` for ``y_true`` and ``("p", j)`` for ``y_pred``. A
    unit that reads the same columns on both sides counts as reading both, even for ``pred``
    and ``true``."""
    names = case.units if isinstance(case.units, dict) else {}

    def sides(node: ast.Node) -> tuple[set[int], set[int]]:
        if isinstance(node, ast.Unit):
            return {node.index}, {node.index}
        if isinstance(node, ast.UnitSlice):
            both = set(range(node.start, node.stop))
            return both, both
        return _sides(names[node.id])  # type: ignore[union-attr]

    def read(node: ast.Node, which: str = "both") -> set[tuple[str, int]]:
        t, p = sides(node)
        if t == p:
            which = "both"
        return {("t", j) for j in t if which != "pred"} | {("p", j) for j in p if which != "true"}

    free: set[tuple[str, int]] = set()
    bodies: list[set[tuple[str, int]]] = []

    def visit(node: ast.Node, into: set[tuple[str, int]]) -> None:
        if isinstance(node, ast.Where):
            bodies.append(set())
            body = bodies[-1]
            visit(node.cond, free)
            visit(node.term, body)
            return
        if isinstance(node, ast.Call) and node.name in ("pred", "true"):
            into |= read(node.args[0], node.name)
            return
        if isinstance(node, ast.Call) and node.name not in MATH_FUNCTIONS | {"sum", "mean"}:
            if any(k.name == "ignore_class" for k in node.kwargs):
                bodies.append(read(node.args[0]))
                free.update(("t", j) for j in sides(node.args[0])[0])
            else:
                into |= read(node.args[0])  # a loss
            return
        for child in node.children():
            visit(child, into)

    visit(lossdsl.parse(case.formula).expr, free)
    return frozenset(free), tuple(frozenset(b) for b in bodies)


def _floats(rows: Any) -> np.ndarray:
    """JSON rows, where NaN and infinities are written "nan", "inf", "-inf"."""
    return np.vectorize(float)(np.asarray(rows, dtype=object)).astype(np.float32)


def _corpus_case(entry: dict[str, Any]) -> tuple[Case, np.ndarray, np.ndarray, Any]:
    """A corpus entry: ``formula`` with ``units``, ``params`` and ``where_mean`` (and, if the
    fully parenthesised text is worth checking too, ``tight``), and its inputs: either written
    out (``y_true``, ``y_pred``, optional ``sample_weight``, per position or, for an
    example-level formula, per example; NaN as "nan"), or generated like the random examples'
    from ``groups`` (role, start, stop), ``layouts`` (name, kind, role, true, pred, low),
    ``shape``, ``seed``, ``weights`` and ``nan``. ``xla`` also runs it under XLA. ``xfail`` is
    the reason a known bug fails it, with an ``AssertionError`` or the error that ``raises``
    names. ``note`` says why it is kept."""
    case = Case(
        formula=entry["formula"],
        tight=entry.get("tight"),
        groups=[Group(r, a, b) for r, a, b in entry.get("groups", [])],
        units=entry.get("units"),
        params=entry.get("params", {}),
        where_mean=entry.get("where_mean", "selected"),
        shape=tuple(entry.get("shape", [])),
        seed=entry.get("seed", 0),
        nan=entry.get("nan", "none"),
        weights=bool(entry.get("weights", False)),
        layouts=[Layout.from_json(row) for row in entry.get("layouts", [])],
    )
    case.example = _oracle(case).example
    case.free, case.bodies = columns_read(case)
    if "y_true" in entry:
        yt, yp = _floats(entry["y_true"]), _floats(entry["y_pred"])
        case.shape = yt.shape[:-1]
        weights = entry.get("sample_weight")
        return case, yt, yp, None if weights is None else _floats(weights)
    return case, *prepare(case)


def _corpus_params() -> list[Any]:
    out = []
    for entry in CASES:
        marks = []
        if "xfail" in entry:
            raises = {"LossValidationError": lossdsl.LossValidationError}.get(
                entry.get("raises", ""), AssertionError
            )
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=entry["xfail"]))
        out.append(pytest.param(entry, id=entry["id"], marks=marks))
    return out


@pytest.mark.parametrize("entry", _corpus_params())
def test_corpus(entry: dict[str, Any]) -> None:
    case, yt, yp, weights = _corpus_case(entry)
    run_case(case, yt, yp, weights, xla=bool(entry.get("xla", False)))


def test_corpus_is_well_formed() -> None:
    ids = [e["id"] for e in CASES]
    assert len(ids) == len(set(ids)) >= 20
    for e in CASES:
        assert ("y_true" in e) != ("groups" in e), e["id"]
