"""One SGD step on a global batch of 7 under tf.distribute.MultiWorkerMirroredStrategy, as
one of two worker processes on one CPU each: writes ``OUT/worker<index>.npz``.

    TF_CONFIG='{"cluster": {"worker": ["localhost:P0", "localhost:P1"]},
                "task": {"type": "worker", "index": 0}}' \
        python tests/probes/multiworker_probe.py OUT    # and index 1, at the same time

Two models are trained, each from the same fixed weights: one with lossdsl's
``bce(presence) + mse(loc) where true(presence) == 1`` and one with the same loss written
by hand the way Keras alone would (a masked mean over the batch the loss sees). The file
holds the global batch, the rows this worker's replica got, the initial weights and the
weights after each step. Run by tests/test_distribute.py, which computes the step of one
process holding the whole batch in NumPy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["KERAS_BACKEND"] = "tensorflow"
OUT = Path(sys.argv[1])
TASK = int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
if hasattr(os, "sched_setaffinity"):  # one CPU a worker
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[TASK % len(cpus)]})

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
# Before any other TensorFlow op: it reads TF_CONFIG and starts this worker's gRPC server.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras
import numpy as np

import lossdsl

FORMULA = "bce(presence) + mse(loc) where true(presence) == 1"
UNITS = {"presence": 0, "loc": [1, 3]}
# Seven rows, which the strategy splits 4 + 3 between the workers: three selected rows
# (presence 1) in the first four, one in the last three.
rng = np.random.default_rng(5)
X = rng.normal(size=(7, 4)).astype("float32")
PRESENCE = np.array([1, 1, 0, 1, 0, 1, 0], "float32")
Y = np.concatenate([PRESENCE[:, None], rng.normal(size=(7, 2))], axis=1).astype("float32")
W = rng.uniform(0.2, 2.0, size=7).astype("float32")
KERNEL = rng.normal(scale=0.5, size=(4, 3)).astype("float32")
BIAS = np.array([0.1, -0.2, 0.3], "float32")
LEARNING_RATE = 0.5


def keras_own(y_true: Any, y_pred: Any) -> Any:
    """The same loss written by hand: a masked mean over the batch this call sees."""
    ops = keras.ops
    selected = ops.cast(ops.equal(y_true[:, 0], 1.0), y_pred.dtype)
    bce = keras.losses.binary_crossentropy(y_true[:, :1], y_pred[:, :1])
    mse = keras.losses.mean_squared_error(y_true[:, 1:3], y_pred[:, 1:3])
    n = ops.cast(ops.shape(selected)[0], y_pred.dtype)
    return bce + mse * selected * ops.divide_no_nan(n, ops.sum(selected))


def model() -> keras.Model:
    """A sigmoid presence unit and two linear location units on 4 inputs, fixed weights."""
    inputs = keras.Input((4,))
    presence = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.Constant(KERNEL[:, :1]),
        bias_initializer=keras.initializers.Constant(BIAS[:1]),
    )(inputs)
    loc = keras.layers.Dense(
        2,
        kernel_initializer=keras.initializers.Constant(KERNEL[:, 1:]),
        bias_initializer=keras.initializers.Constant(BIAS[1:]),
    )(inputs)
    return keras.Model(inputs, keras.layers.Concatenate()([presence, loc]))


def step(loss: Any, batch: Any) -> list[np.ndarray]:
    """The weights after one SGD step from the fixed ones, on this worker's part of ``batch``."""
    with strategy.scope():
        m = model()
        m.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss, jit_compile=False)
        m.optimizer.build(m.trainable_variables)
    # Keras 3.15.1's `fit` and `train_on_batch` fail with more than one worker, on either
    # side of the step: `fit`'s symbolic build hands the whole (x, y, w) batch to
    # `strategy.reduce`, which takes no nest ("Attempt to convert a value (PerReplica...)"),
    # and the step's logs are reduced with `axis=0` although they are scalars ("Invalid
    # reduction dimension 0 for input with 0 dimensions"). The step itself is Keras's own
    # `train_step`, run here as `fit` runs it, on the batch the strategy gives this worker.
    tf.function(lambda b: strategy.run(m.train_step, args=(b,)))(batch)
    return [np.asarray(w) for w in m.get_weights()]


def main() -> None:
    data = tf.data.Dataset.from_tensor_slices((X, Y, W)).batch(len(X))
    batch = next(iter(strategy.experimental_distribute_dataset(data)))
    local = [np.asarray(strategy.experimental_local_results(t)[0]) for t in batch]
    ours = step(lossdsl.compile_loss(FORMULA, units=UNITS), batch)
    own = step(keras_own, batch)
    arrays = {f"initial_{i}": np.asarray(w) for i, w in enumerate(model().get_weights())}
    arrays.update({f"lossdsl_{i}": w for i, w in enumerate(ours)})
    arrays.update({f"keras_{i}": w for i, w in enumerate(own)})
    np.savez(
        OUT / f"worker{TASK}.npz",
        x=X,
        y=Y,
        w=W,
        local_x=local[0],
        local_y=local[1],
        local_w=local[2],
        learning_rate=LEARNING_RATE,
        replicas=strategy.num_replicas_in_sync,
        **arrays,
    )


if __name__ == "__main__":
    main()
