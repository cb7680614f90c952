"""Fuzz harness for whole loss specs: config files in YAML, TOML and JSON.

Each input is the content of a config file (bytes, of any kind) and its format. It goes to
``load_spec``, to ``lossdsl check --config FILE --json`` (run in-process) and, when the
format's own parser reads it as a mapping, to ``LossSpec.model_validate`` and ``validate`` of
that data. Each must succeed or raise a ``LossDSLError``; the command line must exit with 0, 1
or 2 and print one JSON document, which says what ``load_spec`` said. Any other exception, an
internal error the command line caught, or a call that takes more than ``BUDGET_S`` seconds
of CPU time on a file of at most ``MAX_SPEC_BYTES`` bytes is a crash.

With atheris (``pip install atheris``; not a dependency of lossdsl), run it for a given time;
libFuzzer flags and corpus folders pass through::

    python fuzz/fuzz_spec.py -max_total_time=600
    python fuzz/fuzz_spec.py -max_total_time=3600 -jobs=4 my_corpus/
    python fuzz/fuzz_spec.py -max_total_time=600 --budget=2   # instrumented code is slower

The first byte of an input picks the format (and whether the spec is read at a key), the
rest is the file. libFuzzer reads the seed files below, gets a dictionary of the formats' and
the language's tokens (unless given ``-dict=``) and stops an input after ``-timeout=10``
seconds. A crash is written to ``crash-<sha1>``; replay it with
``python fuzz/fuzz_spec.py crash-<sha1>``.

Without atheris, the same target runs on random mutations of the seed files::

    python fuzz/fuzz_spec.py --self-test 2000 [--seed 1] [--max-total-time 60]

``tests/test_spec_properties.py`` runs the self-test on a few hundred inputs, so the harness
cannot rot, and uses the renderers here (``json_text``, ``yaml_text``, ``toml_text``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import json
import math
import numbers
import random
import sys
import tempfile
import time
import tomllib
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

# A source checkout without an install: import lossdsl (and fuzz_parse) from the repository.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
if (_ROOT / "lossdsl" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import fuzz_parse  # noqa: E402

import lossdsl  # noqa: E402
from lossdsl import LossDSLError, LossSpec, cli, load_spec  # noqa: E402

BUDGET_S = 0.5
"""The most CPU time (``time.process_time``) one call may take on a spec of at most
``MAX_SPEC_BYTES``: lossdsl's promise for any spec, from any entry point."""
MAX_SPEC_BYTES = 100_000
SUFFIXES = (".json", ".yaml", ".toml")
KEY = "training.loss"
"""The key a nested spec is read at (``load_spec(path, key=KEY)``, ``--key``)."""


class Bug(AssertionError):
    """lossdsl broke a promise on some spec."""


# -- rendering a spec as each format's text -----------------------------------------------

SKIP = object()
"""What a renderer returns for a value its format cannot hold."""


@contextlib.contextmanager
def any_int_digits() -> Iterator[None]:
    """Lift Python's limit on the digits of an int written as text (4,300), so that huge
    ints can be rendered; lossdsl itself always runs under the default limit."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


def plain(value: Any) -> Any:
    """``value`` in the types JSON and YAML hold (dicts, lists, str, int, float, bool, None):
    tuples become lists, other numbers floats (out of range: infinite), keys that are not
    scalars their ``repr``, anything else its ``repr``."""
    if isinstance(value, bool | str | None):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
        except ValueError:  # Decimal('sNaN')
            return math.nan
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, str | int | float | bool | None) else repr(k)): plain(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return repr(value)


def json_text(value: Any, *, ascii_only: bool = True) -> str:
    """``value`` as JSON (NaN and Infinity included, as Python writes them)."""
    with any_int_digits():
        return json.dumps(plain(value), ensure_ascii=ascii_only)


def yaml_text(value: Any, *, flow: bool | None = False, unicode: bool = True) -> Any:
    """``value`` as YAML (``yaml.safe_dump``), or ``SKIP``."""
    try:
        with any_int_digits():
            return yaml.safe_dump(
                plain(value), default_flow_style=flow, allow_unicode=unicode, sort_keys=False
            )
    except (yaml.YAMLError, UnicodeError, ValueError):
        return SKIP


def _toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff":
            # Controls must be escaped; a lone surrogate cannot be, and TOML refuses it.
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_key(key: Any) -> str:
    return _toml_string(key if isinstance(key, str) else json.dumps(key))


def _toml_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        items = [_toml_value(v) for v in value]
        return SKIP if SKIP in items else "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        pairs = [(k, _toml_value(v)) for k, v in value.items() if v is not None]
        if any(v is SKIP for _, v in pairs):
            return SKIP
        return "{" + ", ".join(f"{_toml_key(k)} = {v}" for k, v in pairs) + "}"
    return SKIP  # None in a list: TOML has no null


def toml_text(value: Any, *, tables: bool = False) -> Any:
    """``value``, a mapping, as TOML, or ``SKIP``: TOML has no null (a key whose value is
    ``None`` is left out, as a missing field) and no top level but a table. With ``tables``,
    the mappings of the top level are written as ``[name]`` tables, the rest inline."""
    if not isinstance(value, Mapping):
        return SKIP
    data = plain(value)
    lines: list[str] = []
    sections: list[str] = []
    with any_int_digits():
        for k, v in data.items():
            if v is None:
                continue
            if tables and isinstance(v, dict) and v:
                body = toml_text(v, tables=False)
                if body is SKIP:
                    return SKIP
                sections.append(f"[{_toml_key(k)}]\n{body}")
                continue
            text = _toml_value(v)
            if text is SKIP:
                return SKIP
            lines.append(f"{_toml_key(k)} = {text}\n")
    return "".join(lines) + "".join(sections)


def render(value: Any, suffix: str, rng: random.Random | None = None) -> Any:
    """``value`` as the text of a ``suffix`` file (the style drawn from ``rng``), or ``SKIP``."""
    pick = rng.random if rng is not None else (lambda: 0.0)
    if suffix == ".json":
        return json_text(value, ascii_only=pick() < 0.5)
    if suffix == ".yaml":
        return yaml_text(value, flow=pick() < 0.3, unicode=pick() < 0.7)
    return toml_text(value, tables=pick() < 0.5)


# -- the target -----------------------------------------------------------------------------


@functools.cache
def _workdir() -> tempfile.TemporaryDirectory[str]:
    """One folder for the whole run, where each input is written; removed at exit."""
    return tempfile.TemporaryDirectory(prefix="lossdsl-fuzz-spec-")


def _path(suffix: str) -> Path:
    return Path(_workdir().name) / f"spec{suffix}"


def warm_up() -> None:
    """Build the parser and load what each entry point imports, outside any measured call."""
    lossdsl.parse("mse(u0)")
    LossSpec(expression="mse(u0)", units=1)
    for suffix in SUFFIXES:
        check(_encode(render({"expression": "mse(u0)", "units": 1}, suffix)), suffix, budget=None)


def clear_caches() -> None:
    """Forget parsed and checked formulas, so that each measured call does its work."""
    lossdsl.parser.clear_cache()
    lossdsl.validation.clear_cache()


_full_collections = [0.0, 0.0]
"""CPU time spent in full garbage collections so far, and when the current one started."""


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if info["generation"] == 2:
        now = time.process_time()
        if phase == "start":
            _full_collections[1] = now
        else:
            _full_collections[0] += now - _full_collections[1]


gc.callbacks.append(_on_gc)


def timed(what: str, budget: float | None, size: int, fn: Callable[[], Any]) -> Any:
    """``fn()``: its result, or the ``LossDSLError`` it raised (rendered, as a caller would);
    ``Bug`` if it took more than ``budget`` seconds of CPU time on an input of ``size`` bytes
    within ``MAX_SPEC_BYTES``. Any other exception goes through.

    A full garbage collection that falls into the call is not counted: it scans every object
    of the process (a test runner's, a fuzzer's), which the spec did not make."""
    clear_caches()
    start, collecting = time.process_time(), _full_collections[0]
    try:
        result = fn()
    except LossDSLError as e:
        str(e)
        result = e
    seconds = time.process_time() - start - (_full_collections[0] - collecting)
    if budget is not None and size <= MAX_SPEC_BYTES and seconds > budget:
        raise Bug(f"{what} took {seconds:.2f} s of CPU time (budget {budget} s)")
    return result


def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """``lossdsl.cli.main(argv)`` in-process: exit status, standard output and error."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
    finally:
        sys.stdin = old
    return status, out.getvalue(), err.getvalue()


def cli_document(status: int, out: str, err: str, what: str) -> dict[str, Any]:
    """The one JSON document of a ``--json`` run, checked; ``Bug`` if it is not that."""
    if status not in (0, 1, 2):
        raise Bug(f"{what} exited with {status!r}")
    if "Internal error in lossdsl" in out + err or "Traceback" in err:
        raise Bug(f"{what} hit an exception of its own: {(out + err)[:2000]}")
    if out.count("\n") != 1 or not out.endswith("\n"):
        raise Bug(f"{what} did not print one line of JSON: {out[:2000]!r}")
    try:
        document = json.loads(out)
    except ValueError as e:
        raise Bug(f"{what} printed invalid JSON ({e}): {out[:2000]!r}") from None
    if not isinstance(document, dict) or not isinstance(document.get("valid"), bool):
        raise Bug(f"{what} printed a document without 'valid': {out[:2000]!r}")
    if document["valid"] != (status == 0):
        raise Bug(f"{what} exited with {status} but printed valid={document['valid']}")
    return document


def _stdlib_data(data: bytes, suffix: str) -> Any:
    """What the format's own parser reads from ``data``, or ``SKIP``."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        # An alias is the same object again, not a copy: a bomb stays small here.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        return SKIP


def check(data: bytes, suffix: str, key: str | None = None, budget: float | None = BUDGET_S) -> str:
    """Run every entry point on the config file ``data`` (read at ``key``); raise ``Bug``
    (or whatever escaped) if one misbehaves. Returns ``"accepted"`` or ``"rejected"``."""
    path = _path(suffix)
    path.write_bytes(data)
    size = len(data)
    loaded = timed("load_spec", budget, size, lambda: load_spec(path, key=key))
    argv = ["check", "--config", str(path), "--json", *(["--key", key] if key else [])]
    status, out, err = timed("check --config", budget, size, lambda: run_cli(argv))
    document = cli_document(status, out, err, "check --config")
    accepted = not isinstance(loaded, LossDSLError)
    if accepted != document["valid"]:
        raise Bug(f"load_spec {'accepted' if accepted else 'refused'} it, check --config not")
    if accepted:
        spec: LossSpec = loaded
        again = LossSpec.model_validate(json.loads(json.dumps(spec.config(), allow_nan=False)))
        if again != spec or lossdsl.parse(str(spec.formula)) != spec.formula:
            raise Bug(f"the accepted spec does not round-trip: {spec!r:.2000}")
    found = _stdlib_data(data, suffix)
    if key and isinstance(found, Mapping):
        for part in key.split("."):
            found = found.get(part) if isinstance(found, Mapping) else None
    if isinstance(found, Mapping) and size <= MAX_SPEC_BYTES:
        timed("LossSpec.model_validate", budget, size, lambda: LossSpec.model_validate(found))
        expression = found.get("expression")
        if isinstance(expression, str):
            allow = found.get("allow_negative", False)
            timed(
                "validate",
                budget,
                size,
                lambda: lossdsl.validate(
                    expression,
                    units=found.get("units"),
                    params=found.get("params"),
                    allow_negative=allow if isinstance(allow, bool) else False,
                ),
            )
    return "accepted" if accepted else "rejected"


# -- seeds ----------------------------------------------------------------------------------

LESION = "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1"
SEED_SPECS: list[Any] = [
    {"expression": LESION, "units": {"presence": 0, "loc": 1}},
    {"expression": fuzz_parse.SEEDS[1], "units": fuzz_parse.UNITS, "params": fuzz_parse.PARAMS},
    {"expression": fuzz_parse.SEEDS[5], "units": {"presence": 0, "loc": 1}, "where_mean": "batch"},
    {"expression": "mse(u0) - 0.1 * mae(u1)", "units": 2, "allow_negative": True},
    {
        "expression": "cce(cls) + mse(box) where true(obj) == 1",
        "units": {"obj": {"true": 0}, "cls": {"pred": [1, 5], "true": 1}, "box": [5, 9]},
    },
    {"expression": "alpha * mse(u0) + beta * mae(u1)", "params": {"alpha": 0.5, "beta": 2}},
    "bce(u0) + mse(u1)",
    {"training": {"epochs": 3, "loss": {"expression": LESION, "units": {"presence": 0, "loc": 1}}}},
]
"""Specs (one nested at ``KEY``; one a bare formula) that between them use every field."""

HANDMADE: list[tuple[str, str]] = [
    (".yaml", "defaults: &u {presence: 0, loc: 1}\ntraining:\n  loss:\n    expression: " + LESION
              + "\n    units: *u\n    params: {<<: {beta: 0.5}}\n"),
    (".yaml", "expression: |\n  0.7 * bce(presence)\n  + 0.3 * mse(loc)\nunits:\n  presence: 0\n"
              "  loc: 1\nparams:\n  <<: {alpha: 0.5}\n"),
    (".yaml", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
              "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c]\n"
              "expression: mse(u0)\nunits: 1\nparams: {x: *d}\n"),
    (".yaml", "expression: mse(u0)\nunits: &r [*r]\n"),
    (".yaml", "expression: mse(u0)\nunits: {5: 0, ~: 1, true: 2, 2001-01-01: 3, [1, 2]: 4}\n"),
    (".yaml", "expression: mse(u0)\nexpression: bce(u0)\nunits: {a: 0, a: 1}\n"),
    (".yaml", "expression:\tmse(u0)\r\nunits: 0o17\r\nparams: {a: .inf, b: .NaN, c: 1_0:30}\r"),
    (".yaml", "%YAML 1.1\n---\n!!map {? !!str expression : !!binary bXNlKHUwKQ==}\n---\nx: 1\n"),
    (".yaml", "expression: !!python/object/apply:os.getcwd []\nunits: !!set {a, b}\n"),
    (".json", '{"expression": "mse(u0)", "units": 1' + "0" * 5000 + ', "params": {"a": 1e400}}'),
    (".json", '{"expression": "mse(u0)", "units": {"a": 0, "a": [0, 2]}, "expression": "x"}'),
    (".json", '{"expression": "mse(\\ud800)", "units": -0, "params": {"a": NaN, "b": -Infinity}}'),
    (".json", '\ufeff{"expression": "mse(u0)", "units": ' + "[" * 3000 + "]" * 3000 + "}"),
    (".toml", 'expression = "mse(u0)"\nunits = 1' + "0" * 500 + '\nparams = {a = inf, b = nan}\n'),
    (".toml", 'expression = """\nmse(u0)\n+ bce(u1)"""\n[units]\na = 0\n[units]\nb = 1\n'),
    (".toml", "expression = 'mse(a)'\nunits.a.pred = [0, 2]\nunits.a.true = 0\n"
              "params = {t = 1979-05-27T07:32:00Z, d = 07:32:00}\n[[where_mean]]\n"),
]  # fmt: skip
"""Config texts that no renderer writes: aliases, merges, tags, duplicate keys, huge numbers,
tabs, CR line ends, a byte order mark, deep nesting, dates."""


def _seeds() -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for spec in SEED_SPECS:
        key = KEY if isinstance(spec, dict) and "training" in spec else None
        for suffix in SUFFIXES:
            for style in (0.0, 0.99):
                text = render(spec, suffix, random.Random(0) if style else None)
                if text is not SKIP:
                    out.append((suffix, text, key))
    out += [(suffix, text, KEY if "training" in text else None) for suffix, text in HANDMADE]
    return list(dict.fromkeys(out))


SEEDS = _seeds()
"""``(suffix, text, key)`` of every seed file."""

SNIPPETS = {
    ".yaml": [
        "&a ", "*a", "<<: ", "? ", "!!binary ", "!!str ", "!!float ", "---\n", "...\n", "|\n",
        ">-\n", "\t", "- ", "{", "}", "[", "]", ": ", "~", ".inf", ".nan", "0x1F", "1:20",
        "2001-12-14", "'", '"', "#", "%YAML 1.2\n", "\r", "\u2028", "\x85", "\ufeff",
        "units: ", "params: ", "expression: ", "where_mean: batch\n", "allow_negative: yes\n",
    ],
    ".json": [
        '"', "{", "}", "[", "]", ",", ":", "1e400", "-1e-400", "NaN", "Infinity", "-0",
        "1" + "0" * 4400, "\\u0000", "\\ud800", "\\udc00", "null", "true", '"units": ',
        '"params": ', '"expression": ', '"where_mean": "batch"', '"allow_negative": true',
    ],
    ".toml": [
        "[units]\n", "[params]\n", "[[units]]\n", " = ", "=", '"""', "'''", "'", '"', "{", "}",
        "[", "]", ",", "inf", "nan", "-inf", "1979-05-27", "07:32:00", "0x_1", "1_000", "\r\n",
        "\r", "\t", "units.a = 0\n", 'expression = "mse(u0)"\n', "where_mean = 'batch'\n",
    ],
}  # fmt: skip
"""Pieces of each format's syntax, spliced into its texts."""

VALUES: list[Any] = [
    -1, 0, 1, 9, 2**31, 2**63, 10**400, -(10**400), 1.5, -0.0, math.inf, -math.inf, math.nan,
    1e308, 5e-324, True, False, None, "", "0", "batch", "mse(u0)", "\ud800", "\x00", "x" * 200,
    [], [0], [0, 2], [2, 0], [0, 1, 2], [[0, 1]], {}, {"pred": [1, 5], "true": 1}, {"pred": -1},
    {"x": [[[[[1]]]]]}, {"a": 0, "mse": 1, "u0": 2, "where": 3, "é": 4, "": 5},
]  # fmt: skip
"""Values a field, a unit or a parameter is set to by a mutation."""
FIELDS = ("expression", "units", "params", "where_mean", "allow_negative", "unknown", "expresion")


def _set_somewhere(rng: random.Random, spec: Any) -> Any:
    """A copy of ``spec`` with one field, unit or parameter set to a hostile value."""
    if not isinstance(spec, dict):
        return {"expression": spec, rng.choice(FIELDS): rng.choice(VALUES)}
    spec = json.loads(json_text(spec))  # a copy, in JSON's types
    target = spec["training"]["loss"] if "training" in spec else spec
    field = rng.choice(FIELDS)
    inner = target.get(field)
    if isinstance(inner, dict) and inner and rng.random() < 0.7:
        inner = target[field] = dict(inner)
        name = rng.choice([*inner, "new", "u1", "mse", "\u00e9", 5])
        inner[name] = rng.choice(VALUES)
    else:
        target[field] = rng.choice(VALUES)
    return spec


def _many(rng: random.Random) -> Any:
    """A spec with thousands of units, parameters or unknown fields, of about 100 KB."""
    template = rng.choice(["k{}", "unit{}", "expressio{}", "a" * 40 + "{}", "\u00e9{}"])
    count = rng.choice([1000, 95_000 // (len(template) + 12)])  # up to about 100 KB
    field = rng.choice(["units", "params", None])
    many = {template.format(i): rng.choice([0, 1.5, [0, 2], "x"]) for i in range(count)}
    spec: dict[str, Any] = {"expression": "mse(u0)"}
    if field is None:
        spec.update(many)
    else:
        spec[field] = many
    return spec


def _extreme(rng: random.Random) -> tuple[str, str, str | None]:
    """Large or deep files, and the limits around them."""
    suffix = rng.choice(SUFFIXES)
    kind = rng.randrange(5)
    if kind == 0:
        spec: Any = _many(rng)
    elif kind == 1:
        spec = {"expression": fuzz_parse._extreme(rng), "units": 9}
    elif kind == 2:  # written as text: the renderers recurse
        depth = rng.choice([5, 50, 1000, 20_000])
        inner = "[" * depth + "0" + "]" * depth
        if suffix == ".toml":
            return suffix, f'expression = "mse(a)"\nunits = {{a = {inner}}}\n', None
        return suffix, f'{{"expression": "mse(a)", "units": {{"a": {inner}}}}}', None
    elif kind == 3:
        spec = {"expression": "mse(u0)", "units": 1, "params": {"a": 10 ** rng.choice([400, 5000])}}
    else:
        n = rng.choice([9, 30])
        text = "a0: &a0 [" + ", ".join(["x"] * n) + "]\n"
        for i in range(1, 9):
            text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * n) + "]\n"
        return ".yaml", text + "expression: mse(u0)\nunits: {a: *a8}\n", None
    text = render(spec, suffix, rng)
    return (suffix, text, None) if text is not SKIP else (".json", json_text(spec), None)


def _mutate_text(rng: random.Random, suffix: str, text: str) -> str:
    kind = rng.randrange(8)
    pos = rng.randrange(len(text) + 1)
    if kind == 0:
        return text[:pos] + rng.choice(SNIPPETS[suffix]) + text[pos:]
    if kind == 1:  # a line twice: a key set twice, a table declared twice
        lines = text.splitlines(keepends=True)
        if lines:
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        return "".join(lines)
    if kind == 2:
        return text.replace("\n", rng.choice(["\r\n", "\r", "\n\n", "\t\n", " \n"]))
    if kind == 3:
        return text[: rng.randrange(len(text) + 1)]  # cut short
    return fuzz_parse._mutate_once(rng, text)


def _encode(text: str, rng: random.Random | None = None) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if rng is not None and rng.random() < 0.03:  # bytes that are not UTF-8
        pos = rng.randrange(len(data) + 1)
        data = data[:pos] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + data[pos:]
    if rng is not None and rng.random() < 0.02:
        data = b"\xef\xbb\xbf" + data
    return data


def random_input(rng: random.Random) -> tuple[bytes, str, str | None]:
    """``(data, suffix, key)``: a seed file, mutated as text or as data, or an extreme file."""
    roll = rng.random()
    if roll < 0.04:
        suffix, text, key = _extreme(rng)
        return _encode(text, rng), suffix, key
    if roll < 0.4:
        spec = rng.choice(SEED_SPECS)
        for _ in range(rng.randrange(4) if roll < 0.1 else rng.randrange(1, 4)):  # 0: as it is
            spec = _set_somewhere(rng, spec)
        suffix = rng.choice(SUFFIXES)
        text = render(spec, suffix, rng)
        key = KEY if isinstance(spec, dict) and "training" in spec else None
        if text is not SKIP:
            return _encode(text, rng), suffix, key
    suffix, text, key = rng.choice(SEEDS)
    for _ in range(rng.randrange(1, 5)):
        text = _mutate_text(rng, suffix, text)
    return _encode(text, rng), suffix, key


def self_test(
    n: int,
    seed: int,
    max_total_time: float | None = None,
    budget: float | None = BUDGET_S,
) -> int:
    """Run ``check`` on ``n`` random inputs; 0 if all pass, 1 at the first failure."""
    warm_up()
    rng = random.Random(seed)
    counts = {"accepted": 0, "rejected": 0}
    start = time.monotonic()
    for i in range(n):
        data, suffix, key = random_input(rng)
        try:
            counts[check(data, suffix, key, budget)] += 1
        except Exception:
            print(
                f"input {i} (seed {seed}), a {suffix} file read at key {key}, failed: "
                f"{data[:2000]!r}",
                file=sys.stderr,
            )
            traceback.print_exc()
            return 1
        if max_total_time is not None and time.monotonic() - start > max_total_time:
            break
    print(
        f"{sum(counts.values())} inputs in {time.monotonic() - start:.1f} s: "
        f"{counts['accepted']} accepted, {counts['rejected']} rejected, no failure"
    )
    return 0


# -- atheris --------------------------------------------------------------------------------


def target(budget: float | None) -> Callable[[bytes], None]:
    """libFuzzer's entry point: the first byte picks the format and the key, the rest is the
    file."""

    def test_one_input(data: bytes) -> None:
        head = data[0] if data else 0
        check(data[1:], SUFFIXES[head % 3], KEY if head // 3 % 2 else None, budget)

    return test_one_input


def _libfuzzer_args(argv: list[str], workdir: Path) -> list[str]:
    args = list(argv)
    flags = [a for a in args[1:] if a.startswith("-")]
    if not any(a.startswith("-timeout=") for a in flags):
        args.append("-timeout=10")
    if not any(a.startswith("-dict=") for a in flags):
        tokens = {t for pieces in SNIPPETS.values() for t in pieces} | set(fuzz_parse.TOKENS)
        dictionary = workdir / "lossdsl-spec.dict"
        dictionary.write_text("".join(f'"{fuzz_parse._dict_escape(t)}"\n' for t in sorted(tokens)))
        args.append(f"-dict={dictionary}")
    paths = [Path(a) for a in args[1:] if not a.startswith("-")]
    if all(p.is_dir() for p in paths):  # fuzzing, not replaying input files
        seeds = workdir / "seeds"
        seeds.mkdir()
        for i, (suffix, text, key) in enumerate(SEEDS):
            head = SUFFIXES.index(suffix) + (3 if key else 0)
            (seeds / f"seed-{i}").write_bytes(bytes([head]) + _encode(text))
        if not paths:
            found = workdir / "corpus"
            found.mkdir()
            args.append(str(found))
        args.append(str(seeds))
    return args


def run_atheris(argv: list[str], budget: float | None) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit(
            "atheris is not installed: pip install atheris, or run without it:\n"
            "    python fuzz/fuzz_spec.py --self-test 2000"
        )
    atheris.instrument_all()  # coverage feedback from lossdsl, its parsers and pydantic
    warm_up()
    with tempfile.TemporaryDirectory(prefix="lossdsl-fuzz-") as tmp:
        atheris.Setup(_libfuzzer_args(argv, Path(tmp)), target(budget))
        atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    warnings.simplefilter("ignore", lossdsl.LossDSLWarning)  # lints are expected here
    budget: float | None = BUDGET_S
    for a in [a for a in argv if a.startswith("--budget=")]:
        argv.remove(a)  # ours, not libFuzzer's; 0 turns the budget off
        budget = float(a.split("=", 1)[1]) or None
    if "--self-test" not in argv:
        run_atheris(argv, budget)
        return 0
    parser = argparse.ArgumentParser(description="Run the fuzz target without atheris.")
    parser.add_argument("--self-test", type=int, metavar="N", help="number of random inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-total-time", type=float, default=None, metavar="SECONDS")
    ns = parser.parse_args(argv[1:])
    return self_test(ns.self_test, ns.seed, ns.max_total_time, budget)


if __name__ == "__main__":
    sys.exit(main())
