"""Terminal output for objectcache-inspect (rich). Pure formatting: data in, renderables out."""

from __future__ import annotations

import time
from typing import Optional

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree


def size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def duration(s: float) -> str:
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= secs:
            return f"{s / secs:g}{unit}"
    return f"{s:g}s"


def ago(ts: Optional[float], now: Optional[float] = None) -> str:
    if ts is None:
        return "-"
    s = (time.time() if now is None else now) - ts
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= secs:
            return f"{s / secs:.1f}{unit} ago"
    return f"{s:.0f}s ago"


def _flag(on: Optional[bool], label: str) -> Text:
    if on is None:
        return Text(f"{label} ?", style="dim")
    return Text(f"{label} ●", style="bold green") if on else Text(f"{label} ○", style="dim")


def _store_text(store: Optional[dict]) -> Text:
    if not store:
        return Text("store -", style="dim")
    n = store["pages"]
    have = store.get("present", store["known"])
    how = "" if "present" in store else " known"
    style = "bold green" if have == n else ("yellow" if have else "dim")
    return Text(f"store {have}/{n}{how}", style=style)


def _preview(node: dict, width: int = 48) -> str:
    p = node.get("preview")
    if p is None:
        return "(text unknown)" if not node.get("tokens_known") else "(text withheld)"
    p = " ".join(p.split())
    return repr(p if len(p) <= width else p[: width - 1] + "…")


def _node_label(n: dict, show_keys: bool, ns_prefix: str = "") -> Group:
    line = Text()
    line.append(f"#{n['id']} ", style="bold")
    line.append(f"[{n['start']}, {n['end']}) {n['pages']}p  ", style="cyan")
    line.append(_preview(n))
    tiers = Text("   ")
    tiers.append_text(_flag(n["device"], "GPU"))
    tiers.append("  ")
    tiers.append_text(_flag(n["host"], "host"))
    tiers.append("  ")
    tiers.append_text(_store_text(n.get("store")))
    if n.get("hit_count") is not None:
        tiers.append(f"   hits {n['hit_count']}  lock {n['lock_ref']}/{n['host_lock_ref']}  "
                     f"last access #{n['last_access']:.0f}", style="magenta")
    parts = [line, tiers]
    if show_keys and n.get("object_keys"):
        # Relative to the namespace prefix in the header; --json has the full keys.
        keys = [k[len(ns_prefix):] if ns_prefix and k.startswith(ns_prefix) else k for k in n["object_keys"]]
        more = f" +{len(keys) - 2} more" if len(keys) > 2 else ""
        parts.append(Text("   keys " + " ".join(keys[:2]) + more, style="dim"))
    return Group(*parts)


def tree(reply: dict, show_keys: bool = True) -> list:
    """One rich Tree per scheduler, with a header line of totals."""
    out = []
    for t in reply.get("trees", []):
        tot = t["totals"]
        head = Text()
        dp = f"dp {t['dp_rank']}, " if t.get("dp_rank") is not None else ""
        head.append(f"radix tree ({dp}{t['core']} core, page {t['page_size']})  ", style="bold")
        head.append(f"{tot['nodes']} nodes, {tot['tokens']} tokens: GPU {tot['device_tokens']}, "
                    f"host {tot['host_tokens']}")
        st = t.get("store")
        if st:
            head.append(f"\nstore s3://{st['bucket']}/{st['namespace_prefix']}", style="dim")
        root = Tree(head)
        where = {r: root.add(Text(f"root #{r}", style="dim")) for r in t["roots"]}
        for n in t["nodes"]:
            parent = where.get(n["parent"], root)
            where[n["id"]] = parent.add(_node_label(n, show_keys, (st or {}).get("namespace_prefix", "")))
        out.append(root)
        notes = []
        if t.get("query"):
            q = t["query"]
            line = (f"prefix: {q['tokens']} tokens, {q['pages']} full pages; in tree {q['tree_tokens']} "
                    f"(GPU {q['device_tokens']}, host {q['host_tokens']})")
            if "store_pages_known" in q:
                line += f"; store: {q['store_pages_known']}/{q['pages']} pages known"
            if q.get("store_pages_present") is not None:
                line += f", {q['store_pages_present']}/{q['pages']} present (HEAD)"
            notes.append(line)
        if t.get("truncated"):
            notes.append(f"output cut at {t['truncated']}")
        if not t.get("complete", True):
            notes.append("node scan incomplete (large Rust tree): run again to see the rest")
        if t.get("fields_unavailable"):
            notes.append("not exposed by the " + t["core"] + " tree core: " + ", ".join(t["fields_unavailable"]) +
                         " (SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python shows them)")
        if t.get("nodes_unmatched_unknown_tokens"):
            notes.append(f"{t['nodes_unmatched_unknown_tokens']} node(s) not matched: token ids unknown "
                         "(not host-backed yet)")
        if t.get("redacted"):
            notes.append(t["redacted"])
        out.extend(Text(n, style="dim") for n in notes)
    return out


def store(summary: dict) -> list:
    buckets = summary["age_buckets"]
    t = Table(title=f"objectcache objects under {summary['prefix']}", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False)
    t.add_column("namespace", no_wrap=True, min_width=16)
    t.add_column("model", no_wrap=True, overflow="ellipsis", max_width=40)
    for col in ("shard", "page"):
        t.add_column(col, no_wrap=True)
    for col in ("pages", "size", "$/month"):
        t.add_column(col, justify="right", no_wrap=True)
    ages = Table(title="pages by age since write / since last use", title_justify="left", box=box.SIMPLE_HEAD)
    ages.add_column("namespace", no_wrap=True)
    for b in buckets:
        ages.add_column(b, justify="right")
    for ns in summary["namespaces"]:
        page = f"{ns['page_tokens']}x{ns['dtype']}" if ns["page_tokens"] else "?"
        t.add_row(ns["namespace"], str(ns["model"]), f"{ns['kv_shard']} L{ns['layers']}", page,
                  str(ns["pages"]), size(ns["bytes"]), f"{ns['usd_per_month']:.4f}")
        ages.add_row(ns["namespace"] + " written", *(str(ns["written_age"][b]) for b in buckets))
        if "idle_age" in ns:
            ages.add_row(ns["namespace"] + " used", *(str(ns["idle_age"][b]) for b in buckets))
    t.add_section()
    t.add_row("total", "", "", "", str(summary["total_pages"]), size(summary["total_bytes"]),
              f"{summary['usd_per_month']:.4f}")
    notes = []
    for ns in summary["namespaces"]:
        if ns["problem"]:
            notes.append(f"{ns['namespace']}: {ns['problem']}")
        if ns["access_logs"]:
            notes.append(f"{ns['namespace']}: {ns['access_logs']} access log(s), {size(ns['access_log_bytes'])}"
                         + (f"; {ns['pages_read_since_write']} pages read since written"
                            if "pages_read_since_write" in ns else ""))
    if summary["other_objects"]:
        notes.append(f"{summary['other_objects']} object(s) under the prefix are not objectcache's (left alone)")
    notes.append(f"cost at ${summary['price_usd_per_gb_month']}/GB-month (storage only, no requests)")
    return [t, ages, *(Text(n, style="dim") for n in notes)]


def verify(report, repaired=None) -> list:
    """`repaired`: what `verify.repair` did (a `verify.Repair`), or None without --repair."""
    counts = report.by_problem()
    head = Text()
    head.append(f"checked {report.checked} page objects ({size(report.bytes_read)} read): ", style="bold")
    head.append(f"{report.ok} ok", style="green")
    for p, n in counts.items():
        head.append(f", {n} {p}", style=("yellow" if p == "unsupported" else "red") if n else "dim")
    out = [head]
    if report.findings:
        t = Table(title="findings", title_justify="left", box=box.SIMPLE_HEAD)
        t.add_column("problem", no_wrap=True)
        t.add_column("key", no_wrap=True, min_width=max(len(f.key) for f in report.findings))
        t.add_column("detail", overflow="fold")
        for f in report.findings:
            problem = f.problem if repaired is None else f"{f.problem} ({repaired.action(f)})"
            t.add_row(problem, f.key, f.detail)
        out.append(t)
    for digest, why in report.unverified_namespaces.items():
        out.append(Text(f"namespace {digest}: {why}; objects checked against their own headers only",
                        style="yellow"))
    if counts.get("unsupported"):
        out.append(Text("unsupported: another format version or an unknown code (a newer writer?); "
                        "never deleted", style="dim"))
    if report.vanished:
        out.append(Text(f"{report.vanished} object(s) vanished during the run (not judged)", style="dim"))
    for line in report.unreadable:
        out.append(Text(f"unreadable (not judged): {line}", style="yellow"))
    if repaired is not None:
        line = f"repair: deleted {repaired.count} object(s) proven corrupt in the store"
        if repaired.kept:
            line += f", kept {len(repaired.kept)} not proven (damaged on the way, rewritten since, or intact)"
        if repaired.gone:
            line += f", {len(repaired.gone)} gone before the proof"
        out.append(Text(line, style="bold"))
    elif any(f.problem != "unsupported" for f in report.findings):
        out.append(Text("run with --repair to delete those the store proves bad", style="dim"))
    return out


def gc(plan, policy, applied: Optional[int] = None, compacted: Optional[list] = None) -> list:
    by = {r: [0, 0] for r, on in (("ttl", policy.ttl_s is not None), ("capacity", policy.max_bytes is not None)) if on}
    for v in plan.victims:
        by[v.reason][0] += 1
        by[v.reason][1] += v.size
    rules = []
    if policy.ttl_s is not None:
        rules.append(f"TTL {duration(policy.ttl_s)}")
    if policy.max_bytes is not None:
        rules.append(f"cap {size(policy.max_bytes)}")
    head = Text(f"gc ({', '.join(rules)}): {plan.pages} pages, {size(plan.bytes)}; "
                f"delete {len(plan.victims)} ({size(plan.freed_bytes)}), keep {size(plan.kept_bytes)}",
                style="bold")
    out = [head]
    t = Table(box=box.SIMPLE_HEAD)
    t.add_column("reason")
    t.add_column("pages", justify="right")
    t.add_column("size", justify="right")
    t.add_column("oldest use")
    t.add_column("newest use")
    for reason, (n, b) in by.items():
        vs = [v.last_used for v in plan.victims if v.reason == reason]
        t.add_row(reason, str(n), size(b), ago(min(vs, default=None), plan.now), ago(max(vs, default=None), plan.now))
    out.append(t)
    if applied is None:
        out.append(Text("dry run: nothing deleted (add --delete to delete)", style="yellow"))
    else:
        out.append(Text(f"deleted {applied} page object(s)", style="bold green"))
        for ns, new, gone in compacted or ():
            out.append(Text(f"{ns}: access logs compacted: {gone} merged" + (f" into {new}" if new else ""),
                            style="dim"))
    return out


def show(console: Console, renderables: list) -> None:
    for r in renderables:
        console.print(r)
