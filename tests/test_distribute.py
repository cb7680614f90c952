"""Scaling out: one epoch under tf.distribute.MirroredStrategy (2 logical CPUs)
and under JAX DataParallel (4 host devices) leaves the weights those of one
device with the same global batches, for plain terms, where-terms, sample
weights, a last batch that splits unevenly, and batch-wide aggregates (a Dice
over the whole batch), where Keras's own Dice differs; and for FormulaModel over
a model's named outputs, with per-output sample weights and learned parameters. One step under
MultiWorkerMirroredStrategy with two worker processes on localhost leaves them
those of one process with the global batch, where Keras's own masked mean
differs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PROBE = Path(__file__).parent / "probes" / "distribute_probe.py"
MULTIWORKER_PROBE = Path(__file__).parent / "probes" / "multiworker_probe.py"
CASES = [
    "plain",
    "where",
    "where+weights",
    "where+params",
    "uneven",
    "dice batch-wide",
    "dice per example + mean bce",
    "batch-wide mean of a where, uneven",
    # FormulaModel over a model's named outputs
    "outputs: where + per-output weights",
    "outputs: learned weights",
    "outputs: batch-wide dice",
]
GLOBAL = [
    "where",
    "where+weights",
    "where+params",
    "uneven",
    "dice batch-wide",
    "outputs: where + per-output weights",
    "outputs: learned weights",
    "outputs: batch-wide dice",
]
"""The cases that need counts or sums over the global batch."""
# The largest weight difference that counts as the same training. Each replica's gradient
# comes from a smaller batch (other matmul shapes, other kernels) and the replicas' sums are
# added in another order, so the weights agree to float32 rounding, not bit for bit: a few
# units in the last place of weights of about 1 (up to 2.4e-7 measured on an AVX2 CPU).
# Per-replica counts, the error this guards against, move them by more than 1e-3.
SAME = 1e-5


def _probe(backend: str, **env: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(PROBE)],
        env={**os.environ, "KERAS_BACKEND": backend, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_mirrored_strategy_matches_one_device() -> None:
    result = _probe("tensorflow")
    assert result["replicas"] == 2
    for case in CASES:
        assert result[case] < SAME, (case, result)
    # Keras's own batch-wide Dice takes each replica's half batch for the whole.
    assert result["Keras's Dice"] > 1e-3, result


def _same_logs(logs: dict[str, dict[str, list[float]]]) -> None:
    one, dist = logs["one"], logs["distributed"]
    assert one["alpha"] == dist["alpha"] == [2.0, 3.0]  # ParamSchedule's values
    assert one["s"] == dist["s"] == [0.5, 0.5]  # a learning rate of 0
    np.testing.assert_allclose(dist["loss"], one["loss"], rtol=1e-6)


def test_mirrored_strategy_logs_parameters_once_and_reads_the_value_set() -> None:
    _same_logs(_probe("tensorflow")["logs"])


def test_without_global_counts_mirrored_strategy_would_differ() -> None:
    # The same runs with per-replica counts and sums, which is what Keras does alone:
    # where-terms, batch-wide terms and the uneven split move the weights; so the check
    # above can fail.
    result = _probe("tensorflow", LOSSDSL_PROBE_LOCAL_COUNTS="1")
    assert result["plain"] < SAME
    assert result["dice per example + mean bce"] < SAME
    for case in [*GLOBAL, "batch-wide mean of a where, uneven"]:
        assert result[case] > 1e-3, (case, result)


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None
    and "jax" not in os.environ.get("LOSSDSL_REQUIRE", "").split(","),
    reason="jax is not installed",
)
def test_jax_data_parallel_matches_one_device() -> None:
    result = _probe("jax")
    assert result["replicas"] == 4
    for case in CASES:
        assert result[case] < SAME, (case, result)
    _same_logs(result["logs"])


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _weights(run: Any, name: str) -> list[np.ndarray]:
    return [run[f"{name}_{i}"] for i in range(4)]


def _largest_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _sgd_step(
    weights: list[np.ndarray], shards: list[tuple[np.ndarray, ...]], learning_rate: float
) -> list[np.ndarray]:
    """One SGD step of the multi-worker probe's model, in float64, with
    ``bce(presence) + mse(loc) where true(presence) == 1`` normalised over each shard:
    with one shard, the step of one process holding the whole batch; with several, what
    per-replica means (Keras alone) give, each replica's gradient over the replicas summed
    and divided by their number."""
    k0, b0, k1, b1 = (np.asarray(a, np.float64) for a in weights)
    grads = [np.zeros_like(a) for a in (k0, b0, k1, b1)]
    for shard in shards:
        x, y, w = (np.asarray(a, np.float64) for a in shard)
        p = 1 / (1 + np.exp(-(x @ k0 + b0)))  # the sigmoid presence unit
        loc = x @ k1 + b1
        selected = y[:, 0] == 1
        # d/dz of Keras's bce is p - t, and d/dloc of mse (mean over 2 columns) is loc - y.
        dz = (w / len(x))[:, None] * (p - y[:, :1])
        dloc = (w * selected / selected.sum())[:, None] * (loc - y[:, 1:3])
        shard_grads = [x.T @ dz, dz.sum(0), x.T @ dloc, dloc.sum(0)]
        grads = [g + d / len(shards) for g, d in zip(grads, shard_grads, strict=True)]
    return [a - learning_rate * g for a, g in zip((k0, b0, k1, b1), grads, strict=True)]


def test_multi_worker_mirrored_strategy_matches_one_process(tmp_path: Path) -> None:
    # Two worker processes on localhost, one CPU each, split a global batch of 7 rows 4 + 3
    # and take one SGD step with `bce(presence) + mse(loc) where true(presence) == 1` and
    # sample weights; NumPy computes the step of one process holding the whole batch.
    cluster = [f"localhost:{port}" for port in _free_ports(2)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    procs = []
    for i in range(2):
        task = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}}
        with open(tmp_path / f"worker{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(MULTIWORKER_PROBE), str(tmp_path)],
                    env={**env, "TF_CONFIG": json.dumps(task)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + 120
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    timed_out = [i for i, proc in enumerate(procs) if proc.poll() is None]
    for i in timed_out:  # a worker whose peer failed waits for it for ever
        procs[i].kill()
        procs[i].wait()
    logs = "\n".join(
        f"--- worker {i} (exit {proc.returncode}):\n"
        + (tmp_path / f"worker{i}.log").read_text(errors="replace")[-3000:]
        for i, proc in enumerate(procs)
    )
    assert not timed_out, f"workers {timed_out} still running after 120 s, killed\n{logs}"
    assert all(proc.returncode == 0 for proc in procs), logs

    workers = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    chief = workers[0]
    assert all(int(r["replicas"]) == 2 for r in workers)
    # The uneven split: 4 + 3 rows, together the global batch.
    assert [len(r["local_x"]) for r in workers] == [4, 3]
    for key in "xyw":
        joined = np.concatenate([r[f"local_{key}"] for r in workers])
        np.testing.assert_array_equal(joined, chief[key])
    initial, rate = _weights(chief, "initial"), float(chief["learning_rate"])
    one_process = _sgd_step(initial, [(chief["x"], chief["y"], chief["w"])], rate)
    per_replica = _sgd_step(
        initial, [(r["local_x"], r["local_y"], r["local_w"]) for r in workers], rate
    )
    assert _largest_difference(one_process, per_replica) > 1e-3  # (0.12)
    for r in workers:
        assert _largest_difference(_weights(r, "lossdsl"), one_process) < SAME
        # Keras's own masked mean takes each replica's rows for the whole batch.
        keras_own = _weights(r, "keras")
        assert _largest_difference(keras_own, per_replica) < SAME
        assert _largest_difference(keras_own, one_process) > 1e-3
