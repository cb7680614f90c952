"""Validation throughput, the hot path of a service that checks user formulas.

Prints, for typical two-to-four-term formulas, on one core:

* distinct formulas per second through ``lossdsl.validate`` (parse, check, lints),
  and through its stages alone (Lark's parse, the checks);
* repeated formulas per second (served from the parse cache);
* formulas per second through ``lossdsl check --stdin`` (in process).

Medians of several rounds. Nothing here is a test.

    .venv/bin/python benchmarks/bench_validate.py [--n 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
import warnings

import lossdsl
from lossdsl import parser
from lossdsl.cli import main as cli_main
from lossdsl.validate import check

UNITS = {"presence": 0, "loc": 1, "box": [2, 6]}


def formulas(n: int, salt: int) -> list[str]:
    shapes = [
        "{a}*bce(presence) + {b}*mse(loc) where true(presence) == 1",
        "bce(presence, from_logits=true) + {a}*huber(box, delta={b}) where pred(presence) > 0.{s}",
        "{a}*focal(presence, gamma=2) + mse(loc) + {b}*mae(box) where true(presence) >= 0.{s}",
        "abs(pred(loc) - true(loc)) + {a}*bce(presence) + {b}*log_cosh(box) + mse(loc) * {a}",
    ]
    return [shapes[i % 4].format(a=1 + i % 7, b=f"0.{1 + i % 9}{salt}", s=i) for i in range(n)]


def rate(fn, items: list[str]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    parser._get_parser()
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    for r in range(args.rounds):
        items = formulas(args.n, r)
        parser._parse_cached.cache_clear()
        record("parse (Lark LALR + AST), distinct", rate(lossdsl.parse, items))
        record("check (parsed, cached), distinct", rate(lambda f: check(f, units=UNITS), items))
        items = formulas(args.n, r + 100)
        parser._parse_cached.cache_clear()
        record("validate, distinct", rate(lambda f: lossdsl.validate(f, units=UNITS), items))
        record("validate, repeated", rate(lambda f: lossdsl.validate(f, units=UNITS), items))
        items = formulas(args.n, r + 200)
        parser._parse_cached.cache_clear()
        stdin = io.StringIO("\n".join(items) + "\n")
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            old, sys.stdin = sys.stdin, stdin
            try:
                cli_main(
                    ["check", "--stdin", "--units", '{"presence": 0, "loc": 1, "box": [2, 6]}']
                )
            finally:
                sys.stdin = old
        record("check --stdin, distinct", args.n / (time.perf_counter() - start))

    print(f"{'what':40} {'formulas/s (median)':>20}")
    for name, values in results.items():
        print(f"{name:40} {statistics.median(values):>20,.0f}")


if __name__ == "__main__":
    main()
