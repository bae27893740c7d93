"""The bounded cache every in-memory cache of mailpipe uses."""

from __future__ import annotations

import pytest

from mailpipe.lru import BoundedCache


def test_the_entry_put_longest_ago_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a read does not reorder
    cache.put("c", 3)
    assert cache.items() == [("b", 2), ("c", 3)]
    assert "a" not in cache
    assert cache.get("a") is None


def test_putting_again_makes_an_entry_the_newest() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.items() == [("a", 10), ("c", 3)]
    assert len(cache) == 2


def test_weight_bounds_keep_the_newest_even_when_it_alone_is_too_heavy() -> None:
    cache: BoundedCache[int, str] = BoundedCache(10, max_weight=5, weigh=len)
    cache.put(1, "ab")
    cache.put(2, "cd")
    assert cache.weight == 4
    cache.put(3, "ef")
    assert cache.items() == [(2, "cd"), (3, "ef")]
    cache.put(2, "c")  # replacing adjusts the weight
    assert cache.weight == 3
    cache.put(4, "too heavy")
    assert cache.items() == [(4, "too heavy")]
    assert cache.weight == 9


def test_pop_forgets_and_gives_back_the_value() -> None:
    cache: BoundedCache[str, str] = BoundedCache(3, max_weight=100, weigh=len)
    cache.put("a", "xyz")
    assert cache.pop("a") == "xyz"
    assert cache.pop("a") is None
    assert len(cache) == 0
    assert cache.weight == 0
    assert not cache


def test_weight_and_weigh_go_together() -> None:
    with pytest.raises(ValueError, match="together"):
        BoundedCache[str, str](3, max_weight=10)
