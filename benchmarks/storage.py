"""Storage data path: objectcache vs SGLang's in-tree S3 backend vs a raw S3 client, one SeaweedFS.

For each page size (the same model shape, `--batch`-page batches, one pair of real
SGLang KV pools: `MHATokenToKVPoolHost`, layout `--layout`), each of `--runs` runs starts
one local SeaweedFS (loopback, temp dir, deleted after the run) and moves the same pages
through every system against it:
  raw          the ceiling: a tuned parallel S3 client, no SGLang, no format: obstore's
               async API on one event loop, the same GETs (one ranged GET of the known
               size per object, its fastest form)/PUTs/HEADs of the same object sizes,
               no copy out of the response buffers. Every concurrency in
               `--raw-conc-*` runs twice, once through obstore and once through
               objectcache's own GET and PUT clients (`store/httpget.py`,
               `store/httpput.py`, conc `http/N`): the client and concurrency with the
               best median over all runs count, for each of GET and PUT.
  checked      the raw client plus the least work any checksummed, deduplicating cache
               must add (the floor of this design): each GET body's xxh3 is computed and
               checked and the body copied once into a host buffer, as it lands; PUTs are
               conditional (If-None-Match: *). Same lanes as raw, best one counts.
  objectcache  `ObjectCacheStorage.batch_get_v1` / `batch_set_v1` / `batch_exists`, its
               default transport and settings (read timeout 60 s, as boto3's, so a slow
               8 MiB PUT on a loaded box is not cut)
  seaweedfs    SGLang's in-tree `SeaweedFSStore` (boto3, one object per page, 16 threads),
               built as SGLang's backend factory builds it
  file         SGLang's in-tree `HiCacheFile` through the controller's generic page path
               (`_generic_page_get` / `_generic_page_set`), a local-disk reference
Per batch: wall time, this process's CPU and the server's CPU. Each system writes fresh
keys (`--set-batches-*` batches), reads the first batch back `--get-reps-*` times into
other host slots (the first read is checked byte for byte against the source pages), and
asks `batch_exists` for it `--exists-reps` times. objectcache's `batch_exists` is timed
twice: `cold` (its known-keys cache cleared first, so every key costs a HEAD, as for a
fresh server) and `warm` (the keys were just read: no request is made); the in-tree
backends have no such cache and are always cold. Systems take turns batch by batch, in a
random order each round (this machine is shared and its load moves), and each timed
`batch_set` starts after `--settle-s` of idle time, so no system inherits the server's
work on another's PUTs. Every ratio is taken inside one run, then summarized as the
median and range over runs.

Also measured: xxh3 throughput on one page and objectcache's format work per batch (seal,
verify, host-pool copies) without the network.

Writes JSON (every batch, per-system medians, ratios, targets, the command line) and a PNG;
`<out>.partial.json` holds the page sizes done so far while it runs.

    nice -n -10 .venv/bin/python -m benchmarks.storage   # ~20 min on 2 cores; nice is optional
    .venv/bin/python -m benchmarks.storage --quick       # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks import plot as plotting
from benchmarks.clients import BUCKETS, RawHttp, RawObstore, make_systems, seal_into, sealed_pages
from benchmarks.rig import (MiB, CpuTimer, Shape, check_pages, host_indices, make_host, page_hashes, pin_client,
                            s3_server, zero_pages)
from benchmarks.schema import command_line, write_result
from benchmarks.storage_summary import CLIENTS, SYSTEMS, print_ratios, summarize
from objectcache_dev.s3server import SeaweedFS
from sglang_objectcache import objformat


def run_geometry(args, shape: Shape, page_tokens: int, tmp: str) -> dict:
    """All runs of one page size. Each run starts its own SeaweedFS (deleted after it, so
    the disk holds one run's objects at most) and compares every system against it."""
    B, P = args.batch, page_tokens
    big = page_tokens * shape.token_bytes >= MiB  # 1 MiB and up: fewer, longer batches
    host = make_host(shape, P, 2 * B, args.layout)
    batches: list[dict] = []
    fmt = {}
    for run in range(args.runs):
        run_dir = tempfile.mkdtemp(prefix=f"run{run}-", dir=tmp)
        with s3_server(os.path.join(run_dir, "s3"), BUCKETS, pin=args.pin) as srv:
            run_once(args, srv, host, P, big, run, run_dir, batches, fmt)
        shutil.rmtree(run_dir, ignore_errors=True)
    oc_g = fmt.pop("geometry")
    return {"page_tokens": P, "page_kv_bytes": P * shape.token_bytes, "object_bytes": oc_g.object_bytes,
            "header_bytes": oc_g.header_bytes, "batch": B, "batches": batches, "format_work": fmt}


def need_disk(args, page_bytes: int, big: bool, tmp: str) -> None:
    """Stop before a run that cannot fit: every writing lane keeps every batch it wrote
    until the run ends, and a full disk makes SeaweedFS answer HTTP 500 mid-run."""
    concs = args.raw_conc_big if big else args.raw_conc_small
    lanes = len(concs) * sum(c in args.systems for c in CLIENTS) + \
        sum(s not in CLIENTS for s in args.systems)
    sets = args.set_batches_big if big else args.set_batches_small
    need = (lanes * (sets * args.batch + warm_pages(args.batch, big)) + args.batch) * page_bytes
    free = shutil.disk_usage(tmp).free
    if need > 0.9 * free:
        raise SystemExit(f"one run of {page_bytes / MiB:g} MiB pages writes ~{need / 2**30:.1f} GiB "
                         f"({lanes} lanes x {sets} batches) but {tmp} has {free / 2**30:.1f} GiB free: "
                         "use fewer --set-batches-big, --raw-conc-big or --systems")


def warm_pages(B: int, big: bool) -> int:
    return B if not big else min(B, 16)


def run_once(args, srv: SeaweedFS, host, P: int, big: bool, run: int, run_dir: str, batches: list,
             fmt: dict) -> None:
    B = args.batch
    systems = make_systems(srv, host, P, os.path.join(run_dir, "file"))
    oc = systems["objectcache"].storage
    g = oc.pages.geometry
    timer = CpuTimer(srv.proc.pid)
    src, dst = host_indices(0, B, P), host_indices(B, B, P)
    # The raw client moves objectcache's object size; its bodies are the sealed pages.
    raw_bodies = sealed_pages(oc, [f"raw{i}" for i in range(B)], [i * P for i in range(B)])
    concs = args.raw_conc_big if big else args.raw_conc_small
    digests: dict = {}
    sink = np.empty((B if g.object_bytes <= MiB else 16, g.object_bytes), np.uint8)
    raws = {(name, c): RawObstore(srv, "bench-raw", c, name == "checked", digests, sink)
            for name in CLIENTS if name in args.systems for c in concs}
    # The same lanes with objectcache's own GET and PUT clients: the ceiling (and floor) is
    # the best client as well as the best concurrency.
    http_of = {(name, f"http/{c}"): (name, c) for name, c in raws}
    raws.update({lane: RawHttp(srv, "bench-raw", conc, name == "checked", digests, sink)
                 for lane, (name, conc) in http_of.items()})
    set_batches = args.set_batches_big if big else args.set_batches_small
    get_reps = args.get_reps_big if big else args.get_reps_small

    def record(system, op, n_ok, t, **extra):
        row = {"run": run, "system": system, "op": op, "pages": n_ok, **t, **extra}
        batches.append(row)
        if args.verbose:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    # Warm-up, not recorded: connections opened, each bucket's first volume allocated.
    warm = warm_pages(B, big)
    for raw in raws.values():
        keys = [f"warm/{uuid.uuid4().hex}" for _ in range(warm)]
        raw.put(list(zip(keys, raw_bodies))), raw.get(keys, g.object_bytes), raw.head(keys)
    for name, sysm in systems.items():
        # objectcache keeps one staging buffer as large as the largest batch it has sealed:
        # a whole batch here, so the first timed one does not fault in 1 GiB (8 MiB pages).
        n = B if name == "objectcache" else warm
        keys = page_hashes(n)
        sysm.set(keys, src[: n * P]), sysm.get(keys, dst[: n * P]), sysm.exists(keys, True)

    # A lane is one system (raw: one per concurrency). Lanes take turns batch by batch, in
    # a fresh random order each round, so a change in this shared machine's load lands on
    # all of them alike, and no lane always follows the same one (the server still works
    # off a batch of PUTs after answering them; see --settle-s).
    lanes = list(raws) + [(name, None) for name in SYSTEMS if name not in CLIENTS and name in args.systems]
    rng = random.Random(run)

    def rounds(n):
        for _ in range(n):
            yield rng.sample(lanes, len(lanes))

    def put(lane, keys):
        if lane in raws:
            return raws[lane].put(list(zip(keys, raw_bodies)))
        return systems[lane[0]].set(keys, src)

    def get(lane, keys):
        if lane in raws:
            return sum(n == g.object_bytes for n in raws[lane].get(keys, g.object_bytes))
        return systems[lane[0]].get(keys, dst)

    def conc_of(lane):
        return {"conc": lane[1]} if lane[1] else {}

    read_keys = {}
    for order in rounds(set_batches):
        for lane in order:
            time.sleep(args.settle_s)
            keys = [f"raw/{uuid.uuid4().hex}" for _ in range(B)] if lane in raws else page_hashes(B)
            read_keys.setdefault(lane, keys)
            n, t = timer(lambda: put(lane, keys))
            if n != B:
                raise RuntimeError(f"{lane}: batch_set stored {n} of {B} pages")
            record(lane[0], "set", n, t, **conc_of(lane))
    for rep, order in enumerate(rounds(get_reps)):
        for lane in order:
            check = rep == 0 and lane not in raws
            if check:
                zero_pages(host, B, B, P)
            n, t = timer(lambda: get(lane, read_keys[lane]))
            if n != B:
                raise RuntimeError(f"{lane}: batch_get read {n} of {B} pages")
            if check:
                check_pages(host, 0, B, B, P)
            record(lane[0], "get", n, t, **conc_of(lane))
    for order in rounds(args.exists_reps):
        for lane in order:
            name, conc = lane
            if name == "checked" or lane in http_of:
                continue  # a HEAD is a HEAD
            if lane in raws:
                res, t = timer(lambda: raws[lane].head(read_keys[lane]))
                record("raw", "exists", len(res), t, conc=conc)
                continue
            for cold in ((True, False) if name == "objectcache" else (True,)):
                n, t = timer(lambda: systems[name].exists(read_keys[lane], cold))
                if n != B:
                    raise RuntimeError(f"{name}: batch_exists found {n} of {B} pages")
                record(name, "exists_cold" if cold else "exists_warm", n, t)
    if run == args.runs - 1:
        fmt.update(format_work(oc, host, B, P), geometry=g)
    for raw in raws.values():
        raw.close()
    for sysm in systems.values():
        if hasattr(sysm.storage, "close"):
            sysm.storage.close()


def format_work(oc, host, B: int, P: int) -> dict:
    """objectcache's CPU work per batch with no network: xxh3 over one page, sealing the
    batch (host pool -> objects) and verifying + copying it back (objects -> host pool)."""
    g = oc.pages.geometry
    payload = torch.randint(0, 256, (g.payload_bytes,), dtype=torch.uint8).numpy()
    n = max(3, int(64 * MiB // g.payload_bytes))
    t0 = time.perf_counter()
    for _ in range(n):
        objformat.checksum(payload)
    xxh3_s = (time.perf_counter() - t0) / n
    digests = [oc.keys.content_digest(f"fmt{i}") for i in range(B)]
    src, dst = host_indices(0, B, P), host_indices(B, B, P)
    staging = np.empty((B, g.object_bytes), np.uint8)
    staging.fill(0)  # faulted in before the clock starts, as objectcache's reused staging rows are
    t0 = time.perf_counter()
    blobs = list(seal_into(oc.pages, digests, src.tolist()[::P], staging))
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for digest, b, s in zip(digests, blobs, dst.tolist()[::P]):  # what a GET of a whole body does
        objformat.decode(b, g, digest)
        oc.pages.write_page(s, b[g.header_bytes:])
    decode_s = time.perf_counter() - t0
    return {"xxh3_GB_s": g.payload_bytes / xxh3_s / 1e9, "xxh3_s_per_batch": xxh3_s * B,
            "encode_s_per_batch": encode_s, "decode_copy_s_per_batch": decode_s}


def draw(fig, out: dict) -> None:
    """The storage figure (plot kind "storage"): per page size, MiB/s of get and set by system,
    batch_exists latency, and every ratio against its target."""
    geos = out["geometries"]
    fig.set_size_inches(8 * len(geos), 14)
    axes = fig.subplots(3, len(geos), squeeze=False)
    colors = {"raw": "0.55", "checked": "0.3", "objectcache": "C0", "seaweedfs": "C3", "file": "C2"}
    for j, geo in enumerate(geos):
        s = geo["summary"]["systems"]
        kv = geo["page_kv_bytes"]
        label = f"{kv / MiB:g} MiB" if kv >= MiB else f"{kv // 1024} KiB"
        ax = axes[0][j]
        ops, width = ("get", "set"), 0.16
        for i, system in enumerate(SYSTEMS):
            xs, ys, lo, hi = [], [], [], []
            for k, op in enumerate(ops):
                c = s.get(system, {}).get(op)
                if c:
                    runs = [v * kv / MiB for v in c["pages_s_runs"]]
                    xs.append(k + (i - (len(SYSTEMS) - 1) / 2) * width)
                    ys.append(c["MiB_s"])
                    lo.append(max(0, c["MiB_s"] - min(runs)))
                    hi.append(max(0, max(runs) - c["MiB_s"]))
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors[system], label=system)
        ax.set_xticks(range(len(ops)), [f"batch_{op}" for op in ops])
        ax.set_ylabel("MiB/s (median batch; bars: range of run medians)")
        ax.set_title(f"{label} pages, {geo['batch']} per batch")
        ax.legend(fontsize=8)
        ax = axes[1][j]
        names, vals, cols = [], [], []
        for system, op, tag in (("raw", "exists", "HEADs"), ("objectcache", "exists_cold", "cold"),
                                ("objectcache", "exists_warm", "warm"), ("seaweedfs", "exists_cold", "HEADs"),
                                ("file", "exists_cold", "stat")):
            c = s.get(system, {}).get(op)
            if c:
                names.append(f"{system}\n{tag}")
                vals.append(c["p50_ms"])
                cols.append(colors[system])
        ax.bar(range(len(vals)), vals, color=cols)
        ax.set_xticks(range(len(vals)), names, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (median, log)")
        ax.set_title(f"{label}: batch_exists of {geo['batch']} pages")
        for x, v in enumerate(vals):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax = axes[2][j]
        rs = [r for r in geo["summary"]["ratios"] if "warm" not in r["ratio"]]
        y = range(len(rs))
        med = [r["median"] for r in rs]
        ax.barh(y, med, xerr=[[m - r["min"] for m, r in zip(med, rs)], [r["max"] - m for m, r in zip(med, rs)]],
                capsize=3, color=["C0" if r["target"] is None else ("C2" if r["met"] else "C1") for r in rs])
        bound = {b["ratio"]: b["any_client"] for b in geo["summary"].get("cpu_bounds", [])}
        for yi, r in zip(y, rs):
            if r["target"] is not None:
                ax.plot([r["target"]] * 2, [yi - 0.4, yi + 0.4], "k--", lw=1)
            if r["ratio"] in bound:
                ax.plot([bound[r["ratio"]]], [yi - 0.3], "v", color="C4", ms=6)
            ax.text(r["max"], yi, f"  {r['median']:.2f}x" + ("" if r["target"] is None else f" (target {r['target']:g})"),
                    va="center", fontsize=7)
        ax.axvline(1.0, color="0.6", lw=0.8)
        ax.set_yticks(list(y), [r["ratio"] for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.3 * max(r["max"] for r in rs))
        ax.set_xlabel("pages/s ratio within each run: median of runs, bar = range;\n"
                      "dashed = target (green met, orange not); v = any client's CPU bound")
        ax.set_title(f"{label}: ratios over {out['runs']} runs")
    host = out.get("machine") or out["host"]  # results before benchmarks.schema say "host"
    cores = ("server pinned to CPU 0, client to CPU 1" if out.get("pin")
             else f"{host['cpus']} cores shared by client and server")
    fig.suptitle(f"HiCache L3 data path on one local SeaweedFS ({cores})\n{out['shape']['layers']} layers x {out['shape']['kv_heads']} KV heads x "
                 f"{out['shape']['head_dim']} {out['shape']['dtype']}, host layout {out['layout']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page-tokens", nargs="+", type=int, default=[2, 16, 64],
                   help="page sizes in tokens (2, 16, 64 -> 256 KiB, 2 MiB, 8 MiB with the default shape)")
    p.add_argument("--layers", type=int, default=Shape.layers)
    p.add_argument("--kv-heads", type=int, default=Shape.kv_heads)
    p.add_argument("--head-dim", type=int, default=Shape.head_dim)
    p.add_argument("--layout", default="page_first", choices=["layer_first", "page_first", "page_first_direct"],
                   help="host pool layout (SGLang's default is page_first)")
    p.add_argument("--batch", type=int, default=128, help="pages per batch (SGLang's STORAGE_BATCH_SIZE)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--raw-conc-small", nargs="+", type=int, default=[16, 64, 128])
    p.add_argument("--raw-conc-big", nargs="+", type=int, default=[16, 64])
    p.add_argument("--set-batches-small", type=int, default=3)
    # 2, not 3: each 8 MiB-page batch is 1 GiB, and one run's 7 writing lanes keep theirs
    p.add_argument("--set-batches-big", type=int, default=2)
    # GETs are cheap next to the 1 GiB PUT batches, and their noise (one lane's batches in
    # one run spread over 2x here) decides the GET verdicts: 30 and 12 per run (15 and 8
    # before the PageLanding runs, 5 and 3 before storage_run3).
    p.add_argument("--get-reps-small", type=int, default=30)
    p.add_argument("--get-reps-big", type=int, default=12)
    p.add_argument("--exists-reps", type=int, default=5)
    p.add_argument("--settle-s", type=float, default=1.0, help="idle time before each timed batch_set")
    p.add_argument("--pin", action="store_true",
                   help="SeaweedFS on CPU 0 and this process on CPU 1, so client and server no "
                        "longer take CPU from each other (as with a store on another host)")
    p.add_argument("--out", default="benchmarks/results/storage")
    p.add_argument("--verbose", action="store_true", help="print every batch")
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    p.add_argument("--resummarize", metavar="JSON", help="summarize the batches of an earlier run again "
                   "(after a change to the summary), rewriting that JSON and its plot; runs nothing")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.resummarize:
        return resummarize(Path(args.resummarize))
    if args.quick:
        args.page_tokens, args.batch, args.runs = [2, 16], 16, 1
        args.raw_conc_small = args.raw_conc_big = [16]
        args.set_batches_small = args.get_reps_small = args.get_reps_big = args.exists_reps = 1
        args.settle_s = 0.1
    if args.pin:
        pin_client()
    shape = Shape(args.layers, args.kv_heads, args.head_dim)
    out = {"command": command_line(), "shape": asdict(shape), "layout": args.layout, "runs": args.runs,
           "pin": {"server": [0], "client": [1]} if args.pin else None,
           "loadavg_before": os.getloadavg(), "geometries": []}
    base = Path(args.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    partial = base.with_suffix(".partial.json")
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        for P in args.page_tokens:  # before the first run, not an hour into it
            need_disk(args, P * shape.token_bytes, P * shape.token_bytes >= MiB, tmp)
        for P in args.page_tokens:
            geo = run_geometry(args, shape, P, tmp)
            geo["summary"] = summarize(geo)
            out["geometries"].append(geo)
            # A crash in a later page size (or a full disk) keeps what is done so far.
            partial.write_text(json.dumps(out, indent=1))
    out["loadavg_after"] = os.getloadavg()
    del out["command"], out["runs"]
    path = write_result(base, args.runs, medians(out), extra=out, plot={"kind": "storage"})
    partial.unlink(missing_ok=True)
    print_ratios(out | {"runs": args.runs})
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


def medians(out: dict) -> dict:
    """Each page size's ratios (median over runs), keyed by page tokens."""
    return {str(geo["page_tokens"]): {r["ratio"]: r["median"] for r in geo["summary"]["ratios"]}
            for geo in out["geometries"]}


def resummarize(path: Path) -> None:
    out = json.loads(path.read_text())
    for geo in out["geometries"]:
        geo["summary"] = summarize(geo)
    out["resummarized"] = command_line()
    out["plot"] = {"kind": "storage"}
    path.write_text(json.dumps(out, indent=1))
    plotting.draw(out, path.with_suffix(".png"))
    print_ratios(out)


if __name__ == "__main__":
    main()
