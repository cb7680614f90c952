"""The ``keras.ops`` implementations of the built-in losses that are not Keras's own functions.

The catalogue (``lossdsl.catalog``) names, for each built-in, the function that computes it;
most are ``keras.losses`` functions, the rest are here. Keras is imported on the first call,
not on import: the catalogue is part of the Keras-free front end.

Each ``*_column`` function is Keras's own expression for one unit before its mean over the last
axis, applied to a 1-D column ``y[..., j]``. A mean over one value is that value, bit for bit,
so the result is Keras's; but TensorFlow's graph mode would otherwise run a reduction (and a
slow strided slice) per loss call. ``tests/test_values.py`` checks each against
``keras.losses`` on one unit.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "bce_column",
    "dice",
    "focal",
    "focal_column",
    "focal_one_hot_column",
    "huber_column",
    "in_float32",
    "keras",
    "log_cosh_column",
    "mae_column",
    "mape_column",
    "mse_column",
    "msle_column",
    "one_hot",
    "ops",
    "poisson_column",
    "sparse_cce",
    "tversky",
]


class _Lazy:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


keras: Any = _Lazy("keras")
ops: Any = _Lazy("keras.ops")


# Keras's losses clip probabilities to [1e-7, 1 - 1e-7] and guard divisions and norms with
# epsilon = 1e-7, made for float32. In float16 and bfloat16, 1 - 1e-7 rounds to 1.0, so a
# saturated probability gives log(0): bce(0, 1) is inf and bce(1, 1) NaN, with NaN gradients
# (and 1 / epsilon overflows float16). The built-in losses therefore compute in float32 for
# these dtypes and return the input's dtype: Keras's float32 value, rounded to the low precision.
_LOW_PRECISION = ("float16", "bfloat16")


def in_float32(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` computed in float32 for float16 and bfloat16 inputs."""

    @functools.wraps(fn)
    def run(y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
        dtype = keras.backend.standardize_dtype(y_pred.dtype)
        if dtype not in _LOW_PRECISION:
            return fn(y_true, y_pred, **kwargs)
        out = fn(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), **kwargs)
        return ops.cast(out, dtype)

    return run


def focal(y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
    """``keras.losses.binary_focal_crossentropy``, value for value, with two differences that
    only matter where Keras goes wrong:

    * giving ``alpha`` turns on class balancing (Keras silently ignores ``alpha`` unless
      ``apply_class_balancing=True``);
    * the focal factor ``(1 - p_t) ** gamma`` has a finite gradient where ``p_t == 1``
      (Keras's ``power`` gives NaN there for ``gamma < 1``).
    """
    return ops.mean(focal_column(y_true, y_pred, **kwargs), axis=-1)


def focal_column(
    y_true: Any,
    y_pred: Any,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    one_hot: bool = False,
) -> Any:
    """``focal`` before its mean over the units: one value per element. ``one_hot``: the
    labels are exactly 0 or 1 (one-hot rows of class indices), so ``1 - p_t`` and the class
    weight are selected by the label, as keras-io's RetinaNet loss does, rather than computed
    from it: the same values, with less work."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
        one_hot = False
    prob = ops.sigmoid(y_pred) if from_logits else y_pred
    out = ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    is_class = ops.equal(y_true, 1.0) if one_hot else None
    # 1 - p_t, where p_t = t p + (1 - t)(1 - p) is the probability of the label: t + p (1 - 2t).
    if is_class is not None:
        base = ops.where(is_class, 1.0 - prob, prob)
    else:
        base = y_true + prob * (1.0 - 2.0 * y_true)
    if gamma == 2:
        out = ops.square(base) * out
    elif float(gamma).is_integer() and gamma > 0:
        out = ops.power(base, gamma) * out
    elif gamma != 0:
        # base ** gamma has an infinite derivative at 0 for gamma < 1, and no real value a
        # rounding below 0: the double where keeps both out of the value and the gradient.
        positive = ops.greater(base, 0.0)
        safe = ops.where(positive, base, 1.0)
        out = ops.where(positive, ops.power(safe, gamma), 0.0) * out
    if alpha is not None:  # t alpha + (1 - t)(1 - alpha)
        if is_class is not None:
            out = out * ops.where(is_class, alpha, 1.0 - alpha)
        else:
            out = out * ((1.0 - alpha) + y_true * (2.0 * alpha - 1.0))
    return out


focal_one_hot_column = functools.partial(focal_column, one_hot=True)


def bce_column(
    y_true: Any, y_pred: Any, from_logits: bool = False, label_smoothing: float = 0.0
) -> Any:
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)


def mse_column(y_true: Any, y_pred: Any) -> Any:
    return ops.square(y_true - y_pred)


def mae_column(y_true: Any, y_pred: Any) -> Any:
    return ops.abs(y_true - y_pred)


def huber_column(y_true: Any, y_pred: Any, delta: float = 1.0) -> Any:
    error = ops.subtract(y_pred, y_true)
    abs_error = ops.abs(error)
    # Keras multiplies by delta as a tensor, which the graph optimiser keeps; times 1 is exact.
    linear = abs_error if delta == 1 else ops.convert_to_tensor(delta, y_pred.dtype) * abs_error
    delta = ops.convert_to_tensor(delta, dtype=y_pred.dtype)
    half = ops.convert_to_tensor(0.5, dtype=abs_error.dtype)
    return ops.where(
        abs_error <= delta, half * ops.square(error), linear - half * ops.square(delta)
    )


def mape_column(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon(), dtype=y_pred.dtype)
    return 100.0 * ops.abs((y_true - y_pred) / ops.maximum(ops.abs(y_true), epsilon))


def msle_column(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon())
    first_log = ops.log(ops.maximum(y_pred, epsilon) + 1.0)
    second_log = ops.log(ops.maximum(y_true, epsilon) + 1.0)
    return ops.square(first_log - second_log)


def log_cosh_column(y_true: Any, y_pred: Any) -> Any:
    log2 = ops.convert_to_tensor(ops.log(2.0), dtype=y_pred.dtype)
    x = y_pred - y_true
    return x + ops.softplus(x * -2.0) - log2


def poisson_column(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon(), dtype=y_pred.dtype)
    return y_pred - y_true * ops.log(y_pred + epsilon)


def sparse_cce(index: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """``keras.losses.sparse_categorical_crossentropy`` of class indices held as floats (a
    ``Loss`` casts every label to its dtype). An index outside ``[0, classes)`` has no class:
    it gives 0, as the crossentropy of its one-hot row of zeros does, where Keras's function
    has no value (TensorFlow raises and JAX reads another class)."""
    valid = _names_a_class(index, y_pred.shape[-1])
    safe = ops.cast(ops.where(valid, index, 0), "int32")
    out = keras.losses.sparse_categorical_crossentropy(safe, y_pred, from_logits=from_logits)
    return ops.where(valid, out, ops.zeros_like(out))


def one_hot(index: Any, classes: int, dtype: str) -> Any:
    """The one-hot rows of class indices held as floats; an index outside ``[0, classes)``
    gives a row of zeros, as ``keras.ops.one_hot`` does (tested here before the cast to int,
    which would take -0.5 for class 0, so that every loss agrees with ``sparse_cce``)."""
    valid = _names_a_class(index, classes)
    return ops.one_hot(ops.cast(ops.where(valid, index, -1), "int32"), classes, dtype=dtype)


def _names_a_class(index: Any, classes: int) -> Any:
    """Where a class index, held as a float, lies in ``[0, classes)``."""
    return ops.logical_and(ops.greater_equal(index, 0), ops.less(index, classes))


def dice(y_true: Any, y_pred: Any, total: Callable[[Any], Any]) -> Any:
    """``keras.losses.dice`` with its sums taken by ``total``: over each example (Keras's
    ``axis`` every axis but the batch's) or over the whole batch (``axis=None``)."""
    intersection = total(y_true * y_pred)
    score = ops.divide(2.0 * intersection, total(y_true) + total(y_pred) + keras.backend.epsilon())
    return 1 - score


def tversky(
    y_true: Any, y_pred: Any, total: Callable[[Any], Any], alpha: float = 0.5, beta: float = 0.5
) -> Any:
    """``keras.losses.tversky`` with its sums taken by ``total`` (see ``dice``). As in Keras,
    ``alpha`` weighs ``sum((1 - y_pred) * y_true)`` and ``beta`` ``sum(y_pred * (1 - y_true))``."""
    intersection = total(y_true * y_pred)
    fp = total((1 - y_pred) * y_true)
    fn = total(y_pred * (1 - y_true))
    score = ops.divide(
        intersection, intersection + fp * alpha + fn * beta + keras.backend.epsilon()
    )
    return 1 - score
