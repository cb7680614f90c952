"""``FormulaLoss``: a formula as a ``keras.losses.Loss``.

``call`` returns one value per sample; the ``Loss`` base class applies
``sample_weight`` and the reduction (``sum_over_batch_size`` by default), as
for every Keras loss. Parameters live in non-trainable ``keras.Variable``s, so
``set_param`` changes the loss on the next batch without retracing.

>>> import numpy as np
>>> from lossdsl import LossSpec
>>> spec = LossSpec(expression="alpha*mse(u0) + (1 - alpha)*mae(u1)", units=2,
...                 params={"alpha": 0.5})
>>> loss = FormulaLoss(spec)
>>> y_true = np.array([[0.0, 1.0], [1.0, 0.0]], "float32")
>>> y_pred = np.array([[0.5, 1.0], [1.0, 1.0]], "float32")
>>> round(float(loss(y_true, y_pred)), 4)
0.3125
>>> loss.set_param("alpha", 1.0)
>>> round(float(loss(y_true, y_pred)), 4)
0.125
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import keras

from lossdsl import ast
from lossdsl.errors import LossValidationError, echo
from lossdsl.keras.compiler import Program
from lossdsl.keras.metrics import ParamState, TermMetric, term_names
from lossdsl.spec import LossSpec, spec_from_config
from lossdsl.suggest import did_you_mean

__all__ = ["FormulaLoss"]


@keras.saving.register_keras_serializable(package="lossdsl")
class FormulaLoss(keras.losses.Loss):
    """A Keras loss defined by a lossdsl formula.

    Args:
        spec: the checked ``LossSpec``; ``lossdsl.compile_loss`` makes one from formula text,
            a mapping or a config file's spec.
        name, reduction, dtype: as for ``keras.losses.Loss``.
        param_state: read the parameters from another loss's ``ParamState`` (a loss over a
            spec that names the same parameters), so that both follow ``set_param``.

    The loss is built from what the checks proved (``spec.checked``): nothing is checked
    again, here or in ``term_metrics()``.
    """

    def __init__(
        self,
        spec: LossSpec,
        *,
        name: str | None = None,
        reduction: str | None = "sum_over_batch_size",
        dtype: Any = None,
        param_state: ParamState | None = None,
    ) -> None:
        if not isinstance(spec, LossSpec):
            raise TypeError(
                "FormulaLoss() takes a LossSpec; lossdsl.compile_loss() accepts formula text "
                f"and mappings too. Received: {type(spec).__name__}."
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._spec = spec
        self._dtype_arg = dtype if dtype is None or isinstance(dtype, str) else self.dtype
        self._program = Program(spec)
        # Metric variables, so that on JAX they can join the model's state (see
        # term_metrics and ParamSchedule); on TF and torch any variable would do.
        self._param_state = param_state or ParamState(
            {**spec.params, **spec.learned}, name=f"{self.name}_params"
        )
        self._variables = self._param_state.values
        self._learned_bound = False
        """Whether a FormulaModel trains the learned parameters (see ``lossdsl.keras.model``)."""

    # -- the loss ---------------------------------------------------------------

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        out = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        # Keras's reduce_values returns per-sample values of static shape (0,)
        # unreduced: an empty batch would give an empty tensor, not a loss. Its sum
        # is the scalar 0 that every reduction gives over no samples (Keras divides
        # with divide_no_nan), and its gradient is 0.
        if self.reduction not in (None, "none") and tuple(out.shape) == (0,):
            out = keras.ops.sum(out)
        return out

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if self._spec.learned and not self._learned_bound:
            self._learned_bound = True  # said once
            warnings.warn(
                f"The learned parameters {', '.join(self._spec.learned)} keep their initial "
                "values here: a keras.losses.Loss has no weights that fit trains. Wrap the "
                "model in lossdsl.FormulaModel(model, spec) to train them with it.",
                stacklevel=2,
            )
        if self._variables and keras.backend.backend() == "jax":
            self._note_jax_capture()
        return self.per_sample(y_true, y_pred)

    def _note_jax_capture(self) -> None:
        # JAX's train step is a pure function of the model's state; a variable
        # outside that state is read once, while tracing, as a constant. Record
        # it so that set_param can say so instead of silently doing nothing.
        try:
            from keras.src.backend.common.stateless_scope import get_stateless_scope
        except ImportError:  # pragma: no cover - a Keras without this module
            return
        scope = get_stateless_scope()
        # An empty mapping is Keras's symbolic build (shapes only), not a train step.
        if (
            scope is not None
            and getattr(scope, "state_mapping", None)
            and any(scope.get_current_value(v) is None for v in self._variables.values())
        ):
            self._params_captured = True

    def _read_learned(self, variables: Mapping[str, Any]) -> None:
        """Read the learned parameters from ``variables``, a ``FormulaModel``'s weights that
        its optimizer trains."""
        self._variables = {**self._param_state.values, **variables}
        self._learned_bound = True

    def per_sample(self, y_true: Any, y_pred: Any) -> Any:
        """The loss of each sample, shape ``y_pred.shape[:-1]``, before
        ``sample_weight`` and reduction: what ``call`` returns. For custom
        training loops (``tf.GradientTape``, ``jax.grad``)."""
        return self._program(y_true, y_pred, self._variables)

    def terms(self, y_true: Any, y_pred: Any, *, weighted: bool = True) -> dict[str, Any]:
        """Each top-level term's value on this batch, by its metric name.

        With ``weighted=True`` (the default) the values add up to the loss,
        ``loss(y_true, y_pred)`` with the default reduction: each is the batch
        mean of the term's signed, weighted per-sample contribution. With
        ``weighted=False`` each is the raw term: its mean over the batch, or over
        the selected samples for a ``where`` term."""
        ctx = self._program.context(y_true, y_pred, self._variables)
        out = {}
        for index, name in enumerate(self.term_names()):
            num, den = self._program.term(index, weighted=weighted)(ctx)
            out[name] = keras.ops.divide_no_nan(keras.ops.sum(num), keras.ops.sum(den))
        return out

    def term_names(self) -> list[str]:
        """The metric names of the top-level terms: ``bce_presence``, ``mse_loc``, ..."""
        return term_names(self._spec.checked)

    def term_metrics(self, *, weighted: bool = False) -> list[TermMetric]:
        """One Keras metric per top-level term, for ``compile(weighted_metrics=...)``.

        By default each reports the raw term, without its numbers and parameters
        (as Keras logs unweighted per-output losses); ``weighted=True`` reports
        its signed, weighted contribution. A ``where`` term reports the mean over
        the selected samples of the whole dataset. The metrics share this loss's
        parameters, so they follow ``set_param``."""
        names = self.term_names()
        return [
            TermMetric(
                self._spec,
                term=i,
                weighted=weighted,
                name=names[i],
                param_state=self._param_state,
            )
            for i in range(len(names))
        ]

    # -- parameters ---------------------------------------------------------------

    @property
    def params(self) -> Mapping[str, float]:
        """Each parameter's current value (read-only; change it with ``set_param``)."""
        return MappingProxyType(self._spec.params)

    def set_param(self, name: str, value: float) -> None:
        """Set parameter ``name`` for the next batch, without retracing.

        The new value is validated like the first: it must be finite, and it may
        not give a term a negative weight unless ``allow_negative`` was set.
        """
        if name in self._spec.learned:
            raise LossValidationError(
                f"'{name}' is a learned parameter: training sets it (in a FormulaModel, "
                f"model.learned['{name}'] is its weight)."
            )
        if name not in self._variables:
            hint = did_you_mean(name, self._variables)
            known = ", ".join(self._variables) or "none"
            raise LossValidationError(
                f"Unknown parameter '{name}'.{hint} This loss's parameters: {known}."
            )
        try:
            # Numbers, numpy scalars and 0-d tensors; never text or booleans.
            number = math.nan if isinstance(value, str | bytes | bool) else float(value)
        except OverflowError:  # an integer beyond float64
            number = math.inf
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise LossValidationError(
                f"Parameter '{name}' must be a finite number. Received: {echo(value)}."
            )
        spec = self._spec.with_params({**self._spec.params, name: number})
        self._variables[name].assign(number)
        self._spec = spec
        if getattr(self, "_params_captured", False):
            warnings.warn(
                f"On the JAX backend, Keras compiled model.fit's train step with this loss's "
                f"parameters as constants, so the new value of '{name}' reaches fit only once "
                "that step is rebuilt: call model.make_train_function(force=True) (and "
                "make_test_function) after set_param. Eager calls and tf.function on the "
                "TensorFlow backend see the change at once.",
                stacklevel=2,
            )

    # -- introspection and saving ---------------------------------------------------

    @property
    def formula(self) -> ast.Formula:
        """The parsed formula."""
        return self._spec.formula

    @property
    def spec(self) -> LossSpec:
        """The specification of this loss, with the current parameters."""
        return self._spec

    @property
    def where_mean(self) -> str:
        return self._spec.where_mean

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._spec.config(), "dtype": self._dtype_arg}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FormulaLoss:
        """The loss ``get_config`` describes: the spec's fields beside the Loss arguments."""
        spec, rest = spec_from_config(config, ("name", "reduction", "dtype"), "FormulaLoss")
        return cls(spec, **rest)

    def __repr__(self) -> str:
        return f"FormulaLoss({str(self.formula)!r}, name={self.name!r})"


# TensorFlow's autograph rewrites, on first trace, every function a user's
# tf.function calls that is not in an allowlisted module (Keras is one): for a
# compiled formula, each of its closures. That is slow, warns about lambdas, and
# changes nothing, since the compiled loss has no Python control flow on tensors.
# Autograph calls a function carrying this attribute as it is (the attribute
# ``tf.autograph.experimental.do_not_convert`` sets); other backends ignore it.
for _method in ("call", "per_sample", "terms"):
    vars(getattr(FormulaLoss, _method))["autograph_info__"] = None
