"""An independent NumPy float64 interpreter of lossdsl formulas, the oracle of
``tests/test_differential.py``.

It walks the AST that ``lossdsl.parse`` returns and uses nothing else from lossdsl. Units are
resolved here from the ``units`` argument. Every built-in loss is written here from its
mathematical definition, the formulas that Keras documents, and ``where`` follows
``docs/semantics.md``.

Shapes and levels. ``y_true`` and ``y_pred`` have the same leading shape ``S`` (every axis but
the last); a *position* is an index into ``S``, an *example* an index of its first axis, and
the positions of an example its indices on the other axes (``P`` of them; one for a rank-2
input). A value has one of four levels: a constant (a scalar), one value per position (shape
``S``), per example (shape ``(batch,)``) or for the whole batch (a scalar). ``sum(e)`` and
``mean(e)`` aggregate a per-position ``e`` over each example (``mean``: divided by ``P``, 0 when
``P`` is 0), or with ``batch=true`` over every position; ``dice`` and ``tversky`` are
example-level losses. A formula with an aggregate returns one value per example.

Units. A ``units`` entry is an index or ``[start, stop]`` (both sides), or
``{"pred": S, "true": S}``; a unit whose true side is one column and whose pred side ``k >= 2``
columns holds class indices: ``cce`` on it is the sparse crossentropy, every other loss compares
the predictions with ``one_hot(index, k)``; an index outside ``[0, k)`` has no class (a row of
zeros, whose ``cce`` is 0). ``cce(u, ignore_class=c)`` is ``cce(u) where true(u) != c``.

``T where C``:

* ``m`` is the condition, evaluated on the inputs the where-term sees (IEEE comparisons, so a
  NaN operand makes ``<``, ``==`` ... false and ``!=`` true): per position, or, for an
  example-level ``T``, per example;
* ``T`` is computed on inputs whose masked positions (all positions of a masked example) are
  replaced (labels by 0, predictions by 0.5), which matters for ``hinge``'s 0/1 label check and
  for batch-wide values inside ``T``, and is then selected, so a masked position contributes
  exactly 0 even when its inputs are NaN. Inside another where-term (a where in an aggregate in
  an example-level where-term) both replacements apply;
* the selected value is scaled by where the term stands. At the top: ``where_mean="selected"``,
  ``c_i = T_i m_i N / sum(m)`` (``N`` the positions, or examples for an example-level term; 0 when
  nothing is selected); ``where_mean="batch"``, ``c_i = T_i m_i``. Inside ``sum(...)``: no factor.
  Inside ``mean(...)``: ``P / sum_e(m)`` over the example's positions (0 when the example has no
  selected position), so that ``mean(T where C)`` is the mean of ``T`` over them; inside
  ``mean(..., batch=true)``: ``N / sum(m)`` over the batch.

Values are computed in float64. Next to each value the interpreter carries a first-order bound
on the error that a float32 evaluation of the same expression can make, in units of the float32
unit roundoff ``U``: inputs (float32 numbers) are exact, a constant is exact when float32 holds
it, and every operation adds one rounding of its result to the propagated errors of its
operands, except where IEEE arithmetic is exact: an addition, subtraction, product or true
division of exact operands whose result float32 holds, and a sum of exact integers below 2**24
(counts, hard labels). The bound lets a test compare a float32 result within a tolerance that
is relative where the value is well conditioned and widens only where float32 cannot be
accurate (cancellation in ``a - b``, division by a small number). A comparison in a condition
whose two sides lie within that bound of each other could go either way in float32, and so
could ``divide_no_nan`` by a value within its bound of 0; such positions are reported as
ambiguous, and a test discards the example.

The constants inside Keras's losses (``epsilon = 1e-7`` and the clip bound ``1 - epsilon``) are
taken as float32 holds them, because that is the value the float32 computation clips to: the
float64 ``1 - 1e-7`` and float32's ``0.99999988`` differ by 19% in ``1 - p``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lossdsl import ast

__all__ = ["Oracle", "Result", "U", "V"]

U = 2.0**-24
"""The float32 unit roundoff: one rounding changes a value by at most ``U`` times itself."""

_F32 = np.float32
EPS = float(_F32(1e-7))  # keras.config.epsilon() in float32
EPS_HI = float(_F32(1.0 - 1e-7))  # 1 - epsilon, rounded to float32: 1 - 2**-23
INV_EPS = float(_F32(1.0 / 1e-7))  # the cap of 1/norm in keras.ops.normalize
LOG2 = float(np.log(2.0))
TRANSCENDENTAL = 2.0  # roundings charged to exp, log, sqrt, ... (library functions, not IEEE)
AMBIGUITY = 64.0  # a comparison is ambiguous within this many times its error bound
F32_INTEGERS = 2.0**24  # float32 holds every integer below this, so sums of them are exact


# -- values with an error bound -----------------------------------------------------------------


def _held(v: Any) -> Any:
    """Where float32 holds ``v`` exactly (and it is finite)."""
    v = np.asarray(v, np.float64)
    return np.isfinite(v) & (v.astype(_F32).astype(np.float64) == v)


def _rounding(v: Any, exact: Any) -> Any:
    """The rounding an IEEE operation adds to its result ``v``: none where its operands were
    exact and float32 holds the result (a correctly rounded operation then returns it)."""
    return np.where(exact & _held(v), 0.0, np.abs(v))


@dataclass(frozen=True)
class V:
    """A float64 value (scalar or array) and a bound on float32's error, in units of ``U``."""

    v: Any
    e: Any

    @staticmethod
    def exact(x: Any) -> V:
        x = np.asarray(x, np.float64)
        return V(x, np.zeros_like(x))

    @staticmethod
    def const(c: float) -> V:
        """A number as float32 computes with it: exact when float32 holds it."""
        c = float(c)
        return V(np.float64(c), np.float64(0.0 if float(_F32(c)) == c else abs(c)))

    @property
    def is_exact(self) -> Any:
        return self.e == 0

    def __add__(self, o: V) -> V:
        v = self.v + o.v
        exact = self.is_exact & o.is_exact & (v - self.v == o.v)  # no rounding in float64
        return V(v, self.e + o.e + _rounding(v, exact))

    def __sub__(self, o: V) -> V:
        v = self.v - o.v
        exact = self.is_exact & o.is_exact & (self.v - v == o.v)
        return V(v, self.e + o.e + _rounding(v, exact))

    def __mul__(self, o: V) -> V:
        v = self.v * o.v  # exact in float64 for float32 operands
        rounding = _rounding(v, self.is_exact & o.is_exact)
        return V(v, np.abs(o.v) * self.e + np.abs(self.v) * o.e + rounding)

    def __truediv__(self, o: V) -> V:
        """``a / b`` as a formula's ``/`` compiles it: lossdsl folds constant factors into one
        coefficient and may multiply by a reciprocal, so one rounding is always charged."""
        v = self.v / o.v
        return V(v, (self.e + np.abs(v) * o.e) / np.abs(o.v) + np.abs(v))

    def __neg__(self) -> V:
        return V(-self.v, self.e)


def v_divide(a: V, b: V) -> V:
    """A true IEEE division (``keras.ops.divide``, a mean's division by its count): exact
    where its operands are and float32 holds the quotient."""
    v = a.v / b.v
    return V(v, (a.e + np.abs(v) * b.e) / np.abs(b.v) + _rounding(v, a.is_exact & b.is_exact))


def _c(x: float | V) -> V:
    return x if isinstance(x, V) else V.const(x)


def v_abs(x: V) -> V:
    return V(np.abs(x.v), x.e)


def v_square(x: V) -> V:
    v = x.v * x.v
    return V(v, 2 * np.abs(x.v) * x.e + _rounding(v, x.is_exact))


def v_sqrt(x: V) -> V:
    v = np.sqrt(x.v)
    return V(v, x.e / (2 * v) + TRANSCENDENTAL * v)


def v_log(x: V) -> V:
    v = np.log(x.v)
    return V(v, x.e / np.abs(x.v) + TRANSCENDENTAL * np.abs(v))


def v_exp(x: V) -> V:
    v = np.exp(x.v)
    return V(v, v * x.e + TRANSCENDENTAL * v)


def v_log1p(x: V) -> V:
    v = np.log1p(x.v)
    return V(v, x.e / (1 + x.v) + TRANSCENDENTAL * np.abs(v))


def v_sigmoid(x: V) -> V:
    v = np.exp(-np.logaddexp(0.0, -x.v))
    return V(v, v * (1 - v) * x.e + TRANSCENDENTAL * v)


def v_tanh(x: V) -> V:
    v = np.tanh(x.v)
    return V(v, (1 - v * v) * x.e + TRANSCENDENTAL * np.abs(v))


def v_power(base: V, gamma: float) -> V:
    """``base ** gamma`` for ``base >= 0`` (0 where ``base`` is 0 and ``gamma > 0``)."""
    if gamma == 0:
        return V(np.ones_like(base.v), np.zeros_like(base.e))
    b = np.maximum(base.v, 0.0)
    v = b**gamma
    delta = base.e * U  # the absolute error of base
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = gamma * b ** (gamma - 1) * delta
    # For gamma < 1 the slope is unbounded at 0, where |a^g - b^g| <= |a - b|^g holds instead.
    if gamma < 1:
        slope = np.fmin(slope, delta**gamma)
    err = np.where(delta == 0, 0.0, slope / U)
    return V(v, err + TRANSCENDENTAL * v)


def _pick(value: Any, pick: Any, a: V, b: V) -> V:
    """``value`` (``a`` where ``pick``, else ``b``); at a tie float32 may pick either, so the
    bound is the larger of both."""
    e = np.where(a.v == b.v, np.maximum(a.e, b.e), np.where(pick, a.e, b.e))
    return V(value, np.where(np.isnan(value), np.nan, e))


def v_min(a: V, b: V) -> V:
    """IEEE ``minimum``: NaN if either is NaN (as TensorFlow's)."""
    return _pick(np.minimum(a.v, b.v), a.v <= b.v, a, b)


def v_max(a: V, b: V) -> V:
    return _pick(np.maximum(a.v, b.v), a.v >= b.v, a, b)


def v_clip(x: V, lo: float | V, hi: float | V) -> V:
    return v_min(v_max(x, _c(lo)), _c(hi))


def v_where(m: Any, a: V, b: V) -> V:
    return V(np.where(m, a.v, b.v), np.where(m, a.e, b.e))


def v_sum(x: V, axis: int = -1, keepdims: bool = False) -> V:
    """A sum over ``axis``: each of the ``n - 1`` additions rounds a partial sum, which is at
    most the sum of the magnitudes; a sum of exact integers whose magnitudes add up to less
    than 2**24 is exact."""
    n = x.v.shape[axis]
    v = np.sum(x.v, axis=axis, keepdims=keepdims)
    mag = np.sum(np.abs(x.v), axis=axis, keepdims=keepdims)
    e = np.sum(x.e, axis=axis, keepdims=keepdims) + max(n - 1, 0) * mag
    whole = np.all(x.is_exact & (x.v == np.round(x.v)), axis=axis, keepdims=keepdims)
    return V(v, np.where(whole & (mag < F32_INTEGERS), 0.0, e))


def v_mean(x: V, axis: int = -1) -> V:
    return v_divide(v_sum(x, axis), V.const(x.v.shape[axis]))


def v_max_reduce(x: V, axis: int = -1, keepdims: bool = False) -> V:
    idx = np.expand_dims(np.argmax(x.v, axis=axis), axis)
    v = np.take_along_axis(x.v, idx, axis)
    e = np.take_along_axis(x.e, idx, axis)
    return V(v, e) if keepdims else V(np.squeeze(v, axis), np.squeeze(e, axis))


# -- the built-in losses, per position over the last axis -----------------------------------------
# Each takes the selected columns of y_true and y_pred, shape (..., w), and returns shape (...).


def _smooth_binary(t: V, ls: float) -> V:
    return t * _c(1.0 - ls) + _c(0.5 * ls) if ls else t


def _xent_prob(t: V, p: V) -> V:
    """``-(t log p + (1 - t) log(1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``."""
    pc = v_clip(p, EPS, EPS_HI)
    one = V.const(1.0)
    return -(t * v_log(pc) + (one - t) * v_log(one - pc))


def _xent_logits(t: V, x: V) -> V:
    """``-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))`` in its overflow-free form
    ``max(x, 0) - x t + log(1 + exp(-|x|))`` (unclipped: the logit is never saturated)."""
    return v_max(x, V.const(0.0)) - x * t + v_log1p(v_exp(-v_abs(x)))


def _log_softmax(x: V) -> V:
    top = v_max_reduce(x, keepdims=True)
    shifted = x - top
    return shifted - v_log(v_sum(v_exp(shifted), keepdims=True))


def bce(t: V, p: V, *, from_logits: bool = False, label_smoothing: float = 0.0) -> V:
    t = _smooth_binary(t, label_smoothing)
    return v_mean(_xent_logits(t, p) if from_logits else _xent_prob(t, p))


def cce(t: V, p: V, *, from_logits: bool = False, label_smoothing: float = 0.0) -> V:
    width = t.v.shape[-1]
    if label_smoothing:
        t = t * _c(1.0 - label_smoothing) + _c(label_smoothing / width)
    if from_logits:
        return -v_sum(t * _log_softmax(p))
    # Keras rescales the probabilities to sum to 1, then clips them.
    q = v_clip(p / v_sum(p, keepdims=True), EPS, EPS_HI)
    return -v_sum(t * v_log(q))


def one_hot(index: V, k: int) -> V:
    """The one-hot rows of class indices held as floats: the index is truncated toward 0 (a
    cast to int32), and one outside ``[0, k)``, or not finite, gives a row of zeros."""
    i = np.where(np.isfinite(index.v), np.trunc(index.v), -1.0)
    return V.exact((i[..., None] == np.arange(k)).astype(np.float64))


def sparse_cce(index: V, p: V, *, from_logits: bool = False) -> V:
    """``sparse_categorical_crossentropy``: ``-log softmax(x)[index]`` of the logits, or of
    ``log(clip(p, eps, 1 - eps))`` for probabilities (TensorFlow takes the clipped logarithms as
    logits, so the probabilities are normalised after the clip, unlike ``cce``'s). An index
    outside ``[0, k)`` has no class: 0, the crossentropy of its row of zeros (Keras's function
    has no value there: TensorFlow raises)."""
    t = one_hot(index, p.v.shape[-1])
    logits = p if from_logits else v_log(v_clip(p, EPS, EPS_HI))
    out = -v_sum(t * _log_softmax(logits))
    valid = np.sum(t.v, axis=-1) == 1
    return V(np.where(valid, out.v, 0.0), np.where(valid, out.e, 0.0))


def focal(
    t: V,
    p: V,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> V:
    """Binary focal crossentropy (Lin et al.): ``(1 - p_t) ** gamma`` times the crossentropy,
    and, when ``alpha`` is given, the class weight ``alpha`` for label 1 and ``1 - alpha`` for
    label 0 (lossdsl turns class balancing on by writing ``alpha``)."""
    t = _smooth_binary(t, label_smoothing)
    prob = v_sigmoid(p) if from_logits else p
    xent = _xent_logits(t, p) if from_logits else _xent_prob(t, p)
    one = V.const(1.0)
    base = one - (t * prob + (one - t) * (one - prob))
    out = v_power(base, gamma) * xent
    if alpha is not None:
        out = out * (t * _c(alpha) + (one - t) * _c(1.0 - alpha))
    return v_mean(out)


def focal_cce(
    t: V,
    p: V,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> V:
    """Categorical focal crossentropy: ``sum(alpha (1 - q) ** gamma * -t log q)`` with ``q``
    the probabilities (the softmax of logits), rescaled to sum to 1, then clipped to
    ``[eps, 1 - eps]``; ``label_smoothing=s`` gives each of the ``k`` units ``s / k``."""
    if label_smoothing:
        t = t * _c(1.0 - label_smoothing) + _c(label_smoothing / t.v.shape[-1])
    if from_logits:
        shifted = v_exp(p - v_max_reduce(p, keepdims=True))
        p = shifted / v_sum(shifted, keepdims=True)
    q = v_clip(p / v_sum(p, keepdims=True), EPS, EPS_HI)
    xent = -(t * v_log(q))
    return v_sum(v_power(V.const(1.0) - q, gamma) * _c(alpha) * xent)


def categorical_hinge(t: V, p: V) -> V:
    """``max(max((1 - t) p) - sum(t p) + 1, 0)``."""
    pos = v_sum(t * p)
    neg = v_max_reduce((V.const(1.0) - t) * p)
    return v_max(neg - pos + V.const(1.0), V.const(0.0))


def mse(t: V, p: V) -> V:
    return v_mean(v_square(t - p))


def mae(t: V, p: V) -> V:
    return v_mean(v_abs(t - p))


def mape(t: V, p: V) -> V:
    return _c(100.0) * v_mean(v_abs((t - p) / v_max(v_abs(t), V.const(EPS))))


def msle(t: V, p: V) -> V:
    one, eps = V.const(1.0), V.const(EPS)
    return v_mean(v_square(v_log(v_max(p, eps) + one) - v_log(v_max(t, eps) + one)))


def huber(t: V, p: V, *, delta: float = 1.0) -> V:
    err = p - t
    a = v_abs(err)
    d = _c(delta)
    quadratic = _c(0.5) * v_square(err)
    linear = d * a - _c(0.5) * v_square(d)
    return v_mean(v_where(a.v <= delta, quadratic, linear))


def log_cosh(t: V, p: V) -> V:
    """``log(cosh(x))`` as ``x + softplus(-2 x) - log 2``, the identity Keras documents."""
    x = p - t
    z = _c(-2.0) * x
    softplus = v_max(z, V.const(0.0)) + v_log1p(v_exp(-v_abs(z)))
    return v_mean(x + softplus - _c(LOG2))


def kld(t: V, p: V) -> V:
    """``sum(t log(t / p))`` with both clipped to ``[eps, 1]``."""
    tc, pc = v_clip(t, EPS, 1.0), v_clip(p, EPS, 1.0)
    return v_sum(tc * v_log(tc / pc))


def poisson(t: V, p: V) -> V:
    return v_mean(p - t * v_log(p + V.const(EPS)))


def _hinge_labels(t: V) -> V:
    """0/1 labels become -1/1, but only when every label given (all samples) is 0 or 1."""
    if np.all((t.v == 0) | (t.v == 1)):
        return _c(2.0) * t - V.const(1.0)
    return t


def hinge(t: V, p: V) -> V:
    return v_mean(v_max(V.const(1.0) - _hinge_labels(t) * p, V.const(0.0)))


def squared_hinge(t: V, p: V) -> V:
    return v_mean(v_square(v_max(V.const(1.0) - _hinge_labels(t) * p, V.const(0.0))))


def _unit_vector(x: V) -> V:
    """``x / |x|``, with ``1/|x|`` capped at ``1/eps`` (a zero vector stays zero)."""
    inv = V.const(1.0) / v_sqrt(v_sum(v_square(x), keepdims=True))  # inf for a zero vector
    return x * v_min(inv, V.const(INV_EPS))


def cosine(t: V, p: V) -> V:
    return -v_sum(_unit_vector(t) * _unit_vector(p))


# -- the example-level losses ---------------------------------------------------------------------
# Each takes the columns (..., w) and ``total``, which sums a value of that shape over each
# example (every axis but the batch's), or with ``batch=true`` over everything.

Total = Callable[[V], V]


def dice(t: V, p: V, total: Total) -> V:
    """``1 - 2 sum(t p) / (sum(t) + sum(p) + eps)``."""
    score = V.const(2.0) * total(t * p) / (total(t) + total(p) + V.const(EPS))
    return V.const(1.0) - score


def tversky(t: V, p: V, total: Total, *, alpha: float = 0.5, beta: float = 0.5) -> V:
    """``1 - I / (I + alpha sum((1 - p) t) + beta sum(p (1 - t)) + eps)``, ``I = sum(t p)``
    (Keras's weighting: ``alpha`` multiplies the missed labels)."""
    one = V.const(1.0)
    inter = total(t * p)
    missed = total((one - p) * t)
    extra = total(p * (one - t))
    return one - inter / (inter + missed * _c(alpha) + extra * _c(beta) + V.const(EPS))


LOSSES: dict[str, Callable[..., V]] = {
    "bce": bce,
    "cce": cce,
    "focal": focal,
    "mse": mse,
    "mae": mae,
    "mape": mape,
    "msle": msle,
    "huber": huber,
    "log_cosh": log_cosh,
    "kld": kld,
    "poisson": poisson,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "cosine": cosine,
    "focal_cce": focal_cce,
    "categorical_hinge": categorical_hinge,
}

EXAMPLE_LOSSES: dict[str, Callable[..., V]] = {"dice": dice, "tversky": tversky}

MATH: dict[str, Callable[..., V]] = {
    "abs": v_abs,
    "sqrt": v_sqrt,
    "log": v_log,
    "exp": v_exp,
    "square": v_square,
    "sigmoid": v_sigmoid,
    "tanh": v_tanh,
    "min": v_min,
    "max": v_max,
    "clip": v_clip,
}

AGGREGATES = ("sum", "mean")

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}

# What an expression gives one value for.
CONSTANT, POSITION, EXAMPLE, BATCH = 0, 1, 2, 3
# What a where-term is averaged over: the reduction around it.
TOP, SUM, MEAN, MEAN_BATCH = "top", "sum", "mean", "mean-batch"


def _mix(levels: list[int]) -> int:
    """The level of arithmetic on values of ``levels``: a constant takes the other's level,
    and a batch-wide value meets each example's (validation rejects the other mixtures)."""
    out = CONSTANT
    for level in levels:
        if out == CONSTANT:
            out = level
        elif level not in (CONSTANT, out):
            out = EXAMPLE
    return out


# -- the interpreter ------------------------------------------------------------------------------


@dataclass
class Result:
    """What the oracle computes for one batch."""

    per_sample: np.ndarray
    """``l_i``, what ``FormulaLoss.call`` returns: shape ``y.shape[:-1]`` (one value per
    position), or ``(batch,)`` for an example-level formula."""
    per_sample_err: np.ndarray
    """A bound on float32's error in ``l_i``, in units of ``U``."""
    value: float
    """The reduced loss, ``sum_i w_i l_i / N``."""
    value_err: float
    ambiguous: np.ndarray
    """Positions where some comparison is too close to call in float32."""
    masks: list[np.ndarray] = field(default_factory=list)
    """The mask of each ``where`` term (``ignore_class`` included), in the order of the text:
    per position, or per example for an example-level term."""
    reads: list[np.ndarray] = field(default_factory=list)
    """For each ``where`` term, the positions whose inputs its term reads: its mask, spread
    over positions, and with the masks of the where-terms around it."""
    example: bool = False
    """Whether the formula gives one value per example."""
    hidden: np.ndarray | None = None
    """The samples (as ``per_sample``) whose value hides a NaN: ``divide_no_nan(a, 0)`` is 0
    even where ``a`` is NaN, but its gradient is not finite there."""
    kinks: np.ndarray | None = None
    """The samples (as ``per_sample``) where an automatic derivative can differ from the
    oracle's: a tie between the operands of ``min``, ``max`` or ``clip`` (a kink, where it
    takes one side), or a saturated ``sigmoid`` or ``tanh`` (float32 computes its derivative
    from its output, with few digits)."""

    def tolerance(self, rtol: float, k: float = 32.0, atol: float = 1e-30) -> np.ndarray:
        """Per-sample tolerance: ``rtol`` relative, widened to ``k`` times the error bound."""
        return rtol * np.abs(self.per_sample) + k * U * self.per_sample_err + atol

    def value_tolerance(self, rtol: float, k: float = 32.0, atol: float = 1e-30) -> float:
        return rtol * abs(self.value) + k * U * self.value_err + atol


Columns = tuple[int, int]
Binding = tuple[Columns | None, Columns | None]  # (true side, pred side)


class _Ctx:
    """The inputs a term sees: the positions where ``keep`` is false are replaced."""

    def __init__(self, y_true: V, y_pred: V, keep: np.ndarray) -> None:
        self.y_true = y_true
        self.y_pred = y_pred
        self.keep = keep


def _columns(b: Any) -> Columns:
    return (b, b + 1) if isinstance(b, int) else (int(b[0]), int(b[1]))


def _binding(b: Any) -> Binding:
    """A ``units`` entry: an index or ``[start, stop]`` for both sides, or each side its own."""
    if isinstance(b, Mapping):
        sides = {k: _columns(v) for k, v in b.items()}
        return sides.get("true"), sides.get("pred")
    return _columns(b), _columns(b)


def _flag(node: ast.Call, name: str) -> bool:
    return any(k.name == name and _literal(k.value) is True for k in node.kwargs)


class Oracle:
    """``Oracle(formula, units=..., params=..., where_mean=...)(y_true, y_pred)``.

    ``formula`` is the text or an ``ast.Formula``; ``units`` is ``None``, the output width, or
    a mapping of names to an index, ``[start, stop]``, or ``{"pred": ..., "true": ...}``.
    """

    def __init__(
        self,
        formula: str | ast.Formula,
        *,
        units: int | Mapping[str, Any] | None = None,
        params: Mapping[str, float] | None = None,
        where_mean: str = "selected",
    ) -> None:
        if isinstance(formula, str):
            from lossdsl import parse

            formula = parse(formula)
        if where_mean not in ("selected", "batch"):
            raise ValueError(f"where_mean: {where_mean!r}")
        self.formula = formula
        self.names: dict[str, Binding] = {}
        if isinstance(units, Mapping):
            self.names = {name: _binding(b) for name, b in units.items()}
        self.params = {k: float(v) for k, v in (params or {}).items()}
        self.where_mean = where_mean
        self._levels: dict[int, int] = {}
        self.example = self._level(formula.expr) >= EXAMPLE
        """Whether the formula gives one value per example."""

    def _level(self, node: ast.Node) -> int:
        """The level of ``node`` (noted for every node under it too)."""
        children = [self._level(c) for c in node.children()]
        if isinstance(node, ast.Call) and node.name not in MATH and node.name != "divide_no_nan":
            if node.name in AGGREGATES or node.name in EXAMPLE_LOSSES:
                level = BATCH if _flag(node, "batch") else EXAMPLE
            else:
                level = POSITION  # a loss, pred() or true()
        elif isinstance(node, ast.Where):
            term, cond = children
            level = max(cond, POSITION) if term == CONSTANT else term  # 1 where c: a count
        elif isinstance(node, ast.Unit | ast.UnitSlice | ast.Keyword):
            level = CONSTANT
        else:
            level = _mix(children)
        self._levels[id(node)] = level
        return level

    def __call__(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        sample_weight: np.ndarray | None = None,
        *,
        masks: list[np.ndarray] | None = None,
    ) -> Result:
        """The loss on one batch. ``masks`` (one per where-term, as ``Result.masks``) replaces
        the conditions: conditions carry no gradient, so a derivative is taken with the masks
        held fixed."""
        y_true = np.asarray(y_true, np.float64)
        y_pred = np.asarray(y_pred, np.float64)
        assert y_true.shape[:-1] == y_pred.shape[:-1] and y_true.ndim >= 2
        self._shape = y_true.shape[:-1]
        self._masks: list[Any] = []
        self._reads: list[Any] = []
        self._frozen = masks
        self._ambiguous = np.zeros(self._shape, bool)
        self._hidden = np.zeros(self._shape, bool)
        self._kinks = np.zeros(self._shape, bool)
        self._widths = y_true.shape[-1], y_pred.shape[-1]
        with np.errstate(all="ignore"):
            ctx = _Ctx(V.exact(y_true), V.exact(y_pred), np.ones(self._shape, bool))
            out = self._eval(self.formula.expr, ctx, TOP)
            shape = self._shape[:1] if self.example else self._shape
            per = np.broadcast_to(out.v, shape).astype(np.float64)
            err = np.broadcast_to(out.e, shape).astype(np.float64)
            w = np.ones(shape) if sample_weight is None else np.asarray(sample_weight, np.float64)
            n = per.size
            weighted = per * w
            value = float(np.sum(weighted) / n)
            value_err = float(
                (np.sum(np.abs(w) * err) + np.sum(np.abs(weighted)) * n) / n + abs(value)
            )
            hidden, kinks = self._hidden, self._kinks
            if self.example:
                hidden = hidden.reshape(shape[0], -1).any(axis=1)
                kinks = kinks.reshape(shape[0], -1).any(axis=1)
        return Result(
            per,
            err,
            value,
            value_err,
            self._ambiguous.copy(),
            list(self._masks),
            list(self._reads),
            self.example,
            hidden,
            kinks,
        )

    # -- shapes ---------------------------------------------------------------------------------

    def _spread(self, x: Any, level: int) -> np.ndarray:
        """A value of ``level`` as one value per position (an example's over its positions)."""
        x = np.asarray(x)
        if level >= EXAMPLE and x.ndim == 1:
            x = x.reshape(x.shape + (1,) * (len(self._shape) - 1))
        return np.broadcast_to(x, self._shape)

    def _total(self, x: V, batch: bool) -> V:
        """``x`` (shape ``(batch, ...)``) summed over each example, or over everything."""
        v, e = np.broadcast_to(x.v, x.v.shape), np.broadcast_to(x.e, x.v.shape)
        rows, size = (1, v.size) if batch else (v.shape[0], int(np.prod(v.shape[1:])))
        out = v_sum(V(v.reshape(rows, size), e.reshape(rows, size)))
        return V(out.v[0], out.e[0]) if batch else out

    # -- expressions ----------------------------------------------------------------------------

    def _eval(self, node: ast.Node, ctx: _Ctx, scope: str) -> V:
        if isinstance(node, ast.Number):
            return V.const(node.value)
        if isinstance(node, ast.Name):
            return V.const(self.params[node.id])
        if isinstance(node, ast.Neg):
            return -self._eval(node.operand, ctx, scope)
        if isinstance(node, ast.Sum):
            acc: V | None = None
            for op, e in node.terms:
                x = self._eval(e, ctx, scope)
                x = -x if op == "-" else x
                acc = x if acc is None else acc + x
            assert acc is not None
            return acc
        if isinstance(node, ast.Product):
            acc = None
            for op, e in node.factors:
                x = self._eval(e, ctx, scope)
                if acc is None:
                    acc = V.const(1.0) / x if op == "/" else x
                else:
                    acc = acc / x if op == "/" else acc * x
            assert acc is not None
            return acc
        if isinstance(node, ast.Call):
            return self._call(node, ctx, scope)
        if isinstance(node, ast.Where):
            return self._select(
                lambda c: self._cond(node.cond, c),
                lambda c: self._eval(node.term, c, scope),
                ctx,
                scope,
                level=self._levels[id(node)],
                cond_level=self._levels[id(node.cond)],
            )
        raise TypeError(f"not an expression: {node!r}")

    def _resolve(self, node: ast.Node) -> Binding:
        if isinstance(node, ast.Unit):
            cols = node.index, node.index + 1
            binding: Binding = cols, cols
        elif isinstance(node, ast.UnitSlice):
            binding = (node.start, node.stop), (node.start, node.stop)
        elif isinstance(node, ast.Name):
            binding = self.names[node.id]
        else:
            raise TypeError(f"not a unit selector: {node!r}")
        for cols, width in zip(binding, self._widths, strict=True):
            assert cols is None or 0 <= cols[0] < cols[1] <= width, (node, binding, width)
        return binding

    def _call(self, node: ast.Call, ctx: _Ctx, scope: str) -> V:
        if node.name in ("pred", "true"):
            t, p = self._resolve(node.args[0])
            cols, y = (p, ctx.y_pred) if node.name == "pred" else (t, ctx.y_true)
            assert cols is not None and cols[1] == cols[0] + 1
            return V(y.v[..., cols[0]], y.e[..., cols[0]])
        if node.name in MATH:
            args = [self._eval(a, ctx, scope) for a in node.args]
            out = MATH[node.name](*args)
            level = self._levels[id(node)]
            if level == CONSTANT:
                return out
            if node.name in ("min", "max", "clip"):  # a tie is a kink
                for b in args[1:]:
                    self._kinks |= self._spread(args[0].v == b.v, level)
            elif node.name in ("sigmoid", "tanh"):
                # float32's derivative is 1 - y**2 or y (1 - y) of the output y: few digits
                # where y is within 1e-4 of 1 (or -1)
                self._kinks |= self._spread(1 - np.abs(out.v) < 1e-4, level)
            return out
        if node.name == "divide_no_nan":
            a, b = (self._eval(x, ctx, scope) for x in node.args)
            return self._divide_no_nan(a, b, ctx, node)
        if node.name in AGGREGATES:
            return self._aggregate(node, ctx)
        binding = self._resolve(node.args[0])
        kwargs = {k.name: _literal(k.value) for k in node.kwargs}
        ignored = kwargs.pop("ignore_class", None)
        if ignored is None:
            return self._loss(node.name, binding, kwargs, ctx)
        # cce(u, ignore_class=c) is cce(u) where true(u) != c.
        t0 = binding[0][0]  # type: ignore[index]
        return self._select(
            lambda c: c.y_true.v[..., t0] != ignored,
            lambda c: self._loss(node.name, binding, kwargs, c),
            ctx,
            scope,
            level=POSITION,
            cond_level=POSITION,
        )

    def _loss(self, name: str, binding: Binding, kwargs: dict[str, Any], ctx: _Ctx) -> V:
        (t0, t1), (p0, p1) = binding  # type: ignore[misc]
        t = V(ctx.y_true.v[..., t0:t1], ctx.y_true.e[..., t0:t1])
        p = V(ctx.y_pred.v[..., p0:p1], ctx.y_pred.e[..., p0:p1])
        if t1 - t0 == 1 and p1 - p0 >= 2:  # class indices
            index = V(t.v[..., 0], t.e[..., 0])
            if name == "cce":
                return sparse_cce(index, p, **kwargs)
            t = one_hot(index, p1 - p0)
        if name in EXAMPLE_LOSSES:
            batch = bool(kwargs.pop("batch", False))
            return EXAMPLE_LOSSES[name](t, p, lambda x: self._total(x, batch), **kwargs)
        return LOSSES[name](t, p, **kwargs)

    def _aggregate(self, node: ast.Call, ctx: _Ctx) -> V:
        batch, mean = _flag(node, "batch"), node.name == "mean"
        scope = SUM if not mean else MEAN_BATCH if batch else MEAN
        x = self._eval(node.args[0], ctx, scope)
        total = self._total(V(self._spread(x.v, POSITION), self._spread(x.e, POSITION)), batch)
        if not mean:
            return total
        count = int(np.prod(self._shape if batch else self._shape[1:]))
        if count == 0:
            return V.exact(np.zeros_like(total.v))
        return v_divide(total, V.const(count))

    def _divide_no_nan(self, a: V, b: V, ctx: _Ctx, node: ast.Call) -> V:
        """``a / b``, and 0 where ``b == 0``, even where ``a`` is NaN (as TensorFlow's); that
        NaN is noted in ``Result.hidden``. A ``b`` within its bound of 0 could be 0 or not in
        float32, which is ambiguous."""
        q = v_divide(a, b)
        close = (b.e > 0) & (np.abs(b.v) <= AMBIGUITY * U * b.e)
        self._ambiguous |= self._spread(close, self._levels[id(node.args[1])])
        zero = b.v == 0
        hidden = zero & ~np.isfinite(a.v)
        self._hidden |= self._spread(hidden, self._levels[id(node)]) & ctx.keep
        return V(np.where(zero, 0.0, q.v), np.where(zero, 0.0, q.e))

    def _select(
        self,
        cond: Callable[[_Ctx], Any],
        term: Callable[[_Ctx], V],
        ctx: _Ctx,
        scope: str,
        *,
        level: int,
        cond_level: int,
    ) -> V:
        """``term`` where ``cond`` holds, scaled as ``scope`` says: a where-term of ``level``
        (an example-level one has one mask value per example)."""
        index = len(self._masks)
        self._masks.append(None)  # a place in the text's order, before the condition's terms
        self._reads.append(None)
        raw = cond(ctx)  # evaluated even when frozen: the where-terms inside keep their places
        example = level >= EXAMPLE
        shape = self._shape[:1] if example else self._shape
        if self._frozen is not None:
            m = np.asarray(self._frozen[index])
        elif example:
            m = np.broadcast_to(raw, shape).copy()
        else:
            m = self._spread(raw, cond_level).copy()
        reads = self._spread(m, level) & ctx.keep
        self._masks[index], self._reads[index] = m, reads
        keep = reads[..., None]
        inner = _Ctx(
            v_where(keep, ctx.y_true, V.exact(np.zeros(1))),
            v_where(keep, ctx.y_pred, V.exact(np.full(1, 0.5))),
            reads,
        )
        out = term(inner)
        value = V(np.broadcast_to(out.v, shape), np.broadcast_to(out.e, shape))
        selected = v_where(m, value, V.exact(np.zeros(shape)))
        if scope == SUM or (scope == TOP and self.where_mean == "batch"):
            return selected
        if scope == MEAN:  # over each example's selected positions
            positions = int(np.prod(self._shape[1:]))
            counts = np.sum(m.reshape(shape[0], positions), axis=1)
            ratio = np.where(counts > 0, positions / np.maximum(counts, 1), 0.0)
            ratio = self._spread(ratio, EXAMPLE)
            return selected * V(ratio, np.where(_held(ratio), 0.0, ratio))
        count = int(np.sum(m))  # over the batch's positions, or its examples
        if count == 0:
            return V.exact(np.zeros(shape))
        return selected * V.const(m.size / count)

    # -- conditions ---------------------------------------------------------------------------

    def _cond(self, node: ast.Node, ctx: _Ctx) -> Any:
        if isinstance(node, ast.Compare):
            a, b = self._eval(node.left, ctx, TOP), self._eval(node.right, ctx, TOP)
            slack = AMBIGUITY * U * (a.e + b.e)
            close = (slack > 0) & (np.abs(a.v - b.v) <= slack)
            self._ambiguous |= self._spread(close, self._levels[id(node)])
            return _COMPARE[node.op](a.v, b.v)
        if isinstance(node, ast.And):
            out = self._cond(node.items[0], ctx)
            for c in node.items[1:]:
                out = np.logical_and(out, self._cond(c, ctx))
            return out
        if isinstance(node, ast.Or):
            out = self._cond(node.items[0], ctx)
            for c in node.items[1:]:
                out = np.logical_or(out, self._cond(c, ctx))
            return out
        if isinstance(node, ast.Not):
            return np.logical_not(self._cond(node.operand, ctx))
        raise TypeError(f"not a condition: {node!r}")


def _literal(node: ast.Node) -> bool | float:
    if isinstance(node, ast.Name) and node.id in ("true", "false"):
        return node.id == "true"
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Neg) and isinstance(node.operand, ast.Number):
        return -node.operand.value
    raise TypeError(f"not a keyword literal: {node!r}")
