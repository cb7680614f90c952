"""A RetinaNet-style detection head, with the keras-io RetinaNet loss as one formula.

Each image is A anchors, each with a feature vector. For every anchor the model
predicts 4 box regressions and C class logits: ``y_pred`` is ``(batch, A, 4 + C)``.
``y_true`` is ``(batch, A, 5)``: the 4 box targets and a class id, -1 for a
background anchor and -2 for an ignored one (in RetinaNet, an anchor whose overlap
with an object is neither high nor low). The label layout says that the class unit
is C logits on the pred side but one column of class ids on the true side, so
``focal(cls)`` compares the logits with the one-hot row of the id (a row of zeros
for -1 and -2). The loss of the keras-io RetinaNet example is then

    divide_no_nan(sum(C*focal(cls, ...) where true(cls) != -2), sum(1 where true(cls) >= 0))
  + divide_no_nan(sum(4*huber(box) where true(cls) >= 0), sum(1 where true(cls) >= 0))

per image: the focal loss summed over classes (``C*`` undoes Keras's mean over the
columns) on every anchor that is not ignored, plus the smooth-L1 box loss summed
over coordinates on the positive anchors, both summed over the anchors and divided
by the image's number of positive anchors (0 for an image without one). Keras
averages over the images. ``loss.term_metrics()`` logs the two parts, and the
example checks, on a batch that has an image without any positive anchor, that the
formula gives the value of the same loss written by hand with ``keras.ops``.

Run it with ``python examples/detection.py``.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import ops

import lossdsl

A, F, C, EPOCHS = 16, 8, 3, 6  # anchors per image, features per anchor, classes, epochs
BACKGROUND, IGNORED = -1, -2
BOX_WEIGHTS = np.random.default_rng(1).normal(size=(4, 4)).astype("float32")
UNITS = {"box": [0, 4], "cls": {"pred": [4, 4 + C], "true": 4}}
FORMULA = f"""
    divide_no_nan(sum({C}*focal(cls, from_logits=true, alpha=0.25, gamma=2)
                      where true(cls) != {IGNORED}),
                  sum(1 where true(cls) >= 0))                  # classification
  + divide_no_nan(sum(4*huber(box) where true(cls) >= 0),
                  sum(1 where true(cls) >= 0))                  # box regression
"""


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Anchor features ``x`` (n, A, F) and labels ``y`` (n, A, 5)."""
    x = rng.normal(size=(n, A, F)).astype("float32")
    # How well an anchor covers an object: high is positive, a middle band is ignored.
    overlap = x[..., 0] + 0.5 * x[..., 1]
    cls = np.argmax(x[..., 2 : 2 + C], axis=-1)
    cls = np.where(overlap > 1.2, cls, np.where(overlap > 0.8, IGNORED, BACKGROUND))
    # The box offsets of a positive anchor depend on its features; elsewhere they are noise
    # that the loss must never read.
    box = x[..., 4:8] @ BOX_WEIGHTS * 0.5 + 0.05 * rng.normal(size=(n, A, 4))
    box = np.where((cls >= 0)[..., None], box, 10 * rng.normal(size=(n, A, 4)))
    return x, np.concatenate([box, cls[..., None]], axis=-1).astype("float32")


def build_model() -> keras.Model:
    """A head shared by every anchor: Dense layers act on the last axis."""
    x = keras.Input((A, F))
    h = keras.layers.Dense(32, activation="relu")(x)
    h = keras.layers.Dense(32, activation="relu")(h)
    box = keras.layers.Dense(4, name="box")(h)
    # RetinaNet's prior: every class starts at probability 0.01, so the many background
    # anchors do not swamp the first steps.
    prior = keras.initializers.Constant(-math.log((1 - 0.01) / 0.01))
    cls = keras.layers.Dense(C, bias_initializer=prior, name="cls")(h)
    return keras.Model(x, keras.layers.Concatenate()([box, cls]))


def retinanet_loss(y_true, y_pred):
    """The keras-io RetinaNetLoss (alpha 0.25, gamma 2, delta 1), by hand: one value per image."""
    box_true, box_pred = y_true[..., :4], y_pred[..., :4]
    cls_id, logits = y_true[..., 4], y_pred[..., 4:]
    one_hot = ops.cast(ops.equal(cls_id[..., None], ops.arange(C, dtype="float32")), "float32")
    # Sigmoid focal loss, summed over the classes.
    cross_entropy = ops.maximum(logits, 0) - logits * one_hot + ops.log1p(ops.exp(-abs(logits)))
    probs = ops.sigmoid(logits)
    pt = ops.where(one_hot == 1, probs, 1 - probs)
    alpha = ops.where(one_hot == 1, 0.25, 0.75)
    cls_loss = ops.sum(alpha * ops.square(1 - pt) * cross_entropy, axis=-1)
    # Smooth L1, summed over the 4 coordinates.
    diff = abs(box_true - box_pred)
    box_loss = ops.sum(ops.where(diff < 1, 0.5 * ops.square(diff), diff - 0.5), axis=-1)
    positive = ops.cast(cls_id > -1, "float32")
    cls_loss = ops.where(cls_id == IGNORED, 0.0, cls_loss)
    box_loss = ops.where(positive == 1, box_loss, 0.0)
    normalizer = ops.sum(positive, axis=-1)
    cls_loss = ops.divide_no_nan(ops.sum(cls_loss, axis=-1), normalizer)
    box_loss = ops.divide_no_nan(ops.sum(box_loss, axis=-1), normalizer)
    return cls_loss + box_loss


def main() -> dict:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(2048, rng)
    x_test, y_test = make_data(256, rng)
    ids = y_train[..., 4]
    print(
        f"{len(x_train)} images of {A} anchors: {np.mean(ids >= 0):.1%} positive, "
        f"{np.mean(ids == IGNORED):.1%} ignored, "
        f"{np.mean((ids >= 0).sum(axis=1) == 0):.1%} of images without a positive anchor"
    )

    loss = lossdsl.compile_loss(FORMULA, units=UNITS, name="retinanet")
    cls_name, box_name = loss.term_names()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=loss, weighted_metrics=loss.term_metrics()
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        batch_size=64,
        epochs=EPOCHS,
        verbose=0,
    ).history
    for epoch in range(EPOCHS):
        print(
            f"epoch {epoch + 1}  loss {history['loss'][epoch]:.4f}  "
            f"classification {history[cls_name][epoch]:.4f}  box {history[box_name][epoch]:.4f}  "
            f"val_loss {history['val_loss'][epoch]:.4f}"
        )

    # One batch of held-out images; the first has its positive anchors made background.
    x_check, y_check = x_test[:8], y_test[:8].copy()
    y_check[0, :, 4] = np.where(y_check[0, :, 4] == IGNORED, IGNORED, BACKGROUND)
    y_check[0, :, :4] = 10 * rng.normal(size=(A, 4))
    positives = (y_check[..., 4] >= 0).sum(axis=1)
    assert positives[0] == 0 and positives.sum() > 0 and (y_check[..., 4] == IGNORED).any()
    print(f"check batch: positive anchors per image {positives.tolist()}")
    # The trained model's predictions, and large random ones (box errors past huber's delta).
    predictions = {
        "trained model": model.predict(x_check, verbose=0),
        "random": (3 * rng.normal(size=(len(x_check), A, 4 + C))).astype("float32"),
    }
    checks = {}
    for label, y_pred in predictions.items():
        by_formula = float(loss(y_check, y_pred))
        by_hand = float(ops.mean(retinanet_loss(y_check, y_pred)))
        per_image = ops.convert_to_numpy(loss.call(y_check, y_pred))
        per_image_by_hand = ops.convert_to_numpy(retinanet_loss(y_check, y_pred))
        difference = float(np.max(np.abs(per_image - per_image_by_hand)))
        print(
            f"{label}: formula {by_formula:.6f}, by hand {by_hand:.6f}, "
            f"largest per-image difference {difference:.1e}"
        )
        print("  per image: " + " ".join(f"{v:.4f}" for v in per_image))
        if not (
            math.isclose(by_formula, by_hand, rel_tol=1e-5, abs_tol=1e-6)
            and np.allclose(per_image, per_image_by_hand, rtol=1e-5, atol=1e-6)
        ):
            raise SystemExit(f"{label}: the formula does not match the hand-written RetinaNet loss")
        checks[label] = (by_formula, by_hand)
    print("the formula matches the hand-written RetinaNet loss")
    return {
        "loss": history["loss"],
        "classification": history[cls_name],
        "box": history[box_name],
        "checks": checks,
    }


if __name__ == "__main__":
    main()
