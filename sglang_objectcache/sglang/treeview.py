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
- Object-store residency per page comes from the backend's known-keys set (no I/O; a page
  deleted by GC since still counts until the next miss), or from HEAD requests: one batch
  for the query's pages and all shown pages, at most `STORE_HEAD_CAP` keys, run off the
  scheduler thread and waited for at most `STORE_HEAD_DEADLINE_S`; skipped while the
  backend marks store reads down, or while an earlier batch is still running.
- A prefix query names a cache namespace (`extra_key`, `cache_salt`; both None by default,
  as for a request without them) and matches only nodes of that namespace: it never says
  whether another tenant's prompt is cached.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

# Hard caps: a request may ask for less, never for more.
MAX_NODES_CAP = 10_000
MAX_BYTES_CAP = 8 << 20
PREVIEW_TOKENS_CAP = 256
QUERY_TOKENS_CAP = 1 << 20
STORE_HEAD_CAP = 4096  # keys per request, query and nodes together
STORE_HEAD_DEADLINE_S = 2.0  # the scheduler waits no longer for the HEAD batch
PROBE_BUDGET = 500_000  # ~0.5 s of Rust handle probes on one call, at most
PROBE_GAP = 1024  # handles probed past the highest known one (new nodes not yet reported)


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


# ---- node sources ----------------------------------------------------------------------


class _Node:
    __slots__ = ("id", "parent", "start", "end", "children", "depth")

    def __init__(self, id_, parent, start, end):
        self.id, self.parent, self.start, self.end = id_, parent, start, end
        self.children: list[int] = []
        self.depth = 0


class _PythonSource:
    """SGLang's Python tree core: real nodes, every field."""

    kind = "python"
    fields_unavailable: tuple[str, ...] = ()

    def __init__(self, core):
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        self.full = ComponentType.FULL
        self.root = core.root_node.id
        self.by_id: dict = {}
        self.nodes: dict[int, _Node] = {}
        todo = [(core.root_node, 0)]
        while todo:
            n, start = todo.pop()
            self.by_id[n.id] = n
            end = start + (len(n.key) if n.parent is not None and n.key is not None else 0)
            self.nodes[n.id] = _Node(n.id, n.parent.id if n.parent is not None else None, start, end)
            todo.extend((c, end) for c in n.children.values())
        self.complete = True

    def tokens(self, nid):
        key = self.by_id[nid].key
        return None if key is None else key.token_ids[: len(key)]

    def hashes(self, nid):
        return list(self.by_id[nid].hash_value or [])

    def device(self, nid):
        return self.by_id[nid].component_data[self.full].value is not None

    def host(self, nid):
        return self.by_id[nid].component_data[self.full].host_value is not None

    def namespace(self, nid):
        key = self.by_id[nid].key
        return (None, None) if key is None else (key.extra_key, key.cache_salt)

    def extras(self, nid):
        n = self.by_id[nid]
        c = n.component_data[self.full]
        return {"hit_count": int(n.hit_count), "lock_ref": int(c.lock_ref),
                "host_lock_ref": int(c.host_lock_ref), "last_access": float(n.last_access_time)}


class _RustIds:
    """Live handles of one Rust core: the set found so far and how far the scan got."""

    def __init__(self):
        self.live: set[int] = set()
        self.scanned_upto = -1
        self.max_seen = -1


_rust_ids: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def note_ids(core, *ids) -> None:
    """Record handles a Rust core returned (hooked on its insert/match results). Cheap."""
    state = _rust_ids.get(core)
    if state is None:
        state = _rust_ids.setdefault(core, _RustIds())
    for i in ids:
        if isinstance(i, int) and i > state.max_seen:
            state.max_seen = i


def _alive(core, nid: int) -> bool:
    try:
        core.is_root(nid)
        return True
    except KeyError:
        return False


class _RustSource:
    """SGLang's default Rust tree core: handle probing plus handle-based queries."""

    kind = "rust"
    fields_unavailable = ("hit_count", "lock_ref", "host_lock_ref", "last_access")

    def __init__(self, core, probe_budget: int = PROBE_BUDGET):
        self.core = core
        note_ids(core)
        state = _rust_ids[core]
        self.root = core.root_node_handle(None)
        live = {i for i in state.live if _alive(core, i)} | {self.root}
        # Every handle up to the highest one returned is minted: scan those once, at most
        # `probe_budget` per call, resuming where the last call stopped.
        frontier = max(state.max_seen, self.root, max(live))
        i = state.scanned_upto + 1
        while i <= frontier and i - state.scanned_upto <= probe_budget:
            if _alive(core, i):
                live.add(i)
            i += 1
        state.scanned_upto = i - 1
        self.complete = i > frontier
        if self.complete:
            # Past it, nodes made since the hooks last saw a result (or without the hooks):
            # probe until PROBE_GAP handles in a row are not (yet) minted.
            misses = 0
            while misses < PROBE_GAP:
                if _alive(core, i):
                    live.add(i)
                    state.scanned_upto = state.max_seen = i
                    misses = 0
                else:
                    misses += 1
                i += 1
        state.live = live
        self.nodes: dict[int, _Node] = {self.root: _Node(self.root, None, 0, 0)}
        others = sorted(live - {self.root})
        for path in core.collect_path_info(others) if others else ():
            for info in path:  # ancestors too: a handle the scan has not reached yet
                if info.node_id not in self.nodes:
                    self.nodes[info.node_id] = _Node(info.node_id, info.parent_id, info.path_start, info.path_end)
                    live.add(info.node_id)
        self._tokens: dict[int, object] = {}

    def tokens(self, nid):
        if nid not in self._tokens:
            spec = self.core.build_storage_backup_spec(nid, False)
            self._tokens[nid] = None if spec is None else spec.token_ids
        return self._tokens[nid]

    def hashes(self, nid):
        return list(self.core.get_hash_values(nid) or [])

    def device(self, nid):
        return not self.core.is_full_device_evicted(nid)

    def host(self, nid):
        return bool(self.core.is_backuped(nid))

    def namespace(self, nid):
        """(extra_key, cache_salt) of the node's key; None if the core cannot say."""
        try:
            extra_key, salt = self.core.prefetch_anchor_info(nid)
        except Exception:  # noqa: BLE001 - unknown: such a node matches no query
            return None
        return extra_key, salt or None

    def extras(self, nid):
        return dict.fromkeys(self.fields_unavailable)


def _source(core, probe_budget: int):
    if hasattr(core, "_node_arena") and hasattr(core, "root_node"):
        return _PythonSource(core)
    return _RustSource(core, probe_budget)


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
    src = _source(core, probe_budget)
    nodes = src.nodes
    for n in nodes.values():
        if n.parent in nodes:
            nodes[n.parent].children.append(n.id)
    roots = sorted(i for i, n in nodes.items() if n.parent not in nodes)
    for n in nodes.values():
        n.children.sort()
    keys = getattr(backend, "keys", None)
    known = getattr(backend, "known", None) if keys is not None else None

    totals = {"nodes": len(nodes) - len(roots), "tokens": 0, "device_tokens": 0, "host_tokens": 0}
    for n in nodes.values():
        if n.id in roots:
            continue
        span = n.end - n.start
        totals["tokens"] += span
        totals["device_tokens"] += span if src.device(n.id) else 0
        totals["host_tokens"] += span if src.host(n.id) else 0

    qlen = (len(query.prefix_ids) // page) * page
    qids = query.prefix_ids[:qlen]
    qns = (query.extra_key, query.cache_salt)
    qhashes = (_page_hashes(qids, page, *qns) if qlen and (keys is not None or src.kind == "rust") else [])

    def matches(n: _Node) -> Optional[bool]:
        if not qlen:
            return True  # no query
        ns = src.namespace(n.id)
        if ns is None:
            return None
        if ns != qns:
            return False  # another tenant's (cache_salt) or adapter's (extra_key) node
        if n.start >= qlen:
            return True  # a descendant of the query's last page
        end = min(n.end, qlen)
        toks = src.tokens(n.id)
        if toks is not None:
            return list(toks[: end - n.start]) == list(qids[n.start:end])
        hs = src.hashes(n.id)
        a, b = n.start // page, end // page
        if len(hs) >= b - a and qhashes:
            return hs[: b - a] == qhashes[a:b]
        return None

    out, nbytes, truncated, unknown = [], 0, None, 0
    head = query.store == "head" and keys is not None
    probed: list[tuple[dict, list[str]]] = []  # (shown node's store dict, its object keys)
    on_path = {"device_tokens": 0, "host_tokens": 0, "tree_tokens": 0}
    stack = [(r, 0) for r in reversed(roots)]
    while stack:
        nid, depth = stack.pop()
        n = nodes[nid]
        if nid not in roots:
            m = matches(n)
            if m is None:
                unknown += 1
                continue
            if not m:
                continue
            if qlen and n.start < qlen:
                t = min(n.end, qlen) - n.start
                on_path["tree_tokens"] += t
                on_path["device_tokens"] += t if src.device(nid) else 0
                on_path["host_tokens"] += t if src.host(nid) else 0
            if truncated is None and (query.max_depth is None or depth <= query.max_depth):
                view, names = _node_view(src, n, depth, page, keys, known, query, head)
                # "present" is filled in after the HEAD batch: at most "null" in place of a count.
                size = len(json.dumps(view)) + 1 + (4 if view.get("store") and head else 0)
                if len(out) >= query.max_nodes:
                    truncated = f"max_nodes={query.max_nodes}"
                elif nbytes + size > query.max_bytes:
                    truncated = f"max_bytes={query.max_bytes}"
                else:
                    out.append(view)
                    nbytes += size
                    if names:
                        probed.append((view["store"], names))
        if query.max_depth is None or depth < query.max_depth or qlen:
            stack.extend((c, depth + 1) for c in reversed(n.children))

    qnames = [keys.object_key(h) for h in qhashes] if keys is not None and qhashes else []
    present, head_info = ({}, None)
    if head:
        present, head_info = _probe_store(backend, qnames, [names for _, names in probed])
        for store, names in probed:
            if all(k in present for k in names):
                answers = [present[k] for k in names]
                store["present"] = None if None in answers else sum(answers)

    result = {
        "core": src.kind,
        "complete": src.complete,
        "fields_unavailable": list(src.fields_unavailable),
        "page_size": page,
        "roots": roots,
        "totals": totals,
        "truncated": truncated,
        "nodes_unmatched_unknown_tokens": unknown,
        "store": _store_info(backend),
        "nodes": out,
    }
    if head_info is not None:
        result["store_head"] = head_info
    if qlen or query.prefix_ids:
        result["query"] = _query_view(qids, len(query.prefix_ids), qnames, page, known, query, on_path,
                                      present if head else None)
    return result


def _page_hashes(ids: Sequence[int], page: int, extra_key: Optional[str] = None,
                 cache_salt: Optional[str] = None) -> list[str]:
    """SGLang's storage page hashes of `ids` for a request of this namespace."""
    from sglang.srt.mem_cache.utils import get_hash_str, storage_namespace_seed

    if not ids:
        return []
    return list(get_hash_str(list(ids), storage_namespace_seed(extra_key, cache_salt), page_size=page))


def _node_view(src, n, depth, page, keys, known, query, head) -> tuple[dict, list[str]]:
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


class _Probe:
    """One HEAD batch on its own daemon thread: the scheduler waits for it with a deadline,
    and a batch that outlives it blocks later ones (they skip the store) until it ends."""

    def __init__(self, store, names: list[str]):
        self.names, self.result, self.error = names, None, None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(store,), name="objectcache-tree-head", daemon=True).start()

    def _run(self, store) -> None:
        try:
            self.result = store.exists_many(self.names)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            self.error = e
        finally:
            self.done.set()


_probe_lock = threading.Lock()
_last_probe: Optional[_Probe] = None


def _probe_store(backend, first: list[str], groups: list[list[str]]) -> tuple[dict, dict]:
    """HEAD `first` (the query's pages) then every group (a shown node's pages) whole, in one
    batch of at most STORE_HEAD_CAP distinct keys. Returns ({key: True/False/None (error)},
    info); keys left out (cap, store down, deadline) are absent from the dict."""
    global _last_probe
    from sglang_objectcache.store import StoreError

    names: list[str] = []
    seen: set[str] = set()

    def add(group: list[str], whole: bool) -> bool:
        new = [k for k in dict.fromkeys(group) if k not in seen]
        if whole and len(names) + len(new) > STORE_HEAD_CAP:
            return False
        new = new[: STORE_HEAD_CAP - len(names)]
        names.extend(new)
        seen.update(new)
        return True

    add(first, whole=False)
    for g in groups:
        if not add(g, whole=True):
            break
    info: dict = {"keys": len(names), "checked": 0, "skipped": None}
    if not names:
        return {}, info
    cache = getattr(backend, "cache", None)
    if cache is not None and not cache.can_read():
        info["skipped"] = "store reads are marked down: no HEAD sent"
        return {}, info
    with _probe_lock:
        if _last_probe is not None and not _last_probe.done.is_set():
            info["skipped"] = "an earlier HEAD batch is still running"
            return {}, info
        probe = _last_probe = _Probe(backend.store, names)
    if not probe.done.wait(STORE_HEAD_DEADLINE_S):
        info["skipped"] = f"HEAD batch not done in {STORE_HEAD_DEADLINE_S:g} s"
        return {}, info
    if probe.error is not None or len(probe.result or ()) != len(names):
        info["skipped"] = f"HEAD batch failed: {type(probe.error).__name__ if probe.error else 'short reply'}"
        return {}, info
    info["checked"] = len(names)
    return {k: (None if isinstance(r, StoreError) else bool(r)) for k, r in zip(names, probe.result)}, info


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


def _store_info(backend) -> Optional[dict]:
    keys = getattr(backend, "keys", None)
    if keys is None:
        return None
    cfg = getattr(backend, "cfg", None)
    return {
        "bucket": getattr(cfg, "bucket", None),
        "endpoint_url": getattr(cfg, "endpoint_url", None),
        "namespace": keys.namespace.digest,
        "namespace_prefix": keys.namespace_prefix,
    }
