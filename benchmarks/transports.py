"""Raw transport ceiling: GET/PUT throughput and latency of boto3 vs obstore on a local SeaweedFS.

Starts its own SeaweedFS (loopback, temp dir), then for each object size, transport and
concurrency level times batch calls of `--batch` objects through the real `ObjectStore`
transports (the same code objectcache runs):
  - GET: `get_many` of `--batch` existing objects; PUT: `put_many(if_absent=True)` of
    `--batch` new keys (deleted after the cell);
  - batch latency p50/p99 (one call of `--batch` objects), MiB/s and requests/s;
  - client CPU ms per request (this process, all threads) and server CPU ms per request
    (the weed process), since client and server share this machine's cores;
  - single-object latency p50/p99 (`get_many([k])`/`put_many([(k, v)])`, one at a time).
The sweep repeats (`--rounds-small`) and `summary` keeps the median and range per cell:
this machine is shared, and one sweep's numbers move with other people's load.
Writes JSON (raw cells, summary, load average, the command line) and a PNG plot.

    .venv/bin/python -m benchmarks.transports            # ~12 min on 2 cores
    .venv/bin/python -m benchmarks.transports --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid

from benchmarks.rig import MiB, pct, s3_server, server_cpu_s
from benchmarks.schema import write_result
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import StoreSettings
from sglang_objectcache.store.base import StoreError
from sglang_objectcache.store.boto import Boto3Store
from sglang_objectcache.store.obstore_ import ObstoreStore

TRANSPORTS = {"boto3": Boto3Store, "obstore": ObstoreStore}


def check(results, what: str) -> None:
    bad = failures(results)
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} failed, first: {bad[0]!r}")


def failures(results) -> list:
    return [r for r in results if isinstance(r, StoreError) or r is None or r is False]


def cell(store, srv_pid: int, op: str, keys: list[str], data: bytes, repeats: int) -> dict:
    lat, n_req, errors = [], 0, []
    cpu0, srv0, t0 = time.process_time(), server_cpu_s(srv_pid), time.perf_counter()
    for r in range(repeats):
        if op == "GET":
            t = time.perf_counter()
            res = store.get_many(keys)
            lat.append(time.perf_counter() - t)
            assert all(len(b) == len(data) for b in res if not isinstance(b, StoreError) and b is not None)
        else:
            batch = [(f"{k}-{r}", data) for k in keys]
            t = time.perf_counter()
            res = store.put_many(batch)
            lat.append(time.perf_counter() - t)
        # An overloaded cell (e.g. 64 x 8 MiB PUTs on 2 cores) may time out: count, go on.
        errors += failures(res)
        n_req += len(keys) - len(failures(res))
    wall = time.perf_counter() - t0
    cpu, srv = time.process_time() - cpu0, server_cpu_s(srv_pid) - srv0
    busy = sum(lat)
    return {
        "requests": n_req, "MiB_s": n_req * len(data) / MiB / busy, "req_s": n_req / busy,
        "batch_p50_ms": 1e3 * pct(lat, 0.5), "batch_p99_ms": 1e3 * pct(lat, 0.99),
        "client_cpu_ms_per_req": 1e3 * cpu / n_req, "server_cpu_ms_per_req": 1e3 * srv / n_req,
        "wall_s": wall, "errors": len(errors), "first_error": repr(errors[0]) if errors else "",
    }


def single(store, op: str, keys: list[str], data: bytes, n: int) -> dict:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        if op == "GET":
            (r,) = store.get_many([keys[i % len(keys)]])
        else:
            (r,) = store.put_many([(f"{keys[0]}-single-{i}", data)])
        lat.append(time.perf_counter() - t)
        check([r], op)
    return {"p50_ms": 1e3 * pct(lat, 0.5), "p99_ms": 1e3 * pct(lat, 0.99), "n": n}


def run(args) -> dict:
    out = {"niceness": os.nice(0), "batch": args.batch, "loadavg_before": os.getloadavg(), "cells": [], "single": []}
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as tmp, \
            s3_server(tmp, ("bench",)) as srv:
        cfg = StoreSettings.of(ObjectCacheConfig.from_dict(srv.config("bench", read_timeout_s=60.0)))
        pid = srv.proc.pid
        for size_kib in args.sizes_kib:
            data = os.urandom(size_kib * 1024)
            run_id = uuid.uuid4().hex[:8]
            keys = [f"get/{run_id}/{size_kib}k/{i:04d}" for i in range(args.batch)]
            with Boto3Store(cfg, 32) as seed:
                check(seed.put_many([(k, data) for k in keys]), "seed PUT")
            big = size_kib * 1024 >= 4 * MiB
            concs = args.conc_big if big else args.conc_small
            # Transports alternate within each concurrency level and rounds repeat the
            # sweep, so a load change on this shared machine hits both sides alike.
            for rnd in range(args.rounds_big if big else args.rounds_small):
                for conc in concs:
                    for name in args.transports:
                        with TRANSPORTS[name](cfg, conc) as store:
                            store.get_many(keys[: min(conc, len(keys))])  # open the connections
                            for op in ("GET", "PUT"):
                                reps = (args.reps_big if big else args.reps_small) if op == "GET" else 1
                                pkeys = [f"put/{uuid.uuid4().hex[:8]}/{i:04d}" for i in range(args.batch)]
                                r = cell(store, pid, op, keys if op == "GET" else pkeys, data, reps)
                                r.update(transport=name, op=op, size_kib=size_kib, concurrency=conc, round=rnd)
                                out["cells"].append(r)
                                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                                  for k, v in r.items()}), flush=True)
                                if op == "PUT":
                                    store.delete_many([f"{k}-0" for k in pkeys])
            for name in args.transports:
                with TRANSPORTS[name](cfg, 1) as store:
                    for op in ("GET", "PUT"):
                        n = args.single_big if big else args.single_small
                        s = single(store, op, keys, data, n)
                        s.update(transport=name, op=op, size_kib=size_kib)
                        out["single"].append(s)
                        print(json.dumps(s), flush=True)
                        if op == "PUT":
                            store.delete_many([f"{keys[0]}-single-{i}" for i in range(n)])
    out["summary"] = summarize(out["cells"])
    return out


def summarize(cells: list[dict]) -> list[dict]:
    """Per (size, op, transport, concurrency): the median over rounds, and its min and max."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["size_kib"], c["op"], c["transport"], c["concurrency"]), []).append(c)
    rows = []
    for (size, op, name, conc), cs in groups.items():
        row = {"size_kib": size, "op": op, "transport": name, "concurrency": conc, "rounds": len(cs),
               "errors": sum(c["errors"] for c in cs)}
        for f in ("MiB_s", "req_s", "batch_p50_ms", "batch_p99_ms", "client_cpu_ms_per_req",
                  "server_cpu_ms_per_req"):
            vals = sorted(c[f] for c in cs)
            row[f] = vals[len(vals) // 2]
            row[f + "_min"], row[f + "_max"] = vals[0], vals[-1]
        rows.append(row)
    return rows


def draw(fig, out: dict) -> None:
    """Plot kind "transports": MiB/s and CPU per request against concurrency, per size and op."""
    sizes = sorted({c["size_kib"] for c in out["summary"]})
    fig.set_size_inches(6 * len(sizes), 7)
    axes = fig.subplots(2, len(sizes) * 2, squeeze=False)
    for j, size in enumerate(sizes):
        for i, op in enumerate(("GET", "PUT")):
            ax, cpu_ax = axes[0][2 * j + i], axes[1][2 * j + i]
            for i, name in enumerate(sorted({c["transport"] for c in out["summary"]})):
                color = f"C{i}"
                cs = sorted((c for c in out["summary"] if c["transport"] == name and c["op"] == op
                             and c["size_kib"] == size), key=lambda c: c["concurrency"])
                x = [c["concurrency"] for c in cs]
                y = [c["MiB_s"] for c in cs]
                err = [[v - c["MiB_s_min"] for v, c in zip(y, cs)], [c["MiB_s_max"] - v for v, c in zip(y, cs)]]
                ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, label=f"{name} (median, min-max)")
                cpu_ax.plot(x, [c["client_cpu_ms_per_req"] for c in cs], "o-", color=color, label=f"{name} client")
                cpu_ax.plot(x, [c["server_cpu_ms_per_req"] for c in cs], "x--", color=color, label=f"{name} server")
            label = f"{size // 1024} MiB" if size >= 1024 else f"{size} KiB"
            ax.set_title(f"{op} {label} x{out['batch']}")
            ax.set_xscale("log", base=2)
            ax.set_ylabel("MiB/s")
            ax.legend(fontsize=7)
            cpu_ax.set_xscale("log", base=2)
            cpu_ax.set_xlabel("max_concurrency")
            cpu_ax.set_ylabel("CPU ms / request")
            cpu_ax.legend(fontsize=7)
    host = out.get("machine") or out["host"]  # results before benchmarks.schema say "host"
    fig.suptitle(f"objectcache transports on local SeaweedFS ({host['cpus']} cores shared by client and server)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=list(TRANSPORTS))
    p.add_argument("--sizes-kib", nargs="+", type=int, default=[256, 8192])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--conc-small", nargs="+", type=int, default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--conc-big", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--rounds-small", type=int, default=3, help="sweeps of the small-object cells")
    p.add_argument("--rounds-big", type=int, default=1, help="sweeps of the big-object cells")
    p.add_argument("--reps-small", type=int, default=5)
    p.add_argument("--reps-big", type=int, default=2)
    p.add_argument("--single-small", type=int, default=64)
    p.add_argument("--single-big", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/transports")
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.quick:
        args.sizes_kib, args.batch, args.conc_small, args.conc_big = [256, 4096], 16, [1, 8], [1, 8]
        args.reps_small = args.reps_big = args.rounds_small = args.rounds_big = 1
        args.single_small = args.single_big = 4
    out = run(args)
    out["loadavg_after"] = os.getloadavg()
    rounds = max(args.rounds_small, args.rounds_big)
    path = write_result(args.out, rounds, out["summary"], extra=out, plot={"kind": "transports", "dpi": 110})
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
