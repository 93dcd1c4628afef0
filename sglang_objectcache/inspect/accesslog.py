"""When each page object was last read: a cheap log kept in the bucket, for GC.

S3 keeps no access time, only LastModified (the write time). Writing metadata on every hit
would cost one request per page read. Instead each server process keeps, per namespace, a
map of the pages it has served (object content id -> last read, unix seconds) and rewrites
it every `interval_s` (only when there were reads) as ONE object of its own,
`{prefix}/{ns}/_access/{host}-{pid}-{start ms}-{rand}.log`, a line `{content}\t{seconds}` per
page. The object is written (empty) when the backend attaches, so the set of keys in the
bucket changes only when a server starts, never in the middle of serving. GC takes a page's
last use as the latest of its LastModified and every log's read, then folds the logs it
read into one; a live server simply writes its own log again on its next flush.

Trade-offs (also in docs/inspect.md): one PUT per server per interval while it has reads,
of up to `max_keys` lines (~45 bytes each); reads after the last flush are lost if the
server is killed (a clean close flushes), so GC may see a page as older than it is, never
as younger (but for the second a read is rounded up to: reads are stamped by the second,
so that shards of one page read by several ranks get one stamp); beyond `max_keys` pages
a server forgets its oldest reads. Settings: the config's `access_log_interval_s` (default
60; 0 turns the log off) and `access_log_max_keys` (default 100000).

Server side: the cache core (`cache.ObjectCache`) calls `log_for(core)` at start, records
the pages each face served (`observe_hits`) and flushes on close (`flush_log`), in both
modes alike.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from typing import Iterable, Optional

from sglang_objectcache.inspect import layout
from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)

# The config's defaults (`access_log_interval_s`, `access_log_max_keys`), for a log made
# without one (tools, tests).
INTERVAL_S = 60.0
MAX_KEYS = 100_000


def encode(entries: dict[str, float]) -> bytes:
    return "".join(f"{c}\t{t:.6f}\n" for c, t in sorted(entries.items())).encode()


def parse(body) -> dict[str, float]:
    """Lines `{content}\\t{seconds}`; anything malformed is skipped, not fatal."""
    out: dict[str, float] = {}
    for line in bytes(body).decode("utf-8", "replace").splitlines():
        content, _, ts = line.partition("\t")
        try:
            t = float(ts)
        except ValueError:
            continue
        if len(content) == 32 and t > out.get(content, 0.0):
            out[content] = t
    return out


def log_key(ns_prefix: str, now: float, tag: str = "") -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", tag or socket.gethostname())[:48]
    return f"{ns_prefix}{layout.ACCESS_DIR}/{host}-{os.getpid()}-{int(now * 1000)}-{uuid.uuid4().hex[:6]}.log"


class AccessLog:
    """The reads of one namespace by this process, and the one object that holds them."""

    def __init__(self, store, ns_prefix: str, limit: int = MAX_KEYS, now: Optional[float] = None,
                 interval_s: float = INTERVAL_S):
        self.store, self.ns_prefix = store, ns_prefix
        self.limit, self.interval_s = limit, interval_s
        self.key = log_key(ns_prefix, time.time() if now is None else now)
        self._reads: dict[str, float] = {}
        self._dirty = True  # the first flush writes the (empty) object
        self._lock = threading.Lock()
        self.flushes = 0
        self.failed_flushes = 0

    def record(self, object_keys: Iterable[str], now: Optional[float] = None) -> None:
        """Pages read together, in prefix order. The first is stamped with the end of the
        second of the read and each next one a microsecond earlier, so among pages used
        together a capacity cap deletes the tail of a prefix first (a deleted head page
        would make the rest unreachable). The whole second makes the stamps of one page's
        shards equal: the ranks of a TP/PP group read the same pages in the same order at
        nearly the same moment, and GC keeps or deletes pages of equal stamps together
        (`gc.plan`). Its end keeps every stamp later than the write of the page read."""
        end = math.floor(time.time() if now is None else now) + 1
        with self._lock:
            for i, k in enumerate(object_keys):
                self._reads[k.rsplit("/", 1)[-1]] = end - (i + 1) * 1e-6
            self._dirty = True
            over = len(self._reads) > 2 * self.limit
        if over:
            _flusher.wake()  # trims; the hot path never sorts

    def reads(self) -> dict[str, float]:
        with self._lock:
            return dict(self._reads)

    def flush(self) -> bool:
        """Rewrite the log object if there were reads since the last flush. True if written."""
        with self._lock:
            if not self._dirty:
                return False
            if len(self._reads) > self.limit:  # forget the oldest reads
                self._reads = dict(sorted(self._reads.items(), key=lambda kv: kv[1])[-self.limit:])
            body, self._dirty = encode(self._reads), False
        try:
            self.store.put(self.key, body, if_absent=False)
        except StoreError as e:
            with self._lock:
                self._dirty = True
            self.failed_flushes += 1
            logger.warning("objectcache: access log %s not written (%s); will retry", self.key, e)
            return False
        self.flushes += 1
        return True


def read(store, ns_prefix: str) -> tuple[dict[str, float], list[str]]:
    """Merge every log of a namespace: content -> last read, and the log keys read."""
    keys = [o.key for o in store.list(f"{ns_prefix}{layout.ACCESS_DIR}/") if o.key.endswith(".log")]
    merged: dict[str, float] = {}
    read_keys = []
    for key, body in zip(keys, store.get_many(keys)) if keys else ():
        if body is None or isinstance(body, StoreError):
            continue
        read_keys.append(key)
        for c, t in parse(body).items():
            if t > merged.get(c, 0.0):
                merged[c] = t
    return merged, read_keys


# ---- server side: one log per live backend, one flusher thread per process --------------

_logs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()


def log_for(backend) -> Optional[AccessLog]:
    """The log of a cache core (`cache.ObjectCache`: made on first use, and made anew when
    its namespace rotates), or None when the log is off. Its settings are the core's
    config's (`backend.cfg`: access_log_interval_s, access_log_max_keys)."""
    cfg = getattr(backend, "cfg", None)
    interval_s = getattr(cfg, "access_log_interval_s", INTERVAL_S)
    if getattr(backend, "keys", None) is None or interval_s <= 0:
        return None
    with _logs_lock:
        log = _logs.get(backend)
        if log is None or log.ns_prefix != backend.keys.namespace_prefix:
            log = _logs[backend] = AccessLog(backend.store, backend.keys.namespace_prefix,
                                             getattr(cfg, "access_log_max_keys", MAX_KEYS), interval_s=interval_s)
    _flusher.start()
    return log


def flush_log(backend) -> None:
    """On close: a clean shutdown loses no reads."""
    log = _logs.get(backend)
    if log is not None:
        log.flush()


class _Flusher:
    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="objectcache-access-log", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            with _logs_lock:  # one thread for every log of the process: it wakes for the most frequent
                wait_s = min((log.interval_s for log in _logs.values()), default=INTERVAL_S)
            self._wake.wait(max(0.05, wait_s))
            self._wake.clear()
            with _logs_lock:
                logs = list(_logs.values())
            for log in logs:
                try:
                    log.flush()
                except Exception:  # noqa: BLE001
                    logger.exception("objectcache: access log flush failed")


_flusher = _Flusher()
