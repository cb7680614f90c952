"""FormulaLoss in training: term metrics in fit logs, sample and class weights,
ParamSchedule, mixed precision. Every value is checked against NumPy float64
computed on the model's (constant, SGD learning_rate=0) predictions."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LESION, LESION_UNITS, drifting_lesion_data, lesion_model, np_bce
from keras import ops

import lossdsl
from lossdsl import LossValidationError

SCHEDULED = "alpha*bce(presence) + (1 - alpha)*traced_mae(loc) where true(presence) == 1"


def _frozen(loss: object, metrics: object = None, **kwargs: object) -> keras.Model:
    """A compiled model whose weights never move, so that model.predict gives
    the predictions of every training step."""
    model = lesion_model()
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=loss,
        weighted_metrics=metrics,
        **kwargs,
    )
    return model


def _parts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample bce(presence), squared loc error and the mask true(presence) == 1."""
    t, q = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return np_bce(t[:, 0], q[:, 0]), (t[:, 1] - q[:, 1]) ** 2, t[:, 0] == 1


def _batch_loss(
    bce: np.ndarray,
    other: np.ndarray,
    m: np.ndarray,
    a: float,
    b: float,
    *,
    w: np.ndarray | None = None,
) -> float:
    """`a*bce + b*other where m` on one batch, reduced by sum_over_batch_size."""
    n = len(bce)
    w = np.ones(n) if w is None else w
    sel = other * m * n / m.sum() if m.any() else np.zeros(n)
    return float(np.sum((a * bce + b * sel) * w) / n)


def _keras_epoch_loss(
    y: np.ndarray, p: np.ndarray, batch: int, a: float = 0.7, b: float = 0.3
) -> float:
    """What fit logs as `loss`: the mean of per-batch losses weighted by batch size."""
    values, sizes = [], []
    for s in range(0, len(y), batch):
        bce, sq, m = _parts(y[s : s + batch], p[s : s + batch])
        values.append(_batch_loss(bce, sq, m, a, b))
        sizes.append(len(bce))
    return float(np.average(values, weights=sizes))


def test_term_metrics_in_fit_are_dataset_level_values() -> None:
    x, y = drifting_lesion_data(100, seed=1)
    xv, yv = drifting_lesion_data(50, seed=2)
    counts = [int(y[s : s + 32, 0].sum()) for s in range(0, 100, 32)]
    assert len(set(counts)) == len(counts), counts  # batches of 32, 32, 32, 4
    loss = lossdsl.compile_loss(LESION, units=LESION_UNITS)
    model = _frozen(loss, loss.term_metrics())
    hist = model.fit(
        x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, validation_data=(xv, yv)
    ).history
    want = {"loss", "bce_presence", "mse_loc", "val_loss", "val_bce_presence", "val_mse_loc"}
    assert want <= set(hist)
    for prefix, xs, ys in (("", x, y), ("val_", xv, yv)):
        p = model.predict(xs, verbose=0)
        bce, sq, m = _parts(ys, p)
        np.testing.assert_allclose(hist[prefix + "bce_presence"][0], bce.mean(), rtol=1e-5)
        # All selected rows of the dataset, not a mean of batch means.
        np.testing.assert_allclose(hist[prefix + "mse_loc"][0], sq[m].mean(), rtol=1e-5)
        means = [sq[s : s + 32][m[s : s + 32]].mean() for s in range(0, len(ys), 32)]
        assert not np.isclose(np.mean(means), sq[m].mean(), rtol=1e-2)  # the check bites
        epoch = _keras_epoch_loss(ys, p, 32)
        np.testing.assert_allclose(hist[prefix + "loss"][0], epoch, rtol=1e-5)
    # The documented reason the terms do not add up to `loss`: Keras averages
    # per-batch losses, and each batch takes its own selected mean.
    p = model.predict(x, verbose=0)
    bce, sq, m = _parts(y, p)
    dataset_level = 0.7 * bce.mean() + 0.3 * sq[m].mean()
    summed = 0.7 * hist["bce_presence"][0] + 0.3 * hist["mse_loc"][0]
    np.testing.assert_allclose(summed, dataset_level, rtol=1e-5)
    assert abs(summed - hist["loss"][0]) > 1e-3 * hist["loss"][0]

    # Weighted metrics: the term's number included, same running sums.
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=loss,
        weighted_metrics=loss.term_metrics(weighted=True),
    )
    logs = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["bce_presence"], 0.7 * bce.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["mse_loc"], 0.3 * sq[m].mean(), rtol=1e-5)


@pytest.mark.parametrize(
    ("formula", "units", "names"),
    [
        (
            "0.7*bce(presence, from_logits=true)"
            " + 0.3*huber(loc, delta=0.5) where true(presence) == 1",
            {"presence": 0, "loc": [1, 3]},
            ["bce_presence", "huber_loc"],
        ),
        (
            "abs(pred(loc) - true(loc)) + mse(u[0:2]) + 2*mse(u[0:2]) where true(loc) > 0",
            {"loc": 2},
            ["loc", "mse_u_0_2", "mse_u_0_2_2"],
        ),
        (
            "divide_no_nan(sum(80*focal(cls, from_logits=true, alpha=0.25) where true(cls) != -2)"
            " + sum(4*huber(box) where true(cls) >= 0), sum(1 where true(cls) >= 0))",
            {"box": [0, 4], "cls": {"pred": [4, 84], "true": 4}},
            ["focal_cls_huber_box"],
        ),
        ("mean(mse(u0)) + sum(1 where true(u0) > 0)", 1, ["mse_u0", "u0"]),
    ],
    ids=["keywords-dropped", "units-and-collisions", "retinanet", "count"],
)
def test_metric_names_are_the_losses_and_their_units(formula, units, names) -> None:
    assert lossdsl.compile_loss(formula, units=units).term_names() == names


def test_metric_names_and_signed_weighted_values() -> None:
    names = lossdsl.compile_loss("mse(u0) + 2*mse(u0) where true(u1) > 0", units=2).term_names()
    assert names == ["mse_u0", "mse_u0_2"]
    loss = lossdsl.compile_loss(
        "alpha*bce(u0) + (1 - alpha)*mse(u1)", units=2, params={"alpha": 0.4}
    )
    assert [m.name for m in loss.term_metrics()] == ["bce_u0", "mse_u1"]
    assert [m.name for m in loss.term_metrics(weighted=True)] == ["bce_u0", "mse_u1"]

    rng = np.random.default_rng(3)
    y = rng.normal(size=(16, 2)).astype("float32")
    p = rng.normal(size=(16, 2)).astype("float32")
    neg = lossdsl.compile_loss("mse(u0) - 0.5*mae(u1)", units=2, allow_negative=True)
    mse = np.mean((y[:, 0].astype(np.float64) - p[:, 0]) ** 2)
    mae = np.mean(np.abs(y[:, 1].astype(np.float64) - p[:, 1]))
    raw, signed = neg.term_metrics(), neg.term_metrics(weighted=True)
    for metric in (*raw, *signed):
        metric.update_state(y, p)
    values = [float(m.result()) for m in (*raw, *signed)]
    # float32 means of 16 values, summed in an order that depends on the CPU's vector width.
    np.testing.assert_allclose(values, [mse, mae, mse, -0.5 * mae], rtol=1e-5)
    assert values[3] < 0
    terms = {k: float(v) for k, v in neg.terms(y, p).items()}
    np.testing.assert_allclose([terms["mse_u0"], terms["mae_u1"]], [mse, -0.5 * mae], rtol=1e-5)
    np.testing.assert_allclose(float(neg(y, p)), mse - 0.5 * mae, rtol=1e-5)


def test_weighted_term_metrics_follow_set_param() -> None:
    x, y = drifting_lesion_data(48, seed=4)
    loss = lossdsl.compile_loss(
        "alpha*bce(presence) + (1 - alpha)*mse(loc) where true(presence) == 1",
        units=LESION_UNITS,
        params={"alpha": 0.7},
    )
    model = _frozen(loss, loss.term_metrics(weighted=True))
    first = model.fit(x, y, batch_size=48, epochs=1, verbose=0).history
    step = model.train_function
    loss.set_param("alpha", 0.2)
    second = model.fit(x, y, batch_size=48, epochs=1, verbose=0).history
    assert model.train_function is step
    bce, sq, m = _parts(y, model.predict(x, verbose=0))
    for hist, a in ((first, 0.7), (second, 0.2)):
        np.testing.assert_allclose(hist["bce_presence"][0], a * bce.mean(), rtol=1e-5)
        np.testing.assert_allclose(hist["mse_loc"][0], (1 - a) * sq[m].mean(), rtol=1e-5)
        np.testing.assert_allclose(
            hist["loss"][0], a * bce.mean() + (1 - a) * sq[m].mean(), rtol=1e-5
        )


def test_sample_weight_class_weight_and_tf_data() -> None:
    n = 40
    x, y = drifting_lesion_data(n, seed=5)
    y[:, 1] = np.random.default_rng(6).uniform(-0.5, 1.5, n)  # argmax(y) takes both values
    w = np.random.default_rng(7).uniform(0.0, 2.0, n).astype("float32")
    loss = lossdsl.compile_loss(LESION, units=LESION_UNITS)
    model = _frozen(loss, loss.term_metrics())
    bce, sq, m = _parts(y, model.predict(x, verbose=0))

    def check(hist: dict, weights: np.ndarray) -> None:
        np.testing.assert_allclose(
            hist["loss"][0], _batch_loss(bce, sq, m, 0.7, 0.3, w=weights), rtol=1e-5
        )
        np.testing.assert_allclose(
            hist["bce_presence"][0], np.sum(bce * weights) / np.sum(weights), rtol=1e-5
        )
        np.testing.assert_allclose(
            hist["mse_loc"][0], np.sum(sq * m * weights) / np.sum(m * weights), rtol=1e-5
        )

    check(model.fit(x, y, sample_weight=w, batch_size=n, verbose=0).history, w)
    # A dataset of (x, y, w) triples, the weights as a (batch, 1) column. A fresh
    # model (the same weights): Keras's own losses fail when one train function
    # is retraced with weights of another rank (relaxed to an unknown rank).
    ds = tf.data.Dataset.from_tensor_slices((x, y, w[:, None])).batch(n)
    check(_frozen(loss, loss.term_metrics()).fit(ds, shuffle=False, verbose=0).history, w)
    # Keras turns class_weight into per-sample weights from argmax(y, axis=-1):
    # for a (presence, loc) label that is "loc > presence", not the presence class.
    implied = np.where(np.argmax(y, axis=-1) == 1, 3.0, 1.0)
    assert np.any(implied != np.where(y[:, 0] == 1, 3.0, 1.0))
    check(model.fit(x, y, class_weight={0: 1.0, 1: 3.0}, batch_size=n, verbose=0).history, implied)


@pytest.fixture
def traced_mae() -> Iterator[list[int]]:
    traces = [0]

    def fn(y_true: object, y_pred: object) -> object:
        traces[0] += 1  # runs in Python only while tracing
        return ops.mean(ops.abs(y_true - y_pred), axis=-1)

    lossdsl.register_loss("traced_mae", fn)
    try:
        yield traces
    finally:
        lossdsl.unregister_loss("traced_mae")


def _scheduled_batch_loss(y: np.ndarray, p: np.ndarray, a: float) -> float:
    bce, _, m = _parts(y, p)
    return _batch_loss(bce, np.abs(y[:, 1].astype(np.float64) - p[:, 1]), m, a, 1 - a)


def test_param_schedule_per_epoch_without_retracing(traced_mae: list[int]) -> None:
    x, y = drifting_lesion_data(64, seed=8)
    loss = lossdsl.compile_loss(SCHEDULED, units=LESION_UNITS, params={"alpha": 0.5})
    model = _frozen(loss, jit_compile=False)
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.append((traced_mae[0], model.train_function))
    )
    schedule = lossdsl.ParamSchedule({"alpha": lambda epoch: 0.2 + 0.3 * epoch})
    hist = model.fit(
        x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[schedule, probe]
    ).history
    assert seen[0][0] >= 1
    assert all(c == seen[0][0] and f is seen[0][1] for c, f in seen), seen
    alphas = [0.2, 0.5, 0.8]
    np.testing.assert_allclose(hist["alpha"], alphas)
    assert loss.params["alpha"] == pytest.approx(0.8)
    p = model.predict(x, verbose=0)
    want = [
        np.mean([_scheduled_batch_loss(y[s : s + 16], p[s : s + 16], a) for s in range(0, 64, 16)])
        for a in alphas
    ]
    np.testing.assert_allclose(hist["loss"], want, rtol=1e-5)


def test_param_schedule_per_batch_gets_the_global_step(traced_mae: list[int]) -> None:
    x, y = drifting_lesion_data(64, seed=9)
    loss = lossdsl.compile_loss(SCHEDULED, units=LESION_UNITS, params={"alpha": 0.5})
    model = _frozen(loss, jit_compile=False)
    steps: list[int] = []

    def alpha(step: int) -> float:
        steps.append(step)
        return 0.1 + 0.1 * step

    schedule = lossdsl.ParamSchedule({"alpha": alpha}, per_batch=True)
    hist = model.fit(
        x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[schedule]
    ).history
    assert steps == list(range(8))
    np.testing.assert_allclose(hist["alpha"], [0.4, 0.8])
    p = model.predict(x, verbose=0)
    per_batch = [
        _scheduled_batch_loss(y[s : s + 16], p[s : s + 16], 0.1 + 0.1 * k)
        for k, s in enumerate(list(range(0, 64, 16)) * 2)
    ]
    np.testing.assert_allclose(
        hist["loss"], [np.mean(per_batch[:4]), np.mean(per_batch[4:])], rtol=1e-5
    )


def test_param_schedule_rejects_unknown_parameters() -> None:
    loss = lossdsl.compile_loss("alpha*mse(u0)", units=1, params={"alpha": 1.0})
    with pytest.raises(LossValidationError, match="beta"):
        lossdsl.ParamSchedule({"beta": lambda epoch: 0.5}, loss=loss)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(LossValidationError, match="beta"):
        model.fit(
            np.zeros((4, 2)),
            np.zeros((4, 1)),
            verbose=0,
            callbacks=[lossdsl.ParamSchedule({"beta": lambda epoch: 0.5})],
        )


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request: pytest.FixtureRequest) -> Iterator[str]:
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_training_and_loss_dtype(policy: str) -> None:
    """Under a mixed policy the model's outputs are float16 or bfloat16, and the loss computes
    in float32. Each loss is checked against NumPy on the very predictions it was computed from,
    because two code paths need not round low-precision outputs alike: with oneDNN, graph mode
    runs other kernels than eager mode (fused Dense layers among them), and on a CPU with
    AVX512_BF16 about half the rows of the eager ``model(x)`` and of ``model.predict`` differ by
    one bfloat16 step. So the eager loss is checked on ``model(x)``, and evaluate's on
    ``model.predict``'s outputs, which run the same graph kernels on the same batch of ``n``.
    XLA stays off, as ``jit_compile="auto"`` leaves it on a CPU: it would compile predict and
    evaluate as two programs, each free to fuse and round the outputs its own way."""
    low = policy.removeprefix("mixed_")
    n = 64
    x, y = drifting_lesion_data(n, seed=10)
    loss = lossdsl.compile_loss(LESION, units=LESION_UNITS)
    model = lesion_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=loss,
        weighted_metrics=loss.term_metrics(),
        jit_compile=False,
    )
    before = [ops.convert_to_numpy(v) for v in model.trainable_weights]
    hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    after = [ops.convert_to_numpy(v) for v in model.trainable_weights]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    # float32 arithmetic over a batch of 64 (its sums in a CPU-dependent order), against float64.
    f32 = 1e-5
    # What the low-precision outputs themselves can be trusted to.
    rtol = {"float16": 1e-3, "bfloat16": 5e-3}[low]

    y_pred = model(x)  # eager
    assert keras.backend.standardize_dtype(y_pred.dtype) == low
    value = loss(y, y_pred)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    eager = _batch_loss(*_parts(y, ops.convert_to_numpy(ops.cast(y_pred, "float32"))), 0.7, 0.3)
    np.testing.assert_allclose(float(value), eager, rtol=f32)

    p = model.predict(x, batch_size=n, verbose=0)  # graph, as evaluate
    assert keras.backend.standardize_dtype(p.dtype) == low
    bce, sq, m = _parts(y, p.astype("float32"))
    logs = model.evaluate(x, y, batch_size=n, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], _batch_loss(bce, sq, m, 0.7, 0.3), rtol=f32)
    # Eager and graph predictions differ only in their rounding: the same loss to the
    # outputs' precision.
    np.testing.assert_allclose(logs["loss"], eager, rtol=rtol)
    # Term metrics compute in y_pred's dtype, as Keras's own metrics do, so they
    # agree only to the outputs' precision (the loss itself computes in float32).
    np.testing.assert_allclose(logs["bce_presence"], bce.mean(), rtol=rtol)
    np.testing.assert_allclose(logs["mse_loc"], sq[m].mean(), rtol=rtol)


@pytest.mark.parametrize("label_dtype", ["int32", "bool", "float64"])
def test_label_and_float64_inputs_give_a_float32_loss(label_dtype: str) -> None:
    rng = np.random.default_rng(11)
    y = np.stack(
        [rng.integers(0, 2, 32), rng.integers(0, 2 if label_dtype == "bool" else 4, 32)], axis=1
    ).astype(label_dtype)
    p = np.stack([rng.uniform(0.05, 0.95, 32), rng.normal(size=32)], axis=1)  # float64
    loss = lossdsl.compile_loss("bce(u0) + mse(u1) where true(u0) == 1", units=2)
    value = loss(y, p)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    bce, sq, m = _parts(y, p.astype("float32"))
    np.testing.assert_allclose(float(value), _batch_loss(bce, sq, m, 1.0, 1.0), rtol=1e-5)


def test_per_batch_schedule_resumes_with_the_optimizer_step():
    loss = lossdsl.compile_loss("alpha*mse(u0)", units=1, params={"alpha": 1.0})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=loss)
    steps = []
    schedule = lossdsl.ParamSchedule({"alpha": lambda t: steps.append(t) or 1.0}, per_batch=True)
    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[schedule])
    model.fit(x, y, batch_size=4, epochs=2, initial_epoch=1, verbose=0, callbacks=[schedule])
    assert steps == [0, 1, 2, 3]


def _scalars(directory) -> dict[str, list[float]]:
    """The epoch scalars of the TensorBoard event files under ``directory``, by tag, in order
    (the files also hold the model's config as text)."""
    out: dict[str, list[float]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag.startswith("epoch_"):
                    out.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    return out


def test_term_metrics_land_in_tensorboard_train_and_validation(tmp_path) -> None:
    x, y = drifting_lesion_data(64, seed=4)
    xv, yv = drifting_lesion_data(32, seed=5)
    loss = lossdsl.compile_loss(LESION, units=LESION_UNITS)
    model = lesion_model()
    model.compile(optimizer="sgd", loss=loss, weighted_metrics=loss.term_metrics())
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    history = model.fit(
        x, y, batch_size=32, epochs=2, verbose=0, validation_data=(xv, yv), callbacks=[board]
    ).history
    for side, prefix in (("train", ""), ("validation", "val_")):
        scalars = _scalars(tmp_path / side)
        for name in ("bce_presence", "mse_loc"):
            np.testing.assert_allclose(scalars[f"epoch_{name}"], history[prefix + name], rtol=1e-6)


def test_dynamic_weight_average_against_a_hand_computation_over_four_epochs() -> None:
    x, y = drifting_lesion_data(96, seed=6)
    loss = lossdsl.compile_loss(
        "w_cls*bce(presence) + w_loc*mse(loc)",
        units=LESION_UNITS,
        params={"w_cls": 1.0, "w_loc": 1.0},
    )
    model = lesion_model()
    model.compile(optimizer="sgd", loss=loss, weighted_metrics=loss.term_metrics())
    dwa = lossdsl.DynamicWeightAverage({"w_cls": "bce_presence", "w_loc": "mse_loc"})
    h = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[dwa]).history
    temperature, want = 2.0, [[1.0, 1.0], [1.0, 1.0]]  # no ratio in the first two epochs
    for t in (2, 3):
        r = [h[name][t - 1] / h[name][t - 2] for name in ("bce_presence", "mse_loc")]
        e = np.exp(np.array(r, "float64") / temperature)
        want.append(list(2 * e / e.sum()))
    np.testing.assert_allclose(np.stack([h["w_cls"], h["w_loc"]], axis=1), want, rtol=1e-6)
    assert not np.allclose(want[3], 1.0)  # the weights did move


def test_a_schedule_of_two_arguments_gets_the_last_epochs_logs() -> None:
    x, y = drifting_lesion_data(64, seed=7)
    loss = lossdsl.compile_loss("bce(presence) + beta*mse(loc)", units=LESION_UNITS,
                                params={"beta": 1.0})  # fmt: skip
    model = lesion_model()
    model.compile(optimizer="sgd", loss=loss, weighted_metrics=loss.term_metrics())
    seen: list[dict[str, float]] = []

    def beta(epoch: int, logs: dict[str, float]) -> float:
        seen.append(logs)
        return 1.0 / (1.0 + logs.get("mse_loc", 0.0))

    h = model.fit(
        x, y, epochs=3, verbose=0, callbacks=[lossdsl.ParamSchedule({"beta": beta})]
    ).history
    assert seen[0] == {}
    assert [s["mse_loc"] for s in seen[1:]] == h["mse_loc"][:2]
    np.testing.assert_allclose(h["beta"][1:], [1 / (1 + m) for m in h["mse_loc"][:2]], rtol=1e-6)


def test_dynamic_weight_average_names_the_logs_it_lacks() -> None:
    x, y = drifting_lesion_data(32, seed=8)
    loss = lossdsl.compile_loss("w*bce(presence) + mse(loc)", units=LESION_UNITS,
                                params={"w": 1.0})  # fmt: skip
    model = lesion_model()
    model.compile(optimizer="sgd", loss=loss)
    dwa = lossdsl.DynamicWeightAverage({"w": "bce_presence"})
    with pytest.raises(LossValidationError, match=r"'bce_presence'.*term_metrics\(\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[dwa])
