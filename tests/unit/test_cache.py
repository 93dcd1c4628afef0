"""The cache core under both faces: one identity, one usability verdict, deletion only on
proof, store health per object vs store-wide. Real SGLang CPU pools, real SeaweedFS; the
layerwise linker is built in-process, as SGLang's factory builds it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
from served import server_args_for, write_checkpoint
from pools import LAYERS, fill_random, make_pools, page_bytes
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig, PoolName, PoolTransfer

from sglang_objectcache.sglang import plugin, rank
from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage
from sglang_objectcache.hostpool import UnsupportedPool
from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker
from sglang_objectcache.sglang.pool_view import device_pool_view
from sglang_objectcache.store import StoreError

PAGE = 4


def hashes(n: int, tag: str) -> list[str]:
    return [f"{tag}{i:063d}" for i in range(n)]


def slots(pages) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages]).to(torch.int64)


def backend(extra: dict, host, kind: str = "mha") -> ObjectCacheStorage:
    sc = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=kind == "mla",
        enable_storage_metrics=False, is_page_first_layout=False, model_name="ignored", extra_config=dict(extra))
    b = ObjectCacheStorage(sc, host)
    b.register_mem_pool_host(host)
    return b


def linker(extra: dict, dev, page: int = PAGE) -> ObjectCacheLinker:
    params = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: dev), page_size=page,
        attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    cfg = {**extra, "layerwise": {"enabled": True, "fetch": "thread", "layer_timeout_s": 5.0}}
    return ObjectCacheLinker(rank.current_server_args(), params, extra_config=cfg)


def kv(keys, device_slots=None):
    return [PoolTransfer(name=PoolName.KV, keys=list(keys), device_indices=device_slots)]


def load(lk: ObjectCacheLinker, keys, pages) -> bool:
    assert lk.load("r", kv(keys, slots(pages)))
    index = lk.start_layer_wise_loading()
    lk.layer_done_counter.set_consumer(index)
    for layer in range(LAYERS):  # what SGLang's attention layers do
        lk.layer_done_counter.wait_until(layer)
    ok = lk.finish_layer_wise_loading(index)
    lk.layer_done_counter.set_consumer(-1)
    return ok


def offload(lk: ObjectCacheLinker, keys, pages) -> bool:
    assert lk.offload(kv(keys, slots(pages)))
    deadline = time.monotonic() + 20
    while lk.num_completed_offloads() == 0:
        assert time.monotonic() < deadline, "offload never completed"
        time.sleep(0.02)
    return lk.pop_completed_offload()


def device_page(dev, page: int, kind: str) -> list[bytes]:
    bufs = [dev.kv_buffer] if kind == "mla" else [dev.k_buffer, dev.v_buffer]
    return [b[layer][page * PAGE:(page + 1) * PAGE].view(torch.uint8).numpy().tobytes()
            for layer in range(LAYERS) for b in bufs]


def fill_device(dev, kind: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for b in ([dev.kv_buffer] if kind == "mla" else [dev.k_buffer, dev.v_buffer]):
        for t in b:
            u8 = t.view(torch.uint8)
            u8.copy_(torch.randint(0, 256, u8.shape, dtype=torch.uint8, generator=g))


# ---- both modes read what the other wrote ---------------------------------------------


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_layerwise_loads_what_page_mode_stored_and_the_reverse(s3_config, kind):
    dev, host = make_pools(kind, "layer_first", torch.bfloat16, PAGE)
    fill_random(host, seed=1)
    keys = hashes(3, "x")
    b = backend(s3_config, host, kind)
    assert b.batch_set_v1(keys, slots([1, 2, 3])) == [True] * 3
    lk = linker(s3_config, dev)
    try:
        assert lk.keys.namespace.digest == b.keys.namespace.digest
        assert lk.lookup("r", kv(keys)) == [1, 2, 3]
        assert load(lk, keys, [10, 11, 12])
        for src, dst in zip([1, 2, 3], [10, 11, 12]):  # host page bytes == device page bytes
            assert b"".join(page_bytes(host, src * PAGE)) == b"".join(_host_order(device_page(dev, dst, kind), kind))

        fill_device(dev, kind, seed=2)
        other = hashes(2, "y")
        assert offload(lk, other, [20, 21])
        b2 = backend(s3_config, host, kind)
        assert b2.batch_exists(other) == 2
        assert b2.batch_get_v1(other, slots([5, 6])) == [True, True]
        for src, dst in zip([20, 21], [5, 6]):
            assert b"".join(_host_order(device_page(dev, src, kind), kind)) == b"".join(page_bytes(host, dst * PAGE))
    finally:
        lk.close()


def _host_order(per_layer_components: list[bytes], kind: str) -> list[bytes]:
    """device_page's (layer, component) order -> page_bytes' (component, layer) order."""
    n = 1 if kind == "mla" else 2
    return [per_layer_components[layer * n + c] for c in range(n) for layer in range(LAYERS)]


# ---- B1: a page deleted behind a layerwise server's back ------------------------------


def stored_by_layerwise(s3_config, tag: str, seed: int):
    """A layerwise linker that has offloaded pages 1 and 2 as `hashes(2, tag)`, its host
    tier emptied (so reads go to the store)."""
    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    fill_device(dev, "mha", seed=seed)
    keys = hashes(2, tag)
    lk = linker({**s3_config, "layerwise": {}}, dev)
    assert offload(lk, keys, [1, 2])
    lk.tier.clear()
    return lk, keys


def test_layerwise_forgets_a_deleted_page_and_writes_it_again(s3_config, s3, bucket):
    lk, keys = stored_by_layerwise(s3_config, "d", seed=3)
    try:
        assert lk.lookup("r", kv(keys)) == [1, 2]  # known: no HEAD
        s3.client().delete_object(Bucket=bucket, Key=lk.keys.object_key(keys[1]))  # gc, another server...
        assert not load(lk, keys, [5, 6])
        assert lk.lookup("r2", kv(keys)) == [1]  # asked the store again
        assert offload(lk, keys, [1, 2])  # the recompute's write-back stores it again
        assert lk.stats.counters["pages_written"] == 3
        lk.tier.clear()
        assert load(lk, keys, [5, 6])
    finally:
        lk.close()


# ---- B4/B5: nothing is deleted on one bad read ----------------------------------------


def _flip_reads(store, times: int):
    """Every whole-object read of `store` comes back with one byte flipped, `times` times."""
    left = {"n": times}

    def mangle(blob):
        if blob is None or isinstance(blob, StoreError) or left["n"] == 0:
            return blob
        left["n"] -= 1
        bad = bytearray(memoryview(blob).cast("B"))
        bad[-1] ^= 0x01
        return bytes(bad)

    get_many, get_ranges = store.get_many, store.get_ranges
    store.get_many = lambda keys: [mangle(r) for r in get_many(keys)]
    store.get_ranges = lambda reqs: [mangle(r) for r in get_ranges(reqs)]
    store.get_each = lambda keys, land, size=None, into=None, stop=None: [land(i, r) for i, r in enumerate(store.get_many(keys))]
    return left


def test_legacy_get_misses_on_a_bad_read_and_deletes_nothing(s3_config, s3, bucket):
    _, host = make_pools("mha", "page_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(2, "l")
    flats = [host.get_data_page(p * PAGE, flat=True).clone() for p in (3, 4)]
    assert backend(s3_config, host).batch_set(keys, flats) is True
    b = backend(s3_config, host)
    _flip_reads(b.store, times=1)  # the first read is damaged, the store's bytes are not
    got = b.batch_get(keys, [torch.zeros_like(f) for f in flats])
    assert got[0] is None
    assert b.stats.counters["corrupt_deleted"] == 0
    assert b.stats.counters["checksum_failures"] == 1
    assert backend(s3_config, host).batch_exists(keys) == 2


def test_a_body_mangled_on_every_read_deletes_nothing(s3_config, s3, bucket):
    """B5: a middlebox that flips the same byte of every GET body: two reads agree, but the
    bytes are not the ones the store holds (ETag), so nothing is deleted."""
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(3, "m")
    assert backend(s3_config, host).batch_set_v1(keys, slots([1, 2, 3])) == [True] * 3
    b = backend(s3_config, host)
    _flip_reads(b.store, times=10**6)
    assert b.batch_get_v1(keys, slots([5, 6, 7])) == [False] * 3
    assert b.stats.counters["corrupt_deleted"] == 0
    assert b.stats.counters["scrub_transient"] >= 1
    assert backend(s3_config, host).batch_get_v1(keys, slots([5, 6, 7])) == [True] * 3


def test_an_object_corrupt_in_the_store_is_deleted_and_stored_again(s3_config, s3, bucket):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(2, "c")
    b = backend(s3_config, host)
    assert b.batch_set_v1(keys, slots([1, 2])) == [True, True]
    c = s3.client()
    name = b.keys.object_key(keys[0])
    body = bytearray(c.get_object(Bucket=bucket, Key=name)["Body"].read())
    body[-5] ^= 0x40
    c.put_object(Bucket=bucket, Key=name, Body=bytes(body))
    fresh = backend(s3_config, host)
    assert fresh.batch_get_v1(keys, slots([5, 6])) == [False, False]
    assert fresh.stats.counters["corrupt_deleted"] == 1
    assert fresh.batch_set_v1(keys, slots([1, 2])) == [True, True]
    assert fresh.stats.counters["pages_written"] == 1
    assert backend(s3_config, host).batch_get_v1(keys, slots([5, 6])) == [True, True]


def test_an_object_of_another_format_version_is_a_miss_never_deleted(s3_config, s3, bucket):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(1, "v")
    b = backend(s3_config, host)
    assert b.batch_set_v1(keys, slots([1])) == [True]
    c = s3.client()
    name = b.keys.object_key(keys[0])
    body = bytearray(c.get_object(Bucket=bucket, Key=name)["Body"].read())
    body[4] = 2  # the u16 format version after the magic
    c.put_object(Bucket=bucket, Key=name, Body=bytes(body + b"a newer writer's tail"))
    fresh = backend(s3_config, host)
    assert fresh.batch_get_v1(keys, slots([5])) == [False]
    assert fresh.stats.counters["miss_unsupported"] == 1
    assert fresh.cache.scrub([name], [fresh.keys.content_digest(keys[0])]) == []
    assert c.head_object(Bucket=bucket, Key=name)["ContentLength"] == len(body) + 21


# ---- B6: one object's 4xx is that object's miss; a dead store answers 0 ----------------


def test_a_per_object_client_error_never_marks_the_store_down(s3_config):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    b = backend(s3_config, host)
    b.cache.note_error(StoreError("client", "HTTP 416 InvalidRange", status=416))
    b.cache.note_error(StoreError("auth", "HTTP 403 InvalidObjectState", status=403))
    assert b.cache.can_read() and b.cache.can_write()
    assert b.batch_set_v1(hashes(2, "w"), slots([1, 2])) == [True, True]
    b.cache.note_error(StoreError("timeout", "read timed out"))  # a read failure...
    assert not b.cache.can_read()
    assert b.batch_set_v1(hashes(2, "w2"), slots([3, 4])) == [True, True]  # ...never fails a write


def test_refused_credentials_while_serving_are_logged_once_with_the_cause(s3_config, caplog):
    """H3: keys revoked or a clock gone wrong make every call a 403: each page a miss, the
    store not down. Nobody would know; so one error line (a minute apart), naming the clock
    when S3 says the request time is too skewed."""
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    b = backend(s3_config, host)
    skew = StoreError("auth", "HTTP 403 RequestTimeTooSkewed", status=403)
    with caplog.at_level("ERROR", logger="sglang_objectcache.cache"):
        for _ in range(3):
            b.cache.note_error(skew)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "refused our credentials" in lines[0] and "clock" in lines[0], lines
    assert b.cache.can_read() and b.cache.can_write()  # a 4xx never opens the down window


def test_a_rank_of_several_without_a_tp_group_refuses_to_start():
    """H9: with no initialized TP group every rank used to read itself as tp0of1 and share
    one namespace; with tp_size > 1 that is refused."""
    params = SimpleNamespace(attn_tp_cache_group=None, tp_cache_group=None)
    assert rank.tp_rank_size(params, SimpleNamespace(tp_size=1)) == (0, 1)
    with pytest.raises(RuntimeError, match="tp_size > 1"):
        rank.tp_rank_size(params, SimpleNamespace(tp_size=2))


def test_while_the_store_is_down_batch_exists_answers_zero(s3_config):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    b = backend(s3_config, host)
    keys = hashes(3, "k")
    assert b.batch_set_v1(keys, slots([1, 2, 3])) == [True] * 3
    assert b.batch_exists(keys) == 3  # known
    b.cache.note_error(StoreError("unreachable", "connection refused"))
    assert b.batch_exists(keys) == 0  # a prefetch could only fail


def test_a_layerwise_range_past_a_truncated_object_is_corrupt_not_a_store_error(s3_config, s3, bucket):
    lk, keys = stored_by_layerwise(s3_config, "t", seed=4)
    try:
        c = s3.client()
        name = lk.keys.object_key(keys[1])
        body = c.get_object(Bucket=bucket, Key=name)["Body"].read()
        c.put_object(Bucket=bucket, Key=name, Body=body[: lk.geometry.layer_range(0)[1]])  # cut after layer 0
        assert not load(lk, keys, [5, 6])
        assert scrubbed(lk, name)
        assert lk.stats.counters["store_errors_client"] == 0
        assert lk.cache.can_read() and lk.cache.can_write()
        assert name not in {o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert lk.stats.counters["corrupt_deleted"] == 1
    finally:
        lk.close()


def scrubbed(lk: ObjectCacheLinker, name: str, timeout: float = 10.0) -> bool:
    """True once no scrub holds `name` (the scrub runs on its own thread)."""
    deadline = time.monotonic() + timeout
    while lk.cache.held(name) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not lk.cache.held(name)


def test_a_slow_scrub_never_blocks_the_scheduler_and_the_write_back_waits_for_it(s3_config, s3, bucket):
    """C6: a corrupt batch's recompute used to wait on SGLang's scheduler thread (up to 10 s)
    for the scrub's re-read and delete. Now nothing waits; the recompute's write-back of the
    scrubbed page waits for the scrub instead (a conditional PUT before the delete would be
    refused by the corrupt object, and the page lost from the store)."""
    from sglang_objectcache.sglang import recompute_hooks as retry

    lk, keys = stored_by_layerwise(s3_config, "slow", seed=6)
    gate = threading.Event()
    try:
        c = s3.client()
        bad = lk.keys.object_key(keys[1])
        body = bytearray(c.get_object(Bucket=bucket, Key=bad)["Body"].read())
        body[-5] ^= 0x40  # the last layer
        c.put_object(Bucket=bucket, Key=bad, Body=bytes(body))
        checked, puts = [], []
        stat_many, put_many = lk.store.stat_many, lk.store.put_many

        def slow_stat(names):  # the scrub's first call: a store that takes seconds to answer
            checked.extend(names)
            gate.wait(20)
            return stat_many(names)

        def counted_put(items, if_absent=True):
            puts.extend(n for n, _ in items)
            return put_many(items, if_absent)

        lk.store.stat_many, lk.store.put_many = slow_stat, counted_put
        t0 = time.monotonic()
        assert not load(lk, keys, [5, 6])
        loaded = time.monotonic() - t0
        req = SimpleNamespace(rid="r", inflight_middle_chunks=0, discard_output_reason="abort", is_retracted=False)
        tree = SimpleNamespace(linker=SimpleNamespace(cache_linker=lk))
        t0 = time.monotonic()
        assert retry.finish_loads_or_recompute(lambda self, reqs: list(reqs), tree, [req]) == []
        assert time.monotonic() - t0 < 0.5, "the retry path waited for the scrub"
        assert req.is_retracted and loaded < 3.0  # neither the I/O thread nor the forward waited either
        assert lk.cache.held(bad) and not lk.cache.held(lk.keys.object_key(keys[0]))

        assert lk.offload(kv(keys, slots([1, 2])))  # the recompute's write-back, mid-scrub
        time.sleep(0.3)
        assert puts == [] and lk.num_completed_offloads() == 0
        gate.set()
        deadline = time.monotonic() + 20
        while lk.num_completed_offloads() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lk.pop_completed_offload() is True
        assert checked == [bad]  # only the page that failed its check was re-read
        assert puts == [bad]  # the intact page was known, not written again
        assert lk.stats.counters["corrupt_deleted"] == 1 and lk.stats.counters["pages_written"] == 3
        assert bytes(c.get_object(Bucket=bucket, Key=bad)["Body"].read()) != bytes(body)  # stored again
        lk.tier.clear()
        assert load(lk, keys, [7, 8])
        dev = lk.pools[PoolName.KV]
        assert device_page(dev, 7, "mha") == device_page(dev, 1, "mha")
        assert device_page(dev, 8, "mha") == device_page(dev, 2, "mha")  # the intact bytes
        assert offload(lk, keys, [1, 2]) and puts == [bad]  # a later write: known, nothing to PUT
    finally:
        gate.set()
        lk.close()


def test_a_failing_access_log_flush_still_closes_the_stores(s3_config):
    """L3: the access log's flush on close used to be a hook without a try, so a flush that
    raised skipped closing the store (its event loop thread and connections stayed)."""
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    for face in (backend(s3_config, host), linker({**s3_config, "layerwise": {}}, dev)):
        face.cache.observe_hits([face.keys.object_key(hashes(1, "f")[0])])  # a read to flush

        def put(*a, **kw):  # not a StoreError: a transport bug, which the log does not expect
            raise RuntimeError("flush failed")

        face.store.put = put
        face.close()
        assert face.store._loop.is_closed() and face.cache.probe._loop.is_closed()


# ---- A1: weight updates rotate the namespace --------------------------------------------


def test_a_weight_update_moves_every_cache_to_the_new_weights_namespace(s3_config, served_model, tmp_path):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(2, "u")
    b = backend(s3_config, host)
    assert b.batch_set_v1(keys, slots([1, 2])) == [True, True]
    before = b.keys.namespace.digest
    new_weights = write_checkpoint(tmp_path / "rl-step-1", seed=7)
    plugin._weights_updated((True, "ok"), None, SimpleNamespace(flush_cache=True, model_path=new_weights))
    assert b.keys.namespace.digest != before
    assert b.batch_exists(keys) == 0 and b.batch_get_v1(keys, slots([5, 6])) == [False, False]
    # a server started on the new checkpoint shares the rotated namespace
    served_model(server_args_for(new_weights))
    assert backend(s3_config, host).keys.namespace.digest == b.keys.namespace.digest
    # weights sent as tensors: a namespace nobody else has
    plugin._weights_updated((True, "ok"), None, SimpleNamespace(flush_cache=False))
    assert b.cache.suspended and b.batch_set_v1(keys, slots([1, 2])) == [False, False]
    plugin._flushed(True, None)
    assert not b.cache.suspended and b.batch_set_v1(keys, slots([1, 2])) == [True, True]


def test_the_weights_fingerprint_follows_bytes_not_paths(tmp_path):
    from sglang_objectcache.identity import fingerprint_path

    a = fingerprint_path(write_checkpoint(tmp_path / "a", seed=1))
    assert fingerprint_path(write_checkpoint(tmp_path / "copy-of-a", seed=1)) == a
    assert fingerprint_path(write_checkpoint(tmp_path / "b", seed=2)) != a
    assert fingerprint_path(str(tmp_path / "not-here")).startswith("random:")
    assert fingerprint_path("org/a-hub-id").startswith("random:")


# ---- A3/A4/A5: pools and ranks that cannot be keyed faithfully are refused ---------------


def test_pools_with_kv_scales_are_refused_in_both_modes(s3_config):
    dev, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    host.k_scale_host = torch.zeros(4)
    with pytest.raises(UnsupportedPool, match="scale"):
        backend(s3_config, host)
    dev.k_scale_buffer = [torch.zeros(4)]
    with pytest.raises(UnsupportedPool, match="scale"):
        device_pool_view(dev, PAGE)


def test_the_hnd_device_layout_is_refused_in_layerwise_mode():
    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    dev.kv_cache_layout = "hnd"
    with pytest.raises(UnsupportedPool, match="NHD"):
        device_pool_view(dev, PAGE)
    dev.kv_cache_layout = "nhd"
    dev.k_buffer = [t.view(-1, PAGE, *t.shape[1:]) for t in dev.k_buffer]  # a 4-d, paged buffer
    with pytest.raises(UnsupportedPool):
        device_pool_view(dev, PAGE)


def test_layerwise_namespaces_differ_per_dcp_rank(monkeypatch):
    import sglang.srt.runtime_context as rc

    dev, _ = make_pools("mla", "layer_first", torch.bfloat16, PAGE, host=False)
    _, g, is_mla = device_pool_view(dev, PAGE)
    params = SimpleNamespace(attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    args = server_args_for(rank.current_server_args().model_path, dcp_size=2)
    digests = set()
    for r in (0, 1):
        monkeypatch.setattr(rc, "get_parallel", lambda r=r: SimpleNamespace(attn_dcp_rank=r, attn_dcp_size=2))
        who = rank.linker_rank(args, params, dev, g, is_mla)
        assert who.dcp == (r, 2)
        from sglang_objectcache.config import ObjectCacheConfig
        from sglang_objectcache.keys import make_namespace

        digests.add(make_namespace(ObjectCacheConfig(bucket="b"), who).digest)
    assert len(digests) == 2


def test_without_published_server_args_the_cache_refuses_to_start(s3_config, served_model):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    served_model(None)
    with pytest.raises(RuntimeError, match="ServerArgs"):
        backend(s3_config, host)


def test_plain_http_to_another_host_is_warned_about_at_startup(caplog):
    from sglang_objectcache.store import warn_if_plain_http

    assert not warn_if_plain_http("http://127.0.0.1:8333") and not warn_if_plain_http("http://localhost:9000")
    assert not warn_if_plain_http("https://s3.us-west-2.amazonaws.com") and not warn_if_plain_http("http://[::1]:80")
    with caplog.at_level("WARNING"):
        assert warn_if_plain_http("http://user:secret@minio.internal:9000")
    assert "plain http://" in caplog.text and "secret" not in caplog.text


def test_a_hung_store_costs_a_lookup_about_a_second_once(s3_config, s3, bucket):
    """C3: layerwise lookups run on SGLang's scheduler thread. Their HEADs go to a client
    with short timeouts, and a store-wide failure then answers at once."""
    from http_support import silent_store

    from sglang_objectcache.cache import probe_config

    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, PAGE, host=False)
    lk = linker({**s3_config, "layerwise": {}}, dev)
    try:
        probe = lk.cache.probe
        assert probe is not lk.store and probe.settings.retries == 0 and probe.settings.request_deadline_s <= 1.5
        with silent_store(s3, bucket, read_timeout_s=60) as hung:
            lk.cache.probe = type(hung)(probe_config(hung.settings))  # the same endpoint, the probe's settings
            t0 = time.monotonic()
            assert lk.lookup("r", kv(hashes(4, "h"))) == []
            first = time.monotonic() - t0
            t0 = time.monotonic()
            assert lk.lookup("r2", kv(hashes(4, "h"))) == []
            second = time.monotonic() - t0
            lk.cache.probe.close()
        assert first < 3.0, f"a lookup on a hung store took {first:.1f}s"
        assert second < 0.2 and not lk.cache.can_read()
    finally:
        lk.cache.probe = probe
        lk.close()


def test_host_slots_that_are_not_whole_aligned_pages_are_a_miss_not_a_write_elsewhere(s3_config):
    """H5: page slots are taken as slot..slot+P; a misaligned or scattered run of host
    indices would land pages in other pages' slots."""
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(2, "a")
    b = backend(s3_config, host)
    assert b.batch_set_v1(keys, slots([1, 2])) == [True, True]
    before = [page_bytes(host, p * PAGE) for p in range(8)]
    shifted = slots([5, 6]) + 1  # off by one slot
    scattered = torch.cat([slots([5])[:2], slots([7])[2:], slots([6])])
    for bad in (shifted, scattered):
        assert b.batch_get_v1(keys, bad) == [False, False]
    assert [page_bytes(host, p * PAGE) for p in range(8)] == before
