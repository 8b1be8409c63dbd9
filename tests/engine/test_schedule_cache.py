from __future__ import annotations

import numpy as np

from engine.cache import OutputCache, cache_key, estimate_nbytes
from engine.schedule import Schedule, topological_order


def test_topological_order_is_depth_first_post_order() -> None:
    inputs = {"out": ["c", "d"], "c": ["a"], "d": ["b"], "a": [], "b": []}
    assert topological_order(["out"], inputs) == ["a", "c", "b", "d", "out"]


def test_schedule_prefers_order_and_releases_when_consumers_done() -> None:
    order = ["a", "c", "b", "d", "out"]
    inputs = {"c": ["a"], "d": ["b", "a"], "out": ["c", "d"]}
    s = Schedule(order, inputs, keep={"out"})
    ran, released = [], []
    while s.has_ready():
        node = s.pop()
        ran.append(node)
        released += s.done(node)
    assert ran == order
    assert s.finished()
    assert released == ["b", "a", "c", "d"]


def test_available_inputs_do_not_block() -> None:
    s = Schedule(["c"], {"c": ["a", "b"]}, available={"a", "b"})
    assert s.pop() == "c"
    assert sorted(s.done("c")) == ["a", "b", "c"]


def test_cache_key_depends_on_content_not_ids() -> None:
    up = cache_key("A", "1", {"x": 1}, {})
    assert up == cache_key("A", "1", {"x": 1}, {})
    assert up != cache_key("A", "2", {"x": 1}, {})
    assert up != cache_key("A", "1", {"x": 2}, {})
    assert up != cache_key("A", "1", {"x": 1}, {}, fingerprint="f")
    down = cache_key("B", "1", {}, {"in": (up, 0)})
    assert down != cache_key("B", "1", {}, {"in": (up, 1)})
    assert cache_key("A", "1", {"x": 1, "y": 2}, {}) == cache_key("A", "1", {"y": 2, "x": 1}, {})


def test_output_cache_lru_by_bytes_and_entries() -> None:
    cache = OutputCache(max_bytes=3000, max_entries=10)
    blob = np.zeros(1000, dtype=np.uint8)
    assert estimate_nbytes((blob,)) >= 1000
    for key in "abc":
        cache.put(key, (blob,), None)
    assert len(cache) == 2  # 3 x ~1064 bytes > 3000
    assert "a" not in cache and cache.get("b") is not None
    cache.put("d", (blob,), None)  # b was used last, so c goes
    assert "c" not in cache and "b" in cache and "d" in cache
    assert not cache.put("huge", (np.zeros(5000, dtype=np.uint8),), None)
    assert "huge" not in cache and cache.nbytes <= 3000
    small = OutputCache(max_bytes=10**6, max_entries=2)
    for key in "xyz":
        small.put(key, (1,), None)
    assert len(small) == 2 and "x" not in small
