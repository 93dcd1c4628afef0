"""The CPU a page read costs objectcache besides the GET: checking the object and copying it
into SGLang's host pool, with no network, against the alternatives.

For each layout and page size, on a real SGLang host pool, per page (median of `--reps`
passes, the lanes taking turns in a random order), in two states:
- hot: one object decoded and copied into one slot again and again (all in cache);
- cold: `--objects` objects into as many slots, with a 64 MiB pass over other memory before
  each pass, as a batch of GETs leaves them.

Lanes:
- `decode`: objformat.decode as shipped (the header, then each layer's xxh3);
- `decode_whole`: the header, then one xxh3 over the whole payload: what a whole-payload
  checksum in the format would cost instead (not built);
- `copy`: HostPages.write_page as shipped (one copy over K and V, `HostPages._join`);
- `copy_per_component`: the same with one copy per component (as before 30fd5e5);
- `copy_flat`: one contiguous copy of the payload, the floor of any copy.

    .venv/bin/python -m benchmarks.page_work --out benchmarks/results/page_work
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import xxhash

from benchmarks.rig import Shape, make_host
from benchmarks.schema import write_result
from sglang_objectcache import objformat
from sglang_objectcache.hostpool import HostPages

KEY = b"k" * 16


def decode_whole(obj, g, key) -> None:
    mv = memoryview(obj).cast("B")
    objformat.decode_header(mv, g, key)
    xxhash.xxh3_64_intdigest(mv[g.header_bytes:])


def one(layout: str, page_tokens: int, n: int, reps: int) -> dict:
    pages = HostPages(make_host(Shape(), page_tokens, n, layout))
    g, hb = pages.geometry, pages.geometry.header_bytes
    rng = np.random.default_rng(0)
    objs = [objformat.sealed(g, KEY, rng.integers(0, 256, g.payload_bytes, np.uint8)) for _ in range(n)]
    flat = np.empty((n, g.payload_bytes), np.uint8)
    flush = np.ones(64 << 20, np.uint8)
    joint = pages._joint

    def per_component(slot, payload):
        pages._joint = None
        try:
            pages.write_page(slot, payload)
        finally:
            pages._joint = joint

    lanes = {"decode": lambda i, o: objformat.decode(o, g, KEY),
             "decode_whole": lambda i, o: decode_whole(o, g, KEY),
             "copy": lambda i, o: pages.write_page(i * page_tokens, o[hb:]),
             "copy_per_component": lambda i, o: per_component(i * page_tokens, o[hb:]),
             "copy_flat": lambda i, o: np.copyto(flat[i], np.frombuffer(o, np.uint8)[hb:])}
    out = {"layout": layout, "page_tokens": page_tokens, "object_bytes": g.object_bytes, "objects": n,
           "hot_us": {}, "cold_us": {}}
    hot_n = max(20, int((64 << 20) // g.object_bytes))
    hot: dict = {name: [] for name in lanes}
    cold: dict = {name: [] for name in lanes}
    for rep in range(reps + 1):  # lanes take turns in a new order each pass; the first warms up
        for name in random.sample(list(lanes), len(lanes)):
            fn = lanes[name]
            t0 = time.perf_counter()
            for _ in range(hot_n):
                fn(0, objs[0])
            t_hot = (time.perf_counter() - t0) / hot_n * 1e6
            flush.sum()  # evicts the objects and the slots from the caches
            t0 = time.perf_counter()
            for i, o in enumerate(objs):
                fn(i, o)
            if rep:
                hot[name].append(t_hot)
                cold[name].append((time.perf_counter() - t0) / n * 1e6)
    for name in lanes:
        out["hot_us"][name], out["cold_us"][name] = statistics.median(hot[name]), statistics.median(cold[name])
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", nargs="+", type=int, default=[2, 64])
    p.add_argument("--layouts", nargs="+", default=["page_first", "layer_first"])
    p.add_argument("--objects", type=int, default=0, help="objects per cold pass (0: 128 small or 16 large)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/page_work")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    runs = [one(layout, pt, args.objects or (128 if pt < 16 else 16), args.reps)
            for layout in args.layouts for pt in args.page_tokens]
    for r in runs:
        print(f"{r['layout']:11s} {r['object_bytes'] / 1024:6.0f} KiB  " + "  ".join(
            f"{k} {r['hot_us'][k]:.1f}/{r['cold_us'][k]:.1f}" for k in r["hot_us"]) + "  (us hot/cold)")
    medians = {f"{r['layout']} {r['page_tokens']}": {"hot_us": r["hot_us"], "cold_us": r["cold_us"]} for r in runs}
    write_result(args.out, runs, medians, plot={"kind": "page_work", "dpi": 110},
                 extra={"shape": Shape().__dict__, "unit": "microseconds per page, median pass"})


def draw(fig, out: dict) -> None:
    """Plot kind "page_work": per layout and page size, each lane hot and cold, over a cold flat copy."""
    runs = out["runs"]
    fig.set_size_inches(4 * len(runs), 4)
    axes = fig.subplots(1, len(runs), squeeze=False)
    for ax, r in zip(axes[0], runs):
        base = r["cold_us"]["copy_flat"]
        names = list(r["cold_us"])
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["hot_us"][n] / base for n in names], 0.4, label="hot")
        ax.bar([x + 0.2 for x in xs], [r["cold_us"][n] / base for n in names], 0.4, label="cold")
        ax.set_xticks(list(xs), names, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{r['layout']}, {r['object_bytes'] / 1024:.0f} KiB page", fontsize=9)
        ax.set_ylabel("per page, / a cold flat copy", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Checking and copying one page, no network", fontsize=10)


if __name__ == "__main__":
    main()
