"""The functions a formula can call, as data.

Three kinds of call exist:

* losses (``bce``, ``mse``, ... and those added with ``register_loss``): the
  first argument selects units, the rest are keywords; the value is the Keras
  loss of the selected ``y_true`` and ``y_pred`` columns, one per sample;
* math functions (``abs``, ``min``, ``clip``, ...) on per-sample values;
* ``pred(u)`` and ``true(u)``: one unit of ``y_pred`` or ``y_true``.

This module only describes them (arity, keywords, types, ranges); the Keras
implementations live in ``lossdsl.compiler`` so that validation never imports
Keras.

>>> LOSSES["huber"].keywords["delta"].default
1.0
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACCESSORS",
    "LOSSES",
    "MATH",
    "RESERVED",
    "KeywordSpec",
    "LossEntry",
    "check_identifier",
    "function_names",
    "register_loss",
    "registry_version",
    "unregister_loss",
]


@dataclass(frozen=True)
class KeywordSpec:
    """One keyword argument of a loss: its type, default and allowed range."""

    name: str
    type: type[bool] | type[float]
    default: bool | float
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False

    def describe_range(self) -> str:
        if self.type is bool:
            return "true or false"
        lo = "" if self.minimum is None else ("> " if self.exclusive_minimum else ">= ")
        if self.minimum is not None and self.maximum is not None:
            left = "(" if self.exclusive_minimum else "["
            return f"a number in {left}{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"a number {lo}{self.minimum:g}"
        if self.maximum is not None:
            return f"a number <= {self.maximum:g}"
        return "a number"

    def accepts(self, value: float) -> bool:
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            return False
        return self.maximum is None or value <= self.maximum


@dataclass(frozen=True)
class LossEntry:
    """A loss a formula can call."""

    name: str
    summary: str
    keywords: Mapping[str, KeywordSpec] = field(default_factory=dict)
    min_units: int = 1
    keras_name: str | None = None
    """The ``keras.losses`` function whose per-sample value this equals."""
    fn: Callable[..., Any] | None = None
    """For a registered loss: ``fn(y_true, y_pred, **kwargs)``."""


def _kw(name: str, default: float, **limits: Any) -> KeywordSpec:
    return KeywordSpec(name, float, float(default), **limits)


def _flag(name: str) -> KeywordSpec:
    return KeywordSpec(name, bool, False)


_FROM_LOGITS = _flag("from_logits")
_SMOOTHING = _kw("label_smoothing", 0.0, minimum=0.0, maximum=1.0)


def _entry(
    name: str, keras_name: str, summary: str, *kws: KeywordSpec, min_units: int = 1
) -> LossEntry:
    return LossEntry(name, summary, {k.name: k for k in kws}, min_units, keras_name)


_BUILTINS = [
    _entry("bce", "binary_crossentropy", "binary crossentropy", _FROM_LOGITS, _SMOOTHING),
    _entry(
        "cce",
        "categorical_crossentropy",
        "categorical crossentropy over a slice of one-hot units",
        _FROM_LOGITS,
        _SMOOTHING,
        min_units=2,
    ),
    _entry(
        "focal",
        "binary_focal_crossentropy",
        "binary focal crossentropy; giving alpha turns on class balancing",
        _kw("gamma", 2.0, minimum=0.0),
        _kw("alpha", 0.25, minimum=0.0, maximum=1.0),
        _FROM_LOGITS,
        _SMOOTHING,
    ),
    _entry("mse", "mean_squared_error", "mean squared error"),
    _entry("mae", "mean_absolute_error", "mean absolute error"),
    _entry("mape", "mean_absolute_percentage_error", "mean absolute percentage error"),
    _entry("msle", "mean_squared_logarithmic_error", "mean squared logarithmic error"),
    _entry("huber", "huber", "Huber loss", _kw("delta", 1.0, minimum=0.0, exclusive_minimum=True)),
    _entry("log_cosh", "log_cosh", "logarithm of the hyperbolic cosine of the error"),
    _entry("kld", "kl_divergence", "Kullback-Leibler divergence"),
    _entry("poisson", "poisson", "Poisson loss"),
    _entry("hinge", "hinge", "hinge loss (0/1 labels are mapped to -1/1)"),
    _entry("squared_hinge", "squared_hinge", "squared hinge loss"),
    _entry(
        "cosine",
        "cosine_similarity",
        "negative cosine similarity over a slice (between -1 and 1)",
        min_units=2,
    ),
]

BUILTIN_LOSSES: Mapping[str, LossEntry] = MappingProxyType({e.name: e for e in _BUILTINS})

_losses: dict[str, LossEntry] = dict(BUILTIN_LOSSES)
LOSSES: Mapping[str, LossEntry] = MappingProxyType(_losses)
"""Every loss a formula can call: the built-ins and the registered ones."""

MATH: Mapping[str, int] = MappingProxyType(
    {"abs": 1, "sqrt": 1, "log": 1, "exp": 1, "square": 1, "min": 2, "max": 2, "clip": 3}
)
"""Math functions on per-sample values, with their number of arguments."""

ACCESSORS: frozenset[str] = frozenset({"pred", "true"})
"""``pred(u)`` and ``true(u)``: one unit of ``y_pred`` or ``y_true``."""

RESERVED: frozenset[str] = frozenset({"where", "and", "or", "not", "true", "false", "u"})
"""Words that cannot name a unit, a parameter or a loss."""

_UNIT_NAME = re.compile(r"u[0-9]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_lock = threading.Lock()
_version = 0


def registry_version() -> int:
    """Changes whenever ``register_loss`` changes the catalog (for caches)."""
    return _version


def function_names() -> list[str]:
    """Every name a formula can call."""
    return [*LOSSES, *MATH, *sorted(ACCESSORS)]


def check_identifier(name: object, what: str) -> str | None:
    """Why ``name`` cannot name a ``what`` (unit, parameter, loss), or ``None``."""
    if not isinstance(name, str) or not _IDENT.match(name):
        return f"{what} names must be identifiers (letters, digits, '_'). Received: {name!r}."
    if name in RESERVED or _UNIT_NAME.match(name):
        return f"{name!r} is reserved by the language and cannot name a {what}."
    return None


def register_loss(
    name: str,
    fn: Callable[..., Any],
    *,
    kwargs: Mapping[str, bool | float] | None = None,
    min_units: int = 1,
    summary: str = "",
) -> None:
    """Make ``name(units, **kwargs)`` callable from formulas.

    ``fn(y_true, y_pred, **kwargs)`` receives the selected columns, shape
    ``(..., n_units)``, and must return one value per sample, shape
    ``(...)``, using ``keras.ops``; each sample's value must depend on that
    sample alone (inside a ``where`` term, masked rows hold placeholder
    values). ``kwargs`` maps each keyword the loss
    accepts to its default; a ``bool`` default makes it a flag, anything
    else a number. The loss is validated exactly like a built-in: unknown
    keywords, wrong types and too few units are errors with a caret.

    >>> def sq_err(y_true, y_pred, scale=1.0):
    ...     from keras import ops
    ...     return scale * ops.sum(ops.square(y_true - y_pred), axis=-1)
    >>> register_loss("sq_err", sq_err, kwargs={"scale": 1.0})
    >>> LOSSES["sq_err"].keywords["scale"].default
    1.0
    >>> unregister_loss("sq_err")

    Registering a name again replaces the earlier registration; the built-in
    losses cannot be replaced. A model saved with a registered loss needs the
    same ``register_loss`` call before it is loaded.
    """
    global _version  # noqa: PLW0603 - a module-level counter guarded by _lock
    problem = check_identifier(name, "loss")
    if problem:
        raise ValueError(problem)
    if name in BUILTIN_LOSSES or name in MATH or name in ACCESSORS:
        raise ValueError(f"{name!r} is a built-in function of lossdsl and cannot be re-registered.")
    if not callable(fn):
        raise TypeError(f"register_loss() needs a callable. Received: {type(fn).__name__}.")
    if not isinstance(min_units, int) or isinstance(min_units, bool) or min_units < 1:
        raise ValueError(f"min_units must be a positive int. Received: {min_units!r}.")
    specs: dict[str, KeywordSpec] = {}
    for key, default in (kwargs or {}).items():
        problem = check_identifier(key, "keyword")
        if problem:
            raise ValueError(problem)
        if isinstance(default, bool):
            specs[key] = KeywordSpec(key, bool, default)
        elif isinstance(default, int | float):
            specs[key] = KeywordSpec(key, float, float(default))
        else:
            raise TypeError(
                f"Keyword {key!r} of {name!r} needs a bool or number default. "
                f"Received: {default!r}."
            )
    entry = LossEntry(name, summary or f"registered loss {name}", specs, min_units, None, fn)
    with _lock:
        _losses[name] = entry
        _version += 1


def unregister_loss(name: str) -> None:
    """Remove a loss added with ``register_loss`` (built-ins stay)."""
    global _version  # noqa: PLW0603
    if name in BUILTIN_LOSSES:
        raise ValueError(f"{name!r} is a built-in loss and cannot be removed.")
    with _lock:
        if _losses.pop(name, None) is not None:
            _version += 1
