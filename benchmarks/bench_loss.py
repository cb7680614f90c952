"""How much does a formula cost against the same loss written by hand?

Times, in one run and on the same data:

* the loss alone under ``tf.function(jit_compile=...)``: forward and gradient;
* one ``model.fit`` epoch of a small two-head model;
* front-end throughput: distinct formulas parsed and validated per second.

Each measurement is repeated; the script prints medians and the ratio
formula / hand-written (1.00 means no overhead). Nothing here is a test.

    .venv/bin/python benchmarks/bench_loss.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import lossdsl

FORMULA = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
UNITS = {"presence": 0, "loc": 1}


def hand_written(y_true, y_pred):
    """The same loss as FORMULA, written carefully with keras.ops."""
    p_true, p_pred = y_true[:, 0], y_pred[:, 0]
    bce = ops.binary_crossentropy(p_true, ops.clip(p_pred, 1e-7, 1 - 1e-7))
    m = ops.equal(p_true, 1.0)
    m_f = ops.cast(m, y_pred.dtype)
    err = ops.where(m, y_true[:, 1], 0.0) - ops.where(m, y_pred[:, 1], 0.0)
    sq = ops.where(m, ops.square(err), 0.0)
    n = ops.cast(ops.shape(p_true)[0], y_pred.dtype)
    return 0.7 * bce + 0.3 * sq * ops.stop_gradient(ops.divide_no_nan(n, ops.sum(m_f)))


def compare(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fa`` and ``fb``, run alternately so that drift in the
    machine's load affects both alike."""
    fa(), fb()  # warm up: trace and compile
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def bench_loss_alone(batch: int, jit: bool, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    y_true = np.stack([rng.integers(0, 2, batch), rng.normal(size=batch)], 1).astype("float32")
    y_pred = tf.Variable(rng.uniform(0.05, 0.95, (batch, 2)).astype("float32"))
    formula = lossdsl.compile_loss(FORMULA, units=UNITS)

    def step_for(loss_fn):
        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                value = ops.mean(loss_fn(y_true, y_pred))
            return value, tape.gradient(value, y_pred)

        return lambda: [t.numpy() for t in step()]

    return compare(step_for(formula.call), step_for(hand_written), repeats)


def bench_fit(repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4096, 16)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1]], 1).astype("float32")

    def fit_for(loss):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        h = keras.layers.Dense(32, activation="relu")(inputs)
        out = keras.layers.Concatenate()(
            [keras.layers.Dense(1, activation="sigmoid")(h), keras.layers.Dense(1)(h)]
        )
        model = keras.Model(inputs, out)
        model.compile(optimizer="adam", loss=loss)
        return lambda: model.fit(x, y, batch_size=128, epochs=1, verbose=0)

    return compare(
        fit_for(lossdsl.compile_loss(FORMULA, units=UNITS)), fit_for(hand_written), repeats
    )


def bench_front_end(n: int) -> float:
    formulas = [
        f"{i % 7 + 1}*bce(presence) + 0.{i % 9 + 1}*mse(loc) where pred(presence) >= 0.{i}"
        for i in range(n)
    ]
    start = time.perf_counter()
    for f in formulas:
        lossdsl.validate(f, units=UNITS)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} cpus")
    print(f"formula: {FORMULA}\n")
    print(f"{'measurement':38} {'formula':>10} {'by hand':>10} {'ratio':>7}")
    for batch in (256, 65536):
        for jit in (False, True):
            a, b = bench_loss_alone(batch, jit, args.repeats)
            label = f"loss+grad, batch {batch}, jit={jit}"
            print(f"{label:38} {a * 1e3:8.3f}ms {b * 1e3:8.3f}ms {a / b:7.2f}")
    a, b = bench_fit(max(3, args.repeats // 3))
    print(f"{'fit epoch (4096 rows, batch 128)':38} {a * 1e3:8.1f}ms {b * 1e3:8.1f}ms {a / b:7.2f}")
    print(f"\nparse + validate: {bench_front_end(2000):,.0f} distinct formulas/s")


if __name__ == "__main__":
    main()
