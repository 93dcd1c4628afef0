"""The tree snapshot on SGLang's real Rust tree core and on real Python tree nodes: parents,
tiers, prefix queries, cache salts, and the store HEAD batch."""

from __future__ import annotations

import json
import time
from array import array
from types import SimpleNamespace

import torch
from inspect_support import page, scheme
from inspect_support import store_fixture  # noqa: F401  (pytest finds it as `store`)
from tree_cores import insert_device, insert_host, rust_core

from sglang_objectcache.sglang import treecores, treestore, treeview


class FakeBackend:
    """What the snapshot reads from ObjectCacheStorage: keys, known, store, cfg."""

    def __init__(self, ks, store, known=()):
        self.keys, self.store, self.known = ks, store, set(known)
        self.cfg = SimpleNamespace(bucket="b", endpoint_url="http://x")


def test_snapshot_of_the_rust_core_spans_parents_tiers_and_prefix(store):
    core = rust_core()
    a = list(range(16))
    b = list(range(8)) + [50, 51, 52, 53]
    insert_host(core, a)
    insert_host(core, b)
    insert_device(core, [7, 7, 7, 7, 7, 7, 7, 7])  # device-only: no token ids from the Rust core
    ks = scheme()
    hashes_a = treeview._page_hashes(a, 4)
    store.put_many([page(ks, h) for h in hashes_a[:3]])  # the first three pages of `a` are stored
    backend = FakeBackend(ks, store, known=[ks.object_key(hashes_a[0])])
    tc = SimpleNamespace(tree_core=core, page_size=4)

    snap = treeview.snapshot(tc, backend, treeview.Query())
    assert snap["core"] == "rust" and snap["complete"] and "hit_count" in snap["fields_unavailable"]
    assert snap["totals"] == {"nodes": 4, "tokens": 28, "device_tokens": 8, "host_tokens": 20}
    nodes = {(n["start"], n["end"], tuple(n["preview_ids"] or ())): n for n in snap["nodes"]}
    shared = nodes[(0, 8, tuple(range(8)))]
    tail_a = nodes[(8, 16, tuple(range(8, 16)))]
    tail_b = nodes[(8, 12, (50, 51, 52, 53))]
    assert tail_a["parent"] == tail_b["parent"] == shared["id"] and shared["children"] == 2
    assert shared["host"] and not shared["device"] and shared["store"] == {"pages": 2, "known": 1}
    assert shared["object_keys"] == [ks.object_key(h) for h in hashes_a[:2]]
    dev = next(n for n in snap["nodes"] if n["device"])
    assert not dev["tokens_known"] and dev["preview_ids"] is None

    q = treeview.snapshot(tc, backend, treeview.Query.from_dict({"prefix_ids": a + [99], "store": "head"}))
    assert [n["id"] for n in q["nodes"]] == [shared["id"], tail_a["id"]]
    assert q["query"]["pages"] == 4 and q["query"]["tree_tokens"] == 16 and q["query"]["host_tokens"] == 16
    assert q["query"]["store_pages_known"] == 1 and q["query"]["store_pages_present"] == 3
    assert q["nodes"][0]["store"]["present"] == 2 and q["nodes"][1]["store"]["present"] == 1

    cut = treeview.snapshot(tc, backend, treeview.Query.from_dict({"max_nodes": 2}))
    assert len(cut["nodes"]) == 2 and cut["truncated"] == "max_nodes=2"
    shallow = treeview.snapshot(tc, backend, treeview.Query.from_dict({"max_depth": 1}))
    assert {n["depth"] for n in shallow["nodes"]} == {1}
    small = treeview.snapshot(tc, backend, treeview.Query.from_dict({"max_bytes": 600}))
    assert small["truncated"] == "max_bytes=600" and len(json.dumps(small["nodes"])) <= 600


def test_rust_handle_scan_is_incremental_and_sees_new_nodes():
    core = rust_core()
    handles = [insert_host(core, [i] * 8).inserted_host_node for i in range(12)]
    treecores.note_ids(core, *handles)  # what the plugin's hook on insert_host does
    tc = SimpleNamespace(tree_core=core, page_size=4)
    first = treeview.snapshot(tc, None, probe_budget=5)
    assert not first["complete"] and first["totals"]["nodes"] == 4  # handles 0 (root) to 4
    for _ in range(10):
        snap = treeview.snapshot(tc, None, probe_budget=5)
        if snap["complete"]:
            break
    assert snap["complete"] and snap["totals"]["nodes"] == 12
    insert_host(core, [99] * 8)  # not noted: found by probing past the highest known handle
    assert treeview.snapshot(tc, None)["totals"]["nodes"] == 13
    core.reset()  # /flush_cache: every old handle dies, the new root has a new one
    empty = treeview.snapshot(tc, None)
    assert empty["totals"]["nodes"] == 0 and empty["roots"] == [core.root_node_handle(None)]


def test_snapshot_reads_real_python_tree_nodes():
    from sglang.srt.mem_cache.radix_cache import RadixKey
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
    from sglang.srt.mem_cache.unified_cache.unified_tree_core import UnifiedTreeNode

    comps = (ComponentType.FULL,)

    def node(parent, tokens, device, host):
        n = UnifiedTreeNode(comps)
        n.key = RadixKey(array("q", tokens))
        n.parent = parent
        if parent is not None:
            parent.children[tokens[0]] = n
        data = n.component_data[ComponentType.FULL]
        data.value = torch.arange(len(tokens)) if device else None
        data.host_value = torch.arange(len(tokens)) if host else None
        return n

    root = node(None, [], True, False)
    a = node(root, [1, 2, 3, 4], True, True)
    b = node(a, [5, 6, 7, 8], False, True)
    a.hit_count, a.component_data[ComponentType.FULL].lock_ref = 3, 1
    core = SimpleNamespace(root_node=root, _node_arena={n.id: n for n in (root, a, b)})
    snap = treeview.snapshot(SimpleNamespace(tree_core=core, page_size=4), None,
                             treeview.Query.from_dict({"prefix_ids": [1, 2, 3, 4, 5, 6, 7, 8]}))
    assert snap["core"] == "python" and snap["fields_unavailable"] == []
    na, nb = snap["nodes"]
    assert (na["id"], na["start"], na["end"], na["device"], na["host"]) == (a.id, 0, 4, True, True)
    assert (nb["parent"], nb["start"], nb["end"], nb["device"], nb["host"]) == (a.id, 4, 8, False, True)
    assert na["hit_count"] == 3 and na["lock_ref"] == 1 and nb["preview_ids"] == [5, 6, 7, 8]
    assert snap["query"]["device_tokens"] == 4 and snap["query"]["host_tokens"] == 8


def _salted_insert(core, tokens, salt=None, page_size=4):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    return core.insert_host(core.root_node_handle(None), RadixKey(array("q", tokens), cache_salt=salt),
                            torch.arange(len(tokens), dtype=torch.int64),
                            treeview._page_hashes(tokens, page_size, None, salt))


def test_a_prefix_query_never_matches_another_cache_salt():
    from sglang.srt.mem_cache.radix_cache import RadixKey
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
    from sglang.srt.mem_cache.unified_cache.unified_tree_core import UnifiedTreeNode

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    secret = list(range(100, 112))
    core = rust_core()
    _salted_insert(core, secret, salt="tenant-a")
    tc = SimpleNamespace(tree_core=core, page_size=4)

    def ask(**q):
        return treeview.snapshot(tc, None, treeview.Query.from_dict({"prefix_ids": secret, **q}))

    for other in ({}, {"cache_salt": "tenant-b"}, {"extra_key": "lora"}, {"cache_salt": ""}):
        snap = ask(**other)
        assert snap["nodes"] == [] and snap["query"]["tree_tokens"] == 0, other
    mine = ask(cache_salt="tenant-a")
    assert mine["query"]["tree_tokens"] == 12 and mine["nodes"][0]["preview_ids"] == secret

    # The Python core, through the route's parameters: same answer.
    comps = (ComponentType.FULL,)
    root = UnifiedTreeNode(comps)
    root.key = RadixKey(array("q"))
    n = UnifiedTreeNode(comps)
    n.key, n.parent = RadixKey(array("q", secret), cache_salt="tenant-a"), root
    root.children[("x",)] = n
    n.component_data[ComponentType.FULL].value = torch.arange(12)
    py = SimpleNamespace(tree_core=SimpleNamespace(root_node=root, _node_arena={root.id: root, n.id: n}), page_size=4)
    ids = ",".join(map(str, secret))
    q = treeview.Query.from_dict(endpoint.parse_params({"prefix_ids": ids}))
    assert treeview.snapshot(py, None, q)["query"]["tree_tokens"] == 0
    q = treeview.Query.from_dict(endpoint.parse_params({"prefix_ids": ids, "cache_salt": "tenant-a"}))
    assert treeview.snapshot(py, None, q)["query"]["tree_tokens"] == 12


class _SlowStore:
    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s, self.calls = inner, delay_s, []

    def exists_many(self, keys):
        self.calls.append(list(keys))
        time.sleep(self.delay_s)
        return self.inner.exists_many(keys)


def test_store_head_is_one_bounded_batch_skipped_while_reads_are_down(store):
    core = rust_core()
    prompts = [[i] * 8 + list(range(8)) for i in range(6)]  # six root branches of four pages
    for p in prompts:
        insert_host(core, p)
    ks = scheme()
    stored = [ks.object_key(h) for h in treeview._page_hashes(prompts[0], 4)]
    store.put_many([page(ks, h) for h in treeview._page_hashes(prompts[0], 4)])
    slow = _SlowStore(store, 1.0)
    backend = FakeBackend(ks, slow)
    tc = SimpleNamespace(tree_core=core, page_size=4)

    t0 = time.monotonic()
    snap = treeview.snapshot(tc, backend, treeview.Query.from_dict({"store": "head"}))
    assert time.monotonic() - t0 < 1.8  # one batch, not one per node
    assert len(snap["nodes"]) == 6 and len(slow.calls) == 1 and sorted(slow.calls[0]) == sorted(
        k for n in snap["nodes"] for k in n["object_keys"])
    assert sorted(n["store"]["present"] for n in snap["nodes"]) == [0, 0, 0, 0, 0, 4]
    assert snap["store_head"] == {"keys": 24, "checked": 24, "skipped": None}

    q = treeview.Query.from_dict({"store": "head", "prefix_ids": prompts[0]})
    slow.calls.clear()
    t0 = time.monotonic()
    snap = treeview.snapshot(tc, backend, q)
    assert time.monotonic() - t0 < 1.8  # the query's pages ride in the same batch
    assert slow.calls == [stored] and snap["query"]["store_pages_present"] == 4
    assert [n["store"]["present"] for n in snap["nodes"]] == [4]

    # A store that hangs costs the scheduler the deadline once; the next request skips it.
    hung = _SlowStore(store, treestore.STORE_HEAD_DEADLINE_S + 1.5)
    backend.store = hung
    t0 = time.monotonic()
    snap = treeview.snapshot(tc, backend, q)
    assert time.monotonic() - t0 < treestore.STORE_HEAD_DEADLINE_S + 0.8
    assert "not done" in snap["store_head"]["skipped"] and snap["query"]["store_pages_present"] is None
    assert all("present" not in n["store"] for n in snap["nodes"])
    snap = treeview.snapshot(tc, backend, q)
    assert "still running" in snap["store_head"]["skipped"] and len(hung.calls) == 1
    assert treestore._last_probe.done.wait(5)

    # Reads marked down (the cache core's negative TTL): no HEAD at all.
    slow.calls.clear()
    backend.store = slow
    backend.cache = SimpleNamespace(can_read=lambda: False)
    snap = treeview.snapshot(tc, backend, q)
    assert slow.calls == [] and "down" in snap["store_head"]["skipped"]
    assert snap["query"]["store_pages_known"] == 0 and snap["query"]["store_pages_present"] is None
