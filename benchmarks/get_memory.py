"""How much memory objectcache's GETs leave behind in the serving process, by page size.

For each page size, one process and one SeaweedFS: objectcache stores a batch, then reads
it back `--reps` times, first as it runs (pages of 1 MiB and up through a
`landing.PageLanding`, read by read through one scratch buffer), then with every page
received whole (`landing.MIN_OBJECT_BYTES` forced up: how every page landed before
PageLanding, each GET connection keeping a buffer as large as the largest object it read).
It records the process's resident memory (RSS, /proc/self/statm) before and after each way.
The ways run in that order because memory the second keeps would hide the first's.
A probe: one question, answered once (its result stands beside the benchmarks').

    .venv/bin/python -m benchmarks.get_memory --out benchmarks/results/get_memory
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict

from benchmarks.clients import BUCKETS, make_systems
from benchmarks.rig import MiB, Shape, host_indices, make_host, page_hashes, s3_server
from benchmarks.schema import write_result
from sglang_objectcache import landing


def rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def one_size(page_tokens: int, batch: int, reps: int, layout: str) -> dict:
    host = make_host(Shape(), page_tokens, 2 * batch, layout)
    src, dst = host_indices(0, batch, page_tokens), host_indices(batch, batch, page_tokens)
    out = {"page_tokens": page_tokens, "batch": batch, "reps": reps}
    with tempfile.TemporaryDirectory(prefix="get-memory-") as d, \
            s3_server(os.path.join(d, "s3"), BUCKETS) as srv:
        oc = make_systems(srv, host, page_tokens, os.path.join(d, "file"))["objectcache"]
        out["object_bytes"] = oc.storage.pages.geometry.object_bytes
        keys = page_hashes(batch)
        if oc.set(keys, src) != batch:
            raise RuntimeError("objectcache did not store the batch")
        default = landing.MIN_OBJECT_BYTES
        for way, min_bytes in (("as_it_runs", default), ("whole", 1 << 62)):
            landing.MIN_OBJECT_BYTES = min_bytes
            before = rss_mib()
            for _ in range(reps):
                if oc.get(keys, dst) != batch:
                    raise RuntimeError("a GET batch missed")
            out[way] = {"rss_before_mib": before, "rss_after_mib": rss_mib(), "grew_mib": rss_mib() - before}
        landing.MIN_OBJECT_BYTES = default
        oc.storage.close()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", nargs="+", type=int, default=[2, 16, 64])
    p.add_argument("--batch", type=int, default=64, help="pages per batch (64 x 8 MiB fills the GET byte cap)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layout", default="page_first")
    p.add_argument("--out", default="benchmarks/results/get_memory")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sizes = [one_size(pt, args.batch, args.reps, args.layout) for pt in args.page_tokens]
    for s in sizes:
        print(f"{s['object_bytes'] / MiB:6.2f} MiB objects: RSS grew {s['as_it_runs']['grew_mib']:6.0f} MiB as it runs, "
              f"{s['whole']['grew_mib']:6.0f} MiB received whole")
    medians = {f"{s['object_bytes']}": {way: s[way]["grew_mib"] for way in ("as_it_runs", "whole")} for s in sizes}
    write_result(args.out, args.reps, medians, plot={"kind": "get_memory", "dpi": 120},
                 extra={"layout": args.layout, "shape": asdict(Shape()), "sizes": sizes})


def draw(fig, out: dict) -> None:
    """Plot kind "get_memory": RSS left after the GET batches, as it runs vs received whole."""
    sizes = out["sizes"]
    labels = [f"{s['object_bytes'] / MiB:.2f} MiB" for s in sizes]
    xs = range(len(sizes))
    fig.set_size_inches(6, 4)
    ax = fig.subplots()
    ax.bar([x - 0.2 for x in xs], [s["as_it_runs"]["grew_mib"] for s in sizes], 0.4, label="as it runs")
    ax.bar([x + 0.2 for x in xs], [s["whole"]["grew_mib"] for s in sizes], 0.4, label="every page received whole")
    ax.set_xticks(list(xs), labels)
    ax.set_xlabel("page object size")
    ax.set_ylabel("RSS left after the GET batches (MiB)")
    ax.set_title(f"Memory objectcache's GETs keep ({sizes[0]['batch']}-page batches)", fontsize=10)
    ax.legend()


if __name__ == "__main__":
    main()
