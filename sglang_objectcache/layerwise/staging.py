"""Staging buffers of the layerwise loader: host memory a layer of a batch's pages lands in
before it is scattered into the device KV pool. One user, the loader's I/O thread.

Buffers come from the fetcher (`fetch.alloc`: pinned tensors, or shared segments its
worker process maps) and are reused whole: pinned allocations (GPU machines, for
asynchronous H2D) and shared segments are expensive.
"""

from __future__ import annotations

import torch

from sglang_objectcache.layerwise.settings import PAGES_PER_TRANSFER


class StagingPool:
    def __init__(self, fetch, keep: int):
        """Keeps at most `keep` free buffers; more go back to `fetch`."""
        self.fetch = fetch
        self.keep = keep
        self.free: list[torch.Tensor] = []  # buffers to reuse, whole
        self._whole: dict[int, torch.Tensor] = {}  # data_ptr -> every buffer made, whole
        self._in_copy: list = []  # (buffer, CUDA event) still being read by an H2D copy

    def take(self, n: int) -> torch.Tensor:
        """The first `n` rows of a staging buffer."""
        if self._in_copy:
            self.give_back(t for t, ev in self._in_copy if ev.query())
            self._in_copy = [(t, ev) for t, ev in self._in_copy if not ev.query()]
        extra = max(0, len(self.free) - self.keep)
        for t in self.free[:extra]:
            self._whole.pop(t.data_ptr(), None)
            self.fetch.release(t)
        del self.free[:extra]
        for k, t in enumerate(self.free):
            if t.shape[0] >= n:
                return self.free.pop(k)[:n]
        t = self.fetch.alloc(max(n, PAGES_PER_TRANSFER))  # small batches share one
        self._whole[t.data_ptr()] = t
        return t[:n]

    def give_back(self, staging) -> None:
        """Staging no longer used, for reuse: the whole buffer each came from, not the rows
        the batch used (else buffers shrink to the smallest batch, and every larger one
        makes new ones)."""
        self.free.extend(self._whole.get(t.data_ptr(), t) for t in staging)

    def give_back_after(self, staging: torch.Tensor, event) -> None:
        """Pinned host memory: reuse it only once the H2D copy (`event`) has read it."""
        self._in_copy.append((staging, event))
