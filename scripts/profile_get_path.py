"""Where objectcache's client CPU per small-page GET goes, on the live path, beside the raw
and checked lanes of bench_storage (same SeaweedFS, same object sizes, same process).

Lanes: objectcache, raw and checked as in bench_storage (one ranged GET per object);
`objectcache_64`: objectcache with 64 requests in flight, its default before 91b5bc9 (128
now); `raw_get_then_body`: the raw client making each GET the way objectcache did before
91b5bc9, a GET and then a read of its body (two Rust futures per object).

For each lane, over `--reps` batches of `--batch` pages taken in turns: the process's CPU
per page and the CPU of the thread that runs the event loop (where every body is checked
and landed), read with `time.thread_time` on that thread. For objectcache, the CPU spent
inside `objformat.decode` (header check + one xxh3 per layer) and `HostPages.write_page`
(the strided copy into SGLang's host pool), by wrapping both: in all (`decode_s`) and on
the loop's thread (`decode_on_loop_s`; pages of 1 MiB and up are landed on a pool beside
it). The rest of the process's CPU is obstore's Rust runtime (HTTP, buffers) and the
caller's thread.

    .venv/bin/python scripts/profile_get_path.py    # ~2 min; writes benchmarks/results/get_path.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import numpy as np  # noqa: E402

import bench_storage as bs  # noqa: E402
from sglang_objectcache import hostpool, objformat  # noqa: E402
from sglang_objectcache.s3server import SeaweedFS  # noqa: E402

spent: Counter = Counter()
loop_threads: set[int] = set()  # pages of OFFLOAD_BYTES and up are landed off the loop


def count_cpu(owner, name: str) -> None:
    """Wrap owner.name so the CPU its calls take on their own thread adds up in `spent`
    (and, for calls on an event-loop thread, in `spent[name + "_on_loop"]` too)."""
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        c0 = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            dt = time.thread_time() - c0
            spent[name] += dt
            if threading.get_ident() in loop_threads:
                spent[name + "_on_loop"] += dt

    setattr(owner, name, wrapped)


def loop_cpu(loop) -> float:
    async def now():
        loop_threads.add(threading.get_ident())
        return time.thread_time()

    return asyncio.run_coroutine_threadsafe(now(), loop).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--conc", type=int, default=128, help="the raw and checked lanes' requests in flight")
    p.add_argument("--out", default="benchmarks/results/get_path.json")
    args = p.parse_args()
    count_cpu(objformat, "decode")  # backend.py calls it as objformat.decode
    count_cpu(hostpool.HostPages, "write_page")
    B, P = args.batch, args.page_tokens
    host = bs.make_host(bs.Shape(), P, 2 * B, "page_first")
    with tempfile.TemporaryDirectory(prefix="get-path-") as tmp, \
            SeaweedFS(os.path.join(tmp, "s3"), buckets=bs.BUCKETS) as srv:
        oc = bs.make_systems(srv, host, P, os.path.join(tmp, "file"))["objectcache"]
        g = oc.storage.pages.geometry
        keys, src, dst = bs.page_hashes(B), bs.host_indices(0, B, P), bs.host_indices(B, B, P)
        assert oc.set(keys, src) == B
        bodies = [bytes(oc.storage._encode_page(oc.storage.pages, f"raw{i}", i * P)) for i in range(B)]
        raw_keys = [f"raw/{i}" for i in range(B)]
        sink = np.empty((B, g.object_bytes), np.uint8)
        digests: dict = {}
        lanes = {name: bs.RawObstore(srv, "bench-raw", args.conc, name == "checked", digests, sink)
                 for name in ("raw", "checked")}
        # The raw client as objectcache used it before 91b5bc9: a GET, then a read of its body.
        lanes["raw_get_then_body"] = bs.RawObstore(srv, "bench-raw", args.conc, ranged=False)
        lanes["checked"].put(list(zip(raw_keys, bodies)))
        from sglang_objectcache.backend import ObjectCacheStorage

        oc64 = bs.Backend("objectcache_64", ObjectCacheStorage(bs.storage_config(
            srv.config("bench-objectcache", read_timeout_s=60.0, max_concurrency=64)), host), P)
        runs = {"objectcache": (lambda: oc.get(keys, dst), oc.storage.store._loop),
                "objectcache_64": (lambda: oc64.get(keys, dst), oc64.storage.store._loop)}
        for name, lane in lanes.items():
            runs[name] = (lambda lane=lane: sum(n == g.object_bytes for n in lane.get(raw_keys, g.object_bytes)),
                          lane.loop)
        rows = {name: [] for name in runs}
        for rep in range(args.reps + 1):  # the first round warms up and is not kept
            for name in random.sample(list(runs), len(runs)):
                fn, loop = runs[name]
                time.sleep(0.05)
                spent.clear()
                c0, l0, t0 = time.process_time(), loop_cpu(loop), time.perf_counter()
                assert fn() == B, name
                row = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                       "loop_cpu_s": loop_cpu(loop) - l0, **{k + "_s": v for k, v in spent.items()}}
                if rep:
                    rows[name].append(row)
        for lane in lanes.values():
            lane.close()
        oc.storage.close()
        oc64.storage.close()
    us = 1e6 / B
    summary = {name: {k: statistics.median(r.get(k, 0.0) for r in rs) * us
                      for k in sorted({k for r in rs for k in r}) if k != "wall_s"}
               | {"wall_ms": statistics.median(r["wall_s"] for r in rs) * 1e3} for name, rs in rows.items()}
    out = {"command": " ".join(sys.argv), "page_tokens": P, "object_bytes": g.object_bytes, "batch": B,
           "conc": args.conc, "unit": "microseconds of CPU per page (median batch); wall_ms per batch",
           "summary": summary, "batches": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    plot(summary, args.out.removesuffix(".json") + ".png", g.object_bytes)
    for name, s in summary.items():
        print(f"{name:12s} " + "  ".join(f"{k} {v:7.1f}" for k, v in s.items()))


def plot(summary: dict, path: str, object_bytes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("decode_s", "objformat.decode (header + 32 layer xxh3), any thread"),
             ("write_page_s", "HostPages.write_page (copy into page_first), any thread"),
             ("loop_rest", "rest of the event-loop thread"),
             ("other", "other threads (obstore's Rust runtime, caller)")]
    names = list(summary)
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(names)
    for key, label in parts:
        vals = []
        for n in names:
            s = summary[n]
            fmt = s.get("decode_s", 0) + s.get("write_page_s", 0)
            on_loop = s.get("decode_on_loop_s", 0) + s.get("write_page_on_loop_s", 0)
            vals.append({"loop_rest": s["loop_cpu_s"] - on_loop,
                         "other": s["cpu_s"] - s["loop_cpu_s"] - (fmt - on_loop)}.get(key, s.get(key, 0)))
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("client CPU per page (us, median batch)")
    ax.set_title(f"Where a {object_bytes / 1024:.0f} KiB GET's client CPU goes (one SeaweedFS, loopback)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
