"""Object keys known to exist: skips HEADs and PUTs for pages seen or written before.

Objects are content-addressed and immutable, so a known key is never stale in content; at
worst GC deleted it since, and the read turns into an ordinary miss (and forgets it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class KnownKeys:
    """Bounded LRU of object keys known to exist (content-addressed, so never stale in
    content; at worst deleted by GC, which turns into an ordinary miss on read)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        if not self.capacity:
            return
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._keys

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
