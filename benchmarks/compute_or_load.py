"""Compute or load, on a multi-turn chat: radix cache only against objectcache with the whole
hit loaded (`compute_or_load: load`, the old behaviour) and with the per-request choice
(`auto`, the default), side by side in one run on one SeaweedFS.

The workload follows SGLang's `benchmark/hicache/bench_multiturn.py` (W2 of issue 29): chat
sessions that resend the whole conversation plus a new user turn each round, a few clients
in parallel, on a device pool small enough that earlier turns leave it. Ours differs: the
harness's `MultiTurn` (word prompts from the tiny model's vocabulary, every session's turns
in one round), and a fixed number of output tokens. Each server gets its own key prefix, so
no configuration reads what another wrote; the order of servers rotates between runs.

    .venv/bin/python -m benchmarks.compute_or_load --runs 3
    .venv/bin/python -m benchmarks.compute_or_load --runs 2 --flush-between --out benchmarks/results/compute_or_load_flush.json
    .venv/bin/python -m benchmarks.compute_or_load --model bench --out benchmarks/results/compute_or_load_8l.json

Writes benchmarks/results/compute_or_load.json (or --out) and its plot.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.rig import pct, s3_server
from benchmarks.schema import write_result
from benchmarks.ttft import BENCH_MODEL
from objectcache_dev.harness.server import SGLangServer, cpu_args, cpu_env, objectcache_args
from objectcache_dev.harness.workloads import MultiTurn, run_workload
from objectcache_dev.tinymodel import TinyModelSpec, make_tiny_model

BUCKET = "bench-compute-or-load"
CONFIGS = ("radix", "load", "auto")
MODELS = {"tiny": TinyModelSpec(), "bench": BENCH_MODEL}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=512)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-total-tokens", type=int, default=4096)
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--flush-between", action="store_true",
                   help="/flush_cache before every round after the first: what a restart leaves (storage only)")
    p.add_argument("--out", default="compute_or_load")
    return p


def server_args(config: str, s3, run: int, max_total_tokens: int) -> list[str]:
    args = cpu_args(max_total_tokens=max_total_tokens, context_length=8192)
    if config == "radix":
        return args
    cfg = s3.config(BUCKET, key_prefix=f"run{run}-{config}", compute_or_load=config)
    return args + objectcache_args(cfg, prefetch_policy="best_effort")


def measure(model: str, config: str, s3, run: int, a, logs: Path) -> dict:
    srv = SGLangServer(model, server_args(config, s3, run, a.max_total_tokens), env=cpu_env(), log_path=str(logs / f"{config}{run}.log"),
                       name=config)
    with srv:
        workload = MultiTurn(conversations=a.conversations, rounds=a.rounds, system_tokens=a.turn_tokens,
                             turn_tokens=a.turn_tokens, seed=run)
        report = run_workload(srv.client, workload, clients=a.clients, max_new_tokens=8,
                              flush_between=a.flush_between, settle_s=3.0)
    done = [r.completion for rnd in report.results for r in rnd if r.completion]
    ttfts = [c.ttft_s * 1e3 for c in done]
    return {"config": config, "run": run, "requests": sum(len(rnd) for rnd in report.results),
            "errors": report.errors, "ttft_mean_ms": statistics.fmean(ttfts), "ttft_p50_ms": pct(ttfts, 0.5),
            "ttft_p99_ms": pct(ttfts, 0.99), "prompt_tokens": sum(c.prompt_tokens for c in done),
            "device_tokens": sum(c.device or 0 for c in done), "host_tokens": sum(c.host or 0 for c in done),
            "storage_tokens": sum(c.storage or 0 for c in done)}


def summary(runs: list[dict], configs) -> dict:
    med = {c: statistics.median(r["ttft_mean_ms"] for r in runs if r["config"] == c) for c in configs}
    out = {f"{c}_ttft_mean_ms": med[c] for c in configs}
    if "radix" in med:
        out.update({f"{c}_vs_radix": med[c] / med["radix"] for c in configs if c != "radix"})
    return out


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    runs: list[dict] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-col-")))
        model = str(make_tiny_model(tmp / "model", MODELS[a.model]))
        s3 = stack.enter_context(s3_server(tmp / "s3", buckets=(BUCKET,)))
        for run in range(a.runs):
            order = a.configs[run % len(a.configs):] + a.configs[:run % len(a.configs)]
            for config in order:
                runs.append(measure(model, config, s3, run, a, tmp))
                print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in runs[-1].items()}, flush=True)
    medians = summary(runs, a.configs)
    print(medians)
    plot = {"kind": "bars", "groups": [f"run {i}" for i in range(a.runs)],
            "series": [{"label": c, "values": [r["ttft_mean_ms"] for r in runs if r["config"] == c]}
                       for c in a.configs],
            "ylabel": "mean TTFT (ms)", "title": f"multi-turn, {a.model} model: radix only vs objectcache "
                                                 "load-all vs compute-or-load"}
    write_result(a.out, runs, medians, {"model": a.model, "flush_between": a.flush_between}, plot)


if __name__ == "__main__":
    main()
