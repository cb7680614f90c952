"""A thread-safe least-recently-used cache bounded by entries and by total size.

The parse cache and the check cache hold formulas that users submit. Counting entries alone
would let a few thousand long formulas fill gigabytes, so each entry also states its size (the
characters it holds, roughly proportional to its memory) and the least recently used entries
go first once either bound is passed.

>>> cache = SizedCache(max_entries=2, max_size=10)
>>> cache.put("a", 1, size=6); cache.put("b", 2, size=6)
>>> cache.get("a"), cache.get("b")
(None, 2)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SizedCache"]

V = TypeVar("V")


class SizedCache(Generic[V]):
    """At most ``max_entries`` entries of at most ``max_size`` total size."""

    def __init__(self, *, max_entries: int, max_size: int) -> None:
        self.max_entries = max_entries
        self.max_size = max_size
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value kept for ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: V, *, size: int) -> None:
        """Keep ``value`` for ``key``; an entry larger than the whole cache is not kept."""
        if size > self.max_size:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._entries[key] = (value, size)
            self._size += size
            while len(self._entries) > self.max_entries or self._size > self.max_size:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The total size of the entries kept."""
        return self._size
