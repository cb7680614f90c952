"""Builders shared by the test modules: the lesion formula, the small two-headed Keras model the
training tests fit, lesion-style data (a presence column and a location column) and Keras's
binary crossentropy in float64 NumPy.

Plain functions and constants, imported with ``from conftest import ...`` (pytest puts
``tests/`` on ``sys.path``, as for ``reference.py``). Keras is imported inside the builders that
need it, not here, so collecting a module that uses none of them does not start TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

EPS = 1e-7  # keras.config.epsilon(): the clip of Keras's binary crossentropy

LESION = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
LESION_UNITS = {"presence": 0, "loc": 1}


def lesion_model(seed: int = 0) -> keras.Model:
    """A ``keras.Model`` from 4 inputs: ``Dense(8, tanh)``, then a sigmoid presence unit and a
    linear location unit, concatenated (``y_pred`` is ``(batch, 2)``). Its initial weights come
    from ``keras.utils.set_random_seed(seed)``, so two calls with one ``seed`` build the same
    model."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    presence = keras.layers.Dense(1, activation="sigmoid")(h)
    loc = keras.layers.Dense(1)(h)
    return keras.Model(inputs, keras.layers.Concatenate()([presence, loc]))


def lesion_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` drawn from ``rng``: ``x`` of shape ``(n, 4)``, standard normal; the label's
    presence is ``x[:, 0] > 0`` and its location ``0.5 * x[:, 1] + 0.1``, a function of ``x``
    that the model can learn. float32."""
    x = rng.normal(size=(n, 4)).astype("float32")
    presence = (x[:, 0] > 0).astype("float32")
    loc = (x[:, 1] * 0.5 + 0.1).astype("float32")
    return x, np.stack([presence, loc], axis=1)


def drifting_lesion_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from ``default_rng(seed)``: ``x`` standard normal ``(n, 4)``, labels unrelated
    to it. The presence rate (0.15 to 0.9) and the spread of the location error (0.5 to 3) grow
    along the rows, so that unshuffled batches select different numbers of samples with
    different errors. float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    rate = np.linspace(0.15, 0.9, n)
    presence = (rng.random(n) < rate).astype("float32")
    loc = rng.normal(size=n) * np.linspace(0.5, 3.0, n) + 1.0
    return x, np.stack([presence, loc], axis=1).astype("float32")


def np_bce(t: Any, p: Any) -> np.ndarray:
    """Keras's elementwise binary crossentropy of probabilities, clipped to
    ``[EPS, 1 - EPS]``, in float64."""
    t = np.asarray(t, np.float64)
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))
