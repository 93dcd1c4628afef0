"""Keep the bucket bounded: a TTL and/or a capacity cap on page objects, least recently used first.

A page's last use is the later of its LastModified (write) and its last read in the
access logs (`accesslog.py`), both to the whole second. `plan` is pure: pages idle longer
than `ttl_s` go first; then, while the pages left exceed `max_bytes`, the least recently
used go. Pages go or stay in groups, never one by one inside a group: a group is the
pages of one family of namespaces (the TP/PP ranks of one deployment, `bucket.family`)
with the same last use. So pages written together and never read (their LastModified
ties) go together, not a random cut of them by key, which would leave prefixes with holes;
and the shards of one page, which the ranks write and read at the same moment (the access
log stamps a read with its whole second, less a microsecond per position in its batch),
go together, never one shard of a page kept without the others (no rank can hit a page
whose other shards are gone). Groups go oldest first (then by write time); a cap may
free up to a group more than it needs. Only page objects are ever candidates: namespace
descriptions, access logs and anything not in our layout are never deleted (`apply`
re-checks each key).

Deleting is not atomic with serving: a server may read a page GC just deleted. That read
is an ordinary miss (the page is recomputed and written again), never wrong data.
After deleting, `compact` folds the access logs GC read into one log holding only the
reads of pages that still exist and are newer than their write, so the logs stay small.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from sglang_objectcache.inspect import accesslog, bucket, layout


@dataclass(frozen=True)
class Policy:
    max_bytes: Optional[int] = None
    ttl_s: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_bytes is None and self.ttl_s is None:
            raise ValueError("gc needs a capacity cap (max_bytes) and/or a TTL (ttl_s)")
        if (self.max_bytes is not None and self.max_bytes < 0) or (self.ttl_s is not None and self.ttl_s < 0):
            raise ValueError("max_bytes and ttl_s must be >= 0")


@dataclass(frozen=True)
class Page:
    key: str
    size: int
    last_used: float
    written: float = 0.0  # LastModified
    family: str = ""  # `bucket.family` of its namespace


@dataclass(frozen=True)
class Victim:
    key: str
    size: int
    last_used: float
    reason: str  # "ttl" | "capacity"


@dataclass(frozen=True)
class Plan:
    victims: tuple[Victim, ...]
    pages: int
    bytes: int
    now: float

    @property
    def freed_bytes(self) -> int:
        return sum(v.size for v in self.victims)

    @property
    def kept_bytes(self) -> int:
        return self.bytes - self.freed_bytes


def plan(pages: list[Page], policy: Policy, now: Optional[float] = None) -> Plan:
    now = time.time() if now is None else now
    groups: dict[tuple[str, float], list[Page]] = {}
    for p in pages:
        groups.setdefault((p.family, p.last_used), []).append(p)
    lru = sorted((sorted(g, key=lambda p: (p.written, p.key)) for g in groups.values()),
                 key=lambda g: (g[0].last_used, g[0].written, g[0].family))
    victims, keep = [], []
    for g in lru:
        if policy.ttl_s is not None and now - g[0].last_used > policy.ttl_s:
            victims += [Victim(p.key, p.size, p.last_used, "ttl") for p in g]
        else:
            keep.append(g)
    if policy.max_bytes is not None:
        kept = sum(p.size for g in keep for p in g)
        for g in keep:  # oldest first
            if kept <= policy.max_bytes:
                break
            victims += [Victim(p.key, p.size, p.last_used, "capacity") for p in g]
            kept -= sum(p.size for p in g)
    return Plan(tuple(victims), len(pages), sum(p.size for p in pages), now)


def candidates(scan, reads: dict[str, dict[str, float]]) -> list[Page]:
    """Every page object of a `bucket.Scan`, once (a listing may repeat a key), with its own
    size, its last use (`reads`: namespace -> content id -> last read) and its family."""
    out = []
    for digest, ns in scan.namespaces.items():
        fam = bucket.family(ns)
        used = bucket.last_used(ns, reads.get(digest, {}))
        for o in {o.key: o for o in ns.pages}.values():  # joined by key, never by position
            out.append(Page(o.key, o.size, used[o.key], o.last_modified, fam))
    return out


def apply(store, p: Plan, prefix: str, batch: int = 1000,
          on_progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Delete the plan's victims. Returns how many are gone."""
    keys = [v.key for v in p.victims]
    for key in keys:
        if layout.classify(key, prefix).kind != layout.PAGE:
            raise ValueError(f"refusing to delete {key!r}: not a page object under {prefix!r}")
    gone = 0
    for i in range(0, len(keys), batch):
        gone += store.delete_many(keys[i:i + batch])
        if on_progress is not None:
            on_progress(min(i + batch, len(keys)), len(keys))
    return gone


def compact(store, ns_prefix: str, reads: dict[str, float], logs_read: list[str],
            surviving: dict[str, float], now: Optional[float] = None) -> tuple[Optional[str], int]:
    """Replace `logs_read` by one log of the reads that still matter.

    `surviving` maps each remaining page's content id to its LastModified; a read no newer
    than the write adds nothing. The new log is written before the old ones are deleted,
    so a crash in between leaves duplicates, never a loss. Returns (new key, deleted).
    """
    keep = {c: t for c, t in reads.items() if c in surviving and t > surviving[c]}
    new_key = None
    if keep:
        new_key = accesslog.log_key(ns_prefix, time.time() if now is None else now, tag="gc")
        store.put(new_key, accesslog.encode(keep), if_absent=True)
    for key in logs_read:
        if layout.classify(key, layout_prefix(ns_prefix)).kind != layout.ACCESS_LOG:
            raise ValueError(f"refusing to delete {key!r}: not an access log")
    deleted = store.delete_many(logs_read) if logs_read else 0
    return new_key, deleted


def layout_prefix(ns_prefix: str) -> str:
    """`{prefix}/` of a namespace prefix `{prefix}/{ns}/`."""
    return ns_prefix.rstrip("/").rsplit("/", 1)[0]
