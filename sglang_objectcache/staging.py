"""Reusable staging memory for sealed objects on their way to the store.

`batch_set_v1` copies each page from the host pool into an object buffer (header + the
layer-major payload) and PUTs straight from it. Fresh memory for every batch is not free:
each batch would fault in N x object_bytes of new pages, and numpy advises large arrays
for huge pages, so on a host with fragmented memory a fault can wait for compaction: more
than the copies and checksums together (measured in docs/storage.md, `benchmarks.storage`).

`StagingArena.rows(n, width)` lends `n` rows of `width` bytes from one kept buffer (the
largest batch seen: 128 pages of 8 MiB keep 1 GiB, as SGLang's NIXL backend keeps two
128-page bounce buffers). A caller that finds the buffer lent gets a fresh one. A buffer
comes back only when the block ends normally: after an error a request might still be
reading it, so it is dropped.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np


class StagingArena:
    def __init__(self) -> None:
        self._kept: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    @contextmanager
    def rows(self, n: int, width: int) -> Iterator[np.ndarray]:
        with self._lock:
            buf, self._kept = self._kept, None
        if buf is None or buf.shape[1] != width or buf.shape[0] < n:
            keep = buf.shape[0] if buf is not None and buf.shape[1] == width else 0
            buf = np.empty((max(n, keep), width), dtype=np.uint8)
        yield buf[:n]
        with self._lock:
            if self._kept is None or self._kept.shape[0] < buf.shape[0]:
                self._kept = buf
