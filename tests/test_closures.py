"""Three typical hand-written Keras loss closures against the lossdsl formulas that replace
them: the weighted-sum closure, the conditional-mask closure and the np.average closure.

Each is written here as such closures are, with ``keras.ops`` in place of the ``keras.backend``
functions that Keras 3 removed, and like them it slices columns with ``y[:, i]``, dropping the
last axis. Every lossdsl number is checked against the closure or a float64 NumPy reference,
never against lossdsl itself.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import np_bce
from keras import ops
from reference import close

import lossdsl

N = 64


# -- the closures, written with keras.ops ----------------------------------------------------------


def weighted_sum_closure(weights):
    """A weighted sum of a per-sample bce and a *batch* mean squared error."""

    def loss_fn(y_true, y_pred):
        loss1 = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        loss2 = ops.mean(ops.square(y_true[:, 1] - y_pred[:, 1]))
        return weights[0] * loss1 + weights[1] * loss2

    return loss_fn


def conditional_mask_closure(threshold=0.5):
    """A conditional mask, as written: the location counts where the *predicted* presence is
    below the threshold, and the masked sum is divided by the whole batch size."""

    def loss_fn(y_true, y_pred):
        loss1 = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        mask = ops.cast(y_pred[:, 0] < threshold, "float32")
        loss2 = ops.mean(ops.square(y_true[:, 1] - y_pred[:, 1]) * mask)
        return loss1 + loss2

    return loss_fn


def np_average_closure(weights):
    """np.average over a list of (per-sample bce, batch mean squared error)."""

    def loss_metric(y_true, y_pred):
        loss_values = []
        for i in range(y_pred.shape[1]):
            t, p = y_true[:, i], y_pred[:, i]
            loss_values.append(
                ops.binary_crossentropy(t, p) if i == 0 else ops.mean(ops.square(t - p))
            )
        return np.average(loss_values, weights=weights)

    return loss_metric


# -- float64 NumPy references ----------------------------------------------------------------------


def np_sq(y_true, y_pred):
    return (y_true[:, 1].astype("float64") - y_pred[:, 1]) ** 2


@pytest.fixture
def batch():
    """Labels (presence 0/1, location) and predictions (probability, location), float32.

    The location is predicted well where the model says "lesion" (p >= 0.5) and badly where it
    says "no lesion", so counting the wrong rows makes a large difference.
    """
    rng = np.random.default_rng(38)
    presence = rng.integers(0, 2, N).astype("float64")
    p = rng.uniform(0.05, 0.95, N)
    loc = rng.normal(size=N)
    noise = np.where(p >= 0.5, 0.1, 2.0) * rng.normal(size=N)
    y_true = np.stack([presence, loc], -1).astype("float32")
    y_pred = np.stack([p, loc + noise], -1).astype("float32")
    return y_true, y_pred


def test_the_keras_backend_functions_of_such_closures_are_gone_in_keras_3():
    assert keras.__version__.startswith("3.")
    for name in ("binary_crossentropy", "mean", "square", "cast"):
        assert not hasattr(keras.backend, name), name
        assert hasattr(keras.ops, name), name


# -- the weighted-sum closure --------------------------------------------------------------------


def test_weighted_sum_batch_mean_agrees_with_formula(batch):
    y_true, y_pred = batch
    loss = lossdsl.compile_loss("0.7*bce(u0) + 0.3*mse(u1)", units=2)
    closure = ops.mean(weighted_sum_closure([0.7, 0.3])(y_true, y_pred))  # sum_over_batch_size
    expected = 0.7 * np_bce(y_true[:, 0], y_pred[:, 0]).mean() + 0.3 * np_sq(y_true, y_pred).mean()
    close(closure, expected)
    close(loss(y_true, y_pred), expected)


def test_weighted_sum_closure_output_is_not_a_per_sample_loss(batch):
    y_true, y_pred = batch
    closure = weighted_sum_closure([0.7, 0.3])
    per_sample = 0.7 * np_bce(y_true[:, 0], y_pred[:, 0]) + 0.3 * np_sq(y_true, y_pred)
    loss = lossdsl.compile_loss("0.7*bce(u0) + 0.3*mse(u1)", units=2)
    close(loss.call(y_true, y_pred), per_sample)
    # The closure's "sample i" carries the whole batch's squared error, not sample i's ...
    out = np.asarray(closure(y_true, y_pred), "float64")
    assert out.shape == (N,)
    assert not np.allclose(out, per_sample, rtol=1e-3)
    # ... so the same sample gets another value in another batch.
    alone = np.asarray(closure(y_true[:1], y_pred[:1]), "float64")
    assert abs(alone[0] - out[0]) > 1e-2
    close(alone, per_sample[:1])
    # With sample weights the mix shows in the reduced value too.
    w = np.random.default_rng(1).uniform(0, 2, N).astype("float32")
    close(loss(y_true, y_pred, sample_weight=w), np.mean(w * per_sample))
    closure_weighted = np.mean(w * out)
    assert abs(closure_weighted - np.mean(w * per_sample)) > 1e-2


# -- the conditional-mask closure ----------------------------------------------------------------


def test_conditional_mask_as_written_equals_where_pred_below_threshold_batch_mean(batch):
    y_true, y_pred = batch
    literal = lossdsl.compile_loss(
        "bce(u0) + mse(u1) where pred(u0) < 0.5", units=2, where_mean="batch"
    )
    close(literal(y_true, y_pred), float(ops.mean(conditional_mask_closure(0.5)(y_true, y_pred))))
    m = y_pred[:, 0] < 0.5
    close(
        literal.call(y_true, y_pred), np_bce(y_true[:, 0], y_pred[:, 0]) + m * np_sq(y_true, y_pred)
    )


def test_conditional_mask_intended_gives_other_numbers(batch):
    y_true, y_pred = batch
    bce, sq = np_bce(y_true[:, 0], y_pred[:, 0]), np_sq(y_true, y_pred)
    present = y_pred[:, 0] >= 0.5
    assert 0 < present.sum() < N
    literal = lossdsl.compile_loss(
        "bce(u0) + mse(u1) where pred(u0) < 0.5", units=2, where_mean="batch"
    )
    intended = lossdsl.compile_loss(
        "bce(u0) + mse(u1) where pred(u0) >= 0.5", units=2, where_mean="batch"
    )
    close(intended(y_true, y_pred), bce.mean() + np.sum(sq * present) / N)
    lit, want = float(literal(y_true, y_pred)), float(intended(y_true, y_pred))
    assert lit > want + 0.5  # the literal mask scores the rows where the location is meaningless


def test_conditional_mask_where_mean_selected_is_mean_over_selected_samples(batch):
    y_true, y_pred = batch
    bce, sq = np_bce(y_true[:, 0], y_pred[:, 0]), np_sq(y_true, y_pred)
    for cond, m in (("< 0.5", y_pred[:, 0] < 0.5), (">= 0.5", y_pred[:, 0] >= 0.5)):
        loss = lossdsl.compile_loss(f"bce(u0) + mse(u1) where pred(u0) {cond}", units=2)
        assert loss.where_mean == "selected"
        close(loss(y_true, y_pred), bce.mean() + sq[m].mean())
        # The closure's mean over the whole batch is smaller by the fraction selected.
        assert m.mean() < 1
        batch_mean = bce.mean() + np.sum(sq * m) / N
        assert float(loss(y_true, y_pred)) > batch_mean + 1e-3


def test_conditional_mask_multiplication_is_not_nan_safe(batch):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")

    y_true, y_pred = batch
    off = y_pred[:, 0] >= 0.5  # the rows the literal mask drops
    y_true = y_true.copy()
    y_true[off, 1] = np.nan
    literal = lossdsl.compile_loss(
        "bce(u0) + mse(u1) where pred(u0) < 0.5", units=2, where_mean="batch"
    )
    yt, yp = tf.constant(y_true), tf.Variable(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        closure_value = ops.mean(conditional_mask_closure(0.5)(yt, yp))
        value = literal(yt, yp)
    assert np.isnan(float(closure_value))  # NaN * 0 is NaN
    assert np.isnan(tape.gradient(closure_value, yp).numpy()).any()
    sq = np.where(off, 0.0, np.nan_to_num(np_sq(y_true, y_pred)))
    close(value, np_bce(y_true[:, 0], y_pred[:, 0]).mean() + sq.sum() / N)
    assert np.isfinite(tape.gradient(value, yp).numpy()).all()


# -- the np.average closure ----------------------------------------------------------------------


def test_np_average_closure_fails_on_symbolic_tensors(batch):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    y_true, y_pred = batch
    traced = tf.function(np_average_closure([0.7, 0.3]))
    with pytest.raises(NotImplementedError, match="symbolic"):
        traced(y_true, y_pred)
    # Eagerly it fails too: a (N,) tensor and a scalar make a ragged array.
    with pytest.raises(ValueError, match="inhomogeneous"):
        np_average_closure([0.7, 0.3])(tf.constant(y_true), tf.constant(y_pred))


@pytest.mark.parametrize(
    ("weights", "formula"),
    [([0.7, 0.3], "0.7*bce(u0) + 0.3*mse(u1)"), ([2.0, 1.0], "(2*bce(u0) + mse(u1)) / 3")],
)
def test_np_average_intended_weighted_average_equals_formula(batch, weights, formula):
    y_true, y_pred = batch
    # What the closure meant: np.average of the two batch losses (it divides by sum(weights)).
    parts = [np_bce(y_true[:, 0], y_pred[:, 0]).mean(), np_sq(y_true, y_pred).mean()]
    expected = np.average(parts, weights=weights)
    close(lossdsl.compile_loss(formula, units=2)(y_true, y_pred), expected)
