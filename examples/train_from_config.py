"""Train with the loss a config file declares.

    python examples/train_from_config.py [examples/config.yaml]

The loss lives in the config, next to the other training settings, and is
checked (units, parameters, every keyword) when the config is read, before any
model is built. A mistake in the formula stops the script with the file, the
line and a caret under the offending text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import yaml

import lossdsl

CONFIG = Path(__file__).with_name("config.yaml")


def main(path: Path = CONFIG) -> dict[str, float]:
    spec = lossdsl.load_spec(path, key="training.loss")  # validated here, Keras not yet loaded
    config = yaml.safe_load(path.read_text())
    rows, features = config["data"]["rows"], config["data"]["features"]
    training = config["training"]

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype("float32")
    present = (x[:, 0] - x[:, 1] > 0).astype("float32")
    location = np.where(present == 1, x[:, 2] + 0.5 * x[:, 3], np.nan).astype("float32")
    y = np.stack([present, location], axis=1)

    inputs = keras.Input((features,))
    h = keras.layers.Dense(config["model"]["hidden"], activation="relu")(inputs)
    logit = keras.layers.Dense(1)(h)  # presence as a logit: the config says from_logits=true
    loc = keras.layers.Dense(1)(h)
    model = keras.Model(inputs, keras.layers.Concatenate()([logit, loc]))

    loss = lossdsl.compile_loss(spec)
    model.compile(
        optimizer=keras.optimizers.Adam(training["learning_rate"]),
        loss=loss,
        weighted_metrics=loss.term_metrics(),
    )
    history = model.fit(
        x, y, epochs=training["epochs"], batch_size=training["batch_size"], verbose=0
    ).history
    for epoch, value in enumerate(history["loss"], 1):
        terms = "  ".join(f"{name} {history[name][epoch - 1]:.4f}" for name in loss.term_names())
        print(f"epoch {epoch}  loss {value:.4f}  {terms}")
    return {"first": history["loss"][0], "last": history["loss"][-1]}


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG)
