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

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lossdsl import ast, checker
from lossdsl.arguments import MAX_ITEMS, MAX_NESTING, UnitsArg, bounded
from lossdsl.cache import SizedCache
from lossdsl.catalog import registry_version
from lossdsl.checker import Checked
from lossdsl.errors import LossTypeError, LossValidationError, echo
from lossdsl.lints import LossDSLWarning, lint
from lossdsl.parser import parse
from lossdsl.trees import check_well_formed

__all__ = ["CACHE_CHARACTERS", "CACHE_SIZE", "check", "clear_cache", "validate"]

CACHE_SIZE = 4096
"""How many checked specs are kept (the least recently used go first)."""
CACHE_CHARACTERS = 250_000
"""How large the kept specs are at most, in characters of formula text plus one for each
entry and item of their ``units`` and ``params``."""


@dataclass
class _Entry:
    checked: Checked
    lints: list[LossValidationError] | None = None


_cache: SizedCache[_Entry] = SizedCache(max_entries=CACHE_SIZE, max_size=CACHE_CHARACTERS)


def _freeze(value: Any, budget: list[int]) -> Any:
    """A hashable stand-in for a ``units`` or ``params`` argument that tells apart what the
    checks tell apart (``1`` from ``True`` and ``1.0``); ``TypeError`` if there is none, or if
    the argument nests deeper than ``MAX_NESTING`` or holds more items than are left in
    ``budget`` (it is then checked uncached, and ``arguments.bounded`` says what is wrong).
    Texts and ints stand for themselves, which no other stand-in (a tuple) can equal. Each
    entry and item is taken from ``budget[0]``."""
    kind = type(value)
    if kind is int or value is None:
        return value
    return _frozen(value, 0, budget)


def _frozen(value: Any, depth: int, budget: list[int]) -> Any:
    kind = type(value)
    if kind is str or kind is int:
        return value
    if kind is float or kind is bool or value is None:
        return (kind, value)
    if depth == MAX_NESTING:
        raise TypeError("nested too deep to be a key")
    if kind is dict or isinstance(value, Mapping):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise TypeError("too large to be a key")
        depth += 1
        return (
            Mapping,
            tuple(
                [(_frozen(k, depth, budget), _frozen(v, depth, budget)) for k, v in value.items()]
            ),
        )
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise TypeError("too large to be a key")
        depth += 1
        return (list, tuple([_frozen(v, depth, budget) for v in value]))
    hash(value)
    return (kind, value)


def _entry(
    formula: str | ast.Formula,
    units: UnitsArg,
    params: Mapping[str, Any] | None,
    allow_negative: bool,
    learned: Mapping[str, Any] | None = None,
) -> _Entry:
    if not isinstance(allow_negative, bool):
        raise LossTypeError(
            f"allow_negative must be true or false. Received: {echo(allow_negative)}."
        )
    if isinstance(formula, ast.Formula):  # checked before it is a key (a parsed one at once)
        check_well_formed(formula)
    budget = [MAX_ITEMS]
    try:
        frozen = (_freeze(units, budget), _freeze(params, budget), _freeze(learned, budget))
        key = (formula, *frozen, allow_negative, registry_version())
    except TypeError:  # unhashable, or too large: checked uncached (and reported)
        key = None
    if key is not None:
        hit = _cache.get(key)
        if hit is not None:
            return hit
    bounded(units, "units")
    bounded(params, "params")
    bounded(learned, "learned")
    parsed = parse(formula) if isinstance(formula, str) else formula
    checked = checker.check(
        parsed, units=units, params=params, learned=learned, allow_negative=allow_negative
    )
    entry = _Entry(checked)
    if key is not None:
        text = formula if isinstance(formula, str) else formula.text()
        _cache.put(key, entry, size=len(text) + 1 + MAX_ITEMS - budget[0])
    return entry


def check(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    learned: Mapping[str, Any] | None = None,
    allow_negative: bool = False,
) -> Checked:
    """``checker.check`` of the parsed formula, cached (see the module's docstring)."""
    return _entry(formula, units, params, allow_negative, learned).checked


def clear_cache() -> None:
    """Forget every checked spec (the parse cache is ``lossdsl.parser``'s)."""
    _cache.clear()


def validate(
    formula: str | ast.Formula,
    *,
    units: UnitsArg,
    params: Mapping[str, Any] | None = None,
    learned: Mapping[str, Any] | None = None,
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
        learned: the names of the parameters that training learns, to their initial values
            (a weight one of them drives must stay at or above 0 whatever its value).
        allow_negative: accept terms with negative constant weights.
        strict: raise the lints (``LD101`` ...) as errors instead of warning with them (see
            ``lossdsl.lints``).

    Returns the parsed ``Formula``. Raises ``LossSyntaxError`` or ``LossValidationError``
    listing every problem, each with its caret.
    """
    entry = _entry(formula, units, params, allow_negative, learned)
    if entry.lints is None:
        entry.lints = lint(entry.checked)
    if entry.lints:
        if strict:
            raise LossValidationError.collect(entry.lints)
        for e in entry.lints:
            _warn(LossDSLWarning(str(e)))
    return entry.checked.formula


_registries: dict[str, dict[Any, Any]] = {}
_REGISTRY_ENTRIES = 1000


def _warn(warning: Warning) -> None:
    """``warnings.warn(warning, stacklevel=3)`` (at the caller of ``validate``), with a
    registry of warnings already shown that is bounded: Python keeps one entry per distinct
    message for each calling module, forever, and each lint's message is distinct."""
    frame = sys._getframe(2)
    filename = frame.f_code.co_filename
    if filename not in _registries and len(_registries) >= _REGISTRY_ENTRIES:
        _registries.clear()
    registry = _registries.setdefault(filename, {})
    if len(registry) > _REGISTRY_ENTRIES:  # forget the older half (a dict keeps its order)
        for key in list(registry)[: _REGISTRY_ENTRIES // 2]:
            if key != "version":
                del registry[key]
    # As warnings.warn names the module (a caller without __name__, such as exec'd code, is
    # "<string>"); the module's globals are not passed, since they only serve to find the
    # source line, and finding it for __main__ of python -c raises ImportError.
    warnings.warn_explicit(
        warning,
        type(warning),
        filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__", "<string>"),
        registry=registry,
    )
