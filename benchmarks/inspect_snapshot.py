"""What a `GET /objectcache/tree` costs the scheduler: snapshot time vs tree size (Rust core).

The snapshot runs on the scheduler thread, so its time is a pause in serving. This builds
SGLang's real Rust tree core (the default) with N host-backed nodes (branches of a shared
prefix, page 64, 4 pages per node), then times, per N:
  - first call: scans every node handle once (as against a long-running server);
  - later calls: re-check known handles only (the steady state);
  - with max_nodes 500 (the default) and 10,000 (the cap), since views cost per shown node;
  - with no backend (no object keys, no store column), which isolates the tree walk;
  - the handle probe alone (`is_root` on live and dead handles), the scan's unit cost.
No object store is involved (`store` residency from a known-keys set; `--head` adds HEADs).
Writes benchmarks/results/inspect_snapshot.json (or `--out`) and its plot beside it.

    .venv/bin/python -m benchmarks.inspect_snapshot              # ~1 min
    .venv/bin/python -m benchmarks.inspect_snapshot --sizes 1000 5000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from array import array
from types import SimpleNamespace

import torch

from benchmarks.schema import write_result

PAGE = 64


def build(n: int):
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixKey
    from sglang.srt.mem_cache.rust_tree_core.adapter import RustUnifiedTreeCore
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    from sglang_objectcache.sglang import treecores

    core = RustUnifiedTreeCore(CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=None,
                                               page_size=PAGE, tree_components=(ComponentType.FULL,)))
    core.set_hicache_enabled()
    root = core.root_node_handle(None)
    shared = list(range(PAGE))
    top = 0
    for i in range(n):
        toks = shared + [1000 + i] * (3 * PAGE)  # one shared page, then 3 pages of its own
        hashes = [f"{i:016x}{p:048x}" for p in range(4)]  # any 64-hex ids; the core only stores them
        r = core.insert_host(root, RadixKey(array("q", toks)), torch.arange(len(toks), dtype=torch.int64), hashes)
        top = max(top, r.inserted_host_node or 0)
    treecores.note_ids(core, top)  # what the plugin's hooks record on a live server
    return core


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def alive(core, nid: int) -> bool:
    """The handle probe the snapshot's scan makes: is `nid` a live node of the Rust core?"""
    try:
        core.is_root(nid)
        return True
    except KeyError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/inspect_snapshot")
    return p


def measure(n: int, reps: int, ks) -> dict:
    """One tree of n host-backed nodes: first call, steady calls, no-store calls, the probe."""
    from sglang_objectcache.sglang import treeview

    core = build(n)
    tc = SimpleNamespace(tree_core=core, page_size=PAGE)
    backend = SimpleNamespace(keys=ks, known=set(), store=None, cfg=SimpleNamespace(bucket="b", endpoint_url=""))
    t0 = time.perf_counter()
    first = treeview.snapshot(tc, backend, treeview.Query())
    first_s = time.perf_counter() - t0
    assert first["complete"] and first["totals"]["nodes"] == n + 1, first["totals"]
    row = {"nodes": n + 1, "first_call_s": first_s}
    for max_nodes in (500, 10_000):
        q = treeview.Query.from_dict({"max_nodes": max_nodes, "max_bytes": treeview.MAX_BYTES_CAP})
        ts = timed(lambda: treeview.snapshot(tc, backend, q), reps)
        row[f"steady_max_nodes_{max_nodes}_s_median"] = statistics.median(ts)
        row[f"steady_max_nodes_{max_nodes}_s_min"] = min(ts)
    # Without a backend: no object keys, no store residency. Isolates the tree walk from
    # the key scheme (KeyScheme.object_key recomputes the namespace digest on every call).
    q = treeview.Query.from_dict({"max_nodes": 500})
    ts = timed(lambda: treeview.snapshot(tc, None, q), reps)
    row["steady_max_nodes_500_no_store_s_median"] = statistics.median(ts)
    probes = list(range(0, 2 * n))  # half live, half past the top (dead or unminted)
    ts = timed(lambda: [alive(core, i) for i in probes], reps)
    row["probe_us"] = statistics.median(ts) / len(probes) * 1e6
    return row


def plot_spec(rows: list[dict]) -> dict:
    """The result's `plot` field: the scheduler's pause per call against the tree's size."""
    xs = [r["nodes"] for r in rows]
    lines = [("first call (scans all handles)", "first_call_s", "o"),
             ("later calls, max_nodes 500", "steady_max_nodes_500_s_median", "s"),
             ("later calls, max_nodes 10,000", "steady_max_nodes_10000_s_median", "^"),
             ("later calls, max_nodes 500, no store column", "steady_max_nodes_500_no_store_s_median", "v")]
    return {"kind": "lines", "xscale": "log", "yscale": "log", "size": [6.4, 4.2], "dpi": 120,
            "series": [{"label": label, "x": xs, "y": [r[key] * 1e3 for r in rows], "marker": m}
                       for label, key, m in lines],
            "xlabel": "nodes in the radix tree", "ylabel": "scheduler pause per request (ms)",
            "title": "GET /objectcache/tree cost on the scheduler thread (Rust core, CPU)"}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from sglang_objectcache.keys import KeyScheme, Namespace
    from sglang_objectcache.objformat import PageGeometry

    ks = KeyScheme("objectcache", Namespace("bench", PageGeometry("mha", 32, PAGE, (1024, 1024), "bfloat16"),
                                            "tp0of1", "0-32"))
    rows = []
    load_start = os.getloadavg()
    for n in args.sizes:
        rows.append(measure(n, args.reps, ks))
        print(json.dumps(rows[-1]), flush=True)
    extra = {"what": "treeview.snapshot on SGLang's Rust tree core, host-backed nodes of 4 pages (page 64)",
             "timing": "perf_counter; first call once, steady calls median/min of --reps",
             "environment": {"torch": torch.__version__},
             "load_average_start_end": [load_start, os.getloadavg()], "rows": rows}
    medians = {str(r["nodes"]): r["steady_max_nodes_500_s_median"] for r in rows}
    path = write_result(args.out, runs=args.reps, medians={"steady_max_nodes_500_s": medians}, extra=extra,
                        plot=plot_spec(rows))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
