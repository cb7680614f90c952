"""Bad input: every case in cases/errors.json raises the named LossDSLError,
with the expected message, a caret under the expected text, and no raw Lark,
pydantic or recursion error behind it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import lossdsl
from lossdsl import LossDSLError, LossSyntaxError, LossValidationError
from lossdsl.errors import render_caret

CASES = json.loads((Path(__file__).parent / "cases" / "errors.json").read_text())


def _expected_span(formula: str, case: dict[str, Any]) -> tuple[int, int]:
    at = case["at"]
    if at == "<start>":
        return 0, 1
    if at == "<end>":
        return len(formula), len(formula) + 1
    start = -1
    for _ in range(case.get("occurrence", 1)):
        start = formula.index(at, start + 1)
    return start, start + len(at)


def _expected_caret(formula: str, start: int, end: int) -> str:
    """The source line and the caret line, computed from offsets alone (for a
    line short enough to be shown whole)."""
    line_start = formula.rfind("\n", 0, start) + 1
    line_end = formula.find("\n", start)
    line_end = len(formula) if line_end == -1 else line_end
    width = max(1, min(end, line_end) - start)
    line = formula[line_start:line_end].rstrip()
    # What no terminal can print (a control character, a lone surrogate) is shown as U+FFFD.
    line = "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in line)
    return f"    {line}\n    {' ' * (start - line_start)}{'^' * width}"


def _assert_caret(text: str, formula: str, start: int, end: int) -> None:
    """``text`` holds the caret under ``formula[start:end]``: the whole line when
    it is short, else a window of it whose carets sit under the spanned text."""
    line_start = formula.rfind("\n", 0, start) + 1
    line_end = formula.find("\n", start)
    line_end = len(formula) if line_end == -1 else line_end
    if line_end - line_start <= 100:
        assert _expected_caret(formula, start, end) in text
        return
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip() and set(ln.strip()) == {"^"})
    shown, caret = lines[at - 1], lines[at]
    first = caret.index("^")
    body = shown[4:].removeprefix("...").removesuffix("...")
    assert body in formula[line_start:line_end] and len(shown) <= 4 + 3 + 100 + 3
    under = shown[first : first + caret.count("^")]
    assert formula[start:].startswith(under) or (start == len(formula) and not under.strip())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_error_case(case: dict[str, Any]) -> None:
    formula = case["formula"]
    with pytest.raises(LossDSLError) as info:
        lossdsl.validate(formula, units=case.get("units"), params=case.get("params"))
    err = info.value
    assert type(err).__name__ == case["error"]
    assert len(getattr(err, "errors", [err])) == 1, str(err)
    if "message" in case:
        assert err.message == case["message"]
    if "hint" in case:
        assert err.hint is not None and case["hint"] in err.hint
    if case.get("no_hint"):
        assert err.hint is None, err.hint
    start, end = _expected_span(formula, case)
    assert err.source == formula
    assert err.span is not None
    assert err.span[0] == start, str(err)
    if case["at"] not in ("<start>", "<end>"):
        assert err.span[1] == end, str(err)
    line = formula.count("\n", 0, start) + 1
    assert err.line == case.get("line", line)
    assert err.column == start - (formula.rfind("\n", 0, start) + 1) + 1
    text = str(err)
    assert text.startswith(err.message)
    assert f"line {err.line}, column {err.column}:" in text
    _assert_caret(text, formula, start, end)
    # Our own error, not a re-raised Lark or pydantic one.
    assert err.__cause__ is None


def test_every_problem_is_reported_at_once() -> None:
    formula = "bec(u0) + alfa*mse(u9) + huber(u1, delt=1)"
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate(formula, units=3, params={"alpha": 0.5})
    messages = [e.message for e in info.value.errors]
    assert messages == [
        "Unknown function 'bec'. Did you mean 'bce'?",
        "Unknown parameter 'alfa'. Did you mean 'alpha'?",
        "u9 is out of range: the output has 3 units (u0..u2).",
        "huber() has no keyword 'delt'. Did you mean 'delta'?",
    ]
    text = str(info.value)
    assert text.startswith("4 problems in the loss specification:")
    for e in info.value.errors:
        assert e.source == formula
        assert _expected_caret(formula, *e.span) in text.replace("\n       ", "\n    ")


def test_negative_weight_is_allowed_on_request() -> None:
    f = lossdsl.validate("bce(u0) - 0.5*mse(u1)", units=2, allow_negative=True)
    assert str(f) == "bce(u0) - 0.5 * mse(u1)"


def test_constant_offsets_may_be_negative() -> None:
    # A constant changes no gradient and cannot make the loss unbounded.
    assert str(lossdsl.validate("mse(u0) - 1", units=1)) == "mse(u0) - 1"


def test_formula_too_long() -> None:
    formula = "mse(u0)+" * 1300 + "mse(u0)"
    with pytest.raises(LossSyntaxError) as info:
        lossdsl.parse(formula)
    assert info.value.message == (
        f"The formula is {len(formula):,} characters long, not counting spaces and comments; "
        "the limit is 10,000."
    )
    # The caret starts at the first character past the limit.
    assert info.value.span == (10_000, len(formula))
    spaced = "mse(u0) +  # c\n " * 1300 + "mse(u0)"
    with pytest.raises(LossSyntaxError) as info:
        lossdsl.parse(spaced)
    start = info.value.span[0]
    assert len(spaced[:start].replace("# c", "").replace(" ", "").replace("\n", "")) == 10_000


def test_whitespace_and_comments_do_not_count_towards_the_limit() -> None:
    formula = "# a documented config entry\n" * 200 + "mse(u0) +\n    bce(u0)"
    assert len(formula) > 5_000
    assert str(lossdsl.parse(formula)) == "mse(u0) + bce(u0)"
    with pytest.raises(LossSyntaxError, match="the limit is 100,000"):
        lossdsl.parse(" " * 100_001 + "mse(u0)")


@pytest.mark.parametrize(
    ("formula", "at"),
    [
        ("(" * 101 + "mse(u0)" + ")" * 101, 100),
        ("abs(" * 120 + "pred(u0)" + ")" * 120, 403),
        ("-" * 150 + "mse(u0)", 100),
        ("mse(u1) where " + "not " * 150 + "pred(u0) > 0", 14 + 4 * 100),
    ],
    ids=["parentheses", "calls", "unary-minus", "not"],
)
def test_nesting_too_deep(formula: str, at: int) -> None:
    with pytest.raises(LossSyntaxError) as info:
        lossdsl.parse(formula)
    assert info.value.message == "The formula is nested more than 100 levels deep."
    assert info.value.span is not None
    assert info.value.span[0] == at
    _assert_caret(str(info.value), formula, at, at + 1)


@pytest.mark.parametrize(
    "formula",
    [
        "(" * 99 + "mse(u0)" + ")" * 99,  # 100 parentheses, counting the call's
        "abs(" * 99 + "pred(u0)" + ")" * 99,  # 100 calls
        "-" * 99 + "mse(u0)",  # 99 unary minuses around a call
        "mse(u1) where " + "not " * 99 + "pred(u0) > 0",
    ],
    ids=["parentheses", "calls", "unary-minus", "not"],
)
def test_nesting_at_the_limit_is_accepted(formula: str) -> None:
    lossdsl.parse(formula)


def test_deep_but_allowed_nesting_parses() -> None:
    formula = "(" * 99 + "mse(u0)" + ")" * 99
    assert str(lossdsl.parse(formula)) == "mse(u0)"


def test_long_flat_formula_does_not_recurse() -> None:
    # 1,000 terms within the length limit: the AST is wide, not deep.
    formula = "+".join(["mse(u0)"] * 1000)
    f = lossdsl.validate(formula, units=1)
    assert len(f.expr.terms) == 1000
    assert lossdsl.parse(str(f)) == f


@pytest.mark.parametrize(
    "formula",
    ["+".join(["mse(u0)"] * 1001), "+".join(["(" + "+".join(["u0"] * 10) + ")"] * 92)],
    ids=["flat", "nested"],
)
def test_more_than_1000_terms(formula: str) -> None:
    with pytest.raises(LossSyntaxError) as info:
        lossdsl.parse(formula)
    assert info.value.message == "The formula has more than 1,000 terms."


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "0.5", True, None])
def test_set_param_rejects_non_numbers(value: object) -> None:
    # set_param is validated like params at construction time.
    loss = lossdsl.compile_loss("alpha*mse(u0)", units=1, params={"alpha": 0.5})
    with pytest.raises(LossValidationError, match="must be a finite number"):
        loss.set_param("alpha", value)  # type: ignore[arg-type]
    assert loss.params["alpha"] == 0.5


def test_set_param_rejects_negative_weight_and_unknown_name() -> None:
    loss = lossdsl.compile_loss(
        "alpha*bce(u0) + (1 - alpha)*mse(u1)", units=2, params={"alpha": 0.5}
    )
    with pytest.raises(LossValidationError, match="negative weight"):
        loss.set_param("alpha", 1.5)
    with pytest.raises(LossValidationError, match="Did you mean 'alpha'"):
        loss.set_param("alpah", 0.1)
    assert dict(loss.params) == {"alpha": 0.5}


def test_non_string_formula_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expects the formula as a str"):
        lossdsl.parse(42)  # type: ignore[arg-type]


def test_errors_pickle() -> None:
    import pickle

    with pytest.raises(LossValidationError) as info:
        lossdsl.validate("bec(u0) + mse(u7)", units=2)
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value)


def test_negative_weight_is_judged_per_top_level_term() -> None:
    # A KL divergence written out: never negative, though `- pred(u1)` inside is.
    kl = "0.5*beta*(square(pred(u0)) + exp(pred(u1)) - pred(u1) - 1)"
    assert lossdsl.validate(f"mse(u2) + {kl}", units=3, params={"beta": 0.1})
    with pytest.raises(LossValidationError, match="negative weight"):
        lossdsl.validate(f"mse(u2) - {kl}", units=3, params={"beta": 0.1})
    with pytest.raises(LossValidationError, match=r"negative weight \(-0.05\)"):
        lossdsl.validate(f"mse(u2) + {kl}", units=3, params={"beta": -0.1})


def test_numpy_scalars_are_numbers() -> None:
    import numpy as np

    f = lossdsl.validate(
        "alpha*mse(box) + bce(p)",
        units={"p": np.int64(0), "box": [np.int32(1), np.int64(3)]},
        params={"alpha": np.float32(0.5)},
    )
    assert str(f) == "alpha * mse(box) + bce(p)"
    spec = lossdsl.LossSpec(
        expression="alpha*mse(u0)", units=np.int64(2), params={"alpha": np.float32(0.5)}
    )
    assert spec.params == {"alpha": 0.5} and type(spec.params["alpha"]) is float
    assert spec.units == 2 and type(spec.units) is int


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(LossValidationError, match="params must map names to numbers"):
        lossdsl.validate("mse(u0)", units=1, params="abc")  # type: ignore[arg-type]


def test_no_bogus_second_error_for_a_wrong_arity() -> None:
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate("mse(u0) + abs() + min(1)", units=1)
    assert [e.message for e in info.value.errors] == [
        "abs() takes 1 argument, abs(x). Received 0.",
        "min() takes 2 arguments, min(a, b). Received 1.",
    ]


def test_a_parameter_beyond_float32_is_an_error() -> None:
    # Its float32 variable would hold inf; a product of factors is judged as a weight.
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate("mse(u0) + alpha", units=1, params={"alpha": 1e39})
    assert info.value.errors[0].message.startswith("Parameter 'alpha' is 1e+39, beyond the float32")
    assert str(lossdsl.validate("mse(u0) * (1e20 * 1e20) / 1e35", units=1)).startswith("mse(u0)")


def test_a_long_line_is_shown_around_its_caret() -> None:
    # A generated formula on one line: the caret line stays readable, and the
    # caret still sits under the offending text within the window shown.
    text = " + ".join(["mse(u0)"] * 300) + " + mse(u9)"
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate(text, units=2)
    err = info.value
    assert err.column == text.index("u9") + 1
    shown, caret = str(err).splitlines()[2:4]
    assert len(shown) < 120 and shown.lstrip().startswith("...")
    assert shown.endswith("mse(u9)")
    at = caret.index("^")
    assert shown[at : at + 2] == "u9" and caret.count("^") == 2


def test_a_long_span_is_cut_at_the_window() -> None:
    text = " + ".join(["mse(u0)"] * 300)
    rendered = render_caret(text, (0, len(text)))
    shown, caret = rendered.splitlines()
    assert shown.endswith("...") and not shown.lstrip().startswith("...")
    assert 0 < caret.count("^") <= 100


def test_weight_problems_come_in_the_order_of_the_text() -> None:
    with pytest.raises(LossValidationError) as info:
        lossdsl.validate("-mse(u0) + alpha * mse(u1)", units=2, params={"alpha": 1e-40})
    assert [e.message.split(" ")[:3] for e in info.value.errors] == [
        ["The", "term", "'-mse(u0)'"],
        ["The", "weight", "of"],
    ]
    # The headline (message, span, hint) is the first problem in the text.
    assert str(info.value).startswith("2 problems")
    assert info.value.message == info.value.errors[0].message
    assert info.value.span == (0, 8)
