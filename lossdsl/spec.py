"""``LossSpec``: a whole loss specification as one validated pydantic model.

A spec is what a config file, a service request or a ``compile_loss`` call
carries: the formula text, the units, the parameters and the options.
Constructing one runs the parser and the validator and reports every problem
at once, each with its caret, as a ``LossDSLError`` (never a raw pydantic
``ValidationError``):

>>> spec = LossSpec(expression="alpha*bce(u0) + (1 - alpha)*mse(u1)",
...                 units=2, params={"alpha": 0.7})
>>> str(spec.formula)
'alpha * bce(u0) + (1 - alpha) * mse(u1)'
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from lossdsl import ast
from lossdsl.errors import LossDSLError, LossValidationError
from lossdsl.parser import parse
from lossdsl.validate import check

__all__ = ["WHERE_MEANS", "LossSpec"]

WHERE_MEANS = ("selected", "batch")


class LossSpec(BaseModel):
    """A loss formula with everything needed to check and compile it.

    Attributes:
        expression: the formula text.
        units: the output width, a mapping of unit names to a column index or
            ``[start, stop]``, or ``None`` (width taken from ``y_pred`` when the
            loss is called; names unavailable).
        params: parameter names to finite floats.
        where_mean: ``"selected"`` (a ``where`` term is the mean over the
            samples its condition selects) or ``"batch"`` (the sum over them
            divided by the whole batch).
        allow_negative: accept terms with a negative constant weight.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    expression: str = Field(
        description="The loss formula, e.g. 'bce(u0) + mse(u1) where true(u0) == 1'."
    )
    units: int | dict[str, int | tuple[int, int]] | None = Field(
        default=None,
        description="Output width, or unit names mapped to a column index or [start, stop].",
    )
    params: dict[str, float] = Field(
        default_factory=dict, description="Parameter names mapped to finite float values."
    )
    where_mean: Literal["selected", "batch"] = Field(
        default="selected",
        description="'selected': a where-term is the mean over selected samples; "
        "'batch': divided by the whole batch.",
    )
    allow_negative: bool = Field(
        default=False, description="Accept terms with a negative constant weight."
    )

    _formula: ast.Formula = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            _raise_from(e)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> LossSpec:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as e:
            _raise_from(e)

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any
    ) -> LossSpec:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as e:
            _raise_from(e)

    @model_validator(mode="before")
    @classmethod
    def _check_all(cls, data: Any) -> Any:
        # Everything is checked here, on the raw input, so that one pass reports
        # every problem (field types included) in lossdsl's own words.
        if isinstance(data, str):
            data = {"expression": data}  # a bare formula, as a config file may hold
        if not isinstance(data, Mapping):
            raise LossValidationError(
                f"A loss spec is a formula string or a mapping. Received: {type(data).__name__}."
            )
        problems: list[LossDSLError] = []
        fields = list(cls.model_fields)
        for key in data:
            if key not in cls.model_fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                problems.append(
                    LossValidationError(
                        f"Unknown field {key!r} in the loss spec.{hint}",
                        hint="the fields are " + ", ".join(fields) + ".",
                    )
                )
        where_mean = data.get("where_mean", "selected")
        if where_mean not in WHERE_MEANS:
            problems.append(
                LossValidationError(
                    f"where_mean must be 'selected' or 'batch'. Received: {where_mean!r}."
                )
            )
        allow_negative = data.get("allow_negative", False)
        if not isinstance(allow_negative, bool):
            problems.append(
                LossValidationError(
                    f"allow_negative must be true or false. Received: {allow_negative!r}."
                )
            )
            allow_negative = False
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            problems.append(
                LossValidationError(
                    f"params must map names to numbers. Received: {params!r}.",
                    hint="params={'alpha': 0.7}",
                )
            )
            params = {}
        expression = data.get("expression")
        if "expression" not in data:
            problems.append(LossValidationError("The loss spec has no 'expression'."))
        elif not isinstance(expression, str):
            problems.append(
                LossValidationError(
                    f"expression must be the formula text. Received: {type(expression).__name__}."
                )
            )
        else:
            try:
                check(
                    expression,
                    units=data.get("units"),
                    params=params,
                    allow_negative=allow_negative,
                )
            except LossValidationError as e:
                problems.extend(e.errors)
            except LossDSLError as e:
                problems.append(e)
        if problems:
            raise LossValidationError.collect(problems)
        return {**data, "units": _plain_units(data.get("units")), "params": _plain(params)}

    @model_validator(mode="after")
    def _keep_formula(self) -> LossSpec:
        self._formula = parse(self.expression)  # cached: parsed once above
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        raise AttributeError(
            f"LossSpec is immutable; cannot set {name!r}. Build a new one: "
            f"LossSpec(**{{**spec.model_dump(), {name!r}: ...}})."
        )

    @property
    def formula(self) -> ast.Formula:
        """The parsed formula."""
        return self._formula

    @classmethod
    def of(
        cls,
        expression: str,
        units: int | Mapping[str, Any] | None = None,
        params: Mapping[str, float] | None = None,
        where_mean: str = "selected",
        allow_negative: bool = False,
    ) -> LossSpec:
        """A spec from ``FormulaLoss``-style arguments (any mapping, ``None`` params)."""
        return cls(
            expression=expression,
            units=dict(units) if isinstance(units, Mapping) else units,
            params=dict(params or {}),
            where_mean=where_mean,
            allow_negative=allow_negative,
        )

    def config(self) -> dict[str, Any]:
        """The fields as plain JSON (slices as lists), for Keras ``get_config``."""
        units: Any = self.units
        if isinstance(units, Mapping):
            units = {k: list(v) if isinstance(v, tuple) else v for k, v in units.items()}
        return {
            "expression": self.expression,
            "units": units,
            "params": dict(self.params),
            "where_mean": self.where_mean,
            "allow_negative": self.allow_negative,
        }


def _plain(params: Mapping[str, Any]) -> dict[str, float]:
    """Parameters as Python floats (numpy scalars included, already checked)."""
    return {str(k): float(v) for k, v in params.items()}


def _plain_units(units: Any) -> Any:
    """Units with Python ints (numpy integers included, already checked)."""
    if units is None:
        return None
    if isinstance(units, Mapping):
        return {
            str(k): int(v) if isinstance(v, numbers.Integral) else (int(v[0]), int(v[1]))
            for k, v in units.items()
        }
    return int(units)


def _raise_from(e: ValidationError) -> NoReturn:
    """Re-raise pydantic's error as lossdsl's, keeping every problem."""
    problems: list[LossDSLError] = []
    for err in e.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LossValidationError):
            problems.extend(cause.errors)
        elif isinstance(cause, LossDSLError):
            problems.append(cause)
        else:
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            problems.append(
                LossValidationError(f"{where}: {err['msg']}. Received: {err.get('input')!r}.")
            )
    raise LossValidationError.collect(problems) from None
