"""Added TTFT per scheduler policy, from the discrete-event simulator (`objectcache_dev.sim`).

Drives the real `TransferScheduler` in virtual time (model and simplifications: the `sim` module
docstring). Every point runs each policy on the same requests, side by side, and reports
added TTFT (mean, p50, p99) and the ratio fair/deadline of the means and of the p99s.

Sweeps (Llama-3.1-8B: 32 layers, 128 KiB KV per token; 1024 new tokens per request):
  caps     a burst of 8 long-prefix requests, cap 2.5-100 Gbit/s (and uncapped); the cap
           held by the scheduler's token bucket, or by the link alone
  bursts   burst size 1-16 at 10 Gbit/s, with the bound 2N/(N+1) of serving N equal
           requests one by one instead of sharing equally
  loads    Poisson arrivals, prefixes 8K-64K, 25 Gbit/s, load 0.1-0.9 of the cap (also
           with write-back of each request's new KV on the same link, and arrivals in
           Poisson bursts of 4)
  starve   the starvation bound's trade-off (Poisson, load 0.9, shortest-first plan)
  naive    deadlines taken from arrival (no start projection): what the plan is for
Policies: deadline (plan in arrival order), deadline+srpt (page mode: plan shortest
remaining fetch first), fair (equal sharing), fifo.

    .venv/bin/python -m benchmarks.sched_sim            # about 3 min on 2 cores
    .venv/bin/python -m benchmarks.sched_sim --quick    # CI smoke run, seconds

Writes benchmarks/results/sched_sim.json (`--out-dir`, `--name`) and its plot beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks.schema import write_result
from objectcache_dev.sim import System, Workload, make_requests, summarize, ttfts
from sglang_objectcache.config import SchedulerConfig

POLICIES = {  # label -> (scheduler policy, deadline plan)
    "deadline": ("deadline", "arrival"),
    "deadline+srpt": ("deadline", "shortest"),
    "fair": ("fair", "arrival"),
    "fifo": ("fifo", "arrival"),
    "deadline-naive": ("deadline", "none"),
}
FIXED, SPREAD = (32768, 32768), (8192, 65536)
MEAN_TOKENS = {FIXED: 32768, SPREAD: (8192 + 65536) / 2}


def point(w: Workload, s: System, labels: list[str], trials: int) -> dict:
    """Each policy on the same `trials` request sets (seeds); added TTFT pooled. Also the
    mean TTFT with every byte local (the same for every policy), for scale."""
    out = {}
    for label in labels:
        policy, plan = POLICIES[label]
        sys_ = replace(s, plan=plan, sched=replace(s.sched, policy=policy))
        xs, local = [], []
        for seed in range(trials):
            ws = replace(w, seed=seed)
            lo, hi = ttfts(make_requests(ws), ws, sys_)
            xs += [b - a for a, b in zip(lo, hi)]
            local += lo
        out[label] = {k: round(v, 4) if isinstance(v, float) else v for k, v in summarize(xs).items()}
        out[label]["local_ttft_mean"] = round(sum(local) / len(local), 4)
    base = out.get("fair")
    for label, st in out.items():
        # A ratio of means near zero says nothing; report it only where storage adds >= 10 ms.
        ok = base and min(st["mean"], base["mean"]) >= 0.01
        st["fair_over_this_mean"] = round(base["mean"] / st["mean"], 3) if ok else None
        st["fair_over_this_p99"] = round(base["p99"] / st["p99"], 3) if ok and st["p99"] > 0 else None
    return out


def labels_for(mode: str, extra: tuple = ()) -> list[str]:
    srpt = ["deadline+srpt"] if mode == "page" else []
    return ["deadline", *srpt, "fair", "fifo", *extra]


def series(name, w, s, xs, vary, trials_of, labels=None):
    rows = []
    for x in xs:
        wx, sx = vary(w, s, x)
        labs = labels or labels_for(sx.mode)
        t0 = time.perf_counter()
        rows.append({"x": x, "policies": point(wx, sx, labs, trials_of(wx)),
                     "wall_s": round(time.perf_counter() - t0, 2)})
        means = ", ".join(f"{k} {v['mean']:.3f}s" for k, v in rows[-1]["policies"].items())
        print(f"  {name} x={x}: " + means, flush=True)
    return {"name": name, "workload": asdict(w), "system": sys_dict(s), "rows": rows}


def sys_dict(s: System) -> dict:
    d = asdict(s)
    d.pop("plan")  # set per policy
    d["sched"].pop("policy")
    return d


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few points, few requests (CI)")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--name", default="sched_sim", help="output file stem")
    ap.add_argument("--trials", type=int, default=20, help="request sets per burst point")
    ap.add_argument("--poisson-requests", type=int, default=400)
    ap.add_argument("--latency-ms", type=float, default=10.0)
    ap.add_argument("--starvation-ms", type=float, default=SchedulerConfig().starvation_ms)
    ap.add_argument("--max-inflight", type=int, default=SchedulerConfig().max_inflight)
    return ap


set_cap = lambda w, s, x: (w, replace(s, cap_gbps=x))  # noqa: E731
set_n = lambda w, s, x: (replace(w, requests=x), s)  # noqa: E731
set_bound = lambda w, s, x: (w, replace(s, sched=replace(s.sched, starvation_ms=x)))  # noqa: E731
one = lambda w: 1  # noqa: E731
POISSON_CAP = 25.0  # Gbit/s


@dataclass(frozen=True)
class Base:
    """What every sweep starts from, given the command line."""

    quick: bool
    system: System
    trials: int
    poisson_requests: int

    def trials_of(self, w: Workload) -> int:
        return 1 if w.prefix_tokens[0] == w.prefix_tokens[1] else self.trials


def burst_sweeps(b: Base, sw: dict) -> None:
    """A burst of 8 under each cap (and uncapped), then bursts of 1-16 at 10 Gbit/s."""
    base_s, burst8, trials_of = b.system, Workload(requests=8, prefix_tokens=SPREAD), b.trials_of
    caps = [10, 100] if b.quick else [2.5, 5, 10, 25, 50, 100]
    print("caps: burst of 8", flush=True)
    sw["caps"] = [
        series("page, prefix 32K", replace(burst8, prefix_tokens=FIXED), base_s, caps, set_cap, trials_of),
        series("page, prefix 8K-64K", burst8, base_s, caps, set_cap, trials_of),
        series("layerwise, prefix 8K-64K (SGLang batches the burst)", burst8, replace(base_s, mode="layerwise"),
               caps, set_cap, trials_of),
        series("layerwise, prefix 8K-64K, one request per batch", burst8,
               replace(base_s, mode="layerwise", max_prefill_tokens=1024), caps, set_cap, trials_of),
        series("page, prefix 8K-64K, cap held by the link only (no token bucket)", burst8,
               replace(base_s, pace=False), caps, set_cap, trials_of),
    ]
    sw["uncapped"] = [
        series(f"{mode}, prefix 8K-64K, {n} request(s)", replace(burst8, requests=n), replace(base_s, mode=mode),
               [0], set_cap, trials_of)
        for mode in ("page", "layerwise")
        for n in (1, 8)
    ]
    print("bursts: 10 Gbit/s", flush=True)
    sizes = [1, 4, 8] if b.quick else [1, 2, 4, 8, 12, 16]
    sw["bursts"] = [
        series("page, prefix 32K", replace(burst8, prefix_tokens=FIXED), base_s, sizes, set_n, trials_of),
        series("page, prefix 8K-64K", burst8, base_s, sizes, set_n, trials_of),
    ]
    for row in sw["bursts"][0]["rows"]:
        row["serial_bound"] = round(2 * row["x"] / (row["x"] + 1), 3)


def poisson_sweeps(b: Base, sw: dict) -> None:
    """Poisson arrivals at 25 Gbit/s under rising load, then the starvation bound at load 0.9."""
    cap, base_s = POISSON_CAP, b.system
    print("loads: Poisson, 25 Gbit/s", flush=True)
    loads = [0.5, 0.9] if b.quick else [0.1, 0.3, 0.5, 0.7, 0.8, 0.9]
    mean_bytes = MEAN_TOKENS[SPREAD] * Workload().kv_bytes_per_token
    poisson = Workload(requests=b.poisson_requests, prefix_tokens=SPREAD)
    set_load = lambda w, s, x: (replace(w, rate=x * cap * 1.25e8 / mean_bytes), s)  # noqa: E731
    sw["loads"] = [
        series(f"{mode}, Poisson", poisson, replace(base_s, cap_gbps=cap, mode=mode), loads, set_load, one)
        for mode in ("page", "layerwise")
    ]
    sw["loads"].append(
        series("page, Poisson, with write-back of new KV", poisson, replace(base_s, cap_gbps=cap, writes=True),
               loads, set_load, one)
    )
    sw["loads"].append(series("page, Poisson bursts of 4", replace(poisson, burst=4), replace(base_s, cap_gbps=cap),
                              loads, set_load, one))
    print("starvation bound: Poisson, load 0.9", flush=True)
    bounds = [200.0, math.inf] if b.quick else [200.0, 2000.0, 10000.0, math.inf]
    w09 = set_load(poisson, None, 0.9)[0]
    sw["starve"] = [
        series("page, Poisson load 0.9", w09, replace(base_s, cap_gbps=cap), bounds, set_bound, one,
               ["deadline+srpt", "deadline", "fair"])
    ]
    for row in sw["starve"][0]["rows"]:
        row["x"] = "inf" if math.isinf(row["x"]) else row["x"]


def sweeps(args) -> dict:
    """Every sweep of the module docstring, by name."""
    sched = SchedulerConfig(starvation_ms=args.starvation_ms, max_inflight=args.max_inflight)
    b = Base(quick=args.quick, system=System(latency_ms=args.latency_ms, sched=sched),
             trials=2 if args.quick else args.trials,
             poisson_requests=40 if args.quick else args.poisson_requests)
    sw = {}
    burst_sweeps(b, sw)
    poisson_sweeps(b, sw)
    print("naive deadlines: burst of 8, one request per batch", flush=True)
    sw["naive"] = [
        series("layerwise, prefix 8K-64K, one request per batch", Workload(requests=8, prefix_tokens=SPREAD),
               replace(b.system, mode="layerwise", max_prefill_tokens=1024), [10, 100], set_cap, b.trials_of,
               ["deadline", "deadline-naive", "fair"])
    ]
    return sw


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    t_start = time.perf_counter()
    sw = sweeps(args)
    out = {"units": "added TTFT in seconds; caps in Gbit/s; load = offered bytes / cap", "sweeps": sw,
           "headline": headline(sw), "wall_s": round(time.perf_counter() - t_start, 1)}
    medians = {f"{h['series']} @ {h['cap_gbps']} Gbit/s": h["ratio_mean"] for h in out["headline"]}
    path = write_result(Path(args.out_dir) / f"{args.name}.json", runs=2 if args.quick else args.trials,
                        medians={"fair_over_policy_mean": medians}, extra=out,
                        plot={"kind": "sched_sim", "size": [14, 12], "dpi": 100,
                              "suptitle": "Transfer scheduler, simulated (Llama-3.1-8B KV, 1024 new tokens, "
                                          "10 ms first byte)"})
    print(json.dumps(out["headline"], indent=1))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def headline(sw: dict) -> list:
    """The paper-like regime: 8 concurrent long-prefix requests under a shared cap."""
    rows = []
    for s in sw["caps"]:
        for row in s["rows"]:
            if row["x"] not in (10, 100):
                continue
            pol = row["policies"]
            best = "deadline+srpt" if "deadline+srpt" in pol else "deadline"
            rows.append(
                {
                    "series": s["name"],
                    "cap_gbps": row["x"],
                    "policy": best,
                    "mean_s": pol[best]["mean"],
                    "fair_mean_s": pol["fair"]["mean"],
                    "ratio_mean": pol[best]["fair_over_this_mean"],
                    "p99_s": pol[best]["p99"],
                    "fair_p99_s": pol["fair"]["p99"],
                    "p99_no_worse": pol[best]["p99"] <= pol["fair"]["p99"] * 1.001,
                    "deadline_arrival_plan_ratio_mean": pol["deadline"]["fair_over_this_mean"],
                    "local_ttft_mean_s": pol["fair"]["local_ttft_mean"],
                    "target_met": bool(pol[best]["fair_over_this_mean"] and pol[best]["fair_over_this_mean"] >= 1.8)
                    and pol[best]["p99"] <= pol["fair"]["p99"] * 1.001,
                }
            )
    return rows


def draw(fig, result: dict) -> None:
    """The `sched_sim` plot kind (drawn by benchmarks.plot): four panels of the sweeps."""
    sw = result["sweeps"]
    ax = fig.subplots(2, 2)
    below = dict(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    a = ax[0][0]
    for s in sw["caps"]:
        for lab, style in (("deadline", "-o"), ("deadline+srpt", "--s")):
            ys = [r["policies"].get(lab, {}).get("fair_over_this_mean") for r in s["rows"]]
            if any(y is not None for y in ys):
                a.plot([r["x"] for r in s["rows"]], ys, style, label=f"{lab}: {s['name']}")
    a.axhline(1.8, color="k", lw=0.8, ls=":")
    a.set(xscale="log", xlabel="shared cap (Gbit/s)", ylabel="mean added TTFT, fair / policy",
          title="Burst of 8 requests")
    a.legend(**below)

    a = ax[0][1]
    for s in sw["bursts"]:
        for lab, style in (("deadline", "-o"), ("deadline+srpt", "--s")):
            a.plot([r["x"] for r in s["rows"]], [r["policies"][lab]["fair_over_this_mean"] for r in s["rows"]],
                   style, label=f"{lab}: {s['name']}")
    rows = sw["bursts"][0]["rows"]
    a.plot([r["x"] for r in rows], [r["serial_bound"] for r in rows], "k:", label="2N/(N+1): one by one vs equal share")
    a.set(xlabel="requests in the burst", ylabel="mean added TTFT, fair / policy", title="Burst size, 10 Gbit/s")
    a.legend(**below)

    for a, stat in ((ax[1][0], "mean"), (ax[1][1], "p99")):
        for s, ls in zip(sw["loads"][:2], ("-", "--")):
            for lab, mk in (("deadline", "o"), ("fair", "s"), ("fifo", "x")):
                a.plot([r["x"] for r in s["rows"]], [r["policies"][lab][stat] for r in s["rows"]], ls + mk, ms=4,
                       label=f"{lab}: {s['name']}")
        a.set(xlabel="offered load (fraction of 25 Gbit/s)", ylabel=f"{stat} added TTFT (s)", yscale="log",
              title=f"Poisson arrivals, prefixes 8K-64K: {stat} (fifo = deadline here)")
        a.legend(**below)


if __name__ == "__main__":
    sys.exit(main())
