"""Whatever the text, parse and validate either succeed or raise a LossDSLError
that points inside the text: never a raw Lark, pydantic or recursion error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import LossDSLError

VALID = [
    "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1",
    "alpha*huber(u[1:3], delta=0.5) + (1 - alpha)*cce(u[3:6], from_logits=true)",
    "abs(pred(u1) - true(u1)) where not (pred(u0) < 0.2 or true(u0) != 1)  # note",
    "clip(pred(u2), 1e-3, 1) + max(mse(u0), mae(u0))\n  - 0.5",
]
TOKENS = [
    "bce", "mse", "cce", "pred", "true", "false", "where", "and", "or", "not", "u0", "u7",
    "u[1:3]", "presence", "alpha", "(", ")", "[", "]", ",", "=", "==", "<=", ">", "+", "-",
    "*", "/", "0.5", "1e-3", "1e999", "#", "\n", " ", "from_logits", "delta", "é", "\x00",
]  # fmt: skip
CONTEXT = {"units": {"presence": 0, "loc": 1}, "params": {"alpha": 0.5}}


def _check(text: str) -> None:
    for run in (
        lambda: lossdsl.parse(text),
        lambda: lossdsl.validate(text, **CONTEXT),
        lambda: lossdsl.validate(text, units=4),
        lambda: lossdsl.LossSpec(expression=text, units=3),
    ):
        try:
            run()
        except LossDSLError as e:
            str(e)  # renders
            for err in getattr(e, "errors", [e]):
                if err.source is not None and err.span is not None:
                    assert 0 <= err.span[0] <= len(text), (text, err.span)
                    assert err.line is not None and 1 <= err.line <= text.count("\n") + 1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_token_soup(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_unicode(text: str) -> None:
    _check(text)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "insert", "swap"]),
            st.integers(0, 200),
            st.sampled_from(TOKENS),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_formulas(text: str, edits: list[tuple[str, int, str]]) -> None:
    for kind, where, token in edits:
        pos = where % (len(text) + 1)
        if kind == "delete":
            text = text[:pos] + text[pos + 1 :]
        elif kind == "insert":
            text = text[:pos] + token + text[pos:]
        elif pos + 1 < len(text):
            text = text[:pos] + text[pos + 1] + text[pos] + text[pos + 2 :]
    _check(text)


@pytest.mark.parametrize("n", [99, 100, 101, 2000])
def test_deep_nesting_never_recurses(n: int) -> None:
    for text in (
        "(" * n + "mse(u0)" + ")" * n,
        "-" * n + "mse(u0)",
        "abs(" * n + "pred(u0)" + ")" * n,
    ):
        _check(text)
