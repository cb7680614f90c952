"""FormulaModel: one formula over a model's named outputs, and learned parameters."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_bce

import lossdsl
from lossdsl import LossInputError, LossSpec, LossValidationError

LESION = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
UNCERTAINTY = "exp(-s_p)*bce(presence) + s_p + exp(-s_l)*mse(loc) + s_l"


def two_outputs(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    return keras.Model(
        inputs,
        {
            "presence": keras.layers.Dense(1, activation="sigmoid", name="presence")(h),
            "loc": keras.layers.Dense(2, name="loc")(h),
        },
    )


def data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    presence = (x[:, :1] > 0).astype("float32")
    loc = np.stack([x[:, 1], 10 * x[:, 2]], axis=1).astype("float32")
    return x, {"presence": presence, "loc": loc}


def test_the_lesion_formula_over_two_named_outputs_is_the_numpy_loss() -> None:
    x, y = data()
    model = lossdsl.FormulaModel(two_outputs(), LESION)
    model.compile(optimizer="sgd")
    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    out = model.predict(x, verbose=0)
    p, t = out["presence"][:, 0].astype("float64"), y["presence"][:, 0]
    sq = ((out["loc"] - y["loc"]) ** 2).mean(axis=1)
    m = t == 1
    want = 0.7 * np_bce(t, p).mean() + 0.3 * sq[m].mean()
    np.testing.assert_allclose(logs["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(logs["mse_loc"], sq[m].mean(), rtol=1e-5)
    assert model.formula_loss.spec.units == {"presence": 0, "loc": (1, 3)}


def test_a_dict_from_tf_data_trains_and_a_missing_key_is_named() -> None:
    x, y = data()
    model = lossdsl.FormulaModel(two_outputs(), LESION)
    model.compile(optimizer="sgd")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=2, verbose=0).history
    assert {"loss", "bce_presence", "mse_loc"} <= set(history)
    with pytest.raises(LossInputError, match=r"'presence', 'loc'.*Missing: 'loc'"):
        model.evaluate(x, {"presence": y["presence"]}, verbose=0)
    with pytest.raises(LossInputError, match="Not an output: 'size'"):
        model.evaluate(x, {**y, "size": y["presence"]}, verbose=0)


def test_units_select_columns_inside_an_output_and_labels_read_class_indices() -> None:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    outputs = {
        "cls": keras.layers.Dense(3, name="cls")(inputs),
        "loc": keras.layers.Dense(2, name="loc")(inputs),
    }
    model = lossdsl.FormulaModel(
        keras.Model(inputs, outputs),
        {"expression": "cce(cls, from_logits=true) + mse(loc_x)", "units": {"loc_x": ["loc", 0]}},
        labels={"cls": 1},
    )
    model.compile(optimizer="sgd")
    x = np.random.default_rng(2).normal(size=(32, 4)).astype("float32")
    y = {"cls": np.arange(32, dtype="float32")[:, None] % 3, "loc": x[:, :2]}
    logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    out = model.predict(x, verbose=0)
    ce = keras.losses.sparse_categorical_crossentropy(y["cls"][:, 0], out["cls"], from_logits=True)
    want = np.mean(ce) + np.mean((out["loc"][:, 0] - y["loc"][:, 0]) ** 2)
    np.testing.assert_allclose(logs["loss"], want, rtol=1e-5)


def test_learned_parameters_train_log_and_save(tmp_path) -> None:
    x, y = data(128)
    spec = {"expression": UNCERTAINTY, "learned": {"s_p": 0.0, "s_l": 0.0}}
    model = lossdsl.FormulaModel(two_outputs(), spec)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0).history
    assert len(history["s_p"]) == len(history["s_l"]) == 3
    s_l = float(model.learned["s_l"].numpy())
    # An epoch logs the value its last step trained with, one Adam step (at most about the
    # learning rate) before the weight.
    assert abs(s_l - history["s_l"][-1]) < 0.06
    assert s_l > 0.1  # the large squared errors drive their log-variance up
    assert sum(v is model.learned["s_l"] for v in model.trainable_variables) == 1
    assert not any(v is model.learned["s_l"] for v in model.metrics_variables)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    assert before["s_l"] == pytest.approx(s_l, rel=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert float(loaded.learned["s_l"].numpy()) == pytest.approx(s_l)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(after["loss"], before["loss"], rtol=1e-6)


def test_a_learned_parameter_in_a_single_output_model() -> None:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    spec = {"expression": "exp(-s)*mse(u0) + s + mae(u1)", "units": 2, "learned": {"s": 0.0}}
    wrapped = lossdsl.FormulaModel(model, spec)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1))
    x = np.random.default_rng(4).normal(size=(32, 4)).astype("float32")
    y = np.stack([10 * x[:, 0], x[:, 1]], axis=1)
    history = wrapped.fit(x, y, epochs=2, verbose=0).history
    assert history["s"][-1] != 0.0


def test_a_subclassed_model_declares_its_output_widths() -> None:
    class Heads(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.presence = keras.layers.Dense(1, activation="sigmoid")
            self.loc = keras.layers.Dense(2)

        def call(self, x):
            return {"presence": self.presence(x), "loc": self.loc(x)}

    with pytest.raises(LossValidationError, match="outputs="):
        lossdsl.FormulaModel(Heads(), LESION)
    model = lossdsl.FormulaModel(Heads(), LESION, outputs={"presence": 1, "loc": 2})
    model.compile(optimizer="sgd")
    x, y = data()
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_compiling_with_a_loss_is_an_error() -> None:
    model = lossdsl.FormulaModel(two_outputs(), LESION)
    model.compile(optimizer="sgd", loss="mse")
    x, y = data()
    with pytest.raises(LossValidationError, match="without loss="):
        model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "formula",
    [
        "exp(-s)*mse(u0) + s",
        "0.5*exp(-2*s)*mse(u0) + s",
        "square(s)*mse(u0) + sigmoid(s)/2*mae(u0)",
        "max(s, 1)*mse(u0)",
    ],
)
def test_weights_a_learned_parameter_cannot_turn_negative_are_accepted(formula) -> None:
    assert LossSpec(expression=formula, units=1, learned={"s": -3.0}).checked.learned == {"s"}


@pytest.mark.parametrize(
    ("formula", "at"),
    [
        ("s*mse(u0)", "s*mse(u0)"),
        ("(1 - s)*mse(u0) + mae(u0)", "(1 - s)*mse(u0)"),
        ("mae(u0) - exp(s)*mse(u0)", "exp(s)*mse(u0)"),
        ("min(s, 1)*mse(u0)", "min(s, 1)*mse(u0)"),
    ],
)
def test_weights_a_learned_parameter_can_turn_negative_are_refused(formula, at) -> None:
    # At s's initial value each weight is positive; training could make it negative.
    with pytest.raises(LossValidationError, match="can turn negative") as info:
        LossSpec(expression=formula, units=1, learned={"s": 0.5})
    start = formula.index(at)
    assert info.value.errors[0].span == (start, start + len(at))
    LossSpec(expression=formula, units=1, learned={"s": 0.5}, allow_negative=True)


def test_a_learned_parameter_is_not_also_a_fixed_one_and_is_a_finite_number() -> None:
    with pytest.raises(LossValidationError) as info:
        LossSpec(expression=UNCERTAINTY, units={"presence": 0, "loc": [1, 3]},
                 params={"s_p": 1.0}, learned={"s_p": 0.0, "s_l": float("nan")})  # fmt: skip
    messages = [str(e).splitlines()[0] for e in info.value.errors]
    assert any("both a fixed and a learned parameter" in m for m in messages), messages
    assert any("'s_l' must be a finite number" in m for m in messages), messages


def test_learned_parameters_from_a_config_file(tmp_path) -> None:
    path = tmp_path / "loss.yaml"
    path.write_text(
        "expression: exp(-s)*mse(u0) + s\nunits: 1\nlearned: {s: 0.5}\n", encoding="utf-8"
    )
    spec = lossdsl.load_spec(path)
    assert spec.learned == {"s": 0.5}
    assert lossdsl.compile_loss(spec).spec.config()["learned"] == {"s": 0.5}


def test_a_learned_parameter_outside_a_formula_model_says_it_is_not_trained() -> None:
    loss = lossdsl.compile_loss("exp(-s)*mse(u0) + s", units=1, learned={"s": 0.5})
    y = np.ones((4, 1), "float32")
    with pytest.warns(UserWarning, match="keep their initial values.*FormulaModel"):
        value = float(loss(y, 2 * y))
    assert value == pytest.approx(np.exp(-0.5) + 0.5, rel=1e-6)
    with pytest.raises(LossValidationError, match="'s' is a learned parameter"):
        loss.set_param("s", 1.0)


def test_schedules_and_dynamic_weight_average_drive_a_formula_model() -> None:
    x, y = data(64)
    spec = {"expression": "w_p*bce(presence) + w_l*mse(loc)", "params": {"w_p": 1.0, "w_l": 1.0}}
    model = lossdsl.FormulaModel(two_outputs(), spec)
    model.compile(optimizer="sgd")
    dwa = lossdsl.DynamicWeightAverage({"w_p": "bce_presence", "w_l": "mse_loc"})
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[dwa]).history
    assert history["w_p"][:2] == [1.0, 1.0]
    assert history["w_p"][2] + history["w_l"][2] == pytest.approx(2.0)
    assert history["w_p"][2] != 1.0


def _lesion_parts(model: lossdsl.FormulaModel, x, y):
    """Per sample, in float64: bce of presence, mse of loc, and the mask of ``where``."""
    out = model.predict(x, verbose=0)
    t = y["presence"][:, 0]
    bce = np_bce(t, out["presence"][:, 0].astype("float64"))
    sq = ((out["loc"].astype("float64") - y["loc"]) ** 2).mean(axis=1)
    return bce, sq, t == 1


def test_per_output_sample_weights_weigh_each_term_by_its_output() -> None:
    x, y = data()
    model = lossdsl.FormulaModel(two_outputs(), LESION)
    model.compile(optimizer="sgd")
    w_p, w_l = np.random.default_rng(5).uniform(0.2, 2.0, (2, 64)).astype("float32")
    bce, sq, m = _lesion_parts(model, x, y)
    for weights, (a, b) in [
        ({"presence": w_p, "loc": w_l}, (w_p, w_l)),
        ({"presence": None, "loc": w_l}, (np.ones(64), w_l)),  # an output without weighs 1
    ]:
        logs = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0,
                              return_dict=True)  # fmt: skip
        # As Keras weighs each output's loss; a where term's count stays unweighted.
        want = 0.7 * np.mean(a * bce) + 0.3 * np.sum(b * sq * m) / np.sum(m)
        np.testing.assert_allclose(logs["loss"], want, rtol=1e-5)
        np.testing.assert_allclose(logs["bce_presence"], np.sum(a * bce) / np.sum(a), rtol=1e-5)
        np.testing.assert_allclose(logs["mse_loc"], np.sum(b * sq * m) / np.sum(b * m), rtol=1e-5)
    history = model.fit(x, y, sample_weight={"presence": w_p, "loc": w_l}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_per_output_sample_weights_of_an_example_level_formula() -> None:
    x, y = data()
    model = lossdsl.FormulaModel(two_outputs(), "mean(bce(presence)) + 2*mean(mse(loc))")
    model.compile(optimizer="sgd")
    w_p, w_l = np.random.default_rng(6).uniform(0.2, 2.0, (2, 64)).astype("float32")
    bce, sq, _ = _lesion_parts(model, x, y)
    logs = model.evaluate(x, y, sample_weight={"presence": w_p, "loc": w_l}, batch_size=64,
                          verbose=0, return_dict=True)  # fmt: skip
    np.testing.assert_allclose(logs["loss"], np.mean(w_p * bce + 2 * w_l * sq), rtol=1e-5)


def test_a_term_that_reads_two_outputs_is_weighed_by_the_smaller_weight() -> None:
    x, y = data()
    formula = "bce(presence) + mse(loc) * true(presence)"
    model = lossdsl.FormulaModel(two_outputs(), formula)
    model.compile(optimizer="sgd")
    w_p = np.random.default_rng(7).uniform(0.0, 2.0, 64).astype("float32")
    w_l = (np.arange(64) % 4 != 0).astype("float32")  # a loc label missing in every 4th row
    bce, sq, m = _lesion_parts(model, x, y)
    cases = [
        (w_p, np.mean(w_p * bce) + np.mean(w_p * sq * m)),  # one array: Keras copies it
        (
            {"presence": w_p, "loc": w_l},
            np.mean(w_p * bce) + np.mean(np.minimum(w_p, w_l) * sq * m),
        ),
    ]
    for weights, want in cases:
        logs = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0,
                              return_dict=True)  # fmt: skip
        np.testing.assert_allclose(logs["loss"], want, rtol=1e-5)
    w = np.minimum(w_p, w_l)
    np.testing.assert_allclose(logs["mse_loc"], np.sum(w * sq * m) / np.sum(w), rtol=1e-5)


def test_per_output_sample_weights_name_the_outputs() -> None:
    x, y = data()
    model = lossdsl.FormulaModel(two_outputs(), LESION)
    model.compile(optimizer="sgd")
    w, pred = np.ones(64, "float32"), model.predict(x, verbose=0)
    # Keras's fit checks the structure first; a custom training loop meets these.
    with pytest.raises(LossInputError, match=r"names 'size'.*outputs: 'presence', 'loc'"):
        model.compute_loss(x, y, pred, sample_weight={"presence": w, "size": w})
    with pytest.raises(LossInputError, match=r"list of 1 for 2 outputs"):
        model.compute_loss(x, y, pred, sample_weight=[w])


def test_xla_fit_equals_the_compiled_graph_fit() -> None:
    x, y = data(64)
    w = {"presence": np.linspace(0.5, 1.5, 64, dtype="float32"), "loc": np.ones(64, "float32")}
    spec = {
        "expression": UNCERTAINTY + " where true(presence) == 1",
        "learned": {"s_p": 0.0, "s_l": 0.0},
    }
    runs = []
    for jit in (False, True):
        model = lossdsl.FormulaModel(two_outputs(), spec)
        model.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=jit)
        model.fit(x, y, sample_weight=w, batch_size=16, epochs=2, shuffle=False, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_term_metrics_take_weights_shaped_as_the_loss_reads_them() -> None:
    keras.utils.set_random_seed(8)
    inputs = keras.Input((5, 4))
    outputs = {
        "a": keras.layers.Dense(1, activation="sigmoid", name="a")(inputs),
        "b": keras.layers.Dense(2, name="b")(inputs),
    }
    model = lossdsl.FormulaModel(keras.Model(inputs, outputs), "bce(a) + mse(b) * true(a)")
    model.compile(optimizer="sgd")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(16, 5, 4)).astype("float32")
    y = {"a": (x[..., :1] > 0).astype("float32"), "b": x[..., 1:3]}
    out = model.predict(x, verbose=0)
    t = y["a"][..., 0]
    bce = np_bce(t, out["a"][..., 0])
    term = ((out["b"].astype("float64") - y["b"]) ** 2).mean(-1) * t
    w_a, w_b = rng.uniform(0.2, 2.0, (16, 5)), rng.uniform(0.2, 2.0, 16)
    # (batch,) weights of (batch, positions) values, and two shapes in one term.
    for weights, (wa, wb) in [
        (w_b.astype("float32"), (w_b[:, None], w_b[:, None])),
        ({"a": w_a.astype("float32"), "b": w_b[:, None].astype("float32")},
         (w_a, np.minimum(w_a, w_b[:, None]))),
    ]:  # fmt: skip
        # A new test step: Keras would retrace the old one with shapes of unknown rank.
        model.make_test_function(force=True)
        logs = model.evaluate(x, y, sample_weight=weights, batch_size=16, verbose=0,
                              return_dict=True)  # fmt: skip
        a, b = np.broadcast_to(wa, t.shape), np.broadcast_to(wb, t.shape)
        np.testing.assert_allclose(logs["loss"], np.mean(a * bce) + np.mean(b * term), rtol=1e-5)
        np.testing.assert_allclose(logs["bce_a"], np.sum(a * bce) / np.sum(a), rtol=1e-5)
        np.testing.assert_allclose(logs["mse_b"], np.sum(b * term) / np.sum(b), rtol=1e-5)


def test_weighing_by_output_keeps_what_works_without_weights() -> None:
    x, y = data()
    # A formula within the length limit whose weighed form is beyond it: built only when
    # weights come, and then a clear error.
    long = " + ".join(f"{k + 1}*mse(loc)" for k in range(500)) + " + bce(presence)"
    model = lossdsl.FormulaModel(two_outputs(), long, term_metrics=False)
    pred = model(x)
    assert np.isfinite(float(model.compute_loss(x, y, pred)))
    with pytest.raises(LossInputError, match="beyond lossdsl's limits"):
        model.compute_loss(x, y, pred, sample_weight={"presence": np.ones(64, "float32")})
    loss = lossdsl.compile_loss(LESION, units={"presence": 0, "loc": [1, 3]},
                                reduction="mean_with_sample_weight")  # fmt: skip
    model = lossdsl.FormulaModel(two_outputs(), loss)
    model.compile(optimizer="sgd")
    with pytest.raises(LossInputError, match="mean_with_sample_weight"):
        model.evaluate(x, y, sample_weight=np.ones(64, "float32"), verbose=0)
