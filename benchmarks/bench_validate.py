"""Validation throughput, the hot path of a service that checks user formulas.

Prints, for typical two-to-four-term formulas, all different, on one core:

* Lark's own LALR parse of the same texts (to a plain tree, no AST), the
  reference the speed goal is stated against;
* ``lossdsl.parse`` and the checks alone;
* ``lossdsl.validate`` (parse, checks, lints) on distinct formulas, and on a
  repeated formula (served from the cache);
* ``lossdsl check --stdin`` (in process, JSON out).

Each figure is the median of several rounds, as formulas per second and as a
multiple of Lark's parse time measured right before and after it, which makes
figures from a busy machine comparable. Nothing here is a test.

    .venv/bin/python benchmarks/bench_validate.py [--n 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import lark

import lossdsl
from lossdsl import parser
from lossdsl.cli import main as cli_main

validate_module = importlib.import_module("lossdsl.validate")

UNITS = {"presence": 0, "loc": 1, "box": [2, 6]}


def formulas(n: int, salt: int) -> list[str]:
    """``n`` different formulas of two to four terms (no two texts or trees alike),
    each using every declared unit, so no lint fires."""
    shapes = [
        "{a}*bce(presence) + {b}*mse(loc) + huber(box) where true(presence) == 1",
        "bce(presence, from_logits=true) + {a}*huber(box, delta={b}) + mae(loc)",
        "{a}*focal(presence, gamma=2) + mse(loc) + {b}*mae(box) where true(presence) >= 0.5",
        "abs(pred(loc) - true(loc)) + {a}*bce(presence) + {b}*log_cosh(box)",
    ]
    return [shapes[i % 4].format(a=1 + i % 7, b=f"0.{salt:02d}{i:05d}") for i in range(n)]


def seconds_each(fn: Callable[[str], object], items: list[str]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items)


def stdin_seconds_each(items: list[str]) -> float:
    stdin = io.StringIO("\n".join(items) + "\n")
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        old, sys.stdin = sys.stdin, stdin
        try:
            cli_main(["check", "--stdin", "--units", json.dumps(UNITS)])
        finally:
            sys.stdin = old
    elapsed = (time.perf_counter() - start) / len(items)
    assert out.getvalue().count('"valid": true') == len(items)
    return elapsed


def clear_caches() -> None:
    parser._parse_cached.cache_clear()
    validate_module._CACHE.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    warnings.simplefilter("error")  # a lint would mean the formulas are not typical
    reference = lark.Lark(parser.grammar_text(), parser="lalr")
    parser._get_parser()
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    salt = 0

    def fresh() -> list[str]:
        nonlocal salt
        salt += 1
        clear_caches()
        return formulas(args.n, salt)

    def checks_of_parsed() -> float:
        parsed = [lossdsl.parse(t) for t in fresh()]
        validate_module._CACHE.clear()
        return seconds_each(lambda f: validate_module.check(f, units=UNITS), parsed)

    def repeated() -> float:
        items = fresh()
        return seconds_each(lambda t: lossdsl.validate(t, units=UNITS), [items[0]] * len(items))

    rows: dict[str, Callable[[], float]] = {
        "Lark's LALR parse alone (reference)": lambda: seconds_each(reference.parse, fresh()),
        "lossdsl.parse": lambda: seconds_each(lossdsl.parse, fresh()),
        "checks of a parsed formula": checks_of_parsed,
        "lossdsl.validate, distinct": lambda: seconds_each(
            lambda t: lossdsl.validate(t, units=UNITS), fresh()
        ),
        "lossdsl.validate, repeated": repeated,
        "check --stdin, distinct": lambda: stdin_seconds_each(fresh()),
    }
    for _ in range(args.rounds):
        for name, measure in rows.items():
            # The yardstick is measured right before and right after each figure,
            # on other texts of the same kind, so that the machine's drift cancels
            # and neither side always runs first.
            before = seconds_each(reference.parse, fresh())
            each = measure()
            after = seconds_each(reference.parse, fresh())
            times.setdefault(name, []).append(each)
            ratios.setdefault(name, []).append(each / ((before + after) / 2))

    print(f"{args.n} formulas x {args.rounds} rounds; medians")
    print(f"{'what':40} {'formulas/s':>12} {'µs each':>9} {'x Lark parse':>13}")
    for name, values in times.items():
        each = statistics.median(values)
        ratio = statistics.median(ratios[name])
        print(f"{name:40} {1 / each:>12,.0f} {each * 1e6:>9.1f} {ratio:>13.2f}")


if __name__ == "__main__":
    main()
