"""Write docs/results.md, and the README's "targets at a glance" table, from benchmarks/results/*.json.

    .venv/bin/python scripts/results_doc.py            # rewrite docs/results.md and the README table
    .venv/bin/python scripts/results_doc.py --check    # exit 1 if either is out of date

Every number written comes from a JSON file in benchmarks/results/. BENCHMARKS below says,
per benchmark, which files are its latest run (shown with their recorded command and key
numbers) and which are earlier runs kept for the record (listed with their command only);
TARGETS says how each target's latest value is read. The script refuses to run while a
JSON file in benchmarks/results/ is in neither list, so a new run has to be placed.

To add a benchmark: a module benchmarks/<name>.py whose run writes its JSON and plot into
benchmarks/results/ (benchmarks.schema.write_result records the `command`), then a `Bench`
here with a renderer for its key numbers, and the run it replaces moved to `older`.
To add a target: add a `Target` whose `measure` reads the latest JSON.
tests/test_docs.py checks that the committed files are what this writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- targets:begin (scripts/results_doc.py) -->", "<!-- targets:end -->"


@lru_cache(maxsize=None)
def load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


# ---- formatting --------------------------------------------------------------------------

def num(v: float, digits: int = 2) -> str:
    return f"{v:,.{digits}f}"


def x(v: float, target: float | None = None, op: str = ">=") -> str:
    """A ratio: 2 decimals (0 or 1 for large ones), 3 where 2 would put it on the other
    side of `target`."""
    return plain(v, target, op) + "×"


def plain(v: float, target: float | None = None, op: str = ">=") -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    text = f"{v:.2f}"
    if target is not None and met(float(text), target, op) != met(v, target, op):
        text = f"{v:.3f}"
    return text


def met(v: float, target: float, op: str) -> bool:
    return v >= target if op == ">=" else v <= target


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def ctx(tokens) -> str:
    t = int(tokens)
    return f"{t // 1024}K" if t % 1024 == 0 else f"{t:,}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def script_of(command: str) -> str | None:
    """The file a command runs: `-m benchmarks.<name>` -> benchmarks/<name>.py, or a scripts/*.py."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == "-m" and i + 1 < len(words):
            return words[i + 1].replace(".", "/") + ".py"
        m = re.search(r"scripts/[\w./-]+\.py", word)
        if m:
            return m.group(0)
    return None


# ---- key numbers, per benchmark ---------------------------------------------------------

def r_ttft_cpu(stem: str) -> list[str]:
    d = load(stem)
    modes = list(d["ttft_s_median"])
    contexts = sorted({int(c) for m in modes for c in d["ttft_s_median"][m]})
    out = [f"Median TTFT of {d['reps']} rounds, page {d['page_size']}, {d['suffix_tokens']} new tokens per request:", ""]
    out += table(["prefix tokens"] + [f"`{m}`" for m in modes],
                 [[f"{c:,}"] + [ms(d["ttft_s_median"][m][str(c)]) if str(c) in d["ttft_s_median"][m] else ""
                                for m in modes] for c in contexts])
    shown = [k for k in ("layerwise_over_dram", "layerwise_over_recompute", "page_over_dram",
                         "layerwise_dram_over_dram", "layerwise_g1_over_dram", "layerwise_over_layerwise_load",
                         "layerwise_load_over_recompute") if k in d["ratios"]]
    if d.get("cap_mbps"):
        out = [f"The store sits behind one link of {d['cap_mbps']:g} MB/s that every server shares.", ""] + out
    out += ["Ratios, median of the per-round ratios (the rounds in brackets):", ""]
    out += table(["ratio"] + [ctx(c) for c in contexts],
                 [[f"`{k.replace('_over_', ' / ')}`"]
                  + [f"{x(d['ratios'][k][str(c)]['median'])} ({', '.join(num(v) for v in d['ratios'][k][str(c)]['rounds'])})"
                     if str(c) in d["ratios"][k] else "" for c in contexts] for k in shown])
    for mode, tl in d.get("timelines", {}).items():
        rows = []
        for b in tl["batches"]:
            waits = [(r["wait_end"] - r["wait_start"]) for r in b["layers"] if r.get("wait_end") is not None]
            rows.append([b["index"], b["store_pages"], b["host_pages"], yes(b["ok"]),
                         ms(waits[0]) if waits else "", ms(sum(waits[1:])) if waits else "",
                         ms(b["end"] - b["start"])])
        out += [f"The `{mode}` server's per-layer timeline (`--trace`), one row per load batch:", ""]
        out += table(["batch", "pages from the store", "from the host tier", "ok", "forward's wait for layer 0",
                      "its waits for later layers", "batch, start to end"], rows)
    return out


def r_ttft_phases(stem: str) -> list[str]:
    """The TTFT benchmark's rounds beside the layerwise server's timeline: each request's send
    time (`sent`, the servers' clock) finds the load batch that served it."""
    d = load(stem)
    if not all("sent" in x for per in d["cached_tokens"].get("layerwise", {}).values() for x in per):
        return r_ttft_cpu(stem)  # a run from before requests recorded their send time
    batches = d["timelines"]["layerwise"]["batches"]
    rows = []
    for mode in ("layerwise", "layerwise_dram"):
        for c, dets in sorted(d["cached_tokens"].get(mode, {}).items(), key=lambda kv: int(kv[0])):
            for det, dt in zip(dets, d["samples_s"][mode][c]):
                b = min((b for b in batches if b["start"] >= det["sent"]), key=lambda b: b["start"], default=None)
                if b is None:
                    continue
                waits = [(r["wait_start"], r["wait_end"]) for r in b["layers"] if r.get("wait_start") is not None]
                rows.append([f"`{mode}`", ctx(c), ms(dt), ms(b["start"] - det["sent"]),
                             ms(waits[0][0] - b["start"]) if waits else "",
                             ms(sum(z - a for a, z in waits))])
    return r_ttft_cpu(stem) + [
        "Where each request's time went (the request's send and the layerwise server's timeline share one "
        "clock): from the send to the start of its load batch (lookup and scheduling), from there to the "
        "forward's first layer, and the forward's waits for layers:", ""] + table(
        ["mode", "prefix", "TTFT", "send → load starts", "→ forward at layer 0", "forward's waits"], rows)


def r_gil(stem: str) -> list[str]:
    d = load(stem)
    g = d["geometry"]
    return [f"A launch-bound loop while a layerwise load reads {g['pages']} pages × {g['layers']} layers "
            f"({g['gets_per_load']:,} ranged GETs of {g['layer_bytes'] >> 10} KiB), fetched on threads of the "
            f"same process (`thread`) or in the fetch worker (`process`):", ""] + table(
        ["", "µs per loop call (median)", "× idle", "load GB/s while looping", "load GB/s alone"],
        [[k, num(d["us_per_op_median"][k]), x(d["slowdown_vs_idle"][k]),
          num(d["load_gbps_while_looping_median"].get(k, 0), 3) if k != "idle" else "",
          num(d["load_gbps_alone"].get(k, 0), 3) if k != "idle" else ""] for k in ("idle", "thread", "process")]) + [
        f"thread / process: {x(d['thread_over_process'])}; failed loads: "
        + ", ".join(f"{k} {v}" for k, v in d["failed_loads"].items()) + ".", ""]


GPU_MODES = {"layerwise": "1 layer per GET", "layerwise_g4": "4 layers per GET",
             "layerwise_gall": "whole object per GET", "layerwise_host": "own host tier"}


def r_ttft_gpu(stem: str) -> list[str]:
    d = load(stem)
    modes = list(dict.fromkeys(r["mode"] for r in d["results"]))
    contexts = sorted({r["ctx"] for r in d["results"]})
    t = {(r["mode"], r["ctx"]): r["ttft_s"] for r in d["results"]}
    out = [f"{d['device']}, model shape `{d['model']}` ({d['shape']['layers']} layers), page {d['page']}, "
           f"transport {d['transport']}, {d['io_threads']} I/O threads; median TTFT of {d['reps']}, ms:", ""]
    out += table(["prefix tokens"] + [f"`{m}`" + (f" ({GPU_MODES[m]})" if m in GPU_MODES else "") for m in modes],
                 [[f"{c:,}"] + [num(t[(m, c)] * 1e3, 0) if (m, c) in t else "" for m in modes] for c in contexts])
    ratios = {r["ctx"]: r for r in d["ratios"]}
    lw = [m for m in modes if m.startswith("layerwise")]
    out += ["Ratio to the DRAM hit:", ""]
    out += table(["prefix tokens"] + [f"`{m}`" for m in ["page"] + lw],
                 [[f"{c:,}"] + [x(ratios[c][f"{m}/dram"]) if f"{m}/dram" in ratios[c] else "" for m in ["page"] + lw]
                  for c in contexts])
    ceil = d.get("ceilings", {})
    if ceil:
        out += ["The store's raw read ceiling on that host (a bare parallel GET of the same bytes):", ""]
        out += table(["prefix tokens", "bytes", "store read", "GB/s", "host→device copy GB/s"],
                     [[f"{int(c):,}", f"{v['bytes'] / 2**30:.2f} GiB", secs(v["store_read_s"]), num(v["store_gbps"]),
                       num(v["h2d_gbps"], 1)] for c, v in sorted(ceil.items(), key=lambda kv: int(kv[0]))])
    return out


def r_kernels(stem: str) -> list[str]:
    d = load(stem)
    env = d["environment"]
    where = env.get("gpu") or f"{env.get('cpu', 'CPU')}, {env.get('cpu_threads')} thread(s)"
    ops = list(dict.fromkeys(r["op"] for r in d["results"]))
    rows = []
    for op in ops:
        big = [r for r in d["results"] if r["op"] == op and r["pages"] >= 64]
        top = max(big, key=lambda r: r["pages"])
        rows.append([f"`{op}`", f"{x(min(r['ratio'] for r in big))}–{x(max(r['ratio'] for r in big))}",
                     f"{x(min(r['ratio_median'] for r in big))}–{x(max(r['ratio_median'] for r in big))}",
                     f"{num(top['gbps'], 1)} GB/s at {top['pages']:,} pages"])
    return [f"{where}, backend `{d['backend']}`; {d['timing']}. Ratio to a copy of the same bytes, "
            "64 to 1,024 pages:", ""] + table(["op", "ratio (best rep)", "ratio (median rep)", "throughput"], rows)


def r_sched_real(stem: str) -> list[str]:
    d = load(stem)
    rows = []
    for r in d["results"]:
        p = r["policies"]
        rows.append([r["case"], f"{ms(p['deadline']['mean_s'])} ({ms(p['deadline']['p99_s'])})",
                     f"{ms(p['fair']['mean_s'])} ({ms(p['fair']['p99_s'])})",
                     f"{ms(p['fifo']['mean_s'])} ({ms(p['fifo']['p99_s'])})" if "fifo" in p else "",
                     x(r["fair_over_deadline_mean"], 1.8), num(r["fair_over_deadline_p99"], 4)])
    return [f"Added TTFT per request, {d['repeats']} repeats, machine {d['machine']['cpus']} CPUs:", ""] + table(
        ["workload", "deadline: mean (p99)", "equal sharing: mean (p99)", "FIFO: mean (p99)",
         "equal / deadline, mean", "equal / deadline, p99"], rows)


def r_sched_sim(stem: str) -> list[str]:
    d = load(stem)
    out = [f"{d['units']}. Headline cases:", ""]
    out += table(["series", "cap Gbit/s", "policy", "equal / this, mean", "p99 no worse", "≥ 1.8× and p99 no worse"],
                 [[h["series"], h["cap_gbps"], f"`{h['policy']}`", x(h["ratio_mean"], 1.8), yes(h["p99_no_worse"]),
                   yes(h["target_met"])] for h in d["headline"]])
    for sweep in d["sweeps"].get("bursts", []):
        pol = "deadline"
        pts = [(row["x"], row["policies"][pol]["fair_over_this_mean"]) for row in sweep["rows"] if pol in row["policies"]]
        out += [f"Burst of N requests, {sweep['name']}, equal sharing / deadline (mean): "
                + ", ".join(f"N={n}: {x(v)}" for n, v in pts) + ".", ""]
    return out


STORAGE_CPU = [("objectcache", "get"), ("raw", "get"), ("checked", "get"), ("seaweedfs", "get"),
               ("objectcache", "set"), ("raw", "set"), ("seaweedfs", "set")]


def r_storage(*stems: str) -> list[str]:
    """One table for a group of benchmarks.storage runs (a column per file and page size)."""
    cols = [(s, g) for s in stems for g in load(s)["geometries"]]
    head = ["ratio (median of runs; min–max)"] + [
        f"{g['page_kv_bytes'] >> 10:,} KiB pages, `{load(s)['layout']}`, {load(s)['runs']} runs" for s, g in cols]
    labels = list(dict.fromkeys(r["ratio"] for _, g in cols for r in g["summary"]["ratios"]))
    rows = []
    for label in labels:
        row = [label]
        for _, g in cols:
            r = next((r for r in g["summary"]["ratios"] if r["ratio"] == label), None)
            if r is None:
                row.append("")
                continue
            cell = f"{x(r['median'], r['target'])} ({plain(r['min'])}–{plain(r['max'])})"
            if r["target"] is not None:
                cell = f"**{cell}**, target ≥ {r['target']:g}: {'met' if r['met'] else 'not met'}"
            row.append(cell)
        rows.append(row)
    for b in ("cpu_model", "any_client"):
        row = [f"set: objectcache / seaweedfs, CPU bound (`{b}`)"]
        for _, g in cols:
            cb = next(iter(g["summary"].get("cpu_bounds") or []), None)
            row.append(x(cb[b]) if cb else "")
        rows.append(row)
    for system, op in STORAGE_CPU:
        row = [f"client CPU per page, {system} {op}"]
        for _, g in cols:
            c = g["summary"]["systems"].get(system, {}).get(op)
            row.append(f"{num(c['client_cpu_ms_per_page'])} ms" if c else "")
        rows.append(row)
    sh = load(stems[0])["shape"]
    return [f"{sh['layers']} layers × {sh['kv_heads']} KV heads × {sh['head_dim']} in {sh['dtype']}, "
            f"{cols[0][1]['batch']}-page batches; {load(stems[0])['host']['cpus']} CPUs shared with SeaweedFS. "
            "Ratios of pages/s, each taken inside one run:", ""] + table(head, rows)


def r_get_path(stem: str) -> list[str]:
    d = load(stem)
    rows = [[f"`{lane}`", num(v["cpu_s"], 1), num(v.get("loop_cpu_s", 0), 1), num(v["wall_ms"], 1),
             num(v["pages_s"], 0) if "pages_s" in v else ""] for lane, v in d["summary"].items()]
    return [f"{d['object_bytes'] >> 10:,} KiB objects, `{d.get('layout', '')}`, {d['batch']}-page batches, "
            f"{d['conc']} in flight; {d['unit']}:", ""] + table(
        ["lane", "client CPU µs per page", "on the event loop", "wall ms per batch", "pages/s"], rows)


def r_put_client(stem: str) -> list[str]:
    d = load(stem)
    out = [f"{d['object_bytes'] >> 10:,} KiB objects, `{d['layout']}`, {d['reps']} batches of {d['batch']} per lane:", ""]
    out += table(["lane", "pages/s", "client CPU ms per page", "server CPU ms per page", "/ in-tree seaweedfs"],
                 [[f"`{k}`", num(v["pages_s"], 0) if "pages_s" in v else "", num(v["client_ms_per_page"], 3),
                   num(v["server_ms_per_page"]), x(v["vs_seaweedfs"]) if "vs_seaweedfs" in v else ""]
                  for k, v in d["lanes"].items()])
    if "split_ms_per_page" in d:
        out += ["Where objectcache's PUT CPU goes, ms per page: "
                + ", ".join(f"`{k}` {num(v, 3)}" for k, v in d["split_ms_per_page"].items()) + ".", ""]
    return out


def r_server_put(stem: str) -> list[str]:
    d = load(stem)
    fit = d["fit"]
    top = next((s["profile"] for s in d["sizes"] if "profile" in s), None)
    out = [f"Client: {d['client']}; {d['cpus']} CPUs. SeaweedFS CPU per PUT:", ""]
    out += table(["object", "PUTs/s", "server CPU ms per PUT"],
                 [[f"{s['object_bytes'] >> 10:,} KiB", num(s["puts_s"], 0), num(s["server_ms_per_put"])]
                  for s in d["sizes"]])
    out += [f"Fit: {num(fit['fixed_ms_per_put'])} ms per PUT + {num(fit['ms_per_MiB'], 1)} ms per MiB."
            + (f" MD5 is {top['md5_share']:.0%} of the server's CPU in the profiled size." if top else ""), ""]
    return out


def r_page_work(stem: str) -> list[str]:
    d = load(stem)
    rows = []
    for r in d["runs"]:
        for temp in ("hot_us", "cold_us"):
            rows.append([f"`{r['layout']}`, {r['object_bytes'] >> 10:,} KiB, {temp[:-3]}"]
                        + [num(r[temp][k], 1) for k in ("decode", "decode_whole", "copy", "copy_per_component",
                                                        "copy_flat")])
    return [f"{d['unit']}:", ""] + table(["page", "decode", "decode_whole", "copy", "copy_per_component", "copy_flat"],
                                         rows)


def r_get_memory(stem: str) -> list[str]:
    d = load(stem)
    return ["Resident memory the process gained over the GETs, MiB:", ""] + table(
        ["object", "batch", "landed as it arrives", "received whole"],
        [[f"{s['object_bytes'] >> 10:,} KiB", s["batch"], num(s["as_it_runs"]["grew_mib"], 1),
          num(s["whole"]["grew_mib"], 1)] for s in d["sizes"]])


def r_same_objects(stem: str) -> list[str]:
    d = load(stem)
    return [f"One set of {d['page_kv_bytes'] >> 10} KiB pages read four ways, {d['reps']} rounds, "
            f"`{d['layout']}`, SeaweedFS {'pinned to its own core' if d['pin'] else 'on the shared cores'}:", ""] + table(
        ["lane", "pages/s", "client CPU ms per page", "objectcache / this"],
        [[k, num(v["pages_s"], 0), num(v["client_cpu_ms_per_page"]), x(v["objectcache_over_this"])]
         for k, v in d["summary"].items()])


def r_transports(stem: str) -> list[str]:
    d = load(stem)
    best = {}
    for r in d["summary"]:
        k = (r["size_kib"], r["op"], r["transport"])
        if k not in best or r["MiB_s"] > best[k]["MiB_s"]:
            best[k] = r
    return [f"Best concurrency per cell, batches of {d['batch']}:", ""] + table(
        ["object", "op", "transport", "MiB/s", "requests/s", "client CPU ms per request", "concurrency", "errors"],
        [[f"{s:,} KiB", op, t, num(r["MiB_s"], 1), num(r["req_s"], 0), num(r["client_cpu_ms_per_req"]),
          r["concurrency"], r["errors"]] for (s, op, t), r in sorted(best.items())])


def r_page_size(stem: str) -> list[str]:
    d = load(stem)
    return [f"A {d['tokens']:,}-token prefix, {d['kv_bytes_per_token'] >> 10} KiB of KV per token, written and read "
            "back from SeaweedFS:", ""] + table(
        ["page size", "objects", "object KiB", "write", "read", "read MiB/s"],
        [[r["page_size"], f"{r['objects']:,}", num(r["object_kib"], 0), secs(r["write_s"]), secs(r["read_s"]),
          num(r["read_mib_per_s"], 0)] for r in d["rows"]])


def r_inspect(stem: str) -> list[str]:
    d = load(stem)
    return [f"{d['what']}; {d['timing']}:", ""] + table(
        ["nodes", "first call", "max_nodes 500", "max_nodes 10,000", "max_nodes 500, no store"],
        [[f"{r['nodes']:,}", ms(r["first_call_s"]), ms(r["steady_max_nodes_500_s_median"]),
          ms(r["steady_max_nodes_10000_s_median"]), ms(r["steady_max_nodes_500_no_store_s_median"])]
         for r in d["rows"]])


def r_fingerprint(stem: str) -> list[str]:
    d = load(stem)
    return [f"Median of {d['runs']} runs:", ""] + table(
        ["lane", "weights", "time"],
        [[k, f"{v['tensor_bytes'] / 2**30:.1f} GiB", ms(v["median_s"])] for k, v in d["lanes"].items()])


def r_determinism(stem: str) -> list[str]:
    d = load(stem)
    return [f"{d['launches']} launches of plain SGLang (no objectcache), {d['prompts']} prompts, "
            f"{d['max_new_tokens']} greedy tokens each: {d['launches_differing_from_the_first']} launch(es) "
            "answered differently from the first.", ""]


def r_soak(stem: str) -> list[str]:
    d = load(stem)
    rows = [[p["phase"], p["sent"], p["completed"], p["error_count"], p["wrong_answers"],
             f"{p['storage_tokens']:,} / {p['cacheable_tokens']:,}", secs(p["latency_p50_s"]), secs(p["latency_p99_s"])]
            for p in d["phases"]]
    rss = d["rss_mib"]
    return [f"{d['clients']} clients, {d['model']}; store: {d['store']}. A volume server was killed at "
            f"{d['killed']['at_s']} s, after {d['killed']['after_requests']} requests of phase 2.", ""] + table(
        ["phase", "sent", "completed", "errors", "wrong answers", "tokens from storage / cacheable", "p50", "p99"],
        rows) + [f"Server alive at the end: {yes(d['server_alive_at_end'])}. Server RSS: {rss['first']:,} MiB first, "
                 f"{rss['peak']:,} MiB peak, {rss['last']:,} MiB last.", ""]


def r_compute_or_load(stem: str) -> list[str]:
    d = load(stem)
    rows = [[r["run"], r["config"], r["requests"], r["errors"], num(r["ttft_mean_ms"], 0), num(r["ttft_p50_ms"], 0),
             num(r["ttft_p99_ms"], 0), f"{r['prompt_tokens']:,}", f"{r['device_tokens']:,}", f"{r['host_tokens']:,}",
             f"{r['storage_tokens']:,}"] for r in d["runs"]]
    m = d["medians"]
    ratios = ", ".join(f"`{c}` {m[f'{c}_vs_radix']:.2f}x" for c in ("load", "auto") if f"{c}_vs_radix" in m)
    return [f"Model: {d['model']}; flush between rounds: {yes(d.get('flush_between', False))}. Median of the "
            f"runs' mean TTFT against radix only: {ratios}.", ""] + table(
        ["run", "server", "requests", "errors", "mean TTFT ms", "p50", "p99", "prompt tokens", "device", "host",
         "storage"], rows)


def r_serving(stem: str) -> list[str]:
    d = load(stem)
    rows = [[r["run"], r["workload"], r["config"], r["requests"], r["errors"], num(r["ttft_mean_ms"], 0),
             num(r["ttft_p50_ms"], 0), num(r["ttft_p99_ms"], 0), num(r["requests_s"], 2), f"{r['prompt_tokens']:,}",
             f"{r['device_tokens']:,}", f"{r['host_tokens']:,}", f"{r['storage_tokens']:,}"] for r in d["runs"]]
    m = d["medians"]
    cap = f"store capped at {d['cap_mbps']:g} MB/s" if d.get("cap_mbps") else "store not capped"
    ratios = "; ".join(f"{w.upper()}: " + ", ".join(f"`{c}` {m[f'{w}_{c}_vs_radix']:.2f}x" for c in SERVING
                                                    if f"{w}_{c}_vs_radix" in m)
                       for w in ("w1", "w2") if f"{w}_radix_ttft_mean_ms" in m)
    return [f"Model: {d['model']}; {cap}; {len({r['run'] for r in d['runs']})} run(s). Mean TTFT against radix "
            f"only (median over runs): {ratios}.", ""] + table(
        ["run", "workload", "server", "requests", "errors", "mean TTFT ms", "p50", "p99", "req/s", "prompt tokens",
         "device", "host", "storage"], rows)


SERVING = ("hicache", "seaweedfs", "page", "layerwise")


# ---- the benchmarks ----------------------------------------------------------------------

@dataclass
class Bench:
    anchor: str
    title: str
    about: str  # what it measures and how; no numbers (those come from the JSON)
    latest: list[str]  # JSON stems of the latest run(s), one per variant
    render: Callable[..., list[str]]  # key numbers of the stems of one group
    groups: list[list[str]] = field(default_factory=list)  # rendered together; default: each alone
    older: list[str] = field(default_factory=list)  # earlier runs, kept in benchmarks/results/
    extra: list[str] = field(default_factory=list)  # other files of the latest run (traces, reports)


BENCHMARKS = [
    Bench("ttft-cpu", "TTFT on CPU: layerwise and page mode against a DRAM hit and recompute",
          "SGLang's CPU engine serves a random-weight 8-layer Llama made locally, with SeaweedFS on the same "
          "cores. Every server is up for the whole run; each round takes one fresh prefix and measures every "
          "mode on it one after another (each with new tokens of its own, after the bucket has gone quiet), "
          "and ratios are taken per round. Modes: `recompute` (no cache), `dram` (HiCache host-tier hit), "
          "`page` (page mode, L3 prefetch), `layerwise` (from the store, defaults), `layerwise_g1` (one layer "
          "per GET), `layerwise_dram` (layerwise, objectcache's own host tier). On CPU the attention is "
          "`torch_native`, which recomputes attention over the whole sequence, so a DRAM hit still costs a good "
          "part of recompute and the loads hide behind that compute.",
          ["ttft_cpu", "ttft_cpu_16k", "ttft_cpu_8k_trace"],
          r_ttft_cpu),
    Bench("gil", "The fetch worker process: the serving process keeps its GIL",
          "A launch-bound forward (a loop of tiny torch calls, each of which gives the GIL up and takes it "
          "back) runs while a layerwise load reads from SeaweedFS over and over, with the fetch in threads of "
          "the same process or in the fetch worker; the conditions take turns over several rounds. The worker, "
          "SeaweedFS and the loop share the machine's cores, which this bench does not separate.",
          ["gil"], r_gil),
    Bench("ttft-gpu", "TTFT on a GPU, component level",
          "SGLang's CUDA engine could not reach the lent machine (no registry), so the forward is a "
          "random-weight Llama-shaped model in plain torch (bf16) while every objectcache part is the real one "
          "(loader, counter, scheduler, host tier, obstore, Triton scatter) against SeaweedFS on the same host. "
          "The committed runs predate the layerwise fetch worker process and the automatic `layers_per_get`: "
          "their `layerwise*` modes fetch on threads of the serving process, with the layers per GET each mode "
          "names.",
          ["ttft_gpu", "ttft_gpu_8b"], r_ttft_gpu,
          older=["ttft_gpu_io64", "ttft_gpu_before_pool_copies", "ttft_gpu_after_pool_copies"],
          extra=["ttft_gpu_trace.json", "ttft_gpu_8b_trace.json"]),
    Bench("kernels", "Kernels: scatter and gather against a copy of the same bytes",
          "Layer-major object bytes moved into and out of a paged KV pool (Llama-8B rank, page 64), timed "
          "against a plain copy of the same bytes: on the H100 with CUDA-graph replays timed by events, on CPU "
          "the torch fallback. `*_random` places the pages at random slots; `*_all_layers` moves several layers "
          "in one launch. The GPU tests (`tests/gpu/test_gpu.py`) check every dtype/page-size/MHA/MLA case byte for "
          "byte on the device; CI has no GPU, and the last GPU test report is linked below.",
          ["kernels_cuda", "kernels_cpu"], r_kernels,
          extra=["gpu_tests.txt"]),
    Bench("sched-real", "Transfer scheduler, real pipeline: added TTFT against equal sharing",
          "Concurrent requests load their prefixes layer by layer from SeaweedFS (ranged GETs, checksums, "
          "scatters into a KV pool) through the scheduler's own token bucket as the capped link; each forward "
          "waits for a layer, then computes it. Same objects, same cap, the policies interleaved. The gain is "
          "ordering, so it grows with the number of requests contending for one capped link; with one request "
          "and no contention there is nothing to schedule. For simultaneous equal requests FIFO does as well as "
          "deadline order; deadline order matters when arrivals and prefix lengths differ. The last column is "
          "equal sharing's p99 over deadline order's: 1 or more means deadline order's p99 is no worse.",
          ["sched_real"], r_sched_real),
    Bench("sched-sim", "Transfer scheduler, simulator",
          "The same scheduler in virtual time, with Llama-3.1-8B shapes and 8K–64K prefixes at 10–100 Gbit/s. "
          "`deadline+srpt` (shortest remaining fetch first, page mode) lifts the mean at high load but makes "
          "p99 worse, so objectcache plans in arrival order.",
          ["sched_sim"], r_sched_sim),
    Bench("storage", "Storage data path (HiCache L3) against SGLang's in-tree backends",
          "`python -m benchmarks.storage` starts one SeaweedFS and moves the same pages, with real SGLang host "
          "pools, through: `raw`, the ceiling (a tuned parallel S3 client, no SGLang, no format; obstore and "
          "objectcache's own GET client, best of both); `checked`, raw plus one xxh3 and one copy per page, the "
          "floor of any checksummed cache; objectcache's `batch_get_v1` / `batch_set_v1` / `batch_exists`; "
          "SGLang's in-tree `seaweedfs` backend (boto3, one object per page, 16 threads); and its `file` "
          "backend as a local reference. The systems take turns batch by batch in a random order each round. "
          "Client and SeaweedFS share the machine's cores, so any CPU the client spends is taken from the "
          "server; `any_client` is the ratio a client spending no CPU at all would reach against the in-tree "
          "backend in that run (on this machine PUTs are bound by SeaweedFS's own CPU, "
          "[below](#server-put)). The history of these runs, and what was tried, is in "
          "[storage.md](storage.md).",
          ["storage_small_page_first", "storage_small_layer_first", "storage_put_8mib_page_first",
           "storage_put_8mib_layer_first"],
          r_storage, groups=[["storage_small_page_first", "storage_small_layer_first"],
                             ["storage_put_8mib_page_first", "storage_put_8mib_layer_first"]],
          older=["storage_put_page_first", "storage_put_layer_first", "storage_join_page_first",
                 "storage_join_layer_first", "storage_join3_page_first", "storage_landing_page_first",
                 "storage_landing_layer_first", "storage_pinned", "storage_layer_first", "storage_page_first",
                 "storage_http", "storage_run3", "storage_repeat", "storage", "storage_cf959a8"]),
    Bench("get-path", "Where a GET's client CPU goes (page mode)",
          "One process, objectcache's GET path lane by lane on the same objects (`objectcache_*` lanes are "
          "variants of the landing and copy code), CPU per page split by stage.",
          ["get_path_join_256k_page_first", "get_path_join_256k_layer_first", "get_path_join_8mib_page_first"],
          r_get_path,
          older=["get_path_landing_256k", "get_path_landing_8mib_page_first", "get_path_landing_8mib_layer_first",
                 "get_path_scatter_256k", "get_path_scatter_2mib", "get_path_scatter_8mib",
                 "get_path_scatter_8mib_page_first", "get_path", "get_path_2mib", "get_path_8mib",
                 "probe_http_get_256k", "probe_http_get_8mib"]),
    Bench("page-work", "Format work per page, without the network",
          "Decode (checks) and copy into the host pool, per page, hot and cold caches.",
          ["page_work"], r_page_work),
    Bench("get-memory", "Memory held by large GETs",
          "Resident memory after batches of GETs, pages landed while they arrive against pages received whole.",
          ["get_memory"], r_get_memory),
    Bench("same-objects", "The client or the shared cores?",
          "One set of objects read by objectcache and by the raw client in random order each round, so that no "
          "lane gets luckier objects; SeaweedFS on the shared cores, then pinned to a core of its own.",
          ["same_objects_shared", "same_objects_pinned"], r_same_objects),
    Bench("put-client", "PUT client: objectcache's HTTP/1.1 client against obstore's",
          "`batch_set_v1` side by side with its own PUT client and with obstore's (`http_put: false`), the raw "
          "clients and the in-tree backend; `--parts` splits objectcache's PUT CPU.",
          ["put_client", "put_path"], r_put_client),
    Bench("server-put", "SeaweedFS's CPU per PUT",
          "The server's CPU per PUT by object size, with a profile of where it goes.",
          ["server_put"], r_server_put),
    Bench("transports", "Transports: obstore against boto3",
          "Raw GETs and PUTs through each transport at several concurrencies.",
          ["transports"], r_transports),
    Bench("page-size", "Page size",
          "One object per page: small pages make every few tokens an S3 request. objectcache does not "
          "coalesce pages; it warns at startup when a page object is small (see [page-size.md](page-size.md)).",
          ["page_size"], r_page_size),
    Bench("inspect", "Cost of a radix-tree snapshot (`objectcache-inspect tree`)",
          "`treeview.snapshot` on SGLang's Rust tree core, on the scheduler thread.",
          ["inspect_snapshot"], r_inspect),
    Bench("fingerprint", "Cost of the weights fingerprint at startup",
          "The namespace covers a fingerprint of the weights (docs/identity.md); sampled reads of each tensor "
          "by default, every byte with `full_fingerprint`.",
          ["fingerprint"], r_fingerprint),
    Bench("determinism", "Are two plain SGLang CPU launches deterministic?",
          "The baseline the end-to-end parity tests forgive: greedy answers of plain SGLang launches compared "
          "token by token, on an idle and on a busy machine.",
          ["launch_determinism_idle", "launch_determinism_busy"],
          r_determinism),
    Bench("compute-or-load", "Compute or load: multi-turn chat against radix only",
          "CPU SGLang servers on the tiny model (where recompute is nearly free) run the harness's multi-turn "
          "workload one after another: radix cache only, objectcache page mode loading every hit "
          "(`compute_or_load: load`), and with the per-request choice (`auto`). With `--flush-between` each "
          "round after the first starts from an empty device and host cache, as after a restart.",
          ["compute_or_load_flush"], r_compute_or_load),
    Bench("ttft-capped", "TTFT with a bandwidth-capped store: compute, load, or both",
          "The TTFT benchmark with every server's store behind the harness proxy's shared link of `--cap-mbps`. "
          "`recompute` computes everything; `layerwise_load` loads every hit (`compute_or_load: load`); "
          "`layerwise` is the default `auto`, which may load a head of the hit and compute the rest. "
          "Runs, newest first: `ttft_cap10` (as the next, and the cost model charges attention); `ttft_cap10_flat` "
          "(the loader's flow control, the forward waiting while a load comes in, no cap on layerwise loads, a flat "
          "prefill rate); `ttft_cap10_half_timeout` (flow control, layerwise loads capped to half "
          "the layer timeout); `ttft_cap10_policy_cap` (every read in flight, loads capped to half the request "
          "deadline); `ttft_cap10_before` (no cap).",
          ["ttft_cap10", "ttft_cap10_half_timeout"], r_ttft_cpu,
          older=["ttft_cap10_flat", "ttft_cap10_policy_cap", "ttft_cap10_before"]),
    Bench("ttft-short", "Short prefixes: what a layerwise hit from the store adds to a DRAM hit",
          "The TTFT benchmark at 1K–4K with `--trace`: each layerwise server's per-layer timeline says how long "
          "the forward waited for each layer. The older run read layer 0 together with the rest of each "
          "object; the latest reads layer 0 first, then the rest.",
          ["ttft_short_trace", "ttft_lead_first"], r_ttft_phases, older=["ttft_lead_together"]),
    Bench("serving", "SGLang's own clients: five servers side by side",
          "CPU SGLang servers one after another on one SeaweedFS: radix cache only, HiCache L2 only, HiCache + "
          "the in-tree `seaweedfs` L3, objectcache page mode and layerwise mode. W1 is SGLang's "
          "`sglang.benchmark.serving --dataset-name generated-shared-prefix`, run, `/flush_cache`, run again "
          "(measured); W2 is the harness's multi-turn chat. SGLang counts layerwise hits as `host` tokens. "
          "`--cap-mbps` puts the store behind a shared link of that rate.",
          ["serving_tiny", "serving_bench", "serving_tiny_page_ratio4"], r_serving),
    Bench("soak", "Soak: 64 clients against a SeaweedFS cluster, a volume server killed",
          "A CPU SGLang server in page mode against a replicated SeaweedFS cluster fixture; greedy answers are "
          "compared with a no-cache reference.",
          ["soak_cluster"], r_soak),
]


# ---- targets -----------------------------------------------------------------------------

@dataclass
class Target:
    metric: str
    target: str
    evidence: list[str]  # JSON stems
    anchor: str  # section of docs/results.md
    measure: Callable[[], tuple[str, str]]  # (latest, met)


def _ttft_cpu_runs() -> dict[int, tuple[str, dict]]:
    """Context -> (stem, ratios at that context) over the latest CPU TTFT runs with every mode."""
    out = {}
    for stem in ("ttft_cpu", "ttft_cpu_16k"):
        d = load(stem)
        for c in d["ratios"]["layerwise_over_dram"]:
            out[int(c)] = (stem, {k: v[c] for k, v in d["ratios"].items() if c in v})
    return out


def t_ttft_longest():
    runs = _ttft_cpu_runs()
    longest = max(runs)
    v = runs[longest][1]["layerwise_over_dram"]["median"]
    others = ", ".join(f"{ctx(c)}: {x(runs[c][1]['layerwise_over_dram']['median'], 1.10, '<=')}"
                       for c in sorted(runs, reverse=True)[1:3])
    ok = met(v, 1.10, "<=")
    return (f"{x(v, 1.10, '<=')} at {ctx(longest)} ({others})",
            yes(ok) + ("" if ok else f" at {ctx(longest)}, by {v - 1.10:.3f}"))


def t_ttft_recompute():
    runs = _ttft_cpu_runs()
    vals = {c: r["layerwise_over_recompute"]["median"] for c, (_, r) in runs.items() if c >= 4096}
    return (", ".join(f"{x(v, 0.5, '<=')} at {ctx(c)}" for c, v in sorted(vals.items())),
            yes(all(met(v, 0.5, "<=") for v in vals.values())))


def t_ttft_gpu():
    d = load("ttft_gpu")
    last = max(d["ratios"], key=lambda r: r["ctx"])
    store_modes = {k.split("/")[0]: v for k, v in last.items()
                   if k.endswith("/dram") and k.startswith("layerwise") and not k.startswith("layerwise_host")}
    best = min(store_modes, key=store_modes.get)
    return (f"{x(store_modes['layerwise'])} ({GPU_MODES['layerwise']}); best {x(store_modes[best])} "
            f"({GPU_MODES.get(best, best)}), at {ctx(last['ctx'])}",
            yes(store_modes[best] <= 1.05))


def t_kernels():
    d = load("kernels_cuda")
    big = [r for r in d["results"] if r["pages"] >= 64]
    lo, lo_med = min(r["ratio"] for r in big), min(r["ratio_median"] for r in big)
    return (f"{x(lo)}–{x(max(r['ratio'] for r in big))} over every op (median rep: from {x(lo_med)})",
            yes(lo_med >= 0.8))


def t_sched_real():
    d = load("sched_real")
    ok = [r for r in d["results"] if r["fair_over_deadline_mean"] >= 1.8 and r["fair_over_deadline_p99"] >= 1.0]
    means = [r["fair_over_deadline_mean"] for r in d["results"]]
    best = max(d["results"], key=lambda r: r["fair_over_deadline_mean"])
    return (f"{x(min(means))}–{x(max(means))} over {len(means)} workloads; best {x(best['fair_over_deadline_mean'])} "
            f"({best['case']}, p99 ratio {num(best['fair_over_deadline_p99'], 4)})",
            f"in {len(ok)} of {len(means)}" + (f" ({'; '.join(r['case'] for r in ok)})" if ok else ""))


def t_sched_sim():
    h = load("sched_sim")["headline"]
    ok = [r for r in h if r["target_met"]]
    return (f"{x(min(r['ratio_mean'] for r in h))}–{x(max(r['ratio_mean'] for r in h))} over {len(h)} headline cases",
            f"in {len(ok)} of {len(h)}")


def _storage_ratio(stems, label):
    out = []
    for s in stems:
        for g in load(s)["geometries"]:
            r = next(r for r in g["summary"]["ratios"] if r["ratio"] == label)
            out.append((load(s)["layout"], g["page_kv_bytes"], r))
    return out


def t_storage(stems, label, target):
    def measure():
        got = _storage_ratio(stems, label)
        latest = ", ".join(f"{x(r['median'], target)} `{layout}`" for layout, _, r in got)
        if all(r["met"] for *_, r in got):
            return latest, "yes"
        return latest, "; ".join(f"`{layout}` {yes(r['met'])}" for layout, _, r in got)
    return measure


def t_exists():
    small = _storage_ratio(["storage_small_page_first", "storage_small_layer_first"],
                           "exists cold: objectcache / seaweedfs")
    large = _storage_ratio(["storage_put_8mib_page_first", "storage_put_8mib_layer_first"],
                           "exists cold: objectcache / seaweedfs")
    text = "; ".join(f"{kind}: " + ", ".join(f"{x(r['median'])} `{layout}`" for layout, _, r in got)
                     for kind, got in (("256 KiB", small), ("8 MiB", large)))
    return text, yes(all(r["met"] for *_, r in small + large))


def t_soak():
    d = load("soak_cluster")
    sent = sum(p["sent"] for p in d["phases"])
    done = sum(p["completed"] for p in d["phases"])
    errors = sum(p["error_count"] for p in d["phases"])
    wrong = sum(p["wrong_answers"] for p in d["phases"])
    rss = d["rss_mib"]
    return (f"{done}/{sent} completed, {errors} errors, {wrong} wrong; RSS {rss['first']:,} → {rss['last']:,} MiB",
            yes(done == sent and not errors and not wrong and d["server_alive_at_end"]))


def _serving(stem: str) -> dict:
    return load(stem)["medians"]


def t_never_slower():
    def of(mode):
        return [(stem.removeprefix("serving_"), w, _serving(stem).get(f"{w}_{mode}_vs_radix"))
                for stem in SERVING_STEMS for w in ("w1", "w2")]

    def text(got):
        return ", ".join(f"{w.upper()} {model} " + (x(v, 1.05, "<=") if v is not None else "not run")
                         for model, w, v in got)

    got = of(DEFAULT_MODE)
    return (f"`{DEFAULT_MODE}`: {text(got)} (page mode: {text(of('page'))})",
            yes(all(v is not None and v <= 1.05 for *_, v in got)))


def t_faster_with_reuse():
    m = _serving("serving_bench")
    radix = m[f"w1_{DEFAULT_MODE}_vs_radix"]
    intree = m[f"w1_{DEFAULT_MODE}_ttft_mean_ms"] / m["w1_seaweedfs_ttft_mean_ms"]
    d = load("serving_bench")
    shape = f"{d['gsp'][0]} groups × {d['gsp'][1]}, {len({r['run'] for r in d['runs']})} run(s)"
    return (f"`{DEFAULT_MODE}` mode: {x(radix, 0.65, '<=')} radix, {x(intree, 0.7, '<=')} in-tree ({shape})",
            yes(radix <= 0.65 and intree <= 0.7))


def t_capped():
    """Per context: median over rounds of auto / min(recompute, full load) on the same prompt,
    from the first run of CAPPED that has the context."""
    per, seen = [], set()
    for stem in CAPPED:
        smp = load(stem)["samples_s"]
        for c in sorted(smp["layerwise"], key=int):
            if c in seen:
                continue
            seen.add(c)
            rs = [a / min(r, f) for a, r, f in zip(smp["layerwise"][c], smp["recompute"][c], smp["layerwise_load"][c])]
            per.append((int(c), statistics.median(rs), stem))
    per.sort()
    ok = all(v <= 1.05 for _, v, _ in per)
    text = "10 MB/s: " + ", ".join(f"{ctx(str(c))} {x(v, 1.05, '<=')}" + (f" ({stem})" if stem != CAPPED[0] else "")
                                  for c, v, stem in per)
    return text + " (not run yet: 50 and 200 MB/s)", "yes, where run" if ok else "**no**"


def t_short():
    """Per run and context: the median over rounds of layerwise minus DRAM hit (same prompt, same round)."""
    runs, ok = [], True
    for stem in SHORT:
        smp = load(stem)["samples_s"]
        per = {c: [(a - b) * 1000 for a, b in zip(smp["layerwise"][c], smp["dram"][c])] for c in smp["dram"]}
        ok = ok and all(statistics.median(v) <= 50 for v in per.values())
        runs.append(", ".join(f"{ctx(c)} +{statistics.median(v):.0f} ms ({'/'.join(f'{r:+.0f}' for r in v)})"
                              for c, v in sorted(per.items(), key=lambda kv: int(kv[0]))))
    return "; ".join(f"run {i + 1}: {r}" for i, r in enumerate(runs)) + "; rounds swing more than the target", yes(ok)


SHORT = ["ttft_lead_first", "ttft_short_trace"]
# 1K and 2K come from the run before the layerwise cap went: no load there reached it.
CAPPED = ["ttft_cap10", "ttft_cap10_half_timeout"]
# The mode the README and scripts/run.sh start in: the one the serving targets are read for.
DEFAULT_MODE = "layerwise"
SERVING_STEMS = ["serving_tiny", "serving_bench"]
SMALL = ["storage_small_page_first", "storage_small_layer_first"]
LARGE = ["storage_put_8mib_page_first", "storage_put_8mib_layer_first"]
TARGETS = [
    Target("Layerwise TTFT from the store / DRAM hit, CPU, longest context", "≤ 1.10×",
           ["ttft_cpu_16k", "ttft_cpu"], "ttft-cpu", t_ttft_longest),
    Target("Layerwise TTFT from the store / recompute, CPU, 4K and up", "≤ 0.5×",
           ["ttft_cpu", "ttft_cpu_16k"], "ttft-cpu", t_ttft_recompute),
    Target("Layerwise TTFT from the store / DRAM hit, H100, 64K (a run from before the fetch worker process)",
           "≤ 1.05×", ["ttft_gpu"], "ttft-gpu", t_ttft_gpu),
    Target("Triton scatter/gather / device copy, H100, 64–1,024 pages", "≥ 0.8×", ["kernels_cuda"], "kernels",
           t_kernels),
    Target("Transfer scheduler: equal sharing / deadline, mean added TTFT, real pipeline",
           "≥ 1.8×, p99 no worse", ["sched_real"], "sched-real", t_sched_real),
    Target("Transfer scheduler, the same in the simulator", "≥ 1.8×, p99 no worse", ["sched_sim"], "sched-sim",
           t_sched_sim),
    Target("256 KiB pages, `batch_get_v1` / raw ceiling", "≥ 0.9×", SMALL, "storage",
           t_storage(SMALL, "get: objectcache / raw", 0.9)),
    Target("256 KiB pages, `batch_get_v1` / in-tree `seaweedfs`", "≥ 3×", SMALL, "storage",
           t_storage(SMALL, "get: objectcache / seaweedfs", 3.0)),
    Target("256 KiB pages, `batch_set_v1` / in-tree `seaweedfs`", "≥ 1.5×", SMALL, "storage",
           t_storage(SMALL, "set: objectcache / seaweedfs", 1.5)),
    Target("8 MiB pages, `batch_get_v1` / raw ceiling", "≥ 0.9×", LARGE, "storage",
           t_storage(LARGE, "get: objectcache / raw", 0.9)),
    Target("8 MiB pages, `batch_set_v1` / raw ceiling", "≥ 0.9×", LARGE, "storage",
           t_storage(LARGE, "set: objectcache / raw", 0.9)),
    Target("`batch_exists` of 128 pages, cold / in-tree's 128 HEADs", "≥ 5×", SMALL + LARGE, "storage", t_exists),
    Target("SGLang's clients, W1 and W2, tiny and 8-layer model: objectcache in `scripts/run.sh`'s mode / radix "
           "only, mean TTFT",
           "≤ 1.05×", SERVING_STEMS, "serving", t_never_slower),
    Target("W1 (restart reuse), 8-layer model: `scripts/run.sh`'s mode / radix only and / in-tree `seaweedfs`, "
           "mean TTFT",
           "≤ 0.65×, ≤ 0.7×", ["serving_bench"], "serving", t_faster_with_reuse),
    Target("Short prefixes, unthrottled store: layerwise from the store − DRAM hit, 1K–4K", "≤ +50 ms",
           SHORT, "ttft-short", t_short),
    Target("Capped store, 1K–8K: compute-or-load (`auto`) TTFT / the faster of recompute and a full load",
           "≤ 1.05×", CAPPED, "ttft-capped", t_capped),
    Target("Soak: 64 clients, a volume server killed mid-run", "every request completes, none wrong",
           ["soak_cluster"], "soak", t_soak),
]


# ---- the pages ---------------------------------------------------------------------------

def link(name: str, base: str) -> str:
    return f"[{name}]({base}benchmarks/results/{name})"


def targets_table(base: str, results_doc: str) -> list[str]:
    rows = []
    for t in TARGETS:
        latest, ok = t.measure()
        rows.append([t.metric, t.target, latest, ok,
                     ", ".join(link(f"{s}.json", base) for s in t.evidence) + f", [details]({results_doc}#{t.anchor})"])
    return table(["metric", "target", "latest", "met", "evidence"], rows)


def classify() -> None:
    placed = [s for b in BENCHMARKS for s in b.latest + b.older]
    dup = sorted({s for s in placed if placed.count(s) > 1})
    on_disk = sorted(p.stem for p in RESULTS.glob("*.json"))
    companions = {e[:-5] for b in BENCHMARKS for e in b.extra if e.endswith(".json")}
    loose = sorted(set(on_disk) - set(placed) - companions)
    gone = sorted((set(placed) | companions) - set(on_disk))
    if dup or loose or gone:
        raise SystemExit("results_doc: BENCHMARKS in scripts/results_doc.py is out of step with benchmarks/results/: "
                         + "; ".join(filter(None, [
                             dup and f"listed twice: {dup}",
                             loose and f"not placed (add each to a Bench's latest or older): {loose}",
                             gone and f"listed but missing: {gone}"])))


def command_line(stem: str) -> str:
    cmd = load(stem).get("command")
    if not cmd:
        return "no command recorded"
    notes = []
    script = script_of(cmd)
    if script is not None and not (ROOT / script).exists():
        notes.append(f"{script} is no longer in the tree")
    words = shlex.split(cmd)
    out = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--out"), None)
    if out and out.startswith("benchmarks/results/") and Path(out).stem != stem:
        notes.append(f"written as {Path(out).name}, renamed since")
    return f"`{cmd.strip()}`" + (f" ({'; '.join(notes)})" if notes else "")


def results_page() -> str:
    base = "../"
    out = [
        "# Results",
        "",
        "<!-- Generated by scripts/results_doc.py from benchmarks/results/*.json. Do not edit: change the",
        "     script or the results, then run `.venv/bin/python scripts/results_doc.py`. tests/test_docs.py",
        "     checks it. -->",
        "",
        "Every number on this page is read from a JSON file in `benchmarks/results/`, and each file records",
        "the command that produced it. Per benchmark this page shows the latest run (one file per variant)",
        "with its command, its key numbers and its plot; earlier runs kept in the folder are listed at the",
        "end, and `git log` on a file gives the code it ran against. Unless a run says otherwise it ran on",
        "the development machine (2 cores, no GPU) with SeaweedFS on loopback, so the client and the store",
        "share two cores; GPU runs name their device.",
        "",
        "## Targets at a glance",
        "",
    ]
    out += targets_table(base, "")
    out += ["## Benchmarks", ""]
    out += [f"- [{b.title}](#{b.anchor})" for b in BENCHMARKS] + ["- [Earlier runs](#earlier-runs)", ""]
    for b in BENCHMARKS:
        out += [f'<a id="{b.anchor}"></a>', "", f"### {b.title}", "", b.about, ""]
        grouped = [s for g in b.groups for s in g]
        for group in b.groups + [[s] for s in b.latest if s not in grouped]:
            for stem in group:
                plot = RESULTS / f"{stem}.png"
                files = [link(f"{stem}.json", base)] + ([link(f"{stem}.png", base)] if plot.exists() else [])
                out += [f"**{stem}** ({', '.join(files)}): {command_line(stem)}", ""]
            out += b.render(*group)
        if b.extra:
            out += ["Also from the latest run: " + ", ".join(link(e, base) for e in b.extra) + ".", ""]
    out += ['<a id="earlier-runs"></a>', "", "## Earlier runs", "",
            "Kept in `benchmarks/results/` for the record (docs/storage.md and docs/layerwise.md discuss some of",
            "them); superseded by the latest runs above.", ""]
    rows = []
    for b in BENCHMARKS:
        for stem in b.older:
            rows.append([link(f"{stem}.json", base), f"[{b.title.split(':')[0]}](#{b.anchor})", command_line(stem)])
    out += table(["file", "benchmark", "command"], rows)
    return "\n".join(out).rstrip("\n") + "\n"


def readme_with_table(readme: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"results_doc: README.md has no {BEGIN} ... {END} block for the targets table")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n".join(targets_table("", "docs/results.md")).rstrip("\n")
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/results.md or the README table is out of date")
    args = p.parse_args()
    classify()
    page, readme = results_page(), readme_with_table(README.read_text())
    if args.check:
        stale = [str(f.relative_to(ROOT)) for f, text in ((OUT, page), (README, readme)) if f.read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)}: run .venv/bin/python scripts/results_doc.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(page)
    README.write_text(readme)
    print(f"wrote {OUT.relative_to(ROOT)} and the targets table in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
