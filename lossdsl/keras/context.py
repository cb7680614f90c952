"""What a compiled formula reads: ``y_true`` and ``y_pred``, checked, cast and sliced.

``check_inputs`` turns tensors that the formula cannot use into clear errors at trace time.
A ``Context`` holds the tensors of one evaluation: each column is sliced once however many
terms and conditions read it, and inside a ``where`` term the rows its condition drops are
replaced before use (the first half of the "double where", see ``lossdsl.keras.compiler``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from lossdsl.checker import Checked
from lossdsl.errors import LossInputError, LossValidationError
from lossdsl.kernels import one_hot

__all__ = ["Context", "check_inputs", "float_dtype", "shapes_differ"]

# Masked rows are replaced by these values before a where-term is computed. Any finite value
# keeps the gradient clean (the outer `where` discards what the term gives there), but the
# values must not change what the term computes on the selected rows: Keras's hinge losses map
# 0/1 labels to -1/1 only when every label in the batch is 0 or 1, so a replaced label must be
# 0 (also in the domain of every built-in loss). 0.5 is a prediction every built-in loss and
# log/sqrt accept.
_SAFE_TRUE = 0.0
_SAFE_PRED = 0.5


class Context:
    """The tensors one evaluation reads: inputs, dtype, parameters, and, inside a ``where``
    term, the mask whose false positions are replaced before use.

    It also remembers what this evaluation has computed: each column read (sliced once however
    many terms and conditions read it, masked or not) and the value of each repeated
    subexpression (see ``Program._compile``)."""

    __slots__ = (
        "_columns", "_ones", "_raw", "dtype", "mask", "memo", "params", "y_pred", "y_true",
    )  # fmt: skip

    def __init__(
        self,
        y_true: Any,
        y_pred: Any,
        dtype: str,
        params: Mapping[str, Any],
        *,
        mask: Any = None,
        parent: Context | None = None,
    ) -> None:
        self.y_true = y_true
        self.y_pred = y_pred
        self.dtype = dtype
        self.params = params
        self.mask = mask
        self.memo: dict[int, Any] = {}
        # Unmasked slices, and the all-true masks, are shared with the contexts of where-terms.
        self._raw: dict[tuple[bool, int, int], Any] = {} if parent is None else parent._raw
        self._ones: dict[bool, Any] = {} if parent is None else parent._ones
        self._columns: dict[tuple[Any, ...], Any] = {}

    @property
    def sample_shape(self) -> tuple[Any, ...]:
        """``y_pred.shape[:-1]``: one value per position."""
        return tuple(self.y_pred.shape)[:-1]

    @property
    def all_true(self) -> Any:
        """A boolean ``True`` per position (built on first use)."""
        return self._all(examples=False)

    @property
    def all_examples(self) -> Any:
        """A boolean ``True`` per example, shape ``(batch,)``."""
        return self._all(examples=True)

    def _all(self, *, examples: bool) -> Any:
        if examples not in self._ones:
            first = self._slice(True, 0, -1)
            if examples:
                first = first[(slice(None),) + (0,) * (len(first.shape) - 1)]
            self._ones[examples] = ops.ones_like(first, dtype="bool")
        return self._ones[examples]

    def positions(self, value: Any) -> Any:
        """``value`` as a tensor of this context's dtype with one value per position; a
        per-example value is spread over its example's positions."""
        out = ops.cast(value, self.dtype)
        rank = len(self.sample_shape)
        while 0 < len(out.shape) < rank:
            out = ops.expand_dims(out, -1)
        if tuple(out.shape) != self.sample_shape:
            out = out + ops.zeros_like(self._slice(True, 0, -1))
        return out

    def examples(self, value: Any) -> Any:
        """``value`` (a per-example or batch-wide value) as one value per example."""
        out = ops.cast(value, self.dtype)
        if len(out.shape) == 0:
            out = out + ops.zeros_like(self.all_examples, dtype=self.dtype)
        return out

    def masked(self, m: Any) -> Context:
        """The same inputs, read with the positions where ``m`` is false replaced by a safe
        value (only the columns the term reads are touched). A per-example ``m`` masks every
        position of its example; inside another where-term, both masks apply."""
        if isinstance(m, bool) or tuple(m.shape) != self.sample_shape:
            m = ops.logical_and(self.all_true, _spread(m, len(self.sample_shape)))
        if self.mask is not None:
            m = ops.logical_and(self.mask, m)
        return Context(self.y_true, self.y_pred, self.dtype, self.params, mask=m, parent=self)

    def _slice(self, pred: bool, start: int, stop: int) -> Any:
        """``y[..., start]`` for ``stop == -1``, else ``y[..., start:stop]``, unmasked."""
        key = (pred, start, stop)
        if key not in self._raw:
            y = self.y_pred if pred else self.y_true
            width = y.shape[-1]
            if stop == -1 and width == 1:
                # The one column of y is y reshaped, where a slice copies it (and the slice's
                # gradient writes a tensor of y's size).
                self._raw[key] = ops.squeeze(y, axis=-1)
            elif stop == -1:
                # An integer index, not start:start + 1: TensorFlow's kernel for a
                # shrinking strided slice is several times faster in graph mode.
                self._raw[key] = y[..., start]
            else:
                self._raw[key] = (
                    y
                    if (start, stop) == (0, width)
                    else y[..., start : stop if stop < width else None]
                )
        return self._raw[key]

    def column(self, pred: bool, index: int) -> Any:
        """``y_pred[..., index]`` (or ``y_true``), sanitised inside a where-term."""
        key = (pred, index, -1)
        if key not in self._columns:
            x = self._slice(pred, index, -1)
            if self.mask is not None:
                x = ops.where(self.mask, x, _SAFE_PRED if pred else _SAFE_TRUE)
            self._columns[key] = x
        return self._columns[key]

    def columns(self, pred: bool, start: int, stop: int) -> Any:
        """``y_pred[..., start:stop]`` (or ``y_true``), sanitised inside a where-term."""
        key = (pred, start, stop)
        if key not in self._columns:
            width = (self.y_pred if pred else self.y_true).shape[-1]
            if stop - start == 1 and width != 1:
                x = ops.expand_dims(self.column(pred, start), -1)
            else:
                x = self._slice(pred, start, stop)
                if self.mask is not None:
                    safe = _SAFE_PRED if pred else _SAFE_TRUE
                    x = ops.where(ops.expand_dims(self.mask, -1), x, safe)
            self._columns[key] = x
        return self._columns[key]

    def one_hot(self, index: int, classes: int) -> Any:
        """The one-hot rows of the class indices in ``y_true[..., index]`` (a row of zeros
        for an index outside ``[0, classes)``), sanitised inside a where-term."""
        key = ("one_hot", index, classes)
        if key not in self._columns:
            self._columns[key] = one_hot(self.column(False, index), classes, self.dtype)
        return self._columns[key]


def _spread(m: Any, rank: int) -> Any:
    """A mask with trailing axes of size 1 up to ``rank`` (a constant stays as it is)."""
    if isinstance(m, bool):
        return m
    while len(m.shape) < rank:
        m = ops.expand_dims(m, -1)
    return m


def shapes_differ(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Different ranks, or a dimension known in both that differs."""
    return len(a) != len(b) or any(
        x is not None and y is not None and x != y for x, y in zip(a, b, strict=True)
    )


def float_dtype(x: Any) -> str:
    dtype = str(keras.backend.standardize_dtype(x.dtype))
    return dtype if "float" in dtype else keras.config.floatx()


def _mismatch_hint(ts: tuple[Any, ...], ps: tuple[Any, ...]) -> str:
    """How to fix labels of shape ``ts`` that do not fit predictions of shape ``ps``."""
    sparse = (
        "if y_true holds class indices, read them as such with a label layout: "
        f"units={{'cls': {{'pred': [0, {ps[-1]}], 'true': 0}}}} and labels of shape "
        f"{(*ps[:-1], 1)}"
    )
    if ts == ps[:-1]:  # the labels lack the units axis
        if ps[-1] == 1:
            return (
                "lossdsl reads labels column by column and does not reshape them, as a "
                f"{ts} label against a {ps} output would broadcast; give the labels the "
                "output's shape: keras.ops.expand_dims(y, -1)."
            )
        return f"{sparse} (keras.ops.expand_dims(y, -1))."
    if len(ts) == len(ps) and ts[:-1] == ps[:-1]:  # the same but for the units axis
        if ts[-1] == 1 and ps[-1] is not None and ps[-1] >= 2:
            return f"{sparse}."
        if ts[-1] is not None and ps[-1] is not None:
            short, other = ("y_pred", "y_true") if ps[-1] < ts[-1] else ("y_true", "y_pred")
            by = abs(ts[-1] - ps[-1])
            return (
                f"{short} has {by} unit{'s' if by != 1 else ''} fewer than {other}; check "
                "the model's output width, or declare which columns each side reads: "
                "units={'name': {'pred': [0, 2], 'true': 0}}."
            )
            return (
                f"{short} is {by} unit{'s' if by != 1 else ''} narrower than the other; check "
                "the model's output width, or declare which columns each side reads: "
                "units={'name': {'pred': [0, 2], 'true': 0}}."
            )
    return "give the labels the output's shape, (batch, ..., units)."


def check_inputs(checked: Checked, y_true: Any, y_pred: Any) -> None:
    """Clear errors, at trace time, for inputs this formula cannot use."""
    text = checked.formula.text()
    whole = (0, len(text))
    try:
        ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
    except (TypeError, ValueError):  # TensorFlow: a shape of unknown rank
        raise LossInputError(
            "y_true and y_pred must have a known rank when the loss is traced. "
            f"Received: y_true {y_true.shape} and y_pred {y_pred.shape}.",
            source=text,
            span=whole,
            hint="give tf.function an input_signature with a rank, such as TensorSpec([None, 3]).",
        ) from None
    if len(ps) < 2:
        raise LossInputError(
            f"y_pred has shape {ps}, with no units axis. lossdsl expects "
            "(batch, ..., units), the units on the last axis.",
            source=text,
            span=whole,
            hint="a model with one output unit returns (batch, 1); reshape a (batch,) "
            "output or label with keras.ops.expand_dims(x, -1).",
        )
    layout = checked.units.layout
    if shapes_differ(ts[:-1] if layout else ts, ps[:-1] if layout else ps):
        same = "leading shape (every axis but the last)" if layout else "shape"
        raise LossInputError(
            f"y_true and y_pred must have the same {same}. Received: y_true {ts} and y_pred {ps}.",
            source=text,
            span=whole,
            hint=_mismatch_hint(ts, ps),
        )
    if ps[-1] is None or ts[-1] is None:
        raise LossInputError(
            "The units axis (the last) of y_true and y_pred must have a known size "
            f"when the loss is traced. Received: y_true {ts} and y_pred {ps}.",
            source=text,
            span=whole,
            hint="without it, lossdsl cannot check that each unit exists; give the "
            "last axis a size, as a model's output has.",
        )
    width = ps[-1]
    declared = checked.units.width
    if declared is not None and width != declared:
        raise LossInputError(
            f"The formula was validated for units={declared}, but y_pred has {width} "
            f"units (shape {ps}).",
            source=text,
            span=whole,
            hint="pass the model's output width as units, or units=None to take it from y_pred.",
        )
    if not layout:  # y_true has y_pred's shape: one check for both sides
        stop, span = max(checked.stops.values(), key=lambda s: s[0])
        if stop > width:
            raise LossValidationError(
                f"The formula reads column {stop - 1}, but y_pred has only {width} "
                f"unit{'s' if width != 1 else ''} (shape {ps}).",
                source=text,
                span=span,
                hint=f"select units below u{width}, or check the model's output width.",
            )
        return
    for side, shape in (("pred", ps), ("true", ts)):
        stop, span = checked.stops[side]
        if stop > shape[-1]:
            have = shape[-1]
            raise LossInputError(
                f"The units map reads column {stop - 1} of y_{side}, but y_{side} has only "
                f"{have} column{'s' if have != 1 else ''} (shape {shape}): {stop - have} "
                "too few.",
                source=text,
                span=span,
                hint=f"check the model's output against the units' {side} sides."
                if side == "pred"
                else "check the labels' width against the units' true sides.",
            )
