"""Numerical tests of compiled formulas against independent references.

Every expected value comes from NumPy float64 code written here from the math, from the
``keras.losses`` functions themselves, or from hand-written ``keras.ops`` expressions; lossdsl
is never compared with itself. Each check runs eagerly and under ``tf.function(jit_compile=True)``.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from reference import (
    EPS,
    cce,
    close,
    data_kinds,
    sigmoid,
    traced,
    xent,
    xent_logits,
)

import lossdsl

N, W = 16, 5
MODES = ["eager", "xla"]
MEANS = ["selected", "batch"]


# -- helpers ----------------------------------------------------------------------------------


def per_sample(loss, yt, yp, mode="eager"):
    return np.asarray(traced(loss.call, mode)(tf.constant(yt), tf.constant(yp)))


def value_and_grad(fn, yt, yp, mode="eager", seed=7):
    """``sum(w * fn(y_true, y_pred))`` for fixed random weights ``w``, and its gradient."""
    w = tf.constant(np.random.default_rng(seed).uniform(0.5, 1.5, yt.shape[:-1]), "float32")

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            v = ops.sum(fn(t, p) * w)
        return v, tape.gradient(v, p)

    v, g = traced(run, mode)(tf.constant(yt), tf.constant(yp))
    return float(v), np.asarray(g)


def cols(selector):
    """``"u2"`` or ``"u[1:4]"`` to a slice."""
    start, _, stop = selector.strip("u[]").partition(":")
    return slice(int(start), int(stop) if stop else int(start) + 1)


# -- NumPy float64 references, written from the math ------------------------------------------


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def np_bce(t, p, from_logits=False, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    return np.mean(xent_logits(t, p) if from_logits else xent(t, p), -1)


def np_focal(t, p, gamma=2.0, alpha=0.25, apply_class_balancing=False, **kw):
    # With from_logits, Keras takes the crossentropy from the logits, the focal factor
    # from their sigmoid.
    ls, logits = kw.get("label_smoothing", 0.0), kw.get("from_logits")
    t = t * (1 - ls) + 0.5 * ls
    ce = xent_logits(t, p) if logits else xent(t, p)
    p = sigmoid(p) if logits else p
    out = (1 - (t * p + (1 - t) * (1 - p))) ** gamma * ce
    if apply_class_balancing:
        out = out * (t * alpha + (1 - t) * (1 - alpha))
    return out.mean(-1)


def np_huber(t, p, delta=1.0):
    e = np.abs(p - t)
    return np.mean(np.where(e <= delta, 0.5 * e**2, delta * e - 0.5 * delta**2), -1)


def np_hinge(t, p, power=1):
    s = 2 * t - 1 if np.isin(t, (0.0, 1.0)).all() else t  # Keras maps all-binary labels
    return np.mean(np.maximum(1 - s * p, 0) ** power, -1)


def np_kld(t, p):
    t, p = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    return np.sum(t * np.log(t / p), -1)


NP_LOSSES = {
    "bce": np_bce,
    "cce": cce,
    "focal": np_focal,
    "mse": lambda t, p: np.mean((t - p) ** 2, -1),
    "mae": lambda t, p: np.mean(np.abs(t - p), -1),
    "mape": lambda t, p: 100 * np.mean(np.abs(t - p) / np.maximum(np.abs(t), EPS), -1),
    "msle": lambda t, p: np.mean(
        (np.log1p(np.maximum(p, EPS)) - np.log1p(np.maximum(t, EPS))) ** 2, -1
    ),
    "huber": np_huber,
    "log_cosh": lambda t, p: np.mean(np.logaddexp(p - t, t - p) - np.log(2), -1),
    "kld": np_kld,
    "poisson": lambda t, p: np.mean(p - t * np.log(p + EPS), -1),
    "hinge": np_hinge,
    "squared_hinge": lambda t, p: np_hinge(t, p, power=2),
    "cosine": lambda t, p: -np.sum(_unit(t) * _unit(p), -1),
}


class Ref:
    """A batch in float64, with the losses and the ``where`` semantics, for references."""

    def __init__(self, yt, yp, where_mean="selected"):
        self.t, self.p = np.asarray(yt, np.float64), np.asarray(yp, np.float64)
        self.where_mean = where_mean

    def __call__(self, name, selector, **kw):
        s = cols(selector)
        return NP_LOSSES[name](self.t[..., s], self.p[..., s], **kw)

    def where(self, term, mask):
        term = np.where(mask, term, 0.0) + np.zeros(mask.shape)
        if self.where_mean == "batch" or not mask.any():
            return term
        return term * mask.size / mask.sum()


# -- data -------------------------------------------------------------------------------------

GEN = data_kinds(N)


def make(true_kind, pred_kind, sl, seed):
    r, k = np.random.default_rng(seed), sl.stop - sl.start
    yt, yp = r.uniform(0.1, 1, (N, W)), r.uniform(0.1, 1, (N, W))
    yt[:, sl], yp[:, sl] = GEN[true_kind](r, k), GEN[pred_kind](r, k)
    return yt.astype("float32"), yp.astype("float32")


def mixed(seed=0):
    """Column 0: 0/1 labels and probabilities; columns 1-4: positive values."""
    r = np.random.default_rng(seed)
    yt, yp = r.uniform(0.1, 2, (N, W)), r.uniform(0.1, 2, (N, W))
    yt[:, 0], yp[:, 0] = np.arange(N) % 2, r.uniform(0.05, 0.95, N)
    return yt.astype("float32"), yp.astype("float32")


# -- built-in losses --------------------------------------------------------------------------

KERAS = {
    "bce": "binary_crossentropy", "cce": "categorical_crossentropy",
    "focal": "binary_focal_crossentropy", "mse": "mean_squared_error",
    "mae": "mean_absolute_error", "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error", "huber": "huber", "log_cosh": "log_cosh",
    "kld": "kl_divergence", "poisson": "poisson", "hinge": "hinge",
    "squared_hinge": "squared_hinge", "cosine": "cosine_similarity",
}  # fmt: skip
BUILTINS = [  # name, selector, keywords, y_true kind, y_pred kind
    ("bce", "u[1:4]", "", "label", "prob"),
    ("bce", "u2", "label_smoothing=0.1", "label", "prob"),
    ("bce", "u[0:5]", "from_logits=true", "label", "logit"),
    ("cce", "u[1:4]", "", "onehot", "simplex"),
    ("cce", "u[0:5]", "label_smoothing=0.1", "onehot", "simplex"),
    ("cce", "u[2:5]", "from_logits=true", "onehot", "logit"),
    ("focal", "u[1:4]", "", "label", "prob"),
    ("focal", "u[0:3]", "gamma=3, alpha=0.3", "label", "prob"),
    ("focal", "u[1:5]", "from_logits=true, label_smoothing=0.1", "label", "logit"),
    ("mse", "u[1:4]", "", "real", "real"),
    ("mae", "u3", "", "real", "real"),
    ("mape", "u[1:4]", "", "pos", "pos"),
    ("msle", "u[0:2]", "", "pos", "pos"),
    ("huber", "u[1:4]", "", "real", "real"),
    ("huber", "u[0:5]", "delta=0.5", "real", "real"),
    ("log_cosh", "u[1:4]", "", "real", "real"),
    ("kld", "u[1:4]", "", "simplex", "simplex"),
    ("poisson", "u[1:4]", "", "pos", "pos"),
    ("hinge", "u[1:4]", "", "label", "score"),
    ("squared_hinge", "u[0:2]", "", "label", "score"),
    ("cosine", "u[1:4]", "", "real", "real"),
    # One unit: the compiler applies Keras's expression to the column itself.
    ("bce", "u1", "from_logits=true, label_smoothing=0.2", "label", "logit"),
    ("focal", "u4", "gamma=0.5, alpha=0.7", "label", "prob"),
    ("focal", "u0", "from_logits=true", "label", "logit"),
    ("mse", "u0", "", "real", "real"),
    ("mape", "u2", "", "pos", "pos"),
    ("msle", "u1", "", "pos", "pos"),
    ("huber", "u3", "delta=0.3", "real", "real"),
    ("log_cosh", "u0", "", "real", "real"),
    ("poisson", "u2", "", "pos", "pos"),
    ("kld", "u1", "", "pos", "pos"),
    ("hinge", "u4", "", "label", "score"),
]
ONE_UNIT = [i for i, c in enumerate(BUILTINS) if ":" not in c[1] and c[0] != "focal"]


def builtin(case, seed):
    """Formula, Keras keywords and data of a ``BUILTINS`` case."""
    _, sel, kws, tkind, pkind = case
    pairs = (a.split("=") for a in kws.split(", ") if a)
    kw = {k: True if v == "true" else float(v) for k, v in pairs}
    if "alpha" in kw:  # the documented contract: giving alpha turns on class balancing
        kw["apply_class_balancing"] = True
    yt, yp = make(tkind, pkind, cols(sel), seed)
    return case_id(case), kw, yt, yp


def case_id(case):
    return f"{case[0]}({case[1]}{', ' + case[2] if case[2] else ''})"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(BUILTINS)), ids=[case_id(c) for c in BUILTINS])
def test_builtin_loss_matches_keras_and_numpy(i, mode):
    formula, kw, yt, yp = builtin(BUILTINS[i], seed=i)
    name, s = BUILTINS[i][0], cols(BUILTINS[i][1])
    got = per_sample(lossdsl.compile_loss(formula), yt, yp, mode)
    assert got.shape == (N,)
    close(got, getattr(keras.losses, KERAS[name])(yt[:, s], yp[:, s], **kw))
    close(got, NP_LOSSES[name](yt[:, s].astype(np.float64), yp[:, s].astype(np.float64), **kw))


@pytest.mark.parametrize("i", ONE_UNIT, ids=[case_id(BUILTINS[i]) for i in ONE_UNIT])
def test_one_unit_loss_is_keras_bit_for_bit(i):
    """Over one unit the value is Keras's exactly (eagerly): a mean of one value."""
    formula, kw, yt, yp = builtin(BUILTINS[i], seed=300 + i)
    name, s = BUILTINS[i][0], cols(BUILTINS[i][1])
    got = per_sample(lossdsl.compile_loss(formula), yt, yp)
    want = np.asarray(getattr(keras.losses, KERAS[name])(yt[:, s], yp[:, s], **kw))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("i", range(len(BUILTINS)), ids=[case_id(c) for c in BUILTINS])
def test_builtin_loss_under_where_equals_keras_on_selected_rows(i):
    formula, kw, yt, yp = builtin(BUILTINS[i], seed=100 + i)
    name, s = BUILTINS[i][0], cols(BUILTINS[i][1])
    m = np.arange(N) % 3 != 0  # selector in an extra column u5
    flag = m[:, None].astype("float32")
    loss = lossdsl.compile_loss(f"{formula} where true(u5) == 1")
    got = per_sample(loss, np.hstack([yt, flag]), np.hstack([yp, flag]))
    expected = np.zeros(N)
    expected[m] = getattr(keras.losses, KERAS[name])(yt[m][:, s], yp[m][:, s], **kw)
    close(got, expected * N / m.sum())


# -- constructs against NumPy -----------------------------------------------------------------

NAMES = {"presence": 0, "box": [1, 4], "extra": 4}
CONSTRUCTS = [  # formula, reference, compile options
    ("mse(u[1:4]) + mae(u[2:5])", lambda r: r("mse", "u[1:4]") + r("mae", "u[2:5]"), {}),
    ("bce(presence) + mae(box) + mse(extra)",
     lambda r: r("bce", "u0") + r("mae", "u[1:4]") + r("mse", "u4"), {"units": NAMES}),
    ("2*mse(u1) + mae(u2)/4 + 3 - 1", lambda r: 2 * r("mse", "u1") + r("mae", "u2") / 4 + 2, {}),
    ("-(-mse(u1)) + pred(u2)*true(u3) + mse(u1)/pred(u4)",
     lambda r: r("mse", "u1") * (1 + 1 / r.p[:, 4]) + r.p[:, 2] * r.t[:, 3], {}),
    ("-cosine(u[1:4]) - 0.5*mse(u4)", lambda r: -r("cosine", "u[1:4]") - 0.5 * r("mse", "u4"),
     {"allow_negative": True}),
    ("abs(pred(u1) - true(u1)) + sqrt(mse(u2)) + log(1 + mae(u3))",
     lambda r: abs(r.p[:, 1] - r.t[:, 1]) + np.sqrt(r("mse", "u2")) + np.log1p(r("mae", "u3")),
     {}),
    ("exp(-pred(u1)) + square(pred(u2) - true(u2))",
     lambda r: np.exp(-r.p[:, 1]) + (r.p[:, 2] - r.t[:, 2]) ** 2, {}),
    ("min(mse(u1), mae(u2)) + max(pred(u3), true(u3))",
     lambda r: np.minimum(r("mse", "u1"), r("mae", "u2")) + np.maximum(r.p[:, 3], r.t[:, 3]), {}),
    ("clip(pred(u1) - true(u1), -0.5, 0.5) + 1",
     lambda r: np.clip(r.p[:, 1] - r.t[:, 1], -0.5, 0.5) + 1, {}),
    ("sigmoid(pred(u1) - 1) + tanh(pred(u2) - true(u2)) + sigmoid(-30) * mse(u3)",
     lambda r: sigmoid(r.p[:, 1] - 1) + np.tanh(r.p[:, 2] - r.t[:, 2])
     + sigmoid(-30.0) * r("mse", "u3"), {}),
    ("mse(u1) where sigmoid(pred(u3) - 1) > 0.6",
     lambda r: r.where(r("mse", "u1"), sigmoid(r.p[:, 3] - 1) > 0.6), {}),
    ("alpha*bce(u0) + (1 - alpha)*mse(u1)",
     lambda r: 0.7 * r("bce", "u0") + 0.3 * r("mse", "u1"), {"params": {"alpha": 0.7}}),
    # the label column makes every comparison meet ties: < and <= differ, as do > and >=
    ("mse(u1) where true(u0) < 1", lambda r: r.where(r("mse", "u1"), r.t[:, 0] < 1), {}),
    ("mse(u1) where true(u0) <= 0", lambda r: r.where(r("mse", "u1"), r.t[:, 0] <= 0), {}),
    ("mae(u2) where true(u0) > 0", lambda r: r.where(r("mae", "u2"), r.t[:, 0] > 0), {}),
    ("mae(u2) where true(u0) >= 1", lambda r: r.where(r("mae", "u2"), r.t[:, 0] >= 1), {}),
    ("mse(u1) where pred(u0) < 0.5", lambda r: r.where(r("mse", "u1"), r.p[:, 0] < 0.5), {}),
    ("mse(u1) where pred(u2) <= true(u2)",
     lambda r: r.where(r("mse", "u1"), r.p[:, 2] <= r.t[:, 2]), {}),
    ("bce(u0) where true(u0) == 1", lambda r: r.where(r("bce", "u0"), r.t[:, 0] == 1), {}),
    ("bce(u0) where true(u0) != 1", lambda r: r.where(r("bce", "u0"), r.t[:, 0] != 1), {}),
    ("mse(u[1:3]) where true(u0) == 1 and pred(u1) < pred(u2)",
     lambda r: r.where(r("mse", "u[1:3]"), (r.t[:, 0] == 1) & (r.p[:, 1] < r.p[:, 2])), {}),
    ("mae(u3) where not (pred(u0) > 0.5) or true(u0) == 0",
     lambda r: r.where(r("mae", "u3"), ~(r.p[:, 0] > 0.5) | (r.t[:, 0] == 0)), {}),
    ("mse(u1) where bce(u0) > thr and not true(u0) != 1",
     lambda r: r.where(r("mse", "u1"), (r("bce", "u0") > 0.25) & (r.t[:, 0] == 1)),
     {"params": {"thr": 0.25}}),
    ("(bce(u0) + mse(u1)) where true(u0) == 1",
     lambda r: r.where(r("bce", "u0") + r("mse", "u1"), r.t[:, 0] == 1), {}),
    ("0.7*bce(u0) + 0.3*mse(u1) where pred(u0) >= 0.5",
     lambda r: 0.7 * r("bce", "u0") + r.where(0.3 * r("mse", "u1"), r.p[:, 0] >= 0.5), {}),
    ("mse(u1) where true(u0) == 1 + 2*mae(u2) where true(u0) == 0",
     lambda r: r.where(r("mse", "u1"), r.t[:, 0] == 1)
     + r.where(2 * r("mae", "u2"), r.t[:, 0] == 0), {}),
    ("bce(u0) + 2 where pred(u0) > 0.5",
     lambda r: r("bce", "u0") + r.where(2.0, r.p[:, 0] > 0.5), {}),
]  # fmt: skip


@functools.cache
def construct_outputs(mode, where_mean):
    """Every construct's per-sample values, in one traced function per mode."""
    losses = [lossdsl.compile_loss(f, where_mean=where_mean, **o) for f, _, o in CONSTRUCTS]
    yt, yp = mixed()
    run = traced(lambda t, p: [loss.call(t, p) for loss in losses], mode)
    return [np.asarray(v) for v in run(tf.constant(yt), tf.constant(yp))]


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(CONSTRUCTS)), ids=[c[0] for c in CONSTRUCTS])
def test_construct_matches_numpy(i, mode, where_mean):
    close(construct_outputs(mode, where_mean)[i], CONSTRUCTS[i][1](Ref(*mixed(), where_mean)))


def test_mixed_data_selects_some_but_not_all_rows():
    r = Ref(*mixed())  # guards the construct tests against trivially empty or full masks
    for mask in (r.p[:, 0] < 0.5, r.t[:, 0] == 1, r.p[:, 2] <= r.t[:, 2], r("bce", "u0") > 0.25):
        assert 0 < mask.sum() < N


@pytest.mark.parametrize("mode", MODES)
def test_set_param_changes_the_traced_loss(mode):
    yt, yp = mixed(1)
    r = Ref(yt, yp)
    loss = lossdsl.compile_loss(
        "alpha*bce(u0) + (1 - alpha)*mse(u1) where pred(u0) > thr",
        params={"alpha": 0.7, "thr": 0.5},
    )
    run = traced(loss.call, mode)
    for alpha, thr in ((0.7, 0.5), (0.2, 0.5), (0.2, 0.3)):
        loss.set_param("alpha", alpha)
        loss.set_param("thr", thr)
        expected = alpha * r("bce", "u0") + r.where((1 - alpha) * r("mse", "u1"), r.p[:, 0] > thr)
        close(run(tf.constant(yt), tf.constant(yp)), expected)
    assert dict(loss.params) == {"alpha": 0.2, "thr": 0.3}


# -- gradients against hand-written keras.ops -------------------------------------------------


def k_bce(t, p):
    p = ops.clip(p, EPS, 1 - EPS)
    return -(t * ops.log(p) + (1 - t) * ops.log(1 - p))


def k_mse(t, p):
    return ops.mean(ops.square(t - p), axis=-1)


def k_where(term, mask, where_mean):
    m = ops.cast(mask, "float32")
    return term * m if where_mean == "batch" else term * m * (m.shape[0] / ops.sum(m))


GRADS = [  # formula, options, keras.ops reference f(t, p, where_mean)
    ("bce(u0) + 2*mse(u[1:3])", {},
     lambda t, p, wm: k_bce(t[:, 0], p[:, 0]) + 2 * k_mse(t[:, 1:3], p[:, 1:3])),
    ("0.7*bce(u0) + 0.3*mse(u[1:3]) where pred(u0) >= 0.5", {},
     lambda t, p, wm: 0.7 * k_bce(t[:, 0], p[:, 0])
     + k_where(0.3 * k_mse(t[:, 1:3], p[:, 1:3]), p[:, 0] >= 0.5, wm)),
    ("(abs(pred(u1) - true(u1)) + bce(u0)) where true(u0) == 1 and pred(u3) < true(u3)", {},
     lambda t, p, wm: k_where(ops.abs(p[:, 1] - t[:, 1]) + k_bce(t[:, 0], p[:, 0]),
                              ops.logical_and(t[:, 0] == 1, p[:, 3] < t[:, 3]), wm)),
    ("alpha*mse(u1) + (1 - alpha)*bce(u0)", {"params": {"alpha": 0.3}},
     lambda t, p, wm: 0.3 * k_mse(t[:, 1:2], p[:, 1:2]) + 0.7 * k_bce(t[:, 0], p[:, 0])),
    ("sqrt(mse(u[1:3])) + log(1 + exp(pred(u3))) + max(pred(u1), true(u1))*pred(u2)"
     " + clip(pred(u4), 0.3, 0.9) + mse(u1)/pred(u3) + square(min(pred(u2), true(u4)))", {},
     lambda t, p, wm: ops.sqrt(k_mse(t[:, 1:3], p[:, 1:3])) + ops.log(1 + ops.exp(p[:, 3]))
     + ops.maximum(p[:, 1], t[:, 1]) * p[:, 2] + ops.clip(p[:, 4], 0.3, 0.9)
     + ops.square(t[:, 1] - p[:, 1]) / p[:, 3] + ops.square(ops.minimum(p[:, 2], t[:, 4]))),
]  # fmt: skip
GRAD_PARAMS = [
    (i, wm) for i, c in enumerate(GRADS) for wm in MEANS if wm == "batch" or "where" in c[0]
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("i", "where_mean"), GRAD_PARAMS, ids=[f"{GRADS[i][0]}-{wm}" for i, wm in GRAD_PARAMS]
)
def test_gradient_matches_keras_ops_reference(i, where_mean, mode):
    formula, options, ref = GRADS[i]
    yt, yp = mixed(2)
    loss = lossdsl.compile_loss(formula, where_mean=where_mean, **options)
    v, g = value_and_grad(loss.call, yt, yp, mode)
    v_ref, g_ref = value_and_grad(lambda t, p: ref(t, p, where_mean), yt, yp)
    close(v, v_ref)
    close(g, g_ref)
    assert np.abs(g).sum() > 0


# -- reduction through keras.losses.Loss ------------------------------------------------------


@pytest.mark.parametrize("where_mean", MEANS)
def test_reduction_and_sample_weight(where_mean):
    yt, yp = mixed(3)
    loss = lossdsl.compile_loss("bce(u0) + mse(u[1:3]) where true(u0) == 1", where_mean=where_mean)
    r = Ref(yt, yp, where_mean)
    v = r("bce", "u0") + r.where(r("mse", "u[1:3]"), r.t[:, 0] == 1)
    close(loss(yt, yp), v.mean())
    w = np.random.default_rng(3).uniform(0, 2, N)
    close(loss(yt, yp, sample_weight=w.astype("float32")), (v * w).sum() / N)
    if where_mean == "selected":  # the mean over the selected samples, as documented
        close(loss(yt, yp) - r("bce", "u0").mean(), r("mse", "u[1:3]")[r.t[:, 0] == 1].mean())
    # (4, 4, 5): four samples of four positions each; the mask counts positions.
    yt3, yp3 = yt.reshape(4, 4, W), yp.reshape(4, 4, W)
    got = per_sample(loss, yt3, yp3)
    assert got.shape == (4, 4)
    close(got, v.reshape(4, 4))
    close(loss(yt3, yp3), v.mean())


# -- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
def test_nan_and_inf_on_masked_rows(mode, where_mean):
    yt, yp = mixed(4)
    yt[:, 3] = np.arange(N) % 3 == 0
    masked = yt[:, 3] == 0
    bad_t, bad_p = yt.copy(), yp.copy()
    bad_t[masked, :3] = [np.nan, np.inf, -np.inf]
    bad_p[masked, :4] = [np.inf, np.nan, -np.inf, np.nan]
    formula = "(bce(u0) + mse(u[1:3])) where true(u3) == 1 + mae(u4)"
    loss = lossdsl.compile_loss(formula, where_mean=where_mean)

    def ref(t, p):  # on the clean data
        term = k_bce(t[:, 0], p[:, 0]) + k_mse(t[:, 1:3], p[:, 1:3])
        return k_where(term, t[:, 3] == 1, where_mean) + ops.abs(t[:, 4] - p[:, 4])

    r = Ref(yt, yp, where_mean)
    expected = r.where(r("bce", "u0") + r("mse", "u[1:3]"), ~masked) + r("mae", "u4")
    close(per_sample(loss, bad_t, bad_p, mode), expected)
    close(traced(loss, mode)(bad_t, bad_p), expected.mean())
    v, g = value_and_grad(loss.call, bad_t, bad_p, mode)
    v_ref, g_ref = value_and_grad(ref, yt, yp)
    assert np.isfinite(g).all()
    assert (g[masked, :4] == 0).all()
    close(v, v_ref)
    close(g, g_ref)


@pytest.mark.parametrize("where_mean", MEANS)
@pytest.mark.parametrize("mode", MODES)
def test_empty_selection_contributes_zero(mode, where_mean):
    yt, yp = mixed(5)
    loss = lossdsl.compile_loss("bce(u0) + mse(u[1:3]) where pred(u0) > 2", where_mean=where_mean)
    close(per_sample(loss, yt, yp, mode), Ref(yt, yp)("bce", "u0"))
    v, g = value_and_grad(loss.call, yt, yp, mode)
    assert np.isfinite(v)
    assert np.isfinite(g).all()
    assert (g[:, 1:] == 0).all()
    assert (g[:, 0] != 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("logits", [False, True], ids=["probabilities", "logits"])
def test_saturated_inputs_are_finite(logits, mode):
    lo, hi = (-1e4, 1e4) if logits else (0.0, 1.0)
    k = np.arange(N)
    yt, yp = np.zeros((N, W), "float32"), np.zeros((N, W), "float32")
    yt[:, 0], yp[:, 0] = k % 2, np.where(k // 2 % 2, hi, lo)  # every (label, prediction) pair
    yt[:, 1], yp[:, 1] = k // 4 % 2, np.where(k // 8, hi, lo)
    yt[:, 2:], yp[:, 2:] = np.eye(3)[k % 3], np.where(np.eye(3)[k // 3 % 3], hi, lo)
    flag = ", from_logits=true" if logits else ""
    loss = lossdsl.compile_loss(
        f"bce(u[0:2]{flag}) + focal(u[0:2]{flag}) + focal(u[0:2], alpha=0.4{flag}) "
        f"+ cce(u[2:5]{flag}, label_smoothing=0.1) + focal(u[0:2], gamma=0.5{flag}) "
        f"+ focal(u[0:2], gamma=0{flag})"
    )
    r = Ref(yt, yp)
    expected = (
        r("bce", "u[0:2]", from_logits=logits)
        + r("focal", "u[0:2]", from_logits=logits)
        + r("focal", "u[0:2]", alpha=0.4, apply_class_balancing=True, from_logits=logits)
        + r("cce", "u[2:5]", from_logits=logits, label_smoothing=0.1)
        + r("focal", "u[0:2]", gamma=0.5, from_logits=logits)
        + r("focal", "u[0:2]", gamma=0.0, from_logits=logits)
    )
    assert np.isfinite(expected).all()
    close(per_sample(loss, yt, yp, mode), expected)
    v, g = value_and_grad(loss.call, yt, yp, mode)
    assert np.isfinite(v)
    assert np.isfinite(g).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(len(BUILTINS)), ids=[case_id(c) for c in BUILTINS])
def test_builtin_gradient_matches_keras(i, mode):
    """d/dy_pred of each built-in loss equals the gradient of the Keras function itself."""
    formula, kw, yt, yp = builtin(BUILTINS[i], seed=200 + i)
    s = cols(BUILTINS[i][1])
    keras_fn = getattr(keras.losses, KERAS[BUILTINS[i][0]])
    got_v, got_g = value_and_grad(lossdsl.compile_loss(formula).call, yt, yp, mode)

    def reference(t, p):
        return keras_fn(t[:, s], p[:, s], **kw)

    want_v, want_g = value_and_grad(reference, yt, yp, mode)
    close(got_v, want_v, atol=0)
    close(got_g, want_g, atol=1e-7)
