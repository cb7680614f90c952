"""Lints: warnings by default, errors with strict=True and `check --strict`."""

from __future__ import annotations

import json
import warnings

import pytest

import lossdsl
from lossdsl import LossDSLWarning, LossValidationError

CASES = [
    # formula, units, params, code, where the caret starts (or None)
    ("bce(u0) where pred(u0) >= 0.5", 2, None, "LD101", "pred(u0) >= 0.5"),
    ("mse(u[0:3]) where pred(u1) > 0 + bce(u0)", 3, None, "LD101", "pred(u1) > 0"),
    ("bce(u0) + mse(u1) where pred(u0) > 1", 2, None, "LD102", "pred(u0) > 1"),
    ("bce(u0) + mse(u1) where true(u0) >= 0", 2, None, "LD102", "true(u0) >= 0"),
    ("bce(u0) + mse(u1) where 1.5 < pred(u0)", 2, None, "LD102", "1.5 < pred(u0)"),
    ("mse(loc)", {"presence": 0, "loc": 1}, None, "LD103", None),
    ("mse(u0)", 1, {"alpha": 0.5}, "LD104", None),
    ("bce(u0) + mse(u1) + bce(u0)", 2, None, "LD105", "bce(u0)"),
]


@pytest.mark.parametrize(("formula", "units", "params", "code", "at"), CASES)
def test_each_lint_warns_and_is_an_error_when_strict(formula, units, params, code, at) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lossdsl.validate(formula, units=units, params=params)
    messages = [str(w.message) for w in caught if issubclass(w.category, LossDSLWarning)]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{code}: ")
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate(formula, units=units, params=params, strict=True)
    assert info.value.code == code
    if at is not None:
        start = formula.rindex(at) if code == "LD105" else formula.index(at)
        assert info.value.span[0] == start


@pytest.mark.parametrize(
    "formula",
    [
        "bce(u0) + mse(u1) where pred(u0) >= 0.5",  # conditions on another unit
        "bce(u0) where true(u0) == 1",  # the label, not the prediction
        "bce(u0, from_logits=true) + mse(u1) where pred(u0) > 2",  # logits are not probabilities
        "mse(u0) + mse(u1) where pred(u0) > 1",  # u0 is not a probability unit
        "bce(u0) + 2*bce(u0) where true(u1) > 0",
    ],
)
def test_no_false_alarms(formula: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lossdsl.validate(formula, units=2, strict=True)


def test_check_reports_lints(tmp_path) -> None:
    from lossdsl.cli import main

    assert main(["check", "bce(u0) where pred(u0) > 0.5", "--units", "1"]) == 0
    assert main(["check", "bce(u0) where pred(u0) > 0.5", "--units", "1", "--strict"]) == 1


def test_check_json_lists_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    from lossdsl.cli import main

    assert main(["check", "bce(u0) + bce(u0)", "--units", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is True
    assert [w["message"].split(":")[0] for w in result["warnings"]] == ["LD105"]
