"""objectcache-inspect's terminal output from plain data: units, the tree view, the gc plan."""

from __future__ import annotations

from rich.console import Console

from sglang_objectcache.inspect import gc, render


def text(renderables: list) -> str:
    console = Console(record=True, width=200, color_system=None)
    render.show(console, renderables)
    return console.export_text()


def test_sizes_durations_and_ages_are_in_human_units():
    assert [render.size(n) for n in (None, 512, 1536, 3 * 2**30)] == ["-", "512 B", "1.5 KiB", "3.0 GiB"]
    assert [render.duration(s) for s in (45, 1800, 7 * 86400)] == ["45s", "30m", "7d"]
    assert render.ago(None) == "-" and render.ago(1000.0, now=1000.0 + 5400) == "1.5h ago"


def test_tree_shows_tiers_store_presence_and_keys_under_the_namespace():
    node = dict(id=7, parent=1, start=0, end=8, pages=2, preview="hello   world", tokens_known=True,
                device=True, host=False, store={"pages": 2, "known": 1, "present": 2},
                object_keys=["oc/ns/ab/k1", "oc/ns/cd/k2", "oc/ns/ef/k3"])
    withheld = dict(node, id=8, preview=None, store=None, object_keys=[])
    reply = {"trees": [{"core": "rust", "page_size": 4, "roots": [1], "nodes": [node, withheld],
                        "totals": {"nodes": 2, "tokens": 16, "device_tokens": 8, "host_tokens": 0},
                        "store": {"bucket": "b", "namespace_prefix": "oc/ns/"}, "truncated": "max_nodes=2",
                        "redacted": "previews need the admin-api-key"}]}
    out = text(render.tree(reply))
    assert "2 nodes, 16 tokens: GPU 8, host 0" in out and "s3://b/oc/ns/" in out
    assert "#7 [0, 8) 2p  'hello world'" in out and "GPU ●" in out and "host ○" in out
    assert "store 2/2" in out and "keys ab/k1 cd/k2 +1 more" in out  # relative to the prefix
    assert "(text withheld)" in out and "store -" in out
    assert "output cut at max_nodes=2" in out and "previews need the admin-api-key" in out
    assert "keys" not in text(render.tree(reply, show_keys=False))


def test_gc_plan_says_what_a_dry_run_and_a_delete_did():
    pages = [gc.Page(k, 100, t) for k, t in (("a", 0.0), ("b", 500.0), ("c", 990.0))]
    policy = gc.Policy(ttl_s=600, max_bytes=100)
    plan = gc.plan(pages, policy, now=1000.0)
    dry = text(render.gc(plan, policy))
    assert "gc (TTL 10m, cap 100 B): 3 pages, 300 B; delete 2 (200 B), keep 100 B" in dry
    assert "dry run: nothing deleted" in dry
    done = text(render.gc(plan, policy, applied=2, compacted=[("ns1", "ns1/_access/new.log", 3)]))
    assert "deleted 2 page object(s)" in done and "ns1: access logs compacted: 3 merged into" in done
