"""``FormulaModel``: one formula over all of a model's outputs, with learned parameters.

Keras applies a model's ``loss`` to each output on its own, so no loss can condition one output
on another's label, and a ``keras.losses.Loss`` has no variables that ``fit`` trains.
``FormulaModel`` wraps a model and overrides ``compute_loss`` and ``compute_metrics``, Keras's
documented extension points: each batch's outputs (and labels) are joined, output after output,
into one tensor whose columns the formula's unit names select, and the formula's learned
parameters are weights of the wrapper, trained by the optimizer with the model's own.

>>> import keras
>>> inputs = keras.Input((4,))
>>> outputs = {"presence": keras.layers.Dense(1, activation="sigmoid", name="presence")(inputs),
...            "loc": keras.layers.Dense(2, name="loc")(inputs)}
>>> model = FormulaModel(keras.Model(inputs, outputs),
...                      "bce(presence) + mse(loc) where true(presence) == 1")
>>> model.formula_loss.spec.units
{'presence': 0, 'loc': (1, 3)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from lossdsl import ast
from lossdsl.errors import LossInputError, LossTypeError, LossValidationError
from lossdsl.keras.loss import FormulaLoss
from lossdsl.keras.output_weights import OutputWeights
from lossdsl.spec import LossSpec

__all__ = ["FormulaModel"]


@keras.saving.register_keras_serializable(package="lossdsl")
class FormulaModel(keras.Model):
    """``model`` trained with one formula over all its outputs.

    Args:
        model: a Keras model (Functional, Sequential or subclassed) with one output, or a
            dict of named outputs (a list of outputs is named by position: ``out0``, ...).
        loss: formula text, a mapping of ``LossSpec`` fields, a ``LossSpec`` or a
            ``FormulaLoss``. Unless it is a ``FormulaLoss``, each output's name is a unit
            of its columns, beside the spec's own ``units``, whose entries may also select
            columns inside an output: ``["loc", 0]`` or ``["loc", [0, 2]]``.
        outputs: each output's width, where the model cannot say it before it is called
            (a subclassed model); by default read from ``model.outputs``.
        labels: the width of an output's labels where it is not the output's: ``{"cls": 1}``
            reads class indices against an output of ``k >= 2`` classes.
        term_metrics: log each term of the formula that reads the data
            (``loss.term_metrics()``), train and validation.

    Compile it without a ``loss``: ``model.compile(optimizer="adam")``. The learned
    parameters (``LossSpec.learned``) are logged each epoch under their names. ``sample_weight``
    may be one array or one per output (``lossdsl.keras.output_weights``).
    """

    def __init__(
        self,
        model: keras.Model,
        loss: str | Mapping[str, Any] | LossSpec | FormulaLoss,
        *,
        outputs: Mapping[str, int] | None = None,
        labels: Mapping[str, int] | None = None,
        term_metrics: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise LossTypeError(
                f"FormulaModel wraps a keras.Model. Received: {type(model).__name__}."
            )
        self.inner = model
        self._widths = dict(outputs) if outputs is not None else _output_widths(model)
        self._label_widths = {**self._widths, **(labels or {})}
        unknown = [k for k in self._label_widths if k not in self._widths]
        if unknown:
            raise LossValidationError(
                f"labels names {', '.join(map(repr, unknown))}, which the model does not "
                f"output. Its outputs: {', '.join(map(repr, self._widths))}."
            )
        self._single = outputs is None and not isinstance(_structure(model), Mapping | Sequence)
        self._widths = {} if self._single else self._widths
        if not isinstance(loss, FormulaLoss):
            loss = FormulaLoss(self._spec_over_outputs(loss))
        self.formula_loss = loss
        # A term that does not read the data is a parameter's value, logged as the parameter.
        terms = loss.spec.checked.terms
        self._metric_terms = [
            i for i, t in enumerate(terms) if term_metrics and ast.has_data(t.body)
        ]
        every = loss.term_metrics()
        self._term_metrics = [every[i] for i in self._metric_terms]
        # The parameters, learned ones included, are logged through this metric; on JAX it
        # also keeps the fixed ones in the model's state (see ParamSchedule).
        self._params = loss._param_state
        self.learned = {
            name: self.add_weight(
                shape=(), initializer=keras.initializers.Constant(value), name=name
            )
            for name, value in loss.spec.learned.items()
        }
        loss._read_learned(self.learned)
        self._config = {"outputs": outputs, "labels": labels, "term_metrics": term_metrics}
        self._per_output = (
            None
            if self._single
            else OutputWeights(
                loss, _offsets(self._widths), _offsets(self._label_widths), self.learned
            )
        )

    # -- the spec over the outputs ----------------------------------------------------------

    def _spec_over_outputs(self, loss: str | Mapping[str, Any] | LossSpec) -> LossSpec:
        fields: dict[str, Any]
        if isinstance(loss, LossSpec):
            fields = loss.config()
        elif isinstance(loss, str):
            fields = {"expression": loss}
        elif isinstance(loss, Mapping):
            fields = dict(loss)
        else:
            raise LossTypeError(
                "FormulaModel's loss is formula text, a mapping, a LossSpec or a FormulaLoss. "
                f"Received: {type(loss).__name__}."
            )
        if self._single:  # one output: the spec's units are its columns, as for a Loss
            return LossSpec.model_validate(fields)
        pred, true = _offsets(self._widths), _offsets(self._label_widths)
        units: dict[str, Any] = {}
        for name in self._widths:
            units[name] = _binding(pred[name], true[name])
        given = fields.get("units")
        if isinstance(given, Mapping):
            for key, value in given.items():
                units[key] = self._inside(key, value, pred, true)
        elif given is not None:
            raise LossValidationError(
                "With FormulaModel, units name the model's outputs already; give only extra "
                f"names, as a mapping. Received: units={given!r}.",
                hint="units={'loc_x': ['loc', 0]} names column 0 of the output loc.",
            )
        return LossSpec.model_validate({**fields, "units": units})

    def _inside(
        self,
        key: str,
        value: Any,
        pred: dict[str, tuple[int, int]],
        true: dict[str, tuple[int, int]],
    ) -> Any:
        """A units entry, with ``[output, columns]`` made columns of the joined tensors."""
        if not (isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)):
            return value  # an entry of the joined columns, checked by the spec
        output, columns = value
        if output not in pred:
            raise LossValidationError(
                f"Unit {key!r} selects columns of {output!r}, which the model does not output. "
                f"Its outputs: {', '.join(map(repr, pred))}."
            )
        lo, hi = (columns, columns + 1) if isinstance(columns, int) else tuple(columns)
        (p0, p1), (t0, t1) = pred[output], true[output]
        if not 0 <= lo < hi <= p1 - p0 or p1 - p0 != t1 - t0:
            raise LossValidationError(
                f"Unit {key!r} selects columns {columns!r} of {output!r}, which has "
                f"{p1 - p0} columns and {t1 - t0} label columns; a unit inside an output selects "
                "columns of both."
            )
        return _binding((p0 + lo, p0 + hi), (t0 + lo, t0 + hi))

    # -- Keras's extension points ------------------------------------------------------------

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.inner(inputs, training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        if self._compile_loss is not None:
            raise LossValidationError(
                "FormulaModel computes its loss from its formula: compile it without loss=.",
                hint="model.compile(optimizer='adam'); each term is logged already.",
            )
        y_true, joined, weight = self.joined(y, y_pred, sample_weight)
        if self._per_output is not None and isinstance(weight, Mapping | list | tuple):
            losses = [self._per_output.loss(y_true, joined, weight)]
        else:
            losses = [self.formula_loss(y_true, joined, weight)]
        # The learned parameters' copies, from which the metrics and the logs read them.
        self._params.record(self.learned)
        losses += [self._aggregate_additional_loss(extra) for extra in self.losses]
        return losses[0] if len(losses) == 1 else ops.sum(losses)

    def compute_metrics(
        self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None
    ) -> dict[str, Any]:
        if self._term_metrics:
            y_true, joined, weight = self.joined(y, y_pred, sample_weight)
            if self._per_output is not None and isinstance(weight, Mapping | list | tuple):
                each = self._per_output.term_weights(y_true, weight)
                weights = [each[i] for i in self._metric_terms]
            else:
                weights = [weight] * len(self._term_metrics)
            for metric, w in zip(self._term_metrics, weights, strict=True):
                metric.update_state(y_true, joined, w)
        results: dict[str, Any] = super().compute_metrics(x, y, y_pred, sample_weight)
        return results

    def joined(self, y: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any, Any]:
        """``y`` and ``y_pred`` as the two tensors the formula reads: the outputs' columns
        side by side, in the order of ``model.outputs``; and the one sample weight."""
        if self._single:
            return y, y_pred, sample_weight
        names = list(self._widths)
        preds = _by_name(y_pred, names, "the model's outputs")
        trues = _by_name(y, names, "y")
        joined = ops.concatenate([_columns(preds[k]) for k in names], axis=-1)
        labels = [ops.cast(_columns(trues[k]), joined.dtype) for k in names]
        return ops.concatenate(labels, axis=-1), joined, sample_weight

    # -- saving ------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.inner),
            "loss": keras.saving.serialize_keras_object(self.formula_loss),
            **self._config,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FormulaModel:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(model, loss, **config)


def _output_widths(model: keras.Model) -> dict[str, int]:
    """Each output's name and width (its last axis; 1 for an output of rank 1)."""
    try:
        outputs = model.outputs
    except AttributeError:
        outputs = None
    if not outputs:
        raise LossValidationError(
            "FormulaModel cannot read this model's outputs before it is called (a subclassed "
            "model): give their widths, outputs={'presence': 1, 'loc': 2}."
        )
    structure = _structure(model)
    if isinstance(structure, Mapping):
        items = list(structure.items())
    elif isinstance(structure, list | tuple):
        items = [(f"out{i}", t) for i, t in enumerate(structure)]
    else:
        items = [("output", structure)]
    return {name: int(t.shape[-1]) if len(t.shape) > 1 else 1 for name, t in items}


def _structure(model: keras.Model) -> Any:
    """The model's outputs as it returns them: one tensor, a dict or a list."""
    try:
        return model.output
    except AttributeError:  # a Sequential model has its outputs, not an output structure
        outputs = model.outputs
        return outputs[0] if len(outputs) == 1 else list(outputs)


def _offsets(widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    out, start = {}, 0
    for name, width in widths.items():
        out[name] = (start, start + width)
        start += width
    return out


def _binding(pred: tuple[int, int], true: tuple[int, int]) -> Any:
    if pred == true:
        return list(pred) if pred[1] - pred[0] > 1 else pred[0]
    side = {"pred": list(pred), "true": list(true)}
    return {k: (v[0] if v[1] - v[0] == 1 else v) for k, v in side.items()}


def _by_name(value: Any, names: list[str], what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        missing = [k for k in names if k not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise LossInputError(
                f"{what} must hold one entry per output: {', '.join(map(repr, names))}. "
                + (f"Missing: {', '.join(map(repr, missing))}. " if missing else "")
                + (f"Not an output: {', '.join(map(repr, extra))}." if extra else "")
            )
        return {k: value[k] for k in names}
    if isinstance(value, list | tuple) and len(value) == len(names):
        return dict(zip(names, value, strict=True))
    raise LossInputError(
        f"{what} must be a dict with the keys {', '.join(map(repr, names))}. "
        f"Received: {type(value).__name__}."
    )


def _columns(x: Any) -> Any:
    """An output or label as columns: ``(batch, ..., width)``; a rank-1 one as one column."""
    x = ops.convert_to_tensor(x)
    return ops.expand_dims(x, -1) if len(x.shape) == 1 else x
