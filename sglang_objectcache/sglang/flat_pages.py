"""HiCacheStorage's legacy flat-page API (`get`, `set`, `batch_get`, `batch_set`) for
`ObjectCacheStorage`.

SGLang uses it only when it does not select the zero-copy v1 path (e.g. the `dynamic`
backend without `interface_v1`). A flat page is the host layout's own page order
(`get_data_page`). Same contract as v1: nothing raises into SGLang's threads, a page that
cannot be used is a miss (None, or False for a write), and a page proven corrupt in the
store is scrubbed (on fresh reads, never on the bytes that failed).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from sglang_objectcache.cache import CORRUPT
from sglang_objectcache.hostpool import seal_pages

logger = logging.getLogger(__name__)


class FlatPageAPI:
    """Mixed into ObjectCacheStorage: uses its cache, store and host pages."""

    def get(self, key, target_location=None, target_sizes=None) -> Optional[torch.Tensor]:
        return self.batch_get([key], [target_location] if target_location is not None else None)[0]

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        try:
            cache = self.cache
            if self.pages is None or not cache.can_read() or self._stopped():
                return [None] * len(keys)
            targets = target_locations or [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
            ks = cache.keys
            names = [ks.object_key(k) for k in keys]
            digests = [ks.content_digest(k) for k in keys]
            out, corrupt = [], []
            for name, digest, blob, flat in zip(names, digests, self.store.get_many(names), targets):
                reason = cache.verdict(name, blob, digest)
                if not reason:
                    payload = memoryview(blob).cast("B")[self.pages.geometry.header_bytes:]
                    self.pages.flat_page(flat).write_page(0, payload)
                    cache.known.add(name)
                elif reason == CORRUPT:
                    corrupt.append((name, digest))
                out.append(None if reason else flat)
            if corrupt:  # proven on fresh reads, never on the bytes that failed
                cache.scrub(*zip(*corrupt))
            hits = next((i for i, r in enumerate(out) if r is None), len(out))
            cache.observe_hits(names[:hits])
            return out
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_get failed")
            return [None] * len(keys)

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        try:
            cache = self.cache
            if self.pages is None or not cache.can_write() or self._stopped():
                return False
            ks, g = cache.keys, self.pages.geometry
            items = []
            for k, v in zip(keys, values):
                name = ks.object_key(k)
                if name not in cache.known:
                    row = np.empty((1, g.object_bytes), dtype=np.uint8)
                    sealed = seal_pages(self.pages.flat_page(v), [ks.content_digest(k)], [0], row)
                    items.append((name, next(sealed)))
            results = self.store.put_many(items, if_absent=True) if items else []
            return all(cache.wrote([n for n, _ in items], results, g.object_bytes))
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_set failed")
            return False
