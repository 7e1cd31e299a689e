"""The explorer's tile cache: PNG bytes by the content they depict, bounded in bytes.

A key is a tile's render request in canonical JSON (fractal, exact view, size,
iterations, palette, Julia constant): equal requests render equal bytes, so
any tile rendered once is served from here to every browser until it is the
least recently used and the cache needs its room.
"""

from __future__ import annotations

from collections import OrderedDict

from fractalq import config


class TileCache:
    """Least recently used first out, at most ``capacity`` bytes of values."""

    def __init__(self, capacity: int = config.TILE_CACHE_BYTES) -> None:
        if capacity < 0:
            raise ValueError("a cache's capacity cannot be negative")
        self.capacity = capacity
        self.size = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def get(self, key: bytes) -> bytes | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Keep ``value``, dropping the least recently used until it fits.

        A value larger than the whole cache is not kept.
        """
        cost = len(key) + len(value)
        if cost > self.capacity:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= len(key) + len(old)
        while self.size + cost > self.capacity:
            dropped_key, dropped = self._items.popitem(last=False)
            self.size -= len(dropped_key) + len(dropped)
            self.evictions += 1
        self._items[key] = value
        self.size += cost
