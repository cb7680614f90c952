"""``compile_loss``: any form of spec to a ``FormulaLoss``.

This module is part of the light front end: Keras is imported only when ``compile_loss`` is
called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lossdsl.errors import LossTypeError

if TYPE_CHECKING:
    from lossdsl.keras.loss import FormulaLoss
    from lossdsl.spec import LossSpec

__all__ = ["compile_loss"]


def compile_loss(
    spec: str | LossSpec | Mapping[str, Any],
    *,
    units: int | Mapping[str, Any] | None = None,
    params: Mapping[str, float] | None = None,
    where_mean: str | None = None,
    allow_negative: bool | None = None,
    learned: Mapping[str, float] | None = None,
    name: str | None = None,
    **loss_kwargs: Any,
) -> FormulaLoss:
    """Compile a loss spec into a ``keras.losses.Loss``.

    Args:
        spec: formula text, a ``LossSpec``, or a mapping with the ``LossSpec`` fields
            (``expression``, ``units``, ``params``, ``where_mean``, ``allow_negative``,
            ``learned``).
        units, params, where_mean, allow_negative, learned: the ``LossSpec`` fields; when
            given they override the spec's own. ``where_mean`` defaults to ``"selected"`` and
            ``allow_negative`` to ``False``. ``learned`` parameters are trained with the model
            when it is a ``lossdsl.FormulaModel``.
        name: the loss's name in Keras.
        **loss_kwargs: ``reduction`` and ``dtype``, passed to ``keras.losses.Loss``.

    The spec is checked once, here (a ``LossSpec`` without overrides was checked when it was
    made); the loss and its term metrics are built from what the checks proved.

    >>> loss = compile_loss("bce(presence) + mse(loc) where true(presence) == 1",
    ...                     units={"presence": 0, "loc": 1}, name="lesion")
    >>> loss
    FormulaLoss('bce(presence) + mse(loc) where true(presence) == 1', name='lesion')
    """
    from lossdsl.spec import LossSpec

    overrides = {
        key: value
        for key, value in (
            ("units", units),
            ("params", params),
            ("where_mean", where_mean),
            ("allow_negative", allow_negative),
            ("learned", learned),
        )
        if value is not None
    }
    if isinstance(spec, LossSpec):
        checked = spec.model_copy(update=overrides) if overrides else spec
    elif isinstance(spec, str):
        checked = LossSpec.model_validate({"expression": spec, **overrides})
    elif isinstance(spec, Mapping):
        checked = LossSpec.model_validate({**spec, **overrides})
    else:
        raise LossTypeError(
            "compile_loss() expects formula text, a LossSpec or a mapping. "
            f"Received: {type(spec).__name__}."
        )

    from lossdsl.keras.loss import FormulaLoss

    return FormulaLoss(checked, name=name, **loss_kwargs)
