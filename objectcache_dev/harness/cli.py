"""`objectcache-harness`: run named cache workloads against any running SGLang endpoint.

    objectcache-harness --url http://127.0.0.1:30000 multiturn shared-prefix long-doc \\
        --flush-between --json results.json

Prints one table row per round (TTFT, cached tokens by tier, hit rate, errors) and, with
--json, writes the same numbers as JSON. Exit status 1 if any request failed. The tier
split needs the server's `--enable-cache-report`; without it only the total is known.
"""

from __future__ import annotations

import argparse
import json
import sys

from objectcache_dev.harness.client import Client
from objectcache_dev.harness.workloads import WORKLOADS, LongDoc, MultiTurn, Report, SharedPrefix, run_workload

COLUMNS = (
    ("workload", "{:<13}"), ("round", "{:>5}"), ("flush", "{:>5}"), ("reqs", "{:>4}"), ("err", "{:>3}"),
    ("ttft_p50_ms", "{:>11}"), ("ttft_mean_ms", "{:>12}"), ("prompt", "{:>7}"), ("cached", "{:>7}"),
    ("device", "{:>7}"), ("host", "{:>6}"), ("storage", "{:>7}"), ("hit_rate", "{:>8}"),
)


def format_table(reports: list[Report]) -> str:
    lines = ["  ".join(fmt.format(name) for name, fmt in COLUMNS)]
    for rep in reports:
        for r in rep.rounds:
            cells = (rep.workload, r.round, "yes" if r.flushed_before else "no", r.requests, r.errors,
                     "-" if r.ttft_p50_ms is None else f"{r.ttft_p50_ms:.1f}",
                     "-" if r.ttft_mean_ms is None else f"{r.ttft_mean_ms:.1f}",
                     r.prompt_tokens, r.cached_tokens, *("-" if t is None else t for t in
                                                         (r.device_tokens, r.host_tokens, r.storage_tokens)),
                     f"{r.hit_rate:.1%}")
            lines.append("  ".join(fmt.format(c) for c, (_, fmt) in zip(cells, COLUMNS)))
    for rep in reports:
        for r in rep.rounds:
            for sample in r.error_samples:
                lines.append(f"error in {rep.workload} round {r.round}: {sample}")
    return "\n".join(lines)


def build(name: str, a: argparse.Namespace):
    common = {"seed": a.seed, **({"rounds": a.rounds} if a.rounds else {})}
    if name == "multiturn":
        return MultiTurn(conversations=a.conversations, system_tokens=a.system_tokens,
                         turn_tokens=a.turn_tokens, **common)
    if name == "shared-prefix":
        return SharedPrefix(requests_per_round=a.requests_per_round, system_tokens=a.system_tokens,
                            question_tokens=a.question_tokens, **common)
    return LongDoc(documents=a.documents, doc_tokens=a.doc_tokens, question_tokens=a.question_tokens, **common)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="objectcache-harness", description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"any of {', '.join(WORKLOADS)}, or all (the default)")
    p.add_argument("--url", default="http://127.0.0.1:30000", help="SGLang server base URL")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients per round")
    p.add_argument("--rounds", type=int, default=0, help="rounds per workload (0 = the workload's default)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--flush-between", action="store_true",
                   help="POST /flush_cache before every round after the first: reuse must come from storage")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before a flush (write-back)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-tokens", type=int, default=512, help="multiturn/shared-prefix system prompt")
    p.add_argument("--conversations", type=int, default=4, help="multiturn: parallel chats")
    p.add_argument("--turn-tokens", type=int, default=64, help="multiturn: words per user turn")
    p.add_argument("--requests-per-round", type=int, default=16, help="shared-prefix")
    p.add_argument("--question-tokens", type=int, default=32, help="shared-prefix/long-doc")
    p.add_argument("--documents", type=int, default=4, help="long-doc")
    p.add_argument("--doc-tokens", type=int, default=2048, help="long-doc")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    unknown = [w for w in a.workloads if w not in WORKLOADS and w != "all"]
    if unknown:
        p.error(f"unknown workload {unknown[0]!r}: choose from {', '.join(WORKLOADS)}, all")
    names = list(WORKLOADS) if not a.workloads or "all" in a.workloads else list(dict.fromkeys(a.workloads))
    client = Client(a.url.rstrip("/"), timeout_s=a.timeout)
    if not client.healthy():
        print(f"objectcache-harness: {a.url} is not healthy (GET /health failed)", file=sys.stderr)
        return 2
    reports = []
    for name in names:
        reports.append(run_workload(client, build(name, a), clients=a.clients, max_new_tokens=a.max_new_tokens,
                                    flush_between=a.flush_between, settle_s=a.settle))
    print(format_table(reports))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": a.url, "workloads": [r.to_json() for r in reports]}, f, indent=2)
        print(f"wrote {a.json}")
    return 1 if any(r.errors for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
