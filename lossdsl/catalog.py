"""Every function a formula can call, as data: one entry per function.

Three kinds of call exist:

* losses (``bce``, ``mse``, ... and those added with ``register_loss``): the first argument
  selects units, the rest are keywords; the value is the loss of the selected ``y_true`` and
  ``y_pred`` columns, one per sample;
* math functions (``abs``, ``min``, ``clip``, ...) on per-sample values;
* ``pred(u)`` and ``true(u)``: one unit of ``y_pred`` or ``y_true``.

An entry carries everything about its function: arity or keywords with their types and
ranges, the one-line summary that errors and ``lossdsl explain`` show, and its implementation
(``keras.ops`` for tensors; for a math function also a Python one, which the checks use to
evaluate constants). Adding a function is adding an entry. The implementations import Keras
only when they are first called, so validation never imports it.

>>> LOSSES["huber"].keywords["delta"].default
1.0
>>> MATH["clip"].signature
'clip(x, lo, hi)'
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lossdsl import kernels
from lossdsl.errors import echo
from lossdsl.kernels import ops

__all__ = [
    "ACCESSORS",
    "AGGREGATES",
    "BUILTIN_LOSSES",
    "LOSSES",
    "MATH",
    "RESERVED",
    "Accessor",
    "Aggregate",
    "Entry",
    "KeywordSpec",
    "LossEntry",
    "MathFunction",
    "check_identifier",
    "function_names",
    "lookup",
    "register_loss",
    "registry_version",
    "unregister_loss",
]


Labels = Literal["class indices", "one-hot"]
"""What a loss's labels are: class indices (a unit whose true side is one column and pred side
``k >= 2`` columns) or one value per predicted unit."""
Level = Literal["position", "example"]
"""What a loss gives one value for: each position, or each example."""


@dataclass(frozen=True)
class KeywordSpec:
    """One keyword argument of a loss: its type, default and allowed range."""

    name: str
    type: type[bool] | type[float]
    default: bool | float | None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    whole: bool = False
    """The value must be a whole number (a class index)."""
    labels: Labels | None = None
    """The kind of labels the keyword applies to, if not every kind."""

    def describe_range(self) -> str:
        if self.type is bool:
            return "true or false"
        if self.whole:
            return "a whole number"
        lo = "" if self.minimum is None else ("> " if self.exclusive_minimum else ">= ")
        if self.minimum is not None and self.maximum is not None:
            left = "(" if self.exclusive_minimum else "["
            return f"a number in {left}{self.minimum:g}, {self.maximum:g}]"
        if self.minimum is not None:
            return f"a number {lo}{self.minimum:g}"
        if self.maximum is not None:
            return f"a number <= {self.maximum:g}"
        return "a number"

    def accepts(self, value: bool | float) -> bool:
        """Whether the literal ``value`` has this keyword's type and lies in its range."""
        if self.type is bool or isinstance(value, bool):
            return self.type is bool and isinstance(value, bool)
        if self.whole and not float(value).is_integer():
            return False
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            return False
        return self.maximum is None or value <= self.maximum


@dataclass(frozen=True)
class LossEntry:
    """A loss a formula can call: ``name(units, keyword=value, ...)``."""

    name: str
    summary: str
    columns: Callable[..., Any]
    """``columns(y_true[..., S], y_pred[..., S], **keywords)``: one value per sample."""
    keywords: Mapping[str, KeywordSpec] = field(default_factory=dict)
    min_units: int = 1
    keras_name: str | None = None
    """The ``keras.losses`` function whose per-sample value this equals."""
    column: Callable[..., Any] | None = None
    """Keras's expression for each unit before its mean over the units (see ``kernels``)."""
    one_hot_column: Callable[..., Any] | None = None
    """``column`` for one-hot rows of class indices (labels exactly 0 or 1), if it has a form
    that does less work."""
    builtin: bool = True
    """Built-in losses compute in float32 for float16 and bfloat16 inputs."""
    sparse: Callable[..., Any] | None = None
    """For class-index labels: ``sparse(index, y_pred[..., S], **keywords)``. A loss without
    it compares ``y_pred`` with the one-hot rows of the index instead."""
    level: Level = "position"
    """An example-level loss gives one value per example: ``columns(y_true, y_pred, total,
    **keywords)``, where ``total(x)`` sums ``x`` over each example (or, with ``batch=true``,
    over the whole batch)."""


@dataclass(frozen=True)
class Aggregate:
    """``sum(e)`` or ``mean(e)``: a per-position value aggregated over each example."""

    name: str
    summary: str
    mean: bool
    keywords: Mapping[str, KeywordSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class MathFunction:
    """A math function of per-sample values: ``name(x)``, ``name(a, b)``, ..."""

    name: str
    args: tuple[str, ...]
    summary: str
    ops: Callable[..., Any]
    """The ``keras.ops`` implementation, on tensors."""
    py: Callable[..., float]
    """The same function on Python floats, for constants (raises where it is undefined)."""

    @property
    def arity(self) -> int:
        return len(self.args)

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(self.args)})"


@dataclass(frozen=True)
class Accessor:
    """``pred(u)`` or ``true(u)``: one unit of ``y_pred`` or ``y_true``, one value per sample."""

    name: str
    summary: str
    reads_pred: bool


Entry = LossEntry | MathFunction | Accessor | Aggregate


def _kw(name: str, default: float, **limits: Any) -> KeywordSpec:
    return KeywordSpec(name, float, float(default), **limits)


def _flag(name: str) -> KeywordSpec:
    return KeywordSpec(name, bool, False)


def _keras_loss(keras_name: str) -> Callable[..., Any]:
    def loss(y_true: Any, y_pred: Any, **keywords: Any) -> Any:
        return getattr(kernels.keras.losses, keras_name)(y_true, y_pred, **keywords)

    loss.__name__ = keras_name
    return loss


def _op(name: str) -> Callable[..., Any]:
    """``keras.ops.<name>``, looked up when it is called."""

    def op(*args: Any) -> Any:
        return getattr(ops, name)(*args)

    op.__name__ = name
    return op


def _builtin(
    name: str,
    keras_name: str,
    summary: str,
    *keywords: KeywordSpec,
    columns: Callable[..., Any] | None = None,
    **options: Any,
) -> LossEntry:
    keyword_specs = {k.name: k for k in keywords}
    loss = columns or _keras_loss(keras_name)
    return LossEntry(name, summary, loss, keyword_specs, keras_name=keras_name, **options)


_FROM_LOGITS = _flag("from_logits")
_SMOOTHING = _kw("label_smoothing", 0.0, minimum=0.0, maximum=1.0)
_BATCH = _flag("batch")

_BUILTINS = [
    _builtin(
        "bce",
        "binary_crossentropy",
        "binary crossentropy",
        _FROM_LOGITS,
        _SMOOTHING,
        column=kernels.bce_column,
    ),
    _builtin(
        "cce",
        "categorical_crossentropy",
        "categorical crossentropy over a slice of one-hot units, or of class indices "
        "(keras.losses.sparse_categorical_crossentropy)",
        _FROM_LOGITS,
        KeywordSpec("label_smoothing", float, 0.0, 0.0, 1.0, labels="one-hot"),
        KeywordSpec("ignore_class", float, None, whole=True, labels="class indices"),
        min_units=2,
        sparse=kernels.sparse_cce,
    ),
    _builtin(
        "focal",
        "binary_focal_crossentropy",
        "binary focal crossentropy; giving alpha turns on class balancing",
        _kw("gamma", 2.0, minimum=0.0),
        _kw("alpha", 0.25, minimum=0.0, maximum=1.0),
        _FROM_LOGITS,
        _SMOOTHING,
        columns=kernels.focal,
        column=kernels.focal_column,
        one_hot_column=kernels.focal_one_hot_column,
    ),
    _builtin("mse", "mean_squared_error", "mean squared error", column=kernels.mse_column),
    _builtin("mae", "mean_absolute_error", "mean absolute error", column=kernels.mae_column),
    _builtin(
        "mape",
        "mean_absolute_percentage_error",
        "mean absolute percentage error",
        column=kernels.mape_column,
    ),
    _builtin(
        "msle",
        "mean_squared_logarithmic_error",
        "mean squared logarithmic error",
        column=kernels.msle_column,
    ),
    _builtin(
        "huber",
        "huber",
        "Huber loss",
        _kw("delta", 1.0, minimum=0.0, exclusive_minimum=True),
        column=kernels.huber_column,
    ),
    _builtin(
        "log_cosh",
        "log_cosh",
        "logarithm of the hyperbolic cosine of the error",
        column=kernels.log_cosh_column,
    ),
    _builtin("kld", "kl_divergence", "Kullback-Leibler divergence"),
    _builtin("poisson", "poisson", "Poisson loss", column=kernels.poisson_column),
    _builtin("hinge", "hinge", "hinge loss (0/1 labels are mapped to -1/1)"),
    _builtin("squared_hinge", "squared_hinge", "squared hinge loss"),
    _builtin(
        "cosine",
        "cosine_similarity",
        "negative cosine similarity over a slice (between -1 and 1)",
        min_units=2,
    ),
    _builtin(
        "focal_cce",
        "categorical_focal_crossentropy",
        "categorical focal crossentropy over a slice of one-hot units",
        _kw("alpha", 0.25, minimum=0.0, maximum=1.0),
        _kw("gamma", 2.0, minimum=0.0),
        _FROM_LOGITS,
        _SMOOTHING,
        min_units=2,
    ),
    _builtin(
        "categorical_hinge",
        "categorical_hinge",
        "categorical hinge loss over a slice of one-hot units",
        min_units=2,
    ),
    _builtin(
        "dice",
        "dice",
        "Dice loss 1 - 2 sum(t p) / (sum(t) + sum(p)), one value per example",
        _BATCH,
        columns=kernels.dice,
        level="example",
    ),
    _builtin(
        "tversky",
        "tversky",
        "Tversky loss, Keras's weighting of alpha and beta, one value per example",
        _kw("alpha", 0.5, minimum=0.0),
        _kw("beta", 0.5, minimum=0.0),
        _BATCH,
        columns=kernels.tversky,
        level="example",
    ),
]

BUILTIN_LOSSES: Mapping[str, LossEntry] = MappingProxyType({e.name: e for e in _BUILTINS})

_losses: dict[str, LossEntry] = dict(BUILTIN_LOSSES)
LOSSES: Mapping[str, LossEntry] = MappingProxyType(_losses)
"""Every loss a formula can call: the built-ins and the registered ones."""


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


_MATH = [
    MathFunction("abs", ("x",), "absolute value", _op("abs"), abs),
    MathFunction("sqrt", ("x",), "square root", _op("sqrt"), math.sqrt),
    MathFunction("log", ("x",), "natural logarithm", _op("log"), math.log),
    MathFunction("exp", ("x",), "exponential", _op("exp"), math.exp),
    MathFunction("square", ("x",), "x * x", _op("square"), lambda x: x * x),
    MathFunction(
        "sigmoid",
        ("x",),
        "logistic sigmoid 1 / (1 + exp(-x)), a logit as a probability",
        _op("sigmoid"),
        lambda x: math.exp(min(x, 0.0) - math.log1p(math.exp(-abs(x)))),
    ),
    MathFunction("tanh", ("x",), "hyperbolic tangent", _op("tanh"), math.tanh),
    MathFunction(
        "divide_no_nan",
        ("a", "b"),
        "a / b, and 0 where b == 0 (with a finite gradient)",
        _op("divide_no_nan"),
        lambda a, b: a / b if b != 0 else 0.0,
    ),
    MathFunction("min", ("a", "b"), "the smaller of a and b", _op("minimum"), min),
    MathFunction("max", ("a", "b"), "the larger of a and b", _op("maximum"), max),
    MathFunction(
        "clip",
        ("x", "lo", "hi"),
        "min(max(x, lo), hi)",
        lambda x, lo, hi: ops.minimum(ops.maximum(x, lo), hi),
        _clip,
    ),
]

MATH: Mapping[str, MathFunction] = MappingProxyType({f.name: f for f in _MATH})
"""Math functions on per-sample values."""

AGGREGATES: Mapping[str, Aggregate] = MappingProxyType(
    {
        "sum": Aggregate("sum", "the sum over each example's positions", False, {"batch": _BATCH}),
        "mean": Aggregate(
            "mean", "the mean over each example's positions", True, {"batch": _BATCH}
        ),
    }
)
"""Aggregates of a per-position value over the positions of each example (with
``batch=true``, over the whole batch)."""

ACCESSORS: Mapping[str, Accessor] = MappingProxyType(
    {
        "pred": Accessor("pred", "one unit of y_pred, one value per sample", True),
        "true": Accessor("true", "one unit of y_true, one value per sample", False),
    }
)

RESERVED: frozenset[str] = frozenset({"where", "and", "or", "not", "true", "false", "u"})
"""Words that cannot name a unit, a parameter or a loss."""

_UNIT_NAME = re.compile(r"u[0-9]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_lock = threading.Lock()
_version = 0


def lookup(name: str) -> Entry | None:
    """The entry a call named ``name`` refers to, or ``None``."""
    return LOSSES.get(name) or MATH.get(name) or ACCESSORS.get(name) or AGGREGATES.get(name)


def registry_version() -> int:
    """Changes whenever ``register_loss`` changes the catalogue (for caches)."""
    return _version


def function_names() -> list[str]:
    """Every name a formula can call."""
    return [*LOSSES, *MATH, *AGGREGATES, *ACCESSORS]


def check_identifier(name: object, what: str) -> str | None:
    """Why ``name`` cannot name a ``what`` (unit, parameter, loss), or ``None``."""
    if not isinstance(name, str) or not _IDENT.match(name):
        return f"{what} names must be identifiers (letters, digits, '_'). Received: {echo(name)}."
    if name in RESERVED or _UNIT_NAME.match(name):
        return f"{echo(name)} is reserved by the language and cannot name a {what}."
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

    ``fn(y_true, y_pred, **kwargs)`` receives the selected columns, shape ``(..., n_units)``,
    and must return one value per sample, shape ``(...)``, using ``keras.ops``; each sample's
    value must depend on that sample alone (inside a ``where`` term, masked rows hold
    placeholder values). ``kwargs`` maps each keyword the loss accepts to its default; a
    ``bool`` default makes it a flag, anything else a number. The loss is validated exactly
    like a built-in: unknown keywords, wrong types and too few units are errors with a caret.

    >>> def sq_err(y_true, y_pred, scale=1.0):
    ...     from keras import ops
    ...     return scale * ops.sum(ops.square(y_true - y_pred), axis=-1)
    >>> register_loss("sq_err", sq_err, kwargs={"scale": 1.0})
    >>> LOSSES["sq_err"].keywords["scale"].default
    1.0
    >>> unregister_loss("sq_err")

    Registering a name again replaces the earlier registration; the built-in functions cannot
    be replaced. A model saved with a registered loss needs the same ``register_loss`` call
    before it is loaded.
    """
    global _version  # noqa: PLW0603 - a module-level counter guarded by _lock
    problem = check_identifier(name, "loss")
    if problem:
        raise ValueError(problem)
    if name in BUILTIN_LOSSES or name in MATH or name in ACCESSORS or name in AGGREGATES:
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
    entry = LossEntry(
        name, summary or f"registered loss {name}", fn, specs, min_units, builtin=False
    )
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
