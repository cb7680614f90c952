"""Numerical edge cases, each a test.

Each case checks the loss value and its gradient with respect to ``y_pred`` (``tf.GradientTape``),
eagerly and under ``tf.function(jit_compile=True)``, through ``loss.call`` (one value per sample)
and through ``loss(y_true, y_pred)`` (reduced by the Keras base class). Either value and gradient
are finite, or the formula itself is undefined or overflows, and the test pins the documented
result: the non-finite value sits exactly where the math puts it and leaks nowhere else.

Expected values come from the ``keras.losses`` functions, from NumPy float64 code written here,
or from hand-written ``keras.ops``. lossdsl is never compared with itself.

Guarded by lossdsl (finite value and gradient):

* a batch of 0 rows: the reduced loss is the scalar 0.0 with a zero gradient (Keras's own losses
  return an empty tensor there);
* one row, and a ``where`` that selects no row: 0, never 0/0;
* probabilities of exactly 0 and 1 in ``bce``, ``focal`` and ``cce`` (clipped as Keras clips), and
  logits of +-1e4 with ``from_logits=true``;
* NaN or inf in a row that ``where`` masks out, in ``y_true`` or ``y_pred``;
* float16 and bfloat16 inputs: the built-in losses compute in float32, the precision Keras's
  clipping epsilons are made for (``1 - 1e-7`` is 1.0 in both), and return the input's dtype.

Left to the user, because the formula's own value is undefined or not representable (the README,
"Numerical edge cases", says so):

* ``log`` of 0 is -inf and of a negative value NaN, ``sqrt`` likewise: lossdsl adds no epsilon
  to the user's arithmetic. A constant such as ``log(-1)`` is a validation error;
* a squared error beyond float32's range (``mse`` of 1e30 is 1e60) is inf, as IEEE rounds an
  overflow. Its gradient stays finite; ``dtype="float64"`` computes the finite value;
* ``cce`` of a prediction row that sums to 0: Keras normalises each row by its sum, 0/0;
* a NaN in a row the condition *selects* (``true(u0) != 1`` selects a NaN label).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from reference import EPS, close, data_kinds, sigmoid, traced, xent, xent_logits
from reference import cce as _cce

import lossdsl

MODES = ["eager", "xla"]
MEANS = ["selected", "batch"]
LO, HI = float(np.float32(EPS)), float(np.float32(1 - EPS))  # Keras's clip bounds, in float32
F32_MAX = float(np.finfo(np.float32).max)
# Relative precision of a value rounded to each dtype (half an ulp at 1, with room for the
# formula's own arithmetic in that dtype).
RTOL = {"float16": 1e-3, "bfloat16": 8e-3}


# -- helpers ----------------------------------------------------------------------------------


def f64(x):
    """A tensor or array of any float dtype (bfloat16 included) as float64 NumPy."""
    x = tf.convert_to_tensor(x)
    return np.asarray(x if x.dtype == tf.float64 else tf.cast(x, tf.float32)).astype(np.float64)


def value_and_grad(fn, yt, yp, mode="eager"):
    """``fn(y_true, y_pred)`` and the gradient of its sum w.r.t. ``y_pred``. The sum is taken in
    float32 (float64 for a float64 value), so that it cannot overflow a low precision."""

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            v = fn(t, p)
            total = ops.sum(v if v.dtype == tf.float64 else ops.cast(v, "float32"))
        return v, tape.gradient(total, p)

    v, g = traced(run, mode)(tf.convert_to_tensor(yt), tf.convert_to_tensor(yp))
    return f64(v), f64(g)


def both_fn(loss, reduced=True):
    """A function of ``(y_true, y_pred)`` giving ``loss.call``'s per-sample values and the
    reduced ``loss(y_true, y_pred)``, each with its gradient w.r.t. ``y_pred`` (only the first
    two without ``reduced``)."""

    def run(t, p):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(p)
            v = loss.call(t, p)
            v_sum = ops.sum(ops.cast(v, "float32"))
            total = loss(t, p) if reduced else None
        if not reduced:
            return v, tape.gradient(v_sum, p)
        return v, tape.gradient(v_sum, p), total, tape.gradient(total, p)

    return run


def both(loss, yt, yp, mode):
    """``((values, gradient), (reduced loss, gradient))`` in float64, from one traced call."""
    out = traced(both_fn(loss), mode)(tf.convert_to_tensor(yt), tf.convert_to_tensor(yp))
    v, g, total, total_g = (f64(x) for x in out)
    return (v, g), (total, total_g)


def finite(*arrays):
    for a in arrays:
        assert np.isfinite(a).all(), a


def k_where(term, mask, where_mean):
    """A ``where`` term by hand, in keras.ops, on clean data."""
    m = ops.cast(mask, "float32")
    if where_mean == "batch":
        return term * m
    return term * m * ops.divide_no_nan(float(m.shape[0]), ops.sum(m))


# NumPy float64 references, from the math, with Keras's clip bounds as float32 holds them.


def np_xent(t, p):
    return xent(t, p, LO, HI)


def np_cce(t, p, from_logits=False, label_smoothing=0.0):
    return _cce(t, p, from_logits, label_smoothing, lo=LO, hi=HI)


def np_focal(t, p, *, gamma=2.0, alpha=None, from_logits=False, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    xent = xent_logits(t, p) if from_logits else np_xent(t, p)
    q = sigmoid(p) if from_logits else p
    out = (1 - (t * q + (1 - t) * (1 - q))) ** gamma * xent
    if alpha is not None:
        out = out * (t * alpha + (1 - t) * (1 - alpha))
    return out.mean(-1)


# -- the built-in losses, with data in their domain -------------------------------------------

N = 12
GEN = data_kinds(N)
BUILTINS = [  # formula on u[0:3], Keras function, its keywords, y_true kind, y_pred kind
    ("bce(u[0:3])", "binary_crossentropy", {}, "label", "prob"),
    ("bce(u[0:3], from_logits=true, label_smoothing=0.1)", "binary_crossentropy",
     {"from_logits": True, "label_smoothing": 0.1}, "label", "logit"),
    ("cce(u[0:3])", "categorical_crossentropy", {}, "onehot", "simplex"),
    ("cce(u[0:3], from_logits=true)", "categorical_crossentropy", {"from_logits": True},
     "onehot", "logit"),
    ("focal(u[0:3], gamma=3, alpha=0.3)", "binary_focal_crossentropy",
     {"gamma": 3.0, "alpha": 0.3, "apply_class_balancing": True}, "label", "prob"),
    ("focal(u[0:3], from_logits=true)", "binary_focal_crossentropy", {"from_logits": True},
     "label", "logit"),
    ("mse(u[0:3])", "mean_squared_error", {}, "real", "real"),
    ("mae(u[0:3])", "mean_absolute_error", {}, "real", "real"),
    ("mape(u[0:3])", "mean_absolute_percentage_error", {}, "pos", "pos"),
    ("msle(u[0:3])", "mean_squared_logarithmic_error", {}, "pos", "pos"),
    ("huber(u[0:3], delta=0.5)", "huber", {"delta": 0.5}, "real", "real"),
    ("log_cosh(u[0:3])", "log_cosh", {}, "real", "real"),
    ("kld(u[0:3])", "kl_divergence", {}, "simplex", "simplex"),
    ("poisson(u[0:3])", "poisson", {}, "pos", "pos"),
    ("hinge(u[0:3])", "hinge", {}, "label", "score"),
    ("squared_hinge(u[0:3])", "squared_hinge", {}, "label", "score"),
    ("cosine(u[0:3])", "cosine_similarity", {}, "real", "real"),
]  # fmt: skip
BUILTIN_IDS = [b[0] for b in BUILTINS]


def builtin_data(i, seed):
    """Columns 0-2 in the loss's domain; column 3 a 0/1 flag, 0 on every third row."""
    _, _, _, tkind, pkind = BUILTINS[i]
    r = np.random.default_rng(seed)
    flag = (np.arange(N) % 3 != 0)[:, None]
    yt = np.hstack([GEN[tkind](r, 3), flag]).astype("float32")
    yp = np.hstack([GEN[pkind](r, 3), flag]).astype("float32")
    return yt, yp


def keras_fn(i):
    _, name, kw, _, _ = BUILTINS[i]
    return lambda t, p: getattr(keras.losses, name)(t, p, **kw)


# -- a batch of 0 rows ------------------------------------------------------------------------

EMPTY = "1 + bce(u0) + focal(u[0:2], alpha=0.3) + cce(u[1:3]) + mse(u2) where true(u0) == 1"


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
def test_batch_of_zero_rows(mode, where_mean):
    """The reduced loss of an empty batch is the scalar 0.0, with a zero gradient.

    The reference is Keras's own ``MeanSquaredError`` traced for a batch of unknown size, which
    sums no values and divides with ``divide_no_nan``: 0.0. (Called on a batch of static shape
    ``(0, k)``, Keras's losses return their empty ``(0,)`` per-sample tensor unreduced, which is
    not a loss; lossdsl returns the 0.0 in every case.)"""
    spec = [tf.TensorSpec([None, 3], "float32")] * 2
    keras_mse = tf.function(keras.losses.MeanSquaredError(), input_signature=spec)
    empty = np.zeros((0, 3), "float32")
    expected = float(keras_mse(empty, empty))
    assert expected == 0.0
    loss = lossdsl.compile_loss(EMPTY, where_mean=where_mean)
    (v, g), (total, total_g) = both(loss, empty, empty, mode)
    assert v.shape == (0,)
    assert g.shape == (0, 3)
    assert total.shape == ()
    assert total == expected
    assert total_g.shape == (0, 3)
    # A batch of unknown size, traced once and called empty.
    assert float(tf.function(loss, input_signature=spec)(empty, empty)) == expected


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_batch_of_zero_rows_every_reduction_and_shape(reduction):
    """Every reduction of no samples is 0.0 (a sum of nothing, divided with divide_no_nan), with
    or without sample weights, for an empty batch and an empty inner axis; ``reduction=None``
    keeps the empty per-sample tensor. The terms of an empty batch are 0.0 too."""
    loss = lossdsl.compile_loss(EMPTY, reduction=reduction)
    for shape in [(0, 3), (0, 4, 3), (4, 0, 3)]:
        empty = np.zeros(shape, "float32")
        for w in (None, np.zeros(shape[:-1], "float32")):
            value = loss(empty, empty, sample_weight=w)
            assert tuple(value.shape) == ()
            assert float(value) == 0.0
    none = lossdsl.compile_loss(EMPTY, reduction=None)
    assert tuple(none(np.zeros((0, 3)), np.zeros((0, 3))).shape) == (0,)
    empty = np.zeros((0, 3), "float32")
    assert all(float(v) == 0.0 for v in loss.terms(empty, empty).values())


# -- one row ----------------------------------------------------------------------------------

ONE_ROW = "bce(u0) + 0.5*focal(u[0:2], alpha=0.3) + cce(u[1:4]) + 2*mse(u4) where true(u0) == 1"


def one_row_reference(t, p, where_mean):
    """The formula in keras.losses functions, written out."""
    bce = keras.losses.binary_crossentropy(t[:, :1], p[:, :1])
    focal = keras.losses.binary_focal_crossentropy(
        t[:, :2], p[:, :2], apply_class_balancing=True, alpha=0.3
    )
    cce = keras.losses.categorical_crossentropy(t[:, 1:4], p[:, 1:4])
    mse = keras.losses.mean_squared_error(t[:, 4:], p[:, 4:])
    return bce + 0.5 * focal + cce + k_where(2 * mse, t[:, 0] == 1, where_mean)


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
def test_batch_of_one_row(mode, where_mean):
    """One row, selected by the ``where`` or not: the selected mean over one (or no) sample is the
    term itself (or 0), so both ``where_mean`` give the reference."""
    loss = lossdsl.compile_loss(ONE_ROW, where_mean=where_mean)
    run = traced(both_fn(loss), mode)  # one trace for both rows
    for label in (0.0, 1.0):
        yt = np.array([[label, 0.0, 1.0, 0.0, 0.4]], "float32")
        yp = np.array([[0.3, 0.2, 0.5, 0.3, -0.7]], "float32")
        v, g, total, total_g = (f64(x) for x in run(tf.constant(yt), tf.constant(yp)))
        v_ref, g_ref = value_and_grad(lambda t, p: one_row_reference(t, p, where_mean), yt, yp)
        assert v.shape == (1,)
        assert total.shape == ()
        finite(v, g, total, total_g)
        close(v, v_ref)
        close(g, g_ref)
        close(total, v_ref[0])
        close(total_g, g_ref)
        assert (g[0, 4] != 0) == (label == 1.0)


# -- every row masked -------------------------------------------------------------------------


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
def test_all_rows_masked(mode, where_mean):
    """A ``where`` that selects no row adds exactly 0 to the value and the gradient, even though
    every row of the columns it reads holds NaN or inf; its term metric and ``terms()`` are 0."""
    r = np.random.default_rng(1)
    clean_t, clean_p = r.uniform(0.1, 0.9, (N, 4)), r.uniform(0.1, 0.9, (N, 4))
    clean_t[:, 0] = 0.0  # the flag: no row has true(u0) == 1
    yt, yp = clean_t.astype("float32"), clean_p.astype("float32")
    yt[:, 1:3] = [np.nan, np.inf]
    yp[:, 1:3] = [-np.inf, np.nan]
    masked_only = lossdsl.compile_loss(
        "(mse(u[1:3]) + bce(u1) + log(pred(u2))) where true(u0) == 1", where_mean=where_mean
    )
    (v, g), (total, total_g) = both(masked_only, yt, yp, mode)
    assert (v == 0).all() and total == 0.0
    assert (g == 0).all() and (total_g == 0).all()

    loss = lossdsl.compile_loss(
        "mae(u3) + 2*(mse(u[1:3]) + log(pred(u2))) where true(u0) == 1", where_mean=where_mean
    )
    (v, g), (total, total_g) = both(loss, yt, yp, mode)
    v_ref, g_ref = value_and_grad(keras.losses.mean_absolute_error, yt[:, 3:], yp[:, 3:])
    finite(v, g, total, total_g)
    close(v, v_ref)
    close(total, v_ref.mean())
    assert (g[:, :3] == 0).all()
    close(g[:, 3:], g_ref)
    close(total_g[:, 3:], g_ref / N)

    weights = r.uniform(0.5, 2, N).astype("float32")
    close(loss(yt, yp, sample_weight=weights), (v_ref * weights).mean())
    plain, masked_term = loss.terms(yt, yp).values()
    close(plain, v_ref.mean())
    assert float(masked_term) == 0.0
    metric = loss.term_metrics()[1]
    metric.update_state(yt, yp, sample_weight=weights)
    assert float(metric.result()) == 0.0


# -- saturated probabilities and logits --------------------------------------------------------

SATURATED = [  # formula, Keras function, its keywords, NumPy reference
    ("bce(u[0:2])", "binary_crossentropy", {}, lambda t, p: np_xent(t, p).mean(-1)),
    ("bce(u[0:2], label_smoothing=0.1)", "binary_crossentropy", {"label_smoothing": 0.1},
     lambda t, p: np_xent(0.9 * t + 0.05, p).mean(-1)),
    ("focal(u[0:2])", "binary_focal_crossentropy", {}, np_focal),
    ("focal(u[0:2], gamma=0.5)", "binary_focal_crossentropy", {"gamma": 0.5},
     lambda t, p: np_focal(t, p, gamma=0.5)),
    ("focal(u[0:2], alpha=0.4, label_smoothing=0.1)", "binary_focal_crossentropy",
     {"alpha": 0.4, "apply_class_balancing": True, "label_smoothing": 0.1},
     lambda t, p: np_focal(t, p, alpha=0.4, label_smoothing=0.1)),
    ("cce(u[2:5])", "categorical_crossentropy", {}, np_cce),
    ("cce(u[2:5], label_smoothing=0.1)", "categorical_crossentropy", {"label_smoothing": 0.1},
     lambda t, p: np_cce(t, p, label_smoothing=0.1)),
]  # fmt: skip
SATURATED_IDS = [s[0] for s in SATURATED]


def saturated(lo, hi):
    """Columns 0-1: every pair of a 0/1 label and a prediction ``lo``/``hi``; columns 2-4: a
    one-hot label against a one-hot prediction, right on a third of the rows."""
    k = np.arange(N + 4)
    yt, yp = np.zeros((N + 4, 5), "float32"), np.zeros((N + 4, 5), "float32")
    yt[:, 0], yp[:, 0] = k % 2, np.where(k // 2 % 2, hi, lo)
    yt[:, 1], yp[:, 1] = k // 4 % 2, np.where(k // 8 % 2, hi, lo)
    yt[:, 2:], yp[:, 2:] = np.eye(3)[k % 3], np.where(np.eye(3)[k // 3 % 3], hi, lo)
    return yt, yp


def check_against_keras(case, yt, yp, mode):
    formula, fn_name, kw, np_ref = case
    loss = lossdsl.compile_loss(formula)
    s = slice(2, 5) if formula.startswith("cce") else slice(0, 2)
    (v, g), (total, total_g) = both(loss, yt, yp, mode)
    expected = np_ref(yt[:, s].astype(np.float64), yp[:, s].astype(np.float64))
    assert np.isfinite(expected).all()
    finite(v, g, total, total_g)
    close(v, expected)
    close(total, expected.mean())
    fn = getattr(keras.losses, fn_name)
    v_keras, g_keras = value_and_grad(lambda t, p: fn(t[:, s], p[:, s], **kw), yt, yp)
    close(v, v_keras)
    # Keras's own gradient is NaN where focal's factor (1 - p_t) ** gamma meets 0 with gamma < 1;
    # lossdsl's is finite there (the README's focal difference) and equal to Keras's elsewhere.
    ok = np.isfinite(g_keras)
    close(g[ok], g_keras[ok])
    close(total_g[ok], g_keras[ok] / len(yt))
    return g


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(SATURATED)), ids=SATURATED_IDS)
def test_probabilities_of_exactly_0_and_1(i, mode):
    """Probabilities of exactly 0 and 1 are clipped to [1e-7, 1 - 1e-7] inside the crossentropy,
    as Keras clips: a finite value (about 16.1 for a confidently wrong prediction) and a finite
    gradient. The clip passes no gradient back to a saturated probability, so ``bce`` and ``cce``
    give exactly 0 there, as Keras does; ``focal``'s factor still does."""
    yt, yp = saturated(0.0, 1.0)
    g = check_against_keras(SATURATED[i], yt, yp, mode)
    if not SATURATED[i][0].startswith("focal"):
        assert (g == 0).all()


LOGITS = [  # formula, Keras function, its keywords, NumPy reference
    ("bce(u[0:2], from_logits=true)", "binary_crossentropy", {"from_logits": True},
     lambda t, x: xent_logits(t, x).mean(-1)),
    ("focal(u[0:2], from_logits=true)", "binary_focal_crossentropy", {"from_logits": True},
     lambda t, x: np_focal(t, x, from_logits=True)),
    ("focal(u[0:2], gamma=0.5, alpha=0.4, from_logits=true)", "binary_focal_crossentropy",
     {"gamma": 0.5, "alpha": 0.4, "apply_class_balancing": True, "from_logits": True},
     lambda t, x: np_focal(t, x, gamma=0.5, alpha=0.4, from_logits=True)),
    ("cce(u[2:5], from_logits=true)", "categorical_crossentropy", {"from_logits": True},
     lambda t, x: np_cce(t, x, from_logits=True)),
    ("cce(u[2:5], from_logits=true, label_smoothing=0.1)", "categorical_crossentropy",
     {"from_logits": True, "label_smoothing": 0.1},
     lambda t, x: np_cce(t, x, from_logits=True, label_smoothing=0.1)),
]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(LOGITS)), ids=[s[0] for s in LOGITS])
def test_logits_of_plus_minus_1e4(i, mode):
    """Logits of +-1e4 with ``from_logits=true``: the crossentropy is computed from the logits
    (1e4 for a confidently wrong one, no clipping needed), and the gradient is finite."""
    yt, yp = saturated(-1e4, 1e4)
    g = check_against_keras(LOGITS[i], yt, yp, mode)
    assert np.abs(g).max() > 0


# -- NaN labels in masked rows -------------------------------------------------------------


def nan_masked_data(i):
    """Builtin ``i``'s data, and a copy with NaN labels (and NaN, inf predictions) in the rows
    that ``true(u3) == 1`` masks out."""
    clean_t, clean_p = builtin_data(i, seed=10 + i)
    masked = clean_t[:, 3] == 0
    yt, yp = clean_t.copy(), clean_p.copy()
    yt[masked, :3] = np.nan
    yp[masked, :3] = [np.nan, np.inf, -np.inf]
    return clean_t, clean_p, yt, yp


@functools.cache
def nan_masked_outputs(mode):
    """``both`` for every built-in under ``where``, on its NaN data: one trace per mode. Under
    XLA only ``loss.call`` (the reduced loss adds Keras's mean, and doubles a slow compile)."""
    losses = [lossdsl.compile_loss(f"{b[0]} where true(u3) == 1") for b in BUILTINS]
    data = [nan_masked_data(i)[2:] for i in range(len(BUILTINS))]
    fns = [both_fn(loss, reduced=mode == "eager") for loss in losses]
    run = traced(lambda ts, ps: [f(t, p) for f, t, p in zip(fns, ts, ps, strict=True)], mode)
    out = run([tf.constant(d[0]) for d in data], [tf.constant(d[1]) for d in data])
    return [tuple(f64(x) for x in o) for o in out]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(BUILTINS)), ids=BUILTIN_IDS)
def test_nan_label_in_a_masked_row(i, mode):
    """``y_true`` NaN (and ``y_pred`` NaN or inf) in the rows a ``where`` masks out: every built-in
    loss gives the Keras value on the selected rows, 0 on the masked ones, and a finite gradient
    that is exactly 0 on the masked rows and Keras's on the others."""
    clean_t, clean_p, _, _ = nan_masked_data(i)
    masked = clean_t[:, 3] == 0
    v, g, *reduced = nan_masked_outputs(mode)[i]

    fn = keras_fn(i)
    expected = np.zeros(N)
    expected[~masked] = f64(fn(clean_t[~masked, :3], clean_p[~masked, :3])) * N / (~masked).sum()
    v_ref, g_ref = value_and_grad(
        lambda t, p: k_where(fn(t[:, :3], p[:, :3]), t[:, 3] == 1, "selected"), clean_t, clean_p
    )
    finite(v, g)
    close(v, expected)
    close(v, v_ref)
    assert (g[masked] == 0).all()
    close(g, g_ref, atol=1e-6)
    if reduced:
        total, total_g = reduced
        finite(total, total_g)
        close(total, expected.mean())
        assert (total_g[masked] == 0).all()
        close(total_g, g_ref / N, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_nan_label_in_the_condition_column(mode):
    """A comparison with NaN is false, so ``true(u0) == 1`` masks a NaN label out; ``!=`` selects
    it, as IEEE arithmetic says. A selected NaN is not hidden: it makes exactly the terms that read
    it NaN (here ``bce(u0)``), while a term that reads other columns stays finite."""
    yt = np.array([[1, 0.5], [np.nan, 0.5], [0, 0.5], [1, 0.5]], "float32")
    yp = np.array([[0.8, 0.1], [0.3, 0.2], [0.4, 0.3], [0.6, 0.4]], "float32")
    sq = (yp[:, 1] - yt[:, 1]).astype(np.float64) ** 2
    eq = lossdsl.compile_loss("(bce(u0) + mse(u1)) where true(u0) == 1", where_mean="batch")
    (v, g), _ = both(eq, yt, yp, mode)
    selected = np.array([True, False, False, True])
    close(v, np.where(selected, np_xent(yt[:, 0], yp[:, 0]) + sq, 0))
    finite(g)
    assert (g[~selected] == 0).all()
    ne = lossdsl.compile_loss("mse(u1) where true(u0) != 1 + bce(u0) where true(u0) != 1")
    (v, g), (total, _) = both(ne, yt, yp, mode)
    assert np.isnan(v[1]) and np.isnan(total)
    close(v[[0, 2, 3]], [0, (sq[2] + np_xent(0, yp[2, 0])) * 4 / 2, 0])  # 2 of 4 rows selected
    assert np.isnan(g[1, 0])  # bce(u0) reads the NaN label
    assert np.isfinite(np.delete(g, 1, axis=0)).all() and np.isfinite(g[:, 1]).all()


# -- very large and very small values ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_1e30_and_1e_30_in_msle(mode):
    """``msle`` is guarded by Keras itself: it clips to ``max(x, 1e-7)`` and uses ``log1p``, so
    1e30 (log1p is 69.1), 1e-30, 0 and negative values all give finite values and gradients."""
    values = np.array([1e30, 1e-30, 0.0, -1e30, 1e15, 3.0], "float32")
    yt = np.stack(np.meshgrid(values, values), -1).reshape(-1, 2)[:, :1].copy()
    yp = np.stack(np.meshgrid(values, values), -1).reshape(-1, 2)[:, 1:].copy()
    loss = lossdsl.compile_loss("msle(u0)", units=1)
    (v, g), (total, total_g) = both(loss, yt, yp, mode)
    t64, p64 = np.maximum(yt[:, 0].astype(np.float64), EPS), np.maximum(yp[:, 0], EPS)
    finite(v, g, total, total_g)
    close(v, (np.log1p(p64) - np.log1p(t64)) ** 2, rtol=1e-5)
    v_keras, g_keras = value_and_grad(keras.losses.mean_squared_logarithmic_error, yt, yp)
    close(v, v_keras)
    close(g, g_keras)
    close(total, v.mean())


@pytest.mark.parametrize("mode", MODES)
def test_1e30_and_1e_30_in_mse(mode):
    """``mse`` at 1e-30 is finite (its square underflows to 0, an error of 1e-60). At 1e30 the
    squared error, 1e60, is beyond float32 (3.4e38): the value is inf, the IEEE result of an
    overflow and Keras's value too. lossdsl does not guard this, because no float32 number is
    the right answer: a clip would report a wrong loss and cut the gradient. So the test pins the
    documented behaviour: inf exactly in the rows where a squared difference overflows float32
    (as Keras squares before it averages, 2e19 overflows too), finite values in every other row
    and term, 0 from masked rows, and a finite gradient ``2 (p - t) / k`` everywhere (2e30 fits
    in float32). ``dtype="float64"`` computes the finite loss."""
    yt = np.array([[1e30, 0, 1], [0, 1e-30, 1], [1e-30, 0, 1], [2e19, 0, 1], [1e19, 0, 1],
                   [1e30, 1e30, 0], [0.5, 0.25, 1]], "float32")  # fmt: skip
    yp = np.zeros_like(yt)
    yp[:, 2] = yt[:, 2]
    d = yp[:, :2].astype(np.float64) - yt[:, :2]
    exact = np.mean(d**2, -1)  # float64: 1e60 is finite
    overflow = (d**2 > F32_MAX).any(-1)
    assert overflow.tolist() == [True, False, False, True, False, True, False]
    loss = lossdsl.compile_loss("mse(u[0:2]) + 1", units=3)
    (v, g), (total, total_g) = both(loss, yt, yp, mode)
    assert np.isposinf(v[overflow]).all() and np.isposinf(total)
    close(v[~overflow], exact[~overflow] + 1, rtol=1e-6, atol=0)
    v_keras, _ = value_and_grad(keras.losses.mean_squared_error, yt[:, :2], yp[:, :2])
    close(v - 1, v_keras)
    finite(g, total_g)
    close(g[:, :2], d, rtol=1e-6, atol=0)  # 2 (p - t) / k, with k = 2 columns
    assert (g[:, 2] == 0).all()
    close(total_g, g / len(yt), rtol=1e-6, atol=0)

    # Masked out, the overflowing rows add nothing; the selected rows are their own mean.
    masked = lossdsl.compile_loss("mse(u[0:2]) where true(u2) == 1", units=3)
    (v, g), (total, total_g) = both(masked, yt, yp, mode)
    assert v[5] == 0 and (g[5] == 0).all() and np.isfinite(g).all()
    close(v[~overflow], exact[~overflow] * len(yt) / 6, rtol=1e-6, atol=1e-50)

    # In float64, 1e60 is a number.
    wide = lossdsl.compile_loss("mse(u[0:2]) + 1", units=3, dtype="float64")
    v, g = value_and_grad(wide, yt, yp, mode)
    close(v, np.mean(exact + 1), rtol=1e-6, atol=0)
    finite(v, g)


@pytest.mark.parametrize("mode", MODES)
def test_1e30_and_1e_30_in_log(mode):
    """``log`` is the user's own arithmetic, unguarded: ``log(1e30)`` and ``log(1e-30)`` are finite
    (+-69.1, gradient ``1/x``, up to 1e30), ``log(0)`` is -inf and ``log`` of a negative NaN, by
    the formula's own meaning, exactly in those rows (``sqrt`` and ``/`` alike). A ``where`` on
    the argument, or a ``max``, keeps the undefined rows out, with a zero gradient; a constant
    ``log(-1)`` is a validation error."""
    p = np.array([[1e30], [1e-30], [0.0], [-1.0], [-1e-30], [2.0]], "float32")
    t = np.zeros_like(p)
    loss = lossdsl.compile_loss("log(pred(u0)) + 100", units=1)
    (v, g), _ = both(loss, t, p, mode)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log(p[:, 0].astype(np.float64)) + 100
    defined = p[:, 0] > 0
    close(v[defined], expected[defined])
    assert np.isneginf(v[2]) and np.isnan(v[3:5]).all()
    close(g[defined, 0], 1 / p[defined, 0].astype(np.float64))
    assert np.isposinf(g[2, 0])
    close(g[3:5, 0], 1 / p[3:5, 0].astype(np.float64))  # 1/x is defined where log is not
    # sqrt and division likewise: inf at 0, NaN below, in those rows only.
    (v, g), _ = both(lossdsl.compile_loss("sqrt(pred(u0)) + 1/pred(u0)", units=1), t, p, mode)
    close(v[defined], np.sqrt(p[defined, 0].astype(np.float64)) + 1 / p[defined, 0])
    assert np.isposinf(v[2]) and np.isnan(v[3:5]).all()
    finite(g[[0, 5]])
    assert np.isneginf(g[1, 0])  # d(1/x)/dx = -1/x**2 is -1e60 at 1e-30: beyond float32

    log_p = np.log(np.maximum(p[:, 0].astype(np.float64), float(np.float32(1e-7))))
    selected_mean = np.where(defined, expected - 100, 0) * len(p) / defined.sum()
    for guarded, want in (
        ("100 + log(pred(u0)) where pred(u0) > 0", 100 + selected_mean),
        ("100 + log(max(pred(u0), 1e-7))", 100 + log_p),
    ):
        loss = lossdsl.compile_loss(guarded, units=1)
        (v, g), (total, total_g) = both(loss, t, p, mode)
        finite(v, g, total, total_g)
        close(v, want)
        assert (g[~defined] == 0).all()

    for undefined in ("mse(u0) + log(-1)", "mse(u0) + sqrt(-1)", "mse(u0) * log(1 - 1)"):
        with pytest.raises(lossdsl.LossValidationError, match="undefined"):
            lossdsl.compile_loss(undefined, units=1)


def test_cce_of_a_row_summing_to_zero_is_nan():
    """``cce`` without logits divides each prediction row by its sum, as Keras does: a row of
    zeros is no distribution (0/0), so its value is NaN in that row only, and NaN reaches no
    other row's value or gradient. Masked out by a ``where``, it adds 0."""
    yt = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 1, 0, 0]], "float32")
    yp = np.array([[0, 0, 0, 1], [0.2, 0.5, 0.3, 1], [0, 0, 0, 0]], "float32")
    (v, g), _ = both(lossdsl.compile_loss("cce(u[0:3])", units=4), yt, yp, "eager")
    assert np.isnan(v[[0, 2]]).all() and np.isnan(g[[0, 2], :3]).all()
    close(v[1], -np.log(0.5))
    finite(g[1])
    masked = lossdsl.compile_loss("cce(u[0:3]) where pred(u3) == 1", units=4)
    (v, g), _ = both(masked, yt[1:], yp[1:], "eager")
    close(v, [-np.log(0.5) * 2, 0])
    finite(g)


# -- float16 and bfloat16 ---------------------------------------------------------------------

LOW = ["float16", "bfloat16"]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("i", range(len(BUILTINS)), ids=BUILTIN_IDS)
def test_low_precision_inputs_to_every_builtin(i, dtype):
    """``loss.call`` on float16 or bfloat16 inputs computes in that dtype, except the built-in
    losses, which compute in float32 and round their result back: each equals Keras's function
    in float32 on the rounded inputs, to the dtype's precision, value and gradient. (Keras's
    function computed in the low dtype itself is the wrong reference: besides its inf and NaN at
    saturated probabilities, below, its ``kld`` and ``log_cosh`` in bfloat16 are off by up to 9%
    and 4% on this data.)"""
    yt, yp = builtin_data(i, seed=30 + i)
    t, p = tf.cast(yt, dtype), tf.cast(yp, dtype)
    loss = lossdsl.compile_loss(f"0.5*{BUILTINS[i][0]} + 1")
    out = loss.call(t, p)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    v, g = value_and_grad(loss.call, t, p)
    fn = keras_fn(i)
    v_ref, g_ref = value_and_grad(
        lambda a, b: 0.5 * fn(a[:, :3], b[:, :3]) + 1, tf.cast(t, "float32"), tf.cast(p, "float32")
    )
    finite(v, g)
    close(v, v_ref, rtol=RTOL[dtype])
    close(g, g_ref, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(g_ref).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_saturated_probabilities_and_logits(dtype, mode):
    """In float16 and bfloat16, Keras's clip bound ``1 - 1e-7`` rounds to 1.0, so Keras's
    crossentropy computed in that dtype is inf or NaN for a probability of exactly 1. lossdsl's
    built-in losses compute in float32 and give the float32 value, rounded, with a finite
    gradient. Logits of +-1e4 fit both dtypes. The reduced loss is computed in float32 by default
    (the base class casts the inputs), or, with the loss's ``dtype`` low, in that dtype: then it
    is finite as long as the batch's sum fits (a wrong 1e4 logit costs 1e4, and float16 ends at
    65,504, so that check uses the probability cases)."""
    # Columns 0-4: the probability cases on saturated(0, 1); columns 5-9: the logit cases.
    yt, yp = saturated(0.0, 1.0)
    _, xl = saturated(-1e4, 1e4)
    yt2, yp2 = np.hstack([yt, yt]), np.hstack([yp, xl])
    probabilities = " + ".join(s[0] for s in SATURATED)
    shifted = (s[0].replace("u[0:2]", "u[5:7]").replace("u[2:5]", "u[7:10]") for s in LOGITS)
    formula = " + ".join([probabilities, *shifted])

    def reference(t, p, kinds=((SATURATED, 0), (LOGITS, 5))):
        out = 0.0
        for cases, base in kinds:
            for text, fn_name, kw, _ in cases:
                s = slice(base + 2, base + 5) if text.startswith("cce") else slice(base, base + 2)
                out = out + getattr(keras.losses, fn_name)(t[:, s], p[:, s], **kw)
        return out

    t, p = tf.cast(yt2, dtype), tf.cast(yp2, dtype)
    t32, p32 = tf.cast(t, "float32"), tf.cast(p, "float32")
    v_ref, g_ref = value_and_grad(reference, t32, p32)
    assert np.isfinite(v_ref).all()
    loss = lossdsl.compile_loss(formula)
    v, g = value_and_grad(loss.call, t, p, mode)
    finite(v, g)
    close(v, v_ref, rtol=RTOL[dtype] * 4)  # a sum of 12 losses, each rounded
    ok = np.isfinite(g_ref)  # Keras's focal with gamma < 1 has NaN gradients (see above)
    close(g[ok], g_ref[ok], rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(g_ref[ok]).max())

    total, total_g = value_and_grad(loss, t, p)  # eager: XLA compiles of this size are slow
    assert total.shape == ()
    finite(total, total_g)
    # Both float32 (the base class casts the inputs), by other ops: to float32's precision.
    close(total, v_ref.mean(), rtol=1e-5)
    low = lossdsl.compile_loss(probabilities, dtype=dtype)
    total, total_g = value_and_grad(low, t, p)
    finite(total, total_g)
    close(total, reference(t32, p32, kinds=((SATURATED, 0),)).numpy().mean(), rtol=RTOL[dtype] * 4)
