"""System benchmark with SGLang's own client: five servers side by side on one S3 server.

Servers (same model, same pools: page 64, `--max-total-tokens`, HiCache's default ratio 2):
  radix      SGLang's radix cache only
  hicache    HiCache L2 (host memory) only
  seaweedfs  HiCache + SGLang's in-tree `seaweedfs` L3 backend
  page       HiCache + objectcache, page mode (compute_or_load: auto, the default)
  layerwise  objectcache, layerwise mode (its host tier follows --hicache-ratio)
The L3 servers prefetch with `wait_complete`, as the README and scripts/run.sh do. SGLang
reports every hit of layerwise mode (its external linker) as `host` tokens.

Workloads (issue 29):
  w1  restart reuse: `python -m sglang.benchmark.serving --dataset-name generated-shared-prefix`
      from the installed wheel (8 groups x 4 prompts, 2,048-token system prompt, 128-token
      question, 16 out, --max-concurrency 4), run once, `/flush_cache`, run again: the second
      run is measured. What a restart leaves: the device and host tiers are empty, the store
      is not.
  w2  multi-turn: SGLang's `benchmark/hicache/bench_multiturn.py` is not in the wheel, so the
      harness's `MultiTurn` drives it (16 chats x 4 rounds, 512-token turns, 4 in parallel).
      It differs from bench_multiturn: every chat's turn i is sent in one round (4 at a time,
      no request-rate pacing), prompts are words of the tiny model's vocabulary, and each
      answer is 16 tokens.

`--cap-mbps` puts the store behind the harness proxy with a shared link of that many MB/s,
so the slow-store regime is measured. Every configuration gets its own key prefix (and the
in-tree backend its own bucket) per run, and the order of servers rotates between runs.

    .venv/bin/python -m benchmarks.serving --model tiny --runs 1
    .venv/bin/python -m benchmarks.serving --model bench --workloads w1 --runs 3 --out benchmarks/results/serving_bench_w1.json

Against your own deployment (servers you started, with your model, flags and store; each
is flushed between workloads, so use servers nobody else is using):

    .venv/bin/python -m benchmarks.serving --tokenizer /models/llama --server radix=http://h1:30000 \
        --server objectcache=http://h2:30000 --out my_serving.json

Writes benchmarks/results/serving.json (or --out) and its plot: mean TTFT per server
relative to radix only, per workload.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.rig import pct, s3_server
from benchmarks.schema import write_result
from benchmarks.ttft import BENCH_MODEL
from objectcache_dev.harness.client import Client
from objectcache_dev.harness.proxy import FaultProxy, Faults
from objectcache_dev.harness.server import SGLangServer, cpu_args, cpu_env, hicache_args, objectcache_args
from objectcache_dev.harness.workloads import MultiTurn, run_workload
from objectcache_dev.tinymodel import TinyModelSpec, make_tiny_model

BUCKET = "bench-serving"
CONFIGS = ("radix", "hicache", "seaweedfs", "page", "layerwise")
WORKLOADS = ("w1", "w2")
MODELS = {"tiny": TinyModelSpec(), "bench": BENCH_MODEL}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--max-total-tokens", type=int, default=4096)
    p.add_argument("--hicache-ratio", type=float, default=2.0, help="host tier / device pool (SGLang's default 2)")
    p.add_argument("--cap-mbps", type=float, default=0.0, help="store behind a link of this many MB/s (0: direct)")
    p.add_argument("--compute-or-load", choices=("auto", "load"), default="auto", help="objectcache's policy")
    p.add_argument("--gsp", type=int, nargs=5, default=[8, 4, 2048, 128, 16], metavar="N",
                   help="w1: groups, prompts per group, system prompt, question, output tokens")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--chats", type=int, nargs=3, default=[16, 4, 512], metavar="N",
                   help="w2: conversations, rounds, tokens per turn")
    p.add_argument("--server", action="append", default=[], metavar="NAME=URL",
                   help="measure servers you run (your model, flags and store) instead of starting them; repeat "
                        "per server; a server named radix is the baseline of the ratios")
    p.add_argument("--tokenizer", default="", help="with --server: the served model's path or tokenizer")
    p.add_argument("--out", default="serving")
    return p


def server_args(config: str, s3, endpoint: str, run: int, a) -> list[str]:
    args = cpu_args(max_total_tokens=a.max_total_tokens, context_length=8192)
    if config == "radix":
        return args
    args += ["--hicache-ratio", str(a.hicache_ratio)]
    if config == "hicache":
        return args + ["--enable-hierarchical-cache", "--hicache-io-backend", "direct",
                       "--hicache-mem-layout", "layer_first"]
    if config == "seaweedfs":
        return args + hicache_args("seaweedfs", {
            "endpoint": endpoint, "bucket": f"{BUCKET}-sw{run}", "access_key": s3.access_key,
            "secret_key": s3.secret_key})
    cfg = s3.config(BUCKET, endpoint_url=endpoint, key_prefix=f"run{run}-{config}",
                    compute_or_load=a.compute_or_load, layerwise={"enabled": config == "layerwise"})
    return args + objectcache_args(cfg)


def sglang_client(url: str, model: str, a, seed: int, out: Path) -> dict:
    """One run of SGLang's own client over the generated-shared-prefix dataset."""
    groups, per_group, system, question, output = a.gsp
    subprocess.run([
        sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang", "--base-url", url,
        "--model", model, "--tokenizer", model, "--dataset-name", "generated-shared-prefix",
        "--gsp-num-groups", str(groups), "--gsp-prompts-per-group", str(per_group),
        "--gsp-system-prompt-len", str(system), "--gsp-question-len", str(question),
        "--gsp-output-len", str(output), "--num-prompts", str(groups * per_group),
        "--max-concurrency", str(a.concurrency), "--seed", str(seed), "--cache-report",
        "--disable-tqdm", "--warmup-requests", "0", "--output-file", str(out),
    ], check=True, capture_output=True, text=True)
    return json.loads(out.read_text().splitlines()[-1])


def w1(srv: SGLangServer, model: str, a, run: int, logs: Path) -> dict:
    sglang_client(srv.url, model, a, run, logs / "w1-fill.jsonl")
    srv.client.flush_cache()
    r = sglang_client(srv.url, model, a, run, logs / "w1.jsonl")
    cache = r.get("cache_report") or {}
    return {"requests": r["completed"], "errors": a.gsp[0] * a.gsp[1] - r["completed"],
            "ttft_mean_ms": r["mean_ttft_ms"], "ttft_p50_ms": r["median_ttft_ms"], "ttft_p99_ms": r["p99_ttft_ms"],
            "requests_s": r["request_throughput"], "output_tokens_s": r["output_throughput"],
            "prompt_tokens": r["total_input_tokens"], "device_tokens": cache.get("device_cached_tokens") or 0,
            "host_tokens": cache.get("host_cached_tokens") or 0,
            "storage_tokens": cache.get("storage_cached_tokens") or 0}


def w2(srv: SGLangServer, model: str, a, run: int, logs: Path) -> dict:
    chats, rounds, turn = a.chats
    t0 = time.perf_counter()
    report = run_workload(srv.client, MultiTurn(conversations=chats, rounds=rounds, system_tokens=turn,
                                                turn_tokens=turn, seed=run),
                          clients=a.concurrency, max_new_tokens=16)
    done = [r.completion for rnd in report.results for r in rnd if r.completion]
    ttfts = [c.ttft_s * 1e3 for c in done]
    wall = time.perf_counter() - t0
    return {"requests": len(done), "errors": report.errors, "ttft_mean_ms": statistics.fmean(ttfts),
            "ttft_p50_ms": pct(ttfts, 0.5), "ttft_p99_ms": pct(ttfts, 0.99), "requests_s": len(done) / wall,
            "output_tokens_s": sum(len(c.output_ids) for c in done) / wall,
            "prompt_tokens": sum(c.prompt_tokens for c in done), "device_tokens": sum(c.device or 0 for c in done),
            "host_tokens": sum(c.host or 0 for c in done), "storage_tokens": sum(c.storage or 0 for c in done)}


class Deployed:
    """A server the user runs (`--server`): measured as it is, never started or stopped."""

    def __init__(self, url: str):
        self.url, self.client = url.rstrip("/"), Client(url.rstrip("/"))

    def __enter__(self) -> "Deployed":
        return self

    def __exit__(self, *exc) -> None:
        pass


def measure(srv, model: str, config: str, run: int, a, logs: Path) -> list[dict]:
    """One server per configuration and run; the workloads run on it one after another, each
    from a flushed cache (their prompts share nothing)."""
    out = []
    with srv:
        for workload in a.workloads:
            srv.client.flush_cache()
            out.append({"workload": workload, "config": config, "run": run,
                        **{"w1": w1, "w2": w2}[workload](srv, model, a, run, logs)})
            print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in out[-1].items()}, flush=True)
    return out


def summary(runs: list[dict], a) -> dict:
    out = {}
    for w in a.workloads:
        med = {c: statistics.median(r["ttft_mean_ms"] for r in runs if r["config"] == c and r["workload"] == w)
               for c in a.configs}
        out.update({f"{w}_{c}_ttft_mean_ms": m for c, m in med.items()})
        if "radix" in med:
            out.update({f"{w}_{c}_vs_radix": med[c] / med["radix"] for c in a.configs if c != "radix"})
    return out


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.server:
        deployed = dict(s.split("=", 1) for s in a.server)
        if not a.tokenizer:
            raise SystemExit("--server needs --tokenizer (the served model's path or tokenizer)")
        a.configs, a.model, a.cap_mbps = list(deployed), a.tokenizer, 0.0
    runs: list[dict] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        if a.server:
            for run in range(a.runs):
                for name in a.configs[run % len(a.configs):] + a.configs[:run % len(a.configs)]:
                    runs += measure(Deployed(deployed[name]), a.tokenizer, name, run, a, tmp)
            return report(runs, a)
        model = str(make_tiny_model(tmp / "model", MODELS[a.model]))
        s3 = stack.enter_context(s3_server(tmp / "s3", buckets=(BUCKET, *(f"{BUCKET}-sw{i}" for i in range(a.runs)))))
        endpoint = s3.endpoint
        if a.cap_mbps:
            proxy = stack.enter_context(FaultProxy(s3.s3_port))
            proxy.set(Faults(bandwidth_bps=a.cap_mbps * 1e6))
            endpoint = proxy.endpoint
        for run in range(a.runs):
            order = a.configs[run % len(a.configs):] + a.configs[:run % len(a.configs)]
            for config in order:
                srv = SGLangServer(model, server_args(config, s3, endpoint, run, a), env=cpu_env(),
                                   log_path=str(tmp / f"{config}{run}.log"), name=config)
                runs += measure(srv, model, config, run, a, tmp)
    report(runs, a)


def report(runs: list[dict], a) -> None:
    medians = summary(runs, a)
    print(medians)
    plot = {"kind": "bars", "groups": list(a.workloads),
            "series": [{"label": c, "values": [medians.get(f"{w}_{c}_ttft_mean_ms") for w in a.workloads]}
                       for c in a.configs],
            "ylabel": "mean TTFT (ms), median of runs",
            "title": f"SGLang's clients, {a.model} model" + (f", store capped at {a.cap_mbps:g} MB/s" if a.cap_mbps else "")}
    write_result(a.out, runs, medians, {"model": a.model, "cap_mbps": a.cap_mbps, "hicache_ratio": a.hicache_ratio, "gsp": a.gsp, "chats": a.chats}, plot)


if __name__ == "__main__":
    main()
