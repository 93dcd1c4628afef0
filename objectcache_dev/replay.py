"""Replay concurrent layerwise loads through the real pipeline under a bandwidth cap.

The scheduler's real measurement (the simulator is `sim.py`): real objects in a real S3
server, real ranged GETs, checksums and scatters into a KV pool, the transfer scheduler's
own token bucket as the capped link, and one forward per request that waits for each layer
and then "computes" it for `compute_s` (a sleep: the CPU is needed for the I/O). Requests
do not share a forward, as when several engines (or DP ranks) share one link to the store.

    added TTFT = (time from arrival to the last layer computed) - layers * compute_s
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, replace

import torch

from sglang_objectcache import objformat
from sglang_objectcache.config import LayerwiseConfig, ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.transfers import TransferScheduler
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import make_store


@dataclass(frozen=True)
class Workload:
    requests: int = 8
    pages: int = 8  # prefix pages per request
    layers: int = 8
    layer_kib: int = 64  # bytes of one layer of one page (K+V)
    compute_ms: float = 10.0  # per layer
    arrival: str = "burst"  # burst | poisson
    rate_per_s: float = 4.0  # poisson arrivals
    seed: int = 0
    # One layer per GET, the per-layer pipeline whose deadlines the scheduler orders (the
    # loader's auto default would read these 64 KiB layers as whole objects).
    layers_per_get: int = 1

    @property
    def geometry(self) -> PageGeometry:
        row = self.layer_kib * 1024 // 2 // 16
        return PageGeometry("mha", self.layers, 16, (row, row), "bfloat16")

    def arrivals(self) -> list[float]:
        if self.arrival == "burst":
            return [0.0] * self.requests
        rng, t, out = random.Random(self.seed), 0.0, []
        for _ in range(self.requests):
            out.append(t)
            t += rng.expovariate(self.rate_per_s)
        return out


def populate(store_cfg: dict, w: Workload) -> list[list[str]]:
    """Write every request's prefix pages; returns the page hashes per request."""
    cfg = ObjectCacheConfig.from_dict(store_cfg)
    keys = _keys(cfg, w)
    g = w.geometry
    hashes = [[f"r{r}-p{p}".ljust(64, "0") for p in range(w.pages)] for r in range(w.requests)]
    with make_store(cfg) as store:
        items = []
        for h in (h for per in hashes for h in per):
            obj = torch.randint(0, 256, (g.object_bytes,), dtype=torch.uint8)
            mv = memoryview(obj.numpy())
            objformat.seal(g, keys.content_digest(h), mv)
            items.append((keys.object_key(h), mv))
        assert all(r is True or r is False for r in store.put_many(items))
    return hashes


def _keys(cfg: ObjectCacheConfig, w: Workload) -> KeyScheme:
    rank = RankIdentity(ModelIdentity("replay", "replay"), w.geometry, is_mla=False)
    return KeyScheme("replay", make_namespace(cfg, rank))


def run(store_cfg: dict, w: Workload, sched: SchedulerConfig, hashes: list[list[str]]) -> dict:
    """Replay the workload once under `sched`; added TTFT per request, in seconds."""
    cfg = ObjectCacheConfig.from_dict(store_cfg)
    keys = _keys(cfg, w)
    g = w.geometry
    slots_per_req = w.pages * g.tokens
    pool = [tuple(torch.zeros((w.requests * slots_per_req, rb), dtype=torch.uint8) for rb in g.row_bytes)
            for _ in range(g.num_layers)]
    store = make_store(cfg)
    stats = Stats()
    parts = LoaderParts(store=store, content_digest=keys.content_digest, scheduler=TransferScheduler(sched),
                        tier=HostTier(0), timeline=Timeline(), stats=stats)
    settings = LoaderSettings(window_layers=LayerwiseConfig().window_layers, layers_per_get=w.layers_per_get,
                              layer_s=w.compute_ms / 1e3)
    loader = LayerwiseLoader(g, pool, parts, settings)
    added: list[float] = [0.0] * w.requests
    failed: list[bool] = [False] * w.requests
    t_zero = time.monotonic() + 0.2

    def forward(r: int, at: float) -> None:
        time.sleep(max(0.0, t_zero + at - time.monotonic()))
        arrived = time.monotonic()
        counter = LayerReadyCounter(g.num_layers, timeout_s=120.0, on_finish=loader.stop)
        counter.producer_index = r - 1  # batch indices must be unique within the loader
        idx = counter.update_producer()
        names = [keys.object_key(h) for h in hashes[r]]
        slots = torch.arange(r * slots_per_req, (r + 1) * slots_per_req, dtype=torch.int64)
        loader.load(idx, [f"r{r}"], hashes[r], names, slots, counter=counter)
        counter.set_consumer(idx)
        for layer in range(g.num_layers):
            counter.wait_until(layer)
            time.sleep(w.compute_ms / 1e3)
        done = time.monotonic()
        failed[r] = not counter.finish(idx)
        added[r] = (done - arrived) - g.num_layers * w.compute_ms / 1e3

    threads = [threading.Thread(target=forward, args=(r, at)) for r, at in enumerate(w.arrivals())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loader.close()
    store.close()
    return {"policy": sched.policy, "added_s": added, "failed": sum(failed),
            "mean_s": statistics.mean(added), "p50_s": statistics.median(added),
            "p99_s": sorted(added)[min(len(added) - 1, int(0.99 * len(added)))],
            "bytes_read": stats.counters.get("bytes_read", 0)}


def compare(store_cfg: dict, w: Workload, cap_mbps: float, policies=("deadline", "fair", "fifo"),
            repeats: int = 1) -> dict:
    """Every policy on the same objects and cap, interleaved `repeats` times."""
    hashes = populate(store_cfg, w)
    base = SchedulerConfig(bandwidth_mbps=cap_mbps, max_inflight=8)
    run(store_cfg, w, base, hashes)  # warm-up: connections, server caches; not counted
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    for _ in range(repeats):
        for p in policies:
            runs[p].append(run(store_cfg, w, replace(base, policy=p), hashes))
    out = {}
    for p, rs in runs.items():
        out[p] = {k: statistics.median(r[k] for r in rs) for k in ("mean_s", "p50_s", "p99_s")}
        out[p]["failed"] = sum(r["failed"] for r in rs)
        out[p]["runs"] = rs
    return out
