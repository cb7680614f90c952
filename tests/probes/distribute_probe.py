"""One training epoch on one device and distributed over several, same global
batches: prints the largest weight difference per case as JSON.

    KERAS_BACKEND=tensorflow python tests/probes/distribute_probe.py   # MirroredStrategy, 2 CPUs
    KERAS_BACKEND=jax python tests/probes/distribute_probe.py          # DataParallel, 4 CPUs

Run by tests/test_distribute.py, each backend in its own process: the devices
must be configured before the framework starts.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
else:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

import lossdsl

if os.environ.get("LOSSDSL_PROBE_LOCAL_COUNTS") == "1":
    # What Keras alone would do: per-replica counts. The test checks that this
    # differs, so that agreement with the correction means something.
    import lossdsl.keras.compiler as _c
    import lossdsl.keras.loss_calls as _l

    _c.replicas = lambda: 1
    _c.global_sum = _l.global_sum = lambda x: x

CASES: dict[str, tuple[str | None, int, int, bool, str]] = {
    # name: formula (None: Keras's own Dice), rows, batch size, sample weights?, data
    "plain": ("bce(u0) + 0.5*mse(u1)", 12, 12, False, "rows"),
    "where": ("bce(u0) + mse(u1) where true(u0) == 1", 12, 12, False, "rows"),
    "where+weights": ("bce(u0) + mse(u1) where true(u0) == 1", 12, 12, True, "rows"),
    "where+params": (
        "alpha*bce(u0) + (1 - alpha)*mse(u1) where pred(u0) > 0.5",
        12,
        12,
        False,
        "rows",
    ),
    "uneven": ("bce(u0) + mse(u1) where true(u0) == 1", 15, 6, True, "rows"),
    # Dense prediction: (batch, positions, 1) masks.
    "dice batch-wide": ("dice(mask, batch=true)", 16, 8, False, "masks"),
    "dice per example + mean bce": ("dice(mask) + mean(bce(mask))", 16, 8, True, "masks"),
    "batch-wide mean of a where, uneven": (
        "mean(bce(mask) where true(mask) == 1, batch=true) + mean(mse(mask))",
        15,
        6,
        True,
        "masks",
    ),
    "Keras's Dice": (None, 16, 8, False, "masks"),
    # FormulaModel over a model's named outputs (the weights include the learned ones).
    "outputs: where + per-output weights": (
        "bce(presence) + mse(loc) where true(presence) == 1",
        12,
        12,
        True,
        "outputs",
    ),
    "outputs: learned weights": (
        "exp(-s)*bce(presence) + s + mse(loc) where true(presence) == 1",
        12,
        12,
        False,
        "outputs",
    ),
    "outputs: batch-wide dice": (
        "dice(mask, batch=true) + mean(mse(depth))",
        16,
        8,
        True,
        "output masks",
    ),
}
if BACKEND == "jax":  # DataParallel needs every batch divisible by the device count
    CASES["uneven"] = ("bce(u0) + mse(u1) where true(u0) == 1", 16, 8, True, "rows")
    CASES["batch-wide mean of a where, uneven"] = (
        "mean(bce(mask) where true(mask) == 1, batch=true) + mean(mse(mask))",
        16,
        8,
        True,
        "masks",
    )

rng = np.random.default_rng(3)
X = rng.normal(size=(16, 4)).astype("float32")
Y = np.stack([X[:, 0] > 0.3, X[:, 1] + 0.5 * X[:, 2]], axis=1).astype("float32")
W = rng.uniform(0.2, 2.0, size=16).astype("float32")
# Six positions an example, four features a position; the mask follows one feature.
X_MASKS = rng.normal(size=(16, 6, 4)).astype("float32")
Y_MASKS = (X_MASKS[..., :1] + 0.3 * rng.normal(size=(16, 6, 1)) > 0.2).astype("float32")


def _model(data: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    if data == "output masks":
        inputs = keras.Input((6, 4))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        mask = keras.layers.Dense(1, activation="sigmoid", name="mask")(h)
        return keras.Model(inputs, {"mask": mask, "depth": keras.layers.Dense(1, name="depth")(h)})
    if data == "outputs":
        inputs = keras.Input((4,))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        presence = keras.layers.Dense(1, activation="sigmoid", name="presence")(h)
        return keras.Model(
            inputs, {"presence": presence, "loc": keras.layers.Dense(1, name="loc")(h)}
        )
    if data == "masks":
        inputs = keras.Input((6, 4))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    out = keras.layers.Concatenate()(
        [keras.layers.Dense(1, activation="sigmoid")(h), keras.layers.Dense(1)(h)]
    )
    return keras.Model(inputs, out)


def train(
    case: tuple[str | None, int, int, bool, str], scope: Callable[[], Any]
) -> list[np.ndarray]:
    formula, n, batch, weights, data = case
    x, y = (X_MASKS, Y_MASKS) if "masks" in data else (X, Y)
    sample_weight: Any = W[:n] if weights else None
    with scope():
        model = _model(data)
        if data.startswith("output"):
            learned = {"s": 0.0} if "exp(-s)" in formula else {}  # uncertainty weighting
            model = lossdsl.FormulaModel(model, {"expression": formula, "learned": learned})
            model.compile(optimizer=keras.optimizers.SGD(0.5))
            if data == "outputs":
                y = {"presence": y[:, :1], "loc": y[:, 1:]}
                if weights:  # one array per output
                    sample_weight = {"presence": W[:n], "loc": W[::-1][:n]}
            else:
                y = {"mask": y, "depth": x[..., 1:2]}
        elif formula is None:
            loss: Any = keras.losses.Dice()
        elif data == "masks":
            loss = lossdsl.compile_loss(formula, units={"mask": 0})
        else:
            params = {"alpha": 0.6} if "alpha" in formula else None
            loss = lossdsl.compile_loss(formula, units=2, params=params)
        if not data.startswith("output"):
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    model.fit(
        x[:n], keras.tree.map_structure(lambda a: a[:n], y), sample_weight=sample_weight,
        batch_size=batch, epochs=1, shuffle=False, verbose=0,
    )  # fmt: skip
    return [np.asarray(w) for w in model.get_weights()]


def logged(scope: Callable[[], Any]) -> dict[str, list[float]]:
    """The logs of two epochs with a ``ParamSchedule`` and a learned parameter: a parameter
    is one value, not one per replica, and each replica reads the value set."""
    with scope():
        model = lossdsl.FormulaModel(
            _model("outputs"),
            {
                "expression": "exp(-s)*bce(presence) + s + alpha*mse(loc)",
                "params": {"alpha": 1.0},
                "learned": {"s": 0.5},
            },
        )
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    schedule = lossdsl.ParamSchedule({"alpha": lambda epoch: 2.0 + epoch}, loss=model.formula_loss)
    y = {"presence": Y[:, :1], "loc": Y[:, 1:]}
    history = model.fit(X, y, batch_size=8, epochs=2, verbose=0, callbacks=[schedule]).history
    return {k: [float(v) for v in history[k]] for k in ("loss", "alpha", "s")}


def main() -> None:
    single = {k: train(c, contextlib.nullcontext) for k, c in CASES.items()}
    if BACKEND == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        scope: Callable[[], Any] = contextlib.nullcontext
        replicas = len(devices)
    else:
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        scope = strategy.scope
        replicas = strategy.num_replicas_in_sync
    result: dict[str, Any] = {"replicas": replicas}
    result["logs"] = {"one": logged(contextlib.nullcontext), "distributed": logged(scope)}
    for k, c in CASES.items():
        dist = train(c, scope)
        result[k] = max(float(np.max(np.abs(a - b))) for a, b in zip(single[k], dist, strict=True))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
