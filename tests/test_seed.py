"""The seed's three hand-written Keras loss closures against the lossdsl formulas replacing them.

Each ``seed_exN`` is the seed's closure re-expressed faithfully with ``keras.ops`` (the seed's
``keras.backend`` functions are gone in Keras 3); like the seed, it slices columns with
``y[:, i]``, dropping the last axis. Every lossdsl number is checked against that re-expression
or a float64 NumPy reference, never against lossdsl itself.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import lossdsl

N = 64
EPS = 1e-7  # keras.config.epsilon(): the clip of binary crossentropy


# -- the seed's closures, re-expressed with keras.ops --------------------------------------------


def seed_ex1(weights):
    """Example 1: a weighted sum of a per-sample bce and a *batch* mean squared error."""

    def loss_fn(y_true, y_pred):
        loss1 = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        loss2 = ops.mean(ops.square(y_true[:, 1] - y_pred[:, 1]))
        return weights[0] * loss1 + weights[1] * loss2

    return loss_fn


def seed_ex2(threshold=0.5):
    """Example 2, literally: the location counts where the *predicted* presence is below
    the threshold, and the masked sum is divided by the whole batch size."""

    def loss_fn(y_true, y_pred):
        loss1 = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        mask = ops.cast(y_pred[:, 0] < threshold, "float32")
        loss2 = ops.mean(ops.square(y_true[:, 1] - y_pred[:, 1]) * mask)
        return loss1 + loss2

    return loss_fn


def seed_ex3(weights):
    """Example 3: np.average over a list of (per-sample bce, batch mean squared error)."""

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


def np_bce(t, p):
    p = np.clip(p.astype("float64"), EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


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


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, "float64"), b, rtol=1e-5, atol=1e-6)


def test_seed_keras_backend_functions_are_gone_in_keras_3():
    assert keras.__version__.startswith("3.")
    for name in ("binary_crossentropy", "mean", "square", "cast"):
        assert not hasattr(keras.backend, name), name
        assert hasattr(keras.ops, name), name


# -- Example 1: weighted sum ---------------------------------------------------------------------


def test_ex1_batch_mean_agrees_with_formula(batch):
    y_true, y_pred = batch
    loss = lossdsl.compile_loss("0.7*bce(u0) + 0.3*mse(u1)", units=2)
    seed = ops.mean(seed_ex1([0.7, 0.3])(y_true, y_pred))  # Keras' sum_over_batch_size
    expected = 0.7 * np_bce(y_true[:, 0], y_pred[:, 0]).mean() + 0.3 * np_sq(y_true, y_pred).mean()
    close(seed, expected)
    close(loss(y_true, y_pred), expected)


def test_ex1_seed_output_is_not_a_per_sample_loss(batch):
    y_true, y_pred = batch
    seed = seed_ex1([0.7, 0.3])
    per_sample = 0.7 * np_bce(y_true[:, 0], y_pred[:, 0]) + 0.3 * np_sq(y_true, y_pred)
    loss = lossdsl.compile_loss("0.7*bce(u0) + 0.3*mse(u1)", units=2)
    close(loss.call(y_true, y_pred), per_sample)
    # The seed's "sample i" carries the whole batch's squared error, not sample i's ...
    out = np.asarray(seed(y_true, y_pred), "float64")
    assert out.shape == (N,)
    assert not np.allclose(out, per_sample, rtol=1e-3)
    # ... so the same sample gets another value in another batch.
    alone = np.asarray(seed(y_true[:1], y_pred[:1]), "float64")
    assert abs(alone[0] - out[0]) > 1e-2
    close(alone, per_sample[:1])
    # With sample weights the mix shows in the reduced value too.
    w = np.random.default_rng(1).uniform(0, 2, N).astype("float32")
    close(loss(y_true, y_pred, sample_weight=w), np.mean(w * per_sample))
    seed_weighted = np.mean(w * out)
    assert abs(seed_weighted - np.mean(w * per_sample)) > 1e-2


# -- Example 2: conditional mask -----------------------------------------------------------------


def test_ex2_literal_equals_where_pred_below_threshold_batch_mean(batch):
    y_true, y_pred = batch
    literal = lossdsl.compile_loss(
        "bce(u0) + mse(u1) where pred(u0) < 0.5", units=2, where_mean="batch"
    )
    close(literal(y_true, y_pred), float(ops.mean(seed_ex2(0.5)(y_true, y_pred))))
    m = y_pred[:, 0] < 0.5
    close(
        literal.call(y_true, y_pred), np_bce(y_true[:, 0], y_pred[:, 0]) + m * np_sq(y_true, y_pred)
    )


def test_ex2_intended_mask_gives_other_numbers(batch):
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


def test_ex2_where_mean_selected_is_mean_over_selected_samples(batch):
    y_true, y_pred = batch
    bce, sq = np_bce(y_true[:, 0], y_pred[:, 0]), np_sq(y_true, y_pred)
    for cond, m in (("< 0.5", y_pred[:, 0] < 0.5), (">= 0.5", y_pred[:, 0] >= 0.5)):
        loss = lossdsl.compile_loss(f"bce(u0) + mse(u1) where pred(u0) {cond}", units=2)
        assert loss.where_mean == "selected"
        close(loss(y_true, y_pred), bce.mean() + sq[m].mean())
        # The seed's mean over the whole batch is smaller by the fraction selected.
        assert m.mean() < 1
        batch_mean = bce.mean() + np.sum(sq * m) / N
        assert float(loss(y_true, y_pred)) > batch_mean + 1e-3


def test_ex2_mask_multiplication_is_not_nan_safe(batch):
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
        seed_value = ops.mean(seed_ex2(0.5)(yt, yp))
        value = literal(yt, yp)
    assert np.isnan(float(seed_value))  # NaN * 0 is NaN
    assert np.isnan(tape.gradient(seed_value, yp).numpy()).any()
    sq = np.where(off, 0.0, np.nan_to_num(np_sq(y_true, y_pred)))
    close(value, np_bce(y_true[:, 0], y_pred[:, 0]).mean() + sq.sum() / N)
    assert np.isfinite(tape.gradient(value, yp).numpy()).all()


# -- Example 3: np.average -----------------------------------------------------------------------


def test_ex3_np_average_fails_on_symbolic_tensors(batch):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("needs the TensorFlow backend")
    y_true, y_pred = batch
    traced = tf.function(seed_ex3([0.7, 0.3]))
    with pytest.raises(NotImplementedError, match="symbolic"):
        traced(y_true, y_pred)
    # Eagerly it fails too: a (N,) tensor and a scalar make a ragged array.
    with pytest.raises(ValueError, match="inhomogeneous"):
        seed_ex3([0.7, 0.3])(tf.constant(y_true), tf.constant(y_pred))


@pytest.mark.parametrize(
    ("weights", "formula"),
    [([0.7, 0.3], "0.7*bce(u0) + 0.3*mse(u1)"), ([2.0, 1.0], "(2*bce(u0) + mse(u1)) / 3")],
)
def test_ex3_intended_weighted_average_equals_formula(batch, weights, formula):
    y_true, y_pred = batch
    # What the closure meant: np.average of the two batch losses (it divides by sum(weights)).
    parts = [np_bce(y_true[:, 0], y_pred[:, 0]).mean(), np_sq(y_true, y_pred).mean()]
    expected = np.average(parts, weights=weights)
    close(lossdsl.compile_loss(formula, units=2)(y_true, y_pred), expected)
