"""Run examples/lesion.py as `make demo` does, and check what it prints."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def number(pattern: str, text: str) -> float:
    match = re.search(pattern + r"\s*([-+0-9.eE]+|nan|inf)", text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def test_lesion_example_trains_and_beats_the_baselines():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lesion.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout

    losses = [float(v) for v in re.findall(r"^epoch\s+\d+\s+loss\s+(\S+)$", out, re.M)]
    assert len(losses) >= 3, out
    assert all(math.isfinite(v) for v in losses), losses  # the NaN location labels stay masked
    assert losses[-1] < 0.5 * losses[0], losses

    accuracy = number(r"presence accuracy:", out)
    mae = number(r"location MAE \(lesion present\):", out)
    baseline = number(r"location MAE, predicting the mean:", out)
    assert accuracy > 0.8, out
    assert math.isfinite(mae), out
    assert mae < 0.5 * baseline, out


def test_kl_annealing_follows_the_schedule():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import kl_annealing
    finally:
        sys.path.pop(0)
    out = kl_annealing.main()
    assert out["beta"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    # Each epoch's logged loss is its reconstruction plus beta times its KL: the
    # schedule reached the compiled train step.
    for beta, loss, recon, kl in zip(
        out["beta"], out["loss"], out["recon"], out["kl"], strict=True
    ):
        assert math.isclose(loss, recon + beta * kl, rel_tol=1e-4), (beta, loss, recon, kl)
    assert out["kl"][-1] < out["kl"][1]
