"""ObjectCacheStorage against a real SeaweedFS and SGLang's real CPU KV pools."""

from __future__ import annotations

import importlib.util
import threading
import time

import pytest
import torch
from served import server_args_for, write_checkpoint
from hicache import PAGE, hashes, slots, storage_config
from pools import fill_random, make_pools, page_bytes

from sglang_objectcache import hostpool
from sglang_objectcache import landing as landing_mod
from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage
from objectcache_dev.s3server import SeaweedFS, free_port

LAYOUTS = ("layer_first", "page_first", "page_first_direct")


def backend_for(extra, host, kind="mha", **kw) -> ObjectCacheStorage:
    b = ObjectCacheStorage(storage_config(extra, kind, **kw), host)
    b.register_mem_pool_host(host)
    return b


@pytest.fixture(params=["whole", "copy", "scatter"])
def landing(request, monkeypatch):
    """How pages land (forced here for the tests' tiny pages): received whole, then checked
    and copied (pages under 1 MiB); handed over read by read and copied into the pool as
    they arrive; or scattered straight into their slots by the GET (8 MiB layer_first
    pages). Yields a counter of the pages copied: it proves which path ran."""
    monkeypatch.setattr(landing_mod, "MIN_OBJECT_BYTES", 1 << 40 if request.param == "whole" else 0)
    monkeypatch.setattr(hostpool, "MIN_PART_BYTES", 0 if request.param == "scatter" else 1 << 40)
    copied = {"pages": 0}
    write_layers = hostpool.HostPages.write_layers

    def counted(self, slot, layers, first):
        last = first + memoryview(layers).nbytes // self.geometry.layer_bytes
        copied["pages"] += last == self.num_layers  # a page's last layers are in
        return write_layers(self, slot, layers, first)

    monkeypatch.setattr(hostpool.HostPages, "write_layers", counted)
    copied["scatter"] = request.param == "scatter"
    yield copied


@pytest.mark.parametrize("kind,dtype", [("mha", torch.float16), ("mha", torch.bfloat16),
                                        ("mla", torch.float16), ("mla", torch.bfloat16)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_roundtrip_every_layout(s3_config, kind, dtype, layout, landing):
    _, src = make_pools(kind, layout, dtype, PAGE)
    _, dst = make_pools(kind, layout, dtype, PAGE)
    fill_random(src, seed=3)
    keys = hashes(6)
    w = backend_for(s3_config, src, kind)
    assert w.batch_exists(keys) == 0
    assert w.batch_set_v1(keys, slots([1, 2, 3, 7, 8, 20])) == [True] * 6
    r = backend_for(s3_config, dst, kind)  # a fresh instance: nothing cached in memory
    assert r.batch_exists(keys) == 6
    assert r.batch_get_v1(keys, slots([30, 31, 5, 6, 40, 41])) == [True] * 6
    for a, b in zip([1, 2, 3, 7, 8, 20], [30, 31, 5, 6, 40, 41]):
        assert page_bytes(src, a * PAGE) == page_bytes(dst, b * PAGE)
    assert landing["pages"] == (0 if landing["scatter"] else 6)
    assert r.stats.counters["pages_hit"] == 6
    m = r.get_stats()
    assert m.prefetch_pgs == [6] and r.get_stats().prefetch_pgs == []  # drained per call


@pytest.mark.parametrize("src_layout,dst_layout", [("page_first", "layer_first"),
                                                    ("layer_first", "page_first_direct"),
                                                    ("page_first_direct", "page_first")])
def test_cross_layout_reads(s3_config, src_layout, dst_layout):
    _, src = make_pools("mha", src_layout, torch.bfloat16, PAGE)
    _, dst = make_pools("mha", dst_layout, torch.bfloat16, PAGE)
    fill_random(src, seed=4)
    keys = hashes(3, "x")
    assert backend_for(s3_config, src).batch_set_v1(keys, slots([2, 3, 4])) == [True] * 3
    assert backend_for(s3_config, dst).batch_get_v1(keys, slots([9, 10, 11])) == [True] * 3
    for a, b in zip([2, 3, 4], [9, 10, 11]):
        assert page_bytes(src, a * PAGE) == page_bytes(dst, b * PAGE)


def test_leading_run_with_a_hole(s3_config, s3, bucket):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(5, "h")
    w = backend_for(s3_config, host)
    assert w.batch_set_v1(keys, slots(range(5))) == [True] * 5
    s3.client().delete_object(Bucket=bucket, Key=w.keys.object_key(keys[2]))
    r = backend_for(s3_config, host)
    assert r.batch_exists(keys) == 2
    assert r.batch_exists(keys[3:]) == 2
    got = r.batch_get_v1(keys, slots(range(10, 15)))
    assert got[:2] == [True, True] and got[2] is False
    assert r.stats.counters["miss_not_found"] >= 1


def test_namespaces_are_isolated(s3_config, served_model, tmp_path):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(2, "n")
    assert backend_for(s3_config, host).batch_set_v1(keys, slots([1, 2])) == [True, True]
    _, fp16 = make_pools("mha", "layer_first", torch.float16, PAGE)
    served_model(server_args_for(served_model.path, served_model_name="another-model"))
    renamed = backend_for(s3_config, host)
    served_model(server_args_for(write_checkpoint(tmp_path / "other-weights", seed=1)))
    reweighted = backend_for(s3_config, host)  # same shapes and config, other weights (A1)
    served_model(server_args_for(served_model.path, kv_cache_dtype="fp8_e5m2"))
    other_kv_dtype = backend_for(s3_config, host)  # the logical KV dtype (A2)
    served_model(server_args_for(served_model.path))
    assert renamed.batch_exists(keys) == 2  # the served name is a label: one checkpoint, one namespace
    others = [
        reweighted, other_kv_dtype, backend_for({**s3_config, "model_id": "kept-apart"}, host),
        backend_for(s3_config, fp16),
        backend_for(s3_config, host, tp_rank=1, tp_size=2),
        backend_for({**s3_config, "tenant_salt": "tenant-b"}, host),
    ]
    for other in others:
        assert other.batch_exists(keys) == 0
        assert other.batch_get_v1(keys, slots([5, 6])) == [False, False]


# "empty" and "extended" check the single ranged GET of object_bytes + 1 (obstore): an empty
# object answers 416 and one too long arrives one byte too long; both must be corrupt misses.
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "extended", "wrong_key"])
def test_corrupt_objects_are_misses(s3_config, s3, bucket, damage, landing):
    _, host = make_pools("mha", "page_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(3, damage[0])
    w = backend_for(s3_config, host)
    assert w.batch_set_v1(keys, slots([1, 2, 3])) == [True] * 3
    c = s3.client()
    name = w.keys.object_key(keys[1])
    body = bytearray(c.get_object(Bucket=bucket, Key=name)["Body"].read())
    if damage == "flip":
        body[-7] ^= 0x40
    elif damage == "truncate":
        body = body[: len(body) // 2]
    elif damage == "empty":
        body = bytearray()
    elif damage == "extended":
        body += b"\0"
    else:  # a valid object stored under the wrong key
        body = bytearray(c.get_object(Bucket=bucket, Key=w.keys.object_key(keys[0]))["Body"].read())
    c.put_object(Bucket=bucket, Key=name, Body=bytes(body))
    _, dst = make_pools("mha", "page_first", torch.bfloat16, PAGE)
    dst.kv_buffer.view(torch.uint8).fill_(0x5A)
    r = backend_for(s3_config, dst)
    assert r.batch_get_v1(keys, slots([7, 8, 9])) == [True, False, False]
    assert r.stats.counters["miss_corrupt"] == 2 and r.stats.counters["checksum_failures"] == 1
    assert page_bytes(dst, 7 * PAGE) == page_bytes(host, 1 * PAGE)
    # Page 9 may have been copied into its slot (this batch's own) before the hole was
    # known; it is reported False, and SGLang frees the slot.
    # the unusable object was deleted, so the page can be stored again (If-None-Match) and read
    assert r.stats.counters["corrupt_deleted"] == 1
    assert backend_for(s3_config, host).batch_set_v1(keys, slots([1, 2, 3])) == [True] * 3
    assert backend_for(s3_config, dst).batch_get_v1(keys, slots([7, 8, 9])) == [True] * 3
    assert page_bytes(dst, 8 * PAGE) == page_bytes(host, 2 * PAGE)
    if landing["scatter"]:  # good pages were scattered; a damaged one is never copied
        assert landing["pages"] == 0


def test_conditional_put_dedups_across_servers(s3_config, s3, bucket):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys = hashes(4, "d")
    a, b = backend_for(s3_config, host), backend_for(s3_config, host)
    assert a.batch_set_v1(keys, slots(range(4))) == [True] * 4
    assert b.batch_set_v1(keys, slots(range(4))) == [True] * 4
    assert b.stats.counters["pages_deduped"] == 4 and b.stats.counters["pages_written"] == 0
    assert a.batch_set_v1(keys, slots(range(4))) == [True] * 4  # known: no request at all
    assert a.stats.counters["pages_skipped_existing"] == 4
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=a.keys.namespace_prefix)
    names = [o["Key"] for o in listed.get("Contents", [])]
    assert len([n for n in names if not n.endswith("_namespace.json") and "/_access/" not in n]) == 4


def test_clear_keeps_the_shared_namespace_unless_allowed(s3_config, s3, bucket, served_model):
    """B2: SGLang's /hicache/storage-backend/clear on one server must not wipe the pages every
    server of the model shares; with allow_clear it deletes this namespace's pages only,
    never another namespace's, another server's access log or unrelated keys."""
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    mine = backend_for(s3_config, host)
    served_model(server_args_for(served_model.path, served_model_name="other"))
    theirs = backend_for(s3_config, host)
    served_model(server_args_for(served_model.path))
    mine.batch_set_v1(hashes(3, "c"), slots(range(3)))
    theirs.batch_set_v1(hashes(2, "c"), slots(range(2)))
    s3.client().put_object(Bucket=bucket, Key="unrelated/file.txt", Body=b"keep me")
    peer_log = mine.keys.namespace_prefix + "_access/peer-host.log"
    s3.client().put_object(Bucket=bucket, Key=peer_log, Body=b"")
    mine.clear()
    assert backend_for(s3_config, host).batch_exists(hashes(3, "c")) == 3  # a peer still hits
    cleared = backend_for({**s3_config, "allow_clear": True}, host)
    cleared.clear()
    assert backend_for(s3_config, host).batch_exists(hashes(3, "c")) == 0
    assert theirs.batch_exists(hashes(2, "c")) == 2
    assert s3.client().get_object(Bucket=bucket, Key="unrelated/file.txt")["Body"].read() == b"keep me"
    assert s3.client().get_object(Bucket=bucket, Key=peer_log)["Body"].read() == b""


def test_legacy_flat_page_api(s3_config):
    _, host = make_pools("mha", "page_first", torch.bfloat16, PAGE)
    fill_random(host)
    b = backend_for(s3_config, host)
    keys = hashes(2, "l")
    flats = [host.get_data_page(p * PAGE, flat=True).clone() for p in (3, 4)]
    assert b.batch_set(keys, flats) is True
    assert b.exists(keys[0]) and not b.exists("z" * 64)
    got = backend_for(s3_config, host).batch_get(keys, [torch.zeros_like(f) for f in flats])
    # compare bytes: random bits include NaNs, which torch.equal never calls equal
    assert all(torch.equal(g.view(torch.uint8), f.view(torch.uint8)) for g, f in zip(got, flats))
    assert b.get("z" * 64) is None


def test_store_outage_gives_misses_then_recovers(tmp_path):
    port = free_port()
    srv = SeaweedFS(str(tmp_path / "sw"), s3_port=port, buckets=("outage",)).start()
    try:
        cfg = srv.config("outage", connect_timeout_s=0.5, read_timeout_s=1.0, retries=0, negative_ttl_s=0.5)
        _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
        fill_random(host)
        keys = hashes(3, "o")
        b = backend_for(cfg, host)
        assert b.batch_set_v1(keys, slots(range(3))) == [True] * 3
        srv.stop()
        t0 = time.monotonic()
        assert b.batch_get_v1(keys, slots(range(5, 8))) == [False] * 3
        assert b.batch_exists(hashes(2, "unknown")) == 0
        assert time.monotonic() - t0 < 10
        assert b.batch_set_v1(hashes(2, "new"), slots(range(2))) == [False, False]
        srv = SeaweedFS(str(tmp_path / "sw"), s3_port=port, buckets=("outage",)).start()
        time.sleep(0.6)  # past negative_ttl_s
        assert b.batch_get_v1(keys, slots(range(5, 8))) == [True] * 3
        assert b.batch_set_v1(hashes(2, "new"), slots(range(2))) == [True, True]
    finally:
        srv.stop()


@pytest.mark.parametrize("problem", ["secret", "bucket", "endpoint"])
def test_bad_settings_fail_at_startup_with_a_clear_message(s3, bucket, problem):
    cfg = s3.config(bucket)
    if problem == "secret":
        cfg["secret_access_key"] = "definitely-wrong"
        match = "credentials"
    elif problem == "bucket":
        cfg["bucket"] = "no-such-bucket-here"
        match = "no-such-bucket-here"
    else:
        cfg["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
        cfg["connect_timeout_s"] = 0.5
        match = "cannot reach"
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    with pytest.raises(RuntimeError, match=match) as err:
        ObjectCacheStorage(storage_config(cfg), host)
    assert "definitely-wrong" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("nixl") is not None, reason="nixl is installed here")
def test_a_transport_that_cannot_load_fails_at_startup_with_one_line(s3_config):
    # No nixl package (or cuObject) here: the server must refuse to start, saying why.
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    with pytest.raises(RuntimeError, match="^objectcache: transport 'nixl' needs"):
        ObjectCacheStorage(storage_config({**s3_config, "transport": "nixl"}), host)


def test_bad_config_names_the_key(s3_config):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    with pytest.raises(ValueError, match="^max_concurency: unknown"):
        ObjectCacheStorage(storage_config({**s3_config, "max_concurency": 4}), host)


def test_never_none_and_never_raises(s3_config):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    b = backend_for(s3_config, host)
    bad = torch.arange(3)  # not page aligned: an internal error, reported as misses
    assert b.batch_get_v1(hashes(2), bad) == [False, False]
    assert b.batch_set_v1(hashes(2), bad) == [False, False]
    assert b.batch_exists([]) == 0
    assert b.batch_exists(["not-a-page-hash"]) == 0


# --- SGLang stopping its storage threads (C1) -------------------------------------------------


def stop_after(stop: threading.Event, delay_s: float, call):
    """`call()` with `stop` set `delay_s` into it: (its result, seconds it ran past the set)."""
    timer = threading.Timer(delay_s, stop.set)
    t0 = time.monotonic()
    timer.start()
    out = call()
    took = time.monotonic() - t0 - delay_s
    timer.join()
    return out, took


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_batch_ends_soon_after_sglang_sets_its_stop_event(s3, bucket, fault_proxy, transport):
    # Through the proxy every request waits 0.4 s, one at a time: a batch of 8 pages takes
    # over 3 s. SGLang sets its stop event, then joins the storage thread for 10 s and
    # raises if it is still busy (the scheduler dies): the batch must return within a poll
    # of the event, the pages not done being misses (reads) or False (writes).
    from objectcache_dev.harness.proxy import Faults

    cfg = {**s3.config(bucket), "endpoint_url": fault_proxy.endpoint, "transport": transport, "max_concurrency": 1}
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host)
    keys, more = hashes(8, "s"), hashes(8, "t")
    w, r = backend_for(cfg, host), backend_for(cfg, host)
    assert w.batch_set_v1(keys, slots(range(8))) == [True] * 8
    stop = threading.Event()
    w.watch_stop(stop)
    r.watch_stop(stop)
    fault_proxy.set(Faults(latency_s=0.4))

    got, took = stop_after(stop, 1.0, lambda: r.batch_get_v1(keys, slots(range(20, 28))))
    hits = sum(got)
    assert took < 0.35, took  # the GET in flight is abandoned, none starts after it
    assert 1 <= hits < 8 and got == [True] * hits + [False] * (8 - hits), got
    assert r.stats.counters["miss_stopped"] == 8 - hits
    assert r.batch_exists(keys) == 0 and r.batch_get_v1(keys, slots(range(20, 28))) == [False] * 8  # while set

    stop.clear()
    put, took = stop_after(stop, 1.0, lambda: w.batch_set_v1(more, slots(range(8, 16))))
    written = sum(put)
    assert took < 0.75, took  # the PUT in flight is finished (0.4 s), none starts after it
    assert 1 <= written < 8 and put == [True] * written + [False] * (8 - written), put
    listed = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=w.keys.namespace_prefix)["Contents"]}
    assert [w.keys.object_key(k) in listed for k in more] == put

    stop.clear()  # SGLang clears it once its threads are stopped: batches run again
    fault_proxy.clear()
    assert r.batch_get_v1(keys, slots(range(20, 28))) == [True] * 8
    assert w.batch_set_v1(more, slots(range(8, 16))) == [True] * 8


def test_batch_exists_reports_only_the_pages_the_policy_loads(s3_config):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    fill_random(host, seed=9)
    keys = hashes(4, "pol")
    assert backend_for(s3_config, host).batch_set_v1(keys, slots(range(4))) == [True] * 4
    slow = {"policy_store_mbps": 0.01, "policy_store_latency_ms": 100.0, "policy_prefill_tokens_s": 1e7}
    computes = backend_for({**s3_config, **slow}, host)
    assert computes.batch_exists(keys) == 0  # recomputing is far sooner than this store
    assert computes.stats.counters["policy_pages_computed"] == 4
    assert backend_for({**s3_config, **slow, "compute_or_load": "load"}, host).batch_exists(keys) == 4
    cold = backend_for(s3_config, host)  # nothing measured yet: the whole hit, as before
    assert cold.batch_exists(keys) == 4
    assert cold.batch_get_v1(keys, slots(range(10, 14))) == [True] * 4
    assert cold.cache.policy.meter._n_reads == 1  # a whole batch is a sample of the store's rate


def test_the_small_object_warning_names_a_page_size_that_is_enough(s3_config, caplog):
    _, host = make_pools("mha", "layer_first", torch.bfloat16, PAGE)
    with caplog.at_level("WARNING"):
        b = backend_for({**s3_config, "small_object_warn_kb": 256}, host)
    g = b.pages.geometry
    said = [r.getMessage() for r in caplog.records if "request-bound" in r.getMessage()]
    assert len(said) == 1, said
    enough = int(said[0].split("--page-size ")[1].split()[0])
    assert enough & (enough - 1) == 0  # a power of two, as SGLang's page sizes are
    assert g.object_bytes / g.tokens * enough >= 256 * 1024 > g.object_bytes / g.tokens * enough / 2
