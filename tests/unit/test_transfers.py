"""Transfer scheduler (`transfers.py`) with a fake clock, its deadline arithmetic
(`deadlines.py`), and the simulator that drives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_objectcache.config import ConfigError, ObjectCacheConfig, SchedulerConfig
from objectcache_dev.deadlines import ComputeModel, layer_deadlines, plan_starts
from sglang_objectcache.transfers import WRITE, Transfer, TransferScheduler
from objectcache_dev.sim import System, Workload, added_ttft, make_requests, summarize

ROOT = Path(__file__).resolve().parents[2]


def sched(policy="deadline", **kw) -> TransferScheduler:
    return TransferScheduler(SchedulerConfig(policy=policy, **{"max_inflight": 1000, **kw}))


def order(s: TransferScheduler, now: float = 0.0) -> list[tuple[str, int]]:
    return [(t.request_id, t.layer) for t in s.next(now).start]


def layers(rid: str, n: int, start: float, step: float, arrival: float = 0.0, nbytes: int = 100, **kw):
    return [Transfer(rid, l, nbytes, start + l * step, arrival=arrival, **kw) for l in range(n)]


# -- policies ---------------------------------------------------------------------------
def test_deadline_is_earliest_deadline_first():
    s = sched("deadline")
    s.submit(layers("a", 3, start=0.0, step=0.010), 0.0)
    s.submit(layers("b", 3, start=0.005, step=0.001, arrival=1.0), 0.0)
    assert order(s) == [("a", 0), ("b", 0), ("b", 1), ("b", 2), ("a", 1), ("a", 2)]


def test_deadline_ties_break_by_priority_then_arrival():
    s = sched("deadline")
    s.submit([Transfer("late", 0, 1, 5.0, arrival=2.0)], 0.0)
    s.submit([Transfer("early", 0, 1, 5.0, arrival=1.0)], 0.0)
    s.submit([Transfer("urgent", 0, 1, 5.0, arrival=3.0, priority=-1)], 0.0)
    assert [r for r, _ in order(s)] == ["urgent", "early", "late"]


def test_fifo_is_arrival_then_layer():
    s = sched("fifo")
    s.submit(list(reversed(layers("b", 3, start=0.0, step=0.001, arrival=1.0))), 0.0)
    s.submit(layers("a", 3, start=9.0, step=1.0, arrival=0.5), 0.0)
    assert order(s) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]


def test_fair_shares_bytes_equally_between_requests():
    # "big" sends 4x larger transfers: equal bytes means 4 of "small" per one of "big".
    s = sched("fair", max_inflight=1)
    s.submit(layers("big", 10, 0.0, 0.0, nbytes=400), 0.0)
    s.submit(layers("small", 40, 0.0, 0.0, nbytes=100), 0.0)
    sent = {"big": 0, "small": 0}
    for _ in range(20):
        (t,) = s.next(0.0).start
        sent[t.request_id] += t.nbytes
        s.done(t, 0.0)
    assert abs(sent["big"] - sent["small"]) <= 400, sent


def test_fair_gives_a_late_request_its_share_at_once():
    s = sched("fair", max_inflight=1)
    s.submit(layers("a", 10, 0.0, 0.0), 0.0)
    for _ in range(5):
        (t,) = s.next(0.0).start
        s.done(t, 0.0)
    s.submit(layers("b", 10, 0.0, 0.0), 0.0)  # b gets no credit for a's head start
    got = []
    for _ in range(6):
        (t,) = s.next(0.0).start
        got.append(t.request_id)
        s.done(t, 0.0)
    assert got.count("b") == 3, got


# -- rate and concurrency -------------------------------------------------------------------
def test_token_bucket_holds_the_cap():
    mbps, size = 80.0, 10_000  # 10 MB/s, 1 ms per transfer
    s = sched("fifo", bandwidth_mbps=mbps, burst_ms=5.0)
    s.submit(layers("a", 2000, 0.0, 0.0, nbytes=size), 0.0)
    rate, depth = mbps * 125_000, mbps * 125_000 * 0.005
    now, started, checks = 0.0, 0, 0
    while now < 1.0:
        d = s.next(now)
        for t in d.start:
            started += t.nbytes
            s.done(t, now)
        # Never ahead of the cap (+ the bucket's depth and the one transfer that may overdraw it).
        assert started <= rate * now + depth + size + 1  # +1: float noise on an exact bound
        assert d.wake_at is not None and d.wake_at > now
        now = d.wake_at
        checks += 1
    assert started >= rate * 1.0 - size  # and never idle while work waits
    assert checks > 900


def test_uncapped_starts_everything_at_once():
    s = sched("deadline", max_inflight=64)
    s.submit(layers("a", 40, 0.0, 0.01), 0.0)
    d = s.next(0.0)
    assert len(d.start) == 40 and d.wake_at is None


def test_max_inflight():
    s = sched("deadline", max_inflight=3)
    s.submit(layers("a", 10, 0.0, 0.01), 0.0)
    d = s.next(0.0)
    assert [t.layer for t in d.start] == [0, 1, 2]
    assert s.next(0.0) == ([], None)  # full: nothing to do until a done()
    assert s.stats(0.0).inflight == s.inflight_count == 3
    s.done(d.start[1], 0.1)
    assert s.inflight_count == 2  # the public view the loader's rate estimate reads
    assert [t.layer for t in s.next(0.1).start] == [3]
    with pytest.raises(KeyError):
        s.done(d.start[1], 0.2)  # done twice


def test_the_byte_cap_queues_what_would_join_too_many_bytes_in_flight():
    s = sched("deadline")
    s.set_byte_cap(250)
    s.submit(layers("a", 6, 0.0, 0.01, nbytes=100), 0.0)
    d = s.next(0.0)
    assert [t.layer for t in d.start] == [0, 1, 2]  # each joins while under 250 are in flight
    assert d.wake_at is None  # nothing starts until a done()
    assert s.next(0.05).start == []
    s.done(d.start[0], 0.1)
    assert [t.layer for t in s.next(0.1).start] == [3]  # 200 in flight: room for one
    s.set_byte_cap(0)  # 0: no cap
    assert [t.layer for t in s.next(0.2).start] == [4, 5]
    alone = sched("deadline")
    alone.set_byte_cap(50)
    alone.submit([Transfer("b", 0, 1000)], 0.0)
    assert len(alone.next(0.0).start) == 1  # larger than the cap, it still starts alone


# -- bounds -----------------------------------------------------------------------------------
def _stream_behind(starvation_ms: float) -> tuple[float | None, TransferScheduler]:
    """A transfer due at 50 ms, then one more urgent transfer every 10 ms, one slot.
    Returns when the first one started (None: not within 2 s)."""
    s = sched("deadline", max_inflight=1, starvation_ms=starvation_ms)
    s.submit([Transfer("slow", 0, 1, deadline=0.05)], 0.0)
    for i in range(200):
        now = i * 0.010
        s.submit([Transfer(f"r{i}", 0, 1, deadline=now - 10.0)], now)
        (t,) = s.next(now).start
        if t.request_id == "slow":
            return now, s
        s.done(t, now)
    return None, s


def test_starvation_bound_limits_waiting_behind_later_work():
    assert _stream_behind(starvation_ms=1e9)[0] is None  # pure EDF starves it
    started, s = _stream_behind(starvation_ms=100.0)
    # due at 0.05, starving 100 ms later: it starts at the first decision after 0.15
    assert started is not None and 0.15 - 1e-9 <= started <= 0.15 + 0.010 + 1e-9
    assert s.stats(started).starved_starts == 1


def test_starved_transfers_keep_deadline_order_among_themselves():
    # A burst submitted together, waited out: still layer-major (EDF), not submission order.
    s = sched("deadline", starvation_ms=50.0)
    s.submit(layers("a", 3, 0.0, 1.0) + layers("b", 3, 0.5, 1.0), 0.0)
    assert order(s, now=1.0) == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_writes_go_after_reads_until_their_bound():
    s = sched("deadline", max_inflight=1, write_starvation_ms=500.0)
    w = Transfer("w", -1, 10, kind=WRITE)
    s.submit([w], 0.0)
    s.submit(layers("r", 20, 0.0, 0.01), 0.0)
    got = []
    for i in range(8):
        now = i * 0.1
        (t,) = s.next(now).start
        got.append(t.kind)
        s.done(t, now)
    assert got == ["read"] * 5 + ["write"] + ["read"] * 2  # at 0.5 s the write goes first
    assert s.stats(1.0).promoted_writes == 1
    s2 = sched("fair")
    s2.submit([Transfer("w", -1, 10, kind=WRITE)], 0.0)
    assert [t.kind for t in s2.next(0.0).start] == ["write"]  # no reads queued: no wait


def test_cancel_drops_queued_keeps_inflight():
    s = sched("deadline", max_inflight=2)
    s.submit(layers("a", 5, 0.0, 0.01) + layers("b", 2, 1.0, 0.01), 0.0)
    running = s.next(0.0).start
    dropped = s.cancel("a")
    assert sorted(t.layer for t in dropped) == [2, 3, 4]
    st = s.stats(0.0)
    assert (st.queued_reads, st.inflight, st.queued_bytes) == (2, 2, 200)
    assert s.cancel("nobody") == []
    assert s.inflight_count == 2  # cancelling never touches started transfers
    for t in running:
        s.done(t, 0.1)
    assert s.inflight_count == 0
    assert [r for r, _ in order(s, 0.1)] == ["b", "b"]


def test_update_deadlines_reorders_and_keeps_age():
    s = sched("deadline", starvation_ms=1e9)
    s.submit(layers("a", 2, 0.0, 0.1) + layers("b", 2, 1.0, 0.1), 0.0)
    s.update_deadlines("a", lambda t: 5.0 + t.layer)  # a's forward slipped behind b's
    got = s.next(0.0).start
    assert [(t.request_id, t.layer) for t in got] == [("b", 0), ("b", 1), ("a", 0), ("a", 1)]
    assert got[2].deadline == 5.0


def test_stats_report_queue_depth():
    s = sched("deadline", max_inflight=1)
    s.submit(layers("a", 4, 0.0, 0.01), 1.0)
    s.submit([Transfer("w", -1, 7, kind=WRITE)], 1.5)
    s.next(1.0)
    st = s.stats(2.0)
    assert (st.queued_reads, st.queued_writes, st.inflight, st.started) == (3, 1, 1, 1)
    assert st.queued_bytes == 307 and st.oldest_wait_s == pytest.approx(1.0)
    assert s.queue_depth == 4


def test_config_rejects_bad_values():
    for bad in ({"policy": "lottery"}, {"max_inflight": 0}, {"bandwidth_mbps": -1.0}, {"starvation_ms": -5.0}):
        with pytest.raises(ConfigError):
            SchedulerConfig(**bad)
    cfg = ObjectCacheConfig.from_dict({"bucket": "b", "scheduler": {"policy": "fair", "write_starvation_ms": 50}})
    assert cfg.scheduler.write_starvation_ms == 50.0
    with pytest.raises(ConfigError, match="scheduler.max_inflight"):
        ObjectCacheConfig.from_dict({"bucket": "b", "scheduler": {"max_inflight": 0}})


# -- deadlines ---------------------------------------------------------------------------------
def test_layer_deadlines_and_plan():
    assert layer_deadlines(10.0, 3, 0.5) == [10.0, 10.5, 11.0]
    assert layer_deadlines(0.0, 3, [1.0, 2.0, 3.0]) == [0.0, 1.0, 3.0]
    m = ComputeModel(a=1.0, b=2.0, c=3.0)
    assert m.layer_s(10, 10) == 1 + 20 + 300  # a + b*t + c*t^2 for a full prefill
    assert m.batch_layer_s([(10, 10), (1, 5)]) == 1 + 20 + 300 + 2 + 15
    # Bandwidth-bound jobs queue one behind the other; compute-bound ones by compute.
    assert plan_starts(0.0, [(0.0, 100, 0.1), (0.0, 100, 0.1)], rate=100.0) == [0.0, 1.0]
    assert plan_starts(0.0, [(0.0, 100, 0.1), (5.0, 100, 0.1)], rate=0.0) == [0.0, 5.0]


# -- the simulator ------------------------------------------------------------------------------
SMALL = Workload(requests=4, prefix_tokens=(4096, 4096), new_tokens=256, num_layers=8, kv_bytes_per_token=32 * 1024)


def _mean(policy: str, w: Workload, s: System) -> float:
    return summarize(added_ttft(make_requests(w), w, System(**{**s.__dict__, "sched": SchedulerConfig(policy=policy)}))).get("mean")


@pytest.mark.parametrize("mode", ["page", "layerwise"])
def test_sim_single_request_matches_the_link(mode):
    # One request alone: the storage adds its bytes at the cap plus one first-byte latency
    # (layerwise: minus the overlap of all but the last layer's compute, tiny here).
    w = replace_w(SMALL, requests=1)
    s = System(cap_gbps=1.0, latency_ms=5.0, mode=mode)
    added = added_ttft(make_requests(w), w, s)[0]
    expect = 4096 * 32 * 1024 / 1.25e8 + 0.005
    assert added == pytest.approx(expect, rel=0.03)


def test_sim_deadline_beats_fair_under_a_cap():
    s = System(cap_gbps=1.0, mode="page")
    d, f = _mean("deadline", SMALL, s), _mean("fair", SMALL, s)
    assert f / d > 1.4  # 4 equal requests: one by one is at most 2*4/5 = 1.6x
    ls = System(cap_gbps=1.0, mode="layerwise", max_prefill_tokens=256)  # one request per batch
    assert _mean("fair", SMALL, ls) / _mean("deadline", SMALL, ls) > 1.4


def test_sim_no_gain_uncapped_with_one_request():
    w = replace_w(SMALL, requests=1)
    for mode in ("page", "layerwise"):
        s = System(cap_gbps=0.0, mode=mode)
        assert _mean("deadline", w, s) == pytest.approx(_mean("fair", w, s), abs=1e-3)


def test_sim_poisson_runs_and_serves_everyone():
    w = Workload(requests=30, rate=3.0, burst=2, prefix_tokens=(1024, 8192), new_tokens=128, num_layers=4, kv_bytes_per_token=8192)
    reqs = make_requests(w)
    assert len({r.arrival for r in reqs}) == 15  # bursts of 2
    for policy in ("deadline", "fair", "fifo"):
        xs = added_ttft(reqs, w, System(cap_gbps=0.05, mode="layerwise", writes=True, sched=SchedulerConfig(policy=policy)))
        assert len(xs) == 30 and min(xs) > -1.0


def test_sim_cli_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.sched_sim", "--quick", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads((tmp_path / "sched_sim.json").read_text())
    assert "-m benchmarks.sched_sim" in out["command"] and (tmp_path / "sched_sim.png").stat().st_size > 10_000
    page32 = next(h for h in out["headline"] if h["series"] == "page, prefix 32K" and h["cap_gbps"] == 10)
    assert page32["ratio_mean"] > 1.5 and page32["p99_no_worse"]


def replace_w(w: Workload, **kw) -> Workload:
    from dataclasses import replace

    return replace(w, **kw)
