"""The host-DRAM tier of layerwise mode: recently fetched or written page objects.

SGLang's external-linker mode turns its own HiCache host tier off, so without this every
repeat hit of an evicted prefix would go back to the object store. Objects are kept whole
(header and all layers, exactly the stored bytes), so a hit is served layer by layer from
memory through the same verify-and-scatter path as a store hit.

Bounded: at most `capacity_bytes` of memory, least recently used out first. Pages fetched
together are kept as rows of one block (the loader assembles them with one copy per layer
and block); a block's memory returns only when its last row leaves, so a block counts in
full while any of its rows is kept, and `used` is the memory really held. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np


class _Block:
    __slots__ = ("nbytes", "rows")

    def __init__(self, nbytes: int):
        self.nbytes, self.rows = nbytes, 0


class HostTier:
    def __init__(self, capacity_bytes: int):
        self.capacity = max(0, int(capacity_bytes))
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._objs: OrderedDict[str, tuple[memoryview, _Block]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Optional[memoryview]:
        with self._lock:
            entry = self._objs.get(name)
            if entry is None:
                self.misses += 1
                return None
            self._objs.move_to_end(name)
            self.hits += 1
            return entry[0]

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._objs

    def put(self, name: str, obj) -> None:
        self.put_block([name], [obj], memoryview(obj).nbytes)

    def put_block(self, names: Sequence[str], rows, nbytes: Optional[int] = None) -> None:
        """Keep `rows[i]` as object `names[i]`; the rows share one allocation of `nbytes`
        (default: `rows.nbytes`, a 2-D array)."""
        nbytes = rows.nbytes if nbytes is None else nbytes
        if not self.capacity or nbytes > self.capacity or not names:
            return
        block = _Block(nbytes)
        with self._lock:
            for name, row in zip(names, rows):
                self._drop(name)
                self._objs[name] = (memoryview(row).cast("B"), block)
                block.rows += 1
            self.used += nbytes
            while self.used > self.capacity:
                self._drop(next(iter(self._objs)))

    def _drop(self, name: str) -> None:
        entry = self._objs.pop(name, None)
        if entry is not None:
            block = entry[1]
            block.rows -= 1
            if block.rows == 0:
                self.used -= block.nbytes

    def discard(self, name: str) -> None:
        with self._lock:
            self._drop(name)

    def clear(self) -> None:
        with self._lock:
            self._objs.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._objs)


class TierBlocks:
    """A load batch's store pages being assembled into host-tier objects: blocks of up to
    `per_block` pages, each [pages, object_bytes], filled a layer at a time from staging
    (one strided copy per block) and the header from the page's first range. On the
    loader's I/O thread only."""

    def __init__(self, store_pages: list, per_block: int, object_bytes: int):
        # (page indices, their staging rows as a slice where they are consecutive (no
        # temporary copy) else an index array, the block)
        self.blocks: list = []
        self._at: dict = {}  # page index -> (block, row)
        for k in range(0, len(store_pages), per_block):
            group = store_pages[k : k + per_block]
            for r, i in enumerate(group):
                self._at[i] = (len(self.blocks), r)
            rows = slice(group[0], group[-1] + 1) if group[-1] - group[0] == len(group) - 1 else np.array(group)
            self.blocks.append((group, rows, np.empty((len(group), object_bytes), np.uint8)))

    def header(self, page: int, raw: bytes) -> None:
        if page in self._at:
            k, r = self._at[page]
            self.blocks[k][2][r, : len(raw)] = np.frombuffer(raw, np.uint8)

    def layer(self, span: tuple[int, int], staged: np.ndarray) -> None:
        """Bytes `span` of every page, from a layer's staging rows (numpy releases the GIL)."""
        s, e = span
        for _, rows, block in self.blocks:
            block[:, s:e] = staged[rows]

    def put(self, tier: HostTier, names: list) -> None:
        """The finished objects into `tier`; nothing is assembled any more."""
        for pages, _, block in self.blocks:
            tier.put_block([names[i] for i in pages], block)
        self.blocks.clear()
