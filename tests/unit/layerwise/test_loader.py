"""The layerwise pipeline (loader, counter, host tier, timeline) on SGLang's real CPU KV pool
and a real SeaweedFS, with no SGLang server: fast and deterministic."""

from __future__ import annotations

import threading
import time

import pytest
from layerwise_rig import Rig, hashes

from objectcache_dev.s3server import SeaweedFS, free_port
from sglang_objectcache import objformat
from sglang_objectcache.config import ConfigError, ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.messages import Stop
from sglang_objectcache.layerwise.settings import auto_layers_per_get
from sglang_objectcache.layerwise.timeline import overlapped_layers
from sglang_objectcache.sglang import stats_bridge
from sglang_objectcache.stats import Stats


@pytest.fixture(params=["process", "thread"])
def fetch(request):
    """Both fetchers: the worker process (the default) and the in-process thread pool."""
    return request.param


@pytest.fixture
def rig(s3_config, fetch):
    r = Rig(s3_config, fetch=fetch)
    yield r
    r.close()


def test_loads_every_layer_into_the_right_slots(rig):
    keys = hashes(6)
    rig.put(keys, [1, 2, 3, 4, 5, 6])
    _, ok = rig.load(keys, [30, 9, 17, 40, 2, 11])  # any slot order
    assert ok
    assert rig.same([1, 2, 3, 4, 5, 6], [30, 9, 17, 40, 2, 11])
    assert rig.untouched([0, 1, 3, 10, 12, 31, 41])
    assert rig.stats.counters["layerwise_pages_store"] == 6
    # The GET latency histogram (objectcache_get_latency_seconds) counts every layerwise GET,
    # as it does in page mode: it stayed empty in this mode before.
    assert sum(rig.stats.latency_counts) == rig.stats.counters["get_requests"] > 0
    assert rig.stats.latency_sum > 0


@pytest.mark.parametrize("per_get, window", [(2, 1), (3, 4)])
def test_layers_per_get_reads_groups_of_layers_with_fewer_requests(s3_config, per_get, window, fetch):
    rig = Rig(s3_config, per_get=per_get, window=window, fetch=fetch)
    try:
        layers = rig.g.num_layers
        keys = hashes(5, f"g{per_get}")
        rig.put(keys, [1, 2, 3, 4, 5])
        assert rig.load(keys, [22, 8, 31, 14, 3])[1]
        assert rig.same([1, 2, 3, 4, 5], [22, 8, 31, 14, 3])
        assert rig.untouched([0, 1, 2, 4, 9, 30, 32])
        groups = 1 + -(-(layers - 1) // per_get)  # layer 0 alone, then groups of per_get
        assert groups < layers
        assert rig.stats.counters["get_requests"] == 5 * groups
    finally:
        rig.close()


def test_auto_layers_per_get_makes_gets_of_a_mebibyte_at_most_a_whole_object():
    def geom(layers, tokens, row):
        return objformat.PageGeometry(kind="mha", num_layers=layers, tokens=tokens, row_bytes=(row, row),
                                      dtype="bfloat16")

    assert auto_layers_per_get(geom(32, 64, 32 * 256)) == 1  # 32 KV heads x 128: 1 MiB a layer
    assert auto_layers_per_get(geom(32, 64, 8 * 256)) == 4  # Llama-3-8B: 256 KiB a layer
    assert auto_layers_per_get(geom(32, 64, 8 * 256 - 2)) == 5  # just short of 1 MiB at 4
    assert auto_layers_per_get(geom(8, 64, 4 * 128)) == 8  # the CPU bench model: 64 KiB, whole object
    assert auto_layers_per_get(geom(3, 4, 64)) == 3
    assert ObjectCacheConfig.from_dict({"bucket": "b"}).layerwise.layers_per_get == 0  # auto is the default
    with pytest.raises(ConfigError, match="^layerwise.layers_per_get"):
        ObjectCacheConfig.from_dict({"bucket": "b", "layerwise": {"layers_per_get": -1}})


def test_auto_layers_per_get_reads_a_small_page_in_two_requests(s3_config):
    rig = Rig(s3_config, per_get=0)
    try:
        assert rig.loader.per_get == rig.g.num_layers > 2
        keys = hashes(4, "auto")
        rig.put(keys, [1, 2, 3, 4])
        assert rig.load(keys, [9, 20, 5, 33])[1]
        assert rig.same([1, 2, 3, 4], [9, 20, 5, 33])
        # Layer 0 alone (the forward starts on it), then the rest of the object in one GET.
        assert rig.stats.counters["get_requests"] == 4 * 2
        layers = rig.timeline.to_json()["batches"][-1]["layers"]
        # ... issued once layer 0 is in: in flight together, the larger reads of the rest
        # shared the link with layer 0, and it came no sooner than the whole object.
        assert layers[0]["issued"] <= layers[0]["arrived"] <= layers[1]["issued"]
    finally:
        rig.close()


def test_a_corrupt_layer_inside_a_group_still_fails_the_batch(s3_config, s3, bucket, fetch):
    rig = Rig(s3_config, per_get=2, fetch=fetch)
    try:
        keys = hashes(2, "cg")
        names = rig.put(keys, [1, 2])
        c = s3.client()
        body = bytearray(c.get_object(Bucket=bucket, Key=names[0])["Body"].read())
        body[rig.g.layer_range(1)[0] + 5] ^= 0x01  # layer 1: the second layer of the first group
        c.put_object(Bucket=bucket, Key=names[0], Body=bytes(body))
        assert rig.load(keys, [10, 11])[1] is False
        assert rig.stats.counters["checksum_failures"] == 1
    finally:
        rig.close()


def test_host_tier_serves_repeats_without_the_store(s3_config, fetch):
    rig = Rig(s3_config, host_mb=16, fetch=fetch)
    try:
        keys = hashes(4, "t")
        rig.put(keys, [1, 2, 3, 4])
        assert rig.load(keys, [20, 21, 22, 23])[1]
        gets = rig.stats.counters["get_requests"]
        assert rig.load(keys, [40, 41, 42, 43])[1]
        assert rig.stats.counters["get_requests"] == gets  # no store request at all
        assert rig.stats.counters["layerwise_pages_host"] == 4
        assert rig.same([1, 2, 3, 4], [40, 41, 42, 43])
    finally:
        rig.close()


def test_corrupt_layers_fail_the_batch_and_only_the_failing_pages_are_reported(rig, s3, bucket):
    """C6: the scrub re-reads what it is given, so it is given the pages whose checks
    failed (all of them, not only the first), never the whole batch."""
    keys = hashes(4, "c")
    names = rig.put(keys, [1, 2, 3, 4])
    c = s3.client()
    for name in (names[1], names[3]):
        body = bytearray(c.get_object(Bucket=bucket, Key=name)["Body"].read())
        body[-3] ^= 0x10  # last layer
        c.put_object(Bucket=bucket, Key=name, Body=bytes(body))
    _, ok = rig.load(keys, [10, 11, 12, 13])
    assert not ok
    assert rig.corrupt == [names[1], names[3]]  # reported before the batch failed: no wait here
    assert rig.stats.counters["checksum_failures"] == 2


def test_missing_object_fails_the_batch(rig):
    keys = hashes(3, "m")
    rig.put(keys[:2], [1, 2])
    assert rig.load(keys, [10, 11, 12])[1] is False


def test_a_stalled_store_times_out_and_never_writes_late(tmp_path, fetch):
    port = free_port()
    srv = SeaweedFS(str(tmp_path / "sw"), s3_port=port, buckets=("stall",)).start()
    rig = Rig(srv.config("stall", read_timeout_s=30.0, retries=0), timeout_s=1.0, fetch=fetch)
    try:
        keys = hashes(3, "s")
        rig.put(keys, [1, 2, 3])
        srv.pause()
        t0 = time.monotonic()
        _, ok = rig.load(keys, [10, 11, 12])
        assert not ok and time.monotonic() - t0 < 5  # the forward was released by the timeout
        srv.resume()
        time.sleep(1.0)  # the stalled GETs now complete: their bytes must go nowhere
        assert rig.untouched([10, 11, 12])
    finally:
        srv.resume()
        rig.close()
        srv.stop()


def test_fetch_overlaps_compute(s3_config, fetch):
    """Later layers' bytes arrive after the forward has begun computing earlier layers."""
    rig = Rig(s3_config, window=1, fetch=fetch)
    try:
        keys = hashes(8, "o")
        rig.put(keys, list(range(1, 9)))
        idx, ok = rig.load(keys, list(range(20, 28)), compute_s=0.05)
        assert ok
        batch = rig.timeline.batch(idx)
        assert overlapped_layers(batch), batch
        trace = rig.timeline.chrome_trace()
        assert {e["tid"] for e in trace["traceEvents"]} == {"fetch", "scatter", "forward wait"}
    finally:
        rig.close()


def test_counter_without_loads_never_blocks():
    c = LayerReadyCounter(4, timeout_s=10)
    c.set_consumer(-1)
    t0 = time.monotonic()
    for layer in range(4):
        c.wait_until(layer)
    assert time.monotonic() - t0 < 0.1
    idx = c.update_producer()
    c.set_consumer(idx)
    threading.Timer(0.05, lambda: [c.complete(idx, l) for l in range(4)]).start()
    for layer in range(4):
        c.wait_until(layer)
    assert c.finish(idx) is True


def test_a_load_still_coming_in_is_waited_for_past_the_layer_timeout_and_a_stalled_one_is_not():
    # A 10 MB/s link took 3.4 s for a 4K hit and 6.7 s for 8K: past a 5 s timeout counted
    # from the wait's start, the 8K load failed while its bytes were still arriving, and the
    # request recomputed after the wait (ttft_cap10_half_timeout.json: 70.7 s vs 48.6 s).
    c = LayerReadyCounter(2, timeout_s=1.0)
    idx = c.update_producer()
    c.set_consumer(idx)
    stop = threading.Event()

    def trickle():  # a read lands every 0.2 s for 2.4 s, then layer 0 is in
        for _ in range(12):
            if stop.wait(0.2):
                return
            c.progress(idx)
        c.complete(idx, 0)

    threading.Thread(target=trickle, daemon=True).start()
    t0 = time.monotonic()
    c.wait_until(0)
    assert not c.failed(idx) and time.monotonic() - t0 >= 2.3  # over twice the timeout, still fine
    t1 = time.monotonic()
    c.wait_until(1)  # nothing comes in any more
    assert c.failed(idx) and 0.95 <= time.monotonic() - t1 < 3.0
    assert c.finish(idx) is False
    stop.set()


def test_a_failed_load_with_queued_transfers_releases_its_staging(s3_config, fetch):
    """A failed load cancels its queued transfers, which never come back: its staging must
    still be released, not parked in `draining` for ever (one leaked set per failed load)."""
    rig = Rig(s3_config, fetch=fetch, sched=SchedulerConfig(max_inflight=1))  # the rest of the batch queues
    try:
        keys = hashes(40, "leak")
        rig.put(keys[1:], list(range(1, 40)))  # page 0 is missing: it fails every load
        allocs = []
        alloc = rig.loader.fetch.alloc
        rig.loader.fetch.alloc = lambda rows: allocs.append(rows) or alloc(rows)
        for _ in range(20):
            assert rig.load(keys, list(range(40)))[1] is False
        assert rig.loader.batches.draining == {}
        assert len(allocs) <= 2 * rig.g.num_layers  # reused, not made anew per load
        if fetch == "process":
            assert len(rig.loader.fetch._segments) <= 2 * rig.g.num_layers
        rig.put(keys[:1], [0])
        assert rig.load(keys, list(range(20, 60)))[1]
        assert rig.same(list(range(40)), list(range(20, 60)))
    finally:
        rig.close()


def test_staging_buffers_keep_their_size_across_small_and_large_loads(s3_config, fetch):
    """L3: a small batch used the first rows of a buffer and gave back only those rows, so
    buffers shrank to the smallest batch and every larger load allocated new ones (pinned
    memory or shared segments: expensive)."""
    rig = Rig(s3_config, fetch=fetch)
    try:
        keys = hashes(20, "sz")
        rig.put(keys, list(range(1, 21)))
        allocs = []
        alloc = rig.loader.fetch.alloc
        rig.loader.fetch.alloc = lambda rows: allocs.append(rows) or alloc(rows)
        for k in range(4):
            assert rig.load(keys, list(range(30, 50)))[1]
            assert rig.load(keys[:2], [50 + 2 * k, 51 + 2 * k])[1]
        assert rig.same(list(range(1, 21)), list(range(30, 50)))
        assert len(allocs) == rig.g.num_layers  # one set, made by the first load, reused since
        assert all(t.shape[0] >= 20 for t in rig.loader.staging.free)
    finally:
        rig.close()


def returns_within(seconds, fn) -> list:
    """[fn()] if it returned within `seconds`, else [] (it may hang for ever: a daemon thread)."""
    out = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    return out


def test_an_error_in_the_io_loop_fails_the_load_fast_and_the_loop_goes_on(s3_config, fetch):
    rig = Rig(s3_config, timeout_s=30.0, fetch=fetch)  # a layer timeout must not be what ends it
    try:
        keys = hashes(3, "x")
        rig.put(keys, [1, 2, 3])
        real_next, calls = rig.loader.sched.next, []

        def next_raising_once(now):
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("a scheduler bug")
            return real_next(now)

        rig.loader.sched.next = next_raising_once
        out = returns_within(10, lambda: rig.load(keys, [10, 11, 12]))
        assert out, "the load hung: the I/O thread died and stop() waited for it for ever"
        assert out[0][1] is False
        assert rig.loader._thread.is_alive()
        assert rig.load(keys, [20, 21, 22])[1]
        assert rig.same([1, 2, 3], [20, 21, 22])
    finally:
        rig.close()


def test_stop_gives_up_on_a_stuck_or_gone_io_thread(s3_config, monkeypatch):
    from sglang_objectcache.layerwise import loader as loader_mod

    monkeypatch.setattr(loader_mod, "STOP_TIMEOUT_S", 0.5, raising=False)
    rig = Rig(s3_config, fetch="thread")
    gate = threading.Event()
    try:
        keys = hashes(2, "st")
        rig.put(keys, [1, 2])
        real_handle = rig.loader._handle

        def stuck_on_stop(msg):
            if isinstance(msg, Stop):
                gate.wait()  # the I/O thread is stuck (until the test lets it go)
            real_handle(msg)

        rig.loader._handle = stuck_on_stop
        out = returns_within(5, lambda: rig.load(keys, [10, 11]))
        assert out, "finish hung on a stuck I/O thread"
        assert out[0][1] is False  # every layer landed, but the stop was never confirmed
        gate.set()
        rig.loader._handle = real_handle
        assert rig.load(keys, [20, 21])[1]
        rig.loader.close()  # no I/O thread at all: finish must not wait for one
        idx = rig.counter.update_producer()
        t0 = time.monotonic()
        assert returns_within(5, lambda: rig.counter.finish(idx)) == [False]
        assert time.monotonic() - t0 < 0.4
    finally:
        gate.set()
        rig.close()


def test_sglang_metric_lists_stay_bounded_without_get_stats():
    """SGLang drains them only with --enable-metrics; without it they grew by a few entries
    per batch for ever."""
    s = Stats()
    for k in range(10_000):
        s.record_prefetch(k, 1 << 20, 0.01)
        s.record_backup(k, 1 << 20, 0.01)
    lists = (s._prefetch_pgs, s._backup_pgs, s._prefetch_bw, s._backup_bw)
    assert all(0 < len(q) <= 5_000 for q in lists)  # a few thousand at most
    m = stats_bridge.storage_metrics(s)
    assert isinstance(m.prefetch_pgs, list) and m.prefetch_pgs[-1] == 9_999  # the latest are kept
    assert 0 < len(m.backup_bandwidth) <= 5_000
    assert all(len(q) == 0 for q in lists)
