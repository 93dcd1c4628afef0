"""Is SGLang's CPU engine reproducible from one server launch to the next?

Launches `--launches` plain servers (no radix cache, no HiCache: nothing of ours), one after
another, on the tiny model; sends each the same greedy prompts with top-2 logprobs; and
compares every launch with the first. The e2e parity tests compare a cache server with a
separately launched reference, so this sets what "the same answer" can mean there
(objectcache_dev/harness/compare.py: TIE). The committed results came from:

    .venv/bin/python -m benchmarks.launch_determinism --launches 12 \
        --out benchmarks/results/launch_determinism_idle.json
    .venv/bin/python -m benchmarks.launch_determinism --launches 10 --busy \
        --out benchmarks/results/launch_determinism_busy.json

Writes `--out` (no plot).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.schema import write_result
from objectcache_dev.harness.client import Completion
from objectcache_dev.harness.compare import drift, first_change, gap
from objectcache_dev.harness.server import ServerPool, cpu_args, nocache_args
from objectcache_dev.harness.workloads import prompts
from objectcache_dev.tinymodel import make_tiny_model

MAX_NEW = 16  # greedy tokens compared between launches, as in the e2e parity tests


def compare(run: list[Completion], first: list[Completion]) -> dict:
    """How one launch differs from the first: logprob drift before any flip, and each flip's
    gap in the first launch (how far below its choice the other token was)."""
    flips = []
    for a, b in zip(run, first):
        k = first_change(a, b)
        if k is not None:
            flips.append({"step": k, "gap_in_first": gap(b.top_logprobs[k], a.output_ids[k])})
    return {"same_logprobs": all(a.top_logprobs == b.top_logprobs for a, b in zip(run, first)),
            "answers_with_a_flip": len(flips), "max_logprob_drift": max(drift(a, b) for a, b in zip(run, first)),
            "flips": flips}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launches", type=int, default=12)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--out", required=True)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in every server's environment")
    p.add_argument("--busy", action="store_true",
                   help="keep one core busy during every odd-numbered launch (as on a loaded CI box)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    work = Path(tempfile.mkdtemp(prefix="launch-determinism-"))
    texts = prompts(args.prompts, "launch")
    runs, rows = [], []
    try:
        model = str(make_tiny_model(work / "model"))
        for n in range(args.launches):
            pool = ServerPool(model, str(work / f"logs-{n}"))
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy and n % 2 else None
            try:
                client = pool.launch(cpu_args() + nocache_args(), name="plain", env=env).client
                runs.append([client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in texts])
            finally:
                pool.close()
                if burner:
                    burner.kill()
            rows.append({"launch": n, "busy": bool(burner), **compare(runs[-1], runs[0])})
            print(f"launch {n}{' (busy)' if burner else ''}: same logprobs as launch 0: {rows[-1]['same_logprobs']}, "
                  f"answers with a flip {rows[-1]['answers_with_a_flip']}/{len(texts)}, "
                  f"max drift {rows[-1]['max_logprob_drift']:.2e}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    differing = sum(not r["same_logprobs"] for r in rows)
    result = {"env": env, "launches": args.launches, "prompts": len(texts), "max_new_tokens": MAX_NEW,
              "launches_differing_from_the_first": differing, "per_launch": rows}
    write_result(args.out, runs=args.launches, medians={"launches_differing_from_the_first": differing},
                 extra=result)
    print(f"{differing} of {args.launches} launches differ from the first -> {args.out}")


if __name__ == "__main__":
    main()
