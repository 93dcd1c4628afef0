"""Store health: a store that failed store-wide is left alone for a while.

Only store-wide failures (connection, timeout, 5xx, throttling) open a window; the cache
core (`cache.ObjectCache.note_error`) keeps one for reads and lookups and one for writes,
so a failed read never fails a write. While a window is open its side answers at once
(a miss, a skipped write) instead of waiting on the store again.
"""

from __future__ import annotations

import logging
import threading
import time

from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)


class DownWindow:
    """A store that failed store-wide is left alone for `ttl` seconds."""

    def __init__(self, ttl: float, what: str):
        self.ttl, self.what = ttl, what
        self._until = 0.0
        self._reason = ""
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return time.monotonic() < self._until

    def open(self, err: StoreError) -> None:
        with self._lock:
            first = not self
            self._until = time.monotonic() + self.ttl
            self._reason = str(err)
        if first:
            logger.warning("objectcache: store error (%s): %s; %s for %.1fs", err.kind, err, self.what, self.ttl)

    def ok(self) -> None:
        if self._reason and not self:
            with self._lock:
                if self._reason:
                    logger.info("objectcache: store reachable again")
                    self._reason = ""
