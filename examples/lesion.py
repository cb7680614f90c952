"""Lesion presence and location: one model, two units, one formula.

The model's output has two units: unit 0 is the probability that a lesion is
present (a sigmoid), unit 1 is the lesion's location (linear). The location
only means something when a lesion is there, so the loss is

    bce(presence) + mse(loc) where true(presence) == 1

The crossentropy counts on every sample; the squared error counts only on the
samples whose label says a lesion is present, averaged over those samples. In
the other rows the location label is NaN here, on purpose: masked rows add
exactly 0 to the loss and to the gradient, so the NaN never reaches the weights.

Run it with ``make demo`` or ``python examples/lesion.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow start-up

import keras
import numpy as np

import lossdsl

FORMULA = "bce(presence) + mse(loc) where true(presence) == 1"
UNITS = {"presence": 0, "loc": 1}
N_FEATURES = 8


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features ``x`` (n, 8) and labels ``y`` (n, 2): [presence, location]."""
    x = rng.normal(size=(n, N_FEATURES)).astype("float32")
    # A lesion is present when a fixed linear score of the features is positive: about half.
    present = (x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] > 0).astype("float32")
    # Its location is a smooth function of other features, plus a little noise.
    location = 1.5 * x[:, 3] - x[:, 4] + 0.5 * x[:, 5] * x[:, 6] + 0.1 * rng.normal(size=n)
    # Without a lesion the location is meaningless: NaN, which the formula never reads.
    location = np.where(present == 1, location, np.nan).astype("float32")
    return x, np.stack([present, location], axis=-1)


def build_model() -> keras.Model:
    """A shared Dense trunk, then a sigmoid head and a linear head, side by side."""
    inputs = keras.Input(shape=(N_FEATURES,))
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.Dense(32, activation="relu")(h)
    presence = keras.layers.Dense(1, activation="sigmoid", name="presence")(h)
    location = keras.layers.Dense(1, name="location")(h)
    outputs = keras.layers.Concatenate()([presence, location])  # (batch, 2): the two units
    return keras.Model(inputs, outputs)


def main() -> dict:
    keras.utils.set_random_seed(0)  # Python, NumPy and backend seeds: a repeatable run
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(4000, rng)
    x_test, y_test = make_data(1000, rng)
    print(f"{int(y_train[:, 0].sum())} of {len(y_train)} training samples have a lesion")

    loss = lossdsl.compile_loss(FORMULA, units=UNITS)
    print(f"loss: {loss.formula}")

    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss=loss)

    # Keras's own loss is the only thing logged; print it once per epoch.
    show = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(f"epoch {epoch + 1:2d}  loss {logs['loss']:.4f}")
    )
    history = model.fit(x_train, y_train, epochs=12, batch_size=64, verbose=0, callbacks=[show])

    # Held-out evaluation: presence on every sample, location only where a lesion is.
    pred = model.predict(x_test, batch_size=256, verbose=0)
    has_lesion = y_test[:, 0] == 1
    accuracy = float(np.mean((pred[:, 0] > 0.5) == has_lesion))
    location_mae = float(np.mean(np.abs(pred[has_lesion, 1] - y_test[has_lesion, 1])))
    # The bar to clear: always predict the training set's mean location.
    mean_location = np.nanmean(y_train[:, 1])
    baseline_mae = float(np.mean(np.abs(mean_location - y_test[has_lesion, 1])))

    print(f"presence accuracy: {accuracy:.3f}")
    print(f"location MAE (lesion present): {location_mae:.3f}")
    print(f"location MAE, predicting the mean: {baseline_mae:.3f}")
    return {
        "loss": [float(v) for v in history.history["loss"]],
        "presence_accuracy": accuracy,
        "location_mae": location_mae,
        "baseline_mae": baseline_mae,
    }


if __name__ == "__main__":
    main()
