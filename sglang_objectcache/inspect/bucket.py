"""Scan a bucket's objectcache prefix: namespaces, their descriptions, pages, logs, ages, cost.

`scan` lists everything under `{prefix}/` once (lazily paginated by the transport) and
sorts each object by `layout.classify`; it reads only the `_namespace.json` files. Every
later step (summary, verify, gc) works from that one listing, so a tool sees one
consistent picture of the bucket, and objects written during a run are simply not in it.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from sglang_objectcache.inspect import layout
from sglang_objectcache.keys import Namespace
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.store import ObjectInfo, StoreError

# Age histogram edges (seconds) and their labels.
AGE_EDGES = ((3600.0, "<1h"), (86400.0, "1h-1d"), (7 * 86400.0, "1d-7d"), (30 * 86400.0, "7d-30d"),
             (math.inf, ">30d"))
# S3 Standard list price, USD per GB-month (us-east-1, first 50 TB); override with --price.
DEFAULT_PRICE_GB_MONTH = 0.023


@dataclass
class NamespaceScan:
    digest: str
    description: Optional[dict] = None
    description_error: str = ""
    namespace_file: Optional[ObjectInfo] = None
    pages: list[ObjectInfo] = field(default_factory=list)
    access_logs: list[ObjectInfo] = field(default_factory=list)
    other: list[ObjectInfo] = field(default_factory=list)

    @property
    def geometry(self) -> Optional[PageGeometry]:
        return geometry_of(self.description) if self.description and not self.description_error else None

    @property
    def page_bytes(self) -> int:
        return sum(o.size for o in self.pages)


@dataclass
class Scan:
    prefix: str
    namespaces: dict[str, NamespaceScan] = field(default_factory=dict)
    other: list[ObjectInfo] = field(default_factory=list)  # under the prefix, not our layout
    listed: int = 0

    def pages(self):
        for ns in self.namespaces.values():
            yield from ns.pages


def geometry_of(description: dict) -> PageGeometry:
    g = dict(description["geometry"])
    g["row_bytes"] = tuple(g["row_bytes"])
    return PageGeometry(**g)


def check_description(digest: str, description: dict) -> str:
    """'' if `description` is the namespace `digest` names, else why not."""
    try:
        ns = Namespace(
            model=description["model"], geometry=geometry_of(description),
            kv_shard=description["kv_shard"], layers=description["layers"],
            extra=description.get("extra", ""), format_version=description["format_version"],
            identity=description.get("identity", ""), kv_dtype=description.get("kv_dtype", ""),
        )
    except (KeyError, TypeError, ValueError) as e:
        return f"unreadable description ({type(e).__name__}: {e})"
    if ns.digest != digest:
        return f"describes namespace {ns.digest}, not {digest}"
    return ""


def scan(store, prefix: str, namespace: Optional[str] = None,
         on_object: Optional[Callable[[int], None]] = None) -> Scan:
    """List `{prefix}/` (or one namespace) and read every `_namespace.json`."""
    out = Scan(prefix)
    where = layout.namespace_prefix(prefix, namespace) if namespace else layout.root(prefix)
    for o in store.list(where):
        out.listed += 1
        if on_object is not None:
            on_object(out.listed)
        p = layout.classify(o.key, prefix)
        if p.namespace is None:
            out.other.append(o)
            continue
        ns = out.namespaces.get(p.namespace)
        if ns is None:
            ns = out.namespaces[p.namespace] = NamespaceScan(p.namespace)
        if p.kind == layout.PAGE:
            ns.pages.append(o)
        elif p.kind == layout.ACCESS_LOG:
            ns.access_logs.append(o)
        elif p.kind == layout.NAMESPACE:
            ns.namespace_file = o
        else:
            ns.other.append(o)
    described = [ns for ns in out.namespaces.values() if ns.namespace_file is not None]
    bodies = store.get_many([ns.namespace_file.key for ns in described]) if described else []
    for ns, body in zip(described, bodies):
        if body is None or isinstance(body, StoreError):
            ns.description_error = f"could not read {layout.NAMESPACE_FILE}: {body or 'gone'}"
            continue
        try:
            ns.description = json.loads(bytes(body))
        except ValueError as e:
            ns.description_error = f"{layout.NAMESPACE_FILE} is not JSON: {e}"
            continue
        ns.description_error = check_description(ns.digest, ns.description)
    for ns in out.namespaces.values():
        if ns.namespace_file is None:
            ns.description_error = f"no {layout.NAMESPACE_FILE}"
    return out


def histogram(ages) -> dict[str, int]:
    h = {label: 0 for _, label in AGE_EDGES}
    for a in ages:
        h[next(label for edge, label in AGE_EDGES if a < edge)] += 1
    return h


def last_used(ns: NamespaceScan, access: dict[str, float]) -> dict[str, float]:
    """Page key -> last use: the later of its write (LastModified, to the whole second, as
    S3 gives it and as the access log stamps reads) and its last logged read."""
    return {o.key: max(math.floor(o.last_modified), access.get(o.key.rsplit("/", 1)[-1], 0.0)) for o in ns.pages}


def family(ns: NamespaceScan) -> str:
    """Which namespaces hold shards of the same pages: the ranks of one deployment, whose
    descriptions differ only in the TP rank (`kv_shard`), the PP stage (`layers`, and the
    geometry's layer count) and the CP/DCP ranks in `extra`. A page's shards have unrelated
    keys (the namespace is hashed into each), so GC tells them by their equal last use
    within a family (`gc.plan`). A namespace without a valid description is its own."""
    d = ns.description
    if not d or ns.description_error:
        return ns.digest
    same = {k: v for k, v in d.items() if k not in ("kv_shard", "layers", "geometry", "extra")}
    same["geometry"] = {k: v for k, v in d.get("geometry", {}).items() if k != "num_layers"}
    same["kv_shard"] = re.sub(r"^tp\d+of", "tp*of", str(d.get("kv_shard", "")))
    same["extra"] = re.sub(r"\b(d?cp)\d+of", r"\1*of", str(d.get("extra", "")))
    return json.dumps(same, sort_keys=True)


def summarize(s: Scan, access: Optional[dict[str, dict[str, float]]] = None, now: Optional[float] = None,
              price_gb_month: float = DEFAULT_PRICE_GB_MONTH) -> dict:
    """JSON-able summary: per namespace its description, pages, bytes, ages and cost."""
    now = time.time() if now is None else now
    namespaces = []
    for digest, ns in sorted(s.namespaces.items(), key=lambda kv: -kv[1].page_bytes):
        d = ns.description or {}
        g = d.get("geometry") or {}
        nbytes = ns.page_bytes
        row = {
            "namespace": digest,
            "model": d.get("model"),
            "kv_shard": d.get("kv_shard"),
            "layers": d.get("layers"),
            "page_tokens": g.get("tokens"),
            "dtype": g.get("dtype"),
            "kind": g.get("kind"),
            "problem": ns.description_error or None,
            "pages": len(ns.pages),
            "bytes": nbytes,
            "tokens": len(ns.pages) * int(g.get("tokens") or 0),
            "written_age": histogram(now - o.last_modified for o in ns.pages),
            "newest_write": max((o.last_modified for o in ns.pages), default=None),
            "access_logs": len(ns.access_logs),
            "access_log_bytes": sum(o.size for o in ns.access_logs),
            "other_objects": len(ns.other),
            "usd_per_month": round(nbytes / 1e9 * price_gb_month, 4),
        }
        if access is not None:
            used = last_used(ns, access.get(digest, {}))
            row["idle_age"] = histogram(now - t for t in used.values())
            row["pages_read_since_write"] = sum(
                1 for o in ns.pages if access.get(digest, {}).get(o.key.rsplit("/", 1)[-1], 0.0) > o.last_modified
            )
        namespaces.append(row)
    total = sum(r["bytes"] for r in namespaces)
    return {
        "prefix": layout.root(s.prefix),
        "objects_listed": s.listed,
        "namespaces": namespaces,
        "other_objects": len(s.other),
        "total_pages": sum(r["pages"] for r in namespaces),
        "total_bytes": total,
        "usd_per_month": round(total / 1e9 * price_gb_month, 4),
        "price_usd_per_gb_month": price_gb_month,
        "age_buckets": [label for _, label in AGE_EDGES],
        "now": now,
    }
