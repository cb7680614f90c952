"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): task weights the optimizer learns.

Two tasks share a network: a classification (is x0 + x1 > 0?) and a regression whose target
is scaled by 100. With fixed equal weights the regression's squared errors, 10,000 times larger,
decide every step; with learned log-variances ``s``, each task's loss is weighed by
``exp(-s)`` and ``+ s`` keeps ``s`` from running away, so each task ends up weighed by the inverse
of its own loss. Both runs see the same data, initial weights and steps; the script prints each
run's held-out errors and the learned weights.

    .venv/bin/python examples/uncertainty_weighting.py
"""

from __future__ import annotations

import keras
import numpy as np

import lossdsl

FIXED = "bce(cls) + mse(reg)"
LEARNED = "exp(-s_cls)*bce(cls) + s_cls + exp(-s_reg)*mse(reg) + s_reg"
SCALE = 100.0


def data(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    cls = (x[:, 0] + x[:, 1] > 0).astype("float32")[:, None]
    reg = (SCALE * np.sin(x[:, 2]) * x[:, 3]).astype("float32")[:, None]
    return x, {"cls": cls, "reg": reg}


def network(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.Dense(32, activation="relu")(h)
    return keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(1, activation="sigmoid", name="cls")(h),
            "reg": keras.layers.Dense(1, name="reg")(h),
        },
    )


def train(spec: dict, x: np.ndarray, y: dict[str, np.ndarray], epochs: int) -> lossdsl.FormulaModel:
    model = lossdsl.FormulaModel(network(), spec)
    model.compile(optimizer=keras.optimizers.Adam(0.003))
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def errors(model: keras.Model, x: np.ndarray, y: dict[str, np.ndarray]) -> dict[str, float]:
    """The held-out classification error rate and the regression's RMSE over the target scale."""
    out = model.predict(x, verbose=0)
    wrong = float(np.mean((out["cls"] > 0.5) != (y["cls"] > 0.5)))
    rmse = float(np.sqrt(np.mean((out["reg"] - y["reg"]) ** 2)))
    return {"classification error": wrong, "regression RMSE / 100": rmse / SCALE}


def main(epochs: int = 30) -> dict[str, dict[str, float]]:
    x, y = data(4096, seed=1)
    xt, yt = data(2048, seed=2)
    fixed = train({"expression": FIXED}, x, y, epochs)
    learned = train({"expression": LEARNED, "learned": {"s_cls": 0.0, "s_reg": 0.0}}, x, y, epochs)
    results = {
        "fixed equal weights": errors(fixed, xt, yt),
        "learned weights": errors(learned, xt, yt),
    }
    for run, errs in results.items():
        print(f"{run:20s}  " + "  ".join(f"{k} {v:.4f}" for k, v in errs.items()))
    s = {k: float(v.numpy()) for k, v in learned.learned.items()}
    print("learned log-variances:", {k: round(v, 3) for k, v in s.items()},
          "weights exp(-s):", {k: round(float(np.exp(-v)), 5) for k, v in s.items()})  # fmt: skip
    results["learned log-variances"] = s
    return results


if __name__ == "__main__":
    main()
