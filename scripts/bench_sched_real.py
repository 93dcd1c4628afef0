"""The scheduler's real measurement: added TTFT per policy on the real layerwise pipeline.

Concurrent requests load their prefix layer by layer from a real SeaweedFS (ranged GETs,
checksums, scatters into a KV pool) through one link capped by the scheduler's own token
bucket; each request's forward waits for a layer, then computes it (`compute_ms`). Same
objects, same cap, every policy, interleaved; medians over `--repeats`. See
objectcache_dev/replay.py.

    .venv/bin/python scripts/bench_sched_real.py            # ~10 min on 2 cores
    .venv/bin/python scripts/bench_sched_real.py --quick    # ~1 min

Writes benchmarks/results/sched_real.json (with the command) and sched_real.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectcache_dev.replay import Workload, compare  # noqa: E402
from objectcache_dev.s3server import SeaweedFS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/sched_real.json"))
    a = ap.parse_args()
    base = Workload()
    if a.quick:
        cases = [("burst of 4, 80 Mbit/s", replace(base, requests=4), 80.0)]
        a.repeats = 1
    else:
        cases = [
            ("burst of 8, 80 Mbit/s", base, 80.0),
            ("burst of 16, 80 Mbit/s", replace(base, requests=16), 80.0),
            ("burst of 16, 160 Mbit/s", replace(base, requests=16), 160.0),
            ("burst of 32, 160 Mbit/s", replace(base, requests=32), 160.0),
            ("poisson 2/s x 16, 80 Mbit/s", replace(base, requests=16, arrival="poisson", rate_per_s=2.0), 80.0),
            ("burst of 8, uncapped (loopback)", base, 0.0),
        ]
    results = []
    with tempfile.TemporaryDirectory(prefix="sched-real-") as tmp, SeaweedFS(tmp, buckets=("sched-real",)) as s3:
        cfg = s3.config("sched-real")
        for name, w, cap in cases:
            res = compare(cfg, w, cap, repeats=a.repeats)
            row = {"case": name, "cap_mbps": cap, "workload": asdict(w), "policies": res,
                   "fair_over_deadline_mean": res["fair"]["mean_s"] / res["deadline"]["mean_s"],
                   "fair_over_deadline_p99": res["fair"]["p99_s"] / res["deadline"]["p99_s"]}
            results.append(row)
            print(f"{name:34s} " + "  ".join(f"{p} {r['mean_s']*1000:7.0f} ms (p99 {r['p99_s']*1000:6.0f})"
                                                for p, r in res.items())
                  + f"   fair/deadline mean {row['fair_over_deadline_mean']:.2f}x", flush=True)
    out = {"command": " ".join(["python", *sys.argv]), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "repeats": a.repeats, "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, a.out[:-5] + ".png")


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["results"]
    policies = list(rows[0]["policies"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
