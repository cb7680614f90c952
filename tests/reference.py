"""Shared by the numerical tests: how they run a function, how they compare, and
NumPy float64 references written from the math (never from lossdsl)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPS = 1e-7  # keras.config.epsilon()
HI = float(np.float32(1 - EPS))  # Keras's upper clip bound, as float32 stores it


def traced(fn, mode):
    """``fn`` eagerly, or under ``tf.function(jit_compile=True)`` for ``mode="xla"``."""
    return tf.function(fn, jit_compile=True) if mode == "xla" else fn


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def xent(t, p, lo=EPS, hi=HI):
    """Elementwise binary crossentropy of probabilities clipped to ``[lo, hi]``."""
    p = np.clip(p, lo, hi)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def xent_logits(t, x):
    """Elementwise binary crossentropy of logits."""
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def cce(t, p, from_logits=False, label_smoothing=0.0, *, lo=EPS, hi=HI):
    """Categorical crossentropy over the last axis, Keras's normalisation and clipping."""
    t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    logq = log_softmax(p) if from_logits else np.log(np.clip(p / p.sum(-1, keepdims=True), lo, hi))
    return -np.sum(t * logq, -1)


def data_kinds(n):
    """Generators of ``(n, k)`` data for each kind of unit, from ``numpy`` ``r``."""
    return {
        "label": lambda r, k: r.integers(0, 2, (n, k)),
        "prob": lambda r, k: r.uniform(0.02, 0.98, (n, k)),
        "logit": lambda r, k: r.normal(0, 3, (n, k)),
        "score": lambda r, k: r.uniform(-2, 2, (n, k)),
        "pos": lambda r, k: r.uniform(0.1, 3, (n, k)),
        "real": lambda r, k: r.normal(0, 1.5, (n, k)),
        "onehot": lambda r, k: np.eye(k)[r.integers(0, k, n)],
        "simplex": lambda r, k: np.exp(log_softmax(r.normal(0, 1.5, (n, k)))),
    }
