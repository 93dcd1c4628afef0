"""The layerwise loader's parts on their own, with no store server and no threads: the
wire messages, the GET plan, staging buffers, the pace (deadlines), a fetch job's
outcomes, and a batch's state machine driven by hand."""

from __future__ import annotations

import dataclasses
import pickle
import time

import numpy as np
import pytest
import torch

from sglang_objectcache import objformat
from sglang_objectcache.config import SchedulerConfig
from sglang_objectcache.layerwise.batches import Batches
from sglang_objectcache.layerwise.fetch_worker import run_job
from sglang_objectcache.layerwise.hosttier import HostTier, TierBlocks
from sglang_objectcache.layerwise.messages import (
    Corrupt,
    FetchJob,
    Init,
    JobDone,
    Load,
    MapSegment,
    Missing,
    Quit,
    Staged,
    StoreFailed,
    UnmapSegment,
    Unsupported,
)
from sglang_objectcache.layerwise.pace import Pace
from sglang_objectcache.layerwise.scatter import DeviceScatter
from sglang_objectcache.layerwise.settings import GetPlan, LoaderHooks, LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.staging import StagingPool
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.objformat import FormatError, PageGeometry
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import StoreError
from sglang_objectcache.transfers import Transfer, TransferScheduler

G = PageGeometry("mha", 3, 4, (32, 32), "float16")


def digest(h: str) -> bytes:
    return h.encode()[:16].ljust(16, b"\0")


# ---- messages ---------------------------------------------------------------------------

def test_wire_messages_survive_pickling_and_are_frozen():
    outcomes = [Staged(None, {1: 7, 2: 9}, None), StoreFailed("timeout", "slow"), Missing(),
                Corrupt("short"), Unsupported("v9")]
    wire = [Init({"bucket": "b"}, G, 4), MapSegment(3, 16, G.layer_bytes), UnmapSegment(3), Quit(),
            FetchJob(5, [("k", 0, 10)], [2], range(1, 3), None, {1: 3, 2: 3}), JobDone(5, outcomes, 2.0, 1.0)]
    for msg in wire:
        assert pickle.loads(pickle.dumps(msg)) == msg
    with pytest.raises(dataclasses.FrozenInstanceError):
        wire[-1].tid = 6
    # Pages travel as plain ints and layers as a range: no object per page but the outcome.
    job = FetchJob(1, [(f"k{i}", 0, 10) for i in range(16)], list(range(16)), range(0, 1), None)
    assert len(pickle.dumps(job)) < 400


# ---- the GET plan -------------------------------------------------------------------------

def test_get_plan_reads_layer_zero_alone_then_whole_groups():
    g = PageGeometry("mha", 8, 4, (32, 32), "float16")
    plan = GetPlan.of(g, LoaderSettings(window_layers=1, layers_per_get=3))
    assert (plan.per_get, plan.lead_alone, plan.window) == (3, True, 4)  # a group + the lead layer
    groups, first = [], 0
    while first < g.num_layers:
        groups.append(list(plan.group_at(first, g.num_layers)))
        first = groups[-1][-1] + 1
    assert groups == [[0], [1, 2, 3], [4, 5, 6], [7]]
    one = GetPlan.of(g, LoaderSettings(window_layers=2, layers_per_get=1))
    assert (one.per_get, one.lead_alone, one.window) == (1, False, 2)
    assert GetPlan.of(g, LoaderSettings(layers_per_get=99)).per_get == 8  # at most every layer


# ---- staging buffers ----------------------------------------------------------------------

class FakeFetch:
    def __init__(self):
        self.allocs, self.released = [], []

    def alloc(self, rows):
        self.allocs.append(rows)
        return torch.zeros((rows, G.layer_bytes), dtype=torch.uint8)

    def release(self, buf):
        self.released.append(buf)


class FakeEvent:
    def __init__(self):
        self.done = False

    def query(self):
        return self.done


def test_staging_pool_reuses_whole_buffers_and_keeps_a_bounded_few():
    fetch = FakeFetch()
    pool = StagingPool(fetch, keep=1)
    small = pool.take(3)
    assert small.shape[0] == 3 and fetch.allocs == [16]  # at least a transfer's rows
    pool.give_back([small])
    assert [t.shape[0] for t in pool.free] == [16]  # the whole buffer, not the 3 rows used
    big = pool.take(10)
    assert fetch.allocs == [16] and big.data_ptr() == small.data_ptr()
    others = [pool.take(16) for _ in range(2)]
    pool.give_back([big, *others])
    pool.take(1)  # over `keep`: the extra buffers go back to the fetcher
    assert len(fetch.released) == 2 and len(pool.free) == 0


def test_staging_read_by_a_copy_is_reused_only_once_the_copy_is_done():
    fetch = FakeFetch()
    pool = StagingPool(fetch, keep=4)
    buf, event = pool.take(16), FakeEvent()
    pool.give_back_after(buf, event)
    assert pool.take(16).data_ptr() != buf.data_ptr()  # still being read: a new one
    event.done = True
    assert pool.take(16).data_ptr() == buf.data_ptr()


# ---- pace ---------------------------------------------------------------------------------

class Left:
    def __init__(self, nbytes, live=True):
        self.nbytes, self.live, self.deadline0 = nbytes, live, None

    def store_bytes_left(self):
        return self.nbytes


def test_pace_rate_is_the_cap_else_the_observed_reads_scaled_by_the_link_share():
    assert Pace(TransferScheduler(SchedulerConfig(bandwidth_mbps=80.0)), 0.002).rate() == 10e6
    sched = TransferScheduler(SchedulerConfig(max_inflight=2))
    sched.submit([Transfer("r", layer, 1) for layer in range(3)], 0.0)
    sched.next(0.0)
    assert sched.inflight_count == 2
    pace = Pace(sched, 0.002)
    assert pace.rate() == 0.0
    pace.observe_read(1000, 0.001)  # 2 ran at once (max_inflight): the link did twice this one
    assert pace.rate() == pytest.approx(2e6)
    pace.observe_read(1000, 0.002)
    assert pace.rate() == pytest.approx(0.8 * 2e6 + 0.2 * 1e6)
    pace.observe_layer(0.012)
    assert pace.layer_s == pytest.approx(0.8 * 0.002 + 0.2 * 0.012)
    assert pace.deadline(1.0, 3) == pytest.approx(1.0 + 3 * pace.layer_s)


def test_pace_holds_the_bytes_in_flight_to_what_the_link_carries_within_the_read_budget():
    sched = TransferScheduler(SchedulerConfig(max_inflight=100))
    pace = Pace(sched, 0.002, read_budget_s=2.0)
    sched.submit([Transfer("r", 0, 4_000_000)], 0.0)
    (first,) = sched.next(0.0).start
    sched.done(first, 0.4)  # as the loader does: done, then the read is observed
    pace.observe_read(4_000_000, 0.4)  # alone on the link: 10 MB/s, 20 MB within the budget
    sched.submit([Transfer("r", layer, 7_000_000) for layer in range(1, 5)], 0.4)
    assert len(sched.next(0.4).start) == 3  # 21 MB: the 4th waits; all at once, none ends in 2 s
    unbounded = TransferScheduler(SchedulerConfig(max_inflight=100))
    Pace(unbounded, 0.002).observe_read(4_000_000, 0.4)  # no budget: no cap
    unbounded.submit([Transfer("r", layer, 7_000_000) for layer in range(4)], 0.0)
    assert len(unbounded.next(0.0).start) == 4


def test_pace_projects_starts_behind_live_batches_and_replans_when_the_rate_moves():
    sched = TransferScheduler(SchedulerConfig(bandwidth_mbps=8.0))  # 1e6 bytes/s
    pace = Pace(sched, 0.01)
    t0 = time.monotonic()
    t = pace.projected_start([Left(500_000), Left(10**9, live=False)])
    assert 0.5 <= t - t0 <= 0.6  # behind the live batch's bytes, at the cap; not the failed one
    batches = {1: Left(2_000_000), 0: Left(1_000_000)}
    sched.submit([Transfer("b1", 0, 1, deadline=0.0)], 0.0)
    pace.replan(batches)
    assert batches[1].deadline0 - batches[0].deadline0 == pytest.approx(1.0)  # in index order
    assert sched.next(0.0).start[0].deadline == pytest.approx(batches[1].deadline0)
    before = batches[0].deadline0
    pace.replan(batches)  # the rate did not move: nothing is re-planned
    assert batches[0].deadline0 == before


# ---- a fetch job's outcomes ---------------------------------------------------------------

class FakeStore:
    def __init__(self, objects: dict):
        self.objects = objects

    def get_ranges(self, ranges):
        out = []
        for name, start, end in ranges:
            obj = self.objects.get(name)
            out.append(obj[start:end] if isinstance(obj, (bytes, bytearray, memoryview)) else obj)
        return out


def sealed_objects(names):
    gen = torch.Generator().manual_seed(3)
    payloads = {n: torch.randint(0, 256, (G.payload_bytes,), dtype=torch.uint8, generator=gen) for n in names}
    return payloads, {n: bytes(objformat.sealed(G, digest(n), p.numpy())) for n, p in payloads.items()}


def test_run_job_answers_one_typed_outcome_per_page():
    _, objs = sealed_objects(["a", "b"])
    objs["short"] = objs["a"][:100]
    objs["gone"] = None
    objs["err"] = StoreError("throttled", "slow down")
    objs["past"] = StoreError("client", "range", status=416)
    names = ["a", "short", "gone", "err", "past", "b"]
    end = G.layer_range(0)[1]
    job = FetchJob(9, [(n, 0, end) for n in names], list(range(6)), range(0, 1), [digest(n) for n in names])
    rows = {0: np.zeros((6, G.layer_bytes), np.uint8)}
    done = run_job(FakeStore(objs), G, job, rows)
    assert done.tid == 9 and done.arrived >= done.started
    kinds = [type(o) for o in done.outcomes]
    assert kinds == [Staged, Corrupt, Missing, StoreFailed, Corrupt, Staged]
    assert done.outcomes[3] == StoreFailed("throttled", "slow down")
    ok = done.outcomes[0]
    objformat.check_layer_sum(ok.header, 0, ok.sums[0])  # the staged row is the layer
    assert bytes(rows[0][0]) == objs["a"][G.layer_range(0)[0] : end]
    wrong_key = run_job(FakeStore(objs), G, FetchJob(1, [("a", 0, end)], [0], range(0, 1), [digest("b")]), rows)
    assert isinstance(wrong_key.outcomes[0], Corrupt)


# ---- a batch's state machine --------------------------------------------------------------

class Counter:
    def __init__(self):
        self.done, self.failed = [], []

    def complete(self, index, layer, event=None):
        self.done.append((index, layer))

    def fail(self, index, err):
        self.failed.append((index, err))

    def progress(self, index):
        pass


class Machine:
    """Batches with a real scheduler and CPU pools; the fetcher is this test, by hand."""

    def __init__(self, objects: dict, window: int = 1, max_inflight: int = 32, tier_mb: int = 0):
        self.store = FakeStore(objects)
        self.sched = TransferScheduler(SchedulerConfig(max_inflight=max_inflight))
        self.counter, self.stats = Counter(), Stats()
        self.corrupt, self.missing = [], []
        self.pool = [tuple(torch.zeros((64, rb), dtype=torch.uint8) for rb in G.row_bytes) for _ in range(3)]
        self.staging = StagingPool(FakeFetch(), keep=8)
        self.tier = HostTier(tier_mb << 20)
        parts = LoaderParts(store=None, content_digest=digest, scheduler=self.sched, tier=self.tier,
                            timeline=Timeline(), stats=self.stats, counter=self.counter)
        hooks = LoaderHooks(on_corrupt=lambda names, hashes: self.corrupt.extend(names),
                            on_missing=self.missing.append)
        self.batches = Batches(G, parts, hooks, GetPlan.of(G, LoaderSettings(window, 1)), self.staging,
                               DeviceScatter(self.pool, G, self.staging), Pace(self.sched, 0.001),
                               copy_host=lambda *a: pytest.fail("no host-tier pages here"))

    def load(self, index, names, pages):
        slots = torch.tensor([p * G.tokens + t for p in pages for t in range(G.tokens)], dtype=torch.int64)
        self.batches.start(Load(index, ["r"], names, names, slots, None, self.counter, 0.0))

    def started(self) -> list:
        return self.sched.next(0.0).start

    def answer(self, t) -> None:
        p = t.payload
        digests = [digest(p.batch.hashes[i]) for i in p.group] if p.ranges[0][1] == 0 else None
        done = run_job(self.store, G, FetchJob(0, p.ranges, p.group, p.layers, digests),
                       {layer: p.staged[layer].numpy() for layer in p.layers})
        self.sched.done(t, 0.0)
        self.batches.on_fetched(t, done)

    def pump(self) -> None:
        while started := self.started():
            for t in started:
                self.answer(t)


def test_a_batch_scatters_each_verified_layer_and_refills_its_window():
    payloads, objs = sealed_objects(["p0", "p1"])
    m = Machine(objs, window=1)
    m.load(0, ["p0", "p1"], [5, 2])
    first = m.started()
    assert [t.layer for t in first] == [0]  # a window of one layer: one transfer out
    m.answer(first[0])
    assert m.counter.done == [(0, 0)]
    m.pump()
    assert m.counter.done == [(0, 0), (0, 1), (0, 2)] and m.counter.failed == []
    assert m.stats.counters["layerwise_batches_ok"] == 1
    for layer, pools in enumerate(m.pool):
        s, e = G.layer_range(layer)
        for page, slot_page in ((0, 5), (1, 2)):
            want = payloads[f"p{page}"].numpy()[s - G.header_bytes : e - G.header_bytes]
            got = torch.cat([pool[slot_page * G.tokens : (slot_page + 1) * G.tokens].reshape(-1) for pool in pools])
            assert bytes(got.numpy()) == bytes(want)  # K rows then V rows: the layer's layout
    assert len(m.staging.free) >= 1  # every layer's staging came back


def test_a_missing_page_fails_the_batch_and_drops_its_queued_transfers():
    _, objs = sealed_objects(["p0"])
    m = Machine(objs, window=3, max_inflight=1)
    m.load(4, ["p0", "gone"], [1, 2])
    (first,) = m.started()
    assert m.sched.queue_depth == 2  # layers 1 and 2 wait for the one slot
    m.answer(first)
    assert m.missing == ["gone"]
    assert [(i, type(e)) for i, e in m.counter.failed] == [(4, KeyError)]
    assert m.sched.queue_depth == 0  # cancelled: they will never come back
    assert m.batches.live[4].pending == 0


def test_a_corrupt_layer_reports_only_its_page_then_fails():
    _, objs = sealed_objects(["p0", "p1"])
    bad = bytearray(objs["p1"])
    bad[G.layer_range(2)[0] + 1] ^= 0xFF
    objs["p1"] = bytes(bad)
    m = Machine(objs, window=3)
    m.load(0, ["p0", "p1"], [1, 2])
    m.pump()
    assert m.corrupt == ["p1"]
    assert m.counter.done == [(0, 0), (0, 1)]  # layers before the bad one were served
    assert [type(e) for _, e in m.counter.failed] == [FormatError]
    assert m.stats.counters["checksum_failures"] == 1


def test_a_stopped_batch_keeps_its_staging_until_its_last_job_is_back():
    _, objs = sealed_objects(["p0"])
    m = Machine(objs, window=2)
    m.load(0, ["p0"], [1])
    out = m.started()
    assert len(out) == 2
    m.batches.stop(0)
    assert 0 in m.batches.draining and 0 not in m.batches.live
    free = len(m.staging.free)
    m.answer(out[0])
    assert 0 in m.batches.draining and len(m.staging.free) == free  # one job may still write
    m.answer(out[1])
    assert m.batches.draining == {} and len(m.staging.free) == free + 2
    assert m.counter.done == []  # nothing of a stopped batch is used


def test_tier_blocks_assemble_whole_objects_from_headers_and_layers():
    _, objs = sealed_objects(["a", "b", "c"])
    pages = [0, 2, 3]  # page 1 came from the host tier: not assembled; 2 and 3 are one slice
    blocks = TierBlocks(pages, 2, G.object_bytes)
    assert [(group, rows) for group, rows, _ in blocks.blocks][1] == ([3], slice(3, 4))
    staged = {layer: np.zeros((4, G.layer_bytes), np.uint8) for layer in range(G.num_layers)}
    for page, name in zip(pages, "abc"):
        blocks.header(page, objs[name][: G.header_bytes])
        for layer in range(G.num_layers):
            s, e = G.layer_range(layer)
            staged[layer][page] = np.frombuffer(objs[name][s:e], np.uint8)
    for layer in range(G.num_layers):
        blocks.layer(G.layer_range(layer), staged[layer])
    tier = HostTier(1 << 20)
    blocks.put(tier, ["A", "skip", "B", "C"])
    assert blocks.blocks == [] and "skip" not in tier
    assert [bytes(tier.get(n)) for n in "ABC"] == [objs[n] for n in "abc"]


def test_a_batch_fills_the_host_tier_with_the_objects_it_verified():
    _, objs = sealed_objects(["p0", "p1"])
    m = Machine(objs, window=2, tier_mb=1)
    m.load(0, ["p0", "p1"], [1, 2])
    m.pump()
    assert m.counter.failed == []
    assert bytes(m.tier.get("p0")) == objs["p0"] and bytes(m.tier.get("p1")) == objs["p1"]


def test_the_scatter_runs_the_configured_kernel_backend(monkeypatch):
    pool = [tuple(torch.zeros((64, rb), dtype=torch.uint8) for rb in G.row_bytes)]
    staging = StagingPool(FakeFetch(), keep=8)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        DeviceScatter(pool, G, staging, "triton")  # refused at build, not at the first scatter
    with pytest.raises(ValueError):
        DeviceScatter(pool, G, staging, "cuda-please")
    seen = []
    monkeypatch.setattr("sglang_objectcache.kernels.scatter_layer",
                        lambda *a, backend: seen.append(backend))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for backend in ("triton", "auto"):
        DeviceScatter(pool, G, staging, backend).scatter(0, staging.take(1), torch.arange(G.tokens))
    assert seen == ["triton", "torch"]
