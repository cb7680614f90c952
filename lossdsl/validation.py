"""``validate``: parse, check and lint a formula, cached at the API boundary.

A service validates the same few specs again and again, and a training script builds its loss
from the spec it just validated, so the result of ``checker.check`` is kept, keyed by the
formula's text (or tree) and the arguments; the parse is cached by text in ``lossdsl.parser``.
Only successful checks are kept: a spec with problems is checked again each time.

>>> validate("0.7*bce(presence) + 0.3*mse(loc) where true(presence) == 1",
...          units={"presence": 0, "loc": 1})
Formula(expr=Sum(...))
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lossdsl import ast, checker
from lossdsl.arguments import UnitsArg
from lossdsl.catalog import registry_version
from lossdsl.checker import Checked
from lossdsl.errors import LossValidationError
from lossdsl.lints import LossDSLWarning, lint
from lossdsl.parser import parse

__all__ = ["CACHE_SIZE", "check", "clear_cache", "validate"]

CACHE_SIZE = 4096
"""How many checked specs are kept (the least recently used go first)."""


@dataclass
class _Entry:
    checked: Checked
    lints: list[LossValidationError] | None = None


_cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_lock = threading.Lock()


_SCALARS = (int, float, str, bool, type(None))


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a ``units`` or ``params`` argument that tells apart what the
    checks tell apart (``1`` from ``True`` and ``1.0``); ``TypeError`` if there is none.
    The plain types, which almost every call passes, are told by their exact type first."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if kind is dict or isinstance(value, Mapping):
        return (Mapping, tuple((_freeze(k), _freeze(v)) for k, v in value.items()))
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        return (list, tuple(_freeze(v) for v in value))
    hash(value)
    return (kind, value)


def _entry(
    formula: str | ast.Formula,
    units: UnitsArg,
    params: Mapping[str, Any] | None,
    allow_negative: bool,
) -> _Entry:
    try:
        key = (formula, _freeze(units), _freeze(params), allow_negative, registry_version())
    except TypeError:  # an unhashable argument: check it uncached (and report it)
        key = None
    if key is not None:
        with _lock:
            hit = _cache.get(key)
            if hit is not None:
                _cache.move_to_end(key)
                return hit
    parsed = parse(formula) if isinstance(formula, str) else formula
    entry = _Entry(checker.check(parsed, units=units, params=params, allow_negative=allow_negative))
    if key is not None:
        with _lock:
            _cache[key] = entry
            if len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return entry


def check(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
) -> Checked:
    """``checker.check`` of the parsed formula, cached (see the module's docstring)."""
    return _entry(formula, units, params, allow_negative).checked


def clear_cache() -> None:
    """Forget every checked spec (the parse cache is ``lossdsl.parser``'s)."""
    with _lock:
        _cache.clear()


def validate(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
    strict: bool = False,
) -> ast.Formula:
    """Check ``formula`` against the output's ``units`` and the ``params``.

    Args:
        formula: formula text or a parsed ``Formula``.
        units: the output width (``int``), a mapping of unit names to a column index or
            ``[start, stop]``, or ``None`` when the width is only known when the loss is
            called (names are then unavailable).
        params: parameter names to finite float values.
        allow_negative: accept terms with negative constant weights.
        strict: raise the lints (``LD101`` ...) as errors instead of warning with them (see
            ``lossdsl.lints``).

    Returns the parsed ``Formula``. Raises ``LossSyntaxError`` or ``LossValidationError``
    listing every problem, each with its caret.
    """
    entry = _entry(formula, units, params, allow_negative)
    if entry.lints is None:
        entry.lints = lint(entry.checked)
    if entry.lints:
        if strict:
            raise LossValidationError.collect(entry.lints)
        for e in entry.lints:
            warnings.warn(LossDSLWarning(str(e)), stacklevel=2)
    return entry.checked.formula
