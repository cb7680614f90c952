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

import enum
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import keras
from keras import ops

from lossdsl import ast
from lossdsl.catalog import Accessor, Aggregate, LossEntry, MathFunction, lookup
from lossdsl.keras.context import Context, check_inputs, float_dtype
from lossdsl.keras.distribute import global_sum, replicas
from lossdsl.keras.loss_calls import (
    ColumnMean,
    batch_total,
    example_mean,
    example_total,
    loss_call,
    positions,
)
from lossdsl.levels import Level, node_facts

if TYPE_CHECKING:
    from lossdsl.spec import LossSpec

__all__ = ["Program"]

Value = Any  # a Python float, a Python bool, or a tensor
Node = Callable[[Context], Value]


class Scope(enum.Enum):
    """What a where-term is averaged over, by the reduction around it."""

    TOP = "the loss's reduction: where_mean decides"
    SUM = "sum(...): not averaged"
    MEAN = "mean(...): each example's selected positions"
    MEAN_BATCH = "mean(..., batch=true): the batch's selected positions"


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
    """A compiled formula: ``program(y_true, y_pred, params)`` gives the loss of each position
    (of each example for a formula of aggregates). ``params`` maps each parameter name to a
    scalar (a ``keras.Variable`` in a ``FormulaLoss``)."""

    def __init__(self, spec: LossSpec) -> None:
        self.checked = checked = spec.checked
        self.where_mean = spec.where_mean
        self.per_example = checked.level is Level.EXAMPLE
        self._facts = node_facts(checked.formula.expr)
        # Subexpressions written more than once (structurally: spans take no part in
        # equality) share one closure, whose value each evaluation computes once.
        self._repeated = {
            node
            for node, n in Counter(ast.walk(checked.formula.expr)).items()
            if n > 1 and not isinstance(node, ast.Number | ast.Name)
        }
        self._closures: dict[tuple[ast.Node, Scope], Node] = {}
        self._root = self._compile(checked.formula.expr, Scope.TOP)
        self._terms: dict[tuple[int, bool], Callable[[Context], tuple[Any, Any]]] = {}

    # -- building closures ---------------------------------------------------------------

    def _compile(self, node: ast.Node, scope: Scope) -> Node:
        """The closure computing ``node`` inside ``scope``: built once per distinct subtree,
        and remembering its value in the evaluation's context if the subtree repeats."""
        fn = self._closures.get((node, scope))
        if fn is None:
            fn = self._build(node, scope)
            if node in self._repeated:
                fn = _remembered(fn)
            self._closures[(node, scope)] = fn
        return fn

    def _build(self, node: ast.Node, scope: Scope) -> Node:
        if isinstance(node, ast.Number):
            value = node.value
            return lambda ctx: value
        if isinstance(node, ast.Name):
            name = node.id
            return lambda ctx: ctx.params[name]
        if isinstance(node, ast.Neg):
            inner = self._compile(node.operand, scope)
            return lambda ctx: _neg(inner(ctx))
        if isinstance(node, ast.Sum | ast.Product):
            pairs = node.terms if isinstance(node, ast.Sum) else node.factors
            return self._chain(pairs, scope)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Where):
            term, cond = self._compile(node.term, scope), self._compile(node.cond, scope)
            return self._selected(term, cond, scope, self._facts.level(node))
        if isinstance(node, ast.Compare):
            return self._compare(node, scope)
        if isinstance(node, ast.And | ast.Or):
            return self._logical(node, scope)
        if isinstance(node, ast.Not):
            inner = self._compile(node.operand, scope)
            return lambda ctx: _not(inner(ctx))
        raise TypeError(f"cannot compile {node!r}")  # pragma: no cover - validated away

    def _chain(self, pairs: tuple[tuple[str, ast.Expr], ...], scope: Scope) -> Node:
        first = self._compile(pairs[0][1], scope)
        rest = [(op, self._compile(e, scope)) for op, e in pairs[1:]]
        first_neg = pairs[0][0] == "-"
        product = pairs[0][0] == "*"
        factors = [("*", first), *rest]

        def run(ctx: Context) -> Value:
            if not product:
                acc = first(ctx)
                if first_neg:
                    acc = _neg(acc)
                for op, fn in rest:
                    acc = _binary(op, acc, fn(ctx))
                return acc
            # Multiply the Python constants together first, in float64, so that
            # `mse(u0) * 1e30 * 1e30 / 1e55` cannot overflow float32 on the way. A loss
            # over several units is computed last, once the other factors are known.
            values = [None if isinstance(fn, ColumnMean) else fn(ctx) for _, fn in factors]
            coef = 1.0
            for (op, _), v in zip(factors, values, strict=True):
                if v is not None and _const(v):
                    coef = coef / v if op == "/" else coef * v
            deferred = [fn for (op, fn), v in zip(factors, values, strict=True) if v is None]
            if len(deferred) == 1 and all(v is None or _const(v) for v in values):
                (mean,) = deferred
                assert isinstance(mean, ColumnMean)
                if ("/", mean) not in factors:
                    return mean.times(ctx, coef)
            tensor = None
            for (op, fn), v in zip(factors, values, strict=True):
                value = fn(ctx) if v is None else v
                if _const(value):
                    continue
                if tensor is None:
                    tensor = ops.divide(1.0, value) if op == "/" else value
                else:
                    tensor = _binary(op, tensor, value)
            return coef if tensor is None else (tensor if coef == 1.0 else tensor * coef)

        return run

    def _call(self, node: ast.Call, scope: Scope) -> Node:
        entry = lookup(node.name)
        if isinstance(entry, MathFunction):
            args = [self._compile(a, scope) for a in node.args]
            return lambda ctx: _apply(entry, [a(ctx) for a in args])
        if isinstance(entry, Aggregate):
            return self._aggregate(node, entry)
        binding = self.checked.units.resolve(node.args[0])
        assert binding is not None
        if isinstance(entry, Accessor):
            cols = binding.pred if entry.reads_pred else binding.true
            assert cols is not None
            col, pred = cols[0], entry.reads_pred
            return lambda ctx: ctx.column(pred, col)
        assert isinstance(entry, LossEntry)
        keywords = {k.name: ast.literal(k.value) for k in node.kwargs}
        ignored = keywords.pop("ignore_class", None)
        loss = loss_call(entry, binding, keywords, self.checked.formula.text(), node)
        if ignored is None:
            return loss
        # ignore_class=c is `where true(u) != c`: the ignored positions drop out of the
        # value and the gradient, and the term is averaged over the others.
        assert binding.true is not None
        index = binding.true[0]

        def kept(ctx: Context) -> Value:
            return ops.not_equal(ops.stop_gradient(ctx.column(False, index)), ignored)

        return self._selected(loss, kept, scope, Level.POSITION)

    def _aggregate(self, node: ast.Call, entry: Aggregate) -> Node:
        batch = any(k.name == "batch" and ast.literal(k.value) is True for k in node.kwargs)
        scope = Scope.SUM if not entry.mean else Scope.MEAN_BATCH if batch else Scope.MEAN
        arg = self._compile(node.args[0], scope)
        mean = entry.mean

        def run(ctx: Context) -> Value:
            # In float32, as counts are: float16 sums overflow past 65,504.
            x = ops.cast(ctx.positions(arg(ctx)), _wide(ctx.dtype))
            if batch:
                total = batch_total(x)
                if mean:
                    total = ops.divide_no_nan(total, global_sum(ops.cast(ops.size(x), x.dtype)))
            else:
                total = example_mean(x) if mean else example_total(x)
            return ops.cast(total, ctx.dtype)

        return run

    def _selected(self, term: Node, cond: Node, scope: Scope, level: Level) -> Node:
        """``term`` where ``cond`` holds, averaged as ``scope`` says."""
        example = level >= Level.EXAMPLE
        normalise = scope is not Scope.SUM and not (
            scope is Scope.TOP and self.where_mean == "batch"
        )

        def run(ctx: Context) -> Value:
            m, value = _masked(ctx, cond, term, example)
            if not normalise:
                return value
            # Counted in float32 (float16 overflows past 65,504 samples and bfloat16 is
            # inexact past 256); over the global batch, or over each example inside mean().
            selected = ops.cast(m, "float32")
            if scope is Scope.MEAN:
                scale = ops.divide_no_nan(positions(selected), example_total(selected))
                scale = _spread(scale, len(value.shape))
            else:
                count = global_sum(ops.sum(selected))
                scale = ops.divide_no_nan(global_sum(ops.cast(ops.size(m), "float32")), count)
            return value * ops.stop_gradient(ops.cast(scale, ctx.dtype))

        return run

    def _compare(self, node: ast.Compare, scope: Scope) -> Node:
        tensor_op, py_op = _COMPARE[node.op]
        left, right = self._compile(node.left, scope), self._compile(node.right, scope)

        def run(ctx: Context) -> Value:
            a, b = _sg(left(ctx)), _sg(right(ctx))
            if _const(a) and _const(b):
                return py_op(a, b)
            return tensor_op(a, b)

        return run

    def _logical(self, node: ast.And | ast.Or, scope: Scope) -> Node:
        items = [self._compile(c, scope) for c in node.items]
        combine = ops.logical_and if isinstance(node, ast.And) else ops.logical_or

        def run(ctx: Context) -> Value:
            acc = items[0](ctx)
            for fn in items[1:]:
                acc = combine(acc, fn(ctx))
            return acc

        return run

    # -- running ------------------------------------------------------------------------

    def __call__(self, y_true: Any, y_pred: Any, params: Mapping[str, Any] | None = None) -> Any:
        ctx = self.context(y_true, y_pred, params)
        out = self.shaped(self._root(ctx), ctx)
        r = replicas()
        if r > 1:
            # Under tf.distribute: weigh this replica's samples so that Keras's per-replica
            # means add up to the global mean, even split or not.
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

    def shaped(self, value: Value, ctx: Context) -> Any:
        """``value`` as the loss returns it: one value per position, or per example."""
        return ctx.examples(value) if self.per_example else ctx.positions(value)

    # -- terms, for metrics and custom loops --------------------------------------------

    def term(self, index: int, *, weighted: bool = False) -> Callable[[Context], tuple[Any, Any]]:
        """For top-level term ``index``: a function giving ``(numerator, denominator)`` per
        position (per example for a formula of aggregates), so that a running
        ``sum(num*w) / sum(den*w)`` is the term's dataset-level value: its mean over all
        samples, or, for ``T where C`` with ``where_mean="selected"``, the mean of ``T`` over
        the samples where ``C`` holds. ``weighted`` multiplies in the term's sign, numbers and
        parameters; otherwise they are left out (the raw loss)."""
        key = (index, weighted)
        if key not in self._terms:
            self._terms[key] = self._term(index, weighted=weighted)
        return self._terms[key]

    def _term(self, index: int, *, weighted: bool) -> Callable[[Context], tuple[Any, Any]]:
        t = self.checked.terms[index]
        body_fn = self._compile(t.body, Scope.TOP)
        cond_fn = self._compile(t.cond, Scope.TOP) if t.cond is not None else None
        scale_fns = [(op, self._compile(e, Scope.TOP)) for op, e in t.factors]
        sign = float(t.sign)
        batch_mean = self.where_mean == "batch"
        example = self.per_example

        def run(ctx: Context) -> tuple[Any, Any]:
            ones = ops.cast(ctx.all_examples if example else ctx.all_true, ctx.dtype)
            if cond_fn is None:
                num, den = self.shaped(body_fn(ctx), ctx), ones
            else:
                m, num = _masked(ctx, cond_fn, body_fn, example)
                den = ones if batch_mean else ops.cast(m, ctx.dtype)
            if weighted:
                coef: Value = sign
                for op, fn in scale_fns:
                    coef = _binary(op, coef, fn(ctx))
                num = num * coef
            return num, ops.stop_gradient(den)

        return run


def _masked(ctx: Context, cond: Node, term: Node, example: bool) -> tuple[Any, Any]:
    """The mask of ``cond`` (per example, or per position), and ``term`` where it holds, 0
    elsewhere: ``term`` runs on inputs whose masked positions are replaced first (the double
    where)."""
    m = cond(ctx)
    every = ctx.all_examples if example else ctx.all_true
    if _const(m) or len(m.shape) < len(every.shape):
        m = ops.logical_and(every, m)  # a constant or batch-wide condition: broadcast it
    value = term(ctx.masked(m))
    if _const(value):  # `1 where c` counts: the mask as numbers
        selected = ops.cast(m, ctx.dtype)
        return m, selected if value == 1 else selected * value
    return m, ops.cast(ops.where(m, value, 0.0), ctx.dtype)


def _spread(x: Any, rank: int) -> Any:
    """A per-example ``x`` with trailing axes of size 1, to broadcast over ``rank`` axes."""
    while len(x.shape) < rank:
        x = ops.expand_dims(x, -1)
    return x


def _wide(dtype: str) -> str:
    """float32 for the low-precision dtypes, which cannot hold a sum of many positions."""
    return "float32" if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16") else dtype


def _neg(x: Value) -> Value:
    return -x if _const(x) else ops.negative(x)


def _not(x: Value) -> Value:
    return (not x) if isinstance(x, bool) else ops.logical_not(x)
