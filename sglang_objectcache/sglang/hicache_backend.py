"""`ObjectCacheStorage`: SGLang HiCache's L3 storage backend over an S3-compatible store.

Contract with SGLang's HiCacheController (managers/cache_controller.py):
- Pages are content-addressed: SGLang's page hash chain -> `keys.KeyScheme.object_key`.
  One object per page, layer-major (`objformat`), independent of the host layout.
- `batch_exists(keys)` returns the length of the leading run of pages present.
- `batch_get_v1(keys, host_indices)` checks and copies each page into its host-pool slots as
  it lands (pages of 1 MiB and up as they arrive, `landing.PageLanding`), in any order, and
  returns one bool per page: True for the leading run of pages that hit, False from the
  first miss on. A page above a miss may have been written into its slot (the slots are
  this batch's own); it is reported False.
- `batch_set_v1(keys, host_indices)` writes pages that are not known to exist, with a
  conditional PUT (If-None-Match: *), so two servers writing one prefix store it once; it
  returns one bool per page and SGLang treats any False as a failed backup.
- When SGLang stops its storage threads (`HiCacheController._stop_storage_threads`, on a
  flush, a reset or a detach) it sets its `storage_stop_event` and joins the threads for
  10 s before it fails. The plugin hands that event to the backend (`watch_stop`), and a
  batch in flight then stops: no GET or PUT starts any more, GETs in flight are abandoned,
  and the pages not done are misses (`batch_get_v1`) or False (`batch_set_v1`).
- Nothing raises into SGLang's threads and nothing returns None where SGLang wants a result
  (a None silently kills its prefetch thread). A missing, corrupt or truncated object, a
  timeout or any store error is a miss, counted in `stats` (by reason) and logged once.
- The legacy flat-page API (`get`, `set`, `batch_get`, `batch_set`), used only off the v1
  path, is `flat_pages.FlatPageAPI`, mixed in here.
- Namespace, known keys, store health, existence, the usability check, the scrub and
  write accounting belong to the cache core (`cache.ObjectCache`), shared with layerwise
  mode; this class maps SGLang's calls and types onto it and the host pool.
- The constructor checks the store (endpoint, credentials, bucket) and raises a clear
  error: a misconfigured server should not start.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from sglang_objectcache import runtime
from sglang_objectcache.sglang import rank, stats_bridge
from sglang_objectcache.sglang.flat_pages import FlatPageAPI
from sglang_objectcache.cache import CORRUPT, ObjectCache, open_probe
from sglang_objectcache.compute_or_load import Hit
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.hostpool import HostPages, seal_pages
from sglang_objectcache.landing import PageLanding
from sglang_objectcache.staging import StagingArena
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import INTO, STOPPED, open_store

logger = logging.getLogger(__name__)


class ObjectCacheStorage(FlatPageAPI, HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, mem_pool_host: Any = None):
        # The `dynamic` factory passes a kwargs dict as the second argument; the plugin's
        # factory hook passes the host pool. Either way the pool also arrives through
        # register_mem_pool_host.
        self.storage_config = storage_config
        self.cfg = ObjectCacheConfig.from_dict(storage_config.extra_config)
        self.stats = Stats()
        self._staging = StagingArena()
        self.store = open_store(self.cfg)
        self.pages: Optional[HostPages] = None
        self.cache: Optional[ObjectCache] = None
        self._stop: Optional[threading.Event] = None  # SGLang's storage_stop_event (`watch_stop`)
        logger.info("objectcache: store %s ready (%s)", self.store.name, _safe(self.cfg))
        runtime.register(self)
        if mem_pool_host is not None and hasattr(mem_pool_host, "layout"):
            self.register_mem_pool_host(mem_pool_host)

    @property
    def keys(self):
        return self.cache.keys if self.cache is not None else None

    @property
    def known(self):
        return self.cache.known

    # ---- setup -------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        super().register_mem_pool_host(mem_pool_host)
        if self.pages is not None and self.mem_pool_host is mem_pool_host:
            return
        self.pages = HostPages(mem_pool_host)
        who = rank.page_mode_rank(self.storage_config, mem_pool_host, self.pages.geometry, rank.current_server_args())
        self.cache = ObjectCache(self.cfg, self.store, who, self.stats, probe=open_probe(self.cfg, self.store))
        g = self.pages.geometry
        want = self.cfg.small_object_warn_kb * 1024
        if g.object_bytes < want:
            enough = 1 << max(0, math.ceil(math.log2(want * g.tokens / g.object_bytes)))
            logger.warning(
                "objectcache: each page object is only %.0f KiB (page size %d tokens). Every page "
                "costs one S3 request, so small objects are request-bound: --page-size %d or more "
                "makes objects of %d KiB; see docs/page-size.md.",
                g.object_bytes / 1024, g.tokens, enough, want // 1024,
            )
        self.cache.start_observers(metrics=bool(self.storage_config.enable_storage_metrics))

    def watch_stop(self, event: threading.Event) -> None:
        """SGLang's `storage_stop_event`: while it is set, batches stop early (the plugin's
        hook on `attach_storage_backend` passes it)."""
        self._stop = event

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        super().register_mem_host_pool_v2(host_pool, host_pool_name)

    def on_host_pools_registered(self) -> None:
        # Hybrid models (Mamba/SWA/DSA sidecar pools) need batch_*_v2, which objectcache does
        # not implement yet: refuse at attach rather than silently caching half the state.
        others = [str(n) for n in getattr(self, "registered_pools", {}) if "KV" not in str(n).upper()]
        if others:
            raise RuntimeError(f"objectcache supports plain MHA/MLA KV pools only; not {others}")

    # ---- HiCacheStorage: existence -----------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        try:
            if self.cache is None or not keys or self._stopped():
                return 0
            ks, g = self.cache.keys, self.pages.geometry
            n = self.cache.leading_run([ks.object_key(k) for k in keys])
            # HiCache prefetches what this reports; the pages past it are computed.
            return self.cache.loadable(Hit(n, g.tokens, g.object_bytes, 0, g.num_layers), "page")
        except Exception:  # noqa: BLE001 - never raise into the prefetch thread
            logger.exception("objectcache: batch_exists failed")
            return 0

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # ---- HiCacheStorage: zero-copy v1 --------------------------------------------------

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info=None) -> List[bool]:
        try:
            return self._batch_get(keys, self._page_slots(host_indices, len(keys)))
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_get_v1 failed")
            self.stats.miss("store_error", len(keys))
            return [False] * len(keys)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info=None) -> List[bool]:
        try:
            return self._batch_set(keys, self._page_slots(host_indices, len(keys)))
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_set_v1 failed")
            return [False] * len(keys)

    def _page_slots(self, host_indices: torch.Tensor, n: int) -> list[int]:
        P = self.pages.page_size
        if host_indices.numel() != n * P:
            raise ValueError(f"{host_indices.numel()} host slots for {n} pages of {P}")
        # A page is written to slot..slot+P: anything but whole, aligned pages would write
        # into other pages' slots (H5). The callers' errors become misses.
        pages = host_indices.reshape(n, P).to(torch.int64)
        starts = pages[:, :1]
        if bool((starts % P).any()) or not torch.equal(pages - starts, torch.arange(P).expand(n, P)):
            raise ValueError(f"host slots are not whole pages of {P} aligned slots")
        return starts.flatten().tolist()

    def _batch_get(self, keys: List[str], slots: List[int]) -> List[bool]:
        stop = self._stop
        refused = ("no_pool" if self.pages is None else "store_down" if not self.cache.can_read()
                   else "stopped" if self._stopped() else "")
        if refused:
            self.stats.miss(refused, len(keys))
            return [False] * len(keys)
        cache = self.cache
        g, ks = self.pages.geometry, cache.keys  # one namespace for the whole batch
        batch = _Landing(self, [ks.object_key(k) for k in keys], [ks.content_digest(k) for k in keys], slots)
        names = batch.names
        t0 = time.perf_counter()
        self.store.get_each(names, batch.land, size=g.object_bytes, into=batch.into if PageLanding.pays(g) else None,
                            stop=stop)
        elapsed = time.perf_counter() - t0
        out = batch.out
        if batch.corrupt:  # proven and deleted here, not on the transport's thread that found them
            cache.scrub([names[i] for i in batch.corrupt], [batch.digests[i] for i in batch.corrupt])
        hits = next((i for i, ok in enumerate(out) if not ok), len(out))
        out[hits:] = [False] * (len(out) - hits)  # pages that landed above a miss
        if hits < len(keys):  # the first page not copied is a miss: get_each lands every lower one
            self.stats.miss(batch.misses.get(hits, "stopped"), len(keys) - hits)  # (unless SGLang stopped it)
        if hits:
            cache.note_ok()
            cache.observe_hits(names[:hits])
        nbytes = hits * g.object_bytes
        if hits == len(names):  # a whole batch: one sample of the store's read rate
            cache.policy.meter.observe_read(nbytes, elapsed)
        self.stats.inc("get_requests", len(names))
        self.stats.observe_get(elapsed, len(names))
        self.stats.inc("pages_hit", hits)
        self.stats.inc("bytes_read", nbytes)
        self.stats.record_prefetch(hits, nbytes, elapsed)
        return out

    def _batch_set(self, keys: List[str], slots: List[int]) -> List[bool]:
        if self.pages is None:
            return [False] * len(keys)
        cache = self.cache
        ks = cache.keys
        out = [True] * len(keys)
        todo = []
        for i, key in enumerate(keys):
            name = ks.object_key(key)
            if name in cache.known:
                self.stats.inc("pages_skipped_existing")
            else:
                todo.append((i, key, name))
        if not todo:
            return out
        if not cache.can_write() or self._stopped():
            return [False] * len(keys)
        t0 = time.perf_counter()
        g = self.pages.geometry
        names = [name for _, _, name in todo]
        with self._staging.rows(len(todo), g.object_bytes) as staging:
            # Each page is sealed while the ones before it upload.
            sealed = seal_pages(self.pages, [ks.content_digest(key) for _, key, _ in todo],
                                        [slots[i] for i, _, _ in todo], staging)
            results = self.store.put_iter(zip(names, sealed), if_absent=True, stop=self._stop)
        elapsed = time.perf_counter() - t0
        # Stopped by SGLang: the pages not drawn have no result, those not sent are STOPPED.
        sent = [(j, r) for j, r in enumerate(results) if r is not STOPPED]
        self.stats.inc("put_requests", len(sent))
        for i, _, _ in todo:
            out[i] = False
        for (j, _), ok in zip(sent, cache.wrote([names[j] for j, _ in sent], [r for _, r in sent], g.object_bytes)):
            out[todo[j][0]] = ok
        written = sum(1 for r in results if r is True)
        self.stats.record_backup(written, written * g.object_bytes, elapsed)
        return out

    # ---- HiCacheStorage: management ----------------------------------------------------

    def clear(self) -> None:
        """SGLang's `/hicache/storage-backend/clear`. The namespace is shared by every server
        of this model on the bucket, so this server only forgets what it knows, unless
        `allow_clear` says the operator wants the namespace's pages deleted for everyone.
        Other servers' access logs are never touched."""
        if self.cache is None:
            return
        try:
            self.cache.known.clear()
            if not self.cfg.allow_clear:
                logger.warning("objectcache: clear: forgot this server's known keys; stored pages are shared "
                               "with other servers and were kept (set allow_clear to delete them)")
                return
            from sglang_objectcache.inspect import layout

            ks = self.cache.keys
            prefix = ks.namespace_prefix
            doomed = [o.key for o in self.store.list(prefix)
                      if ks.owns(o.key) and layout.classify(o.key, self.cfg.key_prefix).kind == layout.PAGE]
            deleted = self.store.delete_many(doomed)
            logger.info("objectcache: cleared %d page objects under %s", deleted, prefix)
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: clear failed")

    def get_stats(self):
        return stats_bridge.storage_metrics(self.stats)

    def close(self) -> None:
        try:
            if self.cache is not None:
                self.cache.close()
            self.store.close()
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: close failed")


class _Landing:
    """One `batch_get_v1`'s pages as they land, on the transport's threads, in any order:
    each is checked, then copied into its host slot (this batch's own) unless a lower page
    has missed. `out[i]` is True for a page copied; `misses` and `corrupt` say why not."""

    def __init__(self, backend: ObjectCacheStorage, names: List[str], digests: List[bytes], slots: List[int]):
        self.backend, self.names, self.digests, self.slots = backend, names, digests, slots
        self.out = [False] * len(names)
        self.misses: dict[int, str] = {}
        self.corrupt: list[int] = []
        self.given: dict[int, PageLanding] = {}
        self.lock = threading.Lock()  # boto3 lands pages on several threads at once

    def into(self, i: int) -> PageLanding:
        # A GET that can streams the object through this, which checks it and puts it
        # in its slot while it arrives; the page then lands as INTO.
        self.given[i] = PageLanding(self.backend.pages, self.slots[i], self.digests[i])
        return self.given[i]

    def land(self, i: int, blob) -> bool:
        """False cancels the GETs not yet done (get_each)."""
        b = self.backend
        if b._stopped():  # SGLang is stopping: nothing more goes into the host pool
            with self.lock:
                self.misses[i] = "stopped"
            return False
        landing = self.given.get(i)
        reason = b.cache.verdict(self.names[i], blob, self.digests[i], landing.check if landing else None)
        with self.lock:
            if reason:
                self.misses[i] = reason
                if reason == CORRUPT:
                    self.corrupt.append(i)
            below_miss = any(j < i for j in self.misses)
        if reason:
            # Only the leading run counts: cancel the GETs above a missing page. A corrupt
            # one makes the batch suspect: let every page be checked (and scrubbed).
            return reason == CORRUPT
        if not below_miss:
            if blob is not INTO:  # else it is in the slot already
                header = b.pages.geometry.header_bytes
                b.pages.write_page(self.slots[i], memoryview(blob).cast("B")[header:])
            b.cache.known.add(self.names[i])
            self.out[i] = True
        return True


def _safe(cfg: ObjectCacheConfig) -> str:
    d = cfg.redacted()
    return ", ".join(f"{k}={d[k]}" for k in ("endpoint_url", "bucket", "region", "key_prefix", "transport"))
