"""Checked formula to a ``keras.ops`` function of ``(y_true, y_pred)``.

Each AST node becomes a small closure, built once; calling the program runs them on tensors.
The program uses ``keras.ops`` only, so it traces under ``tf.function`` (XLA included) and
``jax.jit``, and returns one value per sample: shape ``y_pred.shape[:-1]``. Each function's
implementation comes from its catalogue entry (``lossdsl.catalog``).

Values are Python floats while they are constant (so constants fold at trace time) and tensors
of ``y_pred``'s dtype once they touch the data.

``T where C`` (see the docs' semantics page):

* ``m = C`` per sample, with no gradient (``stop_gradient`` on its operands);
* the columns of ``y_true`` and ``y_pred`` that ``T`` reads are replaced by 0 and 0.5 in the
  rows where ``m`` is false *before* ``T`` is computed, and ``T`` is selected with ``where``
  after, so masked rows contribute exactly 0 to the value and to the gradient even when their
  inputs are NaN or inf (the "double where");
* ``where_mean="selected"``: ``c = where(m, T, 0) * n / count(m)``, whose batch mean is the
  mean of ``T`` over the selected samples (0 when none is); ``where_mean="batch"``:
  ``c = where(m, T, 0)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from keras import ops

from lossdsl import ast
from lossdsl.catalog import Accessor, LossEntry, MathFunction, lookup
from lossdsl.errors import LossValidationError
from lossdsl.keras.context import Context, check_inputs, float_dtype, shapes_differ
from lossdsl.keras.distribute import global_sum, replicas
from lossdsl.kernels import in_float32

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["Program"]

Value = Any  # a Python float, a Python bool, or a tensor
Node = Callable[[Context], Value]


def _remembered(fn: Node) -> Node:
    """``fn``, computed at most once per evaluation context."""
    key = id(fn)

    def run(ctx: Context) -> Value:
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


def _apply(function: MathFunction, args: list[Value]) -> Value:
    """A math function of constants folds in Python (float64); of tensors, it is an op."""
    if all(_const(a) for a in args):
        return function.py(*args)
    return function.ops(*args)


def _binary(op: str, a: Value, b: Value) -> Value:
    if _const(a) and _const(b):
        return _PY_BINARY[op](a, b)
    return _OPS_BINARY[op](a, b)


class Program:
    """A compiled formula: ``program(y_true, y_pred, params)`` gives the
    per-sample loss. ``params`` maps each parameter name to a scalar (a
    ``keras.Variable`` in a ``FormulaLoss``)."""

    def __init__(self, spec: LossSpec) -> None:
        self.checked = checked = spec.checked
        self.where_mean = spec.where_mean
        # Subexpressions written more than once (structurally: spans take no part
        # in equality) share one closure, whose value each evaluation computes once.
        self._repeated = {
            node
            for node, n in Counter(ast.walk(checked.formula.expr)).items()
            if n > 1 and not isinstance(node, ast.Number | ast.Name)
        }
        self._closures: dict[ast.Node, Node] = {}
        self._root = self._compile(checked.formula.expr)
        self._terms: dict[tuple[int, bool], Callable[[Context], tuple[Any, Any]]] = {}

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

        def run(ctx: Context) -> Value:
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
        entry = lookup(node.name)
        if isinstance(entry, MathFunction):
            args = [self._compile(a) for a in node.args]
            return lambda ctx: _apply(entry, [a(ctx) for a in args])
        cols = self.checked.units.resolve(node.args[0])
        assert cols is not None
        start, stop = cols
        if isinstance(entry, Accessor):
            pred = entry.reads_pred
            return lambda ctx: ctx.column(pred, start)
        assert isinstance(entry, LossEntry)
        kwargs = {k.name: ast.literal(k.value) for k in node.kwargs}
        if stop - start == 1 and entry.column is not None:
            each = in_float32(entry.column) if entry.builtin else entry.column
            return lambda ctx: each(ctx.column(False, start), ctx.column(True, start), **kwargs)
        loss = in_float32(entry.columns) if entry.builtin else entry.columns
        source, span = self.checked.formula.text(), node.span

        def run(ctx: Context) -> Value:
            out = loss(ctx.columns(False, start, stop), ctx.columns(True, start, stop), **kwargs)
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

    def _where(self, node: ast.Where) -> Node:
        term = self._compile(node.term)
        cond = self._compile(node.cond)
        selected = self.where_mean == "selected"

        def run(ctx: Context) -> Value:
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

        def run(ctx: Context) -> Value:
            a, b = _sg(left(ctx)), _sg(right(ctx))
            if _const(a) and _const(b):
                return py_op(a, b)
            return tensor_op(a, b)

        return run

    def _logical(self, node: ast.And | ast.Or) -> Node:
        items = [self._compile(c) for c in node.items]
        combine = ops.logical_and if isinstance(node, ast.And) else ops.logical_or

        def run(ctx: Context) -> Value:
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

    def context(self, y_true: Any, y_pred: Any, params: Mapping[str, Any] | None = None) -> Context:
        """Inputs cast to a float dtype and checked, ready for compiled closures."""
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        dtype = float_dtype(y_pred)
        y_pred = ops.cast(y_pred, dtype)
        y_true = ops.cast(y_true, dtype)
        check_inputs(self.checked, y_true, y_pred)
        values = {k: ops.cast(v, dtype) for k, v in (params or self.checked.params).items()}
        return Context(y_true, y_pred, dtype, values)

    @staticmethod
    def per_sample(value: Value, ctx: Context) -> Any:
        """``value`` as a tensor of the per-sample shape and dtype."""
        out = ops.cast(value, ctx.dtype)
        if len(out.shape) == 0:  # a constant: broadcast it to every sample
            out = out + ops.zeros_like(ctx.y_pred[..., 0])
        return out

    # -- terms, for metrics and custom loops ------------------------------------------

    def term(self, index: int, *, weighted: bool = False) -> Callable[[Context], tuple[Any, Any]]:
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

    def _term(self, index: int, *, weighted: bool) -> Callable[[Context], tuple[Any, Any]]:
        t = self.checked.terms[index]
        body_fn = self._compile(t.body)
        cond_fn = self._compile(t.cond) if t.cond is not None else None
        scale_fns = [(op, self._compile(e)) for op, e in t.factors]
        sign = float(t.sign)
        batch_mean = self.where_mean == "batch"

        def run(ctx: Context) -> tuple[Any, Any]:
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


def _masked(ctx: Context, cond: Node, term: Node) -> tuple[Any, Any]:
    """The mask of ``cond`` and ``term`` where it holds, 0 elsewhere: ``term``
    runs on inputs whose masked rows are replaced first (the double where)."""
    m = cond(ctx)
    if _const(m) or len(m.shape) < len(ctx.sample_shape):
        m = ops.logical_and(ctx.all_true, m)  # a constant condition: broadcast it
    value = ops.where(m, term(ctx.masked(m)), 0.0)
    return m, ops.cast(value, ctx.dtype)


def _neg(x: Value) -> Value:
    return -x if _const(x) else ops.negative(x)


def _not(x: Value) -> Value:
    return (not x) if isinstance(x, bool) else ops.logical_not(x)
