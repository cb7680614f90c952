"""Segmenting bright blobs with a per-image dice loss plus a per-image crossentropy.

The images are noise with one to three bright discs; the mask to predict marks
the discs. A small fully convolutional model outputs one sigmoid unit per pixel,
so ``y_true`` and ``y_pred`` are both ``(batch, H, W, 1)``. The loss is

    dice(mask) + mean(bce(mask))

``dice(mask)`` is Keras's dice loss of each image (over every axis but the
batch's), and ``mean(bce(mask))`` is the crossentropy averaged over each image's
pixels: two values per image, added, then averaged over the images by Keras.
``loss.term_metrics()`` logs the two terms. After training, the example measures
each held-out image's dice and IoU with NumPy on the thresholded predictions and
checks that they are clearly better than those of the untrained model.

Run it with ``python examples/segmentation.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import lossdsl

SIZE, EPOCHS = 24, 8
FORMULA = "dice(mask) + mean(bce(mask))"
UNITS = {"mask": 0}


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images ``x`` and masks ``y``, both (n, SIZE, SIZE, 1)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.uniform(3, SIZE - 3, size=2)
            masks[i] |= (rows - r) ** 2 + (cols - c) ** 2 <= rng.uniform(2, 5) ** 2
    # Blobs one unit brighter than the background, under noise of about the same size.
    x = masks + rng.normal(scale=0.8, size=masks.shape)
    return x[..., None].astype("float32"), masks[..., None].astype("float32")


def build_model() -> keras.Model:
    x = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    return keras.Model(x, keras.layers.Conv2D(1, 1, activation="sigmoid")(h))


def dice_and_iou(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's dice and IoU of the prediction thresholded at 0.5 (1 when both are empty)."""
    truth = y_true.reshape(len(y_true), -1) > 0.5
    pred = y_pred.reshape(len(y_pred), -1) > 0.5
    overlap = np.sum(truth & pred, axis=1)
    union = np.sum(truth | pred, axis=1)
    sizes = np.sum(truth, axis=1) + np.sum(pred, axis=1)
    dice = np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 1.0)
    return dice, iou


def main() -> dict:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(768, rng)
    x_test, y_test = make_data(128, rng)
    print(
        f"{len(x_train)} training images of {SIZE}x{SIZE}, "
        f"{y_train.mean():.1%} of the pixels in a blob"
    )

    loss = lossdsl.compile_loss(FORMULA, units=UNITS)
    dice_name, bce_name = loss.term_names()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=loss, weighted_metrics=loss.term_metrics()
    )
    dice_before, iou_before = dice_and_iou(y_test, model.predict(x_test, verbose=0))

    history = model.fit(x_train, y_train, batch_size=32, epochs=EPOCHS, verbose=0).history
    for epoch in range(EPOCHS):
        print(
            f"epoch {epoch + 1}  loss {history['loss'][epoch]:.4f}  "
            f"dice loss {history[dice_name][epoch]:.4f}  bce {history[bce_name][epoch]:.4f}"
        )

    dice_after, iou_after = dice_and_iou(y_test, model.predict(x_test, verbose=0))
    print("held-out images, dice / IoU of the thresholded prediction:")
    for i in range(6):
        print(
            f"  image {i}: before {dice_before[i]:.3f} / {iou_before[i]:.3f}  "
            f"after {dice_after[i]:.3f} / {iou_after[i]:.3f}"
        )
    print(f"held-out mean dice before training: {dice_before.mean():.3f}")
    print(f"held-out mean dice after training: {dice_after.mean():.3f}")
    print(f"held-out mean IoU before training: {iou_before.mean():.3f}")
    print(f"held-out mean IoU after training: {iou_after.mean():.3f}")
    if not dice_after.mean() > max(0.6, dice_before.mean() + 0.2):
        raise SystemExit("the model did not learn to segment the blobs")
    return {
        "loss": history["loss"],
        "dice_loss": history[dice_name],
        "bce": history[bce_name],
        "dice_before": float(dice_before.mean()),
        "dice_after": float(dice_after.mean()),
        "iou_before": float(iou_before.mean()),
        "iou_after": float(iou_after.mean()),
    }


if __name__ == "__main__":
    main()
