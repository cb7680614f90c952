"""Properties of the front end.

* Formulas generated from ``grammar/lossdsl.lark`` itself parse, and round-trip
  through their canonical text, which is stable.
* Whatever the text (valid formulas with characters and tokens deleted, inserted,
  swapped; token soup; arbitrary unicode; very long and very deep inputs),
  ``parse``, ``validate`` and ``LossSpec`` either succeed or raise a
  ``LossDSLError`` pointing at a line and column of the text, never a raw Lark,
  pydantic or recursion error; what parses round-trips; every call returns.
* ``parse`` and ``validate`` from 8 threads at once, from a cold start, give
  what sequential calls give.
* ``fuzz/fuzz_parse.py`` (the atheris harness) keeps working: its target runs
  here on its own random inputs. CI runs these hypothesis versions, never atheris.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

import lossdsl
from lossdsl import LossDSLError, LossSyntaxError, ast

parser_module = importlib.import_module("lossdsl.parser")
validation = importlib.import_module("lossdsl.validation")

_FUZZ_PATH = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_parse.py"
_spec = importlib.util.spec_from_file_location("fuzz_parse", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

# -- the hang guard -------------------------------------------------------------------

HANG_S = 60.0
"""Not a speed limit: a call still running after this long is taken to hang.

A wall-clock assertion after the call would never fire on a real hang (the call
does not come back to be measured) and would make a slow, shared CI machine
fail a correct program. So each input runs in a daemon worker thread and the
test fails only if that thread is still alive after ``HANG_S``, far beyond what
any call here takes (milliseconds an input; the self-test's 300 inputs, seconds).
A daemon thread left hanging does not keep the test process alive, and
Hypothesis stops shrinking a failure after a few minutes."""


def _returns(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, run in a worker thread; fail the test if it never returns."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_S)
    if worker.is_alive():
        pytest.fail(f"{fn.__name__} did not return within {HANG_S:.0f} s on {args!r:.300}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _check(text: str) -> str:
    """The fuzz target (``parse``, the round trip of what parses, ``validate`` in each of the
    harness's contexts), then a ``LossSpec`` of the text: each succeeds or raises a
    ``LossDSLError`` located inside the text. Returns ``"parsed"`` or ``"rejected"``."""
    outcome: str = fuzz.check(text)
    try:
        lossdsl.LossSpec(expression=text, units=3)
    except LossDSLError as e:
        fuzz._errors_inside(e, text)
    return outcome


# -- 1. grammar-generated formulas round-trip ---------------------------------------

GRAMMAR = Lark(parser_module.grammar_text(), parser="lalr", lexer="contextual")
"""The grammar the parser is built from (``grammar_path()``), loaded as Lark sees it."""

# from_lark concatenates terminals with no separator, except for %ignore'd
# whitespace and comments now and then, so `x` `where` would glue into one name
# `xwhere`. Word-like terminals therefore carry their own trailing whitespace
# (which the grammar ignores, so the text is still in the language); punctuation
# comes bare, so tight texts such as `a*-b` are generated too. Every terminal gets
# an explicit strategy drawn from a short list: one choice per token keeps the
# examples small, where regex strategies made them five times slower. The lists
# hold the interesting cases: names that start with a keyword, unit names
# (`u007`), numbers that need reformatting (`1.`, `.5`, `1e16`, 30 digits, a
# subnormal). Keywords are not names, so they are not in NAMES.
_SEPARATORS = [" ", "\n", "\t", "  "]
_NAMES = [
    *["u", "u0", "u12", "u007", "mse", "bce", "huber", "pred", "true", "false", "alpha"],
    *["x_1", "_", "A9", "nothing", "order", "andy", "wherever", "notwhere", "e5", "E", "inf"],
]
_NUMBERS = [
    *["0", "00", "7", "08", "1.", ".5", "0.25", "0.1", "1e3", "1E-3", "2.50e+2", "0e5", "0.000"],
    *["1e15", "1e16", "9007199254740993", "123456789012345678901234567890", "1.5e-7"],
    *["3.14159265358979323846", "1e308", "5e-324"],
]
_INTS = ["0", "1", "3", "10", "007", "2147483647"]  # the last: the largest index there is


def _words(words: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from([w + s for w in words for s in _SEPARATORS])


EXPLICIT = {
    "NAME": _words(_NAMES),
    "NUMBER": _words(_NUMBERS),
    "INT": _words(_INTS),
    "_WHERE": _words(["where"]),
    "_AND": _words(["and"]),
    "_OR": _words(["or"]),
    "NOT": _words(["not"]),
    "ADDOP": st.sampled_from(["+", "-"]),
    "MINUS": st.just("-"),
    "MULOP": st.sampled_from(["*", "/"]),
    "CMPOP": st.sampled_from(["<=", ">=", "==", "!=", "<", ">"]),
    "LPAR": st.just("("),
    "RPAR": st.just(")"),
    "LSQB": st.just("["),
    "RSQB": st.just("]"),
    "COLON": st.just(":"),
    "COMMA": st.just(","),
    "EQUAL": st.just("="),
    "WS": st.sampled_from([" ", "\n", "\t", "\r\n", "  "]),
    # A comment runs to the end of its line: end it, or it would swallow the rest.
    "COMMENT": st.sampled_from(["#\n", "# a note (\n", "#where ) + \n"]),
}
_SLICED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?=(?:\s|#[^\n]*\n)*\[)")


def _slice_units(text: str) -> str:
    # Only the units can be sliced, `u[1:3]`, but the grammar slices any NAME
    # (the parser says so in words). `[` only ever follows the name of a slice
    # (no comment above holds one), so renaming those names to `u` keeps the
    # text in the language and makes it a formula.
    return _SLICED.sub("u", text)


FORMULAS = from_lark(GRAMMAR, explicit=EXPLICIT).map(_slice_units)

OUTSIDE_THE_GRAMMAR = re.compile(
    # What the parser rejects on purpose although the grammar derives it (a slice
    # of a name other than u is the other case, made into a formula above):
    r"A positional argument follows a keyword argument"
    r"|A constant follows a condition"
    # and the limits (rare here: Hypothesis gives up on deeper derivations first).
    r"|The formula (is nested more than|has more than|is [0-9,]+ characters|text is)"
)


def test_every_terminal_of_the_grammar_has_a_strategy() -> None:
    terminals, _, ignored = GRAMMAR.grammar.compile(["start"], ())
    assert {t.name for t in terminals} | set(ignored) == set(EXPLICIT)


def test_grammar_generated_formulas_round_trip() -> None:
    outcomes: Counter[str] = Counter()
    seen: set[str] = set()

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(FORMULAS)
    def round_trip(text: str) -> None:
        try:
            formula = lossdsl.parse(text)
        except LossSyntaxError as e:
            # The grammar derives the text: only a documented restriction may reject it.
            assert OUTSIDE_THE_GRAMMAR.match(e.message), (text, str(e))
            # A constant after a condition is common in random derivations, and is
            # refused by a rule of the parser, not a limit: counted apart.
            constant = e.message.startswith("A constant follows a condition")
            outcomes["constant after a condition" if constant else "outside"] += 1
            assume(False)
        outcomes["parsed"] += 1
        seen.update(type(n).__name__ for n in lossdsl.ast.walk(formula.expr))
        canonical = str(formula)
        again = lossdsl.parse(canonical)
        assert again == formula, (text, canonical)
        assert str(again) == canonical, (text, canonical)  # stable: a second round changes nothing

    round_trip()
    # Not vacuous: almost every generated text is a formula, and between them they
    # use most node types. (The generator is random: the bars are set well below
    # what it reaches, about 95% and 10 to 13 of the 14 node types.)
    assert outcomes["parsed"] >= 4 * outcomes["outside"], outcomes
    assert len(seen) >= 8, seen


@pytest.mark.parametrize("number", [".5", "1e15", "1E5"])
def test_canonical_text_of_an_accepted_formula_is_accepted(number: str) -> None:
    # A number counts as one character towards MAX_LENGTH however it is written, so
    # canonical spellings (0.5, 1000000000000000, 100000) cannot push a formula over.
    text = "mse(u0)" + f"*{number}" * ((lossdsl.parser.MAX_LENGTH - 7) // 2)
    formula = lossdsl.parse(text)
    assert len(str(formula)) > lossdsl.parser.MAX_LENGTH
    assert lossdsl.parse(str(formula)) == formula


# The deepest trees the limits accept, each level using several kinds of node, and
# one level deeper. Every recursive walk of an accepted formula (equality, str,
# repr, pickle, the checks, the lints, compiling) must stay within Python's limit.
def _chain(levels: int) -> str:
    return "(1 + x where x < 1 or not x < 2 * " * levels + "mse(u0)" + ")" * levels


def _tree_depth(node: ast.Node) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in n.children())
    return deepest


def _deepest_accepted() -> str:
    levels = 1
    while True:
        try:
            lossdsl.parse(_chain(levels + 1))
        except LossSyntaxError:
            return _chain(levels)
        levels += 1


def test_the_deepest_accepted_formulas_survive_every_walk() -> None:
    import pickle

    text = _deepest_accepted()
    formula = lossdsl.parse(text)
    assert _tree_depth(formula.expr) > lossdsl.parser.MAX_TREE_DEPTH - 8
    assert lossdsl.parse(str(formula)) == formula
    assert repr(formula) and hash(formula.expr) == hash(lossdsl.parse(str(formula)).expr)
    assert pickle.loads(pickle.dumps(formula)) == formula
    term = "(1 + 2 * -" * 60 + "mse(u0)" + ")" * 60
    with pytest.raises(LossDSLError, match="LD105"):
        lossdsl.validate(f"mse(u0) + {term} + {term}", units=1, allow_negative=True, strict=True)
    with pytest.raises(LossDSLError, match="inside a condition"):  # checked, not recursed
        lossdsl.validate(text, units=1, params={"x": 0.5})
    loss = lossdsl.compile_loss(term, units=1, allow_negative=True)
    assert np.isfinite(float(loss(np.zeros((2, 1), "float32"), np.ones((2, 1), "float32"))))


@pytest.mark.parametrize("make", [_chain, lambda n: "(1 + 2 * -" * n + "mse(u0)" + ")" * n])
def test_one_level_deeper_is_a_syntax_error(make: Any) -> None:
    levels = 1
    while True:
        try:
            lossdsl.parse(make(levels))
        except LossSyntaxError as e:
            assert "nests more than 200 operations" in e.message
            assert e.line == 1 and e.column is not None
            break
        levels += 1
    assert levels < 100  # the tree limit, not the 100-parentheses one, stopped it


# -- 2. mutated formulas fail only with located errors, and return ----------------------

_CHARS = st.one_of(
    st.characters(max_codepoint=127),  # ASCII, control characters included
    st.characters(exclude_categories=["Cs"]),  # anything but a surrogate
)
_POS = st.integers(0, 10_000)
EDITS = st.one_of(
    st.tuples(st.just("delete char"), _POS, st.just(0)),
    st.tuples(st.just("insert char"), _POS, _CHARS),
    st.tuples(st.just("swap chars"), _POS, _POS),
    st.tuples(st.just("delete token"), _POS, st.just(0)),
    st.tuples(st.just("insert token"), _POS, st.sampled_from(fuzz.TOKENS)),
    st.tuples(st.just("swap tokens"), _POS, _POS),
    st.tuples(st.just("insert text"), _POS, st.text(_CHARS, max_size=12)),
)


def _edit(text: str, kind: str, a: int, b: Any) -> str:
    if kind.endswith("token"):
        tokens = fuzz.TOKEN.findall(text)
        i = a % (len(tokens) + 1)
        if kind == "delete token":
            del tokens[i : i + 1]
        else:
            tokens.insert(i, b)
        return "".join(tokens)
    if kind == "swap tokens":
        tokens = fuzz.TOKEN.findall(text)
        if tokens:
            i, j = a % len(tokens), b % len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
        return "".join(tokens)
    i = a % (len(text) + 1)
    if kind == "delete char":
        return text[:i] + text[i + 1 :]
    if kind == "swap chars":
        if not text:
            return text
        i, j = sorted((a % len(text), b % len(text)))
        return text[:i] + text[j] + text[i + 1 : j] + text[i] + text[j + 1 :] if i < j else text
    return text[:i] + b + text[i:]  # insert char, insert text


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(fuzz.SEEDS), st.lists(EDITS, min_size=1, max_size=6))
@example(fuzz.SEEDS[0], [("insert char", 8, "\x00")])
@example(fuzz.SEEDS[0], [("delete token", 10_000, 0), ("insert token", 10_000, "+")])
@example(fuzz.SEEDS[5], [("insert text", 40, "\r\n\u2028")])
def test_mutated_formulas_fail_only_with_located_errors(
    formula: str, edits: list[tuple[str, int, Any]]
) -> None:
    text = formula
    for kind, a, b in edits:
        text = _edit(text, kind, a, b)
    _returns(_check, text)


# Token soup: the harness's tokens, with a space, `false` and a whole slice, in any order.
_SOUP = st.lists(st.sampled_from([*fuzz.TOKENS, " ", "false", "u[1:3]"]), max_size=30)


@settings(max_examples=400, deadline=None)
@given(_SOUP.map("".join))
def test_token_soup_fails_only_with_located_errors(text: str) -> None:
    _returns(_check, text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_unicode_fails_only_with_located_errors(text: str) -> None:
    _returns(_check, text)


_LONG_AND_DEEP: dict[str, Callable[[int, str], str]] = {
    "parens": lambda n, formula: "(" * n + formula + ")" * n,
    "unclosed": lambda n, formula: "(" * n + formula,
    "unmatched": lambda n, formula: formula + ")" * n,
    "minus": lambda n, formula: "-" * n + "mse(u0)",
    "not": lambda n, formula: "mse(u0) where " + "not " * n + "true(u0) == 1",
    "calls": lambda n, formula: "abs(" * n + "pred(u0)" + ")" * n,
    "terms": lambda n, formula: " + ".join(["mse(u0)"] * n),
    "factors": lambda n, formula: "mse(u0)" + "*2" * n,
    "spaces": lambda n, formula: formula + " " * (n * 40),
    "comment": lambda n, formula: formula + "  #" + "x" * (n * 40),
    "repeated": lambda n, formula: (formula + "\n+ ") * (n // 10) + "1",
    "name": lambda n, formula: "x" * (n * 40),
}
"""Inputs at, around and far past each limit, built from a size ``n`` and a valid formula."""


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(sorted(_LONG_AND_DEEP)),
    st.one_of(st.sampled_from([99, 100, 101, 999, 1000, 1001, 2500, 5000]), st.integers(0, 6000)),
    st.sampled_from(fuzz.SEEDS),
)
@example("parens", 5000, fuzz.SEEDS[0])  # "(" * 5000 around a formula
@example("name", 5000, fuzz.SEEDS[0])  # 200,000 characters
@example("spaces", 2500, fuzz.SEEDS[0])  # just past 100,000 characters of text
@example("comment", 2490, fuzz.SEEDS[0])  # just under: Lark reads it all
@example("repeated", 1160, fuzz.SEEDS[1])  # 9,977 significant characters: a formula
@example("repeated", 1170, fuzz.SEEDS[1])  # 10,063: too long
def test_long_and_deep_inputs_fail_only_with_located_errors(
    style: str, depth: int, formula: str
) -> None:
    _returns(_check, _LONG_AND_DEEP[style](depth, formula))


@pytest.mark.parametrize("n", [99, 100, 101, 2000])
@pytest.mark.parametrize("style", ["parens", "minus", "calls"])
def test_nesting_around_the_limits_never_recurses(style: str, n: int) -> None:
    _returns(_check, _LONG_AND_DEEP[style](n, "mse(u0)"))


def test_the_fuzz_harness_self_test_runs() -> None:
    # The atheris target, on the harness's own random inputs (a different seed each run).
    assert _returns(fuzz.self_test, 300, random.randrange(2**32)) == 0


def test_the_fuzz_target_rejects_what_it_should() -> None:
    # The checks the harness makes can fail: a mislocated error is a Bug.
    bad = LossSyntaxError("x", source="ab", span=(3, 4))
    with pytest.raises(fuzz.Bug):
        fuzz._errors_inside(bad, "ab")
    with pytest.raises(fuzz.Bug):
        fuzz._errors_inside(LossSyntaxError("x", source="ab", span=None), "ab")
    with pytest.raises(fuzz.Bug):
        fuzz._errors_inside(LossSyntaxError("x", source="other", span=(0, 1)), "ab")
    fuzz._errors_inside(LossSyntaxError("x", source="ab\ncd", span=(5, 6)), "ab\ncd")  # at the end
    assert fuzz.check("mse(u0)") == "parsed"
    assert fuzz.check("mse(u0) +") == "rejected"


# -- 3. threads -----------------------------------------------------------------------


def _outcome(job: tuple[str, str, int]) -> tuple[str, str]:
    kind, text, context = job
    try:
        if kind == "parse":
            result: object = lossdsl.parse(text)
        else:
            result = lossdsl.validate(text, **fuzz.CONTEXTS[context])
    except LossDSLError as e:
        return type(e).__name__, str(e)
    return type(result).__name__, str(result)


def _jobs() -> list[tuple[str, str, int]]:
    rng = random.Random(5)
    valid = list(fuzz.SEEDS) + [str(lossdsl.parse(s)) for s in fuzz.SEEDS]
    valid += [" + ".join(rng.sample(fuzz.SEEDS, 2)) for _ in range(20)]
    texts = valid + [fuzz.random_input(rng) for _ in range(120)]
    jobs = [
        (kind, text, rng.randrange(len(fuzz.CONTEXTS)))
        for text in texts
        for kind in ("parse", "validate", "validate")
    ]
    jobs += rng.sample(jobs, 200)  # the same calls again, to race on the caches
    rng.shuffle(jobs)
    return jobs


def _share(work: tuple[threading.Barrier, list[tuple[str, str, int]]]) -> list[tuple[str, str]]:
    start, jobs = work
    start.wait(HANG_S)  # all threads call in at once, on a cold parser
    return [_outcome(job) for job in jobs]


def _cold_start() -> None:
    """Forget the lazily built parser and both caches (private state, reset here
    so that the threads race to build the parser and fill the caches)."""
    parser_module._parser = None
    parser_module.clear_cache()
    validation.clear_cache()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Switch threads every microsecond rather than every 5 ms: far more interleavings.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("fast_switching")
def test_threads_give_what_sequential_calls_give(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = _jobs()
    _cold_start()
    expected = [_outcome(job) for job in jobs]
    kinds = Counter(kind for kind, _ in expected)
    assert min(kinds["Formula"], kinds["LossSyntaxError"], kinds["LossValidationError"]) > 50, kinds

    builds = []
    real_lark = parser_module.Lark

    def counting_lark(*args: Any, **kwargs: Any) -> Lark:
        builds.append(threading.get_ident())
        return real_lark(*args, **kwargs)

    monkeypatch.setattr(parser_module, "Lark", counting_lark)
    n_threads = 8
    for _ in range(3):
        _cold_start()
        builds.clear()
        start = threading.Barrier(n_threads)
        with ThreadPoolExecutor(n_threads) as pool:
            shares = list(pool.map(_share, [(start, jobs[k::n_threads]) for k in range(n_threads)]))
        got: list[tuple[str, str] | None] = [None] * len(jobs)
        for k, share in enumerate(shares):
            got[k::n_threads] = share
        assert len(builds) == 1, f"the parser was built {len(builds)} times"
        for job, want, have in zip(jobs, expected, got, strict=True):
            assert have == want, job
