"""Differential testing: random valid formulas, compiled by lossdsl, against an independent
NumPy float64 interpreter of the AST (``tests/oracle.py``).

Hypothesis generates a model output (groups of columns with a role each: binary probabilities,
binary logits, one-hot probabilities, one-hot logits, regression targets, positive counts), a
formula over it that uses every construct of the language, and inputs in each role's domain,
including rows that the conditions mask out and, in some examples, NaN or inf in those masked
rows. The compiled loss must agree with the oracle:

* per sample (``FormulaLoss.call``) and reduced (``loss(y_true, y_pred, sample_weight)``),
  within 1e-4 relative, widened only by the oracle's bound on float32's own rounding error
  (cancellation, division by small numbers);
* NaN exactly where the oracle has NaN;
* with a finite gradient with respect to ``y_pred`` on every sample whose oracle value is
  finite.

The generator renders each formula twice: as written for lossdsl (fewest parentheses, numbers
in varied spellings, sometimes comments and line breaks) and fully parenthesised. The oracle
evaluates both, so a parse that loses precedence or misreads a number is caught too, although
both the oracle and the compiler read lossdsl's AST.

``tests/cases/differential.json`` is a corpus of formulas worth keeping (tricky paths, and the
examples that found problems); ``test_corpus`` runs each against the oracle, some also under
``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from oracle import Oracle, Result

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
}
MIN_UNITS = {"cce": 2, "cosine": 2}
MATH_FUNCTIONS = set(lossdsl.catalog.MATH)
LOSS_NAMES = list(LOSS_ROLES)
UNIT_NAMES = ["presence", "loc", "box", "cls", "score", "logit", "size", "count", "extra", "mass"]
PARAM_NAMES = ["alpha", "beta", "lam", "w2", "tau"]
MAX_SAMPLES = 12
BIG = 1e12  # no generated value may exceed this (float32 overflows at 3.4e38)
F32_BIG = 3.0e38


@dataclass(frozen=True)
class Group:
    role: str
    start: int
    stop: int


@dataclass
class Env:
    groups: list[Group]
    units: Any  # what is passed as units=
    names: dict[str, tuple[int, int]]  # unit names and their columns
    params: dict[str, float]
    where_mean: str
    roles: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.roles = [g.role for g in self.groups for _ in range(g.start, g.stop)]

    @property
    def width(self) -> int:
        return len(self.roles)

    def t_range(self, a: int, b: int) -> tuple[float, float]:
        return _union(ROLE_TRUE[r] for r in self.roles[a:b])

    def p_range(self, a: int, b: int) -> tuple[float, float]:
        return _union(ROLE_PRED[r] for r in self.roles[a:b])


def _union(ranges: Any) -> tuple[float, float]:
    ranges = list(ranges)
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


# -- generated expressions -----------------------------------------------------------------------
# Precedence of what a text prints as (as in the grammar): a child below what its parent needs
# gets parentheses.
SUM, WHERE, PRODUCT, UNARY, ATOM = 1, 2, 3, 4, 5
C_OR, C_AND, C_NOT, C_CMP = 1, 2, 3, 4


@dataclass(frozen=True)
class G:
    """A generated expression: its text for lossdsl, its fully parenthesised text, the
    precedence of the former, bounds on its value, and which columns it reads where."""

    text: str
    tight: str
    prec: int
    lo: float
    hi: float
    data: bool = True
    free: frozenset[int] = frozenset()  # columns read outside where-terms (conditions included)
    bodies: tuple[frozenset[int], ...] = ()  # columns each where-term reads, in text order
    tail_where: bool = False  # the text ends with an unparenthesised condition
    closed: str = ""  # the text with that last where-term parenthesised

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))


@dataclass(frozen=True)
class C:
    """A generated condition."""

    text: str
    tight: str
    prec: int
    free: frozenset[int]


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
        a.free | b.free,
        a.bodies + b.bodies,
        tail,
        closed,
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
        a.free | b.free,
        a.bodies + b.bodies,
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
        a.free,
        a.bodies,
    )


def g_call(name: str, args: Sequence[G], lo: float, hi: float) -> G:
    return G(
        f"{name}({', '.join(a.text for a in args)})",
        f"{name}({', '.join(a.tight for a in args)})",
        ATOM,
        lo,
        hi,
        any(a.data for a in args),
        frozenset().union(*(a.free for a in args)),
        (),
    )


def g_where(term: G, cond: C, n_max: int, where_mean: str) -> G:
    scale = n_max if where_mean == "selected" else 1
    text = f"{_wrap(term, PRODUCT)} where {cond.text}"
    return G(
        text,
        f"({term.tight} where {cond.tight})",
        WHERE,
        min(0.0, term.lo * scale),
        max(0.0, term.hi * scale),
        True,
        cond.free,
        (term.free,),
        True,
        f"({text})",
    )


def c_cmp(a: G, op: str, b: G) -> C:
    return C(
        f"{_wrap(a, PRODUCT)} {op} {_wrap(b, PRODUCT)}",
        f"({a.tight} {op} {b.tight})",
        C_CMP,
        a.free | b.free,
    )


def c_not(c: C) -> C:
    return C(f"not {_wrap(c, C_NOT)}", f"(not {c.tight})", C_NOT, c.free)


def c_join(word: str, items: Sequence[C]) -> C:
    need, prec = (C_NOT, C_AND) if word == "and" else (C_AND, C_OR)
    return C(
        f" {word} ".join(_wrap(c, need) for c in items),
        "(" + f" {word} ".join(c.tight for c in items) + ")",
        prec,
        frozenset().union(*(c.free for c in items)),
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


def selector(draw: Any, env: Env, a: int, b: int) -> str:
    """Text selecting columns a..b-1: ``u3``, ``u[3:4]``, ``u[1:4]``, or a unit name."""
    options = [f"u[{a}:{b}]"]
    if b == a + 1:
        options.append(f"u{a}")
    options += [n for n, cols in env.names.items() if cols == (a, b)]
    return draw(st.sampled_from(sorted(options)))


def _slices(env: Env, loss: str) -> list[tuple[int, int]]:
    roles = LOSS_ROLES[loss]
    need = MIN_UNITS.get(loss, 1)
    out = []
    for a in range(env.width):
        for b in range(a + need, env.width + 1):
            cols = set(env.roles[a:b])
            if not cols <= roles:
                continue
            if loss == "cce" and not any((g.start, g.stop) == (a, b) for g in env.groups):
                # A whole one-hot group only: probabilities must sum to > 0, and with logits
                # TensorFlow's gradient assumes labels that sum to 1 (see the corpus case
                # "cce-logits-gradient-labels-not-summing-to-1").
                continue
            if loss in ("bce", "focal", "cce") and not (cols <= PROB or cols <= LOGIT):
                continue
            out.append((a, b))
    return out


def _loss_range(name: str, kw: dict[str, Any], env: Env, a: int, b: int) -> tuple[float, float]:
    """Bounds on a loss's per-sample value over columns a..b-1 of their roles' domains."""
    tl, th = env.t_range(a, b)
    pl, ph = env.p_range(a, b)
    w = b - a
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
    if name == "cosine":
        return -1.0, 1.0
    raise AssertionError(name)


@st.composite
def loss_calls(draw: Any, env: Env) -> G:
    names = [n for n in LOSS_NAMES if _slices(env, n)]
    name = draw(st.sampled_from(names))
    a, b = draw(st.sampled_from(_slices(env, name)))
    roles = set(env.roles[a:b])
    kw: dict[str, Any] = {}
    texts: list[str] = []

    def keyword(key: str, value: Any, text: str) -> None:
        kw[key] = value
        texts.append(f"{key}={text}")

    if name in ("bce", "cce", "focal"):
        logits = roles <= LOGIT
        if logits or draw(st.booleans()):
            keyword("from_logits", logits, "true" if logits else "false")
        if draw(st.booleans()):
            s = draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), numbers(0.0, 1.0).map(_num)))
            keyword("label_smoothing", float(s), _number_text(s))
    if name == "focal":
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
    texts = draw(st.permutations(texts)) if texts else texts
    args = ", ".join([selector(draw, env, a, b), *texts])
    lo, hi = _loss_range(name, kw, env, a, b)
    text = f"{name}({args})"
    return G(text, text, ATOM, lo, hi, True, frozenset(range(a, b)))


def _num(g: G) -> float:
    return g.lo


def _number_text(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@st.composite
def accessors(draw: Any, env: Env) -> G:
    col = draw(st.integers(0, env.width - 1))
    fn = draw(st.sampled_from(["pred", "true"]))
    lo, hi = (env.p_range if fn == "pred" else env.t_range)(col, col + 1)
    text = f"{fn}({selector(draw, env, col, col + 1)})"
    return G(text, text, ATOM, lo, hi, True, frozenset({col}))


@st.composite
def positive(draw: Any, env: Env, depth: int) -> G:
    """A per-sample expression that is at least 0.05: for sqrt, log and divisors."""
    x = draw(data_exprs(env, depth))
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
def data_exprs(draw: Any, env: Env, depth: int = 2) -> G:
    """A per-sample value: losses, pred/true, and arithmetic and math on them."""
    kinds = ["loss", "loss", "accessor"]
    if depth > 0:
        kinds += ["unary", "binary", "binary", "scaled", "minmax", "clip"]
    kind = draw(st.sampled_from(kinds))
    if kind == "loss":
        return draw(loss_calls(env))
    if kind == "accessor":
        return draw(accessors(env))
    x = draw(data_exprs(env, depth - 1))
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
            p = draw(positive(env, depth - 1))
            if fn == "log":
                return g_call("log", [p], math.log(p.lo), math.log(p.hi))
            return g_call("sqrt", [p], math.sqrt(p.lo), math.sqrt(p.hi))
        if x.hi <= 10.0:
            return g_call("exp", [x], math.exp(max(x.lo, -700.0)), math.exp(x.hi))
        capped = g_call("min", [x, literal(2.0)], x.lo, 2.0)
        return g_call("exp", [capped], math.exp(max(x.lo, -700.0)), math.exp(2.0))
    if kind == "binary":
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        y = draw(positive(env, depth - 1) if op == "/" else data_exprs(env, depth - 1))
        if op in "+-":
            return g_add(x, op, y)
        out = g_mul(x, op, y)
        return out if out.mag < BIG else g_add(x, "+", y)
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
        return g_mul(c, "/", draw(positive(env, depth - 1)))
    if kind == "minmax":
        fn = draw(st.sampled_from(["min", "max"]))
        y = draw(st.one_of(data_exprs(env, depth - 1), constants(env)))
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
def conditions(draw: Any, env: Env, depth: int = 2) -> C:
    kinds = ["compare", "compare", "compare"]
    if depth > 0:
        kinds += ["and", "or", "not"]
    kind = draw(st.sampled_from(kinds))
    if kind == "not":
        return c_not(draw(conditions(env, depth - 1)))
    if kind in ("and", "or"):
        items = draw(st.lists(conditions(env, depth - 1), min_size=2, max_size=3))
        return c_join(kind, items)
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
    shape = draw(st.sampled_from(["x?t", "x?t", "t?x", "x?y", "param"]))
    if shape == "param" and env.params:
        name = draw(st.sampled_from(sorted(env.params)))
        v = env.params[name]
        return c_cmp(G(name, name, ATOM, v, v, False), op, draw(numbers(0.0, 1.0)))
    x = draw(st.one_of(accessors(env), data_exprs(env, 1)))
    if shape == "x?y":
        y = draw(st.one_of(accessors(env), data_exprs(env, 1)))
    else:
        y = draw(thresholds(env, x))
    return c_cmp(x, op, y) if shape != "t?x" else c_cmp(y, op, x)


@st.composite
def thresholds(draw: Any, env: Env, x: G) -> G:
    """A number for ``x`` to be compared with: mostly inside its range, sometimes exactly a
    value it often takes (0, 0.5, 1), sometimes outside it (nothing or everything selected)."""
    kind = draw(st.sampled_from(["inside", "special", "outside", "param"]))
    if kind == "param" and env.params:
        name = draw(st.sampled_from(sorted(env.params)))
        v = env.params[name]
        return G(name, name, ATOM, v, v, False)
    if kind == "special":
        return literal(draw(st.sampled_from([0.0, 0.5, 1.0])))
    lo, hi = max(x.lo, -100.0), min(x.hi, 100.0)
    if kind == "outside":
        value = hi + 1.0 if draw(st.booleans()) else lo - 1.0
    else:
        frac = draw(st.integers(1, 19)) / 20
        value = lo + frac * (hi - lo)
    value = float(f"{value:.3g}")
    g = literal(abs(value))
    return g_neg(g) if value < 0 else g


@st.composite
def terms(draw: Any, env: Env, *, allow_group: bool = True) -> G:
    """One additive term: plain, with a condition, or a scaled sum of terms."""
    kinds = ["plain", "where", "where"]
    if allow_group:
        kinds.append("group")
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        x = draw(data_exprs(env))
        how = draw(st.sampled_from(["bare", "c*x", "x*c", "x/c"]))
        if how == "bare":
            return x
        c = draw(constants(env, nonzero=True))
        return g_mul(c, "*", x) if how == "c*x" else g_mul(x, how[1], c)
    if kind == "where":
        body = draw(data_exprs(env))
        if draw(st.booleans()):
            body = g_mul(draw(constants(env, nonzero=True)), "*", body)
        w = g_where(body, draw(conditions(env)), MAX_SAMPLES, env.where_mean)
        how = draw(st.sampled_from(["bare", "bare", "c*w", "w/c", "-w"]))
        if how == "c*w":
            return g_mul(draw(constants(env, nonzero=True)), "*", w)
        if how == "w/c":
            return g_mul(w, "/", draw(constants(env, nonzero=True)))
        if how == "-w":
            return g_neg(w)
        return w
    parts = draw(st.lists(terms(env, allow_group=False), min_size=2, max_size=3))
    out = parts[0]
    for p in parts[1:]:
        out = g_add(out, draw(st.sampled_from(["+", "-"])), p)
    return g_mul(draw(constants(env, nonzero=True)), "*", out)


@st.composite
def formulas(draw: Any, env: Env) -> G:
    parts = draw(st.lists(terms(env), min_size=1, max_size=4))
    if draw(st.integers(0, 4)) == 0:  # a constant offset: changes no gradient
        at = draw(st.integers(0, len(parts)))
        parts.insert(at, draw(constants(env)))
    out = parts[0]
    if draw(st.integers(0, 3)) == 0:
        out = g_neg(out)
    for p in parts[1:]:
        out = g_add(out, draw(st.sampled_from(["+", "-"])), p)
    return out


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
def envs(draw: Any) -> Env:
    groups: list[Group] = []
    start = 0
    for _ in range(draw(st.integers(1, 4))):
        role = draw(st.sampled_from(ROLES))
        lo, hi = (2, 4) if role in ("cat", "catl") else (1, 3)
        width = draw(st.integers(lo, hi))
        groups.append(Group(role, start, start + width))
        start += width
    mode = draw(st.sampled_from(["width", "names", "none"]))
    names: dict[str, tuple[int, int]] = {}
    units: Any = start if mode == "width" else None
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
        units = binding
    n_params = draw(st.integers(0, 3))
    params = {}
    for name in PARAM_NAMES[:n_params]:
        v = draw(st.sampled_from([0.5, 1.0, 0.0, -0.5, 2.0, 0.3, 1.5, -1.0, 0.7]))
        params[name] = v
    where_mean = draw(st.sampled_from(["selected", "batch"]))
    return Env(groups, units, names, params, where_mean)


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
    free: frozenset[int] = frozenset()
    bodies: tuple[frozenset[int], ...] = ()

    def describe(self) -> str:
        return json.dumps(
            {
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
        )


@st.composite
def cases(draw: Any) -> Case:
    env = draw(envs())
    g = draw(formulas(env))
    assume(g.data)
    seed = draw(st.integers(0, 2**31 - 1))
    text = g.text
    if draw(st.integers(0, 3)) == 0:
        text = _relayout(text, np.random.default_rng(seed))
    n = draw(st.integers(1, MAX_SAMPLES))
    shape: tuple[int, ...] = (n,)
    if draw(st.integers(0, 4)) == 0:
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    return Case(
        formula=text,
        tight=g.tight,
        groups=env.groups,
        units=env.units,
        params=env.params,
        where_mean=env.where_mean,
        shape=shape,
        seed=seed,
        nan=draw(st.sampled_from(["none", "none", "masked", "masked", "any"])),
        weights=draw(st.booleans()),
        free=g.free,
        bodies=g.bodies,
    )


# -- inputs --------------------------------------------------------------------------------------


def _inject(rng: np.random.Generator, x: np.ndarray, values: Sequence[float], p: float) -> None:
    hit = rng.random(x.shape) < p
    x[hit] = rng.choice(np.asarray(values, np.float64), size=int(hit.sum()))


def make_inputs(
    groups: Sequence[Group], shape: tuple[int, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions in each group's domain, with exact special values mixed in
    (saturated probabilities, perfect predictions, zeros), as float32."""
    rng = np.random.default_rng(seed)
    width = max(g.stop for g in groups)
    yt = np.zeros((*shape, width))
    yp = np.zeros((*shape, width))
    for g in groups:
        w = g.stop - g.start
        t = np.zeros((*shape, w))
        if g.role in ("binp", "binl"):
            t = rng.integers(0, 2, (*shape, w)).astype(np.float64)
            if rng.random() < 0.3:
                _inject(rng, t, list(rng.uniform(0, 1, 8)), 0.5)  # soft labels
        elif g.role in ("cat", "catl"):
            # One-hot, soft, or (probabilities only) no class at all.
            none = 0.15 if g.role == "cat" else 0.0
            kind = rng.choice(3, size=shape, p=[0.7, 0.3 - none, none])
            hot = np.eye(w)[rng.integers(0, w, shape)]
            soft = rng.dirichlet(np.ones(w), size=shape)
            t = np.where((kind == 0)[..., None], hot, np.where((kind == 1)[..., None], soft, 0.0))
        elif g.role == "reg":
            t = np.clip(rng.normal(0, 2, (*shape, w)), -8, 8)
            _inject(rng, t, [0.0, 1.0, -1.0], 0.1)
        else:  # pos
            t = rng.uniform(0, 5, (*shape, w))
            _inject(rng, t, [0.0, 1.0, 10.0], 0.1)
        t = t.astype(np.float32).astype(np.float64)
        if g.role == "binp":
            p = rng.uniform(0, 1, (*shape, w))
            _inject(rng, p, [0.0, 1.0, 0.5, 1e-8, float(np.float32(1 - 1e-7))], 0.15)
            perfect = rng.random(p.shape) < 0.1
            p[perfect] = t[perfect]
        elif g.role == "binl":
            p = np.clip(rng.normal(0, 4, (*shape, w)), -12, 12)
            _inject(rng, p, [0.0, 12.0, -12.0, 0.5], 0.1)
        elif g.role == "cat":
            p = rng.dirichlet(np.ones(w), size=shape)
            loose = rng.random(shape) < 0.3
            p[loose] = rng.uniform(0.01, 1, (int(loose.sum()), w))
            exact = rng.random(shape) < 0.15
            p[exact] = np.where(t[exact] > 0, t[exact], 0.0)
            _inject(rng, p, [0.0, 1.0], 0.05)
            dead = p.sum(-1) <= 0
            p[dead] = 0.5
        elif g.role == "catl":
            p = np.clip(rng.normal(0, 3, (*shape, w)), -10, 10)
        elif g.role == "reg":
            p = np.clip(t + rng.normal(0, 1.5, (*shape, w)), -8, 8)
            same = rng.random(p.shape) < 0.1
            p[same] = t[same]
            _inject(rng, p, [0.0, 1.0], 0.05)
        else:
            p = rng.uniform(0.01, 10, (*shape, w))
            same = rng.random(p.shape) < 0.1
            p[same] = t[same]
            _inject(rng, p, [0.0, 1.0], 0.05)
        yt[..., g.start : g.stop] = t
        yp[..., g.start : g.stop] = p
    return yt.astype(np.float32), yp.astype(np.float32)


def inject_nan(
    case: Case, yt: np.ndarray, yp: np.ndarray, masks: Sequence[np.ndarray], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``"masked"``: NaN (and inf in predictions) in columns that only where-terms read, in
    rows that every where-term reading them masks out. ``"any"``: NaN labels anywhere."""
    rng = np.random.default_rng(seed)
    yt, yp = yt.copy(), yp.copy()
    if case.nan == "any":
        hit = rng.random(yt.shape) < 0.1
        yt[hit] = np.nan
        return yt, yp
    assert len(masks) == len(case.bodies)
    for col in range(yt.shape[-1]):
        if col in case.free:
            continue
        readers = [m for m, body in zip(masks, case.bodies, strict=True) if col in body]
        if not readers:
            continue
        masked = ~np.logical_or.reduce(readers)
        hit = masked & (rng.random(masked.shape) < 0.7)
        yt[..., col][hit] = np.nan
        bad = hit & (rng.random(masked.shape) < 0.5)
        yp[..., col][bad] = rng.choice([np.nan, np.inf, -np.inf])
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


def run_case(
    case: Case,
    yt: np.ndarray,
    yp: np.ndarray,
    weights: np.ndarray | None,
    *,
    discard: Callable[[], None] | None = None,
    xla: bool = False,
) -> None:
    """Compile the formula with lossdsl and compare it with the oracle on these inputs."""
    about = case.describe()
    kwargs = {"units": case.units, "params": case.params, "where_mean": case.where_mean}
    lossdsl.validate(case.formula, units=case.units, params=case.params, allow_negative=True)
    oracle = Oracle(case.formula, **kwargs)
    want = oracle(yt, yp, weights)
    if want.ambiguous.any():
        assert discard is not None, f"a comparison is too close to call in float32\n{about}"
        discard()
    if case.tight is not None:  # the same formula, fully parenthesised, means the same
        other = Oracle(case.tight, **kwargs)(yt, yp, weights)
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
    finite = np.isfinite(want.per_sample)
    g = grad.numpy() if grad is not None else np.zeros_like(yp)
    bad = finite & ~np.all(np.isfinite(g), axis=-1)
    assert not bad.any(), (
        f"non-finite gradient at samples {np.argwhere(bad)[:5].tolist()} whose value is finite\n"
        f"{about}"
    )
    check_gradient_values(oracle, want, yt, yp, weights=weights, grad=g, about=about)
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
    about: str,
    rows: int = 3,
) -> None:
    """The gradient, along a random direction in a few samples' predictions, against the
    oracle's central difference with the masks held fixed (conditions carry no gradient).

    Skipped where the derivative is not defined (a kink within the step: a clip bound, a
    saturated probability, a tie in min or max) or float32 cannot compute the value well."""
    rng = np.random.default_rng(int(abs(yp[np.isfinite(yp)]).sum() * 1000) % 2**32)
    shape = want.per_sample.shape
    n = want.per_sample.size
    w = np.ones(shape) if weights is None else weights.astype(np.float64)
    conditioned = 1e3 * 32 * 2.0**-24 * want.per_sample_err <= np.abs(want.per_sample) + 1e-3
    candidates = np.argwhere(np.isfinite(want.per_sample) & conditioned)
    base = yp.astype(np.float64)
    for index in rng.permutation(len(candidates))[:rows]:
        i = tuple(candidates[index])
        direction = np.zeros(yp.shape)
        finite = np.isfinite(yp[i])
        direction[i] = rng.normal(size=yp.shape[-1]) * finite
        h = 1e-6 * (1 + np.max(np.abs(yp[i][finite]), initial=0.0))

        def at(step: float, i: tuple[int, ...] = i, direction: np.ndarray = direction) -> float:
            out = oracle(yt, base + step * direction, masks=want.masks).per_sample
            return float(out[i])

        f0, up, down, up4, down4 = float(want.per_sample[i]), at(h), at(-h), at(h / 4), at(-h / 4)
        forward, backward = (up - f0) / h, (f0 - down) / h
        central, finer = (up - down) / (2 * h), (up4 - down4) / (h / 2)
        rough = max(abs(forward - backward), abs(central - finer))
        if not math.isfinite(up + down + up4 + down4) or rough > 1e-3 * abs(central) + 1e-9:
            continue  # a kink, or a feature smaller than the step: no derivative to compare
        expected = finer * w[i] / n
        terms = grad[i] * direction[i]
        got = float(np.sum(terms))
        tol = 1e-2 * (float(np.sum(np.abs(terms))) + abs(expected)) + 1e-7
        assert abs(got - expected) <= tol, (
            f"gradient at sample {list(i)} along {direction[i].tolist()}: got {got!r}, "
            f"oracle {expected!r}\n{about}"
        )


def prepare(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The case's inputs: from its seed, with NaN injected where it asks for them."""
    yt, yp = make_inputs(case.groups, case.shape, case.seed)
    if case.nan != "none":
        clean = Oracle(
            case.formula, units=case.units, params=case.params, where_mean=case.where_mean
        )(yt, yp)
        yt, yp = inject_nan(case, yt, yp, clean.masks, case.seed + 1)
    weights = sample_weights(case.shape, case.seed) if case.weights else None
    return yt, yp, weights


# -- the tests -----------------------------------------------------------------------------------


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(cases())
def test_random_formulas_match_the_oracle(case: Case) -> None:
    yt, yp, weights = prepare(case)
    if case.nan == "masked":
        # The oracle itself must find masked NaN harmless: nothing but where-terms reads them.
        clean = Oracle(
            case.formula, units=case.units, params=case.params, where_mean=case.where_mean
        )(*make_inputs(case.groups, case.shape, case.seed))
        again = Oracle(
            case.formula, units=case.units, params=case.params, where_mean=case.where_mean
        )(yt, yp)
        assert np.array_equal(np.isfinite(clean.per_sample), np.isfinite(again.per_sample))
    run_case(case, yt, yp, weights, discard=lambda: assume(False))


def columns_read(case: Case) -> tuple[frozenset[int], tuple[frozenset[int], ...]]:
    """From the parsed formula: the columns read outside where-terms (conditions included),
    and those each where-term reads, in text order (what ``inject_nan`` needs)."""
    names = case.units if isinstance(case.units, dict) else {}

    def cols(node: ast.Node) -> set[int]:
        if isinstance(node, ast.Unit):
            return {node.index}
        if isinstance(node, ast.UnitSlice):
            return set(range(node.start, node.stop))
        b = names[node.id]  # type: ignore[union-attr]
        return {b} if isinstance(b, int) else set(range(b[0], b[1]))

    free: set[int] = set()
    bodies: list[set[int]] = []

    def visit(node: ast.Node, into: set[int]) -> None:
        if isinstance(node, ast.Where):
            visit(node.cond, free)
            bodies.append(set())
            visit(node.term, bodies[-1])
            return
        if isinstance(node, ast.Call) and node.name not in MATH_FUNCTIONS:
            into |= cols(node.args[0])  # a loss, pred() or true()
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
    out (``y_true``, ``y_pred``, optional ``sample_weight``; NaN as "nan"), or generated like
    the random examples' from ``groups`` (role, start, stop), ``shape``, ``seed``, ``weights``
    and ``nan``. ``xla`` also runs it under XLA. ``xfail`` is the reason a known bug fails it,
    with an ``AssertionError`` or the error that ``raises`` names. ``note`` says why it is kept."""
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
    )
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
