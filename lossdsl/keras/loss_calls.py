"""Loss calls and per-example reductions of a compiled formula (see ``lossdsl.keras.compiler``).

A loss call becomes the cheapest closure that computes the catalogue entry's value on the
unit's columns: the kernel of one column on a 1-D column, Keras's function on several units (or,
times a constant, the kernel's sum over the units), the sparse kernel on class indices, or the
per-example kernel with its sums over each example or over the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from keras import ops

from lossdsl import ast
from lossdsl.arguments import Binding
from lossdsl.catalog import LossEntry
from lossdsl.errors import LossValidationError
from lossdsl.keras.context import Context, shapes_differ
from lossdsl.keras.distribute import global_sum
from lossdsl.kernels import in_float32

__all__ = [
    "ColumnMean",
    "batch_total",
    "example_mean",
    "example_total",
    "loss_call",
    "positions",
]

Value = Any  # a Python float, a Python bool, or a tensor
Node = Callable[[Context], Value]


def loss_call(
    entry: LossEntry, binding: Binding, keywords: dict[str, Any], source: str, node: ast.Call
) -> Node:
    """The closure computing a call of the loss ``entry`` on the unit ``binding`` (``node``
    in the formula ``source``, for the error a registered loss of the wrong shape gets)."""
    assert binding.true is not None and binding.pred is not None
    (t0, t1), (p0, p1) = binding.true, binding.pred
    sparse, width = binding.sparse, p1 - p0

    def columns(ctx: Context) -> tuple[Any, Any]:
        labels = ctx.one_hot(t0, width) if sparse else ctx.columns(False, t0, t1)
        return labels, ctx.columns(True, p0, p1)

    if entry.level == "example":
        batch = bool(keywords.pop("batch", False))
        per_example = entry.columns

        def example(ctx: Context) -> Value:
            total = batch_total if batch else example_total
            kernel = in_float32(lambda t, p, **kw: per_example(t, p, total, **kw))
            return kernel(*columns(ctx), **keywords)

        return example
    if sparse and entry.sparse is not None:
        index_loss = in_float32(entry.sparse)
        return lambda ctx: index_loss(ctx.column(False, t0), ctx.columns(True, p0, p1), **keywords)
    if not sparse and width == 1 and entry.column is not None:
        each = in_float32(entry.column) if entry.builtin else entry.column
        return lambda ctx: each(ctx.column(False, t0), ctx.column(True, p0), **keywords)
    if entry.column is not None:
        return ColumnMean(entry, sparse, width, columns, keywords)
    loss = in_float32(entry.columns) if entry.builtin else entry.columns
    span = node.span

    def run(ctx: Context) -> Value:
        out = loss(*columns(ctx), **keywords)
        want = ctx.sample_shape
        got = tuple(getattr(out, "shape", ()))
        if shapes_differ(got, want):
            raise LossValidationError(
                f"{node.name}() returned shape {got}; a loss must return one value per "
                f"sample, shape {want}.",
                source=source,
                span=span,
                hint="reduce over the last axis only: keras.ops.mean(..., axis=-1).",
            )
        return out

    return run


class ColumnMean:
    """A built-in loss over ``width`` units: the mean over them of an elementwise kernel
    (Keras's own function computes it). Times a constant ``c`` it is the kernel's sum over the
    units times ``c / width``: one reduction either way, and no multiplication where ``c`` is
    ``width`` (the sum over the units that RetinaNet's losses take)."""

    def __init__(
        self,
        entry: LossEntry,
        sparse: bool,
        width: int,
        columns: Callable[[Context], tuple[Any, Any]],
        keywords: dict[str, Any],
    ) -> None:
        assert entry.column is not None
        one_hot = entry.one_hot_column if sparse else None
        kernel = one_hot or entry.column
        wrap = in_float32 if entry.builtin else _same
        # Keras's own function, to the last bit, except where one-hot rows of class indices
        # have a form that does less work.
        mean = entry.columns if one_hot is None else _reduced(ops.mean, kernel)
        self._mean, self._sum = wrap(mean), wrap(_reduced(ops.sum, kernel))
        self._width, self._columns, self._keywords = width, columns, keywords

    def __call__(self, ctx: Context) -> Value:
        return self._mean(*self._columns(ctx), **self._keywords)

    def times(self, ctx: Context, coef: float) -> Value:
        """``coef`` times the loss."""
        if coef == 1.0:
            return self(ctx)
        total = self._sum(*self._columns(ctx), **self._keywords)
        scale = coef / self._width
        return total if scale == 1.0 else total * scale


def _reduced(reduce: Callable[..., Any], kernel: Callable[..., Any]) -> Callable[..., Any]:
    return lambda t, p, **keywords: reduce(kernel(t, p, **keywords), axis=-1)


def _same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def example_total(x: Any) -> Any:
    """``x`` summed over every axis but the first: one total per example."""
    axes = _example_axes(x)
    return x if axes is None else ops.sum(x, axis=axes)


def example_mean(x: Any) -> Any:
    """``x`` averaged over every axis but the first; 0 for an example without positions."""
    axes, count = _example_axes(x), positions(x)
    if axes is None:
        return x
    if isinstance(count, float) and count > 0:  # known when traced: one reduction
        return ops.mean(x, axis=axes)
    return ops.divide_no_nan(example_total(x), count)


def _example_axes(x: Any) -> int | tuple[int, ...] | None:
    """Every axis of ``x`` but the first, counted from the last (-1 alone as an int, the
    form hand-written code uses, so the graph holds one constant for it); ``None`` if none."""
    axes = tuple(range(1 - len(x.shape), 0))
    return None if not axes else axes[0] if len(axes) == 1 else axes


def positions(x: Any) -> Any:
    """How many positions each example of ``x`` has: a number when the shape is known when
    the loss is traced, else counted, one per example."""
    dims = tuple(x.shape)[1:]
    if all(d is not None for d in dims):
        return float(math.prod(dims))
    return example_total(ops.ones_like(x))


def batch_total(x: Any) -> Any:
    """``x`` summed over the whole global batch (over the replicas too)."""
    return global_sum(ops.sum(x))
