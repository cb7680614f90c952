"""Every lossdsl measurement, in one run: ``make bench``.

What it measures, each against a hand-written equivalent in the same run,
alternating the two sides and quoting medians:

1. loss evaluation at batch 2**20 (value of the mean loss, forward only) for
   six formulas, under ``tf.function`` without and with ``jit_compile=True``,
   and under ``jax.jit`` when jax is installed (in a subprocess: a process has
   one Keras backend); each beside its floor, the bytes it must read
   (``y_true`` and ``y_pred`` once) over the read bandwidth measured here;
2. dense prediction (``bench_dense.py``): a RetinaNet loss (label layouts, aggregates over
   each image's anchors, ``divide_no_nan``) against the keras-io example's loss, as written
   there and NaN-safe, and a segmentation loss (``dice`` and a per-image ``mean``): the mean
   loss under ``tf.function`` without and with XLA, and the loss with its gradient, with
   the operations after Grappler by kind;
3. one ``model.fit`` epoch of a small MLP with each loss;
4. the first call: tracing (graph) and tracing plus XLA compiling;
5. the front end, in a process without Keras (``bench_validate.py``): a bare
   Lark parse, the yardstick, and beside it ``parse``, the checks,
   ``validate`` on distinct formulas and from its cache, and ``check --stdin``,
   as rates and as ratios to the Lark parse's rate; then ``compile_loss`` (no
   tracing) and the import time of ``lossdsl`` alone;
6. hostile input (``bench_hostile.py``, in a process without Keras): the CPU time of every
   case of ``tests/cases/hostile/`` through every entry point, the peak memory of the memory
   cases, and what the caches hold when full.

It prints one table and writes it to ``benchmarks/RESULTS.md`` with the date
and the machine. Nothing here is a test: no figure here fails a build.

    .venv/bin/python benchmarks/bench.py [--quick] [--no-write] [--dense]

``--dense`` runs only the dense-prediction rows and prints them (RESULTS.md is left as it is).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_dense  # beside this file, on the path of a script run
import bench_validate
import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 2**20
WIDTH = 8
UNITS = {"presence": 0, "loc": 1, "box": [2, 5], "cls": [5, 8]}
PARAMS = {"alpha": 0.7, "beta": 0.2}
FIT_BATCH = 256


# -- the comparisons: a formula and the same loss written by hand -----------------------------


def _cases() -> list[dict[str, Any]]:
    """Built lazily: the hand-written losses need keras.ops."""
    import keras
    from keras import ops

    def weighted_sum(y_true, y_pred):
        # 0.7 BCE + 0.3 MSE, both per sample.
        bce = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        mse = ops.square(y_true[:, 1] - y_pred[:, 1])
        return 0.7 * bce + 0.3 * mse

    def conditional_mask(y_true, y_pred):
        # BCE everywhere, and the location's MSE only where presence is predicted
        # (a mean over the whole batch: where_mean="batch").
        bce = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        mask = ops.cast(ops.greater_equal(y_pred[:, 0], 0.5), y_pred.dtype)
        return bce + ops.square(y_true[:, 1] - y_pred[:, 1]) * mask

    def four_terms(y_true, y_pred, alpha=0.7, beta=0.2):
        box_t, box_p = y_true[:, 2:5], y_pred[:, 2:5]
        huber = keras.losses.huber(box_t, box_p, delta=0.5)
        mse = ops.square(y_true[:, 1] - y_pred[:, 1])
        bce = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        m = ops.equal(y_true[:, 0], 1.0)
        mae = ops.where(m, ops.mean(ops.abs(box_t - box_p), axis=-1), 0.0)
        n = ops.cast(ops.shape(m)[0], y_pred.dtype)
        scale = ops.divide_no_nan(n, ops.sum(ops.cast(m, y_pred.dtype)))
        return alpha * huber + (1 - alpha) * mse + beta * bce + mae * scale

    def conditional_mask_nan_safe(y_true, y_pred):
        # What lossdsl guarantees, by hand: the rows the mask drops are replaced
        # before the term is computed, so a NaN there cannot reach the gradient.
        bce = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        m = ops.greater_equal(y_pred[:, 0], 0.5)
        t = ops.where(m, y_true[:, 1], 0.0)
        p = ops.where(m, y_pred[:, 1], 0.5)
        return bce + ops.where(m, ops.square(t - p), 0.0)

    def four_terms_nan_safe(y_true, y_pred, alpha=0.7, beta=0.2):
        box_t, box_p = y_true[:, 2:5], y_pred[:, 2:5]
        huber = keras.losses.huber(box_t, box_p, delta=0.5)
        mse = ops.square(y_true[:, 1] - y_pred[:, 1])
        bce = ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])
        m = ops.equal(y_true[:, 0], 1.0)
        m2 = ops.expand_dims(m, -1)
        safe_t, safe_p = ops.where(m2, box_t, 0.0), ops.where(m2, box_p, 0.5)
        mae = ops.where(m, ops.mean(ops.abs(safe_t - safe_p), axis=-1), 0.0)
        n = ops.cast(ops.shape(m)[0], y_pred.dtype)
        scale = ops.divide_no_nan(n, ops.sum(ops.cast(m, y_pred.dtype)))
        return alpha * huber + (1 - alpha) * mse + beta * bce + mae * scale

    def cce_and_bce(y_true, y_pred):
        cce = keras.losses.categorical_crossentropy(y_true[:, 5:8], y_pred[:, 5:8])
        return cce + ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0])

    def naive_repeats(y_true, y_pred):
        # Written the way a loss grows: each term slices afresh, the error is
        # computed three times, and constants are left as written.
        a = 2 * ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0]) * 0.25
        b = ops.square(y_pred[:, 1] - y_true[:, 1]) * 0.5 * 2
        c = ops.abs(y_pred[:, 1] - y_true[:, 1]) * 3 / 2
        d = ops.log(1 + ops.square(y_pred[:, 1] - y_true[:, 1]))
        return a + b + c + d

    def naive_repeats_where(y_true, y_pred):
        # The same, with the mask built from the column the loss also reads.
        a = 2 * ops.binary_crossentropy(y_true[:, 0], y_pred[:, 0]) * 0.25
        b = ops.square(y_pred[:, 1] - y_true[:, 1]) * 0.5 * 2
        mask = ops.cast(ops.greater(y_pred[:, 0], 0.5), y_pred.dtype)
        c = ops.abs(y_pred[:, 1] - y_true[:, 1]) * mask
        return a + b + c

    return [
        {
            "name": "weighted sum",
            "formula": "0.7*bce(presence) + 0.3*mse(loc)",
            "hand": weighted_sum,
        },
        {
            "name": "conditional mask",
            "formula": "bce(presence) + mse(loc) where pred(presence) >= 0.5",
            "where_mean": "batch",
            "hand": conditional_mask,
            "hand_nan_safe": conditional_mask_nan_safe,
        },
        {
            "name": "four terms",
            "formula": "alpha*huber(box, delta=0.5) + (1 - alpha)*mse(loc) + beta*bce(presence)"
            " + mae(box) where true(presence) == 1",
            "hand": four_terms,
            "hand_nan_safe": four_terms_nan_safe,
        },
        {"name": "cce + bce", "formula": "cce(cls) + bce(presence)", "hand": cce_and_bce},
        {
            "name": "repeats, naive by hand",
            "formula": "2*bce(presence)*0.25 + square(pred(loc) - true(loc))*0.5*2"
            " + abs(pred(loc) - true(loc))*3/2 + log(1 + square(pred(loc) - true(loc)))",
            "hand": naive_repeats,
            "eager": True,
        },
        {
            "name": "repeats + where, naive by hand",
            "formula": "2*bce(presence)*0.25 + square(pred(loc) - true(loc))*0.5*2"
            " + abs(pred(loc) - true(loc)) where pred(presence) > 0.5",
            "where_mean": "batch",
            "hand": naive_repeats_where,
            "eager": True,
        },
    ]


def _evaluation_cases() -> list[dict[str, Any]]:
    """Each case, and for a where-term also against a hand-written loss with the
    same guarantee as lossdsl's (a NaN in a masked row reaches neither value nor
    gradient), which a mask multiply does not give. The four terms twice more:
    the formula with numbers where it has parameters, and the hand-written loss
    with its parameters in variables, as lossdsl keeps them (so that a schedule
    can change them without a new trace)."""
    import keras

    out = []
    for case in _cases():
        out.append(case)
        if "hand_nan_safe" in case:
            out.append({**case, "name": f"{case['name']}, NaN-safe", "hand": case["hand_nan_safe"]})
    at = next(i for i, c in enumerate(out) if c["name"] == "four terms, NaN-safe")
    safe = out[at]
    alpha = keras.Variable(PARAMS["alpha"], trainable=False, name="alpha")
    beta = keras.Variable(PARAMS["beta"], trainable=False, name="beta")
    with_numbers = safe["formula"].replace("alpha", str(PARAMS["alpha"]))
    out[at + 1 : at + 1] = [
        {
            **safe,
            "name": "four terms, NaN-safe, numbers for the parameters",
            "formula": with_numbers.replace("beta", str(PARAMS["beta"])),
        },
        {
            **safe,
            "name": "four terms, NaN-safe, variables for the parameters by hand",
            "hand": lambda t, p: safe["hand"](t, p, alpha=alpha, beta=beta),
        },
    ]
    return out


def _data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(0, 1, (batch, WIDTH)).astype("float32")
    y_true[:, 0] = rng.integers(0, 2, batch)
    y_true[:, 5:8] = np.eye(3, dtype="float32")[rng.integers(0, 3, batch)]
    y_pred = rng.uniform(0.02, 0.98, (batch, WIDTH)).astype("float32")
    return y_true, y_pred


def _loss_of(case: dict[str, Any]) -> Any:
    import lossdsl

    return lossdsl.compile_loss(
        case["formula"],
        units=UNITS,
        params={k: v for k, v in PARAMS.items() if k in case["formula"]},
        where_mean=case.get("where_mean", "selected"),
    )


# -- timing -----------------------------------------------------------------------------------


def alternate_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, the functions run in turn so that
    drift in the machine's load touches all of them alike (after one warm-up).
    The order flips every round (A B, B A, ...), so neither side always runs
    first, right after the other's garbage."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for i in range(repeats):
        for k in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return times


def paired_ratios(times: dict[str, list[float]]) -> list[float]:
    """lossdsl / by hand for each round: the two calls of a round ran side by
    side, so a slow minute of the machine slows both and cancels out."""
    return [a / b for a, b in zip(times["lossdsl"], times["hand"], strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function (see ``alternate_times``)."""
    return {k: statistics.median(v) for k, v in alternate_times(fns, repeats).items()}


def _tf_evaluations(repeats: int) -> list[dict[str, Any]]:
    import tensorflow as tf
    from keras import ops

    y_true_np, y_pred_np = _data(BATCH)
    y_true, y_pred = tf.constant(y_true_np), tf.constant(y_pred_np)
    nbytes = y_true_np.nbytes + y_pred_np.nbytes

    # Read bandwidth: the fastest of three ways to read both tensors once. The
    # floor of a loss evaluation is the bytes over the best of them.
    probes = {
        "TensorFlow graph sum": tf.function(lambda t, p: ops.sum(t) + ops.sum(p)),
        "XLA sum": tf.function(lambda t, p: ops.sum(t) + ops.sum(p), jit_compile=True),
    }
    reads = alternate(
        {
            **{k: (lambda f=f: f(y_true, y_pred).numpy()) for k, f in probes.items()},
            "NumPy sum, one thread": lambda: y_true_np.sum() + y_pred_np.sum(),
        },
        repeats,
    )
    floor = min(reads.values())
    rows = [
        {
            "section": "bandwidth",
            "what": f"read y_true and y_pred once: {k}",
            "seconds": v,
            "gbps": nbytes / v / 1e9,
        }
        for k, v in reads.items()
    ]
    for case in _evaluation_cases():
        loss = _loss_of(case)
        want = np.mean(np.asarray(case["hand"](y_true, y_pred)), dtype=np.float64)
        got = float(ops.mean(loss.call(y_true, y_pred)))
        assert np.isclose(got, want, rtol=1e-4), (case["name"], got, want)
        for jit in (None, False, True) if case.get("eager") else (False, True):
            if jit is None:  # eagerly: no graph optimiser merges repeated work
                fns = {
                    "lossdsl": lambda t, p, f=loss.call: ops.mean(f(t, p)),
                    "hand": lambda t, p, f=case["hand"]: ops.mean(f(t, p)),
                }
                mode = "eager"
            else:
                mode = "tf.function, XLA" if jit else "tf.function, graph"
                fns = _forward(loss.call, case["hand"], jit)
            times = alternate_times(
                {k: (lambda f=f: f(y_true, y_pred).numpy()) for k, f in fns.items()}, repeats
            )
            graph_ops = {}
            if jit is False:
                graph_ops = {
                    "ops": _grappler_ops(fns["lossdsl"].python_function, y_true, y_pred),
                    "hand ops": _grappler_ops(fns["hand"].python_function, y_true, y_pred),
                }
            rows.append(
                {
                    "section": "evaluation",
                    "backend": "tensorflow",
                    "mode": mode,
                    "case": case["name"],
                    **{k: statistics.median(v) for k, v in times.items()},
                    "ratio": statistics.median(paired_ratios(times)),
                    "floor": floor,
                    **graph_ops,
                }
            )
    return rows


def _jax_evaluations(repeats: int) -> list[dict[str, Any]]:
    """Run in a subprocess with KERAS_BACKEND=jax (see ``--jax-part``)."""
    import jax
    from keras import ops

    y_true_np, y_pred_np = _data(BATCH)
    y_true, y_pred = jax.device_put(y_true_np), jax.device_put(y_pred_np)
    floor = float("nan")  # the machine's floor is set from TensorFlow's probes
    rows = []
    for case in _evaluation_cases():
        loss = _loss_of(case)
        fns = {
            "lossdsl": jax.jit(lambda t, p, f=loss.call: ops.mean(f(t, p))),
            "hand": jax.jit(lambda t, p, f=case["hand"]: ops.mean(f(t, p))),
        }
        want = float(fns["hand"](y_true, y_pred))
        assert np.isclose(float(fns["lossdsl"](y_true, y_pred)), want, rtol=1e-4), case["name"]
        times = alternate_times(
            {k: (lambda f=f: f(y_true, y_pred).block_until_ready()) for k, f in fns.items()},
            repeats,
        )
        rows.append(
            {
                "section": "evaluation",
                "backend": "jax",
                "mode": "jax.jit",
                "case": case["name"],
                **{k: statistics.median(v) for k, v in times.items()},
                "ratio": statistics.median(paired_ratios(times)),
                "floor": floor,
            }
        )
    return rows


DENSE_MODES = ("forward, graph", "forward, XLA", "loss + gradient, graph")


def _dense_evaluations(repeats: int) -> list[dict[str, Any]]:
    """The dense-prediction comparisons (``bench_dense``): the mean loss in graph mode and
    under XLA, and the loss with its gradient w.r.t. ``y_pred`` in graph mode, each with
    the operations after Grappler, by kind, where it runs as a graph."""
    import tensorflow as tf

    import lossdsl

    rows = []
    for case in bench_dense.cases():
        arrays = case["data"]()
        y_true, y_pred = (tf.constant(a) for a in arrays)
        loss = lossdsl.compile_loss(case["formula"], units=case["units"])
        _check_dense(case, loss, arrays)
        at_least = arrays[1].size // 4  # "large": the logits, the pixels
        for mode in DENSE_MODES:
            if mode.startswith("forward"):
                fns = _forward(loss.call, case["hand"], jit=mode.endswith("XLA"))
                traced = {k: f.python_function for k, f in fns.items()}
            else:
                traced = {
                    "lossdsl": _loss_and_gradient(loss),
                    "hand": _loss_and_gradient(case["hand"]),
                }
                fns = {k: tf.function(f, autograph=False) for k, f in traced.items()}
            calls, n = _calls(fns, y_true, y_pred)
            times = {k: [t / n for t in v] for k, v in alternate_times(calls, repeats).items()}
            q1, ratio, q3 = quartiles(paired_ratios(times))
            kinds, large = {}, {}
            if "graph" in mode:
                for k, f in traced.items():
                    kinds[k], large[k] = _op_kinds(f, y_true, y_pred, large=at_least)
            rows.append(
                {
                    "section": "dense",
                    "case": case["name"],
                    "same": case["same"],
                    "mode": mode,
                    **{k: statistics.median(v) for k, v in times.items()},
                    "ratio": ratio,
                    "q1": q1,
                    "q3": q3,
                    "kinds": kinds,
                    "large": large,
                }
            )
    return rows


def _calls(
    fns: dict[str, Callable[..., Any]], *args: Any, at_least: float = 0.25
) -> tuple[dict[str, Callable[[], Any]], int]:
    """Each function called on ``args``, returning its first output (the loss) as NumPy so
    that the call has run to its end; ``n`` times in a row (returned beside them), so that a
    timed run lasts about ``at_least`` seconds or more: a shared machine's load changes from
    one millisecond to the next. A run's time over ``n`` is a call's."""
    import tensorflow as tf

    def once(f: Callable[..., Any]) -> Any:
        return tf.nest.flatten(f(*args))[0].numpy()

    for f in fns.values():  # traced, and XLA-compiled, before the call timed below
        once(f)
    start = time.perf_counter()
    once(fns["hand"])
    n = max(1, round(at_least / (time.perf_counter() - start)))
    return {k: (lambda f=f: [once(f) for _ in range(n)]) for k, f in fns.items()}, n


def _check_dense(case: dict[str, Any], loss: Any, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    """Before timing, once: lossdsl's value of each example is the hand-written loss's on
    the benchmark data, within float32 rounding; and where the case has masks, a NaN or inf
    in the inputs they drop leaves lossdsl's gradient finite, and the hand-written loss's
    finite exactly when it is the NaN-safe one."""
    import tensorflow as tf

    got, want = (np.asarray(f(*arrays)) for f in (loss.call, case["hand"]))
    assert got.shape == want.shape, (case["name"], got.shape, want.shape)
    assert np.allclose(got, want, rtol=1e-5, atol=0), (case["name"], got, want)
    if case.get("poisoned") is None:
        return
    t, p = (tf.constant(a) for a in case["poisoned"](*arrays))
    finite = {
        k: bool(np.all(np.isfinite(np.asarray(_loss_and_gradient(f)(t, p)[1]))))
        for k, f in (("lossdsl", loss), ("hand", case["hand"]))
    }
    assert finite == {"lossdsl": True, "hand": case["same"]}, (case["name"], finite)


def _fit_epochs(repeats: int) -> list[dict[str, Any]]:
    import keras

    rng = np.random.default_rng(1)
    rows_n = 2**15
    x = rng.normal(size=(rows_n, 16)).astype("float32")
    y, _ = _data(rows_n, seed=2)

    def fit_for(loss: Any) -> Callable[[], Any]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        h = keras.layers.Dense(64, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(WIDTH, activation="sigmoid")(h))
        model.compile(optimizer="adam", loss=loss)
        return lambda: model.fit(x, y, batch_size=FIT_BATCH, epochs=1, verbose=0)

    out = []
    steps = rows_n // FIT_BATCH
    for case in _fit_cases():
        fits = {"lossdsl": fit_for(_loss_of(case)), "hand": fit_for(case["hand"])}
        times = alternate_times(fits, repeats)
        q1, ratio, q3 = quartiles(paired_ratios(times))
        extra = _loss_step_extra(case, repeats)
        step = statistics.median(times["hand"]) / steps
        out.append(
            {
                "section": "fit",
                "case": case["name"],
                **{k: statistics.median(v) for k, v in times.items()},
                "ratio": ratio,
                "q1": q1,
                "q3": q3,
                **{f"{k} min": min(v) for k, v in times.items()},
                "step": step,
                "extra": extra,
                "bound": 1 + extra / step,
                "ops": _step_ops(_loss_of(case)),
                "hand ops": _step_ops(case["hand"]),
            }
        )
    return out


def _fit_cases() -> list[dict[str, Any]]:
    """The evaluation cases that are not about eager mode."""
    return [c for c in _evaluation_cases() if not c.get("eager")]


def _forward(lossdsl_fn: Callable[..., Any], hand_fn: Callable[..., Any], jit: bool) -> Any:
    """Each side's mean loss under ``tf.function``, with XLA when ``jit``."""
    import tensorflow as tf
    from keras import ops

    return {
        "lossdsl": tf.function(lambda t, p: ops.mean(lossdsl_fn(t, p)), jit_compile=jit),
        "hand": tf.function(lambda t, p: ops.mean(hand_fn(t, p)), jit_compile=jit),
    }


def _loss_and_gradient(loss: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    """A training step's loss part, ``(t, p) -> (loss, its gradient w.r.t. p)``, for a
    ``keras.losses.Loss`` or a function (wrapped as ``model.compile(loss=fn)`` wraps it)."""
    import keras
    import tensorflow as tf
    from keras.src.losses.losses import LossFunctionWrapper

    if not isinstance(loss, keras.losses.Loss):
        loss = LossFunctionWrapper(loss)

    def step(t: Any, p: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = loss(t, p)
        return value, tape.gradient(value, p)

    return step


def _step_ops(loss: Callable[..., Any]) -> int | None:
    """Operations TensorFlow runs for the loss and its gradient in a training
    step at the fit's batch size (see ``_grappler_ops``)."""
    import tensorflow as tf

    y_true, y_pred = (tf.constant(a) for a in _data(FIT_BATCH, seed=3))
    return _grappler_ops(_loss_and_gradient(loss), y_true, y_pred)


def _grappler_graph(fn: Callable[..., Any], *args: Any) -> tuple[Any, Any] | None:
    """The graph TensorFlow runs for ``tf.function(fn)(*args)``: the traced graph after
    Grappler, the optimiser every ``tf.function`` call goes through (constant folding,
    pruning, merging), beside the traced graph itself; ``None`` where the private API it
    uses is missing."""
    import tensorflow as tf

    try:
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.grappler import tf_optimizer
    except ImportError:  # pragma: no cover - private modules of one TF version
        return None
    concrete = tf.function(fn, autograph=False).get_concrete_function(*args)
    graph = concrete.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    meta.collection_def["train_op"].node_list.value.extend(t.name for t in concrete.outputs)
    return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta), graph


def _grappler_ops(fn: Callable[..., Any], *args: Any) -> int | None:
    """How many operations TensorFlow runs for ``tf.function(fn)(*args)`` (see
    ``_grappler_graph`` and ``_counted``). Exact, whatever the machine's load."""
    graphs = _grappler_graph(fn, *args)
    return None if graphs is None else len(_counted(graphs[0].node))


def _counted(nodes: Any) -> list[Any]:
    """The nodes, with each in-place accumulation that Grappler's memory optimiser made of an
    ``AddN`` of large tensors counted as that one ``AddN``: ``X/tmp_var``
    (TemporaryVariable), ``X/tmp_var_zeros``, ``X/tmp_var_initializer`` (Assign), one
    ``X/tmp_var_accum_i`` (AssignAdd) per input and ``X`` (DestroyTemporaryVariable) do the
    same additions. Whether it rewrites an ``AddN`` depends on its estimate of the whole
    graph's peak memory, not on the additions."""
    rewritten = {n.name for n in nodes if n.op == "DestroyTemporaryVariable"}
    return [n for n in nodes if n.name in rewritten or n.name.split("/tmp_var")[0] not in rewritten]


def _op_kinds(fn: Callable[..., Any], *args: Any, large: int) -> tuple[Counter[str], Counter[str]]:
    """The operations of ``_grappler_graph`` counted by type (``Mul``, ``SelectV2``, ...):
    all of them, and those whose output has at least ``large`` values (by its shape in the
    traced graph; a node that Grappler made anew counts in the first only)."""
    graphs = _grappler_graph(fn, *args)
    if graphs is None:
        return Counter(), Counter()
    optimised, traced = graphs
    sizes: dict[str, int] = {}
    for op in traced.get_operations():
        if op.outputs and op.outputs[0].shape.is_fully_defined():
            sizes[op.name] = op.outputs[0].shape.num_elements()
    nodes = _counted(optimised.node)

    def kind(node: Any) -> str:
        return "AddN" if node.op == "DestroyTemporaryVariable" else node.op

    return (
        Counter(kind(node) for node in nodes),
        Counter(kind(node) for node in nodes if sizes.get(node.name, 0) >= large),
    )


def _loss_step_extra(case: dict[str, Any], repeats: int, calls: int = 400) -> float:
    """Seconds lossdsl's loss adds to a training step over the hand-written one:
    the loss and its gradient at the fit's batch size, under ``tf.function`` as
    in ``fit``. The median over rounds of the difference of two runs of
    ``calls`` calls made side by side; what both pay (the call itself) cancels."""
    import tensorflow as tf

    y_true_np, y_pred_np = _data(FIT_BATCH, seed=3)
    y_true, y_pred = tf.constant(y_true_np), tf.constant(y_pred_np)

    def loss_and_gradient(loss: Callable[..., Any]) -> Callable[[], Any]:
        step = tf.function(_loss_and_gradient(loss), autograph=False)

        def run() -> None:
            for _ in range(calls):
                step(y_true, y_pred)

        return run

    fns = {"lossdsl": loss_and_gradient(_loss_of(case)), "hand": loss_and_gradient(case["hand"])}
    times = alternate_times(fns, repeats)
    return statistics.median(
        (a - b) / calls for a, b in zip(times["lossdsl"], times["hand"], strict=True)
    )


def _first_calls(repeats: int) -> list[dict[str, Any]]:
    import tensorflow as tf
    from keras import ops

    y_true_np, y_pred_np = _data(1024)
    y_true, y_pred = tf.constant(y_true_np), tf.constant(y_pred_np)
    out = []
    for case in _cases()[:4]:
        for jit in (False, True):

            def first_call(fn: Callable[..., Any], jit: bool = jit) -> Callable[[], Any]:
                # A new tf.function each time: the call traces (and compiles) afresh.
                def traced(yt: Any, yp: Any) -> Any:
                    return ops.mean(fn(yt, yp))

                return lambda: tf.function(traced, jit_compile=jit)(y_true, y_pred).numpy()

            loss = _loss_of(case)
            t = alternate(
                {"lossdsl": first_call(loss.call), "hand": first_call(case["hand"])}, repeats
            )
            mode = "trace + XLA compile" if jit else "trace"
            out.append({"section": "first call", "case": case["name"], "mode": mode, **t})
    return out


def _front_end(quick: bool) -> list[dict[str, Any]]:
    """The rows of ``bench_validate.py``, run in a process of its own (one without
    Keras, as a service that only validates is), then ``compile_loss`` and the
    import time of ``lossdsl``."""
    import lossdsl

    n, rounds = (200, 3) if quick else (1000, 9)
    cmd = [sys.executable, str(HERE / "bench_validate.py"), "--json", "--n", str(n)]
    done = subprocess.run(
        [*cmd, "--rounds", str(rounds)], capture_output=True, text=True, check=True
    )
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [{"section": "front end", **worker}]

    repeats = 3 if quick else 7
    values = []
    for salt in range(repeats):
        bench_validate.clear_caches()
        items = bench_validate.formulas(200, 10_000 + salt)
        start = time.perf_counter()
        for item in items:
            lossdsl.compile_loss(item, units=bench_validate.UNITS)
        values.append((time.perf_counter() - start) / len(items))
    bench_validate.clear_caches()
    rows.append(
        {
            "section": "front end, more",
            "what": "compile_loss (no tracing), distinct formulas",
            "seconds": statistics.median(values),
        }
    )
    code = (
        "import sys, time; t = time.perf_counter(); import lossdsl; "
        "print(time.perf_counter() - t, 'keras' in sys.modules, 'tensorflow' in sys.modules)"
    )
    times = []
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        assert result[1:] == ["False", "False"], "import lossdsl loaded keras or tensorflow"
        times.append(float(result[0]))
    rows.append(
        {
            "section": "front end, more",
            "what": "import lossdsl (no keras)",
            "seconds": statistics.median(times),
        }
    )
    return rows


def _hostile(quick: bool) -> str:
    """The section ``bench_hostile.py`` prints, run in a process of its own (without Keras)."""
    cmd = [sys.executable, str(HERE / "bench_hostile.py"), "--repeats", "3" if quick else "5"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


# -- the report -----------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras

    versions = f"keras {keras.__version__}"
    try:
        import tensorflow as tf

        versions += f", tensorflow {tf.__version__}"
    except ImportError:
        pass
    try:
        import jax

        versions += f", jax {jax.__version__}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}"


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def report(rows: list[dict[str, Any]]) -> str:
    lines = []
    bw = [r for r in rows if r["section"] == "bandwidth"]
    lines += ["## Memory bandwidth (the floor of a loss evaluation)", ""]
    lines += ["| measurement | median | GB/s |", "|---|---:|---:|"]
    lines += [f"| {r['what']} | {_ms(r['seconds'])} | {r['gbps']:.1f} |" for r in bw]
    nbytes = 2 * BATCH * WIDTH * 4
    lines += [
        "",
        f"A loss evaluation at batch 2^20 with {WIDTH} float32 units must read `y_true` and "
        f"`y_pred` once, {nbytes / 2**20:.0f} MiB: its floor is the fastest line's time "
        f"(every cache line holds whole rows, so reading some columns reads them all).",
        "",
        "## Loss evaluation, batch 2^20 (mean loss, forward)",
        "",
        "*Ops* (graph mode): the operations TensorFlow runs for each side, after Grappler, "
        "lossdsl / by hand; the same count means the same work, whatever the timing says.",
        "",
        "| backend, mode | case | lossdsl | by hand | ratio | ops | lossdsl / floor "
        "| by hand / floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["section"] == "evaluation":
            ops = f"{r['ops']} / {r['hand ops']}" if r.get("ops") else ""
            lines.append(
                f"| {r['mode']} | {r['case']} | {_ms(r['lossdsl'])} | {_ms(r['hand'])} | "
                f"{r['ratio']:.3f} | {ops} | {r['lossdsl'] / r['floor']:.1f} | "
                f"{r['hand'] / r['floor']:.1f} |"
            )
    lines += ["", *_dense_report(rows)]
    lines += [
        "",
        "## One `model.fit` epoch (32,768 rows, batch 256, MLP 16-64-8)",
        "",
        "The two models train in turn, one epoch each; the ratio is the median over the "
        "rounds of each round's lossdsl epoch over its hand-written epoch, with the "
        "middle half of those ratios (quartiles) beside it, and the fastest epochs.",
        "",
        "| case | lossdsl | by hand | ratio | quartiles | fastest: lossdsl | by hand | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fits = [r for r in rows if r["section"] == "fit"]
    for r in fits:
        best = r["lossdsl min"] / r["hand min"]
        lines.append(
            f"| {r['case']} | {_ms(r['lossdsl'])} | {_ms(r['hand'])} | {r['ratio']:.3f} | "
            f"{r['q1']:.3f} to {r['q3']:.3f} | "
            f"{_ms(r['lossdsl min'])} | {_ms(r['hand min'])} | {best:.3f} |"
        )
    lines += [
        "",
        "The two steps differ only in the loss and its gradient. *Ops*: the operations "
        "TensorFlow runs for them, after Grappler (exact, whatever the machine's load). "
        "*Adds per step*: measured apart, at batch 256 under `tf.function`, lossdsl's time "
        "minus the hand-written loss's (the median over rounds of 400 calls a side); over the "
        "step time above it gives the epoch ratio the loss alone would make.",
        "",
        "| case | ops: lossdsl | by hand | step (by hand) | lossdsl adds per step "
        "| epoch ratio from that |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in fits:
        lines.append(
            f"| {r['case']} | {r['ops']} | {r['hand ops']} | {_ms(r['step'])} | "
            f"{_ms(r['extra'])} | {r['bound']:.3f} |"
        )
    lines += ["", "## First call (batch 1,024)", ""]
    lines += ["| case | what | lossdsl | by hand | ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if r["section"] == "first call":
            lines.append(
                f"| {r['case']} | {r['mode']} | {_ms(r['lossdsl'])} | {_ms(r['hand'])} | "
                f"{r['lossdsl'] / r['hand']:.2f} |"
            )
    lines += [
        "",
        "## Front end",
        "",
        "Typical two- to four-term formulas, all different, in a process without Keras, on one "
        "core (`benchmarks/bench_validate.py`). The yardstick is a bare Lark parse of other "
        'such formulas: `Lark(grammar_text(), parser="lalr", lexer="contextual")` '
        "building its own parse tree, with no transformer.",
        "",
    ]
    for r in rows:
        if r["section"] == "front end":
            lines += bench_validate.markdown(r["rows"], r["n"], r["rounds"], r["chunk"])
    lines += ["", "| what | median each | per second |", "|---|---:|---:|"]
    for r in rows:
        if r["section"] == "front end, more":
            lines.append(f"| {r['what']} | {_ms(r['seconds'])} | {1 / r['seconds']:,.0f} |")
    return "\n".join(lines) + "\n"


DENSE_TARGET = 1.05
"""The target for a dense row where the two sides compute the same thing: a ratio of at
most this, and the same operation count after Grappler."""


def _dense_report(rows: list[dict[str, Any]]) -> list[str]:
    dense = [r for r in rows if r["section"] == "dense"]
    images, anchors = bench_dense.RETINA_SHAPE
    lines = [
        "## Dense prediction: label layouts and aggregates",
        "",
        f"*RetinaNet*: batch {images}, {anchors:,} anchors, {bench_dense.RETINA_CLASSES} "
        f"classes; `y_true` ({images}, {anchors}, 5): 4 box targets and a class id (-1 "
        f"background, -2 ignored, else the class; {bench_dense.RETINA_POSITIVE:.0%} positive, "
        f"{bench_dense.RETINA_IGNORED:.0%} ignored), `y_pred` ({images}, {anchors}, "
        f"{4 + bench_dense.RETINA_CLASSES}): 4 box predictions and the logits. The formula, "
        f"with `units={bench_dense.RETINA_UNITS}`:",
        "",
        f"    {bench_dense.RETINA_FORMULA}",
        "",
        "By hand, the loss of the keras-io RetinaNet example in `keras.ops` "
        "(`benchmarks/bench_dense.py`), twice: *keras-io* as it is written there (the masks "
        "multiply the loss values: a NaN or inf in a masked anchor's inputs reaches the "
        "gradient, so it computes something other than the formula, as the checks below "
        "show), and *NaN-safe*: each term's masked anchors have their inputs replaced before "
        "the term is computed and the term selected with `where` after, as lossdsl does, a "
        "class id outside [0, 80) has no class (as lossdsl reads class indices; keras-io casts "
        "the id to an integer first, so -0.5 is class 0), and the formula's one division; that "
        "one computes the same thing. *Segmentation*: "
        f"`y` {bench_dense.SEG_SHAPE} (0/1 masks, sigmoid probabilities), "
        f"`{bench_dense.SEG_FORMULA}` with `units={bench_dense.SEG_UNITS}`, against "
        "`keras.losses.dice(y_true, y_pred, axis=(1, 2, 3)) + keras.ops.mean("
        "keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))`.",
        "",
        "Before timing, once: lossdsl's loss of each example equals the hand-written one's on "
        "this data within float32 rounding (rtol 1e-5), and with NaN and inf in what the masks "
        "drop (2,000 anchors of one image) lossdsl's gradient and the NaN-safe loss's are "
        "finite, keras-io's is not. *Forward*: the mean loss; *loss + gradient*: the mean "
        "loss and its gradient w.r.t. `y_pred` (a training step's loss part), under "
        "`tf.function`. Ratio: the median of the rounds' lossdsl / by hand, the quartiles "
        "beside it. *Ops*: the operations after Grappler, lossdsl / by hand (an in-place "
        "accumulation that Grappler's memory optimiser makes of an AddN of large tensors, "
        "depending on its estimate of the graph's memory, counts as that AddN); *large*: those of "
        "them whose output has at least a quarter as many values as `y_pred` (the logits' "
        "(8, 50000, 80), the masks' pixels), the ones that take the time.",
        "",
        "| case | mode | lossdsl | by hand | ratio | quartiles | ops | large |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in dense:
        ops, large = _op_counts(r, "kinds"), _op_counts(r, "large")
        lines.append(
            f"| {r['case']} | {r['mode']} | {_ms(r['lossdsl'])} | {_ms(r['hand'])} | "
            f"{r['ratio']:.3f} | {r['q1']:.3f} to {r['q3']:.3f} | "
            f"{'' if ops is None else f'{ops[0]} / {ops[1]}'} | "
            f"{'' if large is None else f'{large[0]} / {large[1]}'} |"
        )
    return [*lines, "", *_dense_verdict(dense), "", *DENSE_WHY]


def _op_counts(row: dict[str, Any], key: str) -> tuple[int, int] | None:
    kinds = row.get(key)
    if not kinds or not kinds["hand"]:
        return None
    return sum(kinds["lossdsl"].values()), sum(kinds["hand"].values())


def _kind_diff(a: Counter[str], b: Counter[str]) -> str:
    """``+n Kind`` for what ``a`` runs more, ``-n Kind`` for what ``b`` runs more."""

    def most_first(c: Counter[str]) -> list[tuple[str, int]]:
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))

    return ", ".join(
        [f"+{n} {k}" for k, n in most_first(a - b)] + [f"-{n} {k}" for k, n in most_first(b - a)]
    )


def _dense_verdict(dense: list[dict[str, Any]]) -> list[str]:
    """Whether the targets are met, and where the operation counts differ, by kind."""
    met, missed = [], []
    for r in (r for r in dense if r["same"]):
        ops = _op_counts(r, "kinds")
        why = []
        if r["ratio"] > DENSE_TARGET:
            why.append(f"ratio {r['ratio']:.3f}")
        if ops is not None and ops[0] > ops[1]:
            why.append(f"{ops[0]} / {ops[1]} ops")
        where = f"{r['case']}, {r['mode']}"
        (missed if why else met).append(f"{where} ({', '.join(why)})" if why else where)
    lines = [
        f"**Targets** (where the two compute the same thing, the NaN-safe RetinaNet and the "
        f"segmentation: a ratio of at most {DENSE_TARGET}, and the same operation count after "
        f"Grappler, or fewer): {'met' if not missed else 'not met'} in this run. "
        f"Met: {'; '.join(met) or 'none'}. Not met: {'; '.join(missed) or 'none'}.",
        "",
        "The operations after Grappler by kind, where the counts differ: + for what lossdsl "
        "runs more, - for what the hand-written loss runs more; all of them, then the large.",
        "",
    ]
    for r in dense:
        ops, large = _op_counts(r, "kinds"), _op_counts(r, "large")
        if ops is None or ops[0] == ops[1]:
            continue
        lines.append(
            f"* {r['case']}, {r['mode']}: all ({ops[0]} / {ops[1]}): "
            f"{_kind_diff(r['kinds']['lossdsl'], r['kinds']['hand'])}; large ({large[0]} / "
            f"{large[1]}): {_kind_diff(r['large']['lossdsl'], r['large']['hand']) or 'none'}."
        )
    return lines


DENSE_WHY = [
    "How lossdsl's graph matches the hand-written one's, read from the two graphs "
    "(`lossdsl/kernels.py`, `lossdsl/keras/loss_calls.py`, `lossdsl/keras/compiler.py`):",
    "",
    "* RetinaNet, on the logits (the large ones): for one-hot rows of class indices, "
    "lossdsl's `focal` selects `1 - p_t` and the class weight with `where(t == 1, ...)`, as "
    "keras-io does (`kernels.focal_column(..., one_hot=True)`; soft labels take Keras's "
    "arithmetic form `t + p (1 - 2t)`). It squares `1 - p_t` (Square) where keras-io's "
    "`(1 - pt) ** 2` becomes SquaredDifference. With the gradient lossdsl runs fewer "
    "operations than the hand-written loss (no Pow, and fewer Neg and Sub).",
    "* RetinaNet, per anchor (small): `80*focal(...)` over 80 classes and `4*huber(box)` over "
    "4 coordinates are each the loss's sum over its units (a constant times a mean over k "
    "units is the sum times the constant / k, and no multiplication when that is 1), as "
    "keras-io sums them; `huber` with `delta=1` skips Keras's multiplication by delta (exact); "
    "its test is `|e| <= delta` (LessEqual, keras-io's Less); `sum(1 where c)` casts the mask, "
    "as by hand.",
    "* Segmentation: the one-column unit `mask` is read as each input squeezed (a Squeeze, a "
    "reshape that copies nothing; `Context.column`), for `mean(bce(mask))`, and as the input "
    "itself for `dice(mask)`; `mean(...)` over positions known when traced is one Mean. By "
    "hand, Keras's bce takes a mean over the one-unit axis (a pass over every pixel) and "
    "then the mean over the pixels: the same count, one large reduction less for lossdsl.",
]
"""The reading of the differences ``_dense_verdict`` lists (static text: the counts above are
measured, this is what the graphs showed when it was written)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--jax-part", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--dense",
        action="store_true",
        help="only the dense-prediction rows, printed (RESULTS.md is left as it is)",
    )
    args = ap.parse_args()
    repeats = 5 if args.quick else 21
    dense_repeats = 3 if args.quick else 5  # seconds a call: fewer rounds
    if args.jax_part:
        print(json.dumps(_jax_evaluations(repeats)))
        return
    if args.dense:
        print("\n".join(_dense_report(_dense_evaluations(dense_repeats))))
        return
    rows = _tf_evaluations(repeats)
    try:
        import jax  # noqa: F401
    except ImportError:
        print("jax is not installed: no jax.jit figures", file=sys.stderr)
    else:
        env = {**os.environ, "KERAS_BACKEND": "jax"}
        cmd = [sys.executable, __file__, "--jax-part", *(["--quick"] if args.quick else [])]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        floor = min(r["seconds"] for r in rows if r["section"] == "bandwidth")
        # One floor for the machine: the best read measured (JAX's CPU sum is slower).
        rows += [{**r, "floor": floor} for r in json.loads(done.stdout.strip().splitlines()[-1])]
    rows += _dense_evaluations(dense_repeats)
    rows += _fit_epochs(3 if args.quick else 21)
    rows += _first_calls(3 if args.quick else 7)
    rows += _front_end(args.quick)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# lossdsl benchmarks\n\n{stamp}; {_machine()}.\n\n"
        "Medians; the two sides of each comparison alternate in one run. "
        "Ratio is lossdsl / by hand (below 1: lossdsl is faster), the median of the "
        "ratios of calls made side by side. "
        "Regenerate with `make bench`.\n\n" + report(rows) + "\n" + _hostile(args.quick)
    )
    print(text)
    if not args.no_write:
        (HERE / "RESULTS.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
