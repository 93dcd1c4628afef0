"""A read-only, bounded snapshot of SGLang's radix tree, taken in the scheduler process.

Contract of `snapshot(tree_cache, backend, query)`:
- It only reads: no match, insert, lock or LRU touch, so inspecting never changes what the
  cache keeps. It runs on the scheduler thread (between batches), so the tree cannot change
  under it; its cost is O(nodes) binding calls, plus up to `store_head_cap` HEADs when the
  caller asks for `store="head"`.
- The result is a JSON-able dict: tree-wide totals, one entry per shown node in depth-first
  order (a parent before its children), and for a query prefix where each of its pages is.
  Output is bounded by `max_nodes` and `max_bytes` (hard caps below); a cut says so in
  `truncated`.
- Works with both SGLang tree cores. The Python core exposes its nodes, so every field is
  real. The default Rust core exposes no nodes, only handle-based queries, so:
  * nodes are found by probing handles, which the core never re-mints: ids below the
    highest handle ever returned are scanned once (incrementally across calls, at most
    `probe_budget` per call; `complete` is False until the scan catches up), and known live
    ids are re-checked;
  * token ids come from `build_storage_backup_spec`, which only answers for host-backed
    nodes (with the default write-through policy that is every node shortly after insert);
  * hit count, lock refs and last access are not exposed: they are null and listed in
    `fields_unavailable` (run with SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python for them).
  (Both sources: `treecores.py`.)
- Object-store residency per page comes from the backend's known-keys set (no I/O; a page
  deleted by GC since still counts until the next miss), or from HEAD requests: one batch
  for the query's pages and all shown pages, at most `treestore.STORE_HEAD_CAP` keys, run
  off the scheduler thread and waited for at most `treestore.STORE_HEAD_DEADLINE_S`;
  skipped while the backend marks store reads down, or while an earlier batch is still
  running (`treestore.py`).
- A prefix query names a cache namespace (`extra_key`, `cache_salt`; both None by default,
  as for a request without them) and matches only nodes of that namespace: it never says
  whether another tenant's prompt is cached.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from typing import Optional, Sequence

from sglang_objectcache.sglang import treestore
from sglang_objectcache.sglang.treecores import PROBE_BUDGET, Node, source

# Hard caps: a request may ask for less, never for more.
MAX_NODES_CAP = 10_000
MAX_BYTES_CAP = 8 << 20
PREVIEW_TOKENS_CAP = 256
QUERY_TOKENS_CAP = 1 << 20


@dataclass(frozen=True)
class Query:
    max_nodes: int = 500
    max_bytes: int = 1 << 20
    max_depth: Optional[int] = None
    preview_tokens: int = 32
    keys: bool = True
    store: str = "known"  # known | head
    prefix_ids: tuple[int, ...] = ()
    # The query's cache namespace: a node of another extra_key/cache_salt never matches.
    extra_key: Optional[str] = None
    cache_salt: Optional[str] = None

    @classmethod
    def from_dict(cls, d: dict) -> "Query":
        def num(name, default, cap):
            v = d.get(name, default)
            return None if v is None else max(0, min(int(v), cap))

        store = str(d.get("store", "known"))
        if store not in ("known", "head"):
            raise ValueError(f"store: must be known or head, got {store!r}")
        ids = tuple(int(t) for t in (d.get("prefix_ids") or ())[:QUERY_TOKENS_CAP])

        def name(field):
            v = d.get(field)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{field}: expected a string")
            return v

        return cls(
            max_nodes=num("max_nodes", 500, MAX_NODES_CAP),
            max_bytes=num("max_bytes", 1 << 20, MAX_BYTES_CAP),
            max_depth=num("max_depth", None, 1 << 20),
            preview_tokens=num("preview_tokens", 32, PREVIEW_TOKENS_CAP),
            keys=bool(d.get("keys", True)),
            store=store,
            prefix_ids=ids,
            extra_key=name("extra_key"),
            cache_salt=name("cache_salt") or None,  # as SGLang's Req: an empty salt is none
        )


# ---- the snapshot ----------------------------------------------------------------------


def snapshot(tree_cache, backend=None, query: Query = Query(), probe_budget: int = PROBE_BUDGET) -> dict:
    # Many short-lived, acyclic objects: without this a full collection of the scheduler's
    # heap lands inside the pause about one call in three (measured: +300 ms at 20k nodes).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _snapshot(tree_cache, backend, query, probe_budget)
    finally:
        if was_enabled:
            gc.enable()


def _snapshot(tree_cache, backend, query: Query, probe_budget: int) -> dict:
    core = getattr(tree_cache, "tree_core", None)
    if core is None:
        raise TypeError(f"{type(tree_cache).__name__} has no tree core (objectcache-inspect needs "
                        "SGLang's unified radix cache, i.e. --enable-hierarchical-cache)")
    page = int(getattr(tree_cache, "page_size", 1) or 1)
    src = source(core, probe_budget)
    roots = _link(src.nodes)
    keys = getattr(backend, "keys", None)
    walk = _Walk(src, page, backend, query)
    walk.run(roots)
    qnames = [keys.object_key(h) for h in walk.qhashes] if keys is not None and walk.qhashes else []
    present, head_info = ({}, None)
    if walk.head:
        present, head_info = treestore.probe_store(backend, qnames, [names for _, names in walk.probed])
        for store, names in walk.probed:
            if all(k in present for k in names):
                answers = [present[k] for k in names]
                store["present"] = None if None in answers else sum(answers)
    result = {
        "core": src.kind,
        "complete": src.complete,
        "fields_unavailable": list(src.fields_unavailable),
        "page_size": page,
        "roots": roots,
        "totals": _totals(src, roots),
        "truncated": walk.truncated,
        "nodes_unmatched_unknown_tokens": walk.unknown,
        "store": treestore.store_info(backend),
        "nodes": walk.out,
    }
    if head_info is not None:
        result["store_head"] = head_info
    if walk.qlen or query.prefix_ids:
        result["query"] = _query_view(walk.qids, len(query.prefix_ids), qnames, page, walk.known, query,
                                      walk.on_path, present if walk.head else None)
    return result


def _link(nodes: dict) -> list[int]:
    """Fill in each node's sorted children; return the roots (nodes whose parent is not shown)."""
    for n in nodes.values():
        if n.parent in nodes:
            nodes[n.parent].children.append(n.id)
    for n in nodes.values():
        n.children.sort()
    return sorted(i for i, n in nodes.items() if n.parent not in nodes)


def _totals(src, roots: list[int]) -> dict:
    totals = {"nodes": len(src.nodes) - len(roots), "tokens": 0, "device_tokens": 0, "host_tokens": 0}
    for n in src.nodes.values():
        if n.id in roots:
            continue
        span = n.end - n.start
        totals["tokens"] += span
        totals["device_tokens"] += span if src.device(n.id) else 0
        totals["host_tokens"] += span if src.host(n.id) else 0
    return totals


class _Walk:
    """One depth-first pass (a parent before its children): which nodes match the query,
    the views that fit the caps, the query path's residency, and the pages to HEAD."""

    def __init__(self, src, page: int, backend, query: Query):
        self.src, self.page, self.query = src, page, query
        self.keys = getattr(backend, "keys", None)
        self.known = getattr(backend, "known", None) if self.keys is not None else None
        self.head = query.store == "head" and self.keys is not None
        self.qlen = (len(query.prefix_ids) // page) * page
        self.qids = query.prefix_ids[:self.qlen]
        self.qns = (query.extra_key, query.cache_salt)
        self.qhashes = (_page_hashes(self.qids, page, *self.qns)
                        if self.qlen and (self.keys is not None or src.kind == "rust") else [])
        self.out: list[dict] = []
        self.nbytes, self.truncated, self.unknown = 0, None, 0
        self.probed: list[tuple[dict, list[str]]] = []  # (shown node's store dict, its object keys)
        self.on_path = {"device_tokens": 0, "host_tokens": 0, "tree_tokens": 0}

    def run(self, roots: list[int]) -> None:
        max_depth = self.query.max_depth
        stack = [(r, 0) for r in reversed(roots)]
        while stack:
            nid, depth = stack.pop()
            n = self.src.nodes[nid]
            if nid not in roots and not self._visit(n, depth):
                continue
            if max_depth is None or depth < max_depth or self.qlen:
                stack.extend((c, depth + 1) for c in reversed(n.children))

    def _visit(self, n: Node, depth: int) -> bool:
        """Account and show `n`; False if it does not match (its subtree is skipped)."""
        m = self.matches(n)
        if m is None:
            self.unknown += 1
            return False
        if not m:
            return False
        if self.qlen and n.start < self.qlen:
            t = min(n.end, self.qlen) - n.start
            self.on_path["tree_tokens"] += t
            self.on_path["device_tokens"] += t if self.src.device(n.id) else 0
            self.on_path["host_tokens"] += t if self.src.host(n.id) else 0
        if self.truncated is None and (self.query.max_depth is None or depth <= self.query.max_depth):
            self._show(n, depth)
        return True

    def _show(self, n: Node, depth: int) -> None:
        query = self.query
        view, names = _node_view(self.src, n, depth, self.page, self.keys, self.known, query, self.head)
        # "present" is filled in after the HEAD batch: at most "null" in place of a count.
        size = len(json.dumps(view)) + 1 + (4 if view.get("store") and self.head else 0)
        if len(self.out) >= query.max_nodes:
            self.truncated = f"max_nodes={query.max_nodes}"
        elif self.nbytes + size > query.max_bytes:
            self.truncated = f"max_bytes={query.max_bytes}"
        else:
            self.out.append(view)
            self.nbytes += size
            if names:
                self.probed.append((view["store"], names))

    def matches(self, n: Node) -> Optional[bool]:
        """Whether `n` lies on the query's prefix (or below it) in its namespace; None: unknown."""
        if not self.qlen:
            return True  # no query
        ns = self.src.namespace(n.id)
        if ns is None:
            return None
        if ns != self.qns:
            return False  # another tenant's (cache_salt) or adapter's (extra_key) node
        if n.start >= self.qlen:
            return True  # a descendant of the query's last page
        end = min(n.end, self.qlen)
        toks = self.src.tokens(n.id)
        if toks is not None:
            return list(toks[: end - n.start]) == list(self.qids[n.start:end])
        hs = self.src.hashes(n.id)
        a, b = n.start // self.page, end // self.page
        if len(hs) >= b - a and self.qhashes:
            return hs[: b - a] == self.qhashes[a:b]
        return None


def _page_hashes(ids: Sequence[int], page: int, extra_key: Optional[str] = None,
                 cache_salt: Optional[str] = None) -> list[str]:
    """SGLang's storage page hashes of `ids` for a request of this namespace."""
    from sglang.srt.mem_cache.utils import get_hash_str, storage_namespace_seed

    if not ids:
        return []
    return list(get_hash_str(list(ids), storage_namespace_seed(extra_key, cache_salt), page_size=page))


def _node_view(src, n: Node, depth, page, keys, known, query, head) -> tuple[dict, list[str]]:
    toks = src.tokens(n.id)
    hashes = src.hashes(n.id)
    view = {
        "id": n.id,
        "parent": n.parent,
        "depth": depth,
        "start": n.start,
        "end": n.end,
        "pages": (n.end - n.start) // page,
        "children": len(n.children),
        "device": src.device(n.id),
        "host": src.host(n.id),
        "tokens_known": toks is not None,
        "preview_ids": (None if toks is None or not query.preview_tokens
                        else [int(t) for t in toks[: query.preview_tokens]]),
        **src.extras(n.id),
    }
    names: list[str] = []
    if keys is not None and hashes:
        names = [keys.object_key(h) for h in hashes]
        view["store"] = {"pages": len(names), "known": sum(1 for k in names if k in known)}
        if query.keys:
            view["object_keys"] = names
    else:
        view["store"] = None
    return view, (names if head else [])


def _leading(flags) -> int:
    n = 0
    for f in flags:
        if not f:
            break
        n += 1
    return n


def _query_view(qids, asked, names, page, known, query, on_path, present) -> dict:
    view = {
        "tokens": asked,
        "page_tokens": len(qids),
        "pages": len(qids) // page,
        "extra_key": query.extra_key,
        "cache_salt": query.cache_salt,
        **on_path,
    }
    if names:
        view["store_pages_known"] = _leading(k in known for k in names)
        if present is not None:
            answers = [present.get(k) for k in names]
            run = _leading(a is True for a in answers)
            # None: the leading run ends at a key not answered (error, cap, store down, deadline).
            view["store_pages_present"] = run if run == len(answers) or answers[run] is False else None
        if query.keys:
            view["object_keys"] = names
    return view
