""" "Did you mean ...?": the nearest known name to a misspelt one.

>>> did_you_mean("Bce", ["bce", "mse"])
" Did you mean 'bce'?"
>>> did_you_mean_function("binary_crossentropy")
" Did you mean 'bce' (keras.losses.binary_crossentropy)?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lossdsl.catalog import LOSSES, function_names

__all__ = ["did_you_mean", "did_you_mean_function"]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the candidate closest to ``name``, or ``""`` if none is
    close. The same name in another case (``MSE``, ``Bce``) is the closest of all."""
    pool = list(candidates)
    lower = {c.lower(): c for c in pool}
    if name.lower() in lower:
        return f" Did you mean '{lower[name.lower()]}'?"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def did_you_mean_function(name: str) -> str:
    """``did_you_mean`` among the functions a formula can call, knowing Keras's own names
    for the built-in losses (``binary_crossentropy`` is ``bce``)."""
    for entry in LOSSES.values():
        if entry.keras_name and name.lower() in (entry.keras_name, f"{entry.keras_name}_loss"):
            return f" Did you mean '{entry.name}' (keras.losses.{entry.keras_name})?"
    return did_you_mean(name, function_names())
