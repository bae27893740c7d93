"""A cache bounded by a number of entries and, optionally, by their total weight.

Past a bound the entry put longest ago is dropped first (putting a key again
makes it the newest). Reading does not reorder: :meth:`BoundedCache.get` is a
plain dict lookup, atomic under the GIL, so threads may read without a lock
while one writer at a time (under the caller's lock) puts and pops.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``max_items`` entries and, with ``max_weight``, at most that much
    ``weigh(value)`` in total (the newest entry is kept even when it alone weighs more).

    Not locked: callers that write from several threads hold their own lock
    around :meth:`put` and :meth:`pop`; :meth:`get` needs none.
    """

    def __init__(
        self,
        max_items: int,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
    ) -> None:
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self._data: OrderedDict[K, V] = OrderedDict()
        self._max_items = max_items
        self._max_weight = max_weight
        self._weigh = weigh
        self._weight = 0

    def get(self, key: K) -> V | None:
        """The value put under ``key``, or None; does not reorder."""
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the newest entry; drop the oldest past the bounds."""
        if self._weigh is not None:
            if key in self._data:
                self._weight -= self._weigh(self._data[key])
            self._weight += self._weigh(value)
        self._data[key] = value  # replaced in place: a reader never misses the key
        self._data.move_to_end(key)
        while len(self._data) > self._max_items or (
            self._max_weight is not None and self._weight > self._max_weight and len(self._data) > 1
        ):
            _, dropped = self._data.popitem(last=False)
            if self._weigh is not None:
                self._weight -= self._weigh(dropped)

    def pop(self, key: K) -> V | None:
        """Forget ``key``: its value, or None when it was not kept."""
        if key not in self._data:
            return None
        value = self._data.pop(key)
        if self._weigh is not None:
            self._weight -= self._weigh(value)
        return value

    @property
    def weight(self) -> int:
        """Total weight of the entries kept (0 without ``weigh``)."""
        return self._weight

    def items(self) -> list[tuple[K, V]]:
        """Every entry, oldest first (a copy)."""
        return list(self._data.items())

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
