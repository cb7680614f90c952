"""Scaling out: one epoch under tf.distribute.MirroredStrategy (2 logical CPUs)
and under JAX DataParallel (4 host devices) leaves the weights those of one
device with the same global batches, for plain terms, where-terms, sample
weights, a last batch that splits unevenly, and batch-wide aggregates (a Dice
over the whole batch), where Keras's own Dice differs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).parent / "probes" / "distribute_probe.py"
CASES = [
    "plain",
    "where",
    "where+weights",
    "where+params",
    "uneven",
    "dice batch-wide",
    "dice per example + mean bce",
    "batch-wide mean of a where, uneven",
]
GLOBAL = ["where", "where+weights", "where+params", "uneven", "dice batch-wide"]
"""The cases that need counts or sums over the global batch."""
# The largest weight difference that counts as the same training. Each replica's gradient
# comes from a smaller batch (other matmul shapes, other kernels) and the replicas' sums are
# added in another order, so the weights agree to float32 rounding, not bit for bit: a few
# units in the last place of weights of about 1 (up to 2.4e-7 measured on an AVX2 CPU).
# Per-replica counts, the error this guards against, move them by more than 1e-3.
SAME = 1e-5


def _probe(backend: str, **env: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, str(PROBE)],
        env={**os.environ, "KERAS_BACKEND": backend, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_mirrored_strategy_matches_one_device() -> None:
    result = _probe("tensorflow")
    assert result["replicas"] == 2
    for case in CASES:
        assert result[case] < SAME, (case, result)
    # Keras's own batch-wide Dice takes each replica's half batch for the whole.
    assert result["Keras's Dice"] > 1e-3, result


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
