"""Object-store residency for the tree view: one bounded batch of HEAD requests.

Contract of `probe_store`: at most `STORE_HEAD_CAP` distinct keys per call, the query's
pages first, then each shown node's pages whole or not at all; sent on a daemon thread
that the scheduler waits for at most `STORE_HEAD_DEADLINE_S`. Nothing is sent while the
backend marks store reads down, or while an earlier batch (one that outlived its deadline)
is still running: the scheduler pays a hung store's deadline once, not per request.
"""

from __future__ import annotations

import threading
from typing import Optional

STORE_HEAD_CAP = 4096  # keys per request, query and nodes together
STORE_HEAD_DEADLINE_S = 2.0  # the scheduler waits no longer for the HEAD batch


class _Probe:
    """One HEAD batch on its own daemon thread: the scheduler waits for it with a deadline,
    and a batch that outlives it blocks later ones (they skip the store) until it ends."""

    def __init__(self, store, names: list[str]):
        self.names, self.result, self.error = names, None, None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(store,), name="objectcache-tree-head", daemon=True).start()

    def _run(self, store) -> None:
        try:
            self.result = store.exists_many(self.names)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            self.error = e
        finally:
            self.done.set()


_probe_lock = threading.Lock()
_last_probe: Optional[_Probe] = None


def probe_store(backend, first: list[str], groups: list[list[str]]) -> tuple[dict, dict]:
    """HEAD `first` (the query's pages) then every group (a shown node's pages) whole, in one
    batch of at most STORE_HEAD_CAP distinct keys. Returns ({key: True/False/None (error)},
    info); keys left out (cap, store down, deadline) are absent from the dict."""
    global _last_probe
    from sglang_objectcache.store import StoreError

    names: list[str] = []
    seen: set[str] = set()

    def add(group: list[str], whole: bool) -> bool:
        new = [k for k in dict.fromkeys(group) if k not in seen]
        if whole and len(names) + len(new) > STORE_HEAD_CAP:
            return False
        new = new[: STORE_HEAD_CAP - len(names)]
        names.extend(new)
        seen.update(new)
        return True

    add(first, whole=False)
    for g in groups:
        if not add(g, whole=True):
            break
    info: dict = {"keys": len(names), "checked": 0, "skipped": None}
    if not names:
        return {}, info
    cache = getattr(backend, "cache", None)
    if cache is not None and not cache.can_read():
        info["skipped"] = "store reads are marked down: no HEAD sent"
        return {}, info
    with _probe_lock:
        if _last_probe is not None and not _last_probe.done.is_set():
            info["skipped"] = "an earlier HEAD batch is still running"
            return {}, info
        probe = _last_probe = _Probe(backend.store, names)
    if not probe.done.wait(STORE_HEAD_DEADLINE_S):
        info["skipped"] = f"HEAD batch not done in {STORE_HEAD_DEADLINE_S:g} s"
        return {}, info
    if probe.error is not None or len(probe.result or ()) != len(names):
        info["skipped"] = f"HEAD batch failed: {type(probe.error).__name__ if probe.error else 'short reply'}"
        return {}, info
    info["checked"] = len(names)
    return {k: (None if isinstance(r, StoreError) else bool(r)) for k, r in zip(names, probe.result)}, info


def store_info(backend) -> Optional[dict]:
    """Where the backend keeps its pages (bucket, endpoint, namespace); None without a backend."""
    keys = getattr(backend, "keys", None)
    if keys is None:
        return None
    cfg = getattr(backend, "cfg", None)
    return {
        "bucket": getattr(cfg, "bucket", None),
        "endpoint_url": getattr(cfg, "endpoint_url", None),
        "namespace": keys.namespace.digest,
        "namespace_prefix": keys.namespace_prefix,
    }
