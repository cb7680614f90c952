"""The compiled loss on the JAX and torch backends, against TensorFlow.

``KERAS_BACKEND`` is read once, when Keras is imported, so each backend runs
``tests/probes/backend_probe.py`` in its own subprocess; this module imports neither
Keras nor a backend. The probes of all backends start together, on first use,
and each prints one JSON document. A backend whose package is not installed is
skipped. ``KERAS_BACKEND=jax`` (or ``torch``) limits the comparison to that
backend and TensorFlow, the reference; unset, or ``tensorflow``, runs them all.

Tolerances: float32 throughout, so values and gradients must agree with
TensorFlow's eager ones to ``RTOL`` relative, with an ``ATOL`` for entries near 0.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
PROBE_PATH = HERE / "probes" / "backend_probe.py"
ALL_BACKENDS = ("tensorflow", "jax", "torch")
PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
TIMEOUT_S = 600
RTOL, ATOL = 1e-5, 1e-6
REQUIRED = {b for b in os.environ.get("LOSSDSL_REQUIRE", "").split(",") if b}


def _load_probe() -> Any:
    # By path: tests/ is not a package, and the probe imports NumPy only.
    spec = importlib.util.spec_from_file_location("lossdsl_backend_probe", PROBE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_probe()
CASE_NAMES = [name for name, _, _ in probe.CASES]


def _selected() -> tuple[str, ...]:
    chosen = os.environ.get("KERAS_BACKEND", "").strip()
    if chosen in ("jax", "torch"):
        return ("tensorflow", chosen)
    return ALL_BACKENDS


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(PACKAGES[backend]) is not None


# -- running the probes ------------------------------------------------------------


class _Run:
    """One probe subprocess, writing to temporary files (a full pipe would stall
    it while another backend's probe is being waited for)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        # Closed in result(), after the process has exited.
        self.stdout = tempfile.TemporaryFile()  # noqa: SIM115
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("PYTHONSTARTUP", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(PROBE_PATH)],
            cwd=HERE.parent,
            env=env,
            stdout=self.stdout,
            stderr=self.stderr,
        )
        self._doc: dict[str, Any] | None = None
        self._failure: str | None = None

    def result(self) -> dict[str, Any]:
        """The probe's JSON document; fails (every time it is asked) if the
        probe failed."""
        if self._doc is None and self._failure is None:
            self._doc, self._failure = self._collect()
        if self._failure is not None:
            pytest.fail(self._failure)
        assert self._doc is not None
        return self._doc

    def _collect(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, f"the {self.backend} probe ran past {TIMEOUT_S} s"
        with self.stdout, self.stderr:
            self.stdout.seek(0)
            self.stderr.seek(0)
            out, err = self.stdout.read().decode(), self.stderr.read().decode()
        if code != 0:
            return None, f"the {self.backend} probe exited with {code}:\n{err[-4000:]}"
        try:
            doc: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as e:
            return (
                None,
                f"the {self.backend} probe's stdout is not one JSON document ({e}):\n{out[:500]}",
            )
        if doc.get("backend") != self.backend:
            return None, f"the {self.backend} probe ran on {doc.get('backend')!r}"
        return doc, None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_runs: dict[str, _Run] = {}


def _doc(backend: str) -> dict[str, Any]:
    if not _runs:  # start every selected, installed backend at once
        for b in _selected():
            if _installed(b):
                _runs[b] = _Run(b)
    return _runs[backend].result()


@atexit.register
def _stop_unused_probes() -> None:
    # A run with -k may never ask for some backend; do not leave its probe running.
    for run in _runs.values():
        run.kill()


def section(backend: str, name: str) -> Any:
    """A section of ``backend``'s probe output; skips if the backend is not
    installed, fails with the traceback if the section raised."""
    if not _installed(backend):
        if backend in REQUIRED:  # `make test` requires jax: never skip it silently there
            pytest.fail(f"{PACKAGES[backend]} is required (LOSSDSL_REQUIRE) but not installed")
        pytest.skip(f"{PACKAGES[backend]} is not installed in {sys.executable}")
    if backend not in _selected():
        pytest.skip(f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')} selects another backend")
    if not _installed("tensorflow"):
        pytest.skip("tensorflow, the reference backend, is not installed")
    value = _doc(backend)["sections"][name]
    _raise_if_error(value, f"{backend}/{name}")
    return value


def _raise_if_error(value: Any, where: str) -> None:
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        pytest.fail(f"{where} raised in the probe:\n{value['error']}")


def reference(name: str) -> Any:
    return section("tensorflow", name)


def close(actual: Any, expected: Any, what: str, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    a = np.asarray(actual, dtype="float64")
    e = np.asarray(expected, dtype="float64")
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    assert np.isfinite(a).all(), f"{what}: not finite where expected: {a}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


def xfail_on(backend: str, reason: str) -> list[Any]:
    """The backends as parameters, ``backend`` marked ``xfail(strict=True)``."""
    return [
        pytest.param(b, marks=pytest.mark.xfail(strict=True, reason=reason)) if b == backend else b
        for b in ALL_BACKENDS
    ]


# -- values and gradients ------------------------------------------------------------

# TensorFlow's fused softmax crossentropy (what keras.losses.categorical_crossentropy
# uses with from_logits=True) has the gradient softmax(z) - y, which is exact only
# when each row of labels sums to 1. JAX and torch differentiate the formula. The
# values agree; the gradients are checked against NumPy instead (see below).
KNOWN_TF_GRADIENT = {"cce_logits_unnormalised"}


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_values_and_gradients_agree_with_tensorflow(backend: str, case: str) -> None:
    got = section(backend, "values")[case]
    ref = reference("values")[case]
    _raise_if_error(got, f"{backend}/values/{case}")
    _raise_if_error(ref, f"tensorflow/values/{case}")
    modes = ["eager", "compiled"] if backend != "torch" else ["eager"]
    if backend == "torch":
        assert got["compiled"] is None
    for mode in modes:
        if backend == "tensorflow" and mode == "eager":
            continue  # the reference itself; its finiteness is checked below
        _raise_if_error(got[mode], f"{backend}/values/{case}/{mode}")
        for key in ("per_sample", "reduced", "grad"):
            if key == "grad" and case in KNOWN_TF_GRADIENT:
                continue
            close(got[mode][key], ref["eager"][key], f"{backend} {mode} {case} {key}")
    for key in ("per_sample", "reduced", "grad"):
        assert np.isfinite(np.asarray(ref["eager"][key], "float64")).all(), (
            f"tensorflow {case} {key}"
        )
    for kind in ("terms", "terms_raw"):
        assert list(got[kind]) == list(ref[kind])
        for term, value in got[kind].items():
            close(value, ref[kind][term], f"{backend} {case} {kind} {term}")


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_weighted_terms_add_up_to_the_loss(backend: str, case: str) -> None:
    got = section(backend, "values")[case]
    _raise_if_error(got, f"{backend}/values/{case}")
    per_sample = np.asarray(got["eager"]["per_sample"], "float64")
    total = sum(float(v) for v in got["terms"].values())
    close(total, per_sample.mean(), f"{backend} {case}: sum of terms vs mean loss", atol=1e-5)


@pytest.mark.parametrize(
    "backend",
    xfail_on(
        "tensorflow",
        "upstream, not lossdsl: TF's softmax_cross_entropy_with_logits gradient is "
        "softmax(z) - y, wrong when the labels do not sum to 1",
    ),
)
def test_cce_from_logits_gradient_with_unnormalised_labels(backend: str) -> None:
    got = section(backend, "values")["cce_logits_unnormalised"]
    _raise_if_error(got, f"{backend}/values/cce_logits_unnormalised")
    y_true, y_pred, w = probe.case_inputs(probe.make_data(), "plain")
    labels, logits = y_true[:, 2:6].astype("float64"), y_pred[:, 2:6].astype("float64")
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    exact = np.zeros(y_pred.shape)
    exact[:, 2:6] = w[:, None] * (soft * labels.sum(axis=1, keepdims=True) - labels)
    for mode in ("eager", "compiled"):
        if got[mode] is not None:
            close(got[mode]["grad"], exact, f"{backend} {mode} gradient")


# -- model.fit -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fit_decreases_the_loss_and_matches_tensorflow(backend: str) -> None:
    got, ref = section(backend, "fit"), reference("fit")
    loss = np.asarray(got["loss"])
    assert np.isfinite(loss).all() and len(loss) == 3
    assert (np.diff(loss) < 0).all(), f"the loss does not decrease: {loss}"
    close(got["loss"], ref["loss"], f"{backend} fit losses")
    for i, (a, e) in enumerate(zip(got["weights"], ref["weights"], strict=True)):
        close(a, e, f"{backend} weight {i} after 3 epochs")


def _schedule_pred() -> tuple[np.ndarray, np.ndarray]:
    """The labels, and TensorFlow's predictions of the initial weights."""
    pred = np.asarray(reference("schedule")["pred"], "float64")
    return probe.model_data()["y"].astype("float64"), pred


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_param_schedule_changes_the_logged_loss_each_epoch(backend: str) -> None:
    got = section(backend, "schedule")["per_epoch"]
    _raise_if_error(got, f"{backend}/schedule/per_epoch")
    y, pred = _schedule_pred()
    close(section(backend, "schedule")["pred"], pred, f"{backend} initial predictions")
    expected = [probe.np_schedule_loss(a, y, pred) for a in probe.EPOCH_ALPHAS]
    close(got["loss"], expected, f"{backend} logged loss per epoch")
    close(got["alpha_logged"], probe.EPOCH_ALPHAS, f"{backend} logged alpha", atol=0)
    assert got["params_after"] == {"alpha": probe.EPOCH_ALPHAS[-1]}
    assert got["same_train_function"], "model.train_function was rebuilt between epochs"
    calls = got["calls"]
    if backend == "torch":  # eager: the loss runs once per batch (one per epoch)
        assert calls[1] - calls[0] == calls[2] - calls[1] == 1, calls
    else:  # traced during the first epoch only, never again
        assert calls[0] >= 1 and calls[0] == calls[1] == calls[2], calls


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_param_schedule_does_not_warn(backend: str) -> None:
    got = section(backend, "schedule")["per_epoch"]
    _raise_if_error(got, f"{backend}/schedule/per_epoch")
    assert got["warnings"] == []


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_param_schedule_leaves_the_model_metrics_alone(backend: str) -> None:
    got = section(backend, "schedule")["per_epoch"]
    _raise_if_error(got, f"{backend}/schedule/per_epoch")
    assert got["metrics_after"] == got["metrics_before"] == ["loss"]
    assert np.ndim(got["evaluate_after"]) == 0, got["evaluate_after"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_param_schedule_per_batch_and_validation(backend: str) -> None:
    got = section(backend, "schedule")["per_batch"]
    _raise_if_error(got, f"{backend}/schedule/per_batch")
    y, pred = _schedule_pred()
    a = probe.STEP_ALPHAS
    halves = (slice(0, 16), slice(16, 32))
    expected = [
        np.mean([probe.np_schedule_loss(a[2 * e + i], y[s], pred[s]) for i, s in enumerate(halves)])
        for e in range(2)
    ]
    close(got["loss"], expected, f"{backend} per-batch schedule, epoch losses")
    # Validation runs after the epoch's last batch, with that batch's alpha.
    val = [probe.np_schedule_loss(a[2 * e + 1], y[:8], pred[:8]) for e in range(2)]
    close(got["val_loss"], val, f"{backend} per-batch schedule, val_loss")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_set_param_between_fits(backend: str) -> None:
    """The README's known difference: on JAX the next fit keeps the old value,
    and set_param says so, until make_train_function(force=True)."""
    got = section(backend, "schedule")["set_param"]
    _raise_if_error(got, f"{backend}/schedule/set_param")
    y, pred = _schedule_pred()
    old = probe.np_schedule_loss(0.0, y, pred)
    new = probe.np_schedule_loss(probe.SET_PARAM_ALPHA, y, pred)
    if backend == "jax":
        assert len(got["warnings"]) == 1 and "make_train_function" in got["warnings"][0]
        close(got["loss"], [old, old, new], "jax: first fit, after set_param, after rebuild")
    else:
        assert got["warnings"] == []
        close(got["loss"], [old, new, new], f"{backend}: first fit, after set_param, after rebuild")


def _np_term_logs() -> dict[str, float]:
    """FIT_FORMULA's logged loss and terms on TF's initial predictions, with the
    probe's sample weights, in NumPy."""
    d = probe.model_data()
    y, w = d["y"].astype("float64"), d["weight"].astype("float64")
    pred = np.asarray(reference("term_metrics")["pred"], "float64")
    bce = probe.np_bce(y[:, 0], pred[:, 0])
    m = (y[:, 0] == 1).astype("float64")
    se = (y[:, 1] - pred[:, 1]) ** 2
    per = 0.7 * bce + 0.3 * se * m * len(m) / m.sum()
    return {
        "loss": float((w * per).sum() / len(w)),
        "bce_presence": float((w * bce).sum() / w.sum()),
        "mse_loc": float((w * m * se).sum() / (w * m).sum()),
    }


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_term_metrics_are_logged(backend: str) -> None:
    got = section(backend, "term_metrics")
    assert got["term_names"] == ["bce_presence", "mse_loc"]
    assert sorted(got["logs"]) == ["bce_presence", "loss", "mse_loc"]
    for name, value in _np_term_logs().items():
        close(got["logs"][name], [value], f"{backend} logged {name}")
    close(got["pred"], reference("term_metrics")["pred"], f"{backend} predictions")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_save_and_load_model(backend: str) -> None:
    got = section(backend, "term_metrics")["save_load"]
    _raise_if_error(got, f"{backend}/term_metrics/save_load")
    ref = reference("term_metrics")["save_load"]
    _raise_if_error(ref, "tensorflow/term_metrics/save_load")
    assert got["loss_class"] == "FormulaLoss"
    assert got["loss_config"] == {
        "expression": probe.FIT_FORMULA,
        "units": probe.FIT_UNITS,
        "params": {},
        "where_mean": "selected",
    }
    assert sorted(got["evaluate_after"]) == ["bce_presence", "loss", "mse_loc"]
    for name, value in got["evaluate_before"].items():
        close(got["evaluate_after"][name], value, f"{backend} evaluate after loading: {name}")
        close(value, _np_term_logs()[name], f"{backend} evaluate: {name}")
    close(got["pred_after"], section(backend, "term_metrics")["pred"], f"{backend} predictions")
    close(got["refit_loss"], ref["refit_loss"], f"{backend} fit after loading")


# -- FormulaModel ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_formula_model_trains_learned_parameters_as_on_tensorflow(backend: str) -> None:
    got, ref = section(backend, "formula_model"), reference("formula_model")
    assert set(got["logs"]) == {"loss", "bce_presence", "mse_loc", "s"}
    for key, values in ref["logs"].items():
        close(got["logs"][key], values, f"{backend} fit logs {key}")
    for i, (a, e) in enumerate(zip(got["weights"], ref["weights"], strict=True)):
        close(a, e, f"{backend} weight {i} after 3 epochs")
    close(got["learned"], ref["learned"], f"{backend} learned s")
    assert got["learned"] < -0.1  # the small bce drives its log-variance down
    for key, value in ref["evaluate"].items():
        close(got["evaluate"][key], value, f"{backend} evaluate {key}")
    assert got["evaluate"]["s"] == pytest.approx(got["learned"], rel=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_formula_model_evaluates_the_numpy_loss(backend: str) -> None:
    got = section(backend, "formula_model")
    d, s = probe.model_data(), got["learned"]
    y, w = probe.model_labels(d), d["weight"].astype("float64")
    pred = {k: np.asarray(v, "float64")[:, 0] for k, v in got["pred"].items()}
    t = y["presence"][:, 0]
    m = t == 1
    per = s + np.exp(-s) * probe.np_bce(t, pred["presence"])
    sq = (pred["loc"] - y["loc"][:, 0]) ** 2
    want = np.mean(w * per) + 0.3 * np.sum(m * w * sq) / np.sum(m)
    close(got["evaluate"]["loss"], want, f"{backend} evaluate loss")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_formula_model_saves_and_loads(backend: str) -> None:
    got = section(backend, "formula_model")
    loaded = got["save_load"]
    _raise_if_error(loaded, f"{backend}/formula_model/save_load")
    assert loaded["class"] == "FormulaModel"
    assert loaded["learned"] == pytest.approx(got["learned"], rel=1e-7)
    for key, value in got["evaluate"].items():
        close(loaded["evaluate"][key], value, f"{backend} evaluate after loading: {key}")
