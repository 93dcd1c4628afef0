"""Counters for one backend instance, shared by get_stats(), the metrics exporter and tests.

Counter names are stable (they become Prometheus series): `pages_hit`, `pages_written`,
`pages_skipped_existing`, `pages_deduped`, `bytes_read`, `bytes_written`, `get_requests`,
`put_requests`, `head_requests`, `checksum_failures`, and `miss_<reason>` /
`store_errors_<kind>` / `write_errors_<kind>`. The lists behind SGLang's StorageMetrics are
drained on every get_stats() call, as SGLang expects (between calls, only the latest
SGLANG_METRICS_KEEP entries of each are kept); `sglang/stats_bridge.py` turns them into
SGLang's type, so this module stays free of SGLang.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

MISS_REASONS = ("not_found", "corrupt", "unsupported", "store_error", "store_down", "no_pool", "stopped")
# GET latency histogram bucket bounds, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# SGLang drains the StorageMetrics lists (get_stats) only with --enable-metrics; without it
# they would grow by one entry per batch forever. Keep the latest this many of each.
SGLANG_METRICS_KEEP = 4096


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, float] = defaultdict(float)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self._prefetch_pgs: deque[int] = deque(maxlen=SGLANG_METRICS_KEEP)
        self._backup_pgs: deque[int] = deque(maxlen=SGLANG_METRICS_KEEP)
        self._prefetch_bw: deque[float] = deque(maxlen=SGLANG_METRICS_KEEP)
        self._backup_bw: deque[float] = deque(maxlen=SGLANG_METRICS_KEEP)

    def inc(self, name: str, n: float = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def miss(self, reason: str, pages: int = 1) -> None:
        self.inc("miss_" + reason, pages)

    def observe_get(self, seconds: float, requests: int = 1) -> None:
        """One batch of `requests` GETs that took `seconds` of wall time each (approx.)."""
        i = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
        with self._lock:
            self.latency_counts[i] += requests
            self.latency_sum += seconds * requests

    def record_prefetch(self, pages: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._prefetch_pgs.append(pages)
            if seconds > 0 and nbytes:
                self._prefetch_bw.append(nbytes / seconds / 1e9)

    def record_backup(self, pages: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._backup_pgs.append(pages)
            if seconds > 0 and nbytes:
                self._backup_bw.append(nbytes / seconds / 1e9)

    def drain_transfer_lists(self) -> tuple[list, list, list, list]:
        """(prefetch pages, backup pages, prefetch GB/s, backup GB/s) gathered since the last
        call, emptied: SGLang's StorageMetrics fields, in its order (`sglang/stats_bridge.py`)."""
        with self._lock:
            lists = (self._prefetch_pgs, self._backup_pgs, self._prefetch_bw, self._backup_bw)
            out = tuple(list(q) for q in lists)
            for q in lists:
                q.clear()
        return out

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "counters": dict(self.counters),
                "get_latency": {"buckets": list(LATENCY_BUCKETS), "counts": list(self.latency_counts),
                                "sum": self.latency_sum},
            }
