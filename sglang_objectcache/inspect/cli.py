"""objectcache-inspect: what the cache holds and where, and keeping the bucket bounded.

    objectcache-inspect tree   --url http://127.0.0.1:30000 [--prefix TEXT] [--depth N] [--json]
    objectcache-inspect store  --config @store.json [--namespace NS] [--json]
    objectcache-inspect verify --config @store.json [--sample N] [--repair] [--json]
    objectcache-inspect gc     --config @store.json --max-bytes 50GiB --ttl 7d [--delete] [--json]

`tree` asks a running SGLang server (GET /objectcache/tree, added by the objectcache
plugin). The bucket commands talk to the store directly: `--config` takes the same JSON
(or @file) as `--hicache-storage-backend-extra-config`; `--bucket/--endpoint-url` and the
OBJECTCACHE_BUCKET / OBJECTCACHE_ENDPOINT_URL / AWS_* environment also work.
Exit status: 0 ok, 1 problems found (verify: corrupt, misplaced or orphaned objects left in the
bucket; unsupported ones do not count), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from contextlib import contextmanager
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from sglang_objectcache.inspect import render

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgtp]?)(i?)b?\s*$", re.I)
_DURATION = re.compile(r"^\s*([0-9.]+)\s*([smhdw]?)\s*$", re.I)


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 10GiB, 1T)")
    power = " kmgtp".index(m.group(2).lower() or " ")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** power)


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2).lower()]


def parse_ttl(text: str) -> float:
    """gc's --ttl: a duration WITH a unit. A bare number is refused: `--ttl 7` meant as days
    would be 7 seconds, and `gc --ttl 7 --delete` would delete nearly everything.
    (argparse prefixes the message with "argument --ttl:".)"""
    m = _DURATION.match(text)
    if m and not m.group(2):
        n = m.group(1)
        raise argparse.ArgumentTypeError(
            f"a unit is required, e.g. {n}d, {n}h, {n}m or {n}s (a bare {n} is refused: days or seconds?)")
    try:
        return parse_duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m, 45s)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="objectcache-inspect", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("tree", help="a running server's radix tree, with tier residency")
    t.add_argument("--url", default=os.environ.get("OBJECTCACHE_SERVER_URL", "http://127.0.0.1:30000"))
    t.add_argument("--api-key", default=os.environ.get("OBJECTCACHE_API_KEY"),
                   help="the server's --admin-api-key (or --api-key); env OBJECTCACHE_API_KEY")
    q = t.add_mutually_exclusive_group()
    q.add_argument("--prefix", help="only the path of this prompt text (and what hangs below it)")
    q.add_argument("--prefix-file", help="read the prompt text from a file")
    q.add_argument("--prefix-ids", help="comma-separated token ids instead of text")
    t.add_argument("--depth", type=int, help="show nodes down to this depth (root's children are 1)")
    t.add_argument("--max-nodes", type=int, default=500)
    t.add_argument("--max-bytes", type=parse_size, default=1 << 20)
    t.add_argument("--preview-tokens", type=int, default=24)
    t.add_argument("--no-keys", action="store_true", help="omit object keys")
    t.add_argument("--head", action="store_true",
                   help="check the store with HEAD requests (from the server) instead of its known-keys cache")
    t.add_argument("--timeout", type=float, default=60.0)
    t.add_argument("--json", action="store_true")

    for name, help_ in (("store", "namespaces, objects, bytes, ages and cost in the bucket"),
                        ("verify", "re-read objects, check headers and checksums"),
                        ("gc", "enforce a capacity cap and/or TTL, least recently used first")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", help="objectcache extra-config JSON, or @file (.json/.toml/.yaml)")
        s.add_argument("--bucket")
        s.add_argument("--endpoint-url")
        s.add_argument("--key-prefix")
        s.add_argument("--namespace", help="only this namespace (16 hex digits)")
        s.add_argument("--json", action="store_true")
        if name == "store":
            s.add_argument("--price", type=float, default=None, help="USD per GB-month (default 0.023)")
            s.add_argument("--no-access-logs", action="store_true", help="skip reading access logs")
        if name == "verify":
            s.add_argument("--sample", type=int, help="check only N random pages per namespace")
            s.add_argument("--repair", action="store_true",
                           help="delete the corrupt, misplaced and orphaned objects the store proves bad "
                                "(never an unsupported one)")
        if name == "gc":
            s.add_argument("--max-bytes", type=parse_size, help="capacity cap for page objects, e.g. 50GiB")
            s.add_argument("--ttl", type=parse_ttl,
                           help="delete pages unused for this long; a unit is required: 7d, 12h, 30m, 45s")
            s.add_argument("--delete", action="store_true", help="really delete (default: dry run)")
    return p


# ---- helpers ------------------------------------------------------------------------------


def store_config(args):
    from sglang_objectcache.config import ObjectCacheConfig, parse

    over = {k: v for k, v in (("bucket", args.bucket), ("endpoint_url", args.endpoint_url),
                              ("key_prefix", args.key_prefix)) if v}
    if args.config:
        text = args.config if args.config.startswith("@") or args.config.lstrip().startswith("{") else "@" + args.config
        cfg = parse(text)
        return dataclasses.replace(cfg, **over) if over else cfg
    return ObjectCacheConfig.from_dict(over)


@contextmanager
def progress(enabled: bool):
    err = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not enabled) as p:
        yield p


def _emit(args, data, renderables) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        render.show(Console(), renderables)


# ---- commands -----------------------------------------------------------------------------


def cmd_tree(args) -> int:
    import requests

    params = {"max_nodes": args.max_nodes, "max_bytes": args.max_bytes, "preview_tokens": args.preview_tokens,
              "keys": "false" if args.no_keys else "true", "store": "head" if args.head else "known"}
    if args.depth is not None:
        params["max_depth"] = args.depth
    if args.prefix_file:
        with open(args.prefix_file, encoding="utf-8") as f:
            params["prefix"] = f.read()
    elif args.prefix:
        params["prefix"] = args.prefix
    elif args.prefix_ids:
        params["prefix_ids"] = args.prefix_ids
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.rstrip("/") + "/objectcache/tree"
    try:
        r = requests.get(url, params=params, headers=headers, timeout=args.timeout)
    except requests.RequestException as e:
        print(f"objectcache-inspect: cannot reach {url}: {e}", file=sys.stderr)
        return 2
    if r.status_code != 200:
        hint = {401: " (pass --api-key)", 403: " (the server needs --admin-api-key)",
                404: " (is the objectcache plugin installed in the server's environment?)"}.get(r.status_code, "")
        print(f"objectcache-inspect: {url}: HTTP {r.status_code}{hint}: {r.text[:500]}", file=sys.stderr)
        return 2
    reply = r.json()
    _emit(args, reply, render.tree(reply, show_keys=not args.no_keys))
    return 0


def _open(args):
    from sglang_objectcache.store import make_store

    cfg = store_config(args)
    return cfg, make_store(cfg)


def _scan(args, store, cfg, p):
    from sglang_objectcache.inspect import bucket

    task = p.add_task("listing objects", total=None)
    s = bucket.scan(store, cfg.key_prefix, args.namespace, on_object=lambda n: p.update(task, completed=n))
    p.remove_task(task)
    return s


def _reads(store, s, prefix: str) -> dict:
    from sglang_objectcache.inspect import accesslog, layout

    return {d: accesslog.read(store, layout.namespace_prefix(prefix, d)) for d in s.namespaces}


def cmd_store(args) -> int:
    from sglang_objectcache.inspect import bucket

    cfg, store = _open(args)
    with store, progress(not args.json) as p:
        s = _scan(args, store, cfg, p)
        access = None if args.no_access_logs else {d: r for d, (r, _) in _reads(store, s, cfg.key_prefix).items()}
    price = bucket.DEFAULT_PRICE_GB_MONTH if args.price is None else args.price
    summary = bucket.summarize(s, access, price_gb_month=price)
    summary["bucket"] = cfg.bucket
    _emit(args, summary, render.store(summary))
    return 0


def cmd_verify(args) -> int:
    from sglang_objectcache.inspect import verify

    cfg, store = _open(args)
    with store, progress(not args.json) as p:
        s = _scan(args, store, cfg, p)
        task = p.add_task("verifying", total=sum(len(ns.pages) for ns in s.namespaces.values()))
        report = verify.verify(store, s, sample=args.sample, on_progress=lambda d, n: p.update(task, completed=d,
                                                                                               total=n))
        fixed = None
        if args.repair:
            p.update(task, description="proving and deleting")
            fixed = verify.repair(store, report, cfg.key_prefix)
    findings = [{**dataclasses.asdict(f), **({"repair": fixed.action(f)} if fixed else {})} for f in report.findings]
    data = {"bucket": cfg.bucket, "checked": report.checked, "ok": report.ok, "bytes_read": report.bytes_read,
            "by_problem": report.by_problem(), "findings": findings,
            "vanished": report.vanished, "unreadable": list(report.unreadable),
            "unverified_namespaces": report.unverified_namespaces,
            "repaired": None if fixed is None else fixed.count,
            "repair": None if fixed is None else {"deleted": fixed.proofs, "kept": fixed.kept,
                                                  "gone": list(fixed.gone)}}
    _emit(args, data, render.verify(report, fixed))
    return 1 if verify.problems_left(report, fixed) else 0


def cmd_gc(args) -> int:
    from sglang_objectcache.inspect import gc, layout

    try:
        policy = gc.Policy(max_bytes=args.max_bytes, ttl_s=args.ttl)
    except ValueError as e:
        print(f"objectcache-inspect gc: {e}", file=sys.stderr)
        return 2
    cfg, store = _open(args)
    with store, progress(not args.json) as p:
        s = _scan(args, store, cfg, p)
        reads = _reads(store, s, cfg.key_prefix)
        plan = gc.plan(gc.candidates(s, {d: merged for d, (merged, _) in reads.items()}), policy)
        applied, compacted = None, []
        if args.delete:
            task = p.add_task("deleting", total=len(plan.victims))
            applied = gc.apply(store, plan, cfg.key_prefix, on_progress=lambda d, n: p.update(task, completed=d))
            doomed = {v.key for v in plan.victims}
            for d, ns in s.namespaces.items():
                merged, logs = reads[d]
                if not logs:
                    continue
                surviving = {o.key.rsplit("/", 1)[-1]: o.last_modified for o in ns.pages if o.key not in doomed}
                new, gone = gc.compact(store, layout.namespace_prefix(cfg.key_prefix, d), merged, logs, surviving)
                compacted.append((d, new, gone))
    data = {"bucket": cfg.bucket, "policy": dataclasses.asdict(policy), "pages": plan.pages, "bytes": plan.bytes,
            "freed_bytes": plan.freed_bytes, "kept_bytes": plan.kept_bytes, "dry_run": not args.delete,
            "deleted": applied, "victims": [dataclasses.asdict(v) for v in plan.victims],
            "compacted": [{"namespace": d, "new_log": n, "logs_merged": g} for d, n, g in compacted]}
    _emit(args, data, render.gc(plan, policy, applied, compacted))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from sglang_objectcache.config import ConfigError
    from sglang_objectcache.store import StoreError

    args = parser().parse_args(argv)
    try:
        return {"tree": cmd_tree, "store": cmd_store, "verify": cmd_verify, "gc": cmd_gc}[args.cmd](args)
    except (ConfigError, StoreError, OSError) as e:
        print(f"objectcache-inspect {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
