"""The radix tree's nodes as the tree view reads them, from either of SGLang's tree cores.

A source exposes `kind`, `root`, `nodes` ({id: Node}, each with parent, token span
[start, end) and children), `complete`, `fields_unavailable`, and per node: `tokens`,
`hashes`, `device`, `host`, `namespace` and `extras`. It only reads: no match, insert,
lock or LRU touch.
- The Python core exposes its nodes, so every field is real.
- The default Rust core exposes only handle-based queries: nodes are found by probing
  handles, which it never re-mints (ids up to the highest handle ever returned are scanned
  once, incrementally, at most `probe_budget` per call; `note_ids`, hooked on its results
  by the plugin, says how far that is), and hit count, lock refs and last access are null.
"""

from __future__ import annotations

import weakref

PROBE_BUDGET = 500_000  # ~0.5 s of Rust handle probes on one call, at most
PROBE_GAP = 1024  # handles probed past the highest known one (new nodes not yet reported)


class Node:
    __slots__ = ("id", "parent", "start", "end", "children", "depth")

    def __init__(self, id_, parent, start, end):
        self.id, self.parent, self.start, self.end = id_, parent, start, end
        self.children: list[int] = []
        self.depth = 0


class PythonSource:
    """SGLang's Python tree core: real nodes, every field."""

    kind = "python"
    fields_unavailable: tuple[str, ...] = ()

    def __init__(self, core):
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        self.full = ComponentType.FULL
        self.root = core.root_node.id
        self.by_id: dict = {}
        self.nodes: dict[int, Node] = {}
        todo = [(core.root_node, 0)]
        while todo:
            n, start = todo.pop()
            self.by_id[n.id] = n
            end = start + (len(n.key) if n.parent is not None and n.key is not None else 0)
            self.nodes[n.id] = Node(n.id, n.parent.id if n.parent is not None else None, start, end)
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


class RustSource:
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
        self.nodes: dict[int, Node] = {self.root: Node(self.root, None, 0, 0)}
        others = sorted(live - {self.root})
        for path in core.collect_path_info(others) if others else ():
            for info in path:  # ancestors too: a handle the scan has not reached yet
                if info.node_id not in self.nodes:
                    self.nodes[info.node_id] = Node(info.node_id, info.parent_id, info.path_start, info.path_end)
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


def source(core, probe_budget: int = PROBE_BUDGET):
    """The node source for SGLang's tree core `core`: Python (nodes exposed) or Rust (handles)."""
    if hasattr(core, "_node_arena") and hasattr(core, "root_node"):
        return PythonSource(core)
    return RustSource(core, probe_budget)
