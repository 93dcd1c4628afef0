"""TTFT against context length: recompute, DRAM (L2) hit, objectcache page-mode and layerwise hits.

One run, side by side, on one machine: a real SeaweedFS and real SGLang servers on a
random-weight Llama-style model made locally (bigger than the test model, so each layer's
compute is real). Every prompt is a fresh prefix of `ctx` tokens plus a `suffix` of new
tokens; TTFT is the latency of a 1-token generation. Every server is up for the whole run
and each round measures every mode on one prompt, one after another, after the bucket has
gone quiet (write-through and offload PUTs are asynchronous). Ratios are per round, then
the median over `--reps` rounds (distinct prompts):

    recompute        no radix/HiCache: every token computed
    dram             HiCache host (L2) hit: the prefix was evicted from the device pool to
                     host memory, then loaded back layer by layer by SGLang (the local-DRAM
                     baseline)
    page             objectcache page mode: prefix only in the bucket; SGLang prefetches
                     whole pages to host memory (wait_complete), then computes
    layerwise        objectcache layerwise mode, its defaults: prefix only in the bucket;
                     layers stream into the KV pool while the forward runs. `layers_per_get`
                     auto reads a whole object per GET for this model (8 layers x 64 KiB)
    layerwise_dram   layerwise mode, prefix in objectcache's own host tier
    layerwise_g1     layerwise mode, one layer per ranged GET (64 KiB, 8x the requests)
    layerwise_g4     layerwise mode, 4 layers per ranged GET (256 KiB)
    layerwise_thread layerwise mode with `fetch: thread`: GETs, copies and hashes on threads
                     of SGLang's scheduler process, not in the fetch worker process
    layerwise_load   layerwise mode loading every hit (`compute_or_load: load`); `layerwise`
                     is the default, `auto`: it may load a head of the hit and compute the rest

`--cap-mbps` puts every server's store behind the harness proxy with one shared link of that
many MB/s (the slow-store regime of issue 29):

    .venv/bin/python -m benchmarks.ttft --contexts 1024 2048 4096 8192 --reps 2 --cap-mbps 10 \
        --modes recompute layerwise layerwise_load --out benchmarks/results/ttft_cap10.json

    .venv/bin/python -m benchmarks.ttft --contexts 1024 2048 4096 8192 --reps 3 \
        --modes recompute dram page layerwise layerwise_dram layerwise_g1
    .venv/bin/python -m benchmarks.ttft --contexts 16384 --reps 3 --modes ... \
        --out benchmarks/results/ttft_cpu_16k.json

Writes benchmarks/results/ttft_cpu.json (or `--out`) and its plot beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from benchmarks import plot
from benchmarks.rig import s3_server
from benchmarks.schema import RESULTS, write_result
from objectcache_dev.harness.proxy import FaultProxy, Faults
from objectcache_dev.harness.server import SGLangServer, cpu_args, cpu_env, nocache_args, objectcache_args
from objectcache_dev.harness.settle import until_quiet
from objectcache_dev.tinymodel import TinyModelSpec, make_tiny_model

BENCH_MODEL = TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                            intermediate_size=1536, vocab_size=2048, max_positions=32768)
PAGE = 64
BUCKET = "bench-ttft"
MODES = ("recompute", "dram", "page", "layerwise", "layerwise_dram", "layerwise_g1", "layerwise_g4", "layerwise_thread",
         "layerwise_load")
LAYERWISE = {"layerwise": {}, "layerwise_g1": {"layers_per_get": 1}, "layerwise_g4": {"layers_per_get": 4},
             "layerwise_thread": {"fetch": "thread"}, "layerwise_load": {}}
TOP_LEVEL = {"layerwise_load": {"compute_or_load": "load"}}  # config fields outside `layerwise`
# (numerator, denominator) pairs reported when both modes ran.
RATIOS = [(m, "dram") for m in MODES if m not in ("dram", "recompute")] + \
    [(m, "recompute") for m in MODES if m not in ("dram", "recompute")] + \
    [("dram", "recompute"), ("layerwise", "page"), ("layerwise", "layerwise_g1"), ("layerwise", "layerwise_g4"),
     ("layerwise", "layerwise_thread"), ("layerwise", "layerwise_load")]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--suffix", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                    help="dram and page share one server, as do layerwise and layerwise_dram")
    ap.add_argument("--out", default=str(RESULTS / "ttft_cpu.json"))
    ap.add_argument("--workdir", default="")
    ap.add_argument("--cap-mbps", type=float, default=0.0, help="store behind a shared link of this many MB/s")
    ap.add_argument("--trace", action="store_true",
                    help="record the layerwise servers' per-layer timelines (their last 256 loads) in the output")
    return ap


def ttft(url: str, ids: list[int]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = requests.post(url + "/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 1, "temperature": 0}}, timeout=600)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    meta = r.json()["meta_info"]
    # `sent`: the perf_counter (CLOCK_MONOTONIC, shared with the servers' timelines) at the send
    return dt, {"cached": meta.get("cached_tokens", 0), **(meta.get("cached_tokens_details") or {}), "sent": t0}


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, BENCH_MODEL.vocab_size) for _ in range(n)]


def flush(url: str) -> None:
    for _ in range(60):
        if requests.post(url + "/flush_cache", timeout=60).status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError("flush_cache kept failing")


def evict_device(url: str, tokens: int, seed: int, chunk: int) -> None:
    """Push the prefix out of the device pool (LRU) with fresh prompts that fill it."""
    for k in range(0, tokens, chunk):
        ttft(url, prompt(seed * 1000 + k, min(chunk, tokens - k)))


def settle(s3, bucket: str, want: int, quiet_s: float = 1.0, timeout_s: float = 120) -> None:
    """Write-through and offload PUTs are asynchronous: wait until at least `want` page
    objects are in the bucket and none has arrived for `quiet_s`, so that no server's
    backlog lands on another mode's measurement."""
    c = s3.client()

    def pages() -> int:
        return sum(1 for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                   for o in page.get("Contents", []) if not o["Key"].endswith(".json"))

    until_quiet(pages, ready=lambda n: n >= want, quiet_s=quiet_s, timeout_s=timeout_s, poll_s=0.2,
                describe=lambda n: f"bucket {bucket}: {n} of {want} objects, or still changing")


class Run:
    """Every server up at once (--sleep-on-idle: an idle one costs nothing); each round
    measures every mode on the same prompt within a minute or two, so the ratios are taken
    side by side, not phase against phase on a machine whose load moves."""

    def __init__(self, a, work: Path, s3, stack: ExitStack, endpoint: str):
        self.a, self.work, self.s3 = a, work, s3
        self.modes = set(a.modes) | {"dram"}  # every ratio is against the DRAM hit
        model = make_tiny_model(work / "model", BENCH_MODEL)
        self.longest = max(a.contexts) + a.suffix
        self.pool = self.longest + 2 * PAGE + 512  # room for one prompt: fillers then evict it
        base = cpu_args(page_size=PAGE, max_total_tokens=self.pool, context_length=self.longest + 64)
        env = {**cpu_env(), "AWS_ACCESS_KEY_ID": "objectcache", "AWS_SECRET_ACCESS_KEY": "objectcache-secret"}
        s3cfg = {"endpoint_url": endpoint, "bucket": BUCKET}

        def server(name, args, lw=None):
            cfg = s3cfg if lw is None else {**s3cfg, **TOP_LEVEL.get(name, {}), "layerwise": {
                "enabled": True, "host_cache_mb": 4096, **lw,
                **({"trace_path": str(work / f"{name}.timeline.json")} if a.trace else {})}}
            srv = SGLangServer(model, base + (args if args is not None else objectcache_args(cfg)), env=env,
                               name=name, log_path=str(work / f"{name}.log"))
            return stack.enter_context(srv.start())

        self.servers = {}
        if "recompute" in self.modes:
            self.servers["recompute"] = server("recompute", nocache_args())
        self.servers["page"] = server("page", None)
        for name, lw in LAYERWISE.items():
            if name in self.modes or (name == "layerwise" and "layerwise_dram" in self.modes):
                self.servers[name] = server(name, None, lw)
        self.stored = 0
        self.results: dict[str, dict[int, list[float]]] = {}
        self.details: dict[str, dict[int, list[dict]]] = {}

    def record(self, mode, ctx, dt, det):
        self.results.setdefault(mode, {}).setdefault(ctx, []).append(dt)
        self.details.setdefault(mode, {}).setdefault(ctx, []).append(det)
        print(f"{mode:16s} ctx={ctx:6d} ttft={dt * 1000:8.1f} ms  {det}", flush=True)

    def settled(self):
        settle(self.s3, BUCKET, self.stored)
        time.sleep(0.5)

    def round(self, ctx: int, r: int) -> None:
        a, modes, servers = self.a, self.modes, self.servers
        seed = 100 * ctx + r
        prefix = prompt(seed, ctx)

        def ids(mode):  # the shared prefix, then new tokens of the mode's own
            return prefix + prompt(1_000_003 * seed + MODES.index(mode), a.suffix)

        if "recompute" in servers:
            self.settled()
            self.record("recompute", ctx, *ttft(servers["recompute"].url, ids("recompute")))
        url = servers["page"].url
        ttft(url, prefix)  # populate: device, host and (write-through) the bucket
        self.stored += (ctx - 1) // PAGE
        evict_device(url, self.pool, seed, self.longest)
        self.settled()
        self.record("dram", ctx, *ttft(url, ids("dram")))
        if "page" in modes:
            flush(url)
            self.settled()
            self.record("page", ctx, *ttft(url, ids("page")))
        for name in LAYERWISE:
            if name not in servers:
                continue
            url = servers[name].url
            flush(url)  # empties the host tier too: the prefix is only in the bucket
            self.settled()
            self.record(name, ctx, *ttft(url, ids(name)))
            if name == "layerwise" and "layerwise_dram" in modes:
                evict_device(url, self.pool, seed, self.longest)
                self.settled()
                self.record("layerwise_dram", ctx, *ttft(url, ids("layerwise_dram")))


def paired_ratios(results: dict) -> dict:
    """For each pair and context: the median over rounds of (a / b) measured in the same
    round on the same prompt, with every round's value."""
    out = {}
    for num, den in RATIOS:
        if num not in results or den not in results:
            continue
        per = {}
        for ctx, xs in sorted(results[num].items()):
            rs = [x / y for x, y in zip(xs, results[den][ctx])]
            per[str(ctx)] = {"median": statistics.median(rs), "rounds": rs}
        out[f"{num}_over_{den}"] = per
    return out


def plot_spec(out: dict) -> dict:
    """The result's `plot` field: median TTFT per mode against the prefix length."""
    lines = []
    for mode, per in out["ttft_s_median"].items():
        xs = sorted(int(c) for c in per)
        lines.append((mode, xs, [per[str(x)] * 1000 for x in xs], "o"))
    m = out["model"]
    return plot.loglog(lines, "prefix tokens (plus %d new)" % out["suffix_tokens"], "TTFT, ms (median)",
                       f"TTFT on CPU, {m['num_layers']}-layer random Llama, page {out['page_size']}"
                       + (f", store capped at {out['cap_mbps']:g} MB/s" if out.get("cap_mbps") else ""))


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-ttft-"))
    with s3_server(work / "s3", (BUCKET,)) as s3, ExitStack() as stack:
        endpoint = s3.endpoint
        if a.cap_mbps:
            proxy = stack.enter_context(FaultProxy(s3.s3_port))
            proxy.set(Faults(bandwidth_bps=a.cap_mbps * 1e6))
            endpoint = proxy.endpoint
        run = Run(a, work, s3, stack, endpoint)
        for ctx in a.contexts:
            for r in range(a.reps):
                run.round(ctx, r)
    results, details = run.results, run.details
    summary = {m: {str(c): statistics.median(v) for c, v in sorted(per.items())} for m, per in results.items()}
    ratios = paired_ratios(results)
    out = {
        "model": BENCH_MODEL.__dict__, "page_size": PAGE, "cap_mbps": a.cap_mbps, "suffix_tokens": a.suffix, "reps": a.reps,
        "ttft_s_median": summary, "ratios": ratios,
        "samples_s": {m: {str(c): v for c, v in per.items()} for m, per in results.items()},
        "cached_tokens": {m: {str(c): v for c, v in per.items()} for m, per in details.items()},
        **({"timelines": {m: json.loads((work / f"{m}.timeline.json").read_text()) for m in LAYERWISE
                          if (work / f"{m}.timeline.json").exists()}} if a.trace else {}),
    }
    if not a.workdir:  # otherwise each run leaves ~1.5 GB of objects behind
        shutil.rmtree(work, ignore_errors=True)
    write_result(a.out, runs=a.reps, medians=summary, extra=out, plot=plot_spec(out))
    print(json.dumps({"ttft_s_median": summary}, indent=1))
    for name, per in ratios.items():
        print(f"{name:34s}", "  ".join(f"{c}: {v['median']:.2f}x" for c, v in per.items()))


if __name__ == "__main__":
    main()
