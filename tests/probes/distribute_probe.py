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

    _c.replicas = lambda: 1
    _c.global_sum = lambda x: x

CASES = {
    # name: formula, rows, batch size, sample weights?
    "plain": ("bce(u0) + 0.5*mse(u1)", 12, 12, False),
    "where": ("bce(u0) + mse(u1) where true(u0) == 1", 12, 12, False),
    "where+weights": ("bce(u0) + mse(u1) where true(u0) == 1", 12, 12, True),
    "where+params": ("alpha*bce(u0) + (1 - alpha)*mse(u1) where pred(u0) > 0.5", 12, 12, False),
    "uneven": ("bce(u0) + mse(u1) where true(u0) == 1", 15, 6, True),
}
if BACKEND == "jax":  # DataParallel needs every batch divisible by the device count
    CASES["uneven"] = ("bce(u0) + mse(u1) where true(u0) == 1", 16, 8, True)

rng = np.random.default_rng(3)
X = rng.normal(size=(16, 4)).astype("float32")
Y = np.stack([X[:, 0] > 0.3, X[:, 1] + 0.5 * X[:, 2]], axis=1).astype("float32")
W = rng.uniform(0.2, 2.0, size=16).astype("float32")


def train(
    formula: str, n: int, batch: int, weights: bool, scope: Callable[[], Any]
) -> list[np.ndarray]:
    with scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        out = keras.layers.Concatenate()(
            [keras.layers.Dense(1, activation="sigmoid")(h), keras.layers.Dense(1)(h)]
        )
        model = keras.Model(inputs, out)
        loss = lossdsl.compile_loss(
            formula, units=2, params={"alpha": 0.6} if "alpha" in formula else None
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    model.fit(
        X[:n], Y[:n], sample_weight=W[:n] if weights else None,
        batch_size=batch, epochs=1, shuffle=False, verbose=0,
    )  # fmt: skip
    return [np.asarray(w) for w in model.get_weights()]


def main() -> None:
    single = {k: train(*c, contextlib.nullcontext) for k, c in CASES.items()}
    if BACKEND == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        scope: Callable[[], Any] = contextlib.nullcontext
        replicas = len(devices)
    else:
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        scope = strategy.scope
        replicas = strategy.num_replicas_in_sync
    result = {"replicas": replicas}
    for k, c in CASES.items():
        dist = train(*c, scope)
        result[k] = max(float(np.max(np.abs(a - b))) for a, b in zip(single[k], dist, strict=True))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
