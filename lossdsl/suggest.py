""" "Did you mean ...?": the nearest known name to a misspelt one.

A hostile spec can hold thousands of unknown names and thousands of declared ones, so the work
is bounded: a suggestion reads at most ``MAX_CANDIDATES`` known names of a similar length, ranks
them by the pairs of letters they share with the misspelt name, and compares only the best
``MAX_COMPARED`` of them with difflib; and within ``limit()`` (the checks of one spec) at most
``MAX_SUGGESTIONS`` suggestions are made, problems past them being reported without one.

>>> did_you_mean("Bce", ["bce", "mse"])
" Did you mean 'bce'?"
>>> did_you_mean_function("binary_crossentropy")
" Did you mean 'bce' (keras.losses.binary_crossentropy)?"
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import heapq
import itertools
from collections.abc import Iterable, Iterator

from lossdsl.catalog import LOSSES, function_names

__all__ = [
    "MAX_CANDIDATES",
    "MAX_COMPARED",
    "MAX_SUGGESTIONS",
    "did_you_mean",
    "did_you_mean_function",
    "limit",
]

MAX_CANDIDATES = 1000
"""Most known names one suggestion reads."""
MAX_COMPARED = 50
"""Most known names one suggestion compares with difflib (the cost of a suggestion)."""
MAX_SUGGESTIONS = 10
"""Most suggestions made while checking one spec."""

_left: contextvars.ContextVar[int | None] = contextvars.ContextVar("suggestions_left", default=None)


@contextlib.contextmanager
def limit(count: int = MAX_SUGGESTIONS) -> Iterator[None]:
    """Within this block, make at most ``count`` suggestions (then answer ``""``)."""
    token = _left.set(count)
    try:
        yield
    finally:
        _left.reset(token)


def _take() -> bool:
    """Whether one more suggestion may be made (and count it)."""
    left = _left.get()
    if left is None:
        return True
    if left <= 0:
        return False
    _left.set(left - 1)
    return True


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the candidate closest to ``name``, or ``""`` if none is
    close. The same name in another case (``MSE``, ``Bce``) is the closest of all.
    ``candidates`` is read lazily, and only if a suggestion may still be made."""
    if not _take():
        return ""
    # difflib's cutoff of 0.6 needs lengths within a factor of 7/3 of each other.
    n = len(name)
    similar = (
        c for c in candidates if isinstance(c, str) and 3 * len(c) <= 7 * n and 3 * n <= 7 * len(c)
    )
    pool = list(itertools.islice(similar, MAX_CANDIDATES))
    lower = {c.lower(): c for c in pool}
    if name.lower() in lower:
        return f" Did you mean '{lower[name.lower()]}'?"
    if len(pool) > MAX_COMPARED:
        pairs = _pairs(name)
        pool = heapq.nlargest(MAX_COMPARED, pool, key=lambda c: len(pairs & _pairs(c)))
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _pairs(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)}


def did_you_mean_function(name: str) -> str:
    """``did_you_mean`` among the functions a formula can call, knowing Keras's own names
    for the built-in losses (``binary_crossentropy`` is ``bce``)."""
    for entry in LOSSES.values():
        if entry.keras_name and name.lower() in (entry.keras_name, f"{entry.keras_name}_loss"):
            return f" Did you mean '{entry.name}' (keras.losses.{entry.keras_name})?"
    return did_you_mean(name, function_names())
