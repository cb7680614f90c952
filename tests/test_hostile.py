"""Hostile and careless specs, from ``tests/cases/hostile/``: one file per class of attack.

Each case is a spec (a formula, ``units`` and ``params``; or the text of a config file) and
what must happen to it: accepted, or refused with a given ``LossDSLError`` class, a message and
a caret. Every case goes through every entry point that can carry it: ``validate``,
``LossSpec``, ``load_spec`` of the spec written as JSON, YAML and TOML, and the command line
(``check --config FILE --json`` and ``check --stdin``). Each call must finish within
``BUDGET_SECONDS`` of CPU time on its thread (``time.thread_time``: whatever else the machine,
or TensorFlow's threads in the same process, are doing), and the cases that state
``megabytes`` within that much memory; whatever is accepted must also
compare, hash, print, pickle and copy.

Large specs are written compactly: a string field may be a generator,
``{"join": SEP, "each": TEMPLATE, "count": N, "first": PREFIX, "last": SUFFIX}`` (``{i}`` in the
template is the index), ``{"nest": TEMPLATE, "count": N, "core": TEXT}`` (the template around
itself N times), ``{"repeat": TEXT, "count": N}`` or ``{"integer_digits": N}``; a mapping field
may be ``{"keys": TEMPLATE, "count": N, "value": V}``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import pickle
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

import lossdsl
from lossdsl import LossDSLError, LossSpec, cli, load_spec

BUDGET_SECONDS = 0.5
"""The most CPU time any spec of at most 100 KB may take, from any entry point."""
MAX_SPEC_BYTES = 100_000

CASE_DIR = Path(__file__).parent / "cases" / "hostile"
FILES = sorted(CASE_DIR.glob("*.json"))
CASES = [
    (path.stem, case)
    for path in FILES
    for case in json.loads(path.read_text(encoding="utf-8"))["cases"]
]
ENTRY_POINTS = ("api", "spec", "json", "yaml", "toml", "cli-config", "cli-stdin")


def expand(value: Any) -> Any:
    """A field of a case with its generators run."""
    if not isinstance(value, dict):
        return value
    if "join" in value:
        body = value["join"].join(value["each"].format(i=i) for i in range(value["count"]))
        return value.get("first", "") + body + value.get("last", "")
    if "nest" in value:
        text = value["core"]
        for _ in range(value["count"]):
            text = value["nest"].replace("{}", text)
        return value.get("first", "") + text
    if "repeat" in value:
        return value["repeat"] * value["count"]
    if "integer_digits" in value:
        return 10 ** (value["integer_digits"] - 1)
    if "keys" in value:
        return {value["keys"].format(i=i): expand(value["value"]) for i in range(value["count"])}
    return {k: expand(v) for k, v in value.items()}


def spec_of(case: dict[str, Any]) -> dict[str, Any]:
    spec = {"expression": expand(case["expression"])}
    for field in ("units", "params"):
        if field in case:
            spec[field] = expand(case[field])
    return spec


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    return str(value)


@contextlib.contextmanager
def any_digits() -> Any:
    """Let ``str`` write integers of any length (a hostile spec may hold 5,000 digits)."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


def file_texts(case: dict[str, Any]) -> dict[str, bytes]:
    """The case as the config files it can be written as, by suffix."""
    with any_digits():
        return _file_texts(case)


def _file_texts(case: dict[str, Any]) -> dict[str, bytes]:
    if "bytes" in case:
        return {".yaml": bytes.fromhex(case["bytes"]), ".json": bytes.fromhex(case["bytes"])}
    if "yaml" in case:
        return {".yaml": case["yaml"].encode()}
    if "json" in case:
        return {".json": case["json"].encode()}
    spec = spec_of(case)
    out = {".json": json.dumps(spec).encode()}
    with contextlib.suppress(yaml.YAMLError):
        out[".yaml"] = yaml.safe_dump(spec, allow_unicode=True).encode()
    out[".toml"] = "\n".join(f"{k} = {toml_value(v)}" for k, v in spec.items()).encode()
    return out


def entry_points(case: dict[str, Any]) -> list[str]:
    if any(k in case for k in ("bytes", "yaml", "json")):
        return ["json", "yaml", "cli-config"]
    names = case.get("formats", ENTRY_POINTS)
    if "cli-stdin" in names and any(c in expand(case["expression"]) for c in "\r\n"):
        names = [n for n in names if n != "cli-stdin"]  # one formula a line
    return list(names)


def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            status = cli.main(argv)
    finally:
        sys.stdin = old
    return status, out.getvalue()


def prepare(entry: str, case: dict[str, Any], tmp_path: Path) -> Any:
    """A function that runs ``case`` through ``entry`` (its files written beforehand, so
    that only lossdsl's work is timed): it returns the result, or for the command line the
    exit status and the output."""
    if entry in ("json", "yaml", "toml", "cli-config"):
        texts = file_texts(case)
        suffix = {"cli-config": next(iter(texts))}.get(entry, f".{entry}")
        if suffix not in texts:
            pytest.skip(f"the case cannot be written as {suffix}")
        path = tmp_path / f"spec{suffix}"
        path.write_bytes(texts[suffix])
        if entry == "cli-config":
            return lambda: run_cli(["check", "--config", str(path), "--json"])
        return lambda: load_spec(path)
    spec = spec_of(case)
    if entry == "api":
        return lambda: lossdsl.validate(
            spec["expression"], units=spec.get("units"), params=spec.get("params")
        )
    if entry == "spec":
        return lambda: LossSpec.model_validate(spec)
    argv = ["check", "--stdin", "--json"]
    with any_digits():
        if "units" in spec:
            argv += ["--units", json.dumps(spec["units"])]
        if "params" in spec:
            argv += ["--params", json.dumps(spec["params"])]
    return lambda: run_cli(argv, spec["expression"] + "\n")


def timed(entry: str, case: dict[str, Any], tmp_path: Path) -> tuple[Any, float]:
    """The result of a call, and its CPU time. The objects alive before the call (in a test
    run, every Keras model and graph the earlier tests made, and their garbage) are frozen
    first, so that Python's full collections do not scan them: the time is lossdsl's work,
    its own garbage included."""
    run = prepare(entry, case, tmp_path)
    gc.freeze()  # not collected first: in a long test run a full collection takes a second
    start = time.thread_time()
    try:
        result = run()
    except LossDSLError as e:
        result = e
    finally:
        seconds = time.thread_time() - start
        gc.unfreeze()
    return result, seconds


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    # The first parse of a process builds the Lark parser; that is not the spec's cost.
    lossdsl.parse("mse(u0)")
    lossdsl.LossSpec(expression="mse(u0)", units=1)
    lossdsl.parser.clear_cache()
    lossdsl.validation.clear_cache()


def test_every_case_file_says_what_it_holds() -> None:
    assert FILES
    for path in FILES:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["about"] and data["cases"], path
        ids = [c["id"] for c in data["cases"]]
        assert len(ids) == len(set(ids)), path


@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{k}:{c['id']}" for k, c in CASES])
def test_hostile_case(kind: str, case: dict[str, Any], tmp_path: Path) -> None:
    if "expression" in case:
        with any_digits():
            assert len(json.dumps(spec_of(case))) <= MAX_SPEC_BYTES, "the budget is for 100 KB"
    for entry in entry_points(case):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result, seconds = timed(entry, case, tmp_path)
            except pytest.skip.Exception:
                continue
        assert seconds < BUDGET_SECONDS, f"{entry}: {seconds:.2f} s of CPU time"
        if entry.startswith("cli"):
            check_cli(entry, case, result)
        else:
            check_result(entry, case, result)
    if "megabytes" in case:
        check_memory(case, tmp_path)


def check_result(entry: str, case: dict[str, Any], result: Any) -> None:
    expected = case["error"]
    if expected is None:
        assert not isinstance(result, LossDSLError), f"{entry}: {result}"
        formula = result if isinstance(result, lossdsl.Formula) else result.formula
        check_protocols(formula, result)
        return
    assert isinstance(result, LossDSLError), f"{entry} accepted it"
    assert type(result).__name__ == expected, f"{entry}: {type(result).__name__}: {result}"
    text = str(result)
    if entry in ("api", "spec"):  # a config file's loader may refuse it first, in its words
        assert case.get("message", "") in text, f"{entry}: {text[:500]}"
    if case.get("caret", True) and result.span is not None:
        assert "^" in text
    if "line" in case:
        assert result.line == case["line"], text


def check_cli(entry: str, case: dict[str, Any], result: tuple[int, str]) -> None:
    status, output = result
    lines = output.splitlines()
    assert len(lines) == 1, f"{entry}: one JSON document, got {output[:300]!r}"
    document = json.loads(lines[0])
    if case["error"] is None:
        assert status == 0 and document["valid"] is True, document
        return
    # Arguments the command line cannot use (a 400-digit --params) are usage errors.
    assert status in (1, 2) and document["valid"] is False, document
    assert document["errors"] and all(e["message"] for e in document["errors"])


def check_protocols(formula: lossdsl.Formula, result: Any) -> None:
    """Whatever validates also compares, hashes, prints, pickles and copies, with room to
    spare on the recursion limit."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(_stack()) + 250)
    try:
        again = lossdsl.parse(str(formula))
        assert again == formula and hash(again) == hash(formula)
        assert repr(formula) and str(formula)
        assert pickle.loads(pickle.dumps(formula)) == formula
        assert copy.deepcopy(formula) == formula and copy.copy(formula) == formula
        if isinstance(result, LossSpec):
            assert copy.deepcopy(result) == result
    finally:
        sys.setrecursionlimit(limit)


def _stack() -> list[Any]:
    frame, out = sys._getframe(), []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return out


def check_memory(case: dict[str, Any], tmp_path: Path) -> None:
    for entry in entry_points(case):
        try:
            run = prepare(entry, case, tmp_path)
        except pytest.skip.Exception:
            continue
        tracemalloc.start()
        try:
            with warnings.catch_warnings(), contextlib.suppress(LossDSLError):
                warnings.simplefilter("ignore")
                run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < case["megabytes"] * 2**20, f"{entry}: {peak / 2**20:.1f} MB"


def test_shared_lists_are_refused_before_they_are_walked() -> None:
    # 9**8 items described by nine lists, each holding the one before nine times (what a
    # YAML alias bomb loads as): refused at once, in a few kilobytes.
    a: Any = ["x"] * 9
    for _ in range(7):
        a = [a] * 9
    tracemalloc.start()
    start = time.thread_time()
    try:
        with pytest.raises(lossdsl.LossValidationError, match="nested more than"):
            lossdsl.validate("mse(a)", units={"a": a})
        with pytest.raises(lossdsl.LossValidationError, match="nested more than"):
            LossSpec(expression="w*mse(u0)", units=1, params={"w": a})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.thread_time() - start < BUDGET_SECONDS
    assert peak < 2**20


def _longest_formula(seed: int) -> str:
    """A distinct formula of about ``MAX_LENGTH`` characters."""
    terms, length, k = [], 0, 0
    while True:
        term = (
            f"{seed + 2}*mse(u{k % 4}) + {k + 1}*bce(u[0:{k % 3 + 2}]) "
            f"where pred(u5) > 0.{k % 9 + 1}"
        )
        if length + len(term) + 3 > lossdsl.parser.MAX_LENGTH:
            return " + ".join(terms)
        terms.append(term)
        length += len(term) + 3
        k += 1


def test_caches_are_bounded_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a cached formula of the greatest length holds is small enough that both caches
    full stay far below 300 MB, and distinct formulas of that length fill the caches to
    their size bounds, never past them (shown with bounds of a fifth of the real ones, the
    same code, to keep the test short)."""
    from lossdsl import parser, validation
    from lossdsl.cache import SizedCache

    parser.clear_cache()
    validation.clear_cache()
    units = 6
    text = _longest_formula(0)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lossdsl.validate(text, units=units)
    gc.collect()
    retained, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_character = (retained - before) / len(text)
    full = per_character * (parser.CACHE_CHARACTERS + validation.CACHE_CHARACTERS)
    assert full < 300 * 2**20, f"{per_character:.0f} bytes a character"

    bound = parser.CACHE_CHARACTERS // 5
    monkeypatch.setattr(parser, "_cache", SizedCache(max_entries=4096, max_size=bound))
    monkeypatch.setattr(validation, "_cache", SizedCache(max_entries=4096, max_size=bound))
    count = 2 * bound // len(text) + 2  # twice what the caches hold: the oldest are dropped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(1, count + 1):
            lossdsl.validate(_longest_formula(seed), units=units)
            assert parser._cache.size <= bound and validation._cache.size <= bound
    assert 0 < len(parser._cache) <= bound // len(text) < count


def test_the_warning_registry_does_not_grow_with_distinct_lints() -> None:
    from lossdsl import validation

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for k in range(6000):
            lossdsl.validate("mse(u0)", units=1, params={f"unused_{k // 2}": 1.0})
    assert len(seen) == 3000  # each distinct lint once at this line, as Python's own
    assert len(globals().get("__warningregistry__", {})) < 10
    assert sum(len(r) for r in validation._registries.values()) <= 1002


def test_an_error_lists_at_most_50_problems_and_counts_them_all() -> None:
    units = {f"v{i}": -1 for i in range(300)}
    with pytest.raises(lossdsl.LossValidationError) as info:
        LossSpec(expression="mse(u0)", units=units, params={"a": "x"}, where_mean="neither")
    err = info.value
    assert err.total == 302 and len(err.errors) == lossdsl.errors.MAX_REPORTED
    assert str(err).startswith("302 problems in the loss specification:")
    assert err.errors[-1].message == "253 more problems are not shown."
    again = pickle.loads(pickle.dumps(err))
    assert again.total == 302 and str(again) == str(err)


def test_lints_past_the_first_49_are_counted_in_one() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lossdsl.validate("mse(u0)", units=1, params={f"unused_{i}": 1.0 for i in range(80)})
    messages = [str(w.message).splitlines()[0] for w in seen]
    assert len(messages) == lossdsl.errors.MAX_REPORTED
    assert messages[-1] == "LD100: 31 more lints are not shown."
