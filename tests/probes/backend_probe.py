"""Run lossdsl under the backend that ``KERAS_BACKEND`` selects and print one JSON
document to stdout. ``tests/test_backends.py`` runs it once per backend, each in
its own process, and compares the results with TensorFlow's.

    KERAS_BACKEND=jax .venv/bin/python tests/probes/backend_probe.py > jax.json
    KERAS_BACKEND=torch .venv/bin/python tests/probes/backend_probe.py values fit

This is a script, not a test module (pytest ignores ``tests/probes/``). Keras is
imported only in ``main()``, so ``tests/test_backends.py`` can load this file
without choosing a backend: the data and NumPy helpers at the top use NumPy
alone, and the tests use them.

The sections of the output (each ``{"error": traceback}`` if it raised):

* ``values``: for every case in ``CASES``, the per-sample values (``loss.call``),
  the reduced loss with a sample weight, and the gradient of
  ``sum(w * per_sample)`` with respect to ``y_pred`` by the backend's own
  autodiff, eagerly and compiled (``tf.function(jit_compile=True)`` or
  ``jax.jit``; on torch eager only, and ``compiled`` is ``null``); also
  ``loss.terms`` (weighted and raw), eagerly;
* ``fit``: three epochs of SGD on a two-unit model with fixed initial weights;
* ``schedule``: ``ParamSchedule`` per epoch and per batch with a learning rate of
  0, and ``set_param`` between two fits;
* ``term_metrics``: ``weighted_metrics=loss.term_metrics()``, then save and load;
* ``formula_model``: ``FormulaModel`` over two named outputs with a learned parameter and
  per-output sample weights: fit, evaluate, predict, then save and load.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

UNITS = {"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}
PARAMS = {"alpha": 0.7, "beta": 0.5}
N = 16

# (name, formula, options). Options: "where_mean", "params", "units" and "data":
# "plain"; "nan" (NaN labels, every column but presence, where presence == 0);
# "saturated" (presence predictions of exactly 0 and 1); "sequence" (the plain
# data as (4, 4, 9): batch, time, units); "examples" (the sequence data, with a
# weight per example, for formulas of aggregates); "indices" (the same, with the
# labels of cls, columns 6 to 8, as a class index in column 6: -2 to 2).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("bce", "bce(presence)", {}),
    ("bce_logits_smooth", "bce(u0, from_logits=true, label_smoothing=0.1)", {}),
    ("bce_slice", "bce(u[6:9], label_smoothing=0.2)", {}),
    ("cce", "cce(cls)", {}),
    ("cce_logits_smooth", "cce(cls, from_logits=true, label_smoothing=0.2)", {}),
    # Labels that do not sum to 1 (see KNOWN_TF_GRADIENT in test_backends.py).
    ("cce_logits_unnormalised", "cce(box, from_logits=true)", {}),
    ("focal", "focal(presence)", {}),
    ("focal_kw", "focal(u0, gamma=0.5, alpha=0.3, label_smoothing=0.05)", {}),
    ("focal_logits", "focal(presence, gamma=3, from_logits=true)", {}),
    ("mse_mae_slice", "mse(u[2:6]) + 0.5*mae(box)", {}),
    ("mape_msle", "0.01*mape(loc) + msle(loc)", {}),
    ("huber_log_cosh", "huber(box, delta=0.5) + log_cosh(box) + huber(loc)", {}),
    ("kld_poisson", "kld(cls) + poisson(loc)", {}),
    ("hinge", "hinge(presence) + squared_hinge(u0) + hinge(box)", {}),
    ("cosine", "cosine(box) + 1", {}),
    (
        "math",
        "log(1 + square(pred(loc) - true(loc))) + 0.5*max(mae(loc), 1e-3) / clip(pred(u1), 0.1, 10)"
        " + sqrt(abs(pred(loc) - true(loc)) + 1e-3) + exp(-pred(u0)) + min(pred(u0), true(u2))",
        {},
    ),
    (
        "arith",
        "(2*bce(presence) + mse(loc)) / 3 + pred(u3) * pred(u4) / (1 + square(true(u5)))"
        " - -0.5 * pred(u2) + 1e20 * 1e20 / 1e38 / 100",
        {},
    ),
    ("params", "alpha*bce(presence) + (1 - alpha)*mse(loc) + beta*(mse(box) where beta > 0)", {}),
    (
        "where_selected",
        "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1 and not "
        "(pred(presence) < 0.1 or true(loc) > 1.8) + cce(cls) where pred(u2) > 0 or true(u3) <= 0",
        {},
    ),
    (
        "where_batch",
        "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1 and not "
        "(pred(presence) < 0.1 or true(loc) > 1.8) + cce(cls) where pred(u2) > 0 or true(u3) <= 0",
        {"where_mean": "batch"},
    ),
    (
        "where_group_params",
        "beta*((bce(presence) + huber(box)) where pred(presence) >= 0.5 and alpha > 0.5)"
        " + mse(loc) where true(loc) > 100",  # selects nothing: contributes 0
        {},
    ),
    (
        "nan_selected",
        "bce(presence) + (mse(loc) + cosine(box)) where true(presence) == 1",
        {"data": "nan"},
    ),
    (
        "nan_batch",
        "bce(presence) + (mape(loc) + kld(cls)) where true(presence) == 1",
        {"data": "nan", "where_mean": "batch"},
    ),
    (
        "saturated",
        "bce(presence) + focal(presence, gamma=0.5) + focal(presence)",
        {"data": "saturated"},
    ),
    ("sequence", "bce(presence) + mse(loc) where true(presence) == 1", {"data": "sequence"}),
    ("width_from_y_pred", "mse(u[0:9]) + 0.1*huber(u8) where pred(u0) > 0.5", {"units": None}),
    (
        "aggregates",
        "mean(bce(presence)) + sum(mse(loc) where true(presence) == 1)"
        " + mean(huber(box) where true(presence) == 1, batch=true)"
        " + divide_no_nan(sum(mae(loc)), sum(1 where pred(presence) > 2))",
        {"data": "examples"},
    ),
    (
        "example_where",
        "mean(bce(presence)) where sum(true(presence)) > 1 + 0.5*mean(mse(loc), batch=true)",
        {"data": "examples"},
    ),
    (
        "dice_tversky",
        "dice(cls) + tversky(cls, alpha=0.3, beta=0.7) + dice(presence, batch=true)",
        {"data": "examples"},
    ),
    (
        "class_indices",
        "cce(ix, ignore_class=-1) + focal(ix, from_logits=true) + categorical_hinge(ix)"
        " + focal_cce(ix) + mse(ix) where true(ix) != -2",
        {"data": "indices", "units": {"ix": {"pred": [6, 9], "true": 6}}},
    ),
    (
        "retinanet",
        "divide_no_nan(sum(3*focal(ix, from_logits=true, alpha=0.25, gamma=2) where true(ix) != -2)"
        " + sum(4*huber(box) where true(ix) >= 0), sum(1 where true(ix) >= 0))",
        {"data": "indices", "units": {"box": [2, 6], "ix": {"pred": [6, 9], "true": 6}}},
    ),
]


def make_data() -> dict[str, np.ndarray]:
    """Fixed float32 data of shape (N, 9): a presence probability, a positive
    location, a box of 4 reals and 3 one-hot classes."""
    rng = np.random.default_rng(20240611)
    presence = np.tile([1.0, 0.0], N // 2)
    rng.shuffle(presence)
    loc_t = rng.uniform(0.1, 2.0, N)
    box_t = rng.normal(size=(N, 4))
    cls_t = np.eye(3)[rng.integers(0, 3, N)]
    y_true = np.column_stack([presence, loc_t, box_t, cls_t])

    p_pred = rng.uniform(0.05, 0.95, N)
    loc_p = rng.uniform(0.1, 2.0, N)
    box_p = box_t + rng.normal(scale=0.8, size=(N, 4))
    logits = rng.normal(size=(N, 3))
    cls_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = np.column_stack([p_pred, loc_p, box_p, cls_p])

    nan_true = y_true.copy()
    nan_true[presence == 0, 1:] = np.nan
    saturated_pred = y_pred.copy()
    saturated_pred[:4, 0] = [0.0, 1.0, 0.0, 1.0]
    saturated_true = y_true.copy()
    saturated_true[:4, 0] = [0.0, 1.0, 1.0, 0.0]  # right, right, wrong, wrong

    f32 = np.float32
    return {
        "y_true": y_true.astype(f32),
        "y_pred": y_pred.astype(f32),
        "nan_true": nan_true.astype(f32),
        "saturated_true": saturated_true.astype(f32),
        "saturated_pred": saturated_pred.astype(f32),
        "weight": rng.uniform(0.2, 2.0, N).astype(f32),
    }


def case_inputs(
    data: dict[str, np.ndarray], which: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true, y_pred, sample_weight)`` for a case's ``data`` option."""
    y_true, y_pred, w = data["y_true"], data["y_pred"], data["weight"]
    if which == "nan":
        y_true = data["nan_true"]
    elif which == "saturated":
        y_true, y_pred = data["saturated_true"], data["saturated_pred"]
    elif which == "sequence":
        return y_true.reshape(4, 4, -1), y_pred.reshape(4, 4, -1), w.reshape(4, 4)
    elif which in ("examples", "indices"):
        y_true, y_pred = y_true.reshape(4, 4, -1).copy(), y_pred.reshape(4, 4, -1)
        if which == "indices":
            y_true[..., 6] = np.argmax(y_true[..., 6:], axis=-1)
            y_true[0, :, 6] = [-2.0, -1.0, -1.0, -2.0]  # an example with no class to learn
            y_true[2, 1, 6] = -1.0
        return y_true, y_pred, w[:4]
    return y_true, y_pred, w


# -- model checks: fixed initial weights, so that every backend fits the same model --

FIT_FORMULA = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
FIT_UNITS = {"presence": 0, "loc": 1}
# `counted` is mse with a Python side effect, registered by the probe: it counts
# how often the loss is traced (TF, JAX) or run (torch, which is eager).
SCHEDULE_FORMULA = "alpha*bce(presence) + (1 - alpha)*counted(loc)"
EPOCH_ALPHAS = [0.2, 0.5, 0.9]
STEP_ALPHAS = [0.1, 0.3, 0.6, 0.8]  # per batch: 2 epochs of 2 batches
SET_PARAM_ALPHA = 0.4


def model_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(99)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = np.stack([x[:, 0] > 0, np.abs(x[:, 1]) / 3], axis=1).astype("float32")
    kernel = rng.normal(scale=0.5, size=(4, 2)).astype("float32")
    bias = np.array([0.1, -0.2], "float32")
    weight = rng.uniform(0.5, 1.5, 32).astype("float32")
    return {"x": x, "y": y, "kernel": kernel, "bias": bias, "weight": weight}


def np_bce(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Keras's binary crossentropy on probabilities, in float64."""
    p = np.clip(np.asarray(p, "float64"), 1e-7, 1 - 1e-7)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_schedule_loss(alpha: float, y: np.ndarray, pred: np.ndarray) -> float:
    """``SCHEDULE_FORMULA`` with the default reduction, in NumPy."""
    pred = np.asarray(pred, "float64")
    per = alpha * np_bce(y[:, 0], pred[:, 0]) + (1 - alpha) * (y[:, 1] - pred[:, 1]) ** 2
    return float(per.mean())


# -- the probe -------------------------------------------------------------------


def _floats(x: Any) -> Any:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x), dtype="float64").tolist()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[int]:
    """Send everything written to fd 1 (prints, C libraries) to stderr, and
    yield a duplicate of the real stdout for the JSON document."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    try:
        yield real
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)


def _user_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The messages of the ``UserWarning``s (not library deprecations)."""
    return [str(w.message) for w in caught if w.category is UserWarning]


def _section(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return {"error": traceback.format_exc()}


def _grad_fns(backend: str) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """``(grad_fn, compile_fn)``. ``grad_fn(loss, y_true, y_pred, w)`` gives
    ``(per_sample, reduced, grad)``, where ``grad`` is the gradient of
    ``sum(w * per_sample)`` with respect to ``y_pred`` by the backend's own
    autodiff; ``compile_fn`` compiles a function of arrays (``None`` on torch).
    This is the only place that branches on the backend."""
    from keras import ops

    if backend == "tensorflow":
        import tensorflow as tf

        def tf_fn(loss: Any, y_true: Any, y_pred: Any, w: Any) -> Any:
            y_pred = tf.convert_to_tensor(y_pred)
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                per = loss.call(y_true, y_pred)
                total = tf.reduce_sum(w * per)
            return per, loss(y_true, y_pred, sample_weight=w), tape.gradient(total, y_pred)

        return tf_fn, lambda f: tf.function(f, jit_compile=True)

    if backend == "jax":
        import jax

        def jax_fn(loss: Any, y_true: Any, y_pred: Any, w: Any) -> Any:
            def total(p: Any) -> Any:
                per = loss.call(y_true, p)
                return ops.sum(w * per), per

            grad, per = jax.grad(total, has_aux=True)(y_pred)
            return per, loss(y_true, y_pred, sample_weight=w), grad

        return jax_fn, jax.jit

    if backend == "torch":
        import torch

        def torch_fn(loss: Any, y_true: Any, y_pred: Any, w: Any) -> Any:
            p = torch.tensor(y_pred, requires_grad=True)
            per = loss.call(torch.tensor(y_true), p)
            torch.sum(torch.tensor(w) * per).backward()
            with torch.no_grad():
                reduced = loss(y_true, y_pred, sample_weight=w)
            return per.detach(), reduced, p.grad

        return torch_fn, None

    raise ValueError(f"no autodiff for backend {backend!r}")


def _outputs(per: Any, reduced: Any, grad: Any) -> dict[str, Any]:
    return {"per_sample": _floats(per), "reduced": _floats(reduced), "grad": _floats(grad)}


def probe_values(backend: str) -> dict[str, Any]:
    import lossdsl

    data = make_data()
    grad_fn, compile_fn = _grad_fns(backend)
    out: dict[str, Any] = {}
    built: dict[str, tuple[Any, tuple[np.ndarray, ...]]] = {}
    for name, formula, opts in CASES:

        def eager(name: str = name, formula: str = formula, opts: dict[str, Any] = opts) -> Any:
            loss = lossdsl.compile_loss(
                formula,
                units=opts.get("units", UNITS),
                params=opts.get("params", PARAMS),
                where_mean=opts.get("where_mean", "selected"),
            )
            inputs = case_inputs(data, opts.get("data", "plain"))
            built[name] = (loss, inputs)
            result: dict[str, Any] = {"eager": _outputs(*grad_fn(loss, *inputs)), "compiled": None}
            for key, weighted in (("terms", True), ("terms_raw", False)):
                terms = loss.terms(inputs[0], inputs[1], weighted=weighted)
                result[key] = {k: _floats(v) for k, v in terms.items()}
            return result

        out[name] = _section(eager)
    if compile_fn is None:
        return out

    # Every case in one compiled function: one XLA compilation, not one per case.
    # If that fails, compile case by case to tell which one does.
    names = list(built)
    losses = [built[n][0] for n in names]
    try:
        run_all = compile_fn(
            lambda args: [grad_fn(lo, *a) for lo, a in zip(losses, args, strict=True)]
        )
        results = run_all([built[n][1] for n in names])
        for n, r in zip(names, results, strict=True):
            out[n]["compiled"] = _outputs(*r)
    except Exception:
        for n in names:
            loss, inputs = built[n]
            out[n]["compiled"] = _section(
                lambda loss=loss, inputs=inputs: _outputs(
                    *compile_fn(lambda *a: grad_fn(loss, *a))(*inputs)
                )
            )
    return out


def _model(keras: Any, d: dict[str, np.ndarray]) -> Any:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="sigmoid")])
    model.set_weights([d["kernel"], d["bias"]])
    return model


def probe_fit(backend: str) -> dict[str, Any]:
    import keras

    import lossdsl

    d = model_data()
    model = _model(keras, d)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.5),
        loss=lossdsl.compile_loss(FIT_FORMULA, units=FIT_UNITS),
    )
    hist = model.fit(d["x"], d["y"], batch_size=16, epochs=3, shuffle=False, verbose=0)
    return {
        "loss": [float(v) for v in hist.history["loss"]],
        "weights": [_floats(v) for v in model.get_weights()],
        "jit_compile": bool(model.jit_compile),
    }


def probe_schedule(backend: str) -> dict[str, Any]:
    """``ParamSchedule`` and ``set_param`` with a learning rate of 0: the
    predictions stay those of the initial weights, so every logged loss is a
    NumPy function of ``alpha`` (``np_schedule_loss``)."""
    import keras
    from keras import ops

    import lossdsl

    calls = [0]

    def counted(y_true: Any, y_pred: Any) -> Any:
        calls[0] += 1  # a Python side effect: once per trace (or per eager call)
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    d = model_data()
    x, y = d["x"], d["y"]

    def fresh() -> tuple[Any, Any]:
        model = _model(keras, d)
        loss = lossdsl.compile_loss(SCHEDULE_FORMULA, units=FIT_UNITS, params={"alpha": 0.0})
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss)
        return model, loss

    def per_epoch() -> dict[str, Any]:
        model, loss = fresh()
        seen: dict[str, list[Any]] = {"calls": [], "train_function": []}

        class Watch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                seen["calls"].append(calls[0])
                seen["train_function"].append(id(self.model.train_function))

        metrics_before = [m.name for m in model.metrics]
        schedule = lossdsl.ParamSchedule({"alpha": lambda epoch: EPOCH_ALPHAS[epoch]})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            hist = model.fit(
                x,
                y,
                batch_size=32,
                epochs=3,
                shuffle=False,
                verbose=0,
                callbacks=[schedule, Watch()],
            )
        evaluated = model.evaluate(x, y, batch_size=32, verbose=0)
        return {
            "loss": [float(v) for v in hist.history["loss"]],
            "alpha_logged": [float(v) for v in hist.history["alpha"]],
            "calls": seen["calls"],
            "same_train_function": len(set(seen["train_function"])) == 1,
            "warnings": _user_warnings(caught),
            "params_after": dict(loss.params),
            "metrics_before": metrics_before,
            "metrics_after": [m.name for m in model.metrics],
            "evaluate_after": np.asarray(evaluated, "float64").tolist(),
        }

    def per_batch() -> dict[str, Any]:
        model, _ = fresh()
        schedule = lossdsl.ParamSchedule({"alpha": lambda step: STEP_ALPHAS[step]}, per_batch=True)
        hist = model.fit(
            x,
            y,
            batch_size=16,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[schedule],
            validation_data=(x[:8], y[:8]),
        )
        return {
            "loss": [float(v) for v in hist.history["loss"]],
            "val_loss": [float(v) for v in hist.history["val_loss"]],
        }

    def set_param_between_fits() -> dict[str, Any]:
        # The README's known difference: on JAX the next fit keeps the old value
        # (and set_param warns) until the train function is rebuilt.
        model, loss = fresh()
        first = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            loss.set_param("alpha", SET_PARAM_ALPHA)
        second = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"]
        model.make_train_function(force=True)
        third = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"]
        return {
            "loss": [float(first[0]), float(second[0]), float(third[0])],
            "warnings": _user_warnings(caught),
        }

    lossdsl.register_loss("counted", counted)
    try:
        return {
            "pred": _floats(_model(keras, d).predict(x, verbose=0)),
            "per_epoch": _section(per_epoch),
            "per_batch": _section(per_batch),
            "set_param": _section(set_param_between_fits),
        }
    finally:
        lossdsl.unregister_loss("counted")


def probe_term_metrics(backend: str) -> dict[str, Any]:
    """``weighted_metrics=loss.term_metrics()`` with sample weights and a
    learning rate of 0, one batch; then ``model.save`` and ``load_model``."""
    import keras

    import lossdsl

    d = model_data()
    x, y, w = d["x"], d["y"], d["weight"]
    model = _model(keras, d)
    loss = lossdsl.compile_loss(FIT_FORMULA, units=FIT_UNITS)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0),
        loss=loss,
        weighted_metrics=loss.term_metrics(),
    )
    hist = model.fit(x, y, sample_weight=w, batch_size=32, epochs=1, verbose=0)
    out: dict[str, Any] = {
        "term_names": loss.term_names(),
        "logs": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
        "pred": _floats(model.predict(x, verbose=0)),
    }

    def save_load() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        kwargs = {"sample_weight": w, "batch_size": 32, "verbose": 0, "return_dict": True}
        before = model.evaluate(x, y, **kwargs)
        after = loaded.evaluate(x, y, **kwargs)
        config = loaded.loss.get_config()
        refit = loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"]
        return {
            "loss_class": type(loaded.loss).__name__,
            "loss_config": {k: config[k] for k in ("expression", "units", "params", "where_mean")},
            "evaluate_before": {k: float(v) for k, v in before.items()},
            "evaluate_after": {k: float(v) for k, v in after.items()},
            "pred_after": _floats(loaded.predict(x, verbose=0)),
            "refit_loss": [float(v) for v in refit],
        }

    out["save_load"] = _section(save_load)
    return out


MODEL_FORMULA = "s + exp(-s)*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
"""``FormulaModel``'s formula over the two outputs, with the learned parameter ``s``."""


def model_labels(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The labels of the two-output model: ``presence`` and ``loc``, one column each."""
    return {"presence": d["y"][:, :1], "loc": d["y"][:, 1:]}


def probe_formula_model(backend: str) -> dict[str, Any]:
    """``FormulaModel`` over a two-output Functional model with fixed initial weights:
    three epochs of SGD with one sample weight per output, then ``evaluate`` with one
    array, ``predict``, and ``model.save`` and ``load_model``."""
    import keras

    import lossdsl

    d = model_data()
    x, y, w = d["x"], model_labels(d), d["weight"]
    inputs = keras.Input((4,))
    presence = keras.layers.Dense(1, activation="sigmoid", name="presence")
    loc = keras.layers.Dense(1, name="loc")
    heads = keras.Model(inputs, {"presence": presence(inputs), "loc": loc(inputs)})
    presence.set_weights([d["kernel"][:, :1], d["bias"][:1]])
    loc.set_weights([d["kernel"][:, 1:], d["bias"][1:]])
    model = lossdsl.FormulaModel(heads, {"expression": MODEL_FORMULA, "learned": {"s": 0.0}})
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    weights = {"presence": w, "loc": w[::-1].copy()}
    hist = model.fit(x, y, sample_weight=weights, batch_size=16, epochs=3, shuffle=False, verbose=0)
    kwargs = {"sample_weight": w, "batch_size": 32, "verbose": 0, "return_dict": True}
    out: dict[str, Any] = {
        "logs": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
        "weights": [_floats(v) for v in model.get_weights()],
        "learned": float(model.learned["s"].numpy()),
        "evaluate": {k: float(v) for k, v in model.evaluate(x, y, **kwargs).items()},
        "pred": {k: _floats(v) for k, v in model.predict(x, verbose=0).items()},
    }

    def save_load() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        return {
            "class": type(loaded).__name__,
            "learned": float(loaded.learned["s"].numpy()),
            "evaluate": {k: float(v) for k, v in loaded.evaluate(x, y, **kwargs).items()},
        }

    out["save_load"] = _section(save_load)
    return out


SECTIONS: dict[str, Callable[[str], Any]] = {
    "values": probe_values,
    "fit": probe_fit,
    "schedule": probe_schedule,
    "term_metrics": probe_term_metrics,
    "formula_model": probe_formula_model,
}


def main(argv: list[str]) -> int:
    start = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    unknown = [a for a in argv if a not in SECTIONS]
    if unknown:
        print(f"unknown sections {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    with _stdout_to_stderr() as real_stdout:
        import keras

        backend = keras.backend.backend()
        doc: dict[str, Any] = {"backend": backend, "keras": keras.__version__, "sections": {}}
        seconds = {"import": time.perf_counter() - start}
        for name in argv or list(SECTIONS):
            t0 = time.perf_counter()
            doc["sections"][name] = _section(lambda name=name: SECTIONS[name](backend))
            seconds[name] = time.perf_counter() - t0
        doc["seconds"] = seconds
    with os.fdopen(real_stdout, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
