"""Checked formula to a ``keras.ops`` function of ``(y_true, y_pred)``.

Each AST node becomes a small closure, built once; calling the program runs
them on tensors. The program uses ``keras.ops`` only, so it traces under
``tf.function`` (XLA included) and ``jax.jit``, and returns one value per
sample: shape ``y_pred.shape[:-1]``.

Values are Python floats while they are constant (so constants fold at trace
time) and tensors of ``y_pred``'s dtype once they touch the data.

``T where C`` (see the README's Semantics section):

* ``m = C`` per sample, with no gradient (``stop_gradient`` on its operands);
* the columns of ``y_true`` and ``y_pred`` that ``T`` reads are replaced by
  0 and 0.5 in the rows where ``m`` is false *before* ``T`` is computed, and ``T``
  is selected with ``where`` after, so masked rows contribute exactly 0 to
  the value and to the gradient even when their inputs are NaN or inf (the
  "double where");
* ``where_mean="selected"``: ``c = where(m, T, 0) * n / count(m)``, whose batch
  mean is the mean of ``T`` over the selected samples (0 when none is);
  ``where_mean="batch"``: ``c = where(m, T, 0)``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from lossdsl import ast
from lossdsl._distribute import global_sum, replicas
from lossdsl.catalog import LOSSES
from lossdsl.errors import LossInputError, LossValidationError
from lossdsl.validate import Checked, split_term

__all__ = ["Program", "builtin_loss_fn"]

# Masked rows are replaced by these values before a where-term is computed. Any
# finite value keeps the gradient clean (the outer `where` discards what the
# term gives there), but the values must not change what the term computes on
# the selected rows: Keras's hinge losses map 0/1 labels to -1/1 only when every
# label in the batch is 0 or 1, so a replaced label must be 0 (also in the
# domain of every built-in loss). 0.5 is a prediction every built-in loss and
# log/sqrt accept.
_SAFE_TRUE = 0.0
_SAFE_PRED = 0.5


def _focal(y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
    """``keras.losses.binary_focal_crossentropy``, value for value, with two
    differences that only matter where Keras goes wrong:

    * giving ``alpha`` turns on class balancing (Keras silently ignores ``alpha``
      unless ``apply_class_balancing=True``);
    * the focal factor ``(1 - p_t) ** gamma`` has a finite gradient where
      ``p_t == 1`` (Keras's ``power`` gives NaN there for ``gamma < 1``).
    """
    return ops.mean(_focal_each(y_true, y_pred, **kwargs), axis=-1)


def _focal_each(
    y_true: Any,
    y_pred: Any,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> Any:
    """``_focal`` before its mean over the units: one value per element."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    prob = ops.sigmoid(y_pred) if from_logits else y_pred
    bce = ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)
    base = 1.0 - (y_true * prob + (1.0 - y_true) * (1.0 - prob))
    if gamma == 0:
        factor = ops.ones_like(base)
    else:
        positive = ops.greater(base, 0.0)
        safe = ops.where(positive, base, 1.0)  # the double where: no 0 ** gamma in the gradient
        factor = ops.where(positive, ops.power(safe, gamma), 0.0)
    out = factor * bce
    if alpha is not None:
        out = out * (y_true * alpha + (1.0 - y_true) * (1.0 - alpha))
    return out


# One unit: each built-in loss below is Keras's own expression before its mean
# over the last axis, applied to the column itself. A mean of one value is that
# value, bit for bit, so the result is Keras's; but TensorFlow's graph mode would
# otherwise run a reduction (and a slow strided slice) per loss call.
# tests/test_values.py checks each against keras.losses on one unit.


def _bce_each(
    y_true: Any, y_pred: Any, from_logits: bool = False, label_smoothing: float = 0.0
) -> Any:
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return ops.binary_crossentropy(y_true, y_pred, from_logits=from_logits)


def _huber_each(y_true: Any, y_pred: Any, delta: float = 1.0) -> Any:
    delta = ops.convert_to_tensor(delta, dtype=y_pred.dtype)
    error = ops.subtract(y_pred, y_true)
    abs_error = ops.abs(error)
    half = ops.convert_to_tensor(0.5, dtype=abs_error.dtype)
    return ops.where(
        abs_error <= delta, half * ops.square(error), delta * abs_error - half * ops.square(delta)
    )


def _mape_each(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon(), dtype=y_pred.dtype)
    return 100.0 * ops.abs((y_true - y_pred) / ops.maximum(ops.abs(y_true), epsilon))


def _msle_each(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon())
    first_log = ops.log(ops.maximum(y_pred, epsilon) + 1.0)
    second_log = ops.log(ops.maximum(y_true, epsilon) + 1.0)
    return ops.square(first_log - second_log)


def _log_cosh_each(y_true: Any, y_pred: Any) -> Any:
    log2 = ops.convert_to_tensor(ops.log(2.0), dtype=y_pred.dtype)
    x = y_pred - y_true
    return x + ops.softplus(x * -2.0) - log2


def _poisson_each(y_true: Any, y_pred: Any) -> Any:
    epsilon = ops.convert_to_tensor(keras.backend.epsilon(), dtype=y_pred.dtype)
    return y_pred - y_true * ops.log(y_pred + epsilon)


_ONE_UNIT: dict[str, Callable[..., Any]] = {
    "bce": _bce_each,
    "focal": _focal_each,
    "mse": lambda y_true, y_pred: ops.square(y_true - y_pred),
    "mae": lambda y_true, y_pred: ops.abs(y_true - y_pred),
    "mape": _mape_each,
    "msle": _msle_each,
    "huber": _huber_each,
    "log_cosh": _log_cosh_each,
    "poisson": _poisson_each,
}


# Keras's losses clip probabilities to [1e-7, 1 - 1e-7] and guard divisions and
# norms with epsilon = 1e-7, made for float32. In float16 and bfloat16, 1 - 1e-7
# rounds to 1.0, so a saturated probability gives log(0): bce(0, 1) is inf and
# bce(1, 1) NaN, with NaN gradients (and 1 / epsilon overflows float16). The
# built-in losses therefore compute in float32 for these dtypes and return the
# input's dtype: Keras's float32 value, rounded to the low precision.
_LOW_PRECISION = ("float16", "bfloat16")


def _in_float32(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` computed in float32 for float16 and bfloat16 inputs."""

    @functools.wraps(fn)
    def run(y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
        dtype = keras.backend.standardize_dtype(y_pred.dtype)
        if dtype not in _LOW_PRECISION:
            return fn(y_true, y_pred, **kwargs)
        out = fn(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), **kwargs)
        return ops.cast(out, dtype)

    return run


def one_unit_loss_fn(name: str) -> Callable[..., Any] | None:
    """For a built-in loss over one unit: the function of the 1-D columns
    ``y_true[..., j]`` and ``y_pred[..., j]`` giving its per-sample value, or
    ``None`` if there is none (then ``builtin_loss_fn`` is used)."""
    fn = _ONE_UNIT.get(name)
    return None if fn is None or LOSSES[name].fn is not None else _in_float32(fn)


def builtin_loss_fn(name: str) -> Callable[..., Any]:
    """The function computing a loss's per-sample value from the selected columns.

    A registered loss is returned as given; a built-in one computes in float32
    for float16 and bfloat16 inputs (see ``_in_float32``)."""
    entry = LOSSES[name]
    if entry.fn is not None:
        return entry.fn
    if name == "focal":
        return _in_float32(_focal)
    assert entry.keras_name is not None
    return _in_float32(getattr(keras.losses, entry.keras_name))


Value = Any  # a Python float, a Python bool, or a tensor
Node = Callable[["_Ctx"], Value]


class _Ctx:
    """The tensors one evaluation reads: inputs, dtype, parameters, and, inside
    a ``where`` term, the mask whose false rows are replaced before use.

    It also remembers what this evaluation has computed: each column read
    (sliced once however many terms and conditions read it, masked or not) and
    the value of each repeated subexpression (see ``Program._compile``)."""

    __slots__ = (
        "_all_true", "_columns", "_raw", "dtype", "mask", "memo", "params", "y_pred", "y_true",
    )  # fmt: skip

    def __init__(
        self,
        y_true: Any,
        y_pred: Any,
        dtype: str,
        params: Mapping[str, Any],
        *,
        mask: Any = None,
        parent: _Ctx | None = None,
    ) -> None:
        self.y_true = y_true
        self.y_pred = y_pred
        self.dtype = dtype
        self.params = params
        self.mask = mask
        self.memo: dict[int, Any] = {}
        self._all_true = None if parent is None else parent._all_true
        # Unmasked slices are shared with the context a where-term masks.
        self._raw: dict[tuple[bool, int, int], Any] = {} if parent is None else parent._raw
        self._columns: dict[tuple[bool, int, int], Any] = {}

    @property
    def sample_shape(self) -> tuple[Any, ...]:
        """``y_pred.shape[:-1]``: one value per sample."""
        return tuple(self.y_pred.shape)[:-1]

    @property
    def all_true(self) -> Any:
        """A boolean ``True`` per sample (built on first use)."""
        if self._all_true is None:
            self._all_true = ops.ones_like(self._slice(True, 0, -1), dtype="bool")
        return self._all_true

    def masked(self, m: Any) -> _Ctx:
        """The same inputs, read with the rows where ``m`` is false replaced by a
        safe value (only the columns the term reads are touched)."""
        return _Ctx(self.y_true, self.y_pred, self.dtype, self.params, mask=m, parent=self)

    def _slice(self, pred: bool, start: int, stop: int) -> Any:
        """``y[..., start]`` for ``stop == -1``, else ``y[..., start:stop]``, unmasked."""
        key = (pred, start, stop)
        if key not in self._raw:
            y = self.y_pred if pred else self.y_true
            # An integer index, not start:start + 1: TensorFlow's kernel for a
            # shrinking strided slice is several times faster in graph mode.
            self._raw[key] = y[..., start] if stop == -1 else y[..., start:stop]
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
            if stop - start == 1:
                x = ops.expand_dims(self.column(pred, start), -1)
            else:
                x = self._slice(pred, start, stop)
                if self.mask is not None:
                    safe = _SAFE_PRED if pred else _SAFE_TRUE
                    x = ops.where(ops.expand_dims(self.mask, -1), x, safe)
            self._columns[key] = x
        return self._columns[key]


def _remembered(fn: Node) -> Node:
    """``fn``, computed at most once per evaluation context."""
    key = id(fn)

    def run(ctx: _Ctx) -> Value:
        if key not in ctx.memo:
            ctx.memo[key] = fn(ctx)
        return ctx.memo[key]

    return run


def _const(x: Value) -> bool:
    return isinstance(x, float | int | bool)


def _sg(x: Value) -> Value:
    return x if _const(x) else ops.stop_gradient(x)


_PY_BINARY: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def _add(a: Any, b: Any) -> Any:
    """``a + b``. On TensorFlow, ``keras.ops.add`` turns a sum whose second operand
    looks like a bias vector into ``tf.nn.bias_add``, which fails for per-sample
    values of a static shape ``(0, k)`` (a batch of 0 sequences). For an empty
    operand, ``a - (-b)``: the same IEEE sum, and ``subtract`` has no such case."""
    if 0 in tuple(getattr(b, "shape", ())):
        return ops.subtract(a, ops.negative(b))
    return ops.add(a, b)


_OPS_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": _add,
    "-": ops.subtract,
    "*": ops.multiply,
    "/": ops.divide,
}
_COMPARE: dict[str, tuple[Callable[[Any, Any], Any], Callable[[float, float], bool]]] = {
    "<": (ops.less, lambda a, b: a < b),
    "<=": (ops.less_equal, lambda a, b: a <= b),
    ">": (ops.greater, lambda a, b: a > b),
    ">=": (ops.greater_equal, lambda a, b: a >= b),
    "==": (ops.equal, lambda a, b: a == b),
    "!=": (ops.not_equal, lambda a, b: a != b),
}
_MATH_OPS: dict[str, Callable[..., Any]] = {
    "abs": ops.abs,
    "sqrt": ops.sqrt,
    "log": ops.log,
    "exp": ops.exp,
    "square": ops.square,
    "min": ops.minimum,
    "max": ops.maximum,
    "clip": lambda x, lo, hi: ops.minimum(ops.maximum(x, lo), hi),
}


def _binary(op: str, a: Value, b: Value) -> Value:
    if _const(a) and _const(b):
        return _PY_BINARY[op](a, b)
    return _OPS_BINARY[op](a, b)


class Program:
    """A compiled formula: ``program(y_true, y_pred, params)`` gives the
    per-sample loss. ``params`` maps each parameter name to a scalar (a
    ``keras.Variable`` in a ``FormulaLoss``)."""

    def __init__(self, checked: Checked, where_mean: str = "selected") -> None:
        if where_mean not in ("selected", "batch"):
            raise ValueError(f"where_mean must be 'selected' or 'batch'. Received: {where_mean!r}.")
        self.checked = checked
        self.where_mean = where_mean
        # Subexpressions written more than once (structurally: spans take no part
        # in equality) share one closure, whose value each evaluation computes once.
        self._repeated = {
            node
            for node, n in Counter(ast.walk(checked.formula.expr)).items()
            if n > 1 and not isinstance(node, ast.Number | ast.Name)
        }
        self._closures: dict[ast.Node, Node] = {}
        self._root = self._compile(checked.formula.expr)
        self._terms: dict[tuple[int, bool], Callable[[_Ctx], tuple[Any, Any]]] = {}

    # -- building closures ----------------------------------------------------

    def _compile(self, node: ast.Node) -> Node:
        """The closure computing ``node``: built once per distinct subtree, and
        remembering its value in the evaluation's context if the subtree repeats."""
        fn = self._closures.get(node)
        if fn is None:
            fn = self._build(node)
            if node in self._repeated:
                fn = _remembered(fn)
            self._closures[node] = fn
        return fn

    def _build(self, node: ast.Node) -> Node:
        if isinstance(node, ast.Number):
            value = node.value
            return lambda ctx: value
        if isinstance(node, ast.Name):
            name = node.id
            return lambda ctx: ctx.params[name]
        if isinstance(node, ast.Neg):
            inner = self._compile(node.operand)
            return lambda ctx: _neg(inner(ctx))
        if isinstance(node, ast.Sum | ast.Product):
            pairs = node.terms if isinstance(node, ast.Sum) else node.factors
            return self._chain(pairs)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Where):
            return self._where(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.And | ast.Or):
            return self._logical(node)
        if isinstance(node, ast.Not):
            inner = self._compile(node.operand)
            return lambda ctx: _not(inner(ctx))
        raise TypeError(f"cannot compile {node!r}")  # pragma: no cover - validated away

    def _chain(self, pairs: tuple[tuple[str, ast.Expr], ...]) -> Node:
        first = self._compile(pairs[0][1])
        rest = [(op, self._compile(e)) for op, e in pairs[1:]]
        first_neg = pairs[0][0] == "-"
        product = pairs[0][0] == "*"

        def run(ctx: _Ctx) -> Value:
            acc = first(ctx)
            if first_neg:
                acc = _neg(acc)
            if not product:
                for op, fn in rest:
                    acc = _binary(op, acc, fn(ctx))
                return acc
            # Multiply the Python constants together first, in float64, so that
            # `mse(u0) * 1e30 * 1e30 / 1e55` cannot overflow float32 on the way.
            coef, tensor = (acc, None) if _const(acc) else (1.0, acc)
            for op, fn in rest:
                v = fn(ctx)
                if _const(v):
                    coef = coef / v if op == "/" else coef * v
                elif tensor is None:
                    tensor = ops.divide(1.0, v) if op == "/" else v
                else:
                    tensor = _binary(op, tensor, v)
            return coef if tensor is None else (tensor if coef == 1.0 else tensor * coef)

        return run

    def _call(self, node: ast.Call) -> Node:
        units = self.checked.units
        if node.name in ("pred", "true"):
            cols = units.resolve(node.args[0])
            assert cols is not None
            col = cols[0]
            pred = node.name == "pred"
            return lambda ctx: ctx.column(pred, col)
        if node.name in _MATH_OPS:
            fn = _MATH_OPS[node.name]
            args = [self._compile(a) for a in node.args]
            return lambda ctx: fn(*(a(ctx) for a in args))
        cols = units.resolve(node.args[0])
        assert cols is not None
        start, stop = cols
        kwargs = {k.name: _literal(k.value) for k in node.kwargs}
        source, span = self.checked.formula.text(), node.span
        each = one_unit_loss_fn(node.name) if stop - start == 1 else None
        if each is not None:
            return lambda ctx: each(ctx.column(False, start), ctx.column(True, start), **kwargs)
        loss = builtin_loss_fn(node.name)

        def run(ctx: _Ctx) -> Value:
            out = loss(ctx.columns(False, start, stop), ctx.columns(True, start, stop), **kwargs)
            want = ctx.sample_shape
            got = tuple(getattr(out, "shape", ()))
            if _shapes_differ(got, want):
                raise LossValidationError(
                    f"{node.name}() returned shape {got}; a loss must return one value per "
                    f"sample, shape {want}.",
                    source=source,
                    span=span,
                    hint="reduce over the last axis only: keras.ops.mean(..., axis=-1).",
                )
            return out

        return run

    def _where(self, node: ast.Where) -> Node:
        term = self._compile(node.term)
        cond = self._compile(node.cond)
        selected = self.where_mean == "selected"

        def run(ctx: _Ctx) -> Value:
            m, value = _masked(ctx, cond, term)
            if selected:
                # Counted in float32 (float16 overflows past 65,504 samples and
                # bfloat16 is inexact past 256), over the global batch.
                count = global_sum(ops.sum(ops.cast(m, "float32")))
                n = global_sum(ops.cast(ops.size(m), "float32"))
                scale = ops.cast(ops.divide_no_nan(n, count), ctx.dtype)
                value = value * ops.stop_gradient(scale)
            return value

        return run

    def _compare(self, node: ast.Compare) -> Node:
        tensor_op, py_op = _COMPARE[node.op]
        left, right = self._compile(node.left), self._compile(node.right)

        def run(ctx: _Ctx) -> Value:
            a, b = _sg(left(ctx)), _sg(right(ctx))
            if _const(a) and _const(b):
                return py_op(a, b)
            return tensor_op(a, b)

        return run

    def _logical(self, node: ast.And | ast.Or) -> Node:
        items = [self._compile(c) for c in node.items]
        combine = ops.logical_and if isinstance(node, ast.And) else ops.logical_or

        def run(ctx: _Ctx) -> Value:
            acc = items[0](ctx)
            for fn in items[1:]:
                acc = combine(acc, fn(ctx))
            return acc

        return run

    # -- running --------------------------------------------------------------

    def __call__(self, y_true: Any, y_pred: Any, params: Mapping[str, Any] | None = None) -> Any:
        ctx = self.context(y_true, y_pred, params)
        out = self.per_sample(self._root(ctx), ctx)
        r = replicas()
        if r > 1:
            # Under tf.distribute: weigh this replica's samples so that Keras's
            # per-replica means add up to the global mean, even split or not.
            n_local = ops.cast(ops.size(out), "float32")
            factor = ops.divide_no_nan(n_local * float(r), global_sum(n_local))
            out = out * ops.stop_gradient(ops.cast(factor, ctx.dtype))
        return out

    def context(self, y_true: Any, y_pred: Any, params: Mapping[str, Any] | None = None) -> _Ctx:
        """Inputs cast to a float dtype and checked, ready for compiled closures."""
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        dtype = _float_dtype(y_pred)
        y_pred = ops.cast(y_pred, dtype)
        y_true = ops.cast(y_true, dtype)
        self.check_inputs(y_true, y_pred)
        values = {k: ops.cast(v, dtype) for k, v in (params or self.checked.params).items()}
        return _Ctx(y_true, y_pred, dtype, values)

    @staticmethod
    def per_sample(value: Value, ctx: _Ctx) -> Any:
        """``value`` as a tensor of the per-sample shape and dtype."""
        out = ops.cast(value, ctx.dtype)
        if len(out.shape) == 0:  # a constant: broadcast it to every sample
            out = out + ops.zeros_like(ctx.y_pred[..., 0])
        return out

    # -- terms, for metrics and custom loops ------------------------------------------

    def term(self, index: int, *, weighted: bool = False) -> Callable[[_Ctx], tuple[Any, Any]]:
        """For top-level term ``index``: a function giving per-sample
        ``(numerator, denominator)``, so that a running ``sum(num*w) / sum(den*w)``
        is the term's dataset-level value: its mean over all samples, or, for
        ``T where C`` with ``where_mean="selected"``, the mean of ``T`` over the
        samples where ``C`` holds. ``weighted`` multiplies in the term's sign,
        numbers and parameters; otherwise they are left out (the raw loss)."""
        key = (index, weighted)
        if key not in self._terms:
            self._terms[key] = self._term(index, weighted=weighted)
        return self._terms[key]

    def _term(self, index: int, *, weighted: bool) -> Callable[[_Ctx], tuple[Any, Any]]:
        t = self.checked.terms[index]
        scalars, body, cond = split_term(t.expr)
        body_fn = self._compile(body)
        cond_fn = self._compile(cond) if cond is not None else None
        scale_fns = [(op, self._compile(e)) for op, e in scalars]
        sign = -1.0 if t.sign < 0 else 1.0
        batch_mean = self.where_mean == "batch"

        def run(ctx: _Ctx) -> tuple[Any, Any]:
            ones = ops.cast(ctx.all_true, ctx.dtype)
            if cond_fn is None:
                num, den = self.per_sample(body_fn(ctx), ctx), ones
            else:
                m, num = _masked(ctx, cond_fn, body_fn)
                den = ones if batch_mean else ops.cast(m, ctx.dtype)
            if weighted:
                coef: Value = sign
                for op, fn in scale_fns:
                    coef = _binary(op, coef, fn(ctx))
                num = num * coef
            return num, ops.stop_gradient(den)

        return run

    def check_inputs(self, y_true: Any, y_pred: Any) -> None:
        """Clear errors, at trace time, for inputs this formula cannot use."""
        text = self.checked.formula.text()
        whole = (0, len(text))
        try:
            ts, ps = tuple(y_true.shape), tuple(y_pred.shape)
        except (TypeError, ValueError):  # TensorFlow: a shape of unknown rank
            raise LossInputError(
                "y_true and y_pred must have a known rank when the loss is traced. "
                f"Received: y_true {y_true.shape} and y_pred {y_pred.shape}.",
                source=text,
                span=whole,
                hint="give tf.function an input_signature with a rank, such as "
                "TensorSpec([None, 3]).",
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
        if _shapes_differ(ts, ps):
            raise LossInputError(
                f"y_true and y_pred must have the same shape. Received: y_true {ts} and "
                f"y_pred {ps}.",
                source=text,
                span=whole,
                hint="Keras does not reshape labels for a Loss subclass; a (batch,) label "
                "against a (batch, 1) output would silently broadcast to (batch, batch). "
                "Reshape the labels to the output's shape.",
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
        declared = self.checked.units.width
        if declared is not None and width != declared:
            raise LossInputError(
                f"The formula was validated for units={declared}, but y_pred has {width} "
                f"units (shape {ps}).",
                source=text,
                span=whole,
                hint="pass the model's output width as units, or units=None to take it "
                "from y_pred.",
            )
        if self.checked.max_stop > width:
            raise LossValidationError(
                f"The formula reads column {self.checked.max_stop - 1}, but y_pred has only "
                f"{width} unit{'s' if width != 1 else ''} (shape {ps}).",
                source=text,
                span=self.checked.max_stop_span,
                hint=f"select units below u{width}, or check the model's output width.",
            )


def _masked(ctx: _Ctx, cond: Node, term: Node) -> tuple[Any, Any]:
    """The mask of ``cond`` and ``term`` where it holds, 0 elsewhere: ``term``
    runs on inputs whose masked rows are replaced first (the double where)."""
    m = cond(ctx)
    if _const(m) or len(m.shape) < len(ctx.sample_shape):
        m = ops.logical_and(ctx.all_true, m)  # a constant condition: broadcast it
    value = ops.where(m, term(ctx.masked(m)), 0.0)
    return m, ops.cast(value, ctx.dtype)


def _shapes_differ(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Different ranks, or a dimension known in both that differs."""
    return len(a) != len(b) or any(
        x is not None and y is not None and x != y for x, y in zip(a, b, strict=True)
    )


def _float_dtype(x: Any) -> str:
    dtype = str(keras.backend.standardize_dtype(x.dtype))
    return dtype if "float" in dtype else keras.config.floatx()


def _neg(x: Value) -> Value:
    return -x if _const(x) else ops.negative(x)


def _not(x: Value) -> Value:
    return (not x) if isinstance(x, bool) else ops.logical_not(x)


def _literal(node: ast.Expr) -> bool | float:
    if isinstance(node, ast.Name):
        return node.id == "true"
    if isinstance(node, ast.Neg):
        return -_literal(node.operand)
    assert isinstance(node, ast.Number)
    return node.value
