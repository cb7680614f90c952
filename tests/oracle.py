"""An independent NumPy float64 interpreter of lossdsl formulas, the oracle of
``tests/test_differential.py``.

It walks the AST that ``lossdsl.parse`` returns and uses nothing else from lossdsl. Units are
resolved here from the ``units`` argument. Every built-in loss is written here from its
mathematical definition, the formulas that Keras documents, and ``where`` follows
``docs/semantics.md``:

* ``m_i`` is the condition on sample ``i``, evaluated on the raw inputs (IEEE comparisons, so
  a NaN operand makes ``<``, ``==`` ... false and ``!=`` true);
* the term is computed on inputs whose masked rows are replaced (labels by 0, predictions by
  0.5), which matters for the one batch-dependent loss, ``hinge``'s 0/1 label check, and is
  then selected, so a masked row contributes exactly 0 even when its inputs are NaN;
* ``where_mean="selected"``: ``c_i = T_i m_i N / sum(m)`` (0 when nothing is selected);
  ``where_mean="batch"``: ``c_i = T_i m_i``.

Values are computed in float64. Next to each value the interpreter carries a first-order bound
on the error that a float32 evaluation of the same expression can make, in units of the float32
unit roundoff ``U``: inputs (float32 numbers) are exact, a constant is exact when float32 holds
it, and every operation adds one rounding of its result to the propagated errors of its
operands. The bound lets a test compare a float32 result within a tolerance that is relative
where the value is well conditioned and widens only where float32 cannot be accurate
(cancellation in ``a - b``, division by a small number). A comparison in a condition whose two
sides lie within that bound of each other could go either way in float32; such samples are
reported as ambiguous, and a test discards the example.

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


# -- values with an error bound -----------------------------------------------------------------


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

    def __add__(self, o: V) -> V:
        v = self.v + o.v
        return V(v, self.e + o.e + np.abs(v))

    def __sub__(self, o: V) -> V:
        v = self.v - o.v
        return V(v, self.e + o.e + np.abs(v))

    def __mul__(self, o: V) -> V:
        v = self.v * o.v
        return V(v, np.abs(o.v) * self.e + np.abs(self.v) * o.e + np.abs(v))

    def __truediv__(self, o: V) -> V:
        v = self.v / o.v
        return V(v, (self.e + np.abs(v) * o.e) / np.abs(o.v) + np.abs(v))

    def __neg__(self) -> V:
        return V(-self.v, self.e)


def _c(x: float | V) -> V:
    return x if isinstance(x, V) else V.const(x)


def v_abs(x: V) -> V:
    return V(np.abs(x.v), x.e)


def v_square(x: V) -> V:
    v = x.v * x.v
    return V(v, 2 * np.abs(x.v) * x.e + np.abs(v))


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
    most the sum of the magnitudes."""
    n = x.v.shape[axis]
    v = np.sum(x.v, axis=axis, keepdims=keepdims)
    mag = np.sum(np.abs(x.v), axis=axis, keepdims=keepdims)
    return V(v, np.sum(x.e, axis=axis, keepdims=keepdims) + (n - 1) * mag)


def v_mean(x: V, axis: int = -1) -> V:
    n = x.v.shape[axis]
    s = v_sum(x, axis)
    v = s.v / n
    return V(v, s.e / n + np.abs(v))


def v_max_reduce(x: V, axis: int = -1, keepdims: bool = False) -> V:
    idx = np.expand_dims(np.argmax(x.v, axis=axis), axis)
    v = np.take_along_axis(x.v, idx, axis)
    e = np.take_along_axis(x.e, idx, axis)
    return V(v, e) if keepdims else V(np.squeeze(v, axis), np.squeeze(e, axis))


# -- the built-in losses, per sample over the last axis -------------------------------------------
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


def bce(t: V, p: V, *, from_logits: bool = False, label_smoothing: float = 0.0) -> V:
    t = _smooth_binary(t, label_smoothing)
    return v_mean(_xent_logits(t, p) if from_logits else _xent_prob(t, p))


def cce(t: V, p: V, *, from_logits: bool = False, label_smoothing: float = 0.0) -> V:
    width = t.v.shape[-1]
    if label_smoothing:
        t = t * _c(1.0 - label_smoothing) + _c(label_smoothing / width)
    if from_logits:
        top = v_max_reduce(p, keepdims=True)
        shifted = p - top
        log_softmax = shifted - v_log(v_sum(v_exp(shifted), keepdims=True))
        return -v_sum(t * log_softmax)
    # Keras rescales the probabilities to sum to 1, then clips them.
    q = v_clip(p / v_sum(p, keepdims=True), EPS, EPS_HI)
    return -v_sum(t * v_log(q))


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
}

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

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


# -- the interpreter ------------------------------------------------------------------------------


@dataclass
class Result:
    """What the oracle computes for one batch."""

    per_sample: np.ndarray
    """``l_i``, shape ``y.shape[:-1]``, what ``FormulaLoss.call`` returns."""
    per_sample_err: np.ndarray
    """A bound on float32's error in ``l_i``, in units of ``U``."""
    value: float
    """The reduced loss, ``sum_i w_i l_i / N``."""
    value_err: float
    ambiguous: np.ndarray
    """Samples where some comparison is too close to call in float32."""
    masks: list[np.ndarray] = field(default_factory=list)
    """The mask of each ``where`` term, in the order of the text."""

    def tolerance(self, rtol: float, k: float = 32.0, atol: float = 1e-30) -> np.ndarray:
        """Per-sample tolerance: ``rtol`` relative, widened to ``k`` times the error bound."""
        return rtol * np.abs(self.per_sample) + k * U * self.per_sample_err + atol

    def value_tolerance(self, rtol: float, k: float = 32.0, atol: float = 1e-30) -> float:
        return rtol * abs(self.value) + k * U * self.value_err + atol


class _Ctx:
    def __init__(self, y_true: V, y_pred: V, params: Mapping[str, float]) -> None:
        self.y_true = y_true
        self.y_pred = y_pred
        self.params = params


class Oracle:
    """``Oracle(formula, units=..., params=..., where_mean=...)(y_true, y_pred)``.

    ``formula`` is the text or an ``ast.Formula``; ``units`` is ``None``, the output width, or
    a mapping of names to an index or ``[start, stop]``.
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
        self.names: dict[str, tuple[int, int]] = {}
        if isinstance(units, Mapping):
            for name, b in units.items():
                self.names[name] = (b, b + 1) if isinstance(b, int) else (int(b[0]), int(b[1]))
        self.params = {k: float(v) for k, v in (params or {}).items()}
        self.where_mean = where_mean

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
        assert y_true.shape == y_pred.shape and y_true.ndim >= 2
        self._masks: list[np.ndarray] = []
        self._frozen = masks
        self._ambiguous = np.zeros(y_true.shape[:-1], bool)
        self._width = y_true.shape[-1]
        with np.errstate(all="ignore"):
            ctx = _Ctx(V.exact(y_true), V.exact(y_pred), self.params)
            out = self._eval(self.formula.expr, ctx)
            shape = y_true.shape[:-1]
            per = np.broadcast_to(out.v, shape).astype(np.float64)
            err = np.broadcast_to(out.e, shape).astype(np.float64)
            w = np.ones(shape) if sample_weight is None else np.asarray(sample_weight, np.float64)
            n = per.size
            weighted = per * w
            value = float(np.sum(weighted) / n)
            value_err = float(
                (np.sum(np.abs(w) * err) + np.sum(np.abs(weighted)) * n) / n + abs(value)
            )
        return Result(per, err, value, value_err, self._ambiguous.copy(), list(self._masks))

    # -- expressions --------------------------------------------------------------------------

    def _eval(self, node: ast.Node, ctx: _Ctx) -> V:
        if isinstance(node, ast.Number):
            return V.const(node.value)
        if isinstance(node, ast.Name):
            return V.const(ctx.params[node.id])
        if isinstance(node, ast.Neg):
            return -self._eval(node.operand, ctx)
        if isinstance(node, ast.Sum):
            acc: V | None = None
            for op, e in node.terms:
                x = self._eval(e, ctx)
                x = -x if op == "-" else x
                acc = x if acc is None else acc + x
            assert acc is not None
            return acc
        if isinstance(node, ast.Product):
            acc = None
            for op, e in node.factors:
                x = self._eval(e, ctx)
                if acc is None:
                    acc = V.const(1.0) / x if op == "/" else x
                else:
                    acc = acc / x if op == "/" else acc * x
            assert acc is not None
            return acc
        if isinstance(node, ast.Call):
            return self._call(node, ctx)
        if isinstance(node, ast.Where):
            return self._where(node, ctx)
        raise TypeError(f"not an expression: {node!r}")

    def _columns(self, node: ast.Node) -> tuple[int, int]:
        if isinstance(node, ast.Unit):
            cols = node.index, node.index + 1
        elif isinstance(node, ast.UnitSlice):
            cols = node.start, node.stop
        elif isinstance(node, ast.Name):
            cols = self.names[node.id]
        else:
            raise TypeError(f"not a unit selector: {node!r}")
        assert 0 <= cols[0] < cols[1] <= self._width, (node, cols, self._width)
        return cols

    def _call(self, node: ast.Call, ctx: _Ctx) -> V:
        if node.name in ("pred", "true"):
            start, stop = self._columns(node.args[0])
            assert stop == start + 1
            y = ctx.y_pred if node.name == "pred" else ctx.y_true
            return V(y.v[..., start], y.e[..., start])
        if node.name in MATH:
            return MATH[node.name](*(self._eval(a, ctx) for a in node.args))
        start, stop = self._columns(node.args[0])
        kwargs = {k.name: _literal(k.value) for k in node.kwargs}
        t = V(ctx.y_true.v[..., start:stop], ctx.y_true.e[..., start:stop])
        p = V(ctx.y_pred.v[..., start:stop], ctx.y_pred.e[..., start:stop])
        return LOSSES[node.name](t, p, **kwargs)

    def _where(self, node: ast.Where, ctx: _Ctx) -> V:
        shape = ctx.y_true.v.shape[:-1]
        if self._frozen is not None:
            m = self._frozen[len(self._masks)]
        else:
            m = np.broadcast_to(self._cond(node.cond, ctx), shape)
        self._masks.append(m.copy())
        keep = m[..., None]
        inner = _Ctx(
            v_where(keep, ctx.y_true, V.exact(np.zeros(1))),
            v_where(keep, ctx.y_pred, V.exact(np.full(1, 0.5))),
            ctx.params,
        )
        term = self._eval(node.term, inner)
        zero = V.exact(np.zeros(shape))
        selected = v_where(
            m, V(np.broadcast_to(term.v, shape), np.broadcast_to(term.e, shape)), zero
        )
        if self.where_mean == "batch":
            return selected
        count = int(np.sum(m))
        if count == 0:
            return zero
        return selected * V.const(m.size / count)

    # -- conditions ---------------------------------------------------------------------------

    def _cond(self, node: ast.Node, ctx: _Ctx) -> Any:
        if isinstance(node, ast.Compare):
            a, b = self._eval(node.left, ctx), self._eval(node.right, ctx)
            slack = AMBIGUITY * U * (a.e + b.e)
            self._ambiguous |= np.broadcast_to(
                (slack > 0) & (np.abs(a.v - b.v) <= slack), self._ambiguous.shape
            )
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
