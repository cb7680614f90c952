"""Counts over the global batch under ``tf.distribute``.

Keras 3 runs the loss once per replica on the local batch, divides each
replica's sum by its *local* sample count, scales by ``1/replicas`` and sums the
gradients. That is the global mean only when every replica holds as many
samples, and a ``where`` term's selected count is only ever local. lossdsl's
per-sample values therefore carry a factor, computed here, that makes the
summed gradients those of one device holding the whole batch:

* every term: ``n_local * replicas / n_global``, which is 1 without a strategy
  or on an even split;
* a ``where`` term: its count of selected samples taken over all replicas.

Only TensorFlow needs this: JAX's ``DataParallel`` traces one SPMD program over
the global batch, and torch runs on one device in Keras. The branch is decided
in Python, at trace time, from static facts (the backend and the replica
context), never from tensor values.
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["global_sum", "replicas"]


def _replica_context() -> Any:
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def replicas() -> int:
    """How many replicas run this step in sync (1 outside ``tf.distribute``)."""
    ctx = _replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def global_sum(x: Any) -> Any:
    """``x`` summed over the replicas (``x`` itself outside ``tf.distribute``)."""
    ctx = _replica_context()
    if ctx is None:
        return x
    import tensorflow as tf

    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
