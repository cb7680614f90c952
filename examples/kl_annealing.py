"""KL annealing for a small variational autoencoder, with the loss in one formula.

The model's output has three parts side by side: the reconstruction of the
8 inputs, and the mean and log-variance of a 2-dimensional latent code. The
loss is the reconstruction error plus a KL divergence weighted by ``beta``:

    mse(recon) + beta * 0.5 * (square(pred(mu1)) + exp(pred(lv1)) - pred(lv1) - 1
                             + square(pred(mu2)) + exp(pred(lv2)) - pred(lv2) - 1)

``beta`` is a parameter. ``lossdsl.ParamSchedule`` raises it from 0 to 1 over
the first epochs, without recompiling or retracing the train step, and
``loss.term_metrics()`` logs the two terms on their own.

Run it with ``python examples/kl_annealing.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import ops

import lossdsl

D, LATENT, EPOCHS, WARMUP = 8, 2, 8, 4
UNITS = {"recon": [0, D], "mu1": D, "mu2": D + 1, "lv1": D + 2, "lv2": D + 3}
FORMULA = """
    mse(recon)                                                  # reconstruction
  + beta * 0.5 * (square(pred(mu1)) + exp(pred(lv1)) - pred(lv1) - 1
                + square(pred(mu2)) + exp(pred(lv2)) - pred(lv2) - 1)   # KL to N(0, I)
"""


class Sample(keras.layers.Layer):
    """z = mu + exp(lv / 2) * noise: the reparameterisation trick."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, mu, lv):
        return mu + ops.exp(0.5 * lv) * keras.random.normal(ops.shape(mu), seed=self.seed)


def build_model() -> keras.Model:
    x = keras.Input((D,))
    h = keras.layers.Dense(32, activation="relu")(x)
    mu = keras.layers.Dense(LATENT)(h)
    lv = keras.layers.Dense(LATENT)(h)
    z = Sample()(mu, lv)
    recon = keras.layers.Dense(D)(keras.layers.Dense(32, activation="relu")(z))
    return keras.Model(x, keras.layers.Concatenate()([recon, mu, lv]))


def main() -> dict[str, list[float]]:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Points near a 2-D plane in 8-D space.
    codes = rng.normal(size=(2048, LATENT))
    x = (codes @ rng.normal(size=(LATENT, D)) + 0.05 * rng.normal(size=(2048, D))).astype("float32")
    # y_true has y_pred's shape: the inputs to reconstruct, then unused zeros.
    y = np.concatenate([x, np.zeros((len(x), 2 * LATENT), "float32")], axis=1)

    loss = lossdsl.compile_loss(FORMULA, units=UNITS, params={"beta": 0.0})
    recon_name, kl_name = loss.term_names()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=loss, weighted_metrics=loss.term_metrics()
    )
    schedule = lossdsl.ParamSchedule({"beta": lambda epoch: min(1.0, epoch / WARMUP)})
    history = model.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0, callbacks=[schedule]).history
    # A term metric reports the raw term, without its numbers and parameters: for
    # the KL term that is the bracket, twice the KL divergence.
    kl = [0.5 * v for v in history[kl_name]]
    for epoch in range(EPOCHS):
        print(
            f"epoch {epoch + 1}  beta {history['beta'][epoch]:.2f}  "
            f"loss {history['loss'][epoch]:.4f}  reconstruction {history[recon_name][epoch]:.4f}  "
            f"kl {kl[epoch]:.4f}"
        )
    return {
        "beta": history["beta"],
        "loss": history["loss"],
        "recon": history[recon_name],
        "kl": kl,
    }


if __name__ == "__main__":
    main()
