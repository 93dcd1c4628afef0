"""gc: the plan (TTL, then capacity, least recently used first; groups that tie go together)
and the CLI against a real SeaweedFS."""

from __future__ import annotations

import json
import math
import time

import pytest
from inspect_support import GEOM, PREFIX, all_keys, describe, page, scheme

from sglang_objectcache.inspect import accesslog, bucket, cli, gc, layout
from sglang_objectcache.store import ObjectInfo


def test_pages_read_together_age_from_the_prefix_tail(store):
    """A cap must trim a prefix from its end: its head page is what makes the rest reachable."""
    ks = scheme()
    chain = [ks.object_key(f"chain{i}") for i in range(4)]
    log = accesslog.AccessLog(store, ks.namespace_prefix)
    log.record(chain, now=1000.0)  # one batch_get_v1, pages in prefix order
    log.flush()
    reads, _ = accesslog.read(store, ks.namespace_prefix)
    pages = [gc.Page(k, 10, reads[k.rsplit("/", 1)[-1]]) for k in sorted(chain)]  # key order is random
    assert [v.key for v in gc.plan(pages, gc.Policy(max_bytes=20), now=1001.0).victims] == chain[:1:-1]


def test_gc_plan_ttl_then_capacity_least_recently_used_first():
    pages = [gc.Page(k, 10, t) for k, t in (("a", 500), ("b", 400), ("c", 300), ("d", 0), ("e", 0), ("f", 10))]
    p = gc.plan(pages, gc.Policy(ttl_s=800, max_bytes=10), now=1000)
    assert [(v.key, v.reason) for v in p.victims] == [("d", "ttl"), ("e", "ttl"), ("f", "ttl"),
                                                     ("c", "capacity"), ("b", "capacity")]
    assert (p.freed_bytes, p.kept_bytes) == (50, 10)
    assert gc.plan(pages, gc.Policy(max_bytes=60), now=1000).victims == ()
    assert [v.key for v in gc.plan(pages, gc.Policy(ttl_s=600), now=1000).victims] == ["d", "e", "f", "c"]
    with pytest.raises(ValueError):
        gc.Policy()


def test_gc_takes_pages_that_tie_together():
    # H8: pages written together and never read tie on their last use. A cap cutting into
    # them by key would keep a random part of a prefix (holes: the pages past a hole are
    # unreachable); the whole group goes instead.
    together = [gc.Page(k, 10, 100.0, written=100.0) for k in ("d4", "a1", "c3", "b2")]
    pages = [gc.Page("z", 10, 50.0, written=50.0), *together, gc.Page("n1", 10, 200.0), gc.Page("n2", 10, 300.0)]
    p = gc.plan(pages, gc.Policy(max_bytes=45), now=1000)
    assert [v.key for v in p.victims] == ["z", "a1", "b2", "c3", "d4"]
    assert p.kept_bytes == 20
    # the same last use in two families (deployments) is two groups: the older write goes first
    other = [gc.Page(k, 10, 100.0, written=90.0, family="B") for k in ("x1", "x2")]
    p = gc.plan([*together, *other], gc.Policy(max_bytes=40), now=1000)
    assert [v.key for v in p.victims] == ["x1", "x2"]


def test_gc_keeps_or_deletes_every_shard_of_a_page_together(store, s3_config, capsys):
    # H8: with TP=2 each rank stores its shard of every page in its own namespace, under a
    # key unrelated to the other's. Both ranks read the same pages in the same order, a few
    # hundred ms apart. A page with one shard gone is a miss on every rank, so a cap must
    # take both shards or neither.
    ranks = [scheme(kv_shard=f"tp{r}of2") for r in range(2)]
    t = math.floor(time.time()) + 60
    chain = [f"chain{i}" for i in range(6)]
    for r, ks in enumerate(ranks):
        store.put_many([page(ks, h, seed=i) for i, h in enumerate(chain)])
        describe(store, ks)
        log = accesslog.AccessLog(store, ks.namespace_prefix)
        log.record([ks.object_key(h) for h in chain[:3]], now=t + 0.1 + 0.3 * r)  # one batch_get_v1
        log.record([ks.object_key(h) for h in chain[3:]], now=t + 10.1 + 0.3 * r)  # a later one
        log.flush()
    cap = str(8 * GEOM.object_bytes)  # 4 of the 12 objects must go: the first batch's tail
    assert cli.main(["gc", "--config", json.dumps(s3_config), "--max-bytes", cap, "--delete", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == 4
    left = all_keys(store)
    kept = [[ks.object_key(h) in left for ks in ranks] for h in chain]
    assert kept == [[True, True]] + [[False, False]] * 2 + [[True, True]] * 3, kept


def test_gc_joins_each_page_to_its_own_size_when_a_listing_repeats_a_key():
    # H8: sizes were paired with last uses by position; a key listed twice shifted every
    # later page onto another's size.
    ks = scheme()
    a, b = ks.object_key("a"), ks.object_key("b")
    digest = ks.namespace.digest
    ns = bucket.NamespaceScan(digest, pages=[ObjectInfo(a, 100, 10.0), ObjectInfo(a, 100, 10.0),
                                             ObjectInfo(b, 7000, 20.5)])
    got = gc.candidates(bucket.Scan(PREFIX, {digest: ns}), {digest: {b.rsplit("/", 1)[-1]: 30.0}})
    assert sorted((p.key, p.size, p.last_used, p.written) for p in got) == sorted(
        [(a, 100, 10.0, 10.0), (b, 7000, 30.0, 20.5)])


def test_gc_cli_deletes_exactly_the_least_recently_used_and_compacts_logs(store, s3_config, capsys):
    ks = scheme()
    pages = [page(ks, f"p{i}", seed=i) for i in range(6)]
    store.put_many(pages)
    describe(store, ks)
    now = time.time()
    # Reads make the order total: p0 newest ... p5 oldest (all after their writes).
    log = accesslog.AccessLog(store, ks.namespace_prefix)
    for i, (key, _) in enumerate(pages):
        log.record([key], now=now + 60 - i)
    log.flush()
    foreign = [(f"{PREFIX}/notes.txt", b"x"), ("elsewhere/y", b"y")]
    store.put_many(foreign)
    cfg = json.dumps(s3_config)
    cap = str(2 * GEOM.object_bytes)

    before = all_keys(store)
    assert cli.main(["gc", "--config", cfg, "--max-bytes", cap, "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["deleted"] is None and all_keys(store) == before
    assert [v["key"] for v in dry["victims"]] == [k for k, _ in reversed(pages[2:])]

    assert cli.main(["gc", "--config", cfg, "--max-bytes", cap, "--delete", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["deleted"] == 4
    after = all_keys(store)
    assert {k for k in after if layout.classify(k, PREFIX).kind == layout.PAGE} == {pages[0][0], pages[1][0]}
    assert {k for k, _ in foreign} <= after and ks.namespace_file in after
    # The merged log now holds only the survivors' reads.
    reads, logs = accesslog.read(store, ks.namespace_prefix)
    assert len(logs) == 1 and set(reads) == {pages[0][0].rsplit("/", 1)[-1], pages[1][0].rsplit("/", 1)[-1]}
