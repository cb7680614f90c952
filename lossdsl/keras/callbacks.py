"""``ParamSchedule``: set a formula's parameters as training goes; ``DynamicWeightAverage``:
task weights that follow how fast each task's loss falls.

>>> schedule = ParamSchedule({"beta": lambda epoch: min(1.0, epoch / 10)})
>>> # model.fit(x, y, epochs=20, callbacks=[schedule])  # beta: 0, 0.1, ..., 1
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import keras

from lossdsl.errors import LossValidationError
from lossdsl.keras.loss import FormulaLoss

__all__ = ["DynamicWeightAverage", "ParamSchedule"]


class ParamSchedule(keras.callbacks.Callback):
    """A Keras callback that sets parameters of a ``FormulaLoss``.

    Args:
        schedules: parameter name to a function of the epoch (0-based) giving its
            value; with ``per_batch=True``, a function of the global step instead:
            the optimizer's iteration count, so resuming training resumes the
            schedule. A function of two arguments also gets the logs of the last
            epoch that ended (the loss, the term metrics, their ``val_`` twins and the
            parameters; empty before the first), so a weight can follow the losses.
        loss: the ``FormulaLoss`` to drive; by default the model's compiled loss.
        per_batch: set the parameters before every batch rather than every epoch.

    Each new value is validated as ``FormulaLoss.set_param`` validates it. The
    parameters change without retracing the train step. The values in force
    are added to the epoch's logs (``logs["beta"]``).
    """

    def __init__(
        self,
        schedules: Mapping[str, Callable[..., float]],
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
        self._with_logs = {name: _takes_logs(fn) for name, fn in self.schedules.items()}
        self.last_logs: dict[str, Any] = {}
        """The logs of the last epoch that ended."""
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
            # A FormulaModel holds its formula's loss; any other model, its compiled loss.
            found = getattr(self.model, "formula_loss", None) or getattr(self.model, "loss", None)
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
            value = fn(at, dict(self.last_logs)) if self._with_logs[name] else fn(at)
            loss.set_param(name, value)

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
            self.last_logs = dict(logs)


def _takes_logs(fn: Callable[..., float]) -> bool:
    """Whether a schedule takes the logs beside the epoch or step."""
    try:
        inspect.signature(fn).bind(0, {})
    except (TypeError, ValueError):  # ValueError: no signature (a builtin), the epoch alone
        return False
    return True


class DynamicWeightAverage(ParamSchedule):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019): each task's weight follows
    how slowly its loss falls.

    Args:
        tasks: for each weight parameter of the formula, the log entry of its task's loss
            (a term metric's name, such as ``"bce_presence"``; ``"val_..."`` for the
            validation loss).
        temperature: ``T``; the larger, the closer the weights stay to 1.
        loss: the ``FormulaLoss`` to drive; by default the model's compiled loss.

    With ``K`` tasks and ``L_k(t)`` task ``k``'s loss in epoch ``t``, the weights of epoch
    ``t`` are ``K * softmax(r / T)``, where ``r_k = L_k(t - 1) / L_k(t - 2)``: a task whose
    loss fell less gets more weight, and the weights add up to ``K``. The first two epochs,
    which have no ratio yet, weigh every task 1 (a ratio of a loss of 0 counts as 1). The
    weights in force are logged each epoch, like any scheduled parameter.
    """

    def __init__(
        self,
        tasks: Mapping[str, str],
        *,
        temperature: float = 2.0,
        loss: FormulaLoss | None = None,
    ) -> None:
        if not isinstance(tasks, Mapping) or not tasks:
            raise TypeError("DynamicWeightAverage expects a mapping of parameters to log names.")
        if not (isinstance(temperature, int | float) and 0 < temperature < math.inf):
            raise ValueError(f"temperature must be a positive number. Received: {temperature!r}.")
        self.tasks = dict(tasks)
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []
        """Each epoch's task losses, by parameter."""
        super().__init__({p: self._weight_of(p) for p in self.tasks}, loss=loss)

    def _weight_of(self, param: str) -> Callable[[int], float]:
        return lambda epoch: self.weights()[param]

    def weights(self) -> dict[str, float]:
        """The weights for the next epoch, from the task losses of the last two."""
        if len(self.history) < 2:
            return dict.fromkeys(self.tasks, 1.0)
        before, last = self.history[-2], self.history[-1]
        ratios = {p: last[p] / before[p] if before[p] > 0 else 1.0 for p in self.tasks}
        top = max(r / self.temperature for r in ratios.values())
        e = {p: math.exp(r / self.temperature - top) for p, r in ratios.items()}
        total = sum(e.values())
        return {p: len(self.tasks) * v / total for p, v in e.items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {} if logs is None else logs
        missing = [name for name in self.tasks.values() if name not in logs]
        if missing:
            raise LossValidationError(
                f"DynamicWeightAverage reads {', '.join(map(repr, missing))} from the epoch's "
                f"logs, which hold {', '.join(map(repr, logs)) or 'nothing'}. Pass "
                "weighted_metrics=loss.term_metrics() to compile(), and name the tasks' "
                "metrics (loss.term_names())."
            )
        self.history.append({p: float(logs[name]) for p, name in self.tasks.items()})
        super().on_epoch_end(epoch, logs)
