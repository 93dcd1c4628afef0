"""Keep the bucket bounded: a TTL and/or a capacity cap on page objects, least recently used first.

A page's last use is the later of its LastModified (write) and its last read in the
access logs (`accesslog.py`). `plan` is pure: pages idle longer than `ttl_s` go first;
then, while the pages left exceed `max_bytes`, the least recently used go (ties by key, so
a plan is deterministic). Only page objects are ever candidates: namespace descriptions,
access logs and anything not in our layout are never deleted (`apply` re-checks each key).

Deleting is not atomic with serving: a server may read a page GC just deleted. That read
is an ordinary miss (the page is recomputed and written again), never wrong data.
After deleting, `compact` folds the access logs GC read into one log holding only the
reads of pages that still exist and are newer than their write, so the logs stay small.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from sglang_objectcache.inspect import accesslog, layout


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
    lru = sorted(pages, key=lambda p: (p.last_used, p.key))
    victims, keep = [], []
    for p in lru:
        if policy.ttl_s is not None and now - p.last_used > policy.ttl_s:
            victims.append(Victim(p.key, p.size, p.last_used, "ttl"))
        else:
            keep.append(p)
    if policy.max_bytes is not None:
        kept = sum(p.size for p in keep)
        for p in keep:  # oldest first
            if kept <= policy.max_bytes:
                break
            victims.append(Victim(p.key, p.size, p.last_used, "capacity"))
            kept -= p.size
    return Plan(tuple(victims), len(pages), sum(p.size for p in pages), now)


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
