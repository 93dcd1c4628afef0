"""The host-DRAM tier of layerwise mode: recently fetched or written page objects.

SGLang's external-linker mode turns its own HiCache host tier off, so without this every
repeat hit of an evicted prefix would go back to the object store. Objects are kept whole
(header and all layers, exactly the stored bytes), so a hit is served layer by layer from
memory through the same verify-and-scatter path as a store hit.

Bounded: at most `capacity_bytes` of payload, least recently used out first. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional


class HostTier:
    def __init__(self, capacity_bytes: int):
        self.capacity = max(0, int(capacity_bytes))
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._objs: OrderedDict[str, memoryview] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Optional[memoryview]:
        with self._lock:
            obj = self._objs.get(name)
            if obj is None:
                self.misses += 1
                return None
            self._objs.move_to_end(name)
            self.hits += 1
            return obj

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._objs

    def put(self, name: str, obj) -> None:
        mv = memoryview(obj).cast("B")
        if not self.capacity or mv.nbytes > self.capacity:
            return
        with self._lock:
            old = self._objs.pop(name, None)
            if old is not None:
                self.used -= old.nbytes
            self._objs[name] = mv
            self.used += mv.nbytes
            while self.used > self.capacity:
                _, dropped = self._objs.popitem(last=False)
                self.used -= dropped.nbytes

    def discard(self, name: str) -> None:
        with self._lock:
            old = self._objs.pop(name, None)
            if old is not None:
                self.used -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._objs.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._objs)
