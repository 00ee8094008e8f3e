"""Client data made on first use and kept in a bounded LRU.

A federation of 1,000 clients of which 10 train per round should cost the
memory of the few in use, not of all of them (docs/performance.md, figure 5). The
synthetic world makes any client's split from (config, seed, client) alone,
and vision features are cached on disk, so an evicted client is rebuilt
bit-for-bit when it is next sampled.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")


class LazyClientData(Mapping[str, V], Generic[V]):
    """client id -> value, built by ``make(cid)`` when first asked for; at most ``capacity`` kept."""

    def __init__(self, ids: list[str], make: Callable[[str], V], capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._ids = list(ids)
        self._known = set(self._ids)
        self._make = make
        self._cache: OrderedDict[str, V] = OrderedDict()
        self.capacity = capacity
        self.builds = 0  # how many times a value was made, and the seconds it took (benchmarks read them)
        self.build_s = 0.0

    def __getitem__(self, cid: str) -> V:
        if cid not in self._known:
            raise KeyError(cid)
        if cid in self._cache:
            self._cache.move_to_end(cid)
            return self._cache[cid]
        t0 = time.perf_counter()
        value = self._make(cid)
        self.build_s += time.perf_counter() - t0
        self.builds += 1
        self._cache[cid] = value
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return value

    def __contains__(self, cid: object) -> bool:  # Mapping's default would build the value
        return cid in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)
