"""lossdsl: a declarative language for composing Keras 3 losses.

>>> import lossdsl
>>> f = lossdsl.validate("0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1",
...                      units={"presence": 0, "loc": 1})
>>> str(f)
'0.7 * bce(presence) + 0.3 * mse(loc) where true(presence) == 1'

``import lossdsl``, ``parse``, ``validate`` and ``LossSpec`` never import Keras;
``compile_loss`` and ``FormulaLoss`` load it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lossdsl import _keras_hook
from lossdsl.api import compile_loss
from lossdsl.ast import Formula
from lossdsl.catalog import register_loss, unregister_loss
from lossdsl.config import load_spec
from lossdsl.errors import (
    LossDSLError,
    LossInputError,
    LossSyntaxError,
    LossTypeError,
    LossValidationError,
)
from lossdsl.lints import LossDSLWarning
from lossdsl.parser import parse
from lossdsl.validation import validate

if TYPE_CHECKING:
    from lossdsl.keras.callbacks import DynamicWeightAverage, ParamSchedule
    from lossdsl.keras.loss import FormulaLoss
    from lossdsl.keras.metrics import TermMetric
    from lossdsl.keras.model import FormulaModel
    from lossdsl.spec import LossSpec

__version__ = "0.1.0"

__all__ = [
    "DynamicWeightAverage",
    "Formula",
    "FormulaLoss",
    "FormulaModel",
    "LossDSLError",
    "LossDSLWarning",
    "LossInputError",
    "LossSpec",
    "LossSyntaxError",
    "LossTypeError",
    "LossValidationError",
    "ParamSchedule",
    "TermMetric",
    "compile_loss",
    "load_spec",
    "parse",
    "register_loss",
    "unregister_loss",
    "validate",
]


# A model saved with a FormulaLoss loads after only `import lossdsl`: the class
# is registered with Keras when Keras is (or already was) imported.
_keras_hook.install()


_LAZY = {
    "LossSpec": "lossdsl.spec",  # pydantic: a service that only validates never loads it
    "FormulaLoss": "lossdsl.keras.loss",
    "FormulaModel": "lossdsl.keras.model",
    "TermMetric": "lossdsl.keras.metrics",
    "ParamSchedule": "lossdsl.keras.callbacks",
    "DynamicWeightAverage": "lossdsl.keras.callbacks",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use: three subclass Keras classes, and LossSpec needs pydantic.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")
