"""Keras metrics for a formula: one per top-level term, and the parameter state.

``FormulaLoss.term_metrics()`` returns a ``TermMetric`` per top-level term.
Passed as ``model.compile(loss=loss, weighted_metrics=loss.term_metrics())``,
``fit`` logs each term (and its ``val_`` twin). A metric keeps a running
numerator and denominator, so a ``where`` term reports its dataset-level
selected mean, ``sum(T*m*w) / sum(m*w)``, not a mean of batch means.

``ParamState`` holds a loss's parameters in metric variables. On the JAX
backend only variables that belong to the model's state change inside a
compiled ``fit`` step; a metric's variables do, so a parameter held here
follows ``set_param`` there too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from lossdsl import ast
from lossdsl.catalog import Accessor, LossEntry, lookup
from lossdsl.checker import Checked
from lossdsl.errors import LossValidationError, echo
from lossdsl.keras.compiler import Program
from lossdsl.spec import LossSpec, spec_from_config
from lossdsl.terms import Term

__all__ = ["ParamState", "TermMetric", "term_name", "term_names"]


class ParamState(keras.metrics.Metric):
    """A loss's parameters, as non-trainable metric variables.

    Its ``result()`` is the current value of each parameter, so when it is among
    a model's metrics the parameters appear in the training logs. It is never
    reset between epochs.

    A learned parameter (``FormulaModel``) is a weight of the model, which the loss reads;
    here it has a copy that ``record`` sets on each step, from which the metrics and the
    logs read it. A model's state holds each variable once that way (on JAX a weight that
    was also a metric variable would be given to the compiled step twice, which JAX
    refuses, and a weight read in the metrics step would be a constant there).
    """

    def __init__(self, values: Mapping[str, float], name: str = "lossdsl_params") -> None:
        super().__init__(name=name, dtype="float32")
        # Under tf.distribute each replica holds a copy of the same value: read the first
        # (a metric's default, the sum over replicas, would count it once per replica).
        self.values = {
            k: self.add_variable(
                shape=(),
                initializer=keras.initializers.Constant(float(v)),
                aggregation="only_first_replica",
                name=k,
            )
            for k, v in values.items()
        }

    def record(self, variables: Mapping[str, Any]) -> None:
        """Set the copy of each learned parameter in ``variables`` to its value."""
        for name, variable in variables.items():
            self.values[name].assign(ops.cast(variable, self.values[name].dtype))

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset_state(self) -> None:
        pass  # parameters are state of the loss, not statistics of an epoch

    def result(self) -> dict[str, Any]:
        return {k: ops.convert_to_tensor(v) for k, v in self.values.items()}

    def current(self) -> dict[str, float]:
        """Each parameter's value, as a Python float."""
        return {k: float(ops.convert_to_numpy(v)) for k, v in self.values.items()}

    def get_config(self) -> dict[str, Any]:
        return {"values": self.current(), "name": self.name}


def _identifier(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()


def term_name(term: Term) -> str:
    """A term's metric name before collisions are told apart: each loss it calls with its
    units (``bce_presence``, ``huber_loc``, ``focal_cls_huber_box``), in the order of the
    text; for a term without a loss, the units it reads (``loc``); else ``term``. Keywords,
    numbers, parameters and conditions are left out, so a name stays when they change. At
    most 48 characters."""
    losses: list[str] = []
    units: list[str] = []
    for node in ast.walk(term.body):
        if isinstance(node, ast.Call) and node.args:
            entry = lookup(node.name)
            selector = _identifier(str(node.args[0]))
            if isinstance(entry, LossEntry):
                losses.append(f"{node.name}_{selector}")
            elif isinstance(entry, Accessor):
                units.append(selector)
    parts = list(dict.fromkeys(losses or units)) or ["term"]
    return "_".join(parts)[:48].rstrip("_")


def term_names(checked: Checked) -> list[str]:
    """Identifier-safe, unique names of the top-level terms (``term_name``), a repeated name
    suffixed ``_2``, ``_3``, ... in the order of the text."""
    names: list[str] = []
    for t in checked.terms:
        base = term_name(t)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


@keras.saving.register_keras_serializable(package="lossdsl")
class TermMetric(keras.metrics.Metric):
    """The running value of one top-level term of a formula.

    Args:
        spec: the loss's checked ``LossSpec``.
        term: index of the top-level term.
        weighted: report the term's signed, weighted contribution (with its numbers and
            parameters) instead of the raw term.
        name, dtype: as for ``keras.metrics.Metric``.
        param_state: the loss's parameters, shared so that the metric follows ``set_param``.

    The value is ``sum(num * w) / sum(den * w)`` over every batch seen, where ``w`` is the
    sample weight and, per sample, ``num, den = T, 1`` for a plain term and ``T * m, m`` for
    ``T where C`` (``T * m, 1`` with ``where_mean="batch"``).
    """

    def __init__(
        self,
        spec: LossSpec,
        *,
        term: int,
        weighted: bool = False,
        name: str | None = None,
        dtype: Any = None,
        param_state: ParamState | None = None,
    ) -> None:
        count = len(spec.checked.terms)
        if not isinstance(term, int) or isinstance(term, bool) or not 0 <= term < count:
            raise LossValidationError(
                f"term must be an index in [0, {count}), as the formula has {count} term"
                f"{'s' if count != 1 else ''}. Received: {echo(term)}."
            )
        if name is None:
            name = term_names(spec.checked)[term]
        super().__init__(name=name, dtype=dtype or "float32")
        self._spec = spec
        self._term = term
        self._weighted = weighted
        self._program = Program(spec)
        self._parts = self._program.term(term, weighted=weighted)
        # Shared with the loss when made by FormulaLoss.term_metrics(), so that the weights
        # follow set_param (and, on JAX, live in the model's state).
        self.param_state = (
            param_state if param_state is not None else ParamState({**spec.params, **spec.learned})
        )
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        # In the metric's dtype (float32), as the loss computes, even when the
        # model outputs float16 or bfloat16 under a mixed-precision policy.
        y_true = ops.cast(ops.convert_to_tensor(y_true), self.dtype)
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        ctx = self._program.context(y_true, y_pred, self.param_state.values)
        num, den = self._parts(ctx)
        num, den = ops.cast(num, "float32"), ops.cast(den, "float32")
        if sample_weight is not None:
            w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            while len(w.shape) > len(num.shape):  # (batch, 1) weights
                w = ops.squeeze(w, axis=-1)
            while len(w.shape) < len(num.shape):  # (batch,) weights of (batch, positions)
                w = ops.expand_dims(w, -1)
            num, den = num * w, den * w
        self.total.assign_add(ops.sum(num))
        self.count.assign_add(ops.sum(den))

    def reset_state(self) -> None:
        # Only the running sums: the parameters belong to the loss.
        self.total.assign(0.0)
        self.count.assign(0.0)

    def result(self) -> Any:
        return ops.divide_no_nan(self.total, self.count)

    def get_config(self) -> dict[str, Any]:
        return {
            **self._spec.config(),
            "params": {
                k: v for k, v in self.param_state.current().items() if k not in self._spec.learned
            },
            "term": self._term,
            "weighted": self._weighted,
            "name": self.name,
            "dtype": self.dtype,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TermMetric:
        """The metric ``get_config`` describes: the spec's fields beside the metric's own."""
        spec, rest = spec_from_config(config, ("term", "weighted", "name", "dtype"), "TermMetric")
        return cls(spec, **rest)
