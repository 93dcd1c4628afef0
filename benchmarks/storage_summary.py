"""benchmarks.storage's summary: per page size, each system's cell (pages/s, MiB/s, p50/p99,
CPU per page) from its batches, every ratio taken within one run (median and range over
runs) against the issue's targets, and the CPU bound a client could reach.

`summarize(geometry)` reads only the recorded batches, so `--resummarize` can redo it for an
earlier run's JSON.
"""

from __future__ import annotations

import statistics

from benchmarks.rig import MiB, pct

SYSTEMS = ("raw", "checked", "objectcache", "seaweedfs", "file")
CLIENTS = ("raw", "checked")  # the lanes run on RawObstore, one per concurrency


def best_conc(rows: list[dict], system: str, op: str) -> list[dict]:
    """A raw client tuned: its batches at the concurrency with the best median over all
    runs (one choice for every run, so no run gets the luckiest of several draws).
    `raw_obstore`: the raw lanes on obstore alone (the ceiling before objectcache had its
    own GET client)."""
    by_conc: dict[int, list[dict]] = {}
    obstore_only = system == "raw_obstore"
    for r in rows:
        if obstore_only and r["system"] == "raw" and r["op"] == op and isinstance(r["conc"], int) \
                or r["system"] == system and r["op"] == op:
            by_conc.setdefault(r["conc"], []).append(r)
    if not by_conc:
        return []
    best = min(by_conc, key=lambda c: statistics.median(x["wall_s"] for x in by_conc[c]))
    return by_conc[best]


def cell(rows: list[dict], page_kv_bytes: int) -> dict:
    walls = [r["wall_s"] for r in rows]
    med = statistics.median(walls)
    pages = rows[0]["pages"]
    return {"batches": len(rows), "pages_s": pages / med, "MiB_s": pages * page_kv_bytes / MiB / med,
            "p50_ms": 1e3 * med, "p99_ms": 1e3 * pct(walls, 0.99),
            "client_cpu_ms_per_page": 1e3 * statistics.median(r["client_cpu_s"] for r in rows) / pages,
            "server_cpu_ms_per_page": 1e3 * statistics.median(r["server_cpu_s"] for r in rows) / pages,
            **({"conc": sorted({r["conc"] for r in rows})} if "conc" in rows[0] else {})}


OPS = ("set", "get", "exists_cold", "exists_warm")
# (label, numerator, denominator): pages/s ratios, each taken within one run.
RATIOS = [
    ("get: objectcache / raw", ("objectcache", "get"), ("raw", "get")),
    ("get: objectcache / raw on obstore", ("objectcache", "get"), ("raw_obstore", "get")),
    ("set: objectcache / raw", ("objectcache", "set"), ("raw", "set")),
    ("set: objectcache / raw on obstore", ("objectcache", "set"), ("raw_obstore", "set")),
    ("get: objectcache / seaweedfs", ("objectcache", "get"), ("seaweedfs", "get")),
    ("set: objectcache / seaweedfs", ("objectcache", "set"), ("seaweedfs", "set")),
    ("exists cold: objectcache / seaweedfs", ("objectcache", "exists_cold"), ("seaweedfs", "exists_cold")),
    ("exists warm: objectcache / seaweedfs", ("objectcache", "exists_warm"), ("seaweedfs", "exists_cold")),
    ("exists cold: objectcache / raw HEADs", ("objectcache", "exists_cold"), ("raw", "exists")),
    ("get: objectcache / checked", ("objectcache", "get"), ("checked", "get")),
    ("set: objectcache / checked", ("objectcache", "set"), ("checked", "set")),
    ("get: checked / raw", ("checked", "get"), ("raw", "get")),
    ("set: checked / raw", ("checked", "set"), ("raw", "set")),
    ("get: checked / seaweedfs", ("checked", "get"), ("seaweedfs", "get")),
    ("set: checked / seaweedfs", ("checked", "set"), ("seaweedfs", "set")),
    ("get: seaweedfs / raw", ("seaweedfs", "get"), ("raw", "get")),
    ("set: seaweedfs / raw", ("seaweedfs", "set"), ("raw", "set")),
    ("get: objectcache / file", ("objectcache", "get"), ("file", "get")),
    ("set: objectcache / file", ("objectcache", "set"), ("file", "set")),
]
# The targets: small pages (~256 KiB of K+V) and large pages (~8 MiB).
TARGETS = {
    "small": {"get: objectcache / raw": 0.9, "get: objectcache / seaweedfs": 3.0,
              "set: objectcache / seaweedfs": 1.5, "exists cold: objectcache / seaweedfs": 5.0},
    "large": {"get: objectcache / raw": 0.9, "set: objectcache / raw": 0.9,
              "exists cold: objectcache / seaweedfs": 5.0},
}


# Client and server share this box's cores. Where all of them are busy, pages/s is about
# cores / (client + server CPU per page), so a ratio between two systems is bounded by their
# CPU per page: `cpu_model` is that prediction, `any_client` the same with objectcache's own
# client CPU taken as zero: the most any client could reach against the in-tree backend in
# that run, given what the server spends per page (benchmarks/server_put.py).
CPU_BOUNDS = [("set: objectcache / seaweedfs", ("objectcache", "set"), ("seaweedfs", "set"))]


def cpu_bounds(mine: dict, theirs: dict) -> dict:
    cpu = lambda c: c["client_cpu_ms_per_page"] + c["server_cpu_ms_per_page"]  # noqa: E731
    return {"cpu_model": cpu(theirs) / cpu(mine), "any_client": cpu(theirs) / mine["server_cpu_ms_per_page"]}


def size_class(page_kv_bytes: int) -> str:
    return "small" if page_kv_bytes <= 512 * 1024 else "large" if page_kv_bytes >= 4 * MiB else "mid"


def summarize(geo: dict) -> dict:
    rows, kv = geo["batches"], geo["page_kv_bytes"]
    runs = sorted({r["run"] for r in rows})

    def select(system, op, run=None):
        if system in CLIENTS or system == "raw_obstore":
            got = best_conc(rows, system, op)
        else:
            got = [r for r in rows if r["system"] == system and r["op"] == op]
        return [r for r in got if run is None or r["run"] == run]

    per_system = {}
    for system in SYSTEMS:
        for op in {"raw": ("set", "get", "exists"), "checked": ("set", "get")}.get(system, OPS):
            got = select(system, op)
            if got:
                per_run = [cell(select(system, op, run), kv) for run in runs if select(system, op, run)]
                c = cell(got, kv)
                c["pages_s_runs"] = [x["pages_s"] for x in per_run]
                per_system.setdefault(system, {})[op] = c
    ratios = []
    targets = TARGETS.get(size_class(kv), {})
    for label, (ns, no), (ds, do) in RATIOS:
        target = targets.get(label)
        vals = []
        for run in runs:
            a, b = select(ns, no, run), select(ds, do, run)
            if a and b:
                vals.append(cell(a, kv)["pages_s"] / cell(b, kv)["pages_s"])
        if vals:
            ratios.append({"ratio": label, "runs": vals, "median": statistics.median(vals),
                           "min": min(vals), "max": max(vals), "target": target,
                           "met": None if target is None else statistics.median(vals) >= target})
    bounds = []
    for label, (ns, no), (ds, do) in CPU_BOUNDS:
        per_run = [cpu_bounds(cell(select(ns, no, run), kv), cell(select(ds, do, run), kv))
                   for run in runs if select(ns, no, run) and select(ds, do, run)]
        if per_run:
            bounds.append({"ratio": label, **{k + "_runs": [b[k] for b in per_run] for k in per_run[0]},
                           **{k: statistics.median(b[k] for b in per_run) for k in per_run[0]}})
    return {"systems": per_system, "ratios": ratios, "cpu_bounds": bounds}


def print_ratios(out: dict) -> None:
    for geo in out["geometries"]:
        print(f"\n== {geo['page_kv_bytes'] / MiB:g} MiB pages ({geo['page_tokens']} tokens), "
              f"{geo['batch']} per batch, {out['runs']} runs ==")
        for system, ops in geo["summary"]["systems"].items():
            for op, c in ops.items():
                print(f"  {system:12s} {op:12s} {c['pages_s']:9.1f} pages/s {c['MiB_s']:8.1f} MiB/s "
                      f"p50 {c['p50_ms']:8.1f} ms p99 {c['p99_ms']:8.1f} ms "
                      f"client {c['client_cpu_ms_per_page']:.3f} server {c['server_cpu_ms_per_page']:.3f} "
                      f"CPU ms/page{' conc ' + str(c['conc']) if 'conc' in c else ''}")
        for r in geo["summary"]["ratios"]:
            tgt = "" if r["target"] is None else f"  target >= {r['target']}: {'MET' if r['met'] else 'NOT MET'}"
            print(f"  {r['ratio']:40s} {r['median']:6.2f}x (runs {', '.join(f'{v:.2f}' for v in r['runs'])}){tgt}")
        for b in geo["summary"].get("cpu_bounds", []):
            print(f"  {b['ratio']:40s} CPU-bound model {b['cpu_model']:.2f}x, any client at most "
                  f"{b['any_client']:.2f}x (runs {', '.join(f'{v:.2f}' for v in b['any_client_runs'])})")
        fw = geo["format_work"]
        print(f"  xxh3 {fw['xxh3_GB_s']:.1f} GB/s; per batch: xxh3 {1e3 * fw['xxh3_s_per_batch']:.1f} ms, "
              f"encode {1e3 * fw['encode_s_per_batch']:.1f} ms, verify+copy {1e3 * fw['decode_copy_s_per_batch']:.1f} ms")
