"""Run the examples as `make demo` runs examples/lesion.py, and check what they print."""

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


def run_example(name: str) -> str:
    """Run examples/<name>.py in its own process with the TensorFlow backend; its stdout."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def epochs(pattern: str, text: str) -> list[tuple[float, ...]]:
    """The numbers of each epoch line: ``epoch N`` then ``pattern``."""
    rows = re.findall(r"^epoch\s+\d+\s+" + pattern + r"$", text, re.M)
    return [tuple(float(v) for v in row) for row in rows]


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


def test_detection_example_matches_the_hand_written_retinanet_loss():
    out = run_example("detection")
    rows = epochs(r"loss (\S+)\s+classification (\S+)\s+box (\S+)\s+val_loss (\S+)", out)
    assert len(rows) == 6, out
    assert all(math.isfinite(v) for row in rows for v in row), rows  # box noise stays masked
    for loss, cls, box, _ in rows:
        # The two term metrics are the two parts of the loss: they add up to it.
        assert math.isclose(loss, cls + box, abs_tol=3e-4), (loss, cls, box)
    assert rows[-1][0] < 0.5 * rows[0][0], rows
    assert rows[-1][3] < 0.5 * rows[0][3], rows  # held out too

    positives = re.search(r"^check batch: positive anchors per image \[([0-9, ]+)\]$", out, re.M)
    assert positives, out
    counts = [int(v) for v in positives.group(1).split(",")]
    assert counts[0] == 0 and sum(counts) > 0, counts
    for label in ("trained model", "random"):
        match = re.search(
            rf"^{label}: formula (\S+), by hand (\S+), largest per-image difference (\S+)$",
            out,
            re.M,
        )
        assert match, out
        by_formula, by_hand, difference = (float(v) for v in match.groups())
        assert math.isclose(by_formula, by_hand, rel_tol=1e-5, abs_tol=2e-6), match.group(0)
        assert difference < 1e-4 * max(1.0, by_hand), match.group(0)
    # The image without a positive anchor costs nothing: both parts divide by zero positives.
    per_image = re.search(r"^trained model: .*\n  per image: (.*)$", out, re.M)
    assert per_image, out
    assert float(per_image.group(1).split()[0]) == 0.0, per_image.group(0)
    assert "the formula matches the hand-written RetinaNet loss" in out


def test_segmentation_example_learns_the_masks():
    out = run_example("segmentation")
    rows = epochs(r"loss (\S+)\s+dice loss (\S+)\s+bce (\S+)", out)
    assert len(rows) == 8, out
    assert all(math.isfinite(v) for row in rows for v in row), rows
    for loss, dice, bce in rows:
        assert math.isclose(loss, dice + bce, abs_tol=3e-4), (loss, dice, bce)
        assert 0 <= dice <= 1 and bce >= 0, (dice, bce)
    assert rows[-1][0] < 0.5 * rows[0][0], rows

    images = re.findall(r"^  image \d+: before (\S+) / (\S+)  after (\S+) / (\S+)$", out, re.M)
    assert len(images) >= 3, out
    for row in images:
        dice_before, iou_before, dice_after, iou_after = (float(v) for v in row)
        assert 0 <= iou_before <= dice_before <= 1 and 0 <= iou_after <= dice_after <= 1, row
    dice_before = number(r"held-out mean dice before training:", out)
    dice_after = number(r"held-out mean dice after training:", out)
    iou_before = number(r"held-out mean IoU before training:", out)
    iou_after = number(r"held-out mean IoU after training:", out)
    assert dice_after > max(0.6, dice_before + 0.2), out
    assert iou_after > iou_before, out


def test_uncertainty_weighting_learns_weights_that_rescue_the_drowned_task():
    out = run_example("uncertainty_weighting")
    rows = dict(re.findall(r"^(fixed equal weights|learned weights)\s+(.*)$", out, re.MULTILINE))
    fixed, learned = (
        {k.strip(): float(v) for k, v in re.findall(r"([A-Za-z /0-9]+?) (\d+\.\d+)", rows[run])}
        for run in ("fixed equal weights", "learned weights")
    )
    # The squared errors of the target scaled by 100 drown the classification's loss under
    # equal weights; learned weights bring it back, and the regression stays about as good.
    assert learned["classification error"] < 0.5 * fixed["classification error"], out
    assert learned["regression RMSE / 100"] < 1.2 * fixed["regression RMSE / 100"], out
    s = dict(
        re.findall(
            r"'(s_cls|s_reg)': (-?\d+\.\d+)", out.split("log-variances:")[1].split("weights")[0]
        )
    )
    assert float(s["s_reg"]) > float(s["s_cls"]), out  # the large loss weighed down
