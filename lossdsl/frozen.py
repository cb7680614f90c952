"""Frozen dataclass trees whose equality, hashing, ``repr`` and pickling work at any depth.

``Frozen`` is the base of the AST nodes (``lossdsl.ast.Node``). Its subclasses are frozen,
slotted dataclasses declared with ``eq=False, repr=False``, so that these methods, not the
generated ones (which recurse once per level of the tree), serve them:

* ``==`` compares the fields that take part in comparison (``field(compare=False)`` ones,
  such as positions, do not), the same as a dataclass's ``==``;
* ``hash`` agrees with ``==``, and is kept in the node it was asked of;
* ``repr`` is the dataclass ``repr``, text for text;
* a pickle is a flat list of steps, rebuilt in one loop; a subtree that a tree holds twice is
  pickled once;
* a copy, shallow or deep, is the object itself (the tree is immutable).

Comparing, hashing and ``repr`` recurse as the generated methods do (the fields of a node are
compared, hashed or shown as a tuple, by Python itself: the fastest way for the small trees that
are the common case), but only ``SHALLOW`` calls deep in a thread; below that they go on with a
list as their stack. Pickling always uses a stack. So a tree of any depth works with little room
on the recursion limit. Tuples in fields are walked like nodes; any other value is compared,
hashed or shown as itself.

>>> from lossdsl.ast import Call, Unit
>>> a, b = Call("mse", (Unit(1, span=(4, 6)),)), Call("mse", (Unit(1),))
>>> a == b, hash(a) == hash(b), a
(True, True, Call(name='mse', args=(Unit(index=1),), kwargs=()))
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, NamedTuple, Self, TypeVar

__all__ = ["SHALLOW", "Frozen", "fold"]

SHALLOW = 12
"""How many calls of ``==``, ``hash`` or ``repr`` may nest in a thread before the rest of the
tree is walked with a stack (each takes a few levels of Python's recursion limit)."""

_T = TypeVar("_T")

Parts = Callable[[Any], Sequence[Any] | None]
"""What ``fold`` asks of each value: its parts, or ``None`` for a value folded as a leaf."""


class Frozen:
    """Base of frozen dataclasses whose protocols work for a tree of any depth."""

    __slots__ = ("_hash",)
    _hash: int

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not type(self):
            return NotImplemented
        depth = _depth.level
        if depth >= SHALLOW:
            return _equal(self, other)
        get = _layouts[type(self)].get
        _depth.level = depth + 1
        try:
            mine, theirs = get(self), get(other)
            same: bool = mine is theirs or mine == theirs
        finally:
            _depth.level = depth
        return same

    def __hash__(self) -> int:
        # Only the node hashed first, and those below SHALLOW calls, look for a hash kept or
        # keep theirs: between them, the nodes are hashed anew, at less cost than looking.
        depth = _depth.level
        if not depth or depth >= SHALLOW:
            known: int | None = getattr(self, "_hash", None)
            if known is not None:
                return known
            if depth:
                return _hash_tree(self)
        _depth.level = depth + 1
        try:
            h = hash(_key(self))
        finally:
            _depth.level = depth
        if not depth:
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        depth = _depth.level
        if depth >= SHALLOW:
            return _repr(self)
        _depth.level = depth + 1
        try:
            shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in _layouts[type(self)].compared)
        finally:
            _depth.level = depth
        return f"{type(self).__qualname__}({shown})"

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self

    def __reduce__(self) -> tuple[Callable[[list[tuple[int, Any]]], object], tuple[object, ...]]:
        return (_unflatten, (_flatten(self),))


def fold(
    root: object, parts: Parts, leaf: Callable[[Any], _T], build: Callable[[Any, list[_T]], _T]
) -> _T:
    """Fold the tree under ``root`` bottom-up, with a stack: ``leaf(value)`` for a value that
    ``parts`` gives no parts, else ``build(value, [what each of its parts folded to])``."""
    out: list[_T] = []
    stack: list[tuple[object, Sequence[object] | None]] = [(root, None)]
    while stack:
        value, known = stack.pop()
        if known is not None:
            start = len(out) - len(known)
            done = out[start:]
            del out[start:]
            out.append(build(value, done))
        elif (below := parts(value)) is None:
            out.append(leaf(value))
        else:
            stack.append((value, below))
            stack.extend((p, None) for p in reversed(below))
    return out[0]


class _Layout(NamedTuple):
    """What the protocols read of a ``Frozen`` class's instances."""

    compared: tuple[str, ...]
    """The fields that take part in comparison, hashing and ``repr``."""
    every: tuple[str, ...]
    """All the fields, in the order ``__init__`` takes them."""
    get: Callable[[Any], Any]
    """A getter of the compared fields: a tuple of them if there are several, else the one."""
    several: bool


class _Layouts(dict[type, _Layout]):
    def __missing__(self, cls: type) -> _Layout:
        every = fields(cls)
        compared = tuple(f.name for f in every if f.compare)
        get = operator.attrgetter(*compared)
        layout = _Layout(compared, tuple(f.name for f in every), get, len(compared) > 1)
        self[cls] = layout
        return layout


_layouts = _Layouts()


def _parts(compared: bool, done: Callable[[Frozen], bool]) -> Parts:
    """A ``parts`` for ``fold``: a node's field values (none if ``done(node)``), a tuple's
    items; anything else is a leaf."""

    def parts(value: object) -> Sequence[Any] | None:
        if isinstance(value, Frozen):
            if done(value):
                return None
            layout = _layouts[type(value)]
            return [getattr(value, f) for f in (layout.compared if compared else layout.every)]
        return value if type(value) is tuple else None

    return parts


def _equal(a: Frozen, b: Frozen) -> bool:
    stack: list[tuple[Any, Any]] = [(a, b)]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        x, y = pop()
        if x is y:
            continue
        kind = type(x)
        if kind is not type(y):  # equal only as plain values, such as 1 and 1.0
            if isinstance(x, Frozen | tuple) or isinstance(y, Frozen | tuple) or x != y:
                return False
        elif kind is tuple:
            if len(x) != len(y):
                return False
            extend(zip(x, y, strict=True))
        elif not isinstance(x, Frozen):
            if x != y:
                return False
        elif (layout := _layouts[kind]).several:
            extend(zip(layout.get(x), layout.get(y), strict=True))
        else:
            push((layout.get(x), layout.get(y)))
    return True


class _Depth(threading.local):
    level = 0
    """How many calls of ``==``, ``hash`` and ``repr`` on ``Frozen`` values are running in this
    thread."""


_depth = _Depth()


def _key(node: Frozen) -> tuple[Any, ...]:
    """What a node's hash is the hash of: its class and the fields that take part in
    comparison."""
    layout = _layouts[type(node)]
    values = layout.get(node)
    return (type(node), *values) if layout.several else (type(node), values)


def _hash_tree(root: Frozen) -> int:
    """``hash(_key(root))``, with the hash of every node under it computed first, bottom-up,
    so that hashing each key finds its nodes' hashes known."""

    def build(value: object, done: list[None]) -> None:
        if isinstance(value, Frozen):
            object.__setattr__(value, "_hash", hash(_key(value)))

    fold(root, _parts(True, lambda node: hasattr(node, "_hash")), lambda value: None, build)
    return root._hash


def _repr(root: Frozen) -> str:
    def build(value: object, texts: list[str]) -> str:
        if isinstance(value, Frozen):
            named = map("=".join, zip(_layouts[type(value)].compared, texts, strict=True))
            return f"{type(value).__qualname__}({', '.join(named)})"
        return f"({texts[0]},)" if len(texts) == 1 else f"({', '.join(texts)})"

    return fold(root, _parts(True, lambda node: False), repr, build)


# The steps of a pickle, read in order onto a stack: push a value; gather the last n values
# into a tuple; build a node of a class from the values of its fields; push again the n-th
# node built.
_VALUE, _TUPLE, _NODE, _AGAIN = range(4)


def _flatten(root: Frozen) -> list[tuple[int, Any]]:
    steps: list[tuple[int, Any]] = []
    built: dict[int, int] = {}  # the id of a node -> its place among the nodes built

    def leaf(value: object) -> None:
        again = isinstance(value, Frozen)
        steps.append((_AGAIN, built[id(value)]) if again else (_VALUE, value))

    def build(value: object, done: list[None]) -> None:
        if isinstance(value, Frozen):
            built[id(value)] = len(built)
            steps.append((_NODE, type(value)))
        else:
            steps.append((_TUPLE, len(done)))

    fold(root, _parts(False, lambda node: id(node) in built), leaf, build)
    return steps


def _unflatten(steps: list[tuple[int, Any]]) -> object:
    stack: list[Any] = []
    built: list[Frozen] = []
    for step, arg in steps:
        if step == _VALUE:
            stack.append(arg)
        elif step == _AGAIN:
            stack.append(built[arg])
        else:
            start = len(stack) - (len(_layouts[arg].every) if step == _NODE else arg)
            items = stack[start:]
            del stack[start:]
            if step == _NODE:
                built.append(arg(*items))
            stack.append(built[-1] if step == _NODE else tuple(items))
    return stack[0]
