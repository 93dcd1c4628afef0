"""Prometheus metrics `objectcache_*` on SGLang's own `/metrics` (with `--enable-metrics`).

SGLang runs prometheus_client in multiprocess mode: every process writes its samples to
files under PROMETHEUS_MULTIPROC_DIR and the HTTP server's `/metrics` merges them. So the
scheduler process, where the backend lives, only has to create and update ordinary
metrics. An exporter thread (one per process, started when objectcache is attached and
SGLang's storage metrics are on) turns each live backend's `Stats` (stats.py) into them
every `metrics_interval_s` of the config (default 1 s): counters advance by the delta since
the last export, the GET latency histogram by its per-bucket deltas. Series:

    objectcache_storage_hits_total                  pages read and used
    objectcache_storage_misses_total{reason}        pages missed: not_found, corrupt, store_error, ...
    objectcache_bytes_read_total / _written_total   page bytes
    objectcache_pages_written_total                 pages PUT (new)
    objectcache_pages_deduped_total                 PUTs that found the page already there
    objectcache_pages_skipped_existing_total        pages not PUT: known to exist
    objectcache_requests_total{op}                  get, put, head
    objectcache_checksum_failures_total
    objectcache_corrupt_deleted_total               corrupt objects deleted on read (then rewritten)
    objectcache_store_errors_total{op,kind}         op read|write; kind: StoreError.KINDS
    objectcache_get_latency_seconds                 histogram, one observation per GET
    objectcache_scheduler_queue_depth               queued transfers (TransferScheduler), live sum

A counter name this map does not know is exported as `objectcache_counter_total{name}`,
so a new counter in stats.py shows up without a change here. SGLang's own storage series
(`sglang:prefetched_tokens_total`, `sglang:prefetch_pgs`, ...) come from the backend's
`get_stats()`, which SGLang polls itself.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Optional

from sglang_objectcache import runtime

logger = logging.getLogger(__name__)

_DIRECT = {
    "pages_hit": "storage_hits",
    "bytes_read": "bytes_read",
    "bytes_written": "bytes_written",
    "pages_written": "pages_written",
    "pages_deduped": "pages_deduped",
    "pages_skipped_existing": "pages_skipped_existing",
    "checksum_failures": "checksum_failures",
    "corrupt_deleted": "corrupt_deleted",
}
_REQUESTS = {"get_requests": "get", "put_requests": "put", "head_requests": "head"}


class Metrics:
    """The prometheus_client objects. Import prometheus_client only here: in multiprocess
    mode it must be imported after PROMETHEUS_MULTIPROC_DIR is set."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        from sglang_objectcache.stats import LATENCY_BUCKETS

        r = registry if registry is not None else REGISTRY
        c = lambda name, doc, labels=(): Counter("objectcache_" + name, doc, labels, registry=r)  # noqa: E731
        self.direct = {
            "storage_hits": c("storage_hits", "Pages read from the object store and used"),
            "bytes_read": c("bytes_read", "Page bytes read from the object store"),
            "bytes_written": c("bytes_written", "Page bytes written to the object store"),
            "pages_written": c("pages_written", "Pages written (new objects)"),
            "pages_deduped": c("pages_deduped", "Conditional PUTs that found the page already stored"),
            "pages_skipped_existing": c("pages_skipped_existing", "Pages not written: known to exist"),
            "checksum_failures": c("checksum_failures", "Objects rejected by a header or layer checksum"),
            "corrupt_deleted": c("corrupt_deleted", "Corrupt objects the backend deleted on read"),
        }
        self.misses = c("storage_misses", "Pages missed, by reason", ("reason",))
        self.requests = c("requests", "Object-store requests", ("op",))
        self.errors = c("store_errors", "Object-store errors", ("op", "kind"))
        self.other = c("counter", "Other objectcache counters", ("name",))
        self.latency = Histogram("objectcache_get_latency_seconds", "Object-store GET latency",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("objectcache_scheduler_queue_depth", "Transfers queued in the transfer scheduler",
                                 registry=r, multiprocess_mode="livesum")

    def counter(self, name: str):
        """The (labelled) prometheus counter for a stats.py counter name."""
        if name in _DIRECT:
            return self.direct[_DIRECT[name]]
        if name in _REQUESTS:
            return self.requests.labels(op=_REQUESTS[name])
        if name.startswith("miss_"):
            return self.misses.labels(reason=name[len("miss_"):])
        if name.startswith("store_errors_"):
            return self.errors.labels(op="read", kind=name[len("store_errors_"):])
        if name.startswith("write_errors_"):
            return self.errors.labels(op="write", kind=name[len("write_errors_"):])
        return self.other.labels(name=name)


class Exporter:
    """Moves Stats deltas of live backends into `Metrics`. `export()` is one step."""

    def __init__(self, metrics: Metrics, instances=runtime.instances):
        self.metrics = metrics
        self.instances = instances
        self._last: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def export(self) -> None:
        depth, seen = 0, set()
        for inst in self.instances():
            depth += queue_depth(inst)
            stats = getattr(inst, "stats", None)
            # Keyed by the Stats object: two instances sharing one are counted once.
            if stats is None or not hasattr(stats, "snapshot") or id(stats) in seen:
                continue
            seen.add(id(stats))
            snap = stats.snapshot()
            prev = self._last.get(stats) or {"counters": {}, "get_latency": {"counts": [], "sum": 0.0}}
            for name, value in snap["counters"].items():
                d = value - prev["counters"].get(name, 0)
                if d > 0:
                    self.metrics.counter(name).inc(d)
            self._replay_latency(snap["get_latency"], prev["get_latency"])
            self._last[stats] = snap
        self.metrics.queue_depth.set(depth)

    def _replay_latency(self, now: dict, before: dict) -> None:
        # prometheus_client has no "add n observations to bucket i"; its histogram keeps
        # per-bucket (non-cumulative) counters and a sum, which we advance directly.
        h = self.metrics.latency
        counts, old = now["counts"], before["counts"] or [0] * len(now["counts"])
        for i, (a, b) in enumerate(zip(counts, old)):
            if a > b:
                h._buckets[i].inc(a - b)
        ds = now["sum"] - before["sum"]
        if ds > 0:
            h._sum.inc(ds)


def queue_depth(inst) -> int:
    """Queued transfers of an instance's TransferScheduler (transfers.py), 0 if it has none."""
    for owner in (inst, getattr(inst, "scheduler", None), getattr(inst, "transfer_scheduler", None)):
        depth = getattr(owner, "queue_depth", None)
        if isinstance(depth, int):
            return depth
    return 0


_thread: Optional[threading.Thread] = None
_lock = threading.Lock()


def start_exporter(interval_s: float = 1.0) -> bool:
    """Start this process's exporter thread once, exporting every `interval_s` (the config's
    `metrics_interval_s`; the first caller's wins). False when metrics are off."""
    global _thread
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return False
    with _lock:
        if _thread is None:
            exporter = Exporter(Metrics())
            _thread = threading.Thread(target=_run, args=(exporter, interval_s), name="objectcache-metrics",
                                       daemon=True)
            _thread.start()
    return True


def _run(exporter: Exporter, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        try:
            exporter.export()
        except Exception:  # noqa: BLE001 - metrics must never take the server down
            logger.exception("objectcache: metrics export failed")
