"""A model compiled with a FormulaLoss and its term metrics, saved with
model.save, loads in a fresh process that has only imported lossdsl (no
custom_objects), and computes the same loss and metrics on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SAVE = """
import json, sys
import numpy as np
import keras
import lossdsl

rng = np.random.default_rng(0)
x = rng.normal(size=(40, 3)).astype("float32")
y = np.stack([x[:, 0] > 0, x[:, 1]], axis=1).astype("float32")
np.save(sys.argv[2], x)
np.save(sys.argv[3], y)
loss = lossdsl.compile_loss(
    "alpha*bce(presence) + (1 - alpha)*mse(loc) where true(presence) == 1  # lesions",
    units={"presence": 0, "loc": 1}, params={"alpha": 0.5}, where_mean="batch",
    name="lesion", reduction="sum", dtype="float32",
)
loss.set_param("alpha", 0.8)  # the current value is what must be saved
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
model.compile(optimizer="adam", loss=loss,
              weighted_metrics=loss.term_metrics() + loss.term_metrics(weighted=True))
model.fit(x, y, epochs=1, batch_size=8, verbose=0)
model.save(sys.argv[1])
print(json.dumps({"eval": model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True),
                  "config": loss.get_config()}))
"""

LOAD = """
import json, sys
import numpy as np
import lossdsl
assert "keras" not in sys.modules
import keras

model = keras.saving.load_model(sys.argv[1])  # no custom_objects
x, y = np.load(sys.argv[2]), np.load(sys.argv[3])
print(json.dumps({"eval": model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True),
                  "config": model.loss.get_config(),
                  "loss_type": type(model.loss).__name__}))
"""


def _run(code: str, *args: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    files = (tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "y.npy")
    saved = _run(SAVE, *files)
    loaded = _run(LOAD, *files)
    assert loaded["loss_type"] == "FormulaLoss"
    assert loaded["config"] == saved["config"]
    assert saved["config"] == {
        "name": "lesion",
        "reduction": "sum",
        "expression": (
            "alpha*bce(presence) + (1 - alpha)*mse(loc) where true(presence) == 1  # lesions"
        ),
        "units": {"presence": 0, "loc": 1},
        "params": {"alpha": 0.8},
        "where_mean": "batch",
        "allow_negative": False,
        "dtype": "float32",
    }
    # Keras prefixes the second metric of a name with "weighted_".
    assert set(saved["eval"]) == {
        "loss", "bce_presence", "mse_loc", "weighted_bce_presence", "weighted_mse_loc",
    }  # fmt: skip
    assert set(loaded["eval"]) == set(saved["eval"])
    for key, value in saved["eval"].items():
        assert abs(loaded["eval"][key] - value) <= 1e-6 * max(1.0, abs(value)), key
