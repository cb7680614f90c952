"""``ParamSchedule``: set a formula's parameters as training goes.

>>> schedule = ParamSchedule({"beta": lambda epoch: min(1.0, epoch / 10)})
>>> # model.fit(x, y, epochs=20, callbacks=[schedule])  # beta: 0, 0.1, ..., 1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras

from lossdsl.errors import LossValidationError
from lossdsl.keras.loss import FormulaLoss

__all__ = ["ParamSchedule"]


class ParamSchedule(keras.callbacks.Callback):
    """A Keras callback that sets parameters of a ``FormulaLoss``.

    Args:
        schedules: parameter name to a function of the epoch (0-based) giving its
            value; with ``per_batch=True``, a function of the global step instead:
            the optimizer's iteration count, so resuming training resumes the
            schedule.
        loss: the ``FormulaLoss`` to drive; by default the model's compiled loss.
        per_batch: set the parameters before every batch rather than every epoch.

    Each new value is validated as ``FormulaLoss.set_param`` validates it. The
    parameters change without retracing the train step. The values in force
    are added to the epoch's logs (``logs["beta"]``).
    """

    def __init__(
        self,
        schedules: Mapping[str, Callable[[int], float]],
        *,
        loss: FormulaLoss | None = None,
        per_batch: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(schedules, Mapping) or not all(callable(f) for f in schedules.values()):
            raise TypeError("ParamSchedule expects a mapping of parameter names to functions.")
        self.schedules = dict(schedules)
        self.per_batch = per_batch
        self._loss = loss
        if loss is not None:
            self._check_names(loss)

    def _check_names(self, loss: FormulaLoss) -> None:
        unknown = [k for k in self.schedules if k not in loss.params]
        if unknown:
            known = ", ".join(loss.params) or "none"
            raise LossValidationError(
                f"ParamSchedule sets {', '.join(map(repr, unknown))}, which the loss "
                f"{str(loss.formula)!r} does not have. Its parameters: {known}."
            )

    @property
    def loss(self) -> FormulaLoss:
        if self._loss is None:
            found = getattr(self.model, "loss", None)
            if not isinstance(found, FormulaLoss):
                raise TypeError(
                    "ParamSchedule needs a FormulaLoss: compile the model with one, or pass "
                    f"loss=... Received the model's loss: {type(found).__name__}."
                )
            self._check_names(found)
            self._loss = found
        return self._loss

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if keras.backend.backend() == "jax":
            # JAX's fit step is pure: the parameters change inside it only if they
            # are part of the model's state. Metric variables are; attach them.
            state = self.loss._param_state
            if not any(m is state for m in model.metrics):
                model._lossdsl_param_state = state

    def _apply(self, at: int) -> None:
        loss = self.loss
        for name, fn in self.schedules.items():
            loss.set_param(name, fn(at))

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if not self.per_batch:
            self._apply(epoch)

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if not self.per_batch:
            return
        jax = keras.backend.backend() == "jax"
        if jax:
            # Inside an epoch JAX keeps the state in the train loop; write it back
            # to the variables, change the parameters, and have it read again.
            self.model.jax_state_sync()
        self._apply(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
        if jax:
            self.model._jax_state_synced = True

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        # Leave the model as it was: the state joined its metrics only for fit.
        state = self.model.__dict__.pop("_lossdsl_param_state", None)
        if state is not None:
            self.model._metrics[:] = [m for m in self.model._metrics if m is not state]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            for name in self.schedules:
                logs[name] = self.loss.params[name]
