"""Fuzz harness for the lossdsl front end: ``parse`` and ``validate``.

Whatever the text, both must either succeed or raise a ``LossDSLError`` whose
every error points inside the text (a line and a column of it); an accepted
formula's canonical text must parse back to the same formula. Any other
exception, a failed check, or an input that runs past libFuzzer's ``-timeout``
is a crash.

With atheris (``pip install atheris``; not a dependency of lossdsl), run it for
a given time; libFuzzer flags and corpus folders pass through::

    python fuzz/fuzz_parse.py -max_total_time=600
    python fuzz/fuzz_parse.py -max_total_time=3600 -jobs=4 my_corpus/

libFuzzer also reads the seed formulas below, gets a dictionary of the
language's tokens (unless given ``-dict=``) and stops an input after
``-timeout=10`` seconds (unless told otherwise); what it finds goes into the
first corpus folder named, else into a temporary one. A crash is written to
``crash-<sha1>``; replay it with ``python fuzz/fuzz_parse.py crash-<sha1>``.

Without atheris, the same target runs on random mutations of the seeds::

    python fuzz/fuzz_parse.py --self-test 5000 [--seed 1] [--max-total-time 60]

``tests/test_properties.py`` imports ``check`` from here and runs the
self-test on a few hundred inputs, so the harness cannot rot; CI runs only
those hypothesis and self-test versions, never atheris.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

# A source checkout without an install: import lossdsl from the repository.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "lossdsl" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import lossdsl  # noqa: E402
from lossdsl import LossDSLError  # noqa: E402

UNITS = {"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}
PARAMS = {"alpha": 0.7, "beta": 0.5}
CONTEXTS: list[dict[str, Any]] = [
    {"units": UNITS, "params": PARAMS},
    {"units": UNITS, "params": PARAMS, "allow_negative": True, "strict": True},
    {"units": 9},
    {"units": None},
]
"""The ``validate`` arguments each input is checked with (all of them valid)."""

SPANLESS_CODES = frozenset({"LD100", "LD103", "LD104"})
"""Lints with no text to point at: about the ``units`` / ``params`` arguments, and the one that
counts the lints not shown."""

SEEDS = [
    "0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1",
    "alpha*huber(u[1:3], delta=0.5) + (1 - alpha)*cce(cls, from_logits=true, label_smoothing=0.1)",
    "abs(pred(u1) - true(u1)) where not (pred(u0) < 0.2 or true(u0) != 1) and true(u2) >= .5  # n",
    "clip(pred(u2), 1e-3, 1) + max(mse(u0), mae(box))\n  + 0.5 * square(pred(u3))",
    "focal(presence, gamma=2, alpha=0.25) / 2 + beta * -(-mse(u[2:6]))"
    " where true(presence) > 0 and pred(u1) <= 1E2",
    "  0.7 * bce(presence)          # is there a lesion?\n"
    "+ 0.3 * mse(loc)               # where is it ...\n"
    "      where true(presence) == 1  # ... when there is one",
    "exp(-beta) * kld(cls) + log(1 + 2) * msle(u4) + sqrt(alpha) * cosine(box)"
    " + min(alpha, beta) * poisson(u5)",
    "hinge(u0) + squared_hinge(u1)\t+ log_cosh(u2) + mape(u3)"
    " where (pred(u0) > 0.5) or not true(u1) == 0",
    "mse(u0) - 0.1 * mae(u1)",
]
"""Valid formulas that between them use every construct of the grammar."""

TOKEN = re.compile(
    r"#[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+(?:[eE][+-]?[0-9]+)?|[<>=!]=|.", re.S
)
TOKENS = sorted(
    {t for s in SEEDS for t in TOKEN.findall(s) if not t.isspace() and not t.startswith("#")}
    | {"where", "and", "or", "not", "u", "[", "]", ":", "=", "!", "^", "**", "&&", "1e999",
       "1e-400", "1e39", "0x1", "True", "u99999999999", "#", "\n", "\r", "\t", "\x00", "\x0c",
       "\u00e9", "\u00a0", "\u2028", "\u200b", "\ufeff", "\U0001f600", "\u0663", "\ufdd0"}
)  # fmt: skip
"""Tokens of the seeds, keywords, near-misses and troublesome characters."""


class Bug(AssertionError):
    """lossdsl broke a promise of its front end on some input."""


def _inside(err: LossDSLError, text: str) -> None:
    """``err`` points at a line and a column of ``text``.

    Offsets go from 0 to ``len(text)``: an error at the end of the text (an
    unclosed call, a dangling operator) points one past its last character,
    where the caret is drawn. So a column is at most its line's length + 1.
    """
    code = getattr(err, "code", None)
    if err.span is None and code in SPANLESS_CODES:
        return
    if err.source != text:
        raise Bug(f"error does not carry the text it is about: {err.message!r}")
    if err.span is None:
        raise Bug(f"error without a position: {err.message!r}")
    start, end = err.span
    if not (0 <= start <= len(text) and start <= end <= len(text) + 1):
        raise Bug(f"span {err.span} outside the text of length {len(text)}: {err.message!r}")
    lines = re.split("\r\n|\r|\n", text)  # a line ends as the errors count lines
    for line, column in ((err.line, err.column), (err.end_line, err.end_column)):
        if line is None or column is None or not 1 <= line <= len(lines):
            raise Bug(f"line {line} outside the text's {len(lines)} lines: {err.message!r}")
        if not 1 <= column <= len(lines[line - 1]) + 1:
            raise Bug(f"line {line} column {column} outside that line: {err.message!r}")
    str(err)  # renders, caret included


def _errors_inside(e: LossDSLError, text: str) -> None:
    for err in getattr(e, "errors", None) or [e]:
        _inside(err, text)
    str(e)


def check(text: str) -> str:
    """Run the front end on ``text``; raise ``Bug`` (or whatever escaped) if it
    misbehaves. Returns a one-word outcome: ``"parsed"`` or ``"rejected"``."""
    try:
        formula = lossdsl.parse(text)
    except LossDSLError as e:
        _errors_inside(e, text)
        outcome = "rejected"
    else:
        outcome = "parsed"
        canonical = str(formula)
        try:
            again = lossdsl.parse(canonical)
        except LossDSLError as e:
            raise Bug(f"the canonical text of {text!r} does not parse: {e.message}") from e
        if again != formula or str(again) != canonical:
            raise Bug(f"{text!r} does not round-trip through {canonical!r}")
    for context in CONTEXTS:
        try:
            lossdsl.validate(text, **context)
        except LossDSLError as e:
            _errors_inside(e, text)
    return outcome


# -- random inputs, for the self-test (atheris brings its own mutations) ----------


def _char(rng: random.Random) -> str:
    """One character: printable ASCII, a control character, or any other code
    point but a surrogate (text that came through UTF-8 never holds one)."""
    kind = rng.randrange(3)
    if kind == 0:
        return chr(rng.randrange(32, 127))
    if kind == 1:
        return chr(rng.choice([rng.randrange(0, 32), 127, 0x85, 0x2028, 0x2029]))
    cp = rng.randrange(0xA0, 0x110000 - 0x800)
    return chr(cp if cp < 0xD800 else cp + 0x800)


def _mutate_once(rng: random.Random, text: str) -> str:
    n = len(text)
    pos = rng.randrange(n + 1)
    kind = rng.randrange(10)
    if kind == 0 and n:  # delete a character
        return text[:pos] + text[pos + 1 :]
    if kind == 1:  # insert a character
        return text[:pos] + _char(rng) + text[pos:]
    if kind == 2 and n > 1:  # swap two characters
        i, j = sorted(rng.sample(range(n), 2))
        return text[:i] + text[j] + text[i + 1 : j] + text[i] + text[j + 1 :]
    tokens = TOKEN.findall(text)
    if kind == 3 and tokens:  # delete a token
        del tokens[rng.randrange(len(tokens))]
        return "".join(tokens)
    if kind == 4:  # insert a token
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(TOKENS))
        return "".join(tokens)
    if kind == 5 and len(tokens) > 1:  # swap two tokens
        i, j = rng.sample(range(len(tokens)), 2)
        tokens[i], tokens[j] = tokens[j], tokens[i]
        return "".join(tokens)
    if kind == 6 and tokens:  # replace a token
        tokens[rng.randrange(len(tokens))] = rng.choice(TOKENS)
        return "".join(tokens)
    if kind == 7:  # duplicate a slice
        i, j = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
        return text[:j] + text[i:j] * rng.randrange(1, 4) + text[j:]
    if kind == 8:  # splice in part of another seed
        other = rng.choice(SEEDS)
        i = rng.randrange(len(other))
        return text[:pos] + other[i : i + rng.randrange(1, 20)] + text[pos:]
    return text[:pos] + "".join(rng.choice(TOKENS) for _ in range(rng.randrange(1, 6))) + text[pos:]


def _extreme(rng: random.Random) -> str:
    """Long, deep or odd inputs: the limits and what lies just around them."""
    seed = rng.choice(SEEDS)
    depth = rng.choice([99, 100, 101, 5000])
    return rng.choice(
        [
            "(" * depth + seed + ")" * depth,
            "(" * 5000,
            ")" * 5000,
            "-" * depth + "mse(u0)",
            "mse(u0) where " + "not " * depth + "true(u0) == 1",
            "abs(" * depth + "pred(u0)" + ")" * depth,
            " + ".join(["mse(u0)"] * rng.choice([999, 1000, 1001])),
            "mse(u0)" + "*2" * rng.choice([4996, 4997, 5000]),
            seed + " " * 100_000,
            seed + "#" + "x" * 100_000,
            (seed + " + ") * 2000 + "1",
            "x" * rng.choice([9_999, 10_000, 10_001, 200_000]),
            "".join(_char(rng) for _ in range(200)),
        ]
    )


def random_input(rng: random.Random) -> str:
    """A seed formula with a few random edits, or now and then an extreme input."""
    if rng.random() < 0.03:
        return _extreme(rng)
    text = rng.choice(SEEDS)
    for _ in range(rng.randrange(1, 6)):
        text = _mutate_once(rng, text)
    return text


def self_test(n: int, seed: int, max_total_time: float | None = None) -> int:
    """Run ``check`` on ``n`` random inputs; 0 if all pass, 1 at the first failure."""
    rng = random.Random(seed)
    counts = {"parsed": 0, "rejected": 0}
    start = time.monotonic()
    for i in range(n):
        text = random_input(rng)
        try:
            counts[check(text)] += 1
        except BaseException:
            print(f"input {i} (seed {seed}) failed: {text[:2000]!r}", file=sys.stderr)
            traceback.print_exc()
            return 1
        if max_total_time is not None and time.monotonic() - start > max_total_time:
            break
    done = counts["parsed"] + counts["rejected"]
    print(
        f"{done} inputs in {time.monotonic() - start:.1f} s: "
        f"{counts['parsed']} parsed, {counts['rejected']} rejected, no failure"
    )
    return 0


# -- atheris ------------------------------------------------------------------------


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: the bytes as UTF-8 (bad bytes become U+FFFD)."""
    check(data.decode("utf-8", errors="replace"))


def _dict_escape(token: str) -> str:
    """A token as a libFuzzer dictionary entry: its UTF-8 bytes, \\xNN-escaped
    where not plain printable ASCII."""
    return "".join(
        chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\x{b:02X}"
        for b in token.encode("utf-8")
    )


def _libfuzzer_args(argv: list[str], workdir: Path) -> list[str]:
    args = list(argv)
    flags = [a for a in args[1:] if a.startswith("-")]
    if not any(a.startswith("-timeout=") for a in flags):
        args.append("-timeout=10")
    if not any(a.startswith("-dict=") for a in flags):
        dictionary = workdir / "lossdsl.dict"
        dictionary.write_text("".join(f'"{_dict_escape(t)}"\n' for t in TOKENS))
        args.append(f"-dict={dictionary}")
    paths = [Path(a) for a in args[1:] if not a.startswith("-")]
    if all(p.is_dir() for p in paths):  # fuzzing, not replaying input files
        # libFuzzer writes what it finds to the first folder and reads the others:
        # the seeds come last, so a corpus folder named on the command line grows.
        seeds = workdir / "seeds"
        seeds.mkdir()
        for i, s in enumerate(SEEDS):
            (seeds / f"seed-{i}").write_text(s, encoding="utf-8")
        if not paths:
            found = workdir / "corpus"
            found.mkdir()
            args.append(str(found))
        args.append(str(seeds))
    return args


def run_atheris(argv: list[str]) -> None:
    try:
        import atheris
    except ImportError:
        sys.exit(
            "atheris is not installed: pip install atheris, or run without it:\n"
            "    python fuzz/fuzz_parse.py --self-test 5000"
        )
    atheris.instrument_all()  # coverage feedback from lossdsl and Lark, imported above
    with tempfile.TemporaryDirectory(prefix="lossdsl-fuzz-") as tmp:
        atheris.Setup(_libfuzzer_args(argv, Path(tmp)), test_one_input)
        atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    warnings.simplefilter("ignore", lossdsl.LossDSLWarning)  # lints are expected here
    if "--self-test" not in argv:
        run_atheris(argv)
        return 0
    parser = argparse.ArgumentParser(description="Run the fuzz target without atheris.")
    parser.add_argument("--self-test", type=int, metavar="N", help="number of random inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-total-time", type=float, default=None, metavar="SECONDS")
    ns = parser.parse_args(argv[1:])
    return self_test(ns.self_test, ns.seed, ns.max_total_time)


if __name__ == "__main__":
    sys.exit(main())
