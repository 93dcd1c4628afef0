"""The recompute hooks (`sglang/recompute_hooks.py`) on SGLang's real `Req`, `ScheduleBatch`
and `UnifiedRadixCache.finish_external_linker_loads`, with a real `ObjectCacheLinker` over a
CPU KV pool and SeaweedFS: a request whose layerwise load failed is retracted and recomputed
(its next lookup misses), never aborted and never served from the failed load."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch
from pools import make_pools
from sglang.srt.managers.schedule_batch import FINISH_ABORT, Req, ScheduleBatch
from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_objectcache import kernels, objformat
from sglang_objectcache.sglang import rank
from sglang_objectcache.sglang import recompute_hooks as retry
from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

PAGE = 4
ABORT = "External KV cache load failed"


def hashes(n: int, tag: str = "r") -> list[str]:
    return [f"{tag}{i:063d}" for i in range(n)]


def slots(pages) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages]).to(torch.int64)


def kv(keys, device_slots=None):
    return [PoolTransfer(name=PoolName.KV, keys=list(keys), device_indices=device_slots)]


@pytest.fixture
def lk(s3_config):
    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    params = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: dev), page_size=PAGE,
        attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    cfg = {**s3_config, "layerwise": {"enabled": True, "fetch": "thread", "host_cache_mb": 0}}
    server_args = rank.current_server_args()
    server_args.disable_overlap_schedule = True  # what the plugin's layerwise switch sets
    linker = ObjectCacheLinker(server_args, params, extra_config=cfg)
    yield linker
    linker.close()


def store_pages(lk: ObjectCacheLinker, keys, pages) -> None:
    """Put these device pages into the bucket as objectcache objects, as an offload would."""
    ks, g = lk.cache.keys, lk.geometry
    rows = kernels.gather_all_layers(lk.device_layers, slots(pages), g)
    items = [(ks.object_key(h), objformat.sealed(g, ks.content_digest(h), row.numpy())) for h, row in zip(keys, rows)]
    assert lk.store.put_many(items) == [True] * len(items)


def req(rid: str, chunks: int = 0) -> Req:
    r = Req(rid, "", array("q", range(8)), SamplingParams(max_new_tokens=4))
    r.inflight_middle_chunks = chunks
    return r


def aborted(r: Req) -> bool:
    """SGLang's mark on a request whose external-linker load failed: an HTTP 503 abort."""
    return isinstance(r.discard_output_reason, FINISH_ABORT) and ABORT in r.discard_output_reason.message


def finish_with_sglang(lk, reqs, failed_rids):
    """SGLang's own finish_external_linker_loads (it marks the failed requests for abort),
    wrapped by our AROUND hook, on a tree whose linker wrapper holds `lk`."""
    tree = SimpleNamespace(linker=SimpleNamespace(cache_linker=lk, finish_loads=lambda: list(failed_rids)))
    return retry.finish_loads_or_recompute(UnifiedRadixCache.finish_external_linker_loads, tree, reqs)


def test_a_failed_load_is_taken_back_from_the_abort_and_its_next_lookup_misses(lk):
    keys = hashes(2)
    store_pages(lk, keys, [1, 2])
    ok, lost, chunked = req("ok"), req("lost"), req("chunked", chunks=1)
    assert lk.lookup("lost", kv(keys)) == [1, 2]  # what the failed load had counted on

    kept_abort = finish_with_sglang(lk, [ok, lost, chunked], ["lost", "chunked"])

    assert kept_abort == [chunked]  # its later chunks were built on the failed prefix: SGLang's abort stands
    assert aborted(chunked) and not chunked.is_retracted
    # Retracted, as if SGLang had retracted it mid-flight: its output is skipped, not sent.
    assert lost.discard_output_reason is None and lost.is_retracted
    assert ok.discard_output_reason is None and not ok.is_retracted  # not in the failed set: untouched
    # Its retry recomputes the whole prompt: the store is not asked again for it...
    assert lk.lookup("lost", kv(keys)) == []
    # ...while other requests (the chunked one included) still hit the same pages.
    assert lk.lookup("other", kv(keys)) == [1, 2] and lk.lookup("chunked", kv(keys)) == [1, 2]


def test_sglangs_abort_stands_for_other_linkers_and_with_recompute_off(lk):
    other = SimpleNamespace(recompute_on_failure=True, suppress=lambda rid: pytest.fail("not ours"))
    r = req("a")
    assert finish_with_sglang(other, [r], ["a"]) == [r]
    assert aborted(r) and not r.is_retracted

    lk.recompute_on_failure = False  # the overlap scheduler: the prefill may be in the next batch already
    r = req("b")
    assert finish_with_sglang(lk, [r], ["b"]) == [r]
    assert aborted(r) and not r.is_retracted
    store_pages(lk, hashes(1), [1])
    assert lk.lookup("b", kv(hashes(1))) == [1]  # not suppressed

    lk.recompute_on_failure = True
    assert finish_with_sglang(lk, [req("c")], []) == []  # nothing failed


class _Scheduler:
    """The two things requeue_after_result uses of SGLang's Scheduler."""

    def __init__(self):
        self.tree_cache = object()
        self.queued: list[tuple[Req, bool]] = []

    def _add_request_to_queue(self, r, is_retracted=False):
        self.queued.append((r, is_retracted))


def batch_of(reqs) -> tuple[ScheduleBatch, list]:
    n = len(reqs)
    kept: list = []
    b = ScheduleBatch(
        reqs=list(reqs), device="cpu", model_config=SimpleNamespace(is_encoder_decoder=False),
        req_pool_indices=torch.arange(n), req_pool_indices_cpu=torch.arange(n), seq_lens=torch.full((n,), 8),
        orig_seq_lens=torch.full((n,), 8), seq_lens_cpu=torch.full((n,), 8),
        sampling_info=SimpleNamespace(filter_batch=lambda keep, keep_device: kept.append(list(keep))))
    return b, kept


def test_a_retracted_request_gives_back_its_kv_is_reset_and_requeued(lk, monkeypatch):
    from sglang.srt.mem_cache import common

    ok, lost = req("ok"), req("lost")
    for i, r in enumerate((ok, lost)):
        r.kv.req_pool_idx = i  # both hold a KV row
        r.prefix_len = 8
        r.cached_tokens, r.cached_tokens_device, r.cached_tokens_host, r.cached_tokens_storage = 8, 4, 0, 4
        r._cache_breakdown_computed = True
    finish_with_sglang(lk, [ok, lost], ["lost"])
    assert lost.skip_radix_cache_insert  # SGLang's mark: its KV never reaches the tree

    events: list = []

    def release(r, tree_cache, *, checkpoint):
        events.append(("release", r.rid, tree_cache, checkpoint, r.kv.req_pool_idx))
        r.kv.req_pool_idx = None  # reset_for_retract asserts the row is given back first

    def process(self, batch, result):
        events.append(("process", [r.rid for r in batch.reqs], result))
        return "out"

    monkeypatch.setattr(common, "release_kv_cache", release)
    sched = _Scheduler()
    batch, kept = batch_of([ok, lost])
    assert retry.requeue_after_result(process, sched, batch, "result") == "out"

    # SGLang processed the whole batch first (skipping the retracted request's output).
    assert events == [("process", ["ok", "lost"], "result"), ("release", "lost", sched.tree_cache, False, 1)]
    assert sched.queued == [(lost, True)] and batch.reqs == [ok] and kept == [[0]]
    assert lost.retraction_count == 1 and lost.prefix_len == 0 and lost.kv.req_pool_idx is None
    assert lost.is_retracted and not lost.skip_radix_cache_insert  # its recompute is inserted
    # What the retry reports as reused is what it reuses: nothing from the failed load.
    assert not lost.retracted_stain and not lost._cache_breakdown_computed
    assert (lost.cached_tokens, lost.cached_tokens_device, lost.cached_tokens_host,
            lost.cached_tokens_storage) == (0, 0, 0, 0)
    assert ok.kv.req_pool_idx == 0 and ok.prefix_len == 8 and ok.cached_tokens == 8  # untouched

    events.clear()
    batch, kept = batch_of([ok, lost])
    assert retry.requeue_after_result(process, sched, batch, "next") == "out"  # requeued once only
    assert events == [("process", ["ok", "lost"], "next")] and len(sched.queued) == 1 and kept == []
