"""The layerwise linker's SGLang-facing methods (the `UnifiedCacheLinker` ABC SGLang calls:
lookup, load, cancel_queued_load, start/finish_layer_wise_loading, offload and its
completions, reset) on SGLang's real CPU KV pool, its `PoolTransfer`, and SeaweedFS."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from pools import LAYERS, make_pools
from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer

from sglang_objectcache import kernels, objformat
from sglang_objectcache.sglang import rank
from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

PAGE = 4


def hashes(n: int, tag: str = "l") -> list[str]:
    return [f"{tag}{i:063d}" for i in range(n)]


def slots(pages) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages]).to(torch.int64)


def kv(keys, device_slots=None):
    return [PoolTransfer(name=PoolName.KV, keys=list(keys), device_indices=device_slots)]


def fill(dev, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for t in list(dev.k_buffer) + list(dev.v_buffer):
        u8 = t.view(torch.uint8)
        u8.copy_(torch.randint(0, 256, u8.shape, dtype=torch.uint8, generator=g))


def page_bytes(dev, page: int) -> list[bytes]:
    return [b[layer][page * PAGE:(page + 1) * PAGE].view(torch.uint8).numpy().tobytes()
            for layer in range(LAYERS) for b in (dev.k_buffer, dev.v_buffer)]


@pytest.fixture
def lk(s3_config):
    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    fill(dev, seed=3)
    params = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: dev), page_size=PAGE,
        attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    # No host tier: every hit below comes from the store.
    cfg = {**s3_config, "layerwise": {"enabled": True, "fetch": "thread", "host_cache_mb": 0, "layer_timeout_s": 5.0}}
    linker = ObjectCacheLinker(rank.current_server_args(), params, extra_config=cfg)
    yield linker
    linker.close()


def store_pages(lk: ObjectCacheLinker, keys, pages) -> list[str]:
    """Put these device pages into the bucket directly (not through the linker)."""
    ks, g = lk.cache.keys, lk.geometry
    rows = kernels.gather_all_layers(lk.device_layers, slots(pages), g)
    items = [(ks.object_key(h), objformat.sealed(g, ks.content_digest(h), row.numpy())) for h, row in zip(keys, rows)]
    assert lk.store.put_many(items) == [True] * len(items)
    return [n for n, _ in items]


def run_load(lk: ObjectCacheLinker, rid: str, keys, pages) -> bool:
    """What SGLang does with a request the lookup hit: load, start, the forward's layer waits, finish."""
    assert lk.load(rid, kv(keys, slots(pages)))
    index = lk.start_layer_wise_loading()
    assert index >= 0
    lk.layer_done_counter.set_consumer(index)
    for layer in range(LAYERS):
        lk.layer_done_counter.wait_until(layer)
    ok = lk.finish_layer_wise_loading(index)
    lk.layer_done_counter.set_consumer(-1)
    return ok


def completed_offload(lk: ObjectCacheLinker) -> bool:
    deadline = time.monotonic() + 20
    while lk.num_completed_offloads() == 0:
        assert time.monotonic() < deadline, "offload never completed"
        time.sleep(0.02)
    return lk.pop_completed_offload()


def test_lookup_returns_only_the_leading_run_of_stored_pages(lk):
    keys = hashes(5)
    store_pages(lk, [keys[0], keys[1], keys[3]], [1, 2, 4])  # page 2 is missing
    assert lk.lookup("r", kv(keys)) == [1, 2]  # page 3 is stored, but after a gap: useless
    assert lk.stats.counters["lookup_pages_hit"] == 2 and lk.stats.counters["lookup_pages_miss"] == 3
    store_pages(lk, [keys[2]], [3])
    assert lk.lookup("r", kv(keys)) == [1, 2, 3, 4]
    assert lk.lookup("r", kv(hashes(3, tag="x"))) == []  # nothing of another prompt


def test_lookup_without_kv_keys_or_for_a_suppressed_request_is_empty(lk):
    keys = hashes(2)
    store_pages(lk, keys, [1, 2])
    assert lk.lookup("r", []) == [] and lk.lookup("r", kv([])) == []
    assert lk.lookup("r", [PoolTransfer(name=PoolName.MAMBA, keys=keys)]) == []  # only the KV pool is ours
    lk.suppress("r")  # its load failed: the retry recomputes
    assert lk.lookup("r", kv(keys)) == [] and lk.lookup("s", kv(keys)) == [1, 2]


def test_load_queues_one_load_per_request_until_started_or_cancelled(lk):
    keys = hashes(2)
    assert not lk.load("r", kv(keys))  # no device slots: nothing to load into
    assert not lk.load("r", kv([], slots([1])))
    assert lk.load("r", kv(keys, slots([1, 2])))
    assert not lk.load("r", kv(keys, slots([3, 4])))  # one queued load per request
    assert lk.cancel_queued_load("r") and not lk.cancel_queued_load("r")
    assert lk.start_layer_wise_loading() == -1  # nothing queued: no counter index


def test_a_load_lands_every_layer_of_every_page_in_the_requests_slots(lk):
    keys = hashes(2)
    store_pages(lk, keys, [1, 2])
    dev = lk.pools[PoolName.KV]
    assert page_bytes(dev, 7) != page_bytes(dev, 1)
    assert lk.lookup("r", kv(keys)) == [1, 2]
    assert run_load(lk, "r", keys, [7, 8])
    assert page_bytes(dev, 7) == page_bytes(dev, 1) and page_bytes(dev, 8) == page_bytes(dev, 2)
    assert lk.stats.counters["pages_hit"] == 2


def test_a_page_gone_after_lookup_fails_the_load_and_is_forgotten(lk, s3, bucket):
    keys = hashes(2)
    names = store_pages(lk, keys, [1, 2])
    assert lk.lookup("r", kv(keys)) == [1, 2] and names[1] in lk.known
    s3.client().delete_object(Bucket=bucket, Key=names[1])  # e.g. `objectcache-inspect gc`
    assert not run_load(lk, "r", keys, [7, 8])  # SGLang then recomputes the request (recompute_hooks)
    assert lk.stats.counters["layerwise_requests_recomputed"] == 1
    assert names[1] not in lk.known and lk.lookup("s", kv(keys)) == [1]  # asked of the store again


def test_offload_writes_each_page_once(lk, s3, bucket):
    keys = hashes(3)
    assert lk.offload(kv(keys, slots([1, 2, 3])))
    assert completed_offload(lk) is True and lk.num_completed_offloads() == 0
    c = s3.client()
    stored = {o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert {lk.keys.object_key(h) for h in keys} <= stored
    assert lk.stats.counters["pages_written"] == 3

    assert lk.offload(kv(keys, slots([1, 2, 3])))  # known now: no PUT at all
    assert completed_offload(lk) is True
    assert lk.stats.counters["pages_written"] == 3 and lk.stats.counters["pages_skipped_existing"] == 3
    assert not lk.offload(kv(keys))  # no device slots: not an offload SGLang may wait for
    assert lk.num_completed_offloads() == 0

    # What it wrote loads back, byte for byte.
    dev = lk.pools[PoolName.KV]
    assert run_load(lk, "r", keys, [9, 10, 11])
    assert [page_bytes(dev, p) for p in (9, 10, 11)] == [page_bytes(dev, p) for p in (1, 2, 3)]


def test_reset_drops_queued_loads_and_completed_offloads(lk):
    keys = hashes(2)
    assert lk.offload(kv(keys, slots([1, 2])))
    deadline = time.monotonic() + 20
    while lk.num_completed_offloads() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lk.num_completed_offloads() == 1
    assert lk.load("r", kv(keys, slots([5, 6])))
    lk.reset()  # /flush_cache
    assert lk.num_completed_offloads() == 0 and lk.start_layer_wise_loading() == -1
    assert lk.load("r", kv(keys, slots([5, 6])))  # the request may queue again


def test_lookup_reports_the_head_the_compute_or_load_policy_chooses(s3_config):
    from sglang_objectcache.compute_or_load import Hit, Rates, choose
    from sglang_objectcache.sglang.pool_view import device_pool_view

    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    fill(dev, seed=5)
    _, g, _ = device_pool_view(dev, PAGE)
    # Loading a page takes as long as computing it: the pipeline loads a head, computes the rest.
    tokens_s = 1000.0
    mbps = g.object_bytes * tokens_s / PAGE * 8 / 1e6
    params = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: dev), page_size=PAGE,
        attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    pins = {"policy_store_mbps": mbps, "policy_prefill_tokens_s": tokens_s}
    keys = hashes(6, "policy")
    made = []
    try:
        for mode in ("auto", "load"):
            cfg = {**s3_config, **pins, "compute_or_load": mode,
                   "layerwise": {"enabled": True, "fetch": "thread", "host_cache_mb": 0}}
            made.append(ObjectCacheLinker(rank.current_server_args(), params, extra_config=cfg))
        split, whole = made
        store_pages(split, keys, range(6))
        want = choose(Hit(6, PAGE, g.object_bytes, 0, g.num_layers), Rates(0.0, mbps * 125_000, tokens_s),
                      "layerwise").load_pages
        assert 0 < want < 6
        assert split.lookup("r1", kv(keys)) == list(range(1, want + 1))
        assert split.stats.counters["policy_pages_computed"] == 6 - want
        assert whole.lookup("r2", kv(keys)) == list(range(1, 7))  # "load": the whole hit
        # What the lookup reports loads byte for byte: a split hit is an ordinary shorter hit.
        assert run_load(split, "r1", keys[:want], range(10, 10 + want))
        for a, b in zip(range(want), range(10, 10 + want)):
            assert page_bytes(dev, a) == page_bytes(dev, b)
    finally:
        for lk in made:
            lk.close()


def test_the_host_tier_follows_sglangs_host_memory_flags_unless_set():
    from sglang_objectcache.sglang.pool_view import device_pool_view, host_tier_bytes

    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    layers, _, _ = device_pool_view(dev, PAGE)
    pool = sum(t.numel() * t.element_size() for layer in layers for t in layer)
    args = SimpleNamespace(hicache_ratio=None, hicache_size=0)
    assert host_tier_bytes(-1, args, layers) == 2 * pool  # SGLang's default ratio
    assert host_tier_bytes(-1, SimpleNamespace(hicache_ratio=3.0, hicache_size=0), layers) == 3 * pool
    assert host_tier_bytes(-1, SimpleNamespace(hicache_ratio=3.0, hicache_size=4), layers) == 4 * 10**9
    assert host_tier_bytes(64, args, layers) == 64 << 20  # layerwise.host_cache_mb wins
    assert host_tier_bytes(0, args, layers) == 0
