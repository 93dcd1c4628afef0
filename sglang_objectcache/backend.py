"""`ObjectCacheStorage`: SGLang HiCache's L3 storage backend over an S3-compatible store.

Contract with SGLang 0.5.23's HiCacheController (managers/cache_controller.py):
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
- Nothing raises into SGLang's threads and nothing returns None where SGLang wants a result
  (a None silently kills its prefetch thread). A missing, corrupt or truncated object, a
  timeout or any store error is a miss, counted in `stats` (by reason) and logged once.
- After a store failure the store is considered down for `negative_ttl_s`: reads answer
  "miss" and writes "failed" at once, so a dead store is not hammered.
- The constructor checks the store (endpoint, credentials, bucket) and raises a clear
  error: a misconfigured server should not start.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, List, Optional

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

from sglang_objectcache import objformat, runtime
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.hostpool import HostPages
from sglang_objectcache.keys import KeyScheme, Namespace, make_namespace
from sglang_objectcache.known import KnownKeys
from sglang_objectcache.landing import PageLanding
from sglang_objectcache.scrub import scrub
from sglang_objectcache.staging import StagingArena
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import INTO, StoreError, open_store

logger = logging.getLogger(__name__)


def namespace_for(cfg: ObjectCacheConfig, sc: HiCacheStorageConfig, pages: HostPages, pool) -> Namespace:
    return make_namespace(
        cfg, str(sc.model_name or "unknown-model"), pages.geometry, is_mla=sc.is_mla_model,
        tp_rank=sc.tp_rank, tp_size=sc.tp_size, start_layer=int(getattr(pool, "start_layer", 0) or 0),
        cp=(sc.attn_cp_rank, sc.attn_cp_size), dcp=(getattr(sc, "dcp_rank", 0), getattr(sc, "dcp_size", 1)),
    )


class ObjectCacheStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, mem_pool_host: Any = None):
        # The `dynamic` factory passes a kwargs dict as the second argument; the plugin's
        # factory hook passes the host pool. Either way the pool also arrives through
        # register_mem_pool_host.
        self.storage_config = storage_config
        self.cfg = ObjectCacheConfig.from_dict(storage_config.extra_config)
        self.stats = Stats()
        self.known = KnownKeys(self.cfg.exists_cache_entries)
        self._staging = StagingArena()
        self.store = open_store(self.cfg)
        self._down_until = 0.0
        self._down_reason = ""
        self._state_lock = threading.Lock()
        self.pages: Optional[HostPages] = None
        self.keys: Optional[KeyScheme] = None
        logger.info("objectcache: store %s ready (%s)", self.store.name, _safe(self.cfg))
        runtime.register(self)
        if mem_pool_host is not None and hasattr(mem_pool_host, "layout"):
            self.register_mem_pool_host(mem_pool_host)

    # ---- setup -------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        super().register_mem_pool_host(mem_pool_host)
        if self.pages is not None and self.mem_pool_host is mem_pool_host:
            return
        self.pages = HostPages(mem_pool_host)
        ns = namespace_for(self.cfg, self.storage_config, self.pages, mem_pool_host)
        self.keys = KeyScheme(self.cfg.key_prefix, ns)
        self._describe_namespace()
        g = self.pages.geometry
        if g.object_bytes < self.cfg.small_object_warn_kb * 1024:
            logger.warning(
                "objectcache: each page object is only %.0f KiB (page size %d tokens). Every page "
                "costs one S3 request, so small objects are request-bound: raise --page-size "
                "(64 or more) for throughput; see docs/page-size.md.",
                g.object_bytes / 1024, g.tokens,
            )
        logger.info("objectcache: namespace %s = %s", ns.digest, ns.describe())

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        super().register_mem_host_pool_v2(host_pool, host_pool_name)

    def on_host_pools_registered(self) -> None:
        # Hybrid models (Mamba/SWA/DSA sidecar pools) need batch_*_v2, which objectcache does
        # not implement yet: refuse at attach rather than silently caching half the state.
        others = [str(n) for n in getattr(self, "registered_pools", {}) if "KV" not in str(n).upper()]
        if others:
            raise RuntimeError(f"objectcache supports plain MHA/MLA KV pools only; not {others}")

    def _describe_namespace(self) -> None:
        import json

        body = json.dumps(self.keys.namespace.describe(), sort_keys=True, indent=1).encode()
        try:
            self.store.put(self.keys.namespace_file, body, if_absent=True)
        except StoreError as e:
            logger.warning("objectcache: could not write %s: %s", self.keys.namespace_file, e)

    # ---- failure handling --------------------------------------------------------------

    def _store_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _note_failure(self, err: StoreError) -> None:
        with self._state_lock:
            first = not self._store_down()
            self._down_until = time.monotonic() + self.cfg.negative_ttl_s
            self._down_reason = str(err)
        if first:
            logger.warning(
                "objectcache: store error (%s): %s; answering misses for %.1fs",
                err.kind, err, self.cfg.negative_ttl_s,
            )

    def _note_success(self) -> None:
        if self._down_reason:
            with self._state_lock:
                if self._down_reason and not self._store_down():
                    logger.info("objectcache: store reachable again")
                    self._down_reason = ""

    def _scrub(self, names, keys, blobs=None) -> None:
        digests = [self.keys.content_digest(k) for k in keys]
        deleted = scrub(self.store, self.pages.geometry, names, digests, blobs, self.known.discard)
        self.stats.inc("corrupt_deleted", len(deleted))

    # ---- HiCacheStorage: existence -----------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        try:
            return self._batch_exists(keys)
        except Exception:  # noqa: BLE001 - never raise into the prefetch thread
            logger.exception("objectcache: batch_exists failed")
            return 0

    def _batch_exists(self, keys: List[str]) -> int:
        if self.keys is None or not keys:
            return 0
        names = [self.keys.object_key(k) for k in keys]
        n = 0
        while n < len(names) and names[n] in self.known:
            n += 1
        if n == len(names) or self._store_down():
            return n
        rest = names[n:]
        self.stats.inc("head_requests", len(rest))
        # Only the leading run matters: the store stops (and cancels the HEADs in flight)
        # at its end.
        for name, r in zip(rest, self.store.exists_prefix(rest)):
            if isinstance(r, StoreError):
                self._note_failure(r)
                self.stats.inc("store_errors_" + r.kind)
                return n
            if not r:
                return n
            self.known.add(name)
            n += 1
        self._note_success()
        return n

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
        return host_indices[::P].tolist()

    def _batch_get(self, keys: List[str], slots: List[int]) -> List[bool]:
        if self.pages is None:
            self.stats.miss("no_pool", len(keys))
            return [False] * len(keys)
        if self._store_down():
            self.stats.miss("store_down", len(keys))
            return [False] * len(keys)
        g = self.pages.geometry
        names = [self.keys.object_key(k) for k in keys]
        out = [False] * len(keys)
        misses: dict[int, str] = {}
        corrupt: list[int] = []
        lock = threading.Lock()  # boto3 lands pages on several threads at once
        given: dict[int, PageLanding] = {}

        def into(i: int) -> PageLanding:
            # A GET that can streams the object through this, which checks it and puts it
            # in its slot while it arrives; the page then lands as INTO.
            given[i] = PageLanding(self.pages, slots[i], self.keys.content_digest(keys[i]), self.cfg.verify_checksums)
            return given[i]

        def land(i: int, blob) -> bool:
            # On the transport's thread as each GET lands, in any order: checked, then
            # copied into its host slot (this batch's own) unless a lower page has missed.
            reason = self._check_page(g, keys[i], names[i], blob, given.get(i))
            with lock:
                if reason:
                    misses[i] = reason
                    if reason == "corrupt":
                        corrupt.append(i)
                below_miss = any(j < i for j in misses)
            if reason:
                # Only the leading run counts: cancel the GETs above a missing page. A corrupt
                # one makes the batch suspect: let every page be checked (and scrubbed).
                return reason == "corrupt"
            if not below_miss:
                if blob is not INTO:  # else it is in the slot already
                    self.pages.write_page(slots[i], memoryview(blob).cast("B")[g.header_bytes:])
                self._loaded(names[i])
                out[i] = True
            return True

        t0 = time.perf_counter()
        self.store.get_each(names, land, size=g.object_bytes, into=into if PageLanding.pays(g) else None)
        elapsed = time.perf_counter() - t0
        if corrupt:  # read again and deleted here, not on the transport's thread that found them
            self._scrub([names[i] for i in corrupt], [keys[i] for i in corrupt])
        hits = next((i for i, ok in enumerate(out) if not ok), len(out))
        out[hits:] = [False] * (len(out) - hits)  # pages that landed above a miss
        if hits < len(keys):  # the first page not copied is a miss: get_each lands every lower one
            self.stats.miss(misses[hits], len(keys) - hits)
        nbytes = hits * g.object_bytes
        self.stats.inc("get_requests", len(names))
        self.stats.observe_get(elapsed, len(names))
        self.stats.inc("pages_hit", hits)
        self.stats.inc("bytes_read", nbytes)
        self.stats.record_prefetch(hits, nbytes, elapsed)
        return out

    def _load_page(self, pages: HostPages, key: str, name: str, blob, slot: int) -> str:
        """Verify one GET result and copy it into `pages` at `slot`. Returns a miss reason or ''."""
        reason = self._check_page(pages.geometry, key, name, blob)
        if not reason:
            self._copy_page(pages, name, blob, slot)
        elif reason == "corrupt":
            self._scrub([name], [key], [blob])
        return reason

    def _check_page(self, g: objformat.PageGeometry, key: str, name: str, blob,
                    landing: Optional[PageLanding] = None) -> str:
        """Why a GET result cannot be used ('' if it can): a body, or INTO (it went through
        `landing`). The caller deletes a corrupt one."""
        if isinstance(blob, StoreError):
            self._note_failure(blob)
            self.stats.inc("store_errors_" + blob.kind)
            return "store_error"
        if blob is None:
            self.known.discard(name)
            return "not_found"
        try:
            if blob is INTO:
                landing.check()
            else:
                objformat.decode(blob, g, self.keys.content_digest(key), verify=self.cfg.verify_checksums)
        except objformat.FormatError as e:
            self.stats.inc("checksum_failures")
            logger.warning("objectcache: object %s is unusable (%s): a miss", name, e)
            return "corrupt"
        return ""

    def _copy_page(self, pages: HostPages, name: str, blob, slot: int) -> None:
        # Straight from the GET's buffer into the host pool: the only copy on this side.
        pages.write_page(slot, memoryview(blob).cast("B")[pages.geometry.header_bytes:])
        self._loaded(name)

    def _loaded(self, name: str) -> None:
        self.known.add(name)
        self._note_success()

    def _batch_set(self, keys: List[str], slots: List[int]) -> List[bool]:
        if self.pages is None:
            return [False] * len(keys)
        out = [True] * len(keys)
        todo = []
        for i, key in enumerate(keys):
            name = self.keys.object_key(key)
            if name in self.known:
                self.stats.inc("pages_skipped_existing")
            else:
                todo.append((i, key, name))
        if not todo:
            return out
        if self._store_down():
            return [False] * len(keys)
        t0 = time.perf_counter()
        g = self.pages.geometry
        with self._staging.rows(len(todo), g.object_bytes) as staging:
            # Each page is sealed while the ones before it upload.
            sealed = self._encode_pages(self.pages, [key for _, key, _ in todo], [slots[i] for i, _, _ in todo],
                                        staging)
            results = self.store.put_iter(zip([name for _, _, name in todo], sealed), if_absent=True)
        elapsed = time.perf_counter() - t0
        self.stats.inc("put_requests", len(todo))
        written = 0
        for (i, _, name), r in zip(todo, results):
            if isinstance(r, StoreError):
                self._note_failure(r)
                self.stats.inc("write_errors_" + r.kind)
                out[i] = False
                continue
            self.known.add(name)
            if r:
                written += 1
            else:
                self.stats.inc("pages_deduped")
        self.stats.inc("pages_written", written)
        self.stats.inc("bytes_written", written * g.object_bytes)
        self.stats.record_backup(written, written * g.object_bytes, elapsed)
        return out

    def _encode_page(self, pages: HostPages, key: str, slot: int) -> memoryview:
        g = pages.geometry
        return next(self._encode_pages(pages, [key], [slot], np.empty((1, g.object_bytes), dtype=np.uint8)))

    def _encode_pages(self, pages: HostPages, keys: List[str], slots: List[int],
                      staging: np.ndarray) -> Iterator[memoryview]:
        """Seal one object per (key, slot) into the rows of `staging`, lazily: one copy from
        the host pool per component, one xxh3 per layer. PUTs send straight from the rows."""
        g = pages.geometry
        for row, key, slot in zip(staging, keys, slots):
            pages.read_page(slot, row[g.header_bytes:])
            mv = memoryview(row)
            objformat.seal(g, self.keys.content_digest(key), mv)
            yield mv

    # ---- HiCacheStorage: legacy flat-page API ------------------------------------------
    # Used only when SGLang does not select the v1 path (e.g. `dynamic` without
    # interface_v1). A flat page is the host layout's own page order (get_data_page).

    def get(self, key, target_location=None, target_sizes=None) -> Optional[torch.Tensor]:
        return self.batch_get([key], [target_location] if target_location is not None else None)[0]

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        try:
            if self.pages is None or self._store_down():
                return [None] * len(keys)
            targets = target_locations or [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
            names = [self.keys.object_key(k) for k in keys]
            out = []
            for key, name, blob, flat in zip(keys, names, self.store.get_many(names), targets):
                failed = self._load_page(self.pages.flat_page(flat), key, name, blob, 0)
                out.append(None if failed else flat)
            return out
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_get failed")
            return [None] * len(keys)

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        try:
            if self.pages is None or self._store_down():
                return False
            items = [
                (self.keys.object_key(k), self._encode_page(self.pages.flat_page(v), k, 0))
                for k, v in zip(keys, values)
                if self.keys.object_key(k) not in self.known
            ]
            results = self.store.put_many(items, if_absent=True) if items else []
            for (name, _), r in zip(items, results):
                if isinstance(r, StoreError):
                    self._note_failure(r)
                    return False
                self.known.add(name)
            return True
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: batch_set failed")
            return False

    # ---- HiCacheStorage: management ----------------------------------------------------

    def clear(self) -> None:
        """Delete every object of this namespace (and nothing else)."""
        if self.keys is None:
            return
        try:
            prefix = self.keys.namespace_prefix
            doomed = [o.key for o in self.store.list(prefix) if self.keys.owns(o.key)]
            deleted = self.store.delete_many(doomed)
            self.known.clear()
            logger.info("objectcache: cleared %d objects under %s", deleted, prefix)
            self._describe_namespace()
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: clear failed")

    def get_stats(self):
        return self.stats.drain_sglang()

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:  # noqa: BLE001
            logger.exception("objectcache: close failed")


def _safe(cfg: ObjectCacheConfig) -> str:
    d = cfg.redacted()
    return ", ".join(f"{k}={d[k]}" for k in ("endpoint_url", "bucket", "region", "key_prefix", "transport"))
