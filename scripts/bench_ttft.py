"""TTFT against context length: recompute, DRAM (L2) hit, objectcache page-mode and layerwise hits.

One run, side by side, on one machine: a real SeaweedFS and real SGLang servers on a
random-weight Llama-style model made locally (bigger than the test model, so each layer's
compute is real). Every prompt is a fresh prefix of `ctx` tokens plus a `suffix` of new
tokens; TTFT is the latency of a 1-token generation. Per context length and mode we take
the median of `--reps` distinct prompts:

    recompute        no radix/HiCache: every token computed
    dram             HiCache host (L2) hit: the prefix was evicted from the device pool to
                     host memory, then loaded back layer by layer by SGLang (the local-DRAM
                     baseline)
    page             objectcache page mode: prefix only in the bucket; SGLang prefetches
                     whole pages to host memory (wait_complete), then computes
    layerwise        objectcache layerwise mode: prefix only in the bucket; layers stream
                     into the KV pool while the forward runs
    layerwise_dram   layerwise mode, prefix in objectcache's own host tier
    layerwise_thread layerwise mode with `fetch: thread`: GETs, copies and hashes on threads
                     of SGLang's scheduler process, not in the fetch worker process (default)
    layerwise_g4     layerwise mode reading 4 layers per ranged GET (`layers_per_get`: 4,
                     256 KiB per request for this model): a quarter of the requests

    .venv/bin/python scripts/bench_ttft.py --contexts 1024 2048 4096 8192 --reps 3

Writes benchmarks/results/ttft_cpu.json (with the command) and ttft_cpu.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sglang_objectcache.harness.server import SGLangServer, cpu_args, cpu_env, nocache_args, objectcache_args  # noqa: E402
from sglang_objectcache.s3server import SeaweedFS  # noqa: E402
from sglang_objectcache.tinymodel import TinyModelSpec, make_tiny_model  # noqa: E402

BENCH_MODEL = TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                            intermediate_size=1536, vocab_size=2048, max_positions=32768)
PAGE = 64


def ttft(url: str, ids: list[int]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = requests.post(url + "/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 1, "temperature": 0}}, timeout=600)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    meta = r.json()["meta_info"]
    return dt, {"cached": meta.get("cached_tokens", 0), **(meta.get("cached_tokens_details") or {})}


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


def wait_stored(s3: SeaweedFS, bucket: str, want: int, timeout_s: float = 120) -> None:
    """Write-through to the bucket is asynchronous: wait until `want` page objects exist."""
    c = s3.client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = sum(1 for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", []) if not o["Key"].endswith(".json"))
        if n >= want:
            return
        time.sleep(0.3)
    raise TimeoutError(f"only {n} of {want} objects stored")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--suffix", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ttft_cpu.json"))
    ap.add_argument("--workdir", default="")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-ttft-"))
    model = make_tiny_model(work / "model", BENCH_MODEL)
    longest = max(a.contexts) + a.suffix
    pool = longest + 2 * PAGE + 512  # room for one prompt: fillers then evict it
    base = cpu_args(page_size=PAGE, max_total_tokens=pool, context_length=longest + 64)
    env = {**cpu_env(), "AWS_ACCESS_KEY_ID": "objectcache", "AWS_SECRET_ACCESS_KEY": "objectcache-secret"}
    results: dict[str, dict[int, list[float]]] = {}
    details: dict[str, dict[int, list[dict]]] = {}

    def record(mode, ctx, dt, det):
        results.setdefault(mode, {}).setdefault(ctx, []).append(dt)
        details.setdefault(mode, {}).setdefault(ctx, []).append(det)
        print(f"{mode:15s} ctx={ctx:6d} ttft={dt * 1000:8.1f} ms  {det}", flush=True)

    with SeaweedFS(str(work / "s3"), buckets=("bench-ttft",)) as s3:
        s3cfg = {"endpoint_url": s3.endpoint, "bucket": "bench-ttft"}
        seeds = {(ctx, r): 100 * ctx + r for ctx in a.contexts for r in range(a.reps)}

        with SGLangServer(model, base + nocache_args(), env=env, name="recompute",
                          log_path=str(work / "recompute.log")).start() as srv:
            ttft(srv.url, prompt(1, 512))
            for (ctx, r), seed in seeds.items():
                record("recompute", ctx, *ttft(srv.url, prompt(seed, ctx + a.suffix)))

        stored = 0
        with SGLangServer(model, base + objectcache_args(s3cfg), env=env, name="page",
                          log_path=str(work / "page.log")).start() as srv:
            for (ctx, r), seed in seeds.items():
                ids = prompt(seed, ctx + a.suffix)
                ttft(srv.url, ids)  # populate: device, host and (write-through) the bucket
                stored += (len(ids) - 1) // PAGE
                evict_device(srv.url, pool, seed, longest)
                record("dram", ctx, *ttft(srv.url, ids))
                wait_stored(s3, "bench-ttft", stored)
                flush(srv.url)
                record("page", ctx, *ttft(srv.url, ids))

        lw = {**s3cfg, "layerwise": {"enabled": True, "host_cache_mb": 4096}}
        with SGLangServer(model, base + objectcache_args(lw), env=env, name="layerwise",
                          log_path=str(work / "layerwise.log")).start() as srv:
            for (ctx, r), seed in seeds.items():
                ids = prompt(seed, ctx + a.suffix)
                flush(srv.url)  # empties the host tier too: the prefix is only in the bucket
                record("layerwise", ctx, *ttft(srv.url, ids))
                evict_device(srv.url, pool, seed, longest)
                record("layerwise_dram", ctx, *ttft(srv.url, ids))

        lwt = {**s3cfg, "layerwise": {"enabled": True, "host_cache_mb": 4096, "fetch": "thread"}}
        with SGLangServer(model, base + objectcache_args(lwt), env=env, name="layerwise_thread",
                          log_path=str(work / "layerwise_thread.log")).start() as srv:
            for (ctx, r), seed in seeds.items():
                flush(srv.url)
                record("layerwise_thread", ctx, *ttft(srv.url, prompt(seed, ctx + a.suffix)))

        lw4 = {**s3cfg, "layerwise": {"enabled": True, "host_cache_mb": 4096, "layers_per_get": 4}}
        with SGLangServer(model, base + objectcache_args(lw4), env=env, name="layerwise_g4",
                          log_path=str(work / "layerwise_g4.log")).start() as srv:
            for (ctx, r), seed in seeds.items():
                flush(srv.url)
                record("layerwise_g4", ctx, *ttft(srv.url, prompt(seed, ctx + a.suffix)))

    summary = {m: {str(c): statistics.median(v) for c, v in sorted(per.items())} for m, per in results.items()}
    longest_ctx = str(max(a.contexts))
    ratios = {
        "layerwise_over_dram_at_longest": summary["layerwise"][longest_ctx] / summary["dram"][longest_ctx],
        "layerwise_over_recompute": {c: summary["layerwise"][c] / summary["recompute"][c] for c in summary["recompute"]},
        "page_over_dram": {c: summary["page"][c] / summary["dram"][c] for c in summary["dram"]},
        "layerwise_over_page": {c: summary["layerwise"][c] / summary["page"][c] for c in summary["page"]},
        "layerwise_over_layerwise_thread": {c: summary["layerwise"][c] / summary["layerwise_thread"][c]
                                            for c in summary["layerwise_thread"]},
        "layerwise_g4_over_dram": {c: summary["layerwise_g4"][c] / summary["dram"][c] for c in summary["dram"]},
        "layerwise_g4_over_recompute": {c: summary["layerwise_g4"][c] / summary["recompute"][c]
                                        for c in summary["recompute"]},
    }
    out = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": BENCH_MODEL.__dict__, "page_size": PAGE, "suffix_tokens": a.suffix, "reps": a.reps,
        "ttft_s_median": summary, "ratios": ratios,
        "samples_s": {m: {str(c): v for c, v in per.items()} for m, per in results.items()},
        "cached_tokens": {m: {str(c): v for c, v in per.items()} for m, per in details.items()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, a.out[:-5] + ".png")
    print(json.dumps({"ttft_s_median": summary, "ratios": ratios}, indent=1))


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, per in out["ttft_s_median"].items():
        xs = [int(c) for c in per]
        ax.plot(xs, [per[str(x)] * 1000 for x in xs], marker="o", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prefix tokens (plus %d new)" % out["suffix_tokens"])
    ax.set_ylabel("TTFT, ms (median)")
    m = out["model"]
    ax.set_title(f"TTFT on CPU, {m['num_layers']}-layer random Llama, page {out['page_size']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
