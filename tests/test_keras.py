"""FormulaLoss inside Keras: compile/fit, tf.function and XLA, parameters
without retracing, trace-time errors, configs, dtypes."""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LESION_UNITS, lesion_data, lesion_model
from keras import ops

import lossdsl
from lossdsl import LossInputError, LossValidationError

RNG = np.random.default_rng(7)


def hand_written(y_true: object, y_pred: object) -> object:
    """The careful hand-written loss the formula stands for: per-sample bce plus
    the mse of the location averaged over the samples with a lesion."""
    p_true, p_pred = y_true[:, 0], y_pred[:, 0]
    bce = ops.binary_crossentropy(p_true, ops.clip(p_pred, 1e-7, 1 - 1e-7))
    present = ops.cast(ops.equal(p_true, 1.0), "float32")
    sq = ops.square(y_true[:, 1] - y_pred[:, 1]) * present
    n = ops.cast(ops.shape(p_true)[0], "float32")
    return bce + sq * n / ops.maximum(ops.sum(present), 1.0)


FORMULA = "bce(presence) + mse(loc) where true(presence) == 1"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_step_matches_the_hand_written_loss(jit_compile: bool) -> None:
    x, y = lesion_data(32, RNG)
    weights = []
    for loss in (lossdsl.compile_loss(FORMULA, units=LESION_UNITS), hand_written):
        model = lesion_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=jit_compile)
        before = model.evaluate(x, y, batch_size=32, verbose=0)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights.append((before, [w.numpy() for w in model.weights]))
    (loss_a, w_a), (loss_b, w_b) = weights
    # Two graphs that compute the same loss with other ops (and under XLA, other fusions).
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_eager_tf_function_and_xla_agree() -> None:
    _, y = lesion_data(32, RNG)
    y_pred = np.clip(y + RNG.normal(scale=0.2, size=y.shape), 0.01, 0.99).astype("float32")
    loss = lossdsl.compile_loss(FORMULA, units=LESION_UNITS)
    eager = float(loss(y, y_pred))
    graph = float(tf.function(loss)(y, y_pred))
    xla = float(tf.function(loss, jit_compile=True)(y, y_pred))
    reference = float(
        ops.mean(hand_written(ops.convert_to_tensor(y), ops.convert_to_tensor(y_pred)))
    )
    # The same float32 value by other ops, in other kernels: agreement to float32's
    # precision over a batch, not to the last bit.
    assert eager == pytest.approx(reference, rel=1e-5)
    assert graph == pytest.approx(reference, rel=1e-5)
    assert xla == pytest.approx(reference, rel=1e-5)


def test_set_param_takes_effect_without_retracing() -> None:
    loss = lossdsl.compile_loss(
        "alpha*mse(u0) + (1 - alpha)*mae(u0)", units=1, params={"alpha": 1.0}
    )
    traces = []

    @tf.function
    def run(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        traces.append(1)
        return loss(y_true, y_pred)

    y_true = np.zeros((4, 1), "float32")
    y_pred = np.full((4, 1), 3.0, "float32")
    assert float(run(y_true, y_pred)) == pytest.approx(9.0)  # mse
    loss.set_param("alpha", 0.0)
    assert float(run(y_true, y_pred)) == pytest.approx(3.0)  # mae
    loss.set_param("alpha", 0.5)
    assert float(run(y_true, y_pred)) == pytest.approx(6.0)
    assert len(traces) == 1
    assert dict(loss.params) == {"alpha": 0.5}
    with pytest.raises(TypeError):
        loss.params["alpha"] = 1.0  # type: ignore[index]


def test_set_param_between_fits_reuses_the_train_function() -> None:
    x, y = lesion_data(32, RNG)
    loss = lossdsl.compile_loss(
        "alpha*bce(presence) + (1 - alpha)*mse(loc)", units=LESION_UNITS, params={"alpha": 0.5}
    )
    model = lesion_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    first = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"][0]
    train_function = model.train_function
    loss.set_param("alpha", 1.0)
    second = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"][0]
    assert model.train_function is train_function
    y_pred = model.predict(x, verbose=0)
    bce = float(ops.mean(keras.losses.binary_crossentropy(y[:, :1], y_pred[:, :1])))
    mse = float(ops.mean(ops.square(y[:, 1] - y_pred[:, 1])))
    assert first == pytest.approx(0.5 * bce + 0.5 * mse, rel=1e-5)
    assert second == pytest.approx(bce, rel=1e-5)


def test_width_from_y_pred_at_trace_time() -> None:
    loss = lossdsl.compile_loss("mse(u1) + mae(u[0:2])")  # units=None
    y = np.ones((3, 2), "float32")
    assert float(loss(y, y)) == 0.0
    bad = lossdsl.compile_loss("mse(u1) + mae(u[0:4])")
    with pytest.raises(LossValidationError) as info:
        tf.function(bad)(y, y)
    assert (
        info.value.message
        == "The formula reads column 3, but y_pred has only 2 units (shape (3, 2))."
    )
    assert info.value.column == len("mse(u1) + mae(") + 1


def test_out_of_range_unit_in_fit_is_a_clear_error() -> None:
    x, y = lesion_data(32, RNG)
    model = lesion_model()
    model.compile(optimizer="sgd", loss=lossdsl.compile_loss("bce(u0) + mse(u2)"))
    with pytest.raises(LossValidationError, match="reads column 2, but y_pred has only 2 units"):
        model.fit(x, y, epochs=1, verbose=0)


def test_mismatched_label_shape_is_an_error_not_a_broadcast() -> None:
    loss = lossdsl.compile_loss("mse(u0)", units=1)
    with pytest.raises(
        LossInputError, match=r"same shape. Received: y_true \(4,\) and y_pred \(4, 1\)"
    ):
        loss(np.zeros(4, "float32"), np.zeros((4, 1), "float32"))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(LossInputError, match="same shape"):
        model.fit(np.zeros((8, 3)), np.zeros(8), epochs=1, verbose=0)


def test_declared_width_must_match_y_pred() -> None:
    loss = lossdsl.compile_loss("mse(u0)", units=3)
    with pytest.raises(LossInputError, match="validated for units=3, but y_pred has 2 units"):
        loss(np.zeros((4, 2), "float32"), np.zeros((4, 2), "float32"))


def test_no_units_axis_is_an_error() -> None:
    loss = lossdsl.compile_loss("mse(u0)")
    with pytest.raises(LossInputError, match="no units axis"):
        loss(np.zeros(4, "float32"), np.zeros(4, "float32"))


def test_per_sample_shape_for_extra_axes() -> None:
    y_true = RNG.uniform(size=(2, 3, 4)).astype("float32")
    y_pred = RNG.uniform(size=(2, 3, 4)).astype("float32")
    loss = lossdsl.compile_loss("mse(u[0:2]) + abs(pred(u3) - true(u3)) where true(u2) > 0.5")
    values = loss.call(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred))
    assert tuple(values.shape) == (2, 3)
    m = y_true[..., 2] > 0.5
    ref = ((y_true[..., :2] - y_pred[..., :2]) ** 2).mean(-1) + np.where(
        m, np.abs(y_pred[..., 3] - y_true[..., 3]), 0
    ) * m.size / m.sum()
    np.testing.assert_allclose(values, ref, rtol=1e-5)


def test_dtypes_of_inputs_do_not_change_the_loss_dtype() -> None:
    loss = lossdsl.compile_loss("bce(u0) + mse(u1)", units=2)
    y_true = np.array([[1, 0], [0, 1]])  # int64
    y_pred = np.array([[0.8, 0.1], [0.3, 0.7]])  # float64
    out = loss(y_true, y_pred)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    y_bool = np.array([[True, False], [False, True]])
    assert float(loss(y_bool, y_pred)) == pytest.approx(float(out))


def test_get_config_round_trip_and_in_process_save(tmp_path: object) -> None:
    loss = lossdsl.compile_loss(
        "alpha*bce(presence) + mse(loc) where true(presence) == 1  # lesion",
        units=LESION_UNITS,
        params={"alpha": 0.25},
        where_mean="batch",
        name="lesion_loss",
    )
    loss.set_param("alpha", 0.75)
    config = loss.get_config()
    assert config == {
        "name": "lesion_loss",
        "reduction": "sum_over_batch_size",
        "expression": "alpha*bce(presence) + mse(loc) where true(presence) == 1  # lesion",
        "units": {"presence": 0, "loc": 1},
        "params": {"alpha": 0.75},
        "where_mean": "batch",
        "allow_negative": False,
        "dtype": None,
    }
    clone = lossdsl.FormulaLoss.from_config(config)
    _, y = lesion_data(32, RNG)
    y_pred = np.clip(y, 0.1, 0.9)
    assert float(clone(y, y_pred)) == pytest.approx(float(loss(y, y_pred)))

    model = lesion_model()
    model.compile(optimizer="sgd", loss=loss)
    path = f"{tmp_path}/m.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.loss, lossdsl.FormulaLoss)
    assert restored.loss.get_config() == config


def test_registered_loss_compiles_and_matches_a_hand_computation() -> None:
    def scaled_abs(y_true: object, y_pred: object, scale: float = 1.0) -> object:
        return scale * ops.sum(ops.abs(y_true - y_pred), axis=-1)

    lossdsl.register_loss("scaled_abs", scaled_abs, kwargs={"scale": 1.0})
    try:
        loss = lossdsl.compile_loss("scaled_abs(u[0:2], scale=3) + mse(u2)", units=3)
        y_true = RNG.normal(size=(5, 3)).astype("float32")
        y_pred = RNG.normal(size=(5, 3)).astype("float32")
        ref = 3 * np.abs(y_true[:, :2] - y_pred[:, :2]).sum(1) + (y_true[:, 2] - y_pred[:, 2]) ** 2
        np.testing.assert_allclose(loss.call(y_true, y_pred), ref, rtol=1e-5)
    finally:
        lossdsl.unregister_loss("scaled_abs")


def test_sample_weight_and_reduction_belong_to_the_base_class() -> None:
    loss = lossdsl.compile_loss("mse(u0) where true(u1) > 0", units=2, reduction="sum")
    y_true = np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 1.0], [0.0, 1.0]], "float32")
    y_pred = np.zeros((4, 2), "float32")
    w = np.array([1.0, 5.0, 2.0, 0.5], "float32")
    selected = np.array([1.0, 0.0, 9.0, 0.0])  # squared errors on the selected rows
    per_sample = selected * 4 / 3  # selected mean, spread over the batch
    assert float(loss(y_true, y_pred, sample_weight=w)) == pytest.approx(
        float((per_sample * w).sum())
    )


def test_where_counts_do_not_overflow_in_float16() -> None:
    # 70,000 samples: more than float16 can count (65,504).
    n = 70_000
    y_true = np.zeros((n, 2), "float32")
    y_true[::2, 0] = 1.0
    y_pred = np.zeros((n, 2), "float32")
    y_pred[:, 1] = 0.5
    for dtype in ("float16", "bfloat16"):
        loss = lossdsl.compile_loss("mse(u1) where true(u0) == 1", dtype=dtype)
        values = np.asarray(ops.cast(loss.call(y_true, y_pred), "float32"))
        assert np.isfinite(values).all()
        # Selected rows: 0.25 * n / (n / 2) = 0.5; the others 0.
        np.testing.assert_allclose(values[::2], 0.5, rtol=1e-3)
        np.testing.assert_array_equal(values[1::2], 0.0)


def test_constants_are_multiplied_before_the_data() -> None:
    # Left to right in float32, mse * 1e20 * 1e20 would overflow before the division.
    loss = lossdsl.compile_loss("mse(u0) * 1e20 * 1e20 / 1e35", units=1)
    y_true, y_pred = np.zeros((3, 1), "float32"), np.full((3, 1), 2.0, "float32")
    np.testing.assert_allclose(loss.call(y_true, y_pred), [4e5] * 3, rtol=1e-6)


def test_a_registered_loss_must_return_one_value_per_sample() -> None:
    lossdsl.register_loss(
        "keepdims", lambda t, p: ops.mean(ops.square(t - p), axis=-1, keepdims=True)
    )
    lossdsl.register_loss("scalar", lambda t, p: ops.mean(ops.square(t - p)))
    try:
        y = np.zeros((4, 2), "float32")
        for name, shape in (("keepdims", "(4, 1)"), ("scalar", "()")):
            loss = lossdsl.compile_loss(f"{name}(u0) + mse(u1)")
            with pytest.raises(LossValidationError) as info:
                loss.call(y, y)
            assert info.value.message == (
                f"{name}() returned shape {shape}; a loss must return one value per sample, "
                "shape (4,)."
            )
            assert info.value.column == 1
    finally:
        lossdsl.unregister_loss("keepdims")
        lossdsl.unregister_loss("scalar")


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ([None, None], "The units axis (the last) of y_true and y_pred must have a known size"),
        (None, "y_true and y_pred must have a known rank when the loss is traced"),
    ],
    ids=["unknown-width", "unknown-rank"],
)
def test_unknown_shapes_at_trace_time_are_clear_errors(
    signature: list | None, message: str
) -> None:
    loss = lossdsl.compile_loss("bce(u0) + mse(u5)")
    spec = tf.TensorSpec(signature, tf.float32)
    traced = tf.function(loss.call, input_signature=[spec, spec])
    with pytest.raises(LossInputError) as info:
        traced.get_concrete_function()
    assert info.value.message.startswith(message)
    assert "^^^^^^^^^^^^^^^^^" in str(info.value)  # the caret spans the formula


def test_call_converts_input_dtypes_itself() -> None:
    # Bypassing the Keras base class (which casts to the loss dtype), the program
    # still computes in a float dtype: ints become floatx, float64 stays float64.
    loss = lossdsl.compile_loss("mse(u0) + bce(u1)", units=2)
    y_true = np.array([[1, 0], [0, 1]])
    y_pred = np.array([[0.5, 0.25], [0.25, 0.75]])
    out = loss.call(y_true, y_pred)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    ref = (y_true[:, 0] - y_pred[:, 0]) ** 2 - (
        y_true[:, 1] * np.log(y_pred[:, 1]) + (1 - y_true[:, 1]) * np.log(1 - y_pred[:, 1])
    )
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    out32 = loss.call(y_true, y_pred.astype("float32"))
    assert keras.backend.standardize_dtype(out32.dtype) == "float32"


def test_autograph_leaves_the_compiled_formula_alone() -> None:
    """A user's tf.function calling loss.call does not rewrite the formula's closures
    (slow, and they have no control flow on tensors): TensorFlow's own predicate for
    functions autograph calls unconverted holds for the public entry points."""
    from tensorflow.python.autograph.impl import api

    loss = lossdsl.compile_loss("bce(u0) + mse(u1) where true(u0) == 1", units=2)
    assert all(api.is_autograph_artifact(m) for m in (loss.call, loss.per_sample, loss.terms))
    y = tf.constant([[1.0, 0.5], [0.0, 0.2]])

    def user_step(t, p):  # a user's own function, which autograph does convert
        return loss.call(t, p)

    traced = tf.function(user_step)
    np.testing.assert_allclose(traced(y, y * 0.9), loss.call(y, y * 0.9), rtol=1e-5)


@pytest.mark.parametrize(
    ("formula", "units", "shapes", "hint"),
    [
        ("mse(u0)", 1, ((8,), (8, 1)), "keras.ops.expand_dims(y, -1)"),
        ("cce(u[0:3])", 3, ((8,), (8, 3)), "if y_true holds class indices"),
        ("cce(u[0:3])", 3, ((8, 1), (8, 3)), "'true': 0}} and labels of shape (8, 1)"),
        ("mse(u[0:2])", None, ((8, 3), (8, 2)), "y_pred has 1 unit fewer than y_true"),
        ("mse(u[0:2])", None, ((8, 2), (8, 4)), "y_true has 2 units fewer than y_pred"),
    ],
)
def test_a_shape_mismatch_says_how_to_fix_it(
    formula: str, units: Any, shapes: tuple[tuple[int, ...], ...], hint: str
) -> None:
    loss = lossdsl.compile_loss(formula, units=units)
    with pytest.raises(lossdsl.LossInputError) as info:
        loss(np.zeros(shapes[0], "float32"), np.zeros(shapes[1], "float32"))
    assert info.value.hint is not None and hint in info.value.hint, info.value.hint


def test_from_config_and_set_param_refuse_bad_values_with_lossdsl_errors() -> None:
    from lossdsl.keras.loss import FormulaLoss
    from lossdsl.keras.metrics import TermMetric

    loss = lossdsl.compile_loss("a*mse(u0) + bce(u1)", units=2, params={"a": 0.5})
    config = loss.get_config()
    metric = loss.term_metrics()[0].get_config()
    bad = [
        (lambda: FormulaLoss.from_config({**config, "params": "x"}), "params must map"),
        (lambda: FormulaLoss.from_config({**config, "parms": {}}), "unknown key 'parms'"),
        (lambda: FormulaLoss.from_config({**config, "params": {"a": 10**400}}), "float32"),
        (lambda: FormulaLoss.from_config("mse(u0)"), "expects the dict"),
        (lambda: TermMetric.from_config({**metric, "term": 99}), "term must be an index"),
        (lambda: TermMetric.from_config({**metric, "term": True}), "term must be an index"),
        (lambda: loss.set_param("a", 10**400), "must be a finite number"),
        (lambda: loss.set_param("a", "0.5"), "must be a finite number"),
    ]
    for make, message in bad:
        with pytest.raises(lossdsl.LossValidationError, match=re.escape(message)):
            make()


def test_the_deepest_formula_accepted_trains() -> None:
    # 200 operations inside one another, the parser's limit: compiled and traced without
    # coming near Python's recursion limit, in fit and under XLA.
    formula = "mse(u0) + 0.01*" + "(t*" * 98 + "pred(u0)" + "+pred(u0))" * 98
    loss = lossdsl.compile_loss(formula, units=1, params={"t": 0.5})
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    x, y = np.full((8, 3), 0.5, "float32"), np.full((8, 1), 0.25, "float32")
    for jit in (False, True):
        model.compile(optimizer="sgd", loss=loss, jit_compile=jit)
        history = model.fit(x, y, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
