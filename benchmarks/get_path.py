"""A profile: where objectcache's client CPU per GET goes, on the live path, beside the raw and
checked lanes of benchmarks.storage (same SeaweedFS, same object sizes, same process).

Lanes, taken in turns, each `--reps` batches of `--batch` pages:
- `objectcache`: its batch_get_v1 as it runs for this layout and page size;
- `objectcache_whole`: each page received whole into the connection's buffer, then checked
  and copied by `land` (on a thread pool beside the loop for pages of 1 MiB and up): how
  pages under `landing.MIN_OBJECT_BYTES` land, and every page did before `PageLanding`;
- `objectcache_copy` / `objectcache_scatter`: through a `PageLanding` whatever the size,
  each page forced to be handed over read by read and copied into the host pool, or
  scattered by the GET straight into its slot's rows (`HostPages.scatter_pays` picks
  between them; MIN_PART_BYTES is the knob forced);
- `objectcache_per_component`: as `objectcache`, with each component (K, V) of a page
  copied on its own, as pools whose components differ in shape are (and every pool was
  before `HostPages._join`);
- `raw` / `checked`: benchmarks.storage's lanes on objectcache's own GET client (`http/N`);
  `raw_obstore`: the raw lane on obstore.

For each lane: the process's CPU per page and the CPU of the thread that runs the event loop
(where bodies are received, checked and landed), read with `time.thread_time` on that
thread. For objectcache, the CPU inside `PageLanding.received` (the header check and one
xxh3 per layer, as the body arrives), `ObjectCache.verdict` (the same for a body received
whole; results before it was the cache core's say `_check_page`) and `HostPages.write_layers` (the copy into SGLang's host pool), by
wrapping each (exclusive of the others): in all (`received_s`, `verdict_s`,
`write_layers_s`) and on the loop's thread (`*_on_loop_s`). The rest of the process's CPU
is the GET client (and obstore's Rust runtime), the landing pool and the caller's thread.

    .venv/bin/python -m benchmarks.get_path --page-tokens 2 --layout layer_first --out ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter

import numpy as np

from benchmarks.clients import BUCKETS, RawHttp, RawObstore, make_systems, sealed_pages
from benchmarks.rig import Shape, host_indices, make_host, page_hashes, s3_server
from benchmarks.schema import write_result
from sglang_objectcache import hostpool, landing
from sglang_objectcache.cache import ObjectCache

spent: Counter = Counter()
loop_threads: set[int] = set()  # bodies of OFFLOAD_BYTES and up are landed off the loop
CHECKS = ("received", "verdict", "_check_page")  # _check_page: results from before ObjectCache.verdict


_nested = threading.local()


def count_cpu(owner, name: str) -> None:
    """Wrap owner.name so the CPU its calls take on their own thread adds up in `spent`
    (and, for calls on an event-loop thread, in `spent[name + "_on_loop"]` too). Exclusive
    time: a wrapped call inside another (write_layers inside received) counts only once,
    as its own."""
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        outer = getattr(_nested, "inner", None)
        _nested.inner = inner = [0.0]
        c0 = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            dt = time.thread_time() - c0
            _nested.inner = outer
            if outer is not None:
                outer[0] += dt
            dt -= inner[0]
            spent[name] += dt
            if threading.get_ident() in loop_threads:
                spent[name + "_on_loop"] += dt

    setattr(owner, name, wrapped)


def loop_cpu(loop) -> float:
    async def now():
        loop_threads.add(threading.get_ident())
        return time.thread_time()

    return asyncio.run_coroutine_threadsafe(now(), loop).result()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--conc", type=int, default=128, help="the raw and checked lanes' requests in flight")
    p.add_argument("--layout", default="page_first", choices=hostpool.LAYOUTS)
    p.add_argument("--out", default="benchmarks/results/get_path.json")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for owner, name in ((landing.PageLanding, "received"), (ObjectCache, "verdict"),
                        (hostpool.HostPages, "write_layers")):
        count_cpu(owner, name)
    B, P = args.batch, args.page_tokens
    host = make_host(Shape(), P, 2 * B, args.layout)
    with tempfile.TemporaryDirectory(prefix="get-path-") as tmp, \
            s3_server(os.path.join(tmp, "s3"), BUCKETS) as srv:
        oc = make_systems(srv, host, P, os.path.join(tmp, "file"))["objectcache"]
        g = oc.storage.pages.geometry
        keys, src, dst = page_hashes(B), host_indices(0, B, P), host_indices(B, B, P)
        assert oc.set(keys, src) == B
        bodies = sealed_pages(oc.storage, [f"raw{i}" for i in range(B)], [i * P for i in range(B)])
        raw_keys = [f"raw/{i}" for i in range(B)]
        sink = np.empty((B, g.object_bytes), np.uint8)
        digests: dict = {}
        lanes = {name: RawHttp(srv, "bench-raw", args.conc, name == "checked", digests, sink)
                 for name in ("raw", "checked")}
        lanes["raw_obstore"] = RawObstore(srv, "bench-raw", args.conc)
        lanes["checked"].put(list(zip(raw_keys, bodies)))
        knobs = {"MIN_PART_BYTES": hostpool, "MIN_OBJECT_BYTES": landing}
        defaults = {k: getattr(m, k) for k, m in knobs.items()}

        def objectcache(**forced):
            def get():
                for k, v in forced.items():
                    setattr(knobs[k], k, v)
                try:
                    return oc.get(keys, dst)
                finally:
                    for k, v in defaults.items():
                        setattr(knobs[k], k, v)
            return get, oc.storage.store._loop

        def per_component():
            pages, joint = oc.storage.pages, oc.storage.pages._joint
            pages._joint = None
            try:
                return oc.get(keys, dst)
            finally:
                pages._joint = joint

        never = 1 << 40
        runs = {"objectcache": objectcache(), "objectcache_per_component": (per_component, oc.storage.store._loop),
                "objectcache_whole": objectcache(MIN_OBJECT_BYTES=never),
                "objectcache_copy": objectcache(MIN_OBJECT_BYTES=0, MIN_PART_BYTES=never),
                "objectcache_scatter": objectcache(MIN_OBJECT_BYTES=0, MIN_PART_BYTES=0)}
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
    us = 1e6 / B
    summary = {name: {k: statistics.median(r.get(k, 0.0) for r in rs) * us
                      for k in sorted({k for r in rs for k in r}) if k != "wall_s"}
               | {"wall_ms": statistics.median(r["wall_s"] for r in rs) * 1e3,
                  "pages_s": B / statistics.median(r["wall_s"] for r in rs)} for name, rs in rows.items()}
    out = {"page_tokens": P, "object_bytes": g.object_bytes, "batch": B,
           "layout": args.layout, "conc": args.conc, "loadavg": os.getloadavg(), "unit": "microseconds of CPU per page (median batch); wall_ms per batch; pages_s: batch / median wall",
           "summary": summary, "batches": rows}
    write_result(args.out, args.reps, summary, extra=out, plot={"kind": "get_path", "dpi": 120})
    for name, s in summary.items():
        print(f"{name:12s} " + "  ".join(f"{k} {v:7.1f}" for k, v in s.items()))


def draw(fig, out: dict) -> None:
    """Plot kind "get_path": each lane's client CPU per page, stacked by where it goes."""
    summary, object_bytes, layout = out["summary"], out["object_bytes"], out.get("layout", "page_first")
    whole = "_check_page" if any("_check_page_s" in s for s in summary.values()) else "ObjectCache.verdict"
    parts = [("check", f"checking the header and each layer's xxh3 (PageLanding.received or {whole})"),
             ("write_layers_s", f"HostPages.write_layers (copy into {layout})"),
             ("loop_rest", "rest of the event-loop thread"),
             ("other", "other threads (landing pool, obstore's Rust runtime, caller)")]
    names = list(summary)
    fig.set_size_inches(8, 4.8)
    ax = fig.subplots()
    bottom = [0.0] * len(names)
    for key, label in parts:
        vals = []
        for n in names:
            s = summary[n]
            fmt = sum(s.get(k + "_s", 0) for k in (*CHECKS, "write_layers"))
            on_loop = sum(s.get(k + "_on_loop_s", 0) for k in (*CHECKS, "write_layers"))
            vals.append({"check": sum(s.get(k + "_s", 0) for k in CHECKS),
                         "loop_rest": s["loop_cpu_s"] - on_loop,
                         "other": s["cpu_s"] - s["loop_cpu_s"] - (fmt - on_loop)}.get(key, s.get(key, 0)))
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("client CPU per page (us, median batch)")
    ax.set_title(f"Where a {object_bytes / 1024:.0f} KiB GET's client CPU goes ({layout}; SeaweedFS, loopback)")
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)


if __name__ == "__main__":
    main()
