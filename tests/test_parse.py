"""Parsing: the AST, its canonical text, precedence, spans and the cache."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast, parse


def test_the_example_from_the_brief() -> None:
    f = parse("0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1")
    assert f.expr == ast.Sum(
        (
            (
                "+",
                ast.Product(
                    (("*", ast.Number(0.7)), ("*", ast.Call("bce", (ast.Name("presence"),))))
                ),
            ),
            (
                "+",
                ast.Where(
                    ast.Product(
                        (("*", ast.Number(0.3)), ("*", ast.Call("mse", (ast.Name("loc"),))))
                    ),
                    ast.Compare("==", ast.Call("true", (ast.Name("presence"),)), ast.Number(1.0)),
                ),
            ),
        )
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (
            "0.7*bce(u0)+0.3*mse(u1) where pred(u0)>=0.5",
            "0.7 * bce(u0) + 0.3 * mse(u1) where pred(u0) >= 0.5",
        ),
        ("(bce(u0) + mse(u1)) where pred(u0) >= 0.5", "(bce(u0) + mse(u1)) where pred(u0) >= 0.5"),
        ("mse(u1) where true(u0) == 1 + bce(u0)", "mse(u1) where true(u0) == 1 + bce(u0)"),
        ("mse(u[1:5])", "mse(u[1:5])"),
        ("mse( u01 )", "mse(u1)"),
        (
            "bce(u0, from_logits = true, label_smoothing=.1)",
            "bce(u0, from_logits=true, label_smoothing=0.1)",
        ),
        (
            "1e-3*mse(u0) + 2.50*mae(u0) + 1E3*mse(u0)",
            "0.001 * mse(u0) + 2.5 * mae(u0) + 1000 * mse(u0)",
        ),
        ("1e-7 * mse(u0)", "1e-07 * mse(u0)"),
        ("(a + b) + c", "a + b + c"),
        ("a + (b + c)", "a + (b + c)"),
        ("a - (b - c)", "a - (b - c)"),
        ("(a * b) * c", "a * b * c"),
        ("a / (b * c)", "a / (b * c)"),
        ("a * (b + c)", "a * (b + c)"),
        ("-(a + b)", "-(a + b)"),
        ("- - a", "--a"),
        ("a - -b", "a - -b"),
        ("2 * (mse(u0) where pred(u0) > 0)", "2 * (mse(u0) where pred(u0) > 0)"),
        ("m where (pred(u0) - true(u0)) > 0.1", "m where (pred(u0) - true(u0)) > 0.1"),
        ("m where ((a > 1 or b > 1)) or c > 1", "m where a > 1 or b > 1 or c > 1"),
        ("m where (a > 1 or b > 1) and c > 1", "m where (a > 1 or b > 1) and c > 1"),
        ("m where not (a > 1 and b > 1)", "m where not (a > 1 and b > 1)"),
        ("m where not not a > 1", "m where not not a > 1"),
        ("m where a > 1 and b < 2 or not c != 3", "m where a > 1 and b < 2 or not c != 3"),
        (
            "clip(pred(u0), 0, 1) + min(a, b) + max(a, b)",
            "clip(pred(u0), 0, 1) + min(a, b) + max(a, b)",
        ),
        ("abs(pred(u1) - true(u1))", "abs(pred(u1) - true(u1))"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    f = parse(text)
    assert str(f) == canonical
    assert parse(canonical) == f
    assert str(parse(canonical)) == canonical


def test_where_binds_looser_than_times_and_tighter_than_plus() -> None:
    f = parse("0.7*bce(u0) + 0.3*mse(u1) where pred(u0) >= 0.5")
    assert isinstance(f.expr, ast.Sum)
    (_, first), (_, second) = f.expr.terms
    assert isinstance(first, ast.Product)  # not masked
    assert isinstance(second, ast.Where)
    assert isinstance(second.term, ast.Product)  # 0.3*mse(u1) is masked as a whole
    grouped = parse("(bce(u0) + mse(u1)) where pred(u0) >= 0.5").expr
    assert isinstance(grouped, ast.Where)
    assert isinstance(grouped.term, ast.Sum)


def test_a_condition_ends_at_the_next_plus() -> None:
    f = parse("mse(u1) where true(u0) == 1 + bce(u0)")
    assert isinstance(f.expr, ast.Sum)
    where = f.expr.terms[0][1]
    assert isinstance(where, ast.Where)
    assert where.cond == ast.Compare("==", ast.Call("true", (ast.Unit(0),)), ast.Number(1.0))


def test_comments_and_newlines() -> None:
    text = """
        0.7 * bce(presence)   # is there a lesion?
      + 0.3 * mse(loc)        # where is it?
            where true(presence) == 1
    """
    assert str(parse(text)) == "0.7 * bce(presence) + 0.3 * mse(loc) where true(presence) == 1"


def test_spans_point_into_the_source_and_do_not_affect_equality() -> None:
    text = "bce(u0) +   mse(u[1:3], )"[:-3] + ")"
    f = parse(text)
    call = f.expr.terms[1][1]
    assert isinstance(call, ast.Call)
    assert call.span is not None and text[call.span[0] : call.span[1]] == "mse(u[1:3])"
    assert call.name_span is not None and text[call.name_span[0] : call.name_span[1]] == "mse"
    sl = call.args[0]
    assert sl.span is not None and text[sl.span[0] : sl.span[1]] == "u[1:3]"
    assert parse("bce(u0)+mse(u[1:3])") == f
    assert hash(parse("bce(u0)+mse(u[1:3])")) == hash(f)


def test_ast_is_frozen() -> None:
    f = parse("mse(u0)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.expr.name = "mae"  # type: ignore[misc, union-attr]


def test_parse_is_cached_by_text() -> None:
    assert parse("mse(u0) + mae(u0)") is parse("mse(u0) + mae(u0)")


def test_grammar_keywords_are_not_names() -> None:
    # `wherever` is a name, `where` a keyword; `true(u0)` is a call, `true` a boolean.
    f = parse("wherever * mse(u0) where true(u0) > 0")
    assert isinstance(f.expr, ast.Where)
    assert f.expr.term == ast.Product(
        (("*", ast.Name("wherever")), ("*", ast.Call("mse", (ast.Unit(0),))))
    )


def test_concurrent_parse_and_validate_match_sequential() -> None:
    texts = [f"{i}*mse(u0) + bce(u1) where pred(u{i % 3}) > 0.{i}" for i in range(1, 40)]
    texts += [f"bce(u{i}) +" for i in range(20)]

    def outcome(t: str) -> str:
        try:
            return str(lossdsl.validate(t, units=3))
        except lossdsl.LossDSLError as e:
            return f"{type(e).__name__}: {e}"

    expected = [outcome(t) for t in texts]
    lossdsl.parser.clear_cache()
    results: dict[int, list[str]] = {}

    def work(k: int) -> None:
        results[k] = [outcome(t) for t in texts]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values())


# -- round trip on generated formulas --------------------------------------------

_names = st.sampled_from(["alpha", "beta", "presence", "loc", "w_1"])
_units = st.one_of(
    st.integers(0, 12).map(lambda i: f"u{i}"),
    st.tuples(st.integers(0, 5), st.integers(1, 6)).map(lambda ab: f"u[{ab[0]}:{ab[1]}]"),
    _names,
)
_numbers = st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(repr)


def _calls(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    loss = st.tuples(
        st.sampled_from(["bce", "mse", "huber", "cce", "focal"]),
        _units,
        st.lists(st.sampled_from(["from_logits=true", "delta=0.5", "gamma=2"]), max_size=2),
    ).map(lambda t: f"{t[0]}({', '.join([t[1], *t[2]])})")
    access = st.tuples(st.sampled_from(["pred", "true"]), _units).map(lambda t: f"{t[0]}({t[1]})")
    math1 = st.tuples(st.sampled_from(["abs", "log", "sqrt", "exp", "square"]), values).map(
        lambda t: f"{t[0]}({t[1]})"
    )
    math2 = st.tuples(st.sampled_from(["min", "max"]), values, values).map(
        lambda t: f"{t[0]}({t[1]}, {t[2]})"
    )
    return st.one_of(loss, access, math1, math2)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    cmp = st.tuples(inner, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), inner).map(
        lambda t: f"({t[0]}) {t[1]} ({t[2]})"
    )
    cond = st.recursive(
        cmp,
        lambda c: st.one_of(
            st.tuples(c, st.sampled_from(["and", "or"]), c).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            c.map(lambda x: f"not {x}"),
        ),
        max_leaves=4,
    )
    return st.one_of(
        _calls(inner),
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        inner.map(lambda x: f"-{x}"),
        inner.map(lambda x: f"({x})"),
        st.tuples(inner, cond).map(lambda t: f"({t[0]} where {t[1]})"),
    )


formulas = st.recursive(st.one_of(_numbers, _names, _calls(_names)), _extend, max_leaves=12)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # large strategy repr
@settings(max_examples=300, deadline=None)
@given(formulas)
def test_round_trip_of_generated_formulas(text: str) -> None:
    f = parse(text)
    canonical = str(f)
    assert parse(canonical) == f
    assert str(parse(canonical)) == canonical


# -- odd but legal corners of the grammar -------------------------------------------------

_CORNER_CASES = [
    "-u0", "a - -b", "f()", "not_x * 2", "x where not a > 1 or (b < 2 and not c == 1)",
    "bce(u[1:3], w=-1e-3) # c\n + 2", "((a))", "f(a, b=1, c=-2)", "u[1:2.5]", "x where",
    "where", "1 2", "a where b == 1 where c == 2", "bce(u0) where not not x > 1", "",
    # Keywords are whole words; Lark's contextual lexer once split `wherever` after a term.
    "u[1:3]wherever==not_x", "u0 wherever == 1", "a where b > 1 andy < 2", "a where b>1 oreo<2",
    "a where notx > 1", "a where not(x > 1)", "a where(x>1)and(y<2)or(z<3)", "wherever*u0",
]  # fmt: skip


@pytest.mark.parametrize("text", _CORNER_CASES)
def test_corner_cases_parse_and_round_trip_or_fail_with_a_caret(text: str) -> None:
    try:
        f = parse(text)
    except lossdsl.LossSyntaxError as e:
        assert e.source == text
        assert e.span is not None and 0 <= e.span[0] <= len(text)
    else:
        assert parse(str(f)) == f


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (
            "(mse(u1) + mse(u0) where true(u0) == 1) + 0.5",
            "mse(u1) + (mse(u0) where true(u0) == 1) + 0.5",
        ),
        ("(mse(u0) where true(u0) == 1) - 1", "(mse(u0) where true(u0) == 1) - 1"),
        ("(mse(u0) where true(u0) == 1) + mse(u1)", "mse(u0) where true(u0) == 1 + mse(u1)"),
    ],
)
def test_canonical_text_of_a_valid_formula_is_valid(text: str, canonical: str) -> None:
    # A where-term followed by a constant keeps its parentheses: `T where C + 1`
    # would read as a comparison with C + 1, which validation rejects.
    f = lossdsl.validate(text, units=2)
    assert str(f) == canonical
    assert lossdsl.validate(canonical, units=2) == f


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("wherever * mse(u0) where andy > 1 and notx < 2", None),
        ("mse(u0) where ornament > 1 or order < 2", None),
        ("mse(u0) where(x>1)and(y<2)", "mse(u0) where x > 1 and y < 2"),
        ("mse(u0) where not(x > 1)", "mse(u0) where not x > 1"),
    ],
)
def test_names_may_start_with_keywords(text: str, canonical: str | None) -> None:
    # A keyword is a whole word: where a name may stand, `wherever` and `andy` are
    # names, and a keyword next to a parenthesis needs no space.
    assert str(parse(text)) == (canonical or text)


@pytest.mark.parametrize(
    "text", ["mse(u0) wherex > 1", "mse(u0) where x > 1 andy < 2", "mse(u0) where x > 1 ory < 2"]
)
def test_a_keyword_glued_to_a_name_is_a_name(text: str) -> None:
    # Never read as `where x` or `and y`: that would silently change the formula
    # whenever the rest happens to be a name too.
    with pytest.raises(lossdsl.LossSyntaxError, match="Unexpected name") as info:
        parse(text)
    assert "a keyword is a whole word" in (info.value.hint or "")
