"""How much a layerwise load slows the serving process's launch path: fetch in threads vs
in the fetch worker process, side by side in one run.

On a GPU the forward is launch-bound: each torch call gives up the GIL and must take it
back, and while the loader's Python threads run, getting it back can take up to the
interpreter's switch interval (5 ms). On the H100 that made one layer of a 1B model take
~260 ms of wall time instead of ~1 ms (benchmarks/results/ttft_gpu.json). This measures
that effect on any machine, GPU or not: a "launch-bound forward" (a loop of tiny torch
ops, as many per layer as a transformer layer makes) runs in this process while a
LayerwiseLoader keeps loading the same pages from a real SeaweedFS, one layer per ranged
GET, over and over. Reported per condition: the loop's time per op against the same loop
with no load (`slowdown`), and the load's throughput (so a fetcher cannot look good by
fetching less). Conditions run in turns, `--rounds` times, in a fresh order each round.

    .venv/bin/python -m benchmarks.gil          # ~2 min

Writes benchmarks/results/gil.json (with the command) and gil.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time

import torch

from benchmarks.schema import RESULTS, write_result
from objectcache_dev.s3server import SeaweedFS
from sglang_objectcache import objformat
from sglang_objectcache.config import ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.fetch import ProcessFetch
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import open_store
from sglang_objectcache.transfers import TransferScheduler

CONDITIONS = ("idle", "thread", "process")


def launch_loop(seconds: float) -> float:
    """Seconds per op of tiny torch calls for about `seconds`: a launch-bound forward's shape."""
    a, b = torch.ones(8, 8), torch.ones(8, 8)
    ops, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            c = a + b
            c = c * b
            c = torch.relu(c)
            a = c - b
        ops += 400
    return (time.perf_counter() - t0) / ops


class Loading:
    """A loader kept busy: the same batch loaded again and again on a side thread."""

    def __init__(self, store, cfg, g, keys, pools, names, hashes_, fetch: str, threads: int):
        self.g, self.names, self.hashes = g, names, hashes_
        self.stats = Stats()
        self.counter = LayerReadyCounter(g.num_layers, 60.0, on_finish=lambda i: self.loader.stop(i))
        parts = LoaderParts(store=store, content_digest=keys.content_digest,
                            scheduler=TransferScheduler(SchedulerConfig()), tier=HostTier(0),
                            timeline=Timeline(max_batches=4), stats=self.stats, counter=self.counter,
                            fetch=ProcessFetch(cfg, g, threads, pinned=False) if fetch == "process" else None)
        self.loader = LayerwiseLoader(g, pools, parts,
                                      LoaderSettings(window_layers=4, layers_per_get=1, io_threads=threads))
        self.slots = torch.arange(len(names) * g.tokens)
        self.failed = 0
        self._go = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._go.wait()
            if self._stop.is_set():
                return
            idx = self.counter.update_producer()
            self.loader.load(idx, ["r"], self.hashes, self.names, self.slots)
            self.counter.set_consumer(idx)
            for layer in range(self.g.num_layers):
                self.counter.wait_until(layer)
            if not self.counter.finish(idx):
                self.failed += 1
            self.counter.set_consumer(-1)

    @property
    def bytes(self) -> int:  # every range fetched so far
        return self.stats.counters.get("bytes_read", 0)

    def start(self) -> None:
        self._go.set()

    def pause(self) -> None:
        self._go.clear()
        time.sleep(0.3)  # let the batch in flight finish

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        self._thread.join(timeout=60)
        self.loader.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=64)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--page", type=int, default=64, help="tokens per page")
    p.add_argument("--row", type=int, default=1024, help="bytes of K (and of V) per token per layer")
    p.add_argument("--threads", type=int, default=16, help="fetch threads (in either place)")
    p.add_argument("--seconds", type=float, default=3.0, help="of the launch loop per measurement")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "gil.json"))
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    g = PageGeometry("mha", a.layers, a.page, (a.row, a.row), "uint8")
    data = tempfile.mkdtemp(prefix="bench-gil-")
    srv = SeaweedFS(os.path.join(data, "sw"), buckets=("gil",)).start()
    cfg = ObjectCacheConfig.from_dict(srv.config("gil", transport="obstore"))
    store = open_store(cfg)
    pools = [(torch.zeros(a.pages * a.page, a.row, dtype=torch.uint8),
              torch.zeros(a.pages * a.page, a.row, dtype=torch.uint8)) for _ in range(a.layers)]
    hashes_ = [f"g{i:063d}" for i in range(a.pages)]
    keys = KeyScheme("oc", make_namespace(cfg, RankIdentity(ModelIdentity("bench-gil", "bench"), g, is_mla=False)))
    names = [keys.object_key(h) for h in hashes_]
    gen = torch.Generator().manual_seed(0)
    payload = torch.randint(0, 256, (a.pages, g.payload_bytes), dtype=torch.uint8, generator=gen)
    items = [(n, objformat.sealed(g, keys.content_digest(h), row.numpy())) for n, h, row in zip(names, hashes_, payload)]
    assert all(r is True for r in store.put_many(items, if_absent=False))
    loads = {c: Loading(store, cfg, g, keys, pools, names, hashes_, c, a.threads) for c in CONDITIONS if c != "idle"}
    samples: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    rng = random.Random(0)
    try:
        launch_loop(0.5)  # warm-up
        for r in range(a.rounds):
            for cond in rng.sample(CONDITIONS, len(CONDITIONS)):
                load = loads.get(cond)
                if load:
                    load.start()
                    time.sleep(0.5)  # into steady state
                t0, b0 = time.perf_counter(), load.bytes if load else 0
                per_op = launch_loop(a.seconds)
                wall = time.perf_counter() - t0
                gbps = (load.bytes - b0) / wall / 1e9 if load else 0.0
                if load:
                    load.pause()
                samples[cond].append({"round": r, "us_per_op": per_op * 1e6, "load_gbps": gbps})
                print(f"round {r} {cond:8s} {per_op * 1e6:8.2f} us/op  load {gbps:.2f} GB/s", flush=True)
        # the load's own rate with nothing else running, for reference
        solo = {}
        for cond, load in loads.items():
            load.start()
            time.sleep(0.5)
            b0 = load.bytes
            time.sleep(a.seconds)
            solo[cond] = (load.bytes - b0) / a.seconds / 1e9
            load.pause()
        failed = {c: l.failed for c, l in loads.items()}
    finally:
        for load in loads.values():
            load.close()
        store.close()
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)
    med = {c: statistics.median(s["us_per_op"] for s in samples[c]) for c in CONDITIONS}
    out = {
        "geometry": {"pages": a.pages, "layers": a.layers, "layer_bytes": g.layer_bytes,
                     "gets_per_load": a.pages * a.layers}, "threads": a.threads, "seconds": a.seconds,
        "samples": samples, "us_per_op_median": med,
        "slowdown_vs_idle": {c: med[c] / med["idle"] for c in CONDITIONS},
        "thread_over_process": med["thread"] / med["process"],
        "load_gbps_while_looping_median": {c: statistics.median(s["load_gbps"] for s in samples[c])
                                           for c in loads},
        "load_gbps_alone": solo, "failed_loads": failed,
    }
    write_result(a.out, a.rounds, med, extra=out, plot={"kind": "gil", "dpi": 110})
    print(json.dumps({k: out[k] for k in ("us_per_op_median", "slowdown_vs_idle", "thread_over_process",
                                          "load_gbps_while_looping_median", "load_gbps_alone", "failed_loads")},
                     indent=1))


def draw(fig, out: dict) -> None:
    """Plot kind "gil": the launch loop's time per op by condition, and the load's rate meanwhile."""
    fig.set_size_inches(9, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    conds = list(out["us_per_op_median"])
    ax1.bar(conds, [out["us_per_op_median"][c] for c in conds], color=["grey", "tab:red", "tab:green"])
    for c in conds:
        ax1.scatter([c] * len(out["samples"][c]), [s["us_per_op"] for s in out["samples"][c]], color="k", s=8)
    ax1.set_ylabel("µs per tiny torch op (median, dots: rounds)")
    ax1.set_title("launch loop while a layerwise load runs")
    loads = list(out["load_gbps_while_looping_median"])
    ax2.bar(loads, [out["load_gbps_while_looping_median"][c] for c in loads], color=["tab:red", "tab:green"])
    ax2.set_ylabel("load GB/s meanwhile (median)")
    ax2.set_title("fetch where: thread vs worker process")
    fig.suptitle(f"{out['machine']['cpus']} CPUs, {out['geometry']['gets_per_load']} ranged GETs per load", fontsize=9)


if __name__ == "__main__":
    main()
