"""A probe: does the raw ceiling in benchmarks.storage read cheaper objects than objectcache does?

benchmarks.storage gives each lane its own objects: the raw lanes read what the raw client wrote
into `bench-raw`, objectcache reads its own pages in `bench-objectcache`. Where SeaweedFS is
the bottleneck, what an object costs the server to serve decides the lane's rate. This probe
writes 128 pages with objectcache, then copies the same bytes under raw keys into both
buckets, and times, batch by batch in a random order each round:
- objectcache's `batch_get_v1` of its pages;
- the raw client (`http/128`) GETting those very objects;
- the raw client GETting the copies (`bench-raw`, and objectcache's bucket).
Each batch records its wall time, the client's CPU and SeaweedFS's CPU.

    nice -n -10 .venv/bin/python -m benchmarks.same_objects [--pin] [--reps 60] --out benchmarks/results/same_objects
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid

from benchmarks.clients import BUCKETS, RawHttp, make_systems
from benchmarks.rig import Shape, host_indices, make_host, page_hashes, pin_client, s3_server, server_cpu_s
from benchmarks.schema import write_result


def run(args) -> dict:
    import obstore

    B, P = args.batch, args.page_tokens
    host = make_host(Shape(), P, 2 * B, args.layout)
    src, dst = host_indices(0, B, P), host_indices(B, B, P)
    batches: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="same-objects-") as d:
        with s3_server(os.path.join(d, "s3"), BUCKETS, pin=args.pin) as srv:
            oc = make_systems(srv, host, P, os.path.join(d, "file"))["objectcache"]
            keys = page_hashes(B)
            if oc.set(keys, src) != B:
                raise RuntimeError("objectcache did not store the batch")
            names = [oc.storage.keys.object_key(k) for k in keys]
            size = oc.storage.pages.geometry.object_bytes
            in_oc = RawHttp(srv, "bench-objectcache", 128)
            in_raw = RawHttp(srv, "bench-raw", 128)
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


def draw(fig, out: dict) -> None:
    """Plot kind "same_objects": pages/s by lane, and server + client CPU per page."""
    s = out["summary"]
    names = list(s)
    fig.set_size_inches(11, 3.2)
    axes = fig.subplots(1, 2)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2)
    p.add_argument("--layout", default="layer_first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--pin", action="store_true", help="SeaweedFS on CPU 0, this process on CPU 1")
    p.add_argument("--out", default="benchmarks/results/same_objects")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.pin:
        pin_client()
    out = {"pin": args.pin, "reps": args.reps,
           "page_kv_bytes": args.page_tokens * Shape().token_bytes, "layout": args.layout,
           "loadavg_before": os.getloadavg()}
    out.update(run(args))
    write_result(args.out, args.reps, out["summary"], extra=out, plot={"kind": "same_objects"})
    for name, s in out["summary"].items():
        print(f"{name:38s} {s['pages_s']:7.0f} pages/s  client {s['client_cpu_ms_per_page']:.3f}  "
              f"server {s['server_cpu_ms_per_page']:.3f} CPU ms/page  objectcache / this {s['objectcache_over_this']:.2f}x")


if __name__ == "__main__":
    main()
