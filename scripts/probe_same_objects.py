"""Does the raw ceiling in bench_storage read cheaper objects than objectcache does?

bench_storage gives each lane its own objects: the raw lanes read what the raw client wrote
into `bench-raw`, objectcache reads its own pages in `bench-objectcache`. Where SeaweedFS is
the bottleneck, what an object costs the server to serve decides the lane's rate. This probe
writes 128 pages with objectcache, then copies the same bytes under raw keys into both
buckets, and times, batch by batch in a random order each round:
- objectcache's `batch_get_v1` of its pages;
- the raw client (`http/128`) GETting those very objects;
- the raw client GETting the copies (`bench-raw`, and objectcache's bucket).
Each batch records its wall time, the client's CPU and SeaweedFS's CPU.

    nice -n -10 .venv/bin/python scripts/probe_same_objects.py [--pin] [--reps 60] --out benchmarks/results/same_objects
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_storage as bs  # noqa: E402
from benchutil import command_line, pin_client, pin_server, server_cpu_s  # noqa: E402

from objectcache_dev.s3server import SeaweedFS  # noqa: E402


def run(args) -> dict:
    import obstore

    B, P = args.batch, args.page_tokens
    host = bs.make_host(bs.Shape(), P, 2 * B, args.layout)
    src, dst = bs.host_indices(0, B, P), bs.host_indices(B, B, P)
    batches: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="same-objects-") as d:
        with SeaweedFS(os.path.join(d, "s3"), buckets=bs.BUCKETS) as srv:
            if args.pin:
                pin_server(srv.proc.pid)
            oc = bs.make_systems(srv, host, P, os.path.join(d, "file"))["objectcache"]
            keys = bs.page_hashes(B)
            if oc.set(keys, src) != B:
                raise RuntimeError("objectcache did not store the batch")
            names = [oc.storage.keys.object_key(k) for k in keys]
            size = oc.storage.pages.geometry.object_bytes
            in_oc = bs.RawHttp(srv, "bench-objectcache", 128)
            in_raw = bs.RawHttp(srv, "bench-raw", 128)
            bodies = [bytes(obstore.get(in_oc.store, n).bytes()) for n in names]
            copies = {c: [f"raw/{uuid.uuid4().hex}" for _ in range(B)] for c in ("raw", "oc")}
            if in_raw.put(list(zip(copies["raw"], bodies))) != B or in_oc.put(list(zip(copies["oc"], bodies))) != B:
                raise RuntimeError("the raw copies were not stored")

            def raw_get(client, ks):
                return lambda: sum(n == size for n in client.get(ks, size))

            lanes = {"objectcache": lambda: oc.get(keys, dst),
                     "raw, objectcache's objects": raw_get(in_oc, names),
                     "raw, copies in bench-raw": raw_get(in_raw, copies["raw"]),
                     "raw, copies in objectcache's bucket": raw_get(in_oc, copies["oc"])}
            batches = {n: [] for n in lanes}
            rng = random.Random(0)
            for _ in range(args.reps):
                for name in rng.sample(list(lanes), len(lanes)):
                    s0, c0, t0 = server_cpu_s(srv.proc.pid), time.process_time(), time.perf_counter()
                    n = lanes[name]()
                    wall = time.perf_counter() - t0
                    if n != B:
                        raise RuntimeError(f"{name}: read {n} of {B} pages")
                    batches[name].append({"wall_s": wall, "client_cpu_s": time.process_time() - c0,
                                          "server_cpu_s": server_cpu_s(srv.proc.pid) - s0})
            in_oc.close()
            in_raw.close()
    summary = {}
    for name, bs_ in batches.items():
        summary[name] = {
            "pages_s": B / statistics.median(b["wall_s"] for b in bs_),
            "client_cpu_ms_per_page": 1e3 * sum(b["client_cpu_s"] for b in bs_) / (B * len(bs_)),
            "server_cpu_ms_per_page": 1e3 * sum(b["server_cpu_s"] for b in bs_) / (B * len(bs_)),
        }
    oc_rate = summary["objectcache"]["pages_s"]
    for s in summary.values():
        s["objectcache_over_this"] = oc_rate / s["pages_s"]
    return {"batches": batches, "summary": summary}


def plot(out: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    s = out["summary"]
    names = list(s)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    axes[0].barh(names, [s[n]["pages_s"] for n in names], color=["C1"] + ["C0"] * (len(names) - 1))
    axes[0].set_xlabel("pages/s (median batch)")
    axes[1].barh(names, [s[n]["server_cpu_ms_per_page"] for n in names], label="SeaweedFS")
    axes[1].barh(names, [s[n]["client_cpu_ms_per_page"] for n in names],
                 left=[s[n]["server_cpu_ms_per_page"] for n in names], label="client")
    axes[1].set_xlabel("CPU ms per page")
    axes[1].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    axes[1].set_yticks([])
    cores = "server on CPU 0, client on CPU 1" if out["pin"] else "2 cores shared"
    fig.suptitle(f"The same objects, {out['page_kv_bytes'] // 1024} KiB pages ({cores}), {out['reps']} rounds",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2)
    p.add_argument("--layout", default="layer_first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--pin", action="store_true", help="SeaweedFS on CPU 0, this process on CPU 1")
    p.add_argument("--out", default="benchmarks/results/same_objects")
    args = p.parse_args()
    if args.pin:
        pin_client()
    out = {"command": command_line(), "pin": args.pin, "reps": args.reps,
           "page_kv_bytes": args.page_tokens * bs.Shape().token_bytes, "layout": args.layout,
           "loadavg_before": os.getloadavg()}
    out.update(run(args))
    base = Path(args.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(out, indent=1))
    plot(out, base.with_suffix(".png"))
    for name, s in out["summary"].items():
        print(f"{name:38s} {s['pages_s']:7.0f} pages/s  client {s['client_cpu_ms_per_page']:.3f}  "
              f"server {s['server_cpu_ms_per_page']:.3f} CPU ms/page  objectcache / this {s['objectcache_over_this']:.2f}x")


if __name__ == "__main__":
    main()
