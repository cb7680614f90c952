"""Hostile input: how long each case of ``tests/cases/hostile/`` takes, and how much memory.

For every case and every entry point that can carry it (``validate``, ``LossSpec``,
``load_spec`` of JSON, YAML and TOML files, ``lossdsl check --config --json`` and
``check --stdin``, in process), the CPU time of a call (the median of ``--repeats``), and for
the memory cases the peak memory a call allocates. Then the memory the parse and check caches
hold when full of formulas of the greatest length. The budgets are tests
(``tests/test_hostile.py``); this prints the figures they hold with, as a markdown section of
``benchmarks/RESULTS.md`` (``make bench`` runs it in a process of its own, without Keras).

    .venv/bin/python benchmarks/bench_hostile.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_hostile as hostile  # noqa: E402  (the cases and their runner)

import lossdsl  # noqa: E402
from lossdsl import parser, validation  # noqa: E402


def _case_rows(repeats: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, case in hostile.CASES:
            worst, where, peak = 0.0, "", 0
            for entry in hostile.entry_points(case):
                try:
                    times = [hostile.timed(entry, case, Path(tmp))[1] for _ in range(repeats)]
                except hostile.pytest.skip.Exception:
                    continue
                if statistics.median(times) > worst:
                    worst, where = statistics.median(times), entry
                if "megabytes" in case:
                    run = hostile.prepare(entry, case, Path(tmp))
                    tracemalloc.start()
                    with contextlib.suppress(lossdsl.LossDSLError):
                        run()
                    peak = max(peak, tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
            rows.append(
                {"file": kind, "case": case["id"], "seconds": worst, "entry": where, "peak": peak}
            )
    return rows


def _cache_bytes() -> tuple[float, float]:
    """Bytes a cached formula of the greatest length holds per character, and what both
    caches full of them hold."""
    parser.clear_cache()
    validation.clear_cache()
    text = hostile._longest_formula(0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lossdsl.validate(text, units=6)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_character = (after - before) / len(text)
    return per_character, per_character * (parser.CACHE_CHARACTERS + validation.CACHE_CHARACTERS)


def markdown(repeats: int) -> list[str]:
    hostile.lossdsl.parse("mse(u0)")  # build the Lark parser first: a process's one-off cost
    rows = _case_rows(repeats)
    per_character, full = _cache_bytes()
    lines = [
        "## Hostile input",
        "",
        "Every case of `tests/cases/hostile/` through every entry point that can carry it "
        "(`benchmarks/bench_hostile.py`): the CPU time of the slowest entry point (median of "
        f"{repeats} calls) against the budget of {hostile.BUDGET_SECONDS} s for any spec of at "
        "most 100 KB, and for the memory cases the peak memory one call allocates.",
        "",
        "| file | case | slowest | entry point | peak memory |",
        "|---|---|---:|---|---:|",
    ]
    for r in rows:
        peak = f"{r['peak'] / 2**20:.2f} MB" if r["peak"] else ""
        lines.append(
            f"| {r['file']} | {r['case']} | {r['seconds'] * 1000:.1f} ms | {r['entry']} | {peak} |"
        )
    slowest = max(rows, key=lambda r: r["seconds"])
    lines += [
        "",
        f"Slowest: {slowest['case']} ({slowest['entry']}), {slowest['seconds'] * 1000:.0f} ms. "
        f"A cached formula of the greatest length holds {per_character:.0f} bytes a character; "
        f"the parse and check caches full of them ({parser.CACHE_CHARACTERS:,} characters "
        f"each) hold {full / 2**20:.0f} MB, whatever the number of distinct formulas.",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print("\n".join(markdown(args.repeats)))


if __name__ == "__main__":
    main()
