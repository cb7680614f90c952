"""Properties of whole loss specs, from every entry point.

Hypothesis builds specs: a formula (valid, mutated, token soup, grammar-generated, arbitrary
text, or not text at all), ``units`` (a width, a mapping of names to an index,
``[start, stop]`` or a label layout, and hostile values: negative, huge, floats, bools,
strings, nested lists, keys that are not strings, long, unicode or lone-surrogate names),
``params`` (finite floats, huge ints, fractions, inf and nan, strings, nested values),
``where_mean``, ``allow_negative`` and unknown fields. Each spec goes to ``LossSpec`` as a
Python object and as JSON text, to ``validate``, to ``load_spec`` written as a JSON, YAML and
TOML file (and nested under a key), to ``lossdsl check --config FILE --json`` and to
``lossdsl check --stdin --json``; so do config texts that no renderer writes (YAML aliases,
merges, tags, duplicate and non-string keys, tabs, CR line ends; JSON duplicate keys and huge
numbers; TOML tables set twice, dates) and random edits of them. Every call either succeeds
or raises a ``LossDSLError``, within ``BUDGET_S`` of CPU time on a spec of at most 100 KB; the
command line exits with 0, 1 or 2 and prints one JSON document per spec (per line with
``--stdin``), which agrees with ``load_spec``; an accepted spec round-trips through its
``config()``. ``fuzz/fuzz_spec.py`` (the atheris harness for whole specs) holds the file
checks, which the hypothesis tests here call, and its self-test runs here too.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.machinery
import importlib.util
import io
import json
import math
import random
import re
import sys
import time
import tracemalloc
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_properties import _SOUP, EDITS, FORMULAS, _edit, _returns

import lossdsl
from lossdsl import LossDSLError, LossSpec

_FUZZ_PATH = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_spec.py"
_spec = importlib.util.spec_from_file_location("fuzz_spec", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
fuzz = harness.fuzz_parse

BUDGET_S = harness.BUDGET_S
"""The most CPU time (``time.process_time``, which other processes' load does not count)
any call may take on a spec of at most ``MAX_SPEC_BYTES``: lossdsl's promise."""
MAX_SPEC_BYTES = harness.MAX_SPEC_BYTES
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
"""Each test draws a fixed number of examples, the same ones each run (the fuzz harness, and
the seed of its self-test here, explore further)."""


@pytest.fixture(scope="module", autouse=True)
def _warm() -> Iterator[None]:
    # The first parse of a process builds the Lark parser, and the first file of each format
    # imports its reader: not the spec's cost.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lossdsl.LossDSLWarning)
        harness.warm_up()
        yield


# -- reproducers: specs that must be refused with a LossDSLError ----------------------------

REPRODUCERS: list[tuple[str, Callable[[], object]]] = [
    (
        "validate allow_negative=[]",
        lambda: lossdsl.validate("mse(u0)", units=1, allow_negative=[]),
    ),
    (
        "validate units={10**5000: 0}",
        lambda: lossdsl.validate("mse(u0)", units={10**5_000: 0}),
    ),
    (
        "validate params={10**5000: 0}",
        lambda: lossdsl.validate("mse(u0)", units=1, params={10**5_000: 0}),
    ),
    (
        "LossSpec params={5: 1}",
        lambda: LossSpec.model_validate(
            {"expression": "alpha*mse(u0)", "units": 1, "params": {5: 1}}
        ),
    ),
    (
        "validate(5)",
        lambda: lossdsl.validate(5, units=1),  # type: ignore[arg-type]
    ),
]
"""Calls that reach corners of the checks where a raw ``TypeError`` or ``ValueError`` could
escape: an unhashable ``allow_negative`` (part of ``validate``'s cache key), unit and parameter
names of 5,001 digits (too long for ``str()``), a parameter name that is not a string among
the candidates suggested for an unknown name, and a formula that is neither text nor a
``Formula``. Each must raise a ``LossDSLError``."""


@pytest.mark.parametrize(
    "run", [run for _, run in REPRODUCERS], ids=[name for name, _ in REPRODUCERS]
)
def test_found_reproducers_are_lossdsl_errors(run: Callable[[], object]) -> None:
    with warnings.catch_warnings(), pytest.raises(LossDSLError):
        warnings.simplefilter("ignore", lossdsl.LossDSLWarning)
        run()


# -- strategies: the fields of a spec ---------------------------------------------------------

VALID_FORMULAS = [
    *fuzz.SEEDS,
    "cce(cls) + mse(box) where true(presence) == 1",
    "alpha * mse(u0) + beta * mae(u1)",
    "mse(loc)",
]
"""Formulas that validate with ``fuzz.UNITS`` and ``fuzz.PARAMS`` (a few also with ``units=9``
or ``None``; one with ``allow_negative``)."""


def _edits(text: str, edits: list[tuple[str, int, Any]]) -> str:
    for kind, a, b in edits:
        text = _edit(text, kind, a, b)
    return text


_SEEDS_EDITED = st.builds(
    _edits,
    st.sampled_from(VALID_FORMULAS),
    st.lists(EDITS, min_size=1, max_size=4),
)
FORMULA_TEXT = st.one_of(
    st.sampled_from(VALID_FORMULAS),
    _SEEDS_EDITED,
    _SOUP.map("".join),
    FORMULAS,
    st.text(max_size=30),
)
EXPRESSION = st.one_of(
    FORMULA_TEXT,
    st.sampled_from([None, 0, 1.5, True, b"mse(u0)", ["mse(u0)"], {"text": "mse(u0)"}]),
)


GOOD_NAMES = ["presence", "loc", "box", "cls", "alpha", "beta", "a", "x_1", "A9", "_"]
BAD_NAMES = [
    *["", " ", "1a", "a-b", "a b", "mse", "bce", "where", "not", "true", "pred", "u0", "u"],
    *["u007", "\u00e9", "\u0663", "\ufb01", "\u212a", "\ud800", "\udcff", "a\x00", "\U0001f600"],
    *["a" * 5_000, "\u00e9" * 3_000, "expression", "units"],
]
ODD_KEYS = [0, 5, -1, 1.5, math.nan, True, False, None, (1, 2), frozenset({1}), 10**400, b"a"]
NAMES = st.one_of(
    st.sampled_from(GOOD_NAMES),
    st.sampled_from(BAD_NAMES),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
    st.text(max_size=8),
)
KEYS = st.one_of(NAMES, NAMES, NAMES, st.sampled_from(ODD_KEYS))
HUGE_INTS = st.sampled_from([2**31 - 1, 2**31, 2**63, 10**400, -(10**400), 10**4_000])
"""Ints past every limit (ints too long to print, which Hypothesis cannot show, are tested
apart)."""
ODD_NUMBERS = st.sampled_from(
    [
        Fraction(10**400, 3),
        Fraction(1, 10**400),
        Fraction(-7, 2),
        Decimal("nan"),
        Decimal("snan"),
        Decimal("1e400"),
        Decimal("0.5"),
        np.float32(0.5),
        np.float64("nan"),
        np.int64(3),
        np.uint8(2),
        np.bool_(True),
        np.array(0.5),
        np.array([0, 2]),
        1j,
    ]
)
ODD_CONTAINERS = st.sampled_from(
    [
        MappingProxyType({"a": 0}),
        OrderedDict(a=0.5),
        range(2),
        {0, 2},
        frozenset(),
        bytearray(b"ab"),
        np.str_("batch"),
        object(),
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(),
    st.fractions(),
    ODD_NUMBERS,
    ODD_CONTAINERS,
    st.text(max_size=6),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(KEYS, inner, max_size=3),
    ),
    max_leaves=6,
)
INDEX = st.one_of(
    st.integers(-2, 12),
    HUGE_INTS,
    st.sampled_from([np.int64(1), np.uint64(2**63), np.int8(-1), np.float64(1.0)]),
)
RANGE = st.one_of(
    st.tuples(st.integers(0, 9), st.integers(1, 12)).map(list),
    st.tuples(INDEX, INDEX),
    st.lists(INDEX, max_size=3),
)
COLUMNS = st.one_of(INDEX, RANGE, RANGE, HOSTILE)
LAYOUT = st.one_of(
    st.fixed_dictionaries({}, optional={"pred": COLUMNS, "true": COLUMNS}),
    st.dictionaries(st.sampled_from(["pred", "true", "Pred", "both", "", 0]), COLUMNS, max_size=3),
)
UNIT_ENTRY = st.one_of(INDEX, RANGE, LAYOUT, HOSTILE)
MANY_TEMPLATES = ["k{}", "unit{}", "u{}", "expressio{}", "a" * 40 + "{}", "\u00e9{}", "{}"]


def _many(template: str, count: int, value: Any) -> dict[str, Any]:
    """``count`` keys from ``template``, each mapped to ``value``; about 100 KB at most."""
    count = min(count, 95_000 // (len(template) + 8 + _size(value)))
    return {template.format(i): value for i in range(count)}


MANY = st.builds(
    _many, st.sampled_from(MANY_TEMPLATES), st.sampled_from([20, 300, 300, 10_000]), SCALARS
)
UNITS = st.one_of(
    st.sampled_from([None, 1, 2, 9, fuzz.UNITS]),
    st.integers(-2, 20),
    HUGE_INTS,
    st.dictionaries(KEYS, UNIT_ENTRY, max_size=6),
    st.dictionaries(KEYS, UNIT_ENTRY, max_size=2).map(lambda u: {**fuzz.UNITS, **u}),
    HOSTILE,
    MANY,
)
PARAM_VALUE = st.one_of(
    st.floats(-10, 10),
    st.floats(),
    st.integers(),
    HUGE_INTS,
    st.fractions(),
    ODD_NUMBERS,
    HOSTILE,
)
PARAMS = st.one_of(
    st.sampled_from([None, {}, fuzz.PARAMS]),
    st.dictionaries(st.one_of(st.sampled_from(["alpha", "beta"]), KEYS), PARAM_VALUE, max_size=5),
    st.dictionaries(KEYS, PARAM_VALUE, max_size=2).map(lambda p: {**fuzz.PARAMS, **p}),
    HOSTILE,
    MANY,
)
WHERE_MEAN = st.sampled_from(
    [
        *["selected", "batch", "Selected", "mean", "", None, 0, True, [], {}, ["batch"]],
        *["batch\x00", np.str_("batch"), ("batch",), {"batch"}, b"batch"],
    ]
)
ALLOW_NEGATIVE = st.sampled_from([True, False, None, 0, 1, "true", "false", [], 1.0, np.bool_(1)])
UNKNOWN_FIELDS = st.dictionaries(
    st.sampled_from(
        [
            *["strict", "expresion", "unit", "param", "whereMean", "", "expression "],
            *["Expression", "\ud800", "x" * 1_000, 0, None, (1,)],
        ]
    ),
    HOSTILE,
    max_size=2,
)
FIELDS = {
    "units": UNITS,
    "params": PARAMS,
    "where_mean": WHERE_MEAN,
    "allow_negative": ALLOW_NEGATIVE,
}


@st.composite
def specs(draw: st.DrawFn) -> Any:
    """A spec as a Python object: mostly a mapping of the fields, any of them missing, hostile
    or unknown; half the time built to be valid but for a few edits; now and then a bare
    formula, or no mapping at all."""
    roll = draw(st.integers(0, 39))
    if roll == 0:
        return draw(st.one_of(FORMULA_TEXT, HOSTILE))
    if roll < 20:  # most fields right: the checks past the first problem run too
        spec: dict[Any, Any] = {
            "expression": draw(st.sampled_from(VALID_FORMULAS) | _SEEDS_EDITED)
            if draw(st.integers(0, 2)) == 0
            else draw(st.sampled_from(VALID_FORMULAS)),
            "units": draw(st.sampled_from([fuzz.UNITS, fuzz.UNITS, fuzz.UNITS, 9, None])),
            "params": fuzz.PARAMS,
        }
        if draw(st.booleans()):
            spec["where_mean"] = draw(st.sampled_from(["selected", "batch"]))
            spec["allow_negative"] = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:
            name = draw(st.sampled_from([*FIELDS, "unknown"]))
            spec[name] = draw(FIELDS.get(name, HOSTILE))
        return spec
    spec = {"expression": draw(EXPRESSION)} if roll < 38 else {}
    for name, strategy in FIELDS.items():
        if draw(st.booleans()):
            spec[name] = draw(strategy)
    if draw(st.integers(0, 4)) == 0:
        spec.update(draw(UNKNOWN_FIELDS))
    return spec


# -- the calls, timed -------------------------------------------------------------------------


def _size(value: Any) -> int:
    """About how many bytes ``value`` takes as JSON (huge ints by their digits)."""
    with harness.any_int_digits():
        return len(harness.json_text(value))


def timed(what: str, size: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a worker thread (the hang guard): its result, or the ``LossDSLError`` it
    raised; within ``BUDGET_S`` of CPU time if ``size`` is within the promise. Any other
    exception fails the test."""
    return _returns(harness.timed, what, BUDGET_S, size, fn)


def check_file(data: bytes, suffix: str, key: str | None = None) -> Any:
    """``fuzz_spec.check`` of a config file, in a worker thread: ``"accepted"`` or
    ``"rejected"``."""
    return _returns(harness.check, data, suffix, key, BUDGET_S)


def _accepted_spec_round_trips(spec: LossSpec) -> None:
    config = json.loads(json.dumps(spec.config(), allow_nan=False))
    assert LossSpec.model_validate(config) == spec
    assert lossdsl.parse(str(spec.formula)) == spec.formula


def _options(units: Any, params: Any) -> list[str]:
    """``--units`` and ``--params`` for ``units`` and ``params`` (as JSON)."""
    options = []
    if units is not None:
        options += ["--units", harness.json_text(units)]
    if params is not None:
        options += ["--params", harness.json_text(params)]
    return options


def check_argument(expression: str, units: Any, params: Any, where_mean: Any, size: int) -> None:
    """``lossdsl check --json [options] -- FORMULA``: one JSON document, exit status 0, 1 or 2."""
    argv = ["check", "--json", *_options(units, params)]
    if isinstance(where_mean, str):
        argv += ["--where-mean", where_mean]
    status, out, err = timed(
        "check FORMULA", size, lambda: harness.run_cli([*argv, "--", expression])
    )
    harness.cli_document(status, out, err, "check FORMULA")


def _stdin_lines(text: str) -> int:
    """How many lines the command line reads from ``text`` on its standard input."""
    return len(io.TextIOWrapper(io.BytesIO(text.encode("utf-8", "surrogatepass"))).readlines())


def check_stdin(expression: str, units: Any, params: Any, size: int) -> None:
    """``lossdsl check --stdin --json`` of the formula's lines: one JSON document a line, or
    one for a usage error (exit status 2)."""
    argv = ["check", "--stdin", "--json", *_options(units, params)]
    data = expression.encode("utf-8", "surrogatepass")

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        old = sys.stdin, sys.stdout, sys.stderr
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        sys.stdout, sys.stderr = out, err
        try:
            status = lossdsl.cli.main(argv)
        finally:
            sys.stdin, sys.stdout, sys.stderr = old
        return status, out.getvalue(), err.getvalue()

    status, out, err = timed("check --stdin", size, run)
    assert status in (0, 1, 2), status
    assert "Internal error in lossdsl" not in out + err, (out + err)[:2000]
    documents = [json.loads(line) for line in out.splitlines()]
    if status == 2:
        assert len(documents) == 1 and documents[0]["valid"] is False, out[:2000]
        return
    assert len(documents) == _stdin_lines(expression), out[:2000]
    assert (status == 0) == all(d["valid"] is not False for d in documents), out[:2000]


def check_object(spec: Any, outcomes: Counter[str]) -> None:
    """Every entry point that takes a Python object, on ``spec``; ``outcomes`` counts what
    ``LossSpec`` did."""
    size = _size(spec)
    result = timed("LossSpec.model_validate", size, lambda: LossSpec.model_validate(spec))
    accepted = not isinstance(result, LossDSLError)
    outcomes["accepted" if accepted else "rejected"] += 1
    if accepted:
        _accepted_spec_round_trips(result)
    if isinstance(spec, dict) and all(isinstance(k, str) for k in spec):
        again = timed("LossSpec(**spec)", size, lambda: LossSpec(**spec))
        assert isinstance(again, LossDSLError) != accepted, again
    with harness.any_int_digits():
        text = harness.json_text(spec)
    timed("LossSpec.model_validate_json", len(text), lambda: LossSpec.model_validate_json(text))
    if not isinstance(spec, dict):
        return
    expression = spec.get("expression")
    units, params = spec.get("units"), spec.get("params")
    if isinstance(expression, str):
        allow_negative = spec.get("allow_negative", False)
        timed(
            "validate",
            size,
            lambda: lossdsl.validate(
                expression, units=units, params=params, allow_negative=allow_negative
            ),
        )
        if size <= MAX_SPEC_BYTES:
            check_argument(expression, units, params, spec.get("where_mean"), size)
            check_stdin(expression, units, params, size)


def check_files(spec: Any, nested: bool, style: int, outcomes: Counter[str]) -> None:
    """``load_spec`` and ``check --config`` of ``spec`` written as each format's file (each
    call checked by ``fuzz_spec.check``); ``outcomes`` counts what they did."""
    key = harness.KEY if nested else None
    data = {"training": {"epochs": 3, "loss": spec}} if nested else spec
    for suffix in harness.SUFFIXES:
        text = harness.render(data, suffix, random.Random(style))
        if text is not harness.SKIP:
            outcome = check_file(harness._encode(text), suffix, key)
            outcomes[f"{suffix} {outcome}"] += 1


# -- 1. specs as Python objects ----------------------------------------------------------------


def test_spec_objects_succeed_or_raise_loss_dsl_errors() -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=100, **SETTINGS)
    @given(specs())
    @example({"expression": "mse(u0)", "units": 10**400})
    @example({"expression": "mse(a)", "units": {"\ud800": 0, 5: 1, (1, 2): 2, None: 3}})
    @example({"expression": "a*mse(u0)", "units": 1, "params": {"a": Fraction(10**400, 3)}})
    @example({"expression": "mse(u0)", "units": 1, "params": {"alpha": [[[[[[1]]]]]]}})
    @example({"expression": "mse(u0)", "units": True, "where_mean": [], "allow_negative": "no"})
    def spec_objects(spec: Any) -> None:
        check_object(spec, outcomes)

    spec_objects()
    # Not vacuous: many specs are accepted, and many more refused.
    assert outcomes["accepted"] >= 15 and outcomes["rejected"] >= 40, outcomes


# -- 2. specs as config files ------------------------------------------------------------------


def test_spec_files_succeed_or_raise_loss_dsl_errors() -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=60, **SETTINGS)
    @given(specs(), st.booleans(), st.integers(0, 3))
    @example({"expression": "mse(u0)", "params": {"a": math.inf, "b": math.nan}}, False, 0)
    @example({"expression": "mse(\ud800)", "units": {"\udc80": 0}}, False, 2)
    def spec_files(spec: Any, nested: bool, style: int) -> None:
        check_files(spec, nested, style, outcomes)

    spec_files()
    for suffix in harness.SUFFIXES:
        assert outcomes[f"{suffix} accepted"] >= 10, outcomes
        assert outcomes[f"{suffix} rejected"] >= 10, outcomes


TOO_LONG_TO_PRINT = 10**5_000
"""An int that Python refuses to write as text (more than 4,300 digits)."""


@pytest.mark.parametrize(
    "spec",
    [
        {"expression": "mse(u0)", "units": TOO_LONG_TO_PRINT},
        {"expression": "mse(u0)", "units": -TOO_LONG_TO_PRINT},
        {"expression": "mse(a)", "units": {"a": [0, TOO_LONG_TO_PRINT]}},
        {"expression": "mse(a)", "units": {"a": {"pred": TOO_LONG_TO_PRINT, "true": 0}}},
        {"expression": "mse(u0)", "units": {TOO_LONG_TO_PRINT: 0}},
        {"expression": "b*mse(u0)", "units": 1, "params": {"b": TOO_LONG_TO_PRINT}},
        {"expression": "b*mse(u0)", "units": 1, "params": {"b": Fraction(TOO_LONG_TO_PRINT, 3)}},
        {"expression": "b*mse(u0)", "units": 1, "params": {"b": Fraction(1, TOO_LONG_TO_PRINT)}},
        {"expression": "mse(u0)", "units": 1, "where_mean": TOO_LONG_TO_PRINT},
        {"expression": "mse(u0)", "allow_negative": TOO_LONG_TO_PRINT},
        {"expression": TOO_LONG_TO_PRINT},
        {"expression": "mse(u0)", "units": 1, "unknown": [TOO_LONG_TO_PRINT]},
    ],
    ids=range(12),
)
def test_ints_too_long_to_print(spec: dict[str, Any]) -> None:
    check_object(spec, Counter())
    check_files(spec, nested=False, style=0, outcomes=Counter())


# -- 3. config texts no renderer writes --------------------------------------------------------

LESION = harness.LESION
HOSTILE_TEXTS: list[tuple[str, str, str]] = [
    # YAML: aliases, merges and anchors
    (".yaml", "u: &u {presence: 0, loc: 1}\nexpression: " + LESION + "\nunits: *u\n", "rejected"),
    (".yaml", f"expression: {LESION}\nunits: &u {{presence: 0, loc: 1}}\n", "accepted"),
    (".yaml", f"expression: {LESION}\nunits:\n  <<: {{presence: 0}}\n  loc: 1\n", "accepted"),
    (".yaml", f"expression: {LESION}\nunits:\n  <<: [{{presence: 0}}, {{loc: 1}}]\n", "accepted"),
    (".yaml", f"expression: {LESION}\nunits:\n  <<: {{presence: 0, loc: 3}}\n  loc: 1\n",
     "accepted"),
    (".yaml", "expression: mse(u0)\nunits: &r [*r]\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: &r {a: *r}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\nparams: &p {a: 1, <<: *p}\n", "accepted"),
    (".yaml", "&e expression: mse(u0)\nunits: 1\n", "accepted"),
    (".yaml", "expression: mse(u0)\n*e : 1\n", "rejected"),
    (".yaml", "expression: &f mse(u0)\nunits: 1\nparams: {a: *f}\n", "rejected"),
    # YAML: duplicate and non-string keys
    (".yaml", "expression: mse(u0)\nexpression: bce(u0)\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: {a: 0, a: 1}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: {1: 0, 1.0: 1}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\nparams: {true: 1, yes: 2}\n", "rejected"),
    (".yaml", "expression: mse(a)\nunits: {5: 0}\n", "rejected"),
    (".yaml", "expression: mse(a)\nunits: {~: 0}\n", "rejected"),
    (".yaml", "expression: mse(a)\nunits: {2001-01-01: 0}\n", "rejected"),
    (".yaml", "expression: mse(a)\nunits: {? [1, 2] : 0}\n", "rejected"),
    (".yaml", "expression: mse(a)\nunits: {? {a: 1} : 0}\n", "rejected"),
    (".yaml", "? expression\n: mse(u0)\nunits: 1\n", "accepted"),
    (".yaml", "5: mse(u0)\nexpression: mse(u0)\nunits: 1\n", "rejected"),
    # YAML: tabs, line ends, encodings, documents
    (".yaml", "expression:\tmse(u0)\nunits:\t1\n", "accepted"),
    (".yaml", "expression: mse(u0)\n\tunits: 1\n", "rejected"),
    (".yaml", "units:\n\ta: 0\nexpression: mse(a)\n", "rejected"),
    (".yaml", "expression: mse(u0)\r\nunits: 1\r\n", "accepted"),
    (".yaml", "expression: mse(u0)\runits: 1\r", "accepted"),
    (".yaml", "expression: |\r\n  mse(u0)\r\n  + mae(u0)\r\nunits: 1\r\n", "accepted"),
    (".yaml", "expression: |\n    mse(u0)\n  + mae(u0)\nunits: 1\n", "rejected"),
    (".yaml", "expression: >-\n  mse(u0)\n  + mae(u0)\nunits: 1\n", "accepted"),
    (".yaml", "expression: mse(u0)\u2028units: 1\n", "accepted"),  # a line break in YAML
    (".yaml", "\ufeffexpression: mse(u0)\nunits: 1\n", "accepted"),
    (".yaml", "expression: mse(u0)\x00\nunits: 1\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\n---\nexpression: bce(u0)\n", "rejected"),
    (".yaml", "--- !!str\nmse(u0)\n", "accepted"),
    (".yaml", "%YAML 1.1\n%TAG ! tag:yaml.org,2002:\n---\nexpression: !str mse(u0)\n", "accepted"),
    (".yaml", "", "rejected"),
    (".yaml", "~\n", "rejected"),
    (".yaml", "[mse(u0)]\n", "rejected"),
    (".yaml", "'mse(u0)'\n", "accepted"),
    # YAML: tags and numbers
    (".yaml", "expression: !!python/object/apply:os.getcwd []\n", "rejected"),
    (".yaml", "expression: !!binary bXNlKHUwKQ==\nunits: 1\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: !!set {a, b}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: !!omap [a: 0]\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: !!float 1\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: !custom 1\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 0x10\n", "accepted"),
    (".yaml", "expression: mse(u0)\nunits: 017\n", "accepted"),  # YAML 1.1: octal
    (".yaml", "expression: mse(u0)\nunits: 0o17\n", "rejected"),  # YAML 1.2's octal: a string
    (".yaml", "expression: mse(u0)\nunits: 1_0\n", "accepted"),
    (".yaml", "expression: mse(u0)\nunits: 1:20\n", "accepted"),
    (".yaml", "expression: mse(u0)\nunits: 1" + "0" * 5_000 + "\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\nparams: {a: .inf, b: -.inf, c: .NaN}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\nparams: {a: 1e400}\n", "rejected"),
    (".yaml", "expression: a*mse(u0)\nunits: 1\nparams: {a: 2001-01-01}\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: yes\n", "rejected"),
    (".yaml", "expression: mse(u0)\nunits: 1\nallow_negative: yes\n", "accepted"),
    (".yaml", "expression: mse(u0)\nunits: 1\nallow_negative: 'yes'\n", "rejected"),
    (".yaml", "expression: " + "[" * 5_000 + "]" * 5_000 + "\n", "rejected"),
    # JSON
    (".json", '{"expression": "mse(u0)", "expression": "bce(u0)"}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": {"a": 0, "a": 1}}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": 1' + "0" * 5_000 + "}", "rejected"),
    (".json", '{"expression": "mse(u0)", "units": 1' + "0" * 4_000 + "}", "rejected"),
    (".json", '{"expression": "mse(u0)", "units": 1e400}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": 1.0}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": -0}', "rejected"),
    (".json", '{"expression": "a*mse(u0)", "units": 1, "params": {"a": 1e400}}', "rejected"),
    (".json", '{"expression": "a*mse(u0)", "units": 1, "params": {"a": 1e-400}}', "accepted"),
    (".json", '{"expression": "a*mse(u0)", "units": 1, "params": {"a": NaN}}', "rejected"),
    (".json", '{"expression": "a*mse(u0)", "units": 1, "params": {"a": -Infinity}}', "rejected"),
    (".json", '{"expression": "a*mse(u0)", "units": 1, "params": {"a": 1' + "0" * 400 + "}}",
     "rejected"),
    (".json", '{"expression": "mse(\\ud800)", "units": 1}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": {"\\udc80": 0}}', "rejected"),
    (".json", '{"expression": "mse(u0)\\u0000", "units": 1}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": 1,}', "rejected"),
    (".json", '{"expression": "mse(u0)", /* c */ "units": 1}', "rejected"),
    (".json", '{"expression": "mse(u0)", "units": ' + "[" * 50_000 + "]" * 50_000 + "}",
     "rejected"),
    (".json", '{"expression": "mse(u0)", "units": ' + '{"a": ' * 5_000 + "0" + "}" * 5_001,
     "rejected"),
    (".json", '"mse(u0)"', "accepted"),
    (".json", "[1, 2]", "rejected"),
    (".json", "null", "rejected"),
    (".json", "", "rejected"),
    (".json", "\ufeff" + '{"expression": "mse(u0)"}', "accepted"),
    # TOML
    (".toml", 'expression = "mse(u0)"\nexpression = "bce(u0)"\n', "rejected"),
    (".toml", 'expression = "mse(a)"\n[units]\na = 0\n[units]\nb = 1\n', "rejected"),
    (".toml", 'expression = "mse(a)"\nunits = 1\n[units]\na = 0\n', "rejected"),
    (".toml", 'expression = "mse(a)"\nunits.a = 0\n', "accepted"),
    (".toml", 'expression = "mse(a)"\nunits.a.pred = [0, 2]\nunits.a.true = 0\n', "accepted"),
    (".toml", 'expression = "mse(a)"\n[[units]]\na = 0\n', "rejected"),
    (".toml", 'expression = "mse(u0)"\nunits = 1' + "0" * 5_000 + "\n", "rejected"),
    (".toml", 'expression = "mse(u0)"\nunits = 9223372036854775808\n', "rejected"),
    (".toml", 'expression = "mse(u0)"\nunits = 1979-05-27T07:32:00Z\n', "rejected"),
    (".toml", 'expression = "a*mse(u0)"\nunits = 1\nparams = {a = 07:32:00}\n', "rejected"),
    (".toml", 'expression = "a*mse(u0)"\nunits = 1\nparams = {a = inf}\n', "rejected"),
    (".toml", 'expression = "a*mse(u0)"\nunits = 1\nparams = {a = nan}\n', "rejected"),
    (".toml", 'expression = "mse(u0)"\nunits = 0x10\n', "accepted"),
    (".toml", 'expression = "mse(\\ud800)"\n', "rejected"),
    (".toml", 'expression = """\nmse(u0)\n+ mae(u0)"""\nunits = 1\n', "accepted"),
    (".toml", "expression = '''mse(u0)\r\n+ mae(u0)'''\r\nunits = 1\r\n", "accepted"),
    (".toml", 'expression = "mse(u0)"\runits = 1\n', "rejected"),
    (".toml", 'expression\t=\t"mse(u0)"\nunits = 1\n', "accepted"),
    (".toml", 'expression = "mse(u0)"\nunits = ' + "[" * 5_000 + "]" * 5_000 + "\n", "rejected"),
    (".toml", 'expression = "mse(u0)"\nwhere_mean = ["batch"]\n', "rejected"),
    (".toml", "", "rejected"),
]  # fmt: skip
"""Config texts, and whether ``load_spec`` accepts them."""


@pytest.mark.parametrize(
    ("suffix", "text", "expected"), HOSTILE_TEXTS, ids=[f"{i}{s}" for i, (s, _, _) in
                                                       enumerate(HOSTILE_TEXTS)]
)  # fmt: skip
def test_hostile_config_texts(suffix: str, text: str, expected: str) -> None:
    got = check_file(harness._encode(text), suffix)
    assert got == expected


def _alias_bomb(levels: int, width: int, where: str) -> str:
    text = "a0: &a0 [" + ", ".join(["x"] * width) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return f"loss:\n  expression: mse(u0)\n  units: 1\n  {where}: *a{levels - 1}\n" + text


@pytest.mark.parametrize("where", ["units", "params", "where_mean", "unknown"])
def test_yaml_alias_bombs_are_refused_in_bounded_time(where: str) -> None:
    # 9 levels of 9 aliases: a 1 KB file that stands for 387 million values.
    text = _alias_bomb(9, 9, where)
    assert check_file(text.encode(), ".yaml", "loss") == "rejected"


MEMORY_MB = 64
"""The most memory (traced by ``tracemalloc``) that reading one hostile file may take."""


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", _alias_bomb(9, 9, "units")),
        (".yaml", _alias_bomb(5, 60, "params")),
        (".json", '{"expression": "mse(u0)", "units": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        (".json", harness.json_text({"expression": "mse(k0)", "units": _many("k{}", 9_000, 0)})),
        (".toml", harness.toml_text({"expression": "mse(u0)", "params": _many("p{}", 9_000, 1)})),
    ],
    ids=["alias bomb", "wide alias bomb", "deep JSON", "many units", "many params"],
)
def test_reading_a_hostile_file_takes_bounded_memory(
    suffix: str, text: str, tmp_path: Path
) -> None:
    path = tmp_path / f"spec{suffix}"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        try:
            lossdsl.load_spec(path)
        except LossDSLError as e:
            str(e)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_MB * 2**20, f"{peak / 2**20:.0f} MB"


_TEXT_EDITS = st.one_of(
    st.tuples(st.just("snippet"), st.integers(0, 10_000), st.integers(0, 100)),
    st.tuples(st.just("line twice"), st.integers(0, 1_000), st.integers(0, 1_000)),
    st.tuples(st.just("line ends"), st.just(0), st.sampled_from(["\r\n", "\r", "\t\n", "\n\n"])),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("bytes"), st.integers(0, 10_000), st.sampled_from(["\udcff", "\x00"])),
    EDITS,
)


def _edit_config(suffix: str, text: str, kind: str, a: int, b: Any) -> str:
    if kind == "snippet":
        snippets = harness.SNIPPETS[suffix]
        i = a % (len(text) + 1)
        return text[:i] + snippets[b % len(snippets)] + text[i:]
    if kind == "line twice":
        lines = text.splitlines(keepends=True)
        if lines:
            lines.insert(b % (len(lines) + 1), lines[a % len(lines)])
        return "".join(lines)
    if kind == "line ends":
        return text.replace("\n", b)
    if kind == "cut":
        return text[: a % (len(text) + 1)]
    if kind == "bytes":  # "\udcff" is written as a lone surrogate's bytes: not UTF-8
        i = a % (len(text) + 1)
        return text[:i] + b + text[i:]
    return _edit(text, kind, a, b)


@st.composite
def config_texts(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """A config text, as a renderer writes a spec or from the hand-made ones, with edits."""
    if draw(st.booleans()):
        suffix, text, key = draw(st.sampled_from(harness.SEEDS))
    else:
        suffix, text, _ = draw(st.sampled_from(HOSTILE_TEXTS))
        key = None
    for kind, a, b in draw(st.lists(_TEXT_EDITS, min_size=1, max_size=4)):
        text = _edit_config(suffix, text, kind, a, b)
    return suffix, text, key


@settings(max_examples=120, **SETTINGS)
@given(config_texts())
def test_edited_config_texts_succeed_or_raise_loss_dsl_errors(
    config: tuple[str, str, str | None],
) -> None:
    suffix, text, key = config
    check_file(harness._encode(text), suffix, key)


# -- 4. at the size limit ---------------------------------------------------------------------

LARGE: dict[str, Callable[[], Any]] = {
    "many units": lambda: {"expression": "mse(k0)", "units": _many("k{}", 10_000, 0)},
    "many layouts": lambda: {
        "expression": "cce(k0)",
        "units": _many("k{}", 2_500, {"pred": [1, 5], "true": 0}),
    },
    "many params": lambda: {
        "expression": "k0 * mse(u0)",
        "units": 1,
        "params": _many("k{}", 10_000, 0.5),
    },
    "many bad params": lambda: {
        "expression": "mse(u0)",
        "units": 1,
        "params": _many("alpha{}", 10_000, "x"),
    },
    "unit names near the functions": lambda: {
        "expression": "mse(u0)",
        "units": _many("ms{}", 10_000, 0),
    },
    "long unit names": lambda: {
        "expression": "mse(" + "a" * 9_000 + ")",
        "units": {"a" * 9_000: 0, "b" * 80_000: 1},
    },
    "long formula": lambda: {
        "expression": " + ".join(f"{i % 9 + 1} * mse(u{i % 9})" for i in range(900)),
        "units": 9,
    },
    "formula at the raw limit": lambda: {
        "expression": fuzz.SEEDS[0] + " " * (lossdsl.parser.MAX_RAW_LENGTH - 200),
        "units": fuzz.UNITS,
    },
    "many unknown fields": lambda: {"expression": "mse(u0)", **_many("units{}", 7_000, 0)},
    "huge numbers": lambda: {
        "expression": "mse(u0)",
        "units": 10**4_000,
        "params": {f"a{i}": 10**4_000 for i in range(20)},
    },
}
"""Specs of about 100 KB, each a way to make the checks work hard."""


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_specs_stay_within_the_budget(name: str) -> None:
    # Each through LossSpec and validate, and as one format's file (a different one for
    # each spec): the entry points share their checks, and each call here is slow.
    spec = LARGE[name]()
    size = _size(spec)
    assert size <= MAX_SPEC_BYTES, size
    timed("LossSpec.model_validate", size, lambda: LossSpec.model_validate(spec))
    timed(
        "validate",
        size,
        lambda: lossdsl.validate(
            spec["expression"], units=spec.get("units"), params=spec.get("params")
        ),
    )
    suffix = harness.SUFFIXES[sorted(LARGE).index(name) % 3]
    text = harness.render(spec, suffix)
    check_file(harness._encode(text), suffix)


def _suggestions(run: Callable[[], object]) -> int:
    """How many "did you mean" searches ``run()`` makes."""
    calls = []
    close_matches = difflib.get_close_matches

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(args[0])
        return close_matches(*args, **kwargs)

    difflib.get_close_matches = counted
    try:
        with contextlib.suppress(LossDSLError):
            run()
    finally:
        difflib.get_close_matches = close_matches
    return len(calls)


def _many_unknown_fields() -> dict[str, Any]:
    return {"expression": "mse(u0)", **_many("units{}", 7_000, 0)}


@pytest.mark.parametrize("entry", ["LossSpec", "check --config"])
def test_one_spec_makes_a_bounded_number_of_suggestions(entry: str, tmp_path: Path) -> None:
    spec = _many_unknown_fields()
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    run = {
        "LossSpec": lambda: LossSpec.model_validate(spec),
        "check --config": lambda: harness.run_cli(["check", "--config", str(path), "--json"]),
    }[entry]
    assert _suggestions(run) <= lossdsl.suggest.MAX_SUGGESTIONS


# -- 5. lints, whoever calls -------------------------------------------------------------------

CALLERS = {
    "python -c": {"__name__": "__main__", "__loader__": importlib.machinery.BuiltinImporter},
    "exec": {},
    "a module without a loader": {"__name__": "generated", "__loader__": None},
}
"""The globals of code that calls ``validate``: a ``python -c`` script, or the interactive
interpreter, runs as a ``__main__`` whose loader is ``BuiltinImporter``."""


@pytest.mark.parametrize("caller", list(CALLERS))
def test_a_lint_warns_whoever_calls_validate(caller: str) -> None:
    # validate warns at its caller's line: a caller without a source file must not break it.
    code = "lossdsl.validate('mse(u0)', units=1, params={'unused': 1.0})"
    with pytest.warns(lossdsl.LossDSLWarning, match="LD104"):
        exec(code, {**CALLERS[caller], "lossdsl": lossdsl})


# -- 6. the fuzz harness -----------------------------------------------------------------------


def test_the_spec_fuzz_harness_self_test_runs() -> None:
    # The atheris target on the harness's own random inputs (a different seed each run),
    # each call within the budget.
    seed = random.randrange(2**32)
    status = _returns(harness.self_test, 250, seed, None, BUDGET_S)
    assert status == 0, f"seed {seed}"


def test_the_spec_fuzz_target_rejects_what_it_should(monkeypatch: pytest.MonkeyPatch) -> None:
    # The checks the harness makes can fail: a raw exception, a slow call, a command line
    # that exits otherwise or prints other than one JSON document.
    good = b'{"expression": "mse(u0)", "units": 1}'
    assert harness.check(good, ".json") == "accepted"
    assert harness.check(b'{"expression": "mse(u0) +"}', ".json") == "rejected"

    def slow() -> None:
        start = time.process_time()
        while time.process_time() - start < 0.05:
            pass

    with pytest.raises(harness.Bug, match="CPU time"):
        harness.timed("slow", 0.01, 10, slow)
    harness.timed("slow but large", 0.01, MAX_SPEC_BYTES + 1, slow)
    with pytest.raises(harness.Bug, match="exited"):
        harness.cli_document(3, '{"valid": false}\n', "", "cli")
    with pytest.raises(harness.Bug, match="one line"):
        harness.cli_document(1, "", "", "cli")
    with pytest.raises(harness.Bug, match="invalid JSON"):
        harness.cli_document(1, "{\n", "", "cli")
    with pytest.raises(harness.Bug, match="exception of its own"):
        harness.cli_document(1, "", "Internal error in lossdsl (KeyError: 1)", "cli")
    with pytest.raises(harness.Bug, match="printed valid"):
        harness.cli_document(1, '{"valid": true}\n', "", "cli")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(harness, "load_spec", broken)
    with pytest.raises(KeyError):
        harness.check(good, ".json")


def test_the_renderers_write_what_the_formats_read_back() -> None:
    spec = {
        "expression": 'mse(u0) # "\\ \x7f \u00e9 \U0001f600',
        "units": {"a": [0, 2], "b": {"pred": [1, 5], "true": 0}, "c": None},
        "params": {"x": 0.5, "y": 10**400, "z": -math.inf, "n": Fraction(1, 4)},
        "allow_negative": True,
    }
    want = {**spec, "units": {"a": [0, 2], "b": {"pred": [1, 5], "true": 0}}}
    want["params"] = {"x": 0.5, "y": 10**400, "z": -math.inf, "n": 0.25}
    with harness.any_int_digits():
        assert json.loads(harness.json_text(spec)) == {**want, "units": spec["units"]}
        import tomllib

        import yaml

        for tables in (False, True):
            assert tomllib.loads(harness.toml_text(spec, tables=tables)) == want
        assert yaml.safe_load(harness.yaml_text(spec)) == {**want, "units": spec["units"]}
    assert harness.toml_text(["a"]) is harness.SKIP
    assert harness.toml_text({"a": [None]}) is harness.SKIP
    assert re.fullmatch(r'"\\uD800"', harness._toml_string("\ud800"))
