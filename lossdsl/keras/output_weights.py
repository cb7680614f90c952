"""Sample weights given per output of a ``FormulaModel``: each term weighed by the weights
of the output it reads."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from keras import ops

from lossdsl import ast
from lossdsl.errors import LossDSLError, LossInputError
from lossdsl.keras.loss import FormulaLoss
from lossdsl.levels import Level
from lossdsl.spec import LossSpec

__all__ = ["OutputWeights"]


class OutputWeights:
    """Sample weights given per output (a dict, or a list in the order of the outputs), as
    Keras takes them for a model with several outputs.

    Keras weighs each output's own loss by its weights; here each top-level term is weighed by
    the weights of the output its value reads (its conditions left out), and a term whose
    value reads several outputs by the smallest of their weights, sample by sample: one array
    that Keras copies to every output weighs it by that array, and a weight of 0 for a missing
    label of either output leaves the sample out. A term that reads no output (a learned
    parameter's ``+ s``) is weighed by the smallest weight of all outputs, so that one array
    weighs every term; an output without weights weighs 1.

    The formula is compiled once more with each term multiplied by label columns that hold
    the weights, ``true(presence_weight) * bce(presence)``, and the weights are joined to the
    labels as those columns.
    """

    def __init__(
        self,
        loss: FormulaLoss,
        pred: dict[str, tuple[int, int]],
        true: dict[str, tuple[int, int]],
        learned: Mapping[str, Any],
    ) -> None:
        checked = loss.spec.checked
        self.names = list(pred)
        self.width = max((b for _, b in true.values()), default=0)
        # A term that reads no output (a learned parameter's ``+ s``) counts as reading all.
        self.outputs = [
            _outputs_read(t.expr, checked.units, pred, true) or set(self.names)
            for t in checked.terms
        ]
        self.example = checked.level is not Level.POSITION
        self._loss, self._learned = loss, learned
        self._weighed: FormulaLoss | None = None

    @property
    def weighed(self) -> FormulaLoss:
        """The formula with each term times its weight columns, built on first use (a model
        trained without per-output weights never needs it)."""
        if self._weighed is None:
            self._weighed = self._build()
        return self._weighed

    def _build(self) -> FormulaLoss:
        loss, checked = self._loss, self._loss.spec.checked
        if loss.reduction == "mean_with_sample_weight":
            raise LossInputError(
                "reduction='mean_with_sample_weight' divides by the sum of the sample weights, "
                "which weights per output (Keras copies one array to every output) do not "
                "give. Use the default reduction, 'sum_over_batch_size'."
            )
        # Output names are unit names, so identifiers already.
        taken = {*checked.units.names, *checked.params, *checked.learned}
        columns = {name: _fresh(f"{name}_weight", taken) for name in self.names}
        given = loss.spec.config()["units"]
        units = dict(given) if isinstance(given, Mapping) else {}
        for i, name in enumerate(self.names):
            units[columns[name]] = {"true": self.width + i}
        try:
            spec = LossSpec.model_validate(
                {
                    **loss.spec.config(),
                    "expression": str(self._weigh(checked, columns)),
                    "units": units,
                    # The formula passed the sign rule; the weights are labels, not parameters.
                    "allow_negative": True,
                }
            )
        except LossDSLError as e:
            raise LossInputError(
                "Weighing each term by its output's sample weights makes a formula beyond "
                f"lossdsl's limits: {e.message.splitlines()[0]} Pass no sample_weight, or "
                "write the formula with fewer terms."
            ) from None
        weighed = FormulaLoss(
            spec,
            name=loss.name,
            reduction=loss.reduction,
            dtype=loss._dtype_arg,
            param_state=loss._param_state,
        )
        weighed._read_learned(self._learned)
        return weighed

    def _weigh(self, checked: Any, columns: Mapping[str, str]) -> ast.Expr:
        """The formula with each term multiplied by the weight columns (unit names in
        ``columns``, by output) of the outputs it reads."""
        expr = checked.formula.expr
        pairs = expr.terms if isinstance(expr, ast.Sum) else (("+", expr),)
        out = []
        for (op, e), outputs in zip(pairs, self.outputs, strict=True):
            weight = _smallest([ast.Call("true", (ast.Name(columns[k]),)) for k in sorted(outputs)])
            if self.example:
                weight = ast.Call("mean", (weight,))
            out.append((op, _times(weight, e)))
        return ast.Sum(tuple(out)) if len(out) > 1 else out[0][1]

    def loss(self, y_true: Any, y_pred: Any, sample_weight: Any) -> Any:
        """The formula's loss on the joined labels and outputs, each term weighed by its
        output's weights."""
        weighed = self.weighed
        # In float32, as the loss computes, whatever the outputs' dtype (mixed precision).
        y_true = ops.cast(y_true, "float32")
        columns = self._columns(y_true, sample_weight)
        return weighed(ops.concatenate([y_true, *columns.values()], axis=-1), y_pred)

    def term_weights(self, y_true: Any, sample_weight: Any) -> list[Any]:
        """Each top-level term's sample weights for its metric, shaped as the loss reads them:
        ``(batch, ..., 1)``, or ``(batch,)`` for an example-level formula."""
        columns = self._columns(y_true, sample_weight)
        out = []
        for outputs in self.outputs:
            w = functools.reduce(ops.minimum, [columns[k] for k in sorted(outputs)])
            if self.example:
                w = ops.mean(w, axis=tuple(range(1, len(w.shape))))
            out.append(w)
        return out

    def _columns(self, y_true: Any, sample_weight: Any) -> dict[str, Any]:
        """Each output's weights as a float32 column ``(batch, ..., 1)``, in output order."""
        weights = self._by_output(sample_weight)
        like = ops.ones_like(ops.cast(y_true[..., :1], "float32"))
        return {name: self._column(weights.get(name), like) for name in self.names}

    def _by_output(self, sample_weight: Any) -> dict[str, Any]:
        if isinstance(sample_weight, Mapping):
            extra = [k for k in sample_weight if k not in self.names]
            if extra:
                raise LossInputError(
                    f"sample_weight names {', '.join(map(repr, extra))}, which the model does "
                    f"not output. Its outputs: {', '.join(map(repr, self.names))}."
                )
            return {k: v for k, v in sample_weight.items() if v is not None}
        if len(sample_weight) != len(self.names):
            raise LossInputError(
                f"sample_weight is a list of {len(sample_weight)} for {len(self.names)} outputs "
                f"({', '.join(map(repr, self.names))}): give one array, or None, per output."
            )
        return {k: v for k, v in zip(self.names, sample_weight, strict=True) if v is not None}

    def _column(self, weight: Any, like: Any) -> Any:
        """One output's weights as a label column shaped like ``like``: (batch, ..., 1)."""
        if weight is None:
            return like
        w = ops.cast(ops.convert_to_tensor(weight), "float32")
        if self.example and not (len(w.shape) == 1 or (len(w.shape) == 2 and w.shape[-1] == 1)):
            raise LossInputError(
                "This formula gives one value per example, so its sample weights are one per "
                f"example, shape (batch,). Received: shape {tuple(w.shape)}."
            )
        if len(w.shape) == len(like.shape) and w.shape[-1] != 1:
            w = ops.expand_dims(w, -1)
        while len(w.shape) < len(like.shape):
            w = ops.expand_dims(w, -1)
        return w * like


def _smallest(columns: Sequence[ast.Expr]) -> ast.Expr:
    """``min`` of the columns, as a balanced tree (its depth grows with the log of their
    number)."""
    if len(columns) == 1:
        return columns[0]
    half = len(columns) // 2
    return ast.Call("min", (_smallest(columns[:half]), _smallest(columns[half:])))


def _times(weight: ast.Expr, e: ast.Expr) -> ast.Expr:
    """``weight * e``, inside ``e``'s sign and ``where``."""
    if isinstance(e, ast.Neg):
        return ast.Neg(_times(weight, e.operand))
    if isinstance(e, ast.Where):
        return ast.Where(_times(weight, e.term), e.cond)
    return ast.Product((("*", weight), ("*", e)))


def _outputs_read(
    expr: ast.Expr, units: Any, pred: dict[str, tuple[int, int]], true: dict[str, tuple[int, int]]
) -> set[str]:
    """The outputs whose columns ``expr`` reads outside its conditions."""
    found: set[str] = set()
    stack: list[ast.Node] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Where):
            stack.append(node.term)
            continue
        binding = units.resolve(node)
        if binding is not None:
            for side, ranges in ((binding.pred, pred), (binding.true, true)):
                if side is not None:
                    found |= {k for k, (a, b) in ranges.items() if a < side[1] and side[0] < b}
        stack.extend(node.children())
    return found


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... if it is taken."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out
