"""Front-end throughput: parsing and validating typical formulas, as a service does.

Measures, on one core, in a process without Keras, for typical two- to four-term
formulas that are all different:

* a bare Lark parse: ``Lark(grammar_text(), parser="lalr", lexer="contextual")``
  building its own parse tree, no transformer; the yardstick every other row is
  compared with;
* ``lossdsl.parse``, uncached (the Lark parse with the AST built as it reduces,
  and the limits), and of a repeated formula (the parse cache);
* the checks of a parsed formula alone (``lossdsl.checker.check``, uncached);
* ``lossdsl.validate`` (parse, AST, checks, lints) on distinct formulas: every
  text is new, and both caches are cleared before each round;
* ``lossdsl.validate`` of a repeated formula, served from the cache;
* ``lossdsl check --stdin`` on distinct formulas (in process, JSON out).

Each row is timed beside a bare Lark parse of other new formulas of the same
kind: in a round, the row's items and Lark's texts go in chunks of 100 that
alternate (Lark, row, row, Lark, Lark, row, ...), so that the machine's load,
which changes from one millisecond to the next on a shared machine, touches
both sides alike. A row's ratio is its rate over the yardstick's in the same
round; rates and ratios are medians over the rounds. Lark's own row, timed
beside Lark, shows the method's error (its ratio should be 1).

``make bench`` runs this as its front-end part (``--json``). Nothing here is a test.

    .venv/bin/python benchmarks/bench_validate.py [--n 1000] [--rounds 7] [--chunk 100] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import lark

import lossdsl
from lossdsl import ast, checker, parser, validation
from lossdsl.cli import main as cli_main

UNITS = {"presence": 0, "loc": 1, "box": [2, 6]}

LARK = "bare Lark parse (yardstick)"
PARSE = "lossdsl.parse, uncached"
PARSE_CACHED = "lossdsl.parse, a repeated formula (cached)"
CHECKS = "checks of a parsed formula"
VALIDATE = "lossdsl.validate, distinct formulas"
VALIDATE_CACHED = "lossdsl.validate, a repeated formula (cached)"
STDIN = "lossdsl check --stdin, distinct formulas"

VALIDATE_RATIO_TARGET = 0.4
"""``lossdsl.validate`` on distinct formulas: at least this fraction of the bare Lark parse's
rate."""
CACHED_RATE_TARGET = 100_000
"""``lossdsl.validate`` of a repeated formula: at least this many validations a second."""


def formulas(n: int, salt: int) -> list[str]:
    """``n`` different formulas of two to four terms (no two texts or trees alike
    for ``n`` up to 100,000), each using every declared unit, so no lint fires.
    Different salts give different texts."""
    shapes = [
        "{a}*bce(presence) + {b}*mse(loc) + huber(box) where true(presence) == 1",
        "bce(presence, from_logits=true) + {a}*huber(box, delta={b}) + mae(loc)",
        "{a}*focal(presence, gamma=2) + mse(loc) + {b}*mae(box) where true(presence) >= 0.5",
        "abs(pred(loc) - true(loc)) + {a}*bce(presence) + {b}*log_cosh(box)",
    ]
    return [shapes[i % 4].format(a=1 + i % 7, b=f"0.{salt:04d}{i:05d}") for i in range(n)]


def clear_caches() -> None:
    """Forget every parsed and every validated formula."""
    parser.clear_cache()
    validation.clear_cache()


def seconds(fn: Callable[[Any], object], items: list[Any]) -> float:
    """Seconds ``fn`` takes over ``items``, one call each."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def stdin_seconds(items: list[str]) -> float:
    """Seconds ``lossdsl check --stdin`` takes over ``items``, one a line, in process."""
    stdin = io.StringIO("\n".join(items) + "\n")
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        old, sys.stdin = sys.stdin, stdin
        try:
            cli_main(["check", "--stdin", "--units", json.dumps(UNITS)])
        finally:
            sys.stdin = old
    elapsed = time.perf_counter() - start
    assert out.getvalue().count('"valid": true') == len(items)
    return elapsed


def measure(n: int = 1000, rounds: int = 7, chunk: int = 100) -> list[dict[str, Any]]:
    """One row per measurement: ``what``, ``seconds`` (median each), ``rate`` (per
    second, its inverse) and ``ratio`` (the median over rounds of the row's rate
    over the bare Lark parse's in the same round), with ``ratios``, every round's.

    A round of a row times ``n`` items of the row and ``n`` bare Lark parses of
    other new formulas, in chunks of ``chunk`` that alternate (Lark, row, row,
    Lark, Lark, row, ...), so the machine's load touches both sides alike."""
    yardstick = lark.Lark(parser.grammar_text(), parser="lalr", lexer="contextual")
    salt = 0

    def new(count: int) -> list[str]:
        nonlocal salt
        salt += 1
        return formulas(count, salt)

    def repeated(fn: Callable[[str], object]) -> Callable[[int], list[str]]:
        def prepare(count: int) -> list[str]:
            same = new(1)
            fn(same[0])  # the one miss, untimed: every timed call is a hit
            return same * count

        return prepare

    def validate(text: str) -> object:
        return lossdsl.validate(text, units=UNITS)

    def check(formula: ast.Formula) -> object:
        return checker.check(formula, units=UNITS)

    def parsed(count: int) -> list[ast.Formula]:
        return [lossdsl.parse(t) for t in new(count)]

    def each(fn: Callable[[Any], object]) -> Callable[[list[Any]], float]:
        return lambda items: seconds(fn, items)

    # What each row times: items made untimed (new texts, or one text made a cache hit),
    # and the run over a chunk of them.
    rows: dict[str, tuple[Callable[[int], list[Any]], Callable[[list[Any]], float]]] = {
        LARK: (new, each(yardstick.parse)),
        PARSE: (new, each(lossdsl.parse)),
        PARSE_CACHED: (repeated(lossdsl.parse), each(lossdsl.parse)),
        CHECKS: (parsed, each(check)),
        VALIDATE: (new, each(validate)),
        VALIDATE_CACHED: (repeated(validate), each(validate)),
        STDIN: (new, stdin_seconds),
    }

    def one_round(prepare: Any, run: Any, count: int) -> tuple[float, float]:
        """The row's and Lark's seconds over ``count`` items each."""
        clear_caches()
        items, texts = prepare(count), new(count)
        row = lark_time = 0.0
        for i in range(0, count, chunk):
            if i // chunk % 2 == 0:
                lark_time += seconds(yardstick.parse, texts[i : i + chunk])
                row += run(items[i : i + chunk])
            else:
                row += run(items[i : i + chunk])
                lark_time += seconds(yardstick.parse, texts[i : i + chunk])
        return row, lark_time

    times: dict[str, list[float]] = {k: [] for k in rows}
    ratios: dict[str, list[float]] = {k: [] for k in rows}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lint would mean the formulas are not typical
        for prepare, run in rows.values():  # warm-up: the parsers built, every path run
            one_round(prepare, run, chunk)
        for _ in range(rounds):
            for name, (prepare, run) in rows.items():
                row, lark_time = one_round(prepare, run, n)
                times[name].append(row / n)
                ratios[name].append(lark_time / row)
    clear_caches()
    return [
        {
            "what": name,
            "seconds": statistics.median(times[name]),
            "rate": 1 / statistics.median(times[name]),
            "ratio": statistics.median(ratios[name]),
            "ratios": ratios[name],
        }
        for name in rows
    ]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The two front-end targets, each with this run's figure and whether it is met."""
    by = {r["what"]: r for r in rows}
    ratio, rate = by[VALIDATE]["ratio"], by[VALIDATE_CACHED]["rate"]
    return [
        f"`lossdsl.validate` on distinct formulas at {ratio:.3f} of the bare Lark parse's rate "
        f"(target: at least {VALIDATE_RATIO_TARGET}): "
        + ("met." if ratio >= VALIDATE_RATIO_TARGET else "not met."),
        f"`lossdsl.validate` of a repeated formula, {rate:,.0f} a second "
        f"(target: at least {CACHED_RATE_TARGET:,}): "
        + ("met." if rate >= CACHED_RATE_TARGET else "not met."),
    ]


def markdown(rows: list[dict[str, Any]], n: int, rounds: int, chunk: int) -> list[str]:
    """The rows as a Markdown table, with the targets below it."""
    lines = [
        f"{n:,} items a row, {rounds} rounds, medians. *Ratio*: the row's rate over the bare "
        f"Lark parse's, the two timed in alternating chunks of {chunk} in the same round; "
        "beside it, its lowest and highest over the rounds.",
        "",
        "| what | median each | per second | ratio to the bare Lark parse | over the rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        each = r["seconds"]
        shown = f"{each * 1e6:.1f} µs" if each >= 1e-6 else f"{each * 1e9:.0f} ns"
        spread = f"{min(r['ratios']):.2f} to {max(r['ratios']):.2f}"
        lines.append(f"| {r['what']} | {shown} | {r['rate']:,.0f} | {r['ratio']:.2f} | {spread} |")
    return [*lines, "", *(f"- {t}" for t in targets(rows))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="items a row times in a round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=100, help="items a side between switches")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (for bench.py)")
    args = ap.parse_args()
    rows = measure(args.n, args.rounds, args.chunk)
    if args.json:
        assert "keras" not in sys.modules, "the front end loaded keras"
        print(json.dumps({"n": args.n, "rounds": args.rounds, "chunk": args.chunk, "rows": rows}))
    else:
        print("\n".join(markdown(rows, args.n, args.rounds, args.chunk)))


if __name__ == "__main__":
    main()
