"""`ObjectCacheLinker`: layerwise retrieval from the object store straight into the KV pool.

SGLang's external linker (`UnifiedCacheLinker`, backend `dynamic`) is the one
interface that loads L3 KV into the device pool while the forward runs, with a per-layer
counter the KV-pool accessors wait on; HiCache's L3 path always stages whole pages in
host memory before the request may run. So layerwise mode is a linker (why, in detail:
docs/layerwise.md). The plugin switches to it when the objectcache config says
`layerwise.enabled`, or it can be named directly:

    --enable-unified-cache-external-linker --unified-cache-external-linker-backend dynamic
    --unified-cache-external-linker-config '{"linker": "ObjectCacheLinker",
        "linker_module_path": "sglang_objectcache.sglang.layerwise_linker", "linker_extra_config": {...}}'

What each hook does here:
- `lookup`: the leading run of pages present (host tier, known keys, then HEADs); it runs
  on the scheduler thread, so the HEADs are one parallel batch with short timeouts.
- `load` queues a request's pages and its private device slots; `start_layer_wise_loading`
  hands every queued page to the `LayerwiseLoader` and returns the counter index.
- `finish_layer_wise_loading`: True when every layer landed. A failed batch's requests are
  recomputed (the plugin's retry hook requeues them; `suppress` keeps their next lookup
  from trying the store again) instead of being aborted.
- `offload` gathers the pages from the device pool (one kernel launch for all layers),
  encodes them and PUTs them if absent, at write priority; they also enter the host tier.
- `reset` (`/flush_cache`) drops queued work and the host tier, like HiCache's host pool.

Namespace, known keys, store health, the scrub and write accounting are the cache core's
(`cache.ObjectCache`), shared with the page-mode backend: either mode reads what the other
wrote, and both fail alike.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Optional

import torch
from sglang.srt.mem_cache.hicache_storage import PoolName
from sglang.srt.mem_cache.unified_cache.unified_cache_linker import UnifiedCacheLinker

from sglang_objectcache import kernels, objformat, runtime
from sglang_objectcache.cache import ObjectCache, open_probe
from sglang_objectcache.compute_or_load import Hit
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.fetch import ProcessFetch
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderHooks, LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.transfers import TransferScheduler
from sglang_objectcache.sglang import rank
from sglang_objectcache.sglang.pool_view import device_pool_view, host_tier_bytes
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import open_store

logger = logging.getLogger(__name__)


class ObjectCacheLinker(UnifiedCacheLinker):
    def __init__(self, server_args, params, *, components=None, extra_config=None, forward_stream=None):
        self.forward_stream = forward_stream
        extra_config = dict(extra_config or {})
        if set(extra_config) == {"objectcache_config"}:  # the plugin's form: "@path", kept off /server_info
            from sglang_objectcache.config import load_dict

            extra_config = load_dict(extra_config["objectcache_config"])
        self.cfg = ObjectCacheConfig.from_dict(extra_config)
        lw = self.cfg.layerwise
        kvcache = params.token_to_kv_pool_allocator.get_kvcache()
        self.page_size = params.page_size
        self.device_layers, self.geometry, is_mla = device_pool_view(kvcache, self.page_size)
        who = rank.linker_rank(server_args, params, kvcache, self.geometry, is_mla)
        self.offload_owner = not is_mla or who.tp[0] == 0
        self.store = open_store(self.cfg)
        self.stats = Stats()
        self.cache = ObjectCache(self.cfg, self.store, who, self.stats, probe=open_probe(self.cfg, self.store))
        self.tier = HostTier(host_tier_bytes(lw.host_cache_mb, server_args, self.device_layers))
        self.timeline = Timeline()
        self.scheduler = TransferScheduler(self.cfg.scheduler)  # owned by the loader's I/O thread
        self.layer_done_counter = LayerReadyCounter(
            self.geometry.num_layers, lw.layer_timeout_s, on_finish=self._stop_batch, on_wait=self._on_wait)
        threads = min(32, self.store.max_concurrency)
        fetch = ProcessFetch(self.cfg, self.geometry, threads, pinned=self.device_layers[0][0].is_cuda) \
            if lw.fetch == "process" else None
        self.loader = LayerwiseLoader(
            self.geometry, self.device_layers,
            LoaderParts(store=self.store, content_digest=lambda h: self.cache.keys.content_digest(h),
                        scheduler=self.scheduler, tier=self.tier, timeline=self.timeline, stats=self.stats,
                        counter=self.layer_done_counter, fetch=fetch),
            LoaderSettings(window_layers=lw.window_layers, layers_per_get=lw.layers_per_get, io_threads=threads,
                           kernels=lw.kernels, read_budget_s=0.5 * self.cfg.request_deadline_s),
            LoaderHooks(on_store_error=self.cache.note_error, on_corrupt=self._drop_corrupt, on_missing=self._forget,
                        on_read=self.cache.policy.meter.observe_read),
        )
        self.pools = {PoolName.KV: kvcache}
        self.recompute_on_failure = lw.recompute_on_failure and bool(server_args.disable_overlap_schedule)
        if lw.recompute_on_failure and not self.recompute_on_failure:
            logger.warning("objectcache: with the overlap scheduler a failed layerwise load aborts its "
                           "requests (HTTP 503); add --disable-overlap-schedule to recompute them instead")
        self._pending: dict[str, tuple[list[str], torch.Tensor]] = {}
        self._batch_rids: dict[int, list[str]] = {}
        self._offload_results: "queue.Queue[bool]" = queue.Queue()
        self._suppressed: set[str] = set()
        self._epoch = 0
        self._last_wait: tuple[int, int, float] = (-1, -1, 0.0)
        self.last_wait_end = 0.0  # monotonic end of the last forward wait (prefill_meter)
        # JSON + Chrome trace of the last batches (layerwise.trace_path, or its environment
        # variable OBJECTCACHE_LAYERWISE_TRACE_PATH through the config's overlay).
        self._trace_path = lw.trace_path
        self._encode_pool = None  # GPU offloads wait for their D2H copy off the scheduler thread
        self._batch_names: dict[int, list[str]] = {}
        runtime.register(self)
        self.cache.start_observers()
        per_get = self.loader.per_get
        logger.info("objectcache: layerwise linker ready; host tier %d MiB; %d layer(s) per GET (%d KiB)%s",
                    self.tier.capacity >> 20, per_get, per_get * self.geometry.layer_bytes >> 10,
                    "" if lw.layers_per_get else ", auto")

    @property
    def keys(self):
        return self.cache.keys

    @property
    def known(self):
        return self.cache.known

    # ---- lookup / load ---------------------------------------------------------------

    def lookup(self, rid: str, transfers) -> list[int]:
        try:
            return self._lookup(rid, transfers)
        except Exception:  # noqa: BLE001 - a lookup error is a miss, never a crash
            logger.exception("objectcache: lookup failed")
            return []

    def _lookup(self, rid: str, transfers) -> list[int]:
        if rid in self._suppressed:
            return []
        kv = next((t for t in transfers if t.name == PoolName.KV), None)
        if kv is None or not kv.keys:
            return []
        names = [self.cache.keys.object_key(h) for h in kv.keys]
        n = self.cache.leading_run(names, local=self.tier.__contains__)
        self.stats.inc("lookup_pages_hit", n)
        self.stats.inc("lookup_pages_miss", len(names) - n)
        m = next((i for i, name in enumerate(names[:n]) if name not in self.tier), n)  # host-tier head
        g = self.geometry  # the pages past what the policy loads are computed by the forward
        n = self.cache.loadable(Hit(n - m, g.tokens, g.object_bytes, 0, g.num_layers), "layerwise", local=m)
        return list(range(1, n + 1))

    def load(self, rid: str, transfers) -> bool:
        kv = next((t for t in transfers if t.name == PoolName.KV), None)
        if kv is None or kv.device_indices is None or not kv.keys or rid in self._pending:
            return False
        self._pending[rid] = (list(kv.keys), kv.device_indices)
        return True

    def cancel_queued_load(self, rid: str) -> bool:
        return self._pending.pop(rid, None) is not None

    def start_layer_wise_loading(self) -> int:
        if not self._pending:
            return -1
        pending, self._pending = self._pending, {}
        index = self.layer_done_counter.update_producer()
        rids = list(pending)
        hashes = [h for keys, _ in pending.values() for h in keys]
        slots = torch.cat([s.to(torch.int64) for _, s in pending.values()])
        slots = slots.to(self.device_layers[0][0].device)
        names = [self.cache.keys.object_key(h) for h in hashes]
        ready = None
        if slots.is_cuda:  # slots were just allocated: earlier work on them must finish first
            ready = torch.cuda.Event()
            ready.record()
        self._batch_rids[index] = rids
        self._batch_names[index] = names
        self.loader.load(index, rids, hashes, names, slots, ready)
        return index

    def finish_layer_wise_loading(self, counter_index: int) -> bool:
        ok = self.layer_done_counter.finish(counter_index)
        rids = self._batch_rids.pop(counter_index, [])
        names = self._batch_names.pop(counter_index, [])
        if not ok:
            self.stats.inc("layerwise_requests_recomputed", len(rids))
        else:
            self.stats.inc("pages_hit", len(names))
            self.cache.observe_hits(names)
        if self._trace_path:  # a debugging aid: bounded (last 256 batches), rewritten per batch
            try:
                self.timeline.save(self._trace_path)
            except OSError as e:
                logger.warning("objectcache: cannot write the layerwise trace: %s", e)
        return ok

    def suppress(self, rid: str) -> None:
        """The next lookup for `rid` reports no hit: its retry recomputes everything."""
        self._suppressed.add(rid)
        if len(self._suppressed) > 100_000:
            self._suppressed.clear()

    def _stop_batch(self, index: int) -> None:
        self.loader.stop(index)

    def _on_wait(self, index: int, layer: int, t0: float, t1: float) -> None:
        self.timeline.wait(index, layer, t0, t1)
        self.last_wait_end = time.monotonic()  # this forward partly waited (prefill_meter's clock)
        last_index, last_layer, last_end = self._last_wait
        if last_index == index and layer == last_layer + 1:
            self.loader.observe_layer_pace(t0 - last_end)
        self._last_wait = (index, layer, t1)

    def _drop_corrupt(self, names: list[str], hashes: list[str]) -> None:
        """Pages whose checks failed (on the loader's I/O thread, before their batch fails):
        out of the host tier now; those proven corrupt in the store are deleted on the scrub
        thread (`ObjectCache.scrub_later`: one bounded read at a time), so the recompute can
        store them again. Nothing here waits for the store: SGLang's scheduler never does.
        Until the scrub ends, the recompute's write-back of these names waits (`_write`)."""
        for name in names:
            self.tier.discard(name)
        self.cache.scrub_later(names, [self.cache.keys.content_digest(h) for h in hashes])

    def _forget(self, name: str) -> None:
        """A page the lookup counted on is gone: the next lookup asks the store, and the
        recompute's offload writes it again."""
        self.cache.known.discard(name)
        self.tier.discard(name)

    # ---- offload ---------------------------------------------------------------------

    def offload(self, transfers, session_id: Optional[str] = None) -> bool:
        kv = next((t for t in transfers if t.name == PoolName.KV), None)
        if kv is None or kv.device_indices is None or not kv.keys:
            return False
        if not self.offload_owner:
            self._offload_results.put(True)
            return True
        ks = self.cache.keys
        if not self.cache.can_write():
            self._offload_results.put(False)
            return True
        names = [ks.object_key(h) for h in kv.keys]
        # A page under scrub is still known (forgotten once deleted), yet its object may be
        # about to go: write it, after the scrub (a conditional PUT: a no-op if it is kept).
        todo = [i for i, n in enumerate(names)
                if self.cache.held(n) or (n not in self.cache.known and n not in self.tier)]
        self.stats.inc("pages_skipped_existing", len(names) - len(todo))
        if not todo:
            self._offload_results.put(True)
            return True
        P = self.page_size
        slots = kv.device_indices.view(-1, P)[todo].reshape(-1)
        digests = [ks.content_digest(kv.keys[i]) for i in todo]
        picked = [names[i] for i in todo]
        if slots.is_cuda:
            self._offload_gpu(slots, digests, picked)
        else:
            payload = kernels.gather_all_layers(self.device_layers, slots, self.geometry,
                                                backend=self.cfg.layerwise.kernels)
            self._write(payload, digests, picked)
        return True

    def _offload_gpu(self, slots, digests, names) -> None:
        from concurrent.futures import ThreadPoolExecutor

        events = self.record_offload_ready()
        stream = torch.cuda.Stream(slots.device)
        with torch.cuda.stream(stream):
            for ev in events:
                stream.wait_event(ev)
            dev = kernels.gather_all_layers(self.device_layers, slots.to(slots.device), self.geometry,
                                          backend=self.cfg.layerwise.kernels)
            host = torch.empty(dev.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        if self._encode_pool is None:
            self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="objectcache-encode")
        self._encode_pool.submit(lambda: (done.synchronize(), self._write(host, digests, names)))

    def _write(self, payload: torch.Tensor, digests, names) -> None:
        # Names and digests were taken when the pages were gathered, so a write of old
        # weights' KV that lands after a namespace rotation still goes to the old namespace.
        g = self.geometry
        items = []
        for row, digest, name in zip(payload, digests, names):
            mv = objformat.sealed(g, digest, row.numpy())
            self.tier.put(name, mv)
            items.append((name, mv))

        epoch = self._epoch

        def done(results) -> None:
            ok = all(self.cache.wrote([n for n, _ in items], results, g.object_bytes))
            if epoch == self._epoch:  # else written before a reset: SGLang no longer waits for it
                self._offload_results.put(ok)

        # Not before a scrub of any of these names ends: see ObjectCache.after_scrub.
        self.cache.after_scrub([n for n, _ in items], lambda: self.loader.write(items, done))

    def num_completed_offloads(self) -> int:
        return self._offload_results.qsize()

    def pop_completed_offload(self) -> bool:
        return self._offload_results.get_nowait()

    # ---- lifecycle -------------------------------------------------------------------

    def reset(self) -> None:
        self._epoch += 1
        self._pending.clear()
        self.layer_done_counter.reset()
        self._batch_rids.clear()
        self._batch_names.clear()
        self.tier.clear()
        while not self._offload_results.empty():
            self._offload_results.get_nowait()

    def close(self) -> None:
        self.reset()
        self.loader.close()
        self.cache.close()
        self.store.close()
        if self._trace_path:
            self.timeline.save(self._trace_path)

    def save_trace(self, path: str) -> tuple[str, str]:
        return self.timeline.save(path)
