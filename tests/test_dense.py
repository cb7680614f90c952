"""Dense prediction: label layouts, class-index labels, aggregates over each example's
positions and over the batch, and the example-level losses, against independent references:
Keras's own loss classes and functions, the RetinaNet loss written with ``keras.ops``, and
NumPy in float64. Values and gradients, eagerly and under XLA."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from reference import EPS, close, log_softmax, sigmoid, traced

import lossdsl
from lossdsl import LossInputError, LossValidationError

MODES = ["eager", "xla"]
RNG = np.random.default_rng(11)


def value_and_grad(fn, yt, yp, mode="eager"):
    """``fn(y_true, y_pred)`` reduced to a scalar by Keras (or already one), and its gradient
    with respect to ``y_pred``."""

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            v = fn(t, p)
        return v, tape.gradient(v, p)

    v, g = traced(run, mode)(tf.constant(yt), tf.constant(yp))
    return np.asarray(v), np.zeros(yp.shape) if g is None else np.asarray(g)


def masks(b=4, h=6, w=5, c=1):
    yt = (RNG.uniform(size=(b, h, w, c)) > 0.6).astype("float32")
    yp = RNG.uniform(0.02, 0.98, size=(b, h, w, c)).astype("float32")
    return yt, yp


# -- the example-level losses against Keras's classes -----------------------------------------

KERAS_CLASSES = [  # formula, units, the Keras loss object it equals
    ("dice(mask)", {"mask": 0}, lambda: keras.losses.Dice(axis=(1, 2, 3))),
    ("dice(mask, batch=true)", {"mask": 0}, keras.losses.Dice),
    (
        "tversky(mask, alpha=0.3, beta=0.7)",
        {"mask": 0},
        lambda: keras.losses.Tversky(alpha=0.3, beta=0.7, axis=(1, 2, 3)),
    ),
    (
        "tversky(mask, alpha=0.8, beta=0.2, batch=true)",
        {"mask": 0},
        lambda: keras.losses.Tversky(alpha=0.8, beta=0.2),
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("formula", "units", "make"), KERAS_CLASSES, ids=[c[0] for c in KERAS_CLASSES]
)
def test_example_level_loss_equals_the_keras_class(formula, units, make, mode):
    yt, yp = masks()
    loss = lossdsl.compile_loss(formula, units=units)
    got_v, got_g = value_and_grad(loss, yt, yp, mode)
    want_v, want_g = value_and_grad(make(), yt, yp, mode)
    close(got_v, want_v, rtol=1e-6)
    close(got_g, want_g, rtol=1e-5, atol=1e-7)
    assert np.abs(got_g).sum() > 0


def test_per_example_dice_is_one_value_per_example_and_sample_weights_weigh_examples():
    yt, yp = masks(b=5)
    loss = lossdsl.compile_loss("dice(mask)", units={"mask": 0})
    per = np.asarray(loss.call(yt, yp))
    assert per.shape == (5,)
    close(per, keras.losses.dice(yt, yp, axis=(1, 2, 3)), rtol=1e-6)
    w = np.array([1.0, 0.0, 2.0, 0.5, 3.0], "float32")
    close(loss(yt, yp, sample_weight=w), (per * w).sum() / 5, rtol=1e-6)


# -- class-index labels -------------------------------------------------------------------------

TOKENS = {"tok": {"pred": [0, 5], "true": 0}}


def tokens(b=4, t=7, c=5, ignored=0.3):
    index = RNG.integers(0, c, size=(b, t)).astype("float32")
    index[RNG.uniform(size=(b, t)) < ignored] = -1
    index[1] = -1  # a sentence with no token to learn from
    return index, RNG.normal(0, 2, size=(b, t, c)).astype("float32")


@pytest.mark.parametrize("mode", MODES)
def test_cce_of_class_indices_with_ignore_class_equals_keras(mode):
    index, logits = tokens()
    loss = lossdsl.compile_loss("cce(tok, from_logits=true, ignore_class=-1)", units=TOKENS)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    got_v, got_g = value_and_grad(loss, index[..., None], logits, mode)
    want_v, want_g = value_and_grad(keras_loss, index, logits, mode)
    close(got_v, want_v, rtol=1e-6)
    close(got_g, want_g, rtol=1e-5, atol=1e-7)
    assert (got_g[index == -1] == 0).all()


def test_cce_of_class_indices_is_keras_sparse_crossentropy():
    index, probs = RNG.integers(0, 4, size=(9,)).astype("float32"), RNG.dirichlet(np.ones(4), 9)
    probs = probs.astype("float32")
    loss = lossdsl.compile_loss("cce(cls)", units={"cls": {"pred": [1, 5], "true": 0}})
    y_true = np.stack([index, np.full(9, 7.0)], axis=1).astype("float32")  # an unused column
    y_pred = np.concatenate([np.zeros((9, 1)), probs], axis=1).astype("float32")
    close(loss.call(y_true, y_pred), keras.losses.sparse_categorical_crossentropy(index, probs))


@pytest.mark.parametrize("mode", MODES)
def test_a_class_index_out_of_range_has_no_class(mode):
    # Keras's sparse crossentropy has no value there (TensorFlow raises); lossdsl reads the
    # index as a row of zeros, whose crossentropy is 0, with no gradient.
    index = np.array([0.0, 2.0, -1.0, 3.0, -2.0, 1.0], "float32")
    logits = RNG.normal(size=(6, 3)).astype("float32")
    loss = lossdsl.compile_loss(
        "cce(cls, from_logits=true)", units={"cls": {"pred": [0, 3], "true": 0}}
    )
    per = np.asarray(traced(loss.call, mode)(tf.constant(index[:, None]), tf.constant(logits)))
    valid = np.array([0, 1, 5])
    want = keras.losses.sparse_categorical_crossentropy(
        index[valid], logits[valid], from_logits=True
    )
    close(per[valid], want, rtol=1e-6)
    assert (per[[2, 3, 4]] == 0).all()
    _, g = value_and_grad(loss, index[:, None], logits, mode)
    assert (g[[2, 3, 4]] == 0).all() and np.isfinite(g).all()


@pytest.mark.parametrize("mode", MODES)
def test_per_sentence_token_loss_against_numpy(mode):
    index, logits = tokens()
    loss = lossdsl.compile_loss("mean(cce(tok, from_logits=true, ignore_class=-1))", units=TOKENS)
    got = np.asarray(traced(loss.call, mode)(tf.constant(index[..., None]), tf.constant(logits)))
    ce = -np.take_along_axis(
        log_softmax(logits.astype(np.float64)), np.clip(index, 0, 4).astype(int)[..., None], -1
    )[..., 0]
    kept = index != -1
    want = np.where(kept.any(1), (ce * kept).sum(1) / np.maximum(kept.sum(1), 1), 0.0)
    assert got.shape == (4,)
    assert want[1] == 0
    close(got, want)
    close(loss(index[..., None], logits), want.mean())


@pytest.mark.parametrize(
    ("formula", "keras_loss"),
    [
        ("bce(cls, from_logits=true)", lambda t, p: keras.losses.binary_crossentropy(t, p, True)),
        ("focal(cls, alpha=0.4)", lambda t, p: keras.losses.binary_focal_crossentropy(
            t, p, apply_class_balancing=True, alpha=0.4)),
        ("focal(cls)", keras.losses.binary_focal_crossentropy),
        ("focal(cls, gamma=0.5)", lambda t, p: keras.losses.binary_focal_crossentropy(
            t, p, gamma=0.5)),
        ("focal(cls, gamma=3, alpha=0.25, from_logits=true)",
         lambda t, p: keras.losses.binary_focal_crossentropy(
            t, p, apply_class_balancing=True, alpha=0.25, gamma=3, from_logits=True)),
        ("focal(cls, label_smoothing=0.2)", lambda t, p: keras.losses.binary_focal_crossentropy(
            t, p, label_smoothing=0.2)),
        ("focal_cce(cls)", keras.losses.categorical_focal_crossentropy),
        ("categorical_hinge(cls)", keras.losses.categorical_hinge),
        ("mse(cls)", keras.losses.mean_squared_error),
    ],
    ids=[
        "bce", "focal", "focal-plain", "focal-gamma-0.5", "focal-logits", "focal-smoothing",
        "focal_cce", "categorical_hinge", "mse",
    ],
)  # fmt: skip
def test_other_losses_compare_with_the_one_hot_rows_of_class_indices(formula, keras_loss):
    index = np.array([0, 2, 1, -1, 3, -2, 2, 0], "float32")  # -1, -2 and 3: rows of zeros
    y_pred = RNG.uniform(0.05, 0.95, size=(8, 3)).astype("float32")
    if "logits" in formula:
        y_pred = RNG.normal(0, 2, size=(8, 3)).astype("float32")
    one_hot = np.eye(3, dtype="float32")[np.clip(index, 0, 2).astype(int)]
    one_hot[(index < 0) | (index > 2)] = 0
    loss = lossdsl.compile_loss(formula, units={"cls": {"pred": [0, 3], "true": 0}})
    close(loss.call(index[:, None], y_pred), keras_loss(one_hot, y_pred), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("formula", "weight", "keras_loss"),
    [
        ("4*huber(u[0:4])", 4.0, keras.losses.huber),
        ("huber(u[0:4], delta=0.5)*2", 2.0, lambda t, p: keras.losses.huber(t, p, delta=0.5)),
        ("4*mse(u[0:4])/2", 2.0, keras.losses.mean_squared_error),
        ("0.5*bce(u[0:4])", 0.5, keras.losses.binary_crossentropy),
        ("1*mae(u[0:4])", 1.0, keras.losses.mean_absolute_error),
    ],
)
def test_a_constant_times_a_loss_over_several_units_equals_keras(formula, weight, keras_loss, mode):
    # The constant folds into the loss's sum over the units (no multiplication where it is
    # the number of units): value and gradient are Keras's mean times the constant.
    y_true = RNG.uniform(0.05, 0.95, size=(16, 4)).astype("float32")
    y_pred = RNG.uniform(0.05, 0.95, size=(16, 4)).astype("float32")
    loss = lossdsl.compile_loss(formula, units=4)
    got, got_grad = value_and_grad(loss.call, y_true, y_pred, mode)
    want, want_grad = value_and_grad(lambda t, p: weight * keras_loss(t, p), y_true, y_pred, mode)
    close(got, want, rtol=1e-6)
    close(got_grad, want_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_a_focal_sum_over_class_indices_equals_keras_on_the_one_hot_rows(mode):
    # RetinaNet's 80*focal(...) over 80 classes: the sum over the classes, by selection.
    index = RNG.integers(-2, 80, size=(6, 10)).astype("float32")
    logits = RNG.normal(-4.6, 2.0, size=(6, 10, 80)).astype("float32")
    loss = lossdsl.compile_loss(
        "80*focal(cls, from_logits=true, alpha=0.25)",
        units={"cls": {"pred": [0, 80], "true": 0}},
    )

    def by_hand(t, p):
        one_hot = ops.one_hot(ops.cast(t[..., 0], "int32"), 80)  # rows of zeros below 0
        return 80 * keras.losses.binary_focal_crossentropy(
            one_hot, p, apply_class_balancing=True, alpha=0.25, from_logits=True
        )

    got, got_grad = value_and_grad(loss.call, index[..., None], logits, mode)
    want, want_grad = value_and_grad(by_hand, index[..., None], logits, mode)
    close(got, want, rtol=1e-5)
    close(got_grad, want_grad, rtol=1e-4, atol=1e-9)


def test_a_mean_over_an_example_without_positions_is_zero():
    loss = lossdsl.compile_loss("mean(mse(u0)) + sum(1 where true(u0) > 0)", units=1)
    out = loss.call(np.zeros((3, 0, 1), "float32"), np.zeros((3, 0, 1), "float32"))
    close(out, np.zeros(3))


def test_true_of_a_class_index_unit_is_the_index():
    index = np.array([[2.0], [0.0], [-1.0]], "float32")
    loss = lossdsl.compile_loss(
        "mean(bce(cls) where true(cls) >= 1)", units={"cls": {"pred": [0, 3], "true": 0}}
    )
    y_pred = np.full((3, 3), 0.25, "float32")
    bce = -np.log(1 - 0.25) * 2 / 3 - np.log(0.25) / 3  # label [0, 0, 1] for index 2
    close(loss.call(index, y_pred), [bce, 0.0, 0.0])


# -- label layouts ------------------------------------------------------------------------------


def test_a_units_map_reads_its_own_columns_of_each_side():
    # y_true: (weight, target); y_pred: (prediction,). The weight is a column the model does
    # not predict.
    units = {"loc": {"pred": 0, "true": 1}, "w": {"true": 0}}
    loss = lossdsl.compile_loss("true(w) * mse(loc)", units=units)
    y_true = np.array([[2.0, 1.0], [0.5, -1.0], [0.0, 3.0]], "float32")
    y_pred = np.array([[0.0], [1.0], [5.0]], "float32")
    close(loss.call(y_true, y_pred), [2.0, 2.0, 0.0])


def test_widths_that_do_not_cover_the_map_are_a_clear_error():
    loss = lossdsl.compile_loss("mse(box) + bce(cls)", units={"box": [0, 4], "cls": {
        "pred": [4, 7], "true": 4}})  # fmt: skip
    with pytest.raises(LossInputError, match=r"column 6 of y_pred, but y_pred has only 6 "):
        loss(np.zeros((2, 5), "float32"), np.zeros((2, 6), "float32"))
    with pytest.raises(LossInputError, match=r"column 4 of y_true, but y_true has only 4 "):
        loss(np.zeros((2, 4), "float32"), np.zeros((2, 7), "float32"))
    with pytest.raises(LossInputError, match="same leading shape"):
        loss(np.zeros((2, 5), "float32"), np.zeros((3, 7), "float32"))
    assert np.isfinite(float(loss(np.zeros((2, 5), "float32"), np.full((2, 7), 0.5, "float32"))))


# -- the RetinaNet loss -------------------------------------------------------------------------

CLASSES = 3
RETINA = (
    f"divide_no_nan(sum({CLASSES}*focal(cls, from_logits=true, alpha=0.25, gamma=2) "
    "where true(cls) != -2) + sum(4*huber(box) where true(cls) >= 0), sum(1 where true(cls) >= 0))"
)
RETINA_UNITS = {"box": [0, 4], "cls": {"pred": [4, 4 + CLASSES], "true": 4}}


def retina_by_hand(y_true, y_pred):
    """The keras-io RetinaNet loss: a sigmoid focal loss against the one-hot class, summed over
    the classes, on anchors that are not ignored (-2), and a smooth-L1 box loss summed over the
    coordinates on positive anchors (>= 0), each summed over anchors and divided by the image's
    positive anchors (0 when there are none)."""
    labels = ops.one_hot(ops.cast(y_true[..., 4], "int32"), CLASSES)
    logits = y_pred[..., 4:]
    ce = ops.binary_crossentropy(labels, logits, from_logits=True)
    probs = ops.sigmoid(logits)
    alpha = ops.where(ops.equal(labels, 1.0), 0.25, 0.75)
    pt = ops.where(ops.equal(labels, 1.0), probs, 1 - probs)
    clf = ops.sum(alpha * ops.square(1.0 - pt) * ce, axis=-1)
    diff = y_true[..., :4] - y_pred[..., :4]
    box = ops.sum(ops.where(ops.abs(diff) < 1.0, 0.5 * diff**2, ops.abs(diff) - 0.5), axis=-1)
    positive = ops.cast(y_true[..., 4] > -1.0, "float32")
    clf = ops.where(ops.equal(y_true[..., 4], -2.0), 0.0, clf)
    box = box * positive
    n = ops.sum(positive, axis=-1)
    return ops.divide_no_nan(ops.sum(clf, -1), n) + ops.divide_no_nan(ops.sum(box, -1), n)


def anchors(b=4, a=12):
    labels = RNG.integers(-2, CLASSES, size=(b, a)).astype("float32")
    labels[0] = -1  # an image with no positive anchor
    labels[0, :3] = -2
    y_true = np.concatenate([RNG.normal(size=(b, a, 4)), labels[..., None]], -1)
    return y_true.astype("float32"), RNG.normal(size=(b, a, 4 + CLASSES)).astype("float32")


@pytest.mark.parametrize("mode", MODES)
def test_the_retinanet_loss_as_one_formula(mode):
    y_true, y_pred = anchors()
    loss = lossdsl.compile_loss(RETINA, units=RETINA_UNITS)
    per = np.asarray(traced(loss.call, mode)(tf.constant(y_true), tf.constant(y_pred)))
    want = np.asarray(retina_by_hand(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)))
    close(per, want, rtol=1e-5)
    got_v, got_g = value_and_grad(loss, y_true, y_pred, mode)
    want_v, want_g = value_and_grad(lambda t, p: ops.mean(retina_by_hand(t, p)), y_true, y_pred)
    close(got_v, want_v, rtol=1e-5)
    close(got_g, want_g, rtol=1e-4, atol=1e-7)
    assert np.isfinite(got_g).all()
    assert (got_g[0, :, :4] == 0).all()  # no positive anchor: no box gradient


# -- aggregates and where -----------------------------------------------------------------------


def sequences(b=5, t=6):
    y_true = np.stack([RNG.integers(0, 2, (b, t)), RNG.normal(size=(b, t))], -1)
    y_true[2, :, 0] = 0  # an example with no selected position
    y_pred = np.stack([RNG.uniform(0.05, 0.95, (b, t)), RNG.normal(size=(b, t))], -1)
    return y_true.astype("float32"), y_pred.astype("float32")


def np_bce(t, p):
    p = np.clip(p, EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


AGGREGATES = [  # formula, reference on float64 (t, p) of shape (b, t, 2)
    ("sum(mse(u1))", lambda t, p: ((t[..., 1] - p[..., 1]) ** 2).sum(1)),
    ("mean(mse(u1))", lambda t, p: ((t[..., 1] - p[..., 1]) ** 2).mean(1)),
    ("sum(1 where true(u0) == 1)", lambda t, p: (t[..., 0] == 1).sum(1)),
    (
        "mean(mse(u1) where true(u0) == 1)",
        lambda t, p: np.where(
            (m := t[..., 0] == 1).any(1),
            (((t[..., 1] - p[..., 1]) ** 2) * m).sum(1) / np.maximum(m.sum(1), 1),
            0.0,
        ),
    ),
    (
        "mean(mse(u1) where true(u0) == 1 + bce(u0))",
        lambda t, p: (
            np.where(
                (m := t[..., 0] == 1).any(1),
                (((t[..., 1] - p[..., 1]) ** 2) * m).sum(1) / np.maximum(m.sum(1), 1),
                0.0,
            )
            + np_bce(t[..., 0], p[..., 0]).mean(1)
        ),
    ),
    (
        "divide_no_nan(sum(mse(u1) where true(u0) == 1), sum(1 where true(u0) == 1))",
        lambda t, p: np.where(
            (m := t[..., 0] == 1).any(1),
            (((t[..., 1] - p[..., 1]) ** 2) * m).sum(1) / np.maximum(m.sum(1), 1),
            0.0,
        ),
    ),
    (
        "mean(mse(u1), batch=true) + 0*mean(bce(u0))",
        lambda t, p: np.full(t.shape[0], ((t[..., 1] - p[..., 1]) ** 2).mean()),
    ),
    (
        "mean(mse(u1) where true(u0) == 1, batch=true)",
        lambda t, p: np.full(t.shape[0], ((t[..., 1] - p[..., 1]) ** 2)[t[..., 0] == 1].mean()),
    ),
    (
        "mean(bce(u0)) where sum(true(u0)) > 0",
        lambda t, p: (
            np.where((m := t[..., 0].sum(1) > 0), np_bce(t[..., 0], p[..., 0]).mean(1), 0.0)
            * len(m)
            / m.sum()
        ),
    ),
    (
        "mean(sigmoid(pred(u1)) * true(u0)) / 2 + sum(1) - 6",
        lambda t, p: (sigmoid(p[..., 1]) * t[..., 0]).mean(1) / 2,
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("formula", "reference"), AGGREGATES, ids=[a[0] for a in AGGREGATES])
def test_aggregate_against_numpy(formula, reference, mode):
    yt, yp = sequences()
    loss = lossdsl.compile_loss(formula, units=2)
    got = np.asarray(traced(loss.call, mode)(tf.constant(yt), tf.constant(yp)))
    want = reference(yt.astype(np.float64), yp.astype(np.float64))
    assert got.shape == (5,)
    close(got, want)
    _, g = value_and_grad(loss, yt, yp, mode)
    assert np.isfinite(g).all()


def test_a_rank_2_input_has_one_position_per_example():
    yt, yp = sequences(t=1)
    loss = lossdsl.compile_loss("mean(mse(u1) where true(u0) == 1) + sum(bce(u0))", units=2)
    t, p = yt[:, 0].astype(np.float64), yp[:, 0].astype(np.float64)
    want = np.where(t[:, 0] == 1, (t[:, 1] - p[:, 1]) ** 2, 0.0) + np_bce(t[:, 0], p[:, 0])
    close(loss.call(yt[:, 0], yp[:, 0]), want)


@pytest.mark.parametrize("mode", MODES)
def test_masked_positions_add_nothing_even_when_their_inputs_are_nan(mode):
    yt, yp = sequences()
    masked = yt[..., 0] == 0
    bad_t, bad_p = yt.copy(), yp.copy()
    bad_t[masked, 1], bad_p[masked, 1] = np.nan, np.inf
    formula = "mean(mse(u1) where true(u0) == 1) + sum(log(abs(pred(u1))) where true(u0) == 1)"
    loss = lossdsl.compile_loss(formula, units=2)
    clean_v, clean_g = value_and_grad(loss, yt, yp, mode)
    bad_v, bad_g = value_and_grad(loss, bad_t, bad_p, mode)
    assert np.isfinite(bad_g).all()
    assert (bad_g[masked] == 0).all()
    close(bad_v, clean_v)
    close(bad_g, clean_g)


def test_term_metric_of_an_example_level_term_is_the_dataset_mean_of_its_values():
    yt, yp = sequences(b=10)
    loss = lossdsl.compile_loss("mean(mse(u1) where true(u0) == 1) + mean(bce(u0))", units=2)
    metrics = loss.term_metrics()
    assert [m.name for m in metrics] == ["mse_u1", "bce_u0"]
    for batch in (slice(0, 4), slice(4, 7), slice(7, 10)):  # batches of different sizes
        for m in metrics:
            m.update_state(yt[batch], yp[batch])
    t, p = yt.astype(np.float64), yp.astype(np.float64)
    selected = t[..., 0] == 1
    first = np.where(
        selected.any(1),
        (((t[..., 1] - p[..., 1]) ** 2) * selected).sum(1) / np.maximum(selected.sum(1), 1),
        0.0,
    )
    close(float(metrics[0].result()), first.mean())
    close(float(metrics[1].result()), np_bce(t[..., 0], p[..., 0]).mean())


# -- the rules of levels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "message", "at"),
    [
        ("mse(u0) + dice(u1)", "'mse(u0)' gives one value per position", "mse(u0)"),
        ("mean(mean(mse(u0)))", "mean() aggregates per-position values", "mean(mse(u0))"),
        ("mean(dice(u0))", "but dice(u0) gives one value per example", "dice(u0)"),
        ("mean(mse(u0)) where true(u1) > 0", "gives one value per position, but", "true(u1)"),
        ("mse(u0) where mean(true(u1)) > 0", "gives one value per example, but", "mean("),
        ("dice(u0, batch=true) where sum(true(u1)) > 0", "A batch-wide term", "dice"),
        ("abs(mean(mse(u0) where true(u1) > 0))", None, None),  # fine: where inside mean
        ("sum(mse(u0), batch=1)", "sum(..., batch=...) expects true or false", "1"),
        ("cce(u[0:3], ignore_class=-1)", "applies to class-index labels", "ignore_class"),
        ("mse(x)", "x differ in width: 2 columns of y_true against 3", "x"),
        ("mse(w)", "unit 'w' has no pred side", "w"),
        ("pred(w) + 0", "unit 'w' has no pred side", "w"),
        ("true(v) + 0", "unit 'v' has no true side", "v"),
        ("sum()", "sum() takes one argument", "sum()"),
    ],
)
def test_levels_and_layouts_are_checked_with_a_caret(formula, message, at):
    units = {"x": {"true": [0, 2], "pred": [2, 5]}, "w": {"true": 5}, "v": {"pred": 5}}
    if message is None:
        lossdsl.validate(formula, units=units)
        return
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate(formula, units=units)
    problem = next(e for e in info.value.errors if message in e.message)
    assert problem.span is not None
    assert formula[problem.span[0] :].startswith(at), (formula, problem.span)


def test_an_example_level_formula_saves_and_loads(tmp_path):
    loss = lossdsl.compile_loss(RETINA, units=RETINA_UNITS, name="retina")
    config = loss.get_config()
    assert config["units"] == {"box": [0, 4], "cls": {"pred": [4, 7], "true": 4}}
    clone = lossdsl.FormulaLoss.from_config(config)
    y_true, y_pred = anchors()
    close(clone(y_true, y_pred), loss(y_true, y_pred), rtol=1e-7)
    inputs = keras.Input((12, 2))
    model = keras.Model(inputs, keras.layers.Dense(4 + CLASSES)(inputs))
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / "retina.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.loss.get_config() == config


def test_an_example_level_loss_computes_in_float32_for_float16_inputs():
    yt, yp = masks()
    loss = lossdsl.compile_loss("dice(mask) + mean(bce(mask))", units={"mask": 0}, dtype="float16")
    got = np.asarray(ops.cast(loss.call(yt.astype("float16"), yp.astype("float16")), "float32"))
    want = keras.losses.dice(yt, yp.astype("float16").astype("float32"), axis=(1, 2, 3)) + ops.mean(
        keras.losses.binary_crossentropy(yt, yp.astype("float16").astype("float32")), axis=(1, 2)
    )
    close(got, want, rtol=2e-3)


def test_the_retinanet_formula_has_no_lint():
    # A condition on the class index of a class-index unit is not one on a probability.
    lossdsl.validate(RETINA, units=RETINA_UNITS, strict=True)
    with pytest.raises(LossValidationError, match="LD102"):
        lossdsl.validate("mean(bce(m) where pred(m) > 1)", units={"m": 0}, strict=True)
