"""The dense-prediction comparisons of ``make bench``: lossdsl formulas with label layouts and
per-example aggregates, each beside the same loss written by hand with ``keras.ops``.

* RetinaNet (batch 8, 50,000 anchors, 80 classes): the loss of the keras-io RetinaNet
  example (``examples/vision/retinanet.py``): a sigmoid focal loss (alpha 0.25, gamma 2)
  summed over the classes against the one-hot class, on the anchors not ignored; a smooth L1
  summed over the 4 box coordinates, on the positive anchors; both summed over the anchors and
  divided by the image's positive anchors (``divide_no_nan``). By hand twice: as keras-io
  writes it, the masks applied to the loss values (a NaN or inf in a masked anchor's inputs
  reaches the value and the gradient), and NaN-safe, the masked anchors' inputs replaced
  before the loss is computed, as lossdsl does; that one computes what the formula computes.
* Segmentation (32 masks of 256 x 256): Dice plus the mean binary crossentropy, per image.

``bench.py`` measures them; this module only builds them (Keras is imported on first use).
"""

from __future__ import annotations

from typing import Any

import numpy as np

RETINA_SHAPE = (8, 50_000)  # images, anchors
RETINA_CLASSES = 80
RETINA_POSITIVE = 0.01  # the share of anchors matched to an object
RETINA_IGNORED = 0.10  # the share in the IoU band that keras-io ignores
RETINA_UNITS = {"box": [0, 4], "cls": {"pred": [4, 4 + RETINA_CLASSES], "true": 4}}
RETINA_FORMULA = (
    "divide_no_nan(sum(80*focal(cls, from_logits=true, alpha=0.25, gamma=2)"
    " where true(cls) != -2) + sum(4*huber(box) where true(cls) >= 0),"
    " sum(1 where true(cls) >= 0))"
)

SEG_SHAPE = (32, 256, 256, 1)
SEG_UNITS = {"mask": 0}
SEG_FORMULA = "dice(mask) + mean(bce(mask))"

ALPHA, GAMMA, DELTA = 0.25, 2.0, 1.0


def retina_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` (4 box targets and a class id: -1 background, -2 ignored, else 0..79) and
    ``y_pred`` (4 box predictions and 80 logits), as keras-io's label encoder and head give."""
    rng = np.random.default_rng(seed)
    images, anchors = RETINA_SHAPE
    y_true = np.empty((images, anchors, 5), "float32")
    y_true[..., :4] = rng.normal(0.0, 1.0, (images, anchors, 4))
    draw = rng.uniform(size=(images, anchors))
    cls = np.full((images, anchors), -1.0, "float32")
    cls[draw < RETINA_IGNORED] = -2.0
    positive = draw >= 1.0 - RETINA_POSITIVE
    cls[positive] = rng.integers(0, RETINA_CLASSES, int(positive.sum()))
    y_true[..., 4] = cls
    y_pred = np.empty((images, anchors, 4 + RETINA_CLASSES), "float32")
    y_pred[..., :4] = rng.normal(0.0, 1.0, (images, anchors, 4))
    # Logits about the prior keras-io's head starts from, -log((1 - 0.01) / 0.01).
    y_pred[..., 4:] = rng.normal(-4.6, 2.0, (images, anchors, RETINA_CLASSES))
    return y_true, y_pred


def seg_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """0/1 masks, and sigmoid probabilities that mostly agree with them."""
    rng = np.random.default_rng(seed)
    y_true = (rng.uniform(size=SEG_SHAPE) < 0.3).astype("float32")
    logits = rng.normal(0.0, 2.0, SEG_SHAPE) + 4.0 * (y_true - 0.5)
    return y_true, (1.0 / (1.0 + np.exp(-logits))).astype("float32")


def _focal_sum(labels: Any, logits: Any) -> Any:
    """keras-io's ``RetinaNetClassificationLoss``: focal loss summed over the classes."""
    from keras import ops

    cross_entropy = ops.binary_crossentropy(labels, logits, from_logits=True)
    probs = ops.sigmoid(logits)
    is_class = ops.equal(labels, 1.0)
    alpha = ops.where(is_class, ALPHA, 1.0 - ALPHA)
    pt = ops.where(is_class, probs, 1.0 - probs)
    return ops.sum(alpha * ops.power(1.0 - pt, GAMMA) * cross_entropy, axis=-1)


def _smooth_l1_sum(y_true: Any, y_pred: Any) -> Any:
    """keras-io's ``RetinaNetBoxLoss``: smooth L1 summed over the box coordinates."""
    from keras import ops

    difference = y_true - y_pred
    absolute = ops.abs(difference)
    loss = ops.where(
        ops.less(absolute, DELTA), 0.5 * ops.square(difference), absolute - 0.5 * DELTA
    )
    return ops.sum(loss, axis=-1)


def retina_keras_io(y_true: Any, y_pred: Any) -> Any:
    """keras-io's ``RetinaNetLoss.call`` in ``keras.ops``: one value per image."""
    from keras import ops

    cls_id = y_true[..., 4]
    labels = ops.one_hot(ops.cast(cls_id, "int32"), RETINA_CLASSES, dtype=y_pred.dtype)
    positive = ops.cast(ops.greater(cls_id, -1.0), y_pred.dtype)
    ignore = ops.cast(ops.equal(cls_id, -2.0), y_pred.dtype)
    clf = _focal_sum(labels, y_pred[..., 4:])
    box = _smooth_l1_sum(y_true[..., :4], y_pred[..., :4])
    clf = ops.where(ops.equal(ignore, 1.0), 0.0, clf)
    box = ops.where(ops.equal(positive, 1.0), box, 0.0)
    normalizer = ops.sum(positive, axis=-1)
    clf = ops.divide_no_nan(ops.sum(clf, axis=-1), normalizer)
    box = ops.divide_no_nan(ops.sum(box, axis=-1), normalizer)
    return clf + box


def retina_nan_safe(y_true: Any, y_pred: Any) -> Any:
    """The same loss with lossdsl's guarantees: each term's masked anchors have their labels
    replaced by 0 and their predictions by 0.5 before the term is computed, and the term is
    selected with ``where`` after (the double where), so a NaN or inf there reaches neither
    the value nor the gradient; a class id outside [0, 80) has no class (keras-io casts it to
    an integer, so -0.5 is class 0). One division, as the formula has."""
    from keras import ops

    cls_id = y_true[..., 4]
    kept = ops.not_equal(cls_id, -2.0)
    positive = ops.greater_equal(cls_id, 0.0)
    # As lossdsl reads a class index: one outside [0, 80) (or not a number) has no class.
    index = ops.where(kept, cls_id, 0.0)
    known = ops.logical_and(ops.greater_equal(index, 0.0), ops.less(index, RETINA_CLASSES))
    labels = ops.one_hot(
        ops.cast(ops.where(known, index, -1.0), "int32"), RETINA_CLASSES, dtype=y_pred.dtype
    )
    logits = ops.where(ops.expand_dims(kept, -1), y_pred[..., 4:], 0.5)
    clf = ops.where(kept, _focal_sum(labels, logits), 0.0)
    at = ops.expand_dims(positive, -1)
    box_true = ops.where(at, y_true[..., :4], 0.0)
    box_pred = ops.where(at, y_pred[..., :4], 0.5)
    box = ops.where(positive, _smooth_l1_sum(box_true, box_pred), 0.0)
    count = ops.sum(ops.cast(positive, y_pred.dtype), axis=-1)
    return ops.divide_no_nan(ops.sum(clf, axis=-1) + ops.sum(box, axis=-1), count)


def seg_by_hand(y_true: Any, y_pred: Any) -> Any:
    """Dice over each image plus its mean binary crossentropy: one value per image."""
    import keras
    from keras import ops

    dice = keras.losses.dice(y_true, y_pred, axis=(1, 2, 3))
    return dice + ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))


def cases() -> list[dict[str, Any]]:
    """Each comparison: a formula, its units, its data and the loss by hand. ``same`` says
    whether the two compute the same thing (the targets apply to those)."""
    retina = {
        "formula": RETINA_FORMULA,
        "units": RETINA_UNITS,
        "data": retina_data,
        "poisoned": poisoned,
    }
    return [
        {**retina, "name": "RetinaNet, keras-io", "hand": retina_keras_io, "same": False},
        {**retina, "name": "RetinaNet, NaN-safe", "hand": retina_nan_safe, "same": True},
        {
            "name": "segmentation",
            "formula": SEG_FORMULA,
            "units": SEG_UNITS,
            "data": seg_data,
            "hand": seg_by_hand,
            "same": True,
        },
    ]


def poisoned(y_true: np.ndarray, y_pred: np.ndarray, anchors: int = 2_000) -> Any:
    """The first image's first ``anchors`` anchors, with NaN in what the loss must not read:
    the logits of the ignored anchors, and the box targets and predictions of the anchors that
    are not positive."""
    t, p = y_true[:1, :anchors].copy(), y_pred[:1, :anchors].copy()
    cls = t[..., 4]
    p[..., 4:][cls == -2] = np.nan
    t[..., :4][cls < 0] = np.nan
    p[..., :4][cls < 0] = np.inf
    return t, p
