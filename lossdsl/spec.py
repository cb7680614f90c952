"""``LossSpec``: a whole loss specification as one validated pydantic model.

A spec is what a config file, a service request or a ``compile_loss`` call carries: the
formula text, the units, the parameters and the options. Constructing one runs the parser and
the checks once and reports every problem at once, each with its caret, as a ``LossDSLError``
(never a raw pydantic ``ValidationError``). The spec keeps what the checks proved
(``spec.checked``), which the compiled loss and its metrics are built from, so nothing later
checks it again.

>>> spec = LossSpec(expression="alpha*bce(u0) + (1 - alpha)*mse(u1)",
...                 units=2, params={"alpha": 0.7})
>>> str(spec.formula)
'alpha * bce(u0) + (1 - alpha) * mse(u1)'
>>> [term.weight(spec.params) for term in spec.checked.terms]
[0.7, 0.30000000000000004]
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Literal, NoReturn, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from lossdsl import ast, suggest, validation
from lossdsl.arguments import WHERE_MEANS, WhereMean
from lossdsl.checker import Checked
from lossdsl.errors import LossDSLError, LossValidationError, echo
from lossdsl.suggest import did_you_mean

__all__ = ["LossSpec", "spec_from_config"]

Columns = int | tuple[int, int]
Side = Literal["pred", "true"]


class LossSpec(BaseModel):
    """A loss formula with everything needed to check and compile it.

    Attributes:
        expression: the formula text.
        units: the output width, a mapping of unit names to a column index or
            ``[start, stop]``, or ``None`` (width taken from ``y_pred`` when the loss is
            called; names unavailable).
        params: parameter names to finite floats.
        where_mean: ``"selected"`` (a ``where`` term is the mean over the samples its
            condition selects) or ``"batch"`` (the sum over them divided by the whole batch).
        allow_negative: accept terms with a negative constant weight.
        learned: parameters that training learns, to their initial values (trained by the
            model's optimizer when the model is a ``lossdsl.FormulaModel``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    expression: str = Field(
        description="The loss formula, e.g. 'bce(u0) + mse(u1) where true(u0) == 1'."
    )
    units: int | dict[str, Columns | dict[Side, Columns]] | None = Field(
        default=None,
        description="Output width, or unit names mapped to a column index, [start, stop], or "
        '{"pred": ..., "true": ...} for a unit whose sides read other columns (either side '
        "alone, or a true column of class indices against several pred columns).",
    )
    params: dict[str, float] = Field(
        default_factory=dict, description="Parameter names mapped to finite float values."
    )
    where_mean: WhereMean = Field(
        default="selected",
        description="'selected': a where-term is the mean over selected samples; "
        "'batch': divided by the whole batch.",
    )
    allow_negative: bool = Field(
        default=False, description="Accept terms with a negative constant weight."
    )
    learned: dict[str, float] = Field(
        default_factory=dict,
        description="Parameters the model's optimizer trains, mapped to their initial values.",
    )

    _checked: Checked = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            _raise_from(e)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as e:
            _raise_from(e)

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any
    ) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as e:
            _raise_from(e)

    @model_validator(mode="wrap")
    @classmethod
    def _check_all(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> LossSpec:
        # Everything is checked here, on the raw input, so that one pass reports every
        # problem (field types included) in lossdsl's own words; pydantic then only
        # builds the model from fields known to be right.
        fields, checked = _checked_fields(data)
        spec: LossSpec = handler(fields)
        spec._checked = checked
        return spec

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        raise AttributeError(
            f"LossSpec is immutable; cannot set {name!r}. Build a new one: "
            f"LossSpec(**{{**spec.model_dump(), {name!r}: ...}})."
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A new spec with the fields in ``update`` changed, checked like the first (a copy
        that skipped the checks could hold a formula its new fields do not allow)."""
        return self.model_validate({**self.config(), **(update or {})})

    # A spec is immutable, so a copy is the spec itself; a pickled spec is its fields, checked
    # again when it is loaded (what the checks proved is not data to trust from a file).
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self).model_validate, (self.config(),))

    @property
    def checked(self) -> Checked:
        """What the checks proved about the formula, for the compiler."""
        return self._checked

    @property
    def formula(self) -> ast.Formula:
        """The parsed formula."""
        return self._checked.formula

    def with_params(self, params: Mapping[str, float]) -> LossSpec:
        """The same spec with new parameter values, checked like the first ones."""
        return self.model_copy(update={"params": dict(params)})

    def config(self) -> dict[str, Any]:
        """The fields as plain JSON (slices as lists), for Keras ``get_config``."""
        return {
            "expression": self.expression,
            "units": _plain_units(self.units, as_list=True),
            "params": dict(self.params),
            "where_mean": self.where_mean,
            "allow_negative": self.allow_negative,
            **({"learned": dict(self.learned)} if self.learned else {}),
        }


def spec_from_config(
    config: Any, options: tuple[str, ...], what: str
) -> tuple[LossSpec, dict[str, Any]]:
    """The spec in a Keras ``get_config`` of ``what`` (the spec's fields beside the object's
    own ``options``), and those options; any other key is an error."""
    if not isinstance(config, Mapping):
        raise LossValidationError(
            f"{what}.from_config expects the dict its get_config returns. Received: {echo(config)}."
        )
    known = [*LossSpec.model_fields, *options]
    unknown = [k for k in config if k not in known]
    if unknown:
        raise LossValidationError(
            f"{what}.from_config: unknown key {echo(unknown[0])}."
            f"{did_you_mean(str(unknown[0]), known)}",
            hint=f"its keys are {', '.join(known)}.",
        )
    fields = {k: v for k, v in config.items() if k in LossSpec.model_fields}
    rest = {k: v for k, v in config.items() if k in options}
    return LossSpec.model_validate(fields), rest


def _checked_fields(data: Any) -> tuple[dict[str, Any], Checked]:
    """The fields of a spec in plain Python types, and the checked formula; raises a
    ``LossDSLError`` that lists every problem (with a bounded number of suggestions)."""
    with suggest.limit():
        return _fields(data)


def _fields(data: Any) -> tuple[dict[str, Any], Checked]:
    if isinstance(data, LossSpec):
        return data.config(), data.checked
    if isinstance(data, str):
        data = {"expression": data}  # a bare formula, as a config file may hold
    if not isinstance(data, Mapping):
        raise LossValidationError(
            f"A loss spec is a formula string or a mapping. Received: {type(data).__name__}."
        )
    problems: list[LossDSLError] = []
    fields = list(LossSpec.model_fields)
    for key in data:
        if key not in LossSpec.model_fields:
            hint = did_you_mean(key, fields) if isinstance(key, str) else ""
            problems.append(
                LossValidationError(
                    f"Unknown field {echo(key)} in the loss spec.{hint}",
                    hint="the fields are " + ", ".join(fields) + ".",
                )
            )
    where_mean = data.get("where_mean", "selected")
    if where_mean not in WHERE_MEANS:
        problems.append(
            LossValidationError(
                f"where_mean must be {' or '.join(map(repr, WHERE_MEANS))}. "
                f"Received: {echo(where_mean)}."
            )
        )
    allow_negative = data.get("allow_negative", False)
    if not isinstance(allow_negative, bool):
        problems.append(
            LossValidationError(
                f"allow_negative must be true or false. Received: {echo(allow_negative)}."
            )
        )
        allow_negative = False
    params = _mapping(data, "params", "map names to numbers", "params={'alpha': 0.7}", problems)
    learned = _mapping(
        data, "learned", "map names to initial values", "learned={'s_box': 0.0}", problems
    )
    expression = data.get("expression")
    checked = None
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
            checked = validation.check(
                expression,
                units=data.get("units"),
                params=params,
                learned=learned,
                allow_negative=allow_negative,
            )
        except LossValidationError as e:
            problems.extend(e.errors)
        except LossDSLError as e:
            problems.append(e)
    if problems or checked is None:
        raise LossValidationError.collect(problems)
    plain = {
        **data,
        "units": _plain_units(data.get("units")),
        "params": _plain(params),
        "learned": _plain(learned),
    }
    return plain, checked


def _mapping(
    data: Mapping[Any, Any], key: str, must: str, hint: str, problems: list[LossDSLError]
) -> Mapping[Any, Any]:
    """The mapping field ``key`` of ``data`` (empty when absent or ``None``); a problem, and an
    empty mapping, when it is something else."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(
            LossValidationError(f"{key} must {must}. Received: {echo(value)}.", hint=hint)
        )
        return {}
    return value


def _plain(params: Mapping[str, Any]) -> dict[str, float]:
    """Parameters as Python floats (numpy scalars included, already checked)."""
    return {str(k): float(v) for k, v in params.items()}


def _plain_units(units: Any, *, as_list: bool = False) -> Any:
    """Units with Python ints (numpy integers included, already checked); ranges as tuples,
    or as lists for JSON."""

    def columns(v: Any) -> Any:
        if isinstance(v, numbers.Integral):
            return int(v)
        pair = (int(v[0]), int(v[1]))
        return list(pair) if as_list else pair

    def entry(v: Any) -> Any:
        return {side: columns(c) for side, c in v.items()} if isinstance(v, Mapping) else columns(v)

    if units is None:
        return None
    if isinstance(units, Mapping):
        return {str(k): entry(v) for k, v in units.items()}
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
                LossValidationError(f"{where}: {err['msg']}. Received: {echo(err.get('input'))}.")
            )
    raise LossValidationError.collect(problems) from None
