"""The scheduler's real measurement: added TTFT per policy on the real layerwise pipeline.

Concurrent requests load their prefix layer by layer from a real SeaweedFS (ranged GETs,
checksums, scatters into a KV pool) through one link capped by the scheduler's own token
bucket; each request's forward waits for a layer, then computes it (`compute_ms`). Same
objects, same cap, every policy, interleaved; medians over `--repeats`. See
objectcache_dev/replay.py.

    .venv/bin/python -m benchmarks.sched_real            # ~10 min on 2 cores
    .venv/bin/python -m benchmarks.sched_real --quick    # ~1 min

Writes benchmarks/results/sched_real.json (or `--out`) and its plot beside it.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, replace

from benchmarks.rig import s3_server
from benchmarks.schema import RESULTS, write_result
from objectcache_dev.replay import Workload, compare


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "sched_real.json"))
    return ap


def cases(quick: bool) -> list[tuple[str, Workload, float]]:
    """(name, workload, cap in Mbit/s; 0: uncapped) of each case."""
    base = Workload()
    if quick:
        return [("burst of 4, 80 Mbit/s", replace(base, requests=4), 80.0)]
    return [
        ("burst of 8, 80 Mbit/s", base, 80.0),
        ("burst of 16, 80 Mbit/s", replace(base, requests=16), 80.0),
        ("burst of 16, 160 Mbit/s", replace(base, requests=16), 160.0),
        ("burst of 32, 160 Mbit/s", replace(base, requests=32), 160.0),
        ("poisson 2/s x 16, 80 Mbit/s", replace(base, requests=16, arrival="poisson", rate_per_s=2.0), 80.0),
        ("burst of 8, uncapped (loopback)", base, 0.0),
    ]


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.quick:
        a.repeats = 1
    results = []
    with tempfile.TemporaryDirectory(prefix="sched-real-") as tmp, s3_server(tmp, ("sched-real",)) as s3:
        cfg = s3.config("sched-real")
        for name, w, cap in cases(a.quick):
            res = compare(cfg, w, cap, repeats=a.repeats)
            row = {"case": name, "cap_mbps": cap, "workload": asdict(w), "policies": res,
                   "fair_over_deadline_mean": res["fair"]["mean_s"] / res["deadline"]["mean_s"],
                   "fair_over_deadline_p99": res["fair"]["p99_s"] / res["deadline"]["p99_s"]}
            results.append(row)
            print(f"{name:34s} " + "  ".join(f"{p} {r['mean_s']*1000:7.0f} ms (p99 {r['p99_s']*1000:6.0f})"
                                                for p, r in res.items())
                  + f"   fair/deadline mean {row['fair_over_deadline_mean']:.2f}x", flush=True)
    medians = {r["case"]: r["fair_over_deadline_mean"] for r in results}
    write_result(a.out, runs=a.repeats, medians={"fair_over_deadline_mean": medians},
                 extra={"repeats": a.repeats, "results": results},
                 plot={"kind": "sched_real", "size": [9, 4.5], "dpi": 120})


def draw(fig, result: dict) -> None:
    """The `sched_real` plot kind (drawn by benchmarks.plot): added TTFT per case and policy."""
    rows = result["results"]
    policies = list(rows[0]["policies"])
    ax = fig.subplots()
    width = 0.8 / len(policies)
    for i, p in enumerate(policies):
        xs = [k + i * width for k in range(len(rows))]
        ax.bar(xs, [r["policies"][p]["mean_s"] * 1000 for r in rows], width, label=f"{p} (mean)")
        ax.scatter(xs, [r["policies"][p]["p99_s"] * 1000 for r in rows], marker="_", s=200, color="k")
    ax.set_xticks([k + width * (len(policies) - 1) / 2 for k in range(len(rows))])
    ax.set_xticklabels([r["case"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("added TTFT, ms (bars: mean, ticks: p99)")
    ax.set_title("Real pipeline on SeaweedFS: added TTFT per scheduling policy")
    ax.legend()


if __name__ == "__main__":
    main()
