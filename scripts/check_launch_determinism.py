"""Is SGLang's CPU engine reproducible from one server launch to the next?

Launches `--launches` plain servers (no radix cache, no HiCache: nothing of ours), one after
another, on the tiny model; sends each the same greedy prompts with top-2 logprobs; and
compares every launch with the first. The e2e parity tests compare a cache server with a
separately launched reference, so this sets what "the same answer" can mean there
(tests/e2e/e2e_support.py: TIE).

    .venv/bin/python scripts/check_launch_determinism.py --launches 12 \
        --out benchmarks/results/launch_determinism.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from e2e_support import MAX_NEW, prompts  # noqa: E402

from sglang_objectcache.harness.server import ServerPool, cpu_args, nocache_args  # noqa: E402
from sglang_objectcache.tinymodel import make_tiny_model  # noqa: E402


def answers(url: str, texts: list[str]) -> list[dict]:
    out = []
    for t in texts:
        body = {"text": t, "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0.0},
                "return_logprob": True, "top_logprobs_num": 2}
        r = requests.post(url + "/generate", json=body, timeout=120)
        r.raise_for_status()
        meta = r.json()["meta_info"]
        out.append({"ids": r.json()["output_ids"], "top2": [[(t, lp) for lp, t, *_ in s] for s in meta["output_top_logprobs"]]})
    return out


def compare(a: list[dict], b: list[dict]) -> dict:
    """How launch `a` differs from launch `b`: logprob drift up to the first flip, and each flip's gap."""
    drift, flips = 0.0, []
    for x, y in zip(a, b):
        for k, (sx, sy) in enumerate(zip(x["top2"], y["top2"])):
            drift = max(drift, abs(sx[0][1] - sy[0][1]))
            if x["ids"][k] != y["ids"][k]:
                flips.append({"step": k, "gap_in_b": sy[0][1] - dict(sy).get(x["ids"][k], float("-inf"))})
                break
    return {"same_logprobs": all(x["top2"] == y["top2"] for x, y in zip(a, b)),
            "answers_with_a_flip": len(flips), "max_logprob_drift": drift, "flips": flips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launches", type=int, default=12)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results/launch_determinism.json")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in every server's environment")
    p.add_argument("--busy", action="store_true",
                   help="keep one core busy during every odd-numbered launch (as on a loaded CI box)")
    args = p.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    work = Path(tempfile.mkdtemp(prefix="launch-determinism-"))
    model = str(make_tiny_model(work / "model"))
    texts = prompts(args.prompts, "launch")
    runs = []
    try:
        for n in range(args.launches):
            pool = ServerPool(model, str(work / f"logs-{n}"))
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy and n % 2 else None
            try:
                runs.append(answers(pool.launch(cpu_args() + nocache_args(), name="plain", env=env).url, texts))
            finally:
                pool.close()
                if burner:
                    burner.kill()
            row = compare(runs[-1], runs[0])
            print(f"launch {n}: same logprobs as launch 0: {row['same_logprobs']}, answers with a flip "
                  f"{row['answers_with_a_flip']}/{len(texts)}, max drift {row['max_logprob_drift']:.2e}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [compare(r, runs[0]) for r in runs]
    result = {"command": " ".join(sys.argv), "env": env, "busy": args.busy, "launches": args.launches, "prompts": len(texts), "max_new_tokens": MAX_NEW,
              "launches_differing_from_the_first": sum(not r["same_logprobs"] for r in rows), "per_launch": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['launches_differing_from_the_first']} of {args.launches} launches differ from the first -> {args.out}")


if __name__ == "__main__":
    main()
