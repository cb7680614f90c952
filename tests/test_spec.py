"""LossSpec: one validated model for the whole specification, and the ways
compile_loss accepts it."""

from __future__ import annotations

import json
import math

import pytest

import lossdsl
from lossdsl import LossSpec, LossSyntaxError, LossValidationError


def test_fields_and_formula() -> None:
    spec = LossSpec(
        expression="alpha*bce(presence) + (1 - alpha)*mse(box) where true(presence) == 1",
        units={"presence": 0, "box": [1, 5]},
        params={"alpha": 0.7},
        where_mean="batch",
    )
    assert spec.units == {"presence": 0, "box": (1, 5)}
    assert spec.params == {"alpha": 0.7}
    assert spec.where_mean == "batch"
    assert spec.allow_negative is False
    assert str(spec.formula) == (
        "alpha * bce(presence) + (1 - alpha) * mse(box) where true(presence) == 1"
    )


def test_spec_is_frozen_and_rejects_unknown_fields() -> None:
    spec = LossSpec(expression="mse(u0)")
    with pytest.raises(AttributeError, match="LossSpec is immutable"):
        spec.expression = "mae(u0)"  # type: ignore[misc]
    assert LossSpec.model_validate("mse(u0) + mae(u0)").expression == "mse(u0) + mae(u0)"
    with pytest.raises(LossValidationError, match="Did you mean 'expression'"):
        LossSpec(expresion="mse(u0)")  # type: ignore[call-arg]


def test_every_problem_in_the_spec_at_once() -> None:
    text = "bec(u0) + alpha*mse(box)"
    with pytest.raises(LossValidationError) as info:
        LossSpec(
            expression=text,
            units={"presence": 0},
            params={"alpha": math.inf},
            where_mean="sometimes",  # type: ignore[arg-type]
        )
    messages = [e.message for e in info.value.errors]
    assert messages == [
        "where_mean must be 'selected' or 'batch'. Received: 'sometimes'.",
        "Parameter 'alpha' must be a finite number. Received: inf.",
        "Unknown function 'bec'. Did you mean 'bce'?",
        "Unknown unit 'box'.",
    ]
    carets = {e.message: e.column for e in info.value.errors}
    assert carets["Unknown function 'bec'. Did you mean 'bce'?"] == 1
    assert carets["Parameter 'alpha' must be a finite number. Received: inf."] == 11
    assert carets["Unknown unit 'box'."] == text.index("box") + 1


def test_syntax_errors_come_through_unwrapped() -> None:
    with pytest.raises(LossSyntaxError, match="Unclosed"):
        LossSpec(expression="mse(u0")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"units": 2}, "The loss spec has no 'expression'."),
        ({"expression": 3}, "expression must be the formula text. Received: int."),
        ({"expression": "mse(u0)", "units": "two"}, "units must be the output width"),
        (
            {"expression": "mse(u0)", "units": 0},
            "units must be between 1 and 2,147,483,647. Received: units=0.",
        ),
        ({"expression": "mse(u0)", "units": True}, "units must be the output width"),
        ({"expression": "mse(u0)", "params": [1, 2]}, "params must map names to numbers."),
        ({"expression": "mse(u0)", "params": {"u1": 1.0}}, "'u1' is reserved"),
        ({"expression": "mse(u0)", "params": {"a": "x"}}, "Parameter 'a' must be a finite number."),
        (
            {"expression": "mse(u0)", "allow_negative": "yes"},
            "allow_negative must be true or false",
        ),
    ],
)
def test_bad_fields(data: dict[str, object], message: str) -> None:
    with pytest.raises(LossValidationError) as info:
        LossSpec.model_validate(data)
    assert message in str(info.value)
    assert info.value.__cause__ is None


def test_model_validate_json() -> None:
    spec = LossSpec.model_validate_json(
        json.dumps({"expression": "mse(loc) where true(p) == 1", "units": {"p": 0, "loc": 1}})
    )
    assert str(spec.formula) == "mse(loc) where true(p) == 1"
    with pytest.raises(LossValidationError, match="Unknown unit 'lco'"):
        LossSpec.model_validate_json(json.dumps({"expression": "mse(lco)", "units": {"loc": 1}}))


def test_json_schema_describes_the_fields() -> None:
    schema = LossSpec.model_json_schema()
    assert set(schema["properties"]) == {
        "expression",
        "units",
        "params",
        "where_mean",
        "allow_negative",
        "learned",
    }
    assert schema["required"] == ["expression"]


def test_compile_loss_accepts_text_specs_and_dicts() -> None:
    formula = "alpha*bce(u0) + (1 - alpha)*mse(u1)"
    from_text = lossdsl.compile_loss(formula, units=2, params={"alpha": 0.3})
    from_dict = lossdsl.compile_loss({"expression": formula, "units": 2, "params": {"alpha": 0.3}})
    from_spec = lossdsl.compile_loss(LossSpec(expression=formula, units=2, params={"alpha": 0.3}))
    for loss in (from_text, from_dict, from_spec):
        assert isinstance(loss, lossdsl.FormulaLoss)
        assert dict(loss.params) == {"alpha": 0.3}
        assert loss.spec.units == 2


def test_compile_loss_keywords_override_the_spec() -> None:
    spec = LossSpec(expression="alpha*mse(u0)", units=1, params={"alpha": 0.3})
    loss = lossdsl.compile_loss(spec, params={"alpha": 0.9}, where_mean="batch", name="total")
    assert dict(loss.params) == {"alpha": 0.9}
    assert loss.where_mean == "batch"
    assert loss.name == "total"


def test_compile_loss_validates_before_building() -> None:
    with pytest.raises(LossValidationError, match="Unknown parameter 'alpha'"):
        lossdsl.compile_loss("alpha*mse(u0)", units=1)
    with pytest.raises(TypeError, match="expects formula text, a LossSpec or a mapping"):
        lossdsl.compile_loss(42)  # type: ignore[arg-type]


def test_register_loss_is_validated_like_a_builtin() -> None:
    def scaled_abs(
        y_true: object, y_pred: object, scale: float = 1.0, squared: bool = False
    ) -> object:
        raise AssertionError("not called during validation")

    lossdsl.register_loss(
        "scaled_abs", scaled_abs, kwargs={"scale": 1.0, "squared": False}, min_units=2
    )
    try:
        assert str(lossdsl.validate("scaled_abs(u[0:2], scale=2)", units=2)) == (
            "scaled_abs(u[0:2], scale=2)"
        )
        with pytest.raises(LossValidationError) as info:
            lossdsl.validate(
                "scaled_abs(u0, scael=2) + scaled_abs(u[0:2], squared=1) + scaled_ab(u0)", units=2
            )
        assert [e.message for e in info.value.errors] == [
            "scaled_abs() needs at least 2 units; u0 selects 1.",
            "scaled_abs() has no keyword 'scael'. Did you mean 'scale'?",
            "scaled_abs(..., squared=...) expects true or false. Received: 1.",
            "Unknown function 'scaled_ab'. Did you mean 'scaled_abs'?",
        ]
    finally:
        lossdsl.unregister_loss("scaled_abs")
    with pytest.raises(LossValidationError, match="Unknown function 'scaled_abs'"):
        lossdsl.validate("scaled_abs(u[0:2])", units=2)


@pytest.mark.parametrize(
    ("name", "message"),
    [("bce", "built-in"), ("where", "reserved"), ("u3", "reserved"), ("2x", "identifiers")],
)
def test_register_loss_rejects_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lossdsl.register_loss(name, lambda t, p: t)
