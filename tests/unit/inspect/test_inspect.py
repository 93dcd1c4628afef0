"""objectcache-inspect without a server: bucket layout, summary, verify, gc and the access
log against a real SeaweedFS; the tree snapshot on SGLang's real Rust tree core and on real
Python tree nodes; the Prometheus exporter in multiprocess mode; the endpoint's auth."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from array import array
from types import SimpleNamespace

import pytest
import torch

from sglang_objectcache import objformat
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.inspect import accesslog, bucket, cli, gc, layout, verify
from sglang_objectcache.sglang import treeview
from sglang_objectcache.keys import KeyScheme, Namespace
from sglang_objectcache.store import ObjectInfo, make_store

PREFIX = "objectcache"
GEOM = objformat.PageGeometry("mha", num_layers=2, tokens=4, row_bytes=(16, 16), dtype="bfloat16")


def scheme(model: str = "tiny", geometry: objformat.PageGeometry = GEOM, kv_shard: str = "tp0of1") -> KeyScheme:
    return KeyScheme(PREFIX, Namespace(model=model, geometry=geometry, kv_shard=kv_shard, layers="0-2", identity=model))


def page(ks: KeyScheme, page_hash: str, geometry: objformat.PageGeometry = GEOM, seed: int = 0) -> tuple[str, bytes]:
    g = geometry
    obj = bytearray(g.object_bytes)
    obj[g.header_bytes:] = bytes((seed + i) % 251 for i in range(g.payload_bytes))
    objformat.seal(g, ks.content_digest(page_hash), memoryview(obj))
    return ks.object_key(page_hash), bytes(obj)


def describe(store, ks: KeyScheme) -> None:
    store.put(ks.namespace_file, json.dumps(ks.namespace.describe()).encode(), if_absent=False)


@pytest.fixture
def store(s3_config):
    st = make_store(ObjectCacheConfig.from_dict(s3_config))
    yield st
    st.close()


def all_keys(store) -> set[str]:
    return {o.key for o in store.list("")}


# ---- layout -------------------------------------------------------------------------------


def test_classify_only_our_layout_is_ours():
    ks = scheme()
    key, _ = page(ks, "h0")
    ns = ks.namespace.digest
    content = key.rsplit("/", 1)[-1]
    assert layout.classify(key, PREFIX) == layout.Parsed(layout.PAGE, ns, content[:2], content)
    assert layout.classify(key, PREFIX).shard_ok
    assert not layout.classify(f"{PREFIX}/{ns}/zz/{content}", PREFIX).kind == layout.PAGE  # shard not hex
    assert not layout.classify(f"{PREFIX}/{ns}/00/{content}", PREFIX).shard_ok
    assert layout.classify(ks.namespace_file, PREFIX).kind == layout.NAMESPACE
    assert layout.classify(f"{PREFIX}/{ns}/_access/h-1-2-x.log", PREFIX).kind == layout.ACCESS_LOG
    for other in (f"elsewhere/{ns}/{content[:2]}/{content}", f"{PREFIX}/notes.txt", f"{PREFIX}/{ns}/README",
                  f"{PREFIX}/{ns.upper()}/{content[:2]}/{content}", f"{PREFIX}x/{ns}/_namespace.json",
                  f"{PREFIX}/{ns}/{content[:2]}/{content}.bak"):
        assert layout.classify(other, PREFIX).kind == layout.OTHER, other


# ---- store summary ------------------------------------------------------------------------


def test_store_summary_counts_namespaces_bytes_ages_and_cost(store):
    a, b = scheme("model-a"), scheme("model-b")
    pages_a = [page(a, f"a{i}") for i in range(5)]
    pages_b = [page(b, f"b{i}") for i in range(2)]
    store.put_many(pages_a + pages_b)
    describe(store, a)
    describe(store, b)
    store.put(f"{PREFIX}/notes.txt", b"someone else's")
    store.put("outside/x", b"not under the prefix")
    log = accesslog.AccessLog(store, a.namespace_prefix)
    log.record([pages_a[0][0], pages_a[1][0]])
    assert log.flush()

    s = bucket.scan(store, PREFIX)
    access = {d: accesslog.read(store, layout.namespace_prefix(PREFIX, d))[0] for d in s.namespaces}
    summary = bucket.summarize(s, access, price_gb_month=100.0)
    rows = {r["namespace"]: r for r in summary["namespaces"]}
    ra, rb = rows[a.namespace.digest], rows[b.namespace.digest]
    assert (ra["model"], ra["pages"], ra["bytes"], ra["tokens"]) == ("model-a", 5, 5 * GEOM.object_bytes, 20)
    assert (rb["model"], rb["pages"], rb["bytes"]) == ("model-b", 2, 2 * GEOM.object_bytes)
    assert ra["problem"] is None and ra["page_tokens"] == 4 and ra["dtype"] == "bfloat16"
    assert ra["written_age"]["<1h"] == 5 and sum(ra["written_age"].values()) == 5
    assert ra["access_logs"] == 1 and ra["pages_read_since_write"] == 2
    assert summary["other_objects"] == 1  # notes.txt; "outside/x" is not even listed
    assert summary["total_bytes"] == 7 * GEOM.object_bytes
    assert summary["usd_per_month"] == pytest.approx(7 * GEOM.object_bytes / 1e9 * 100.0, abs=1e-4)


def test_namespace_description_is_checked_against_its_digest(store):
    ks = scheme()
    store.put_many([page(ks, "h0")])
    wrong = {**ks.namespace.describe(), "identity": "someone-else"}
    store.put(ks.namespace_file, json.dumps(wrong).encode())
    s = bucket.scan(store, PREFIX)
    assert "describes namespace" in s.namespaces[ks.namespace.digest].description_error
    assert s.namespaces[ks.namespace.digest].geometry is None


# ---- verify -------------------------------------------------------------------------------


def test_verify_finds_planted_problems_and_repair_deletes_exactly_them(store):
    ks = scheme()
    good = [page(ks, f"g{i}", seed=i) for i in range(6)]
    store.put_many(good)
    describe(store, ks)
    corrupt_key, body = page(ks, "corrupt")
    body = bytearray(body)
    body[GEOM.layer_offset(1) + 3] ^= 0xFF  # one payload byte of layer 1
    truncated_key, body2 = page(ks, "truncated")
    misplaced_key = ks.object_key("somewhere-else")  # another page's intact bytes under this key
    content = good[0][0].rsplit("/", 1)[-1]
    wrong_shard = f"{ks.namespace_prefix}00/{content}" if not content.startswith("00") else \
        f"{ks.namespace_prefix}01/{content}"
    other_geom = objformat.PageGeometry("mha", 2, 8, (16, 16), "bfloat16")
    orphan_key, orphan = page(ks, "orphan", geometry=other_geom)  # sound, but not this namespace's shape
    store.put_many([(corrupt_key, bytes(body)), (truncated_key, body2[:-10]), (misplaced_key, good[1][1]),
                    (wrong_shard, good[0][1]), (orphan_key, orphan)])
    # A namespace without a description is checked against the objects' own headers only.
    lone = scheme("no-description")
    lone_pages = [page(lone, "l0"), page(lone, "l1")]
    store.put_many(lone_pages)
    foreign = [f"{PREFIX}/notes.txt", f"{PREFIX}/{ks.namespace.digest}/README", "elsewhere/obj"]
    store.put_many([(k, b"not ours") for k in foreign])
    before = all_keys(store)

    s = bucket.scan(store, PREFIX)
    report = verify.verify(store, s, batch=3)
    found = {f.key: f.problem for f in report.findings}
    assert found == {corrupt_key: "corrupt", truncated_key: "corrupt", misplaced_key: "misplaced",
                     wrong_shard: "misplaced", orphan_key: "orphaned"}
    assert report.checked == 6 + 5 + 2 and report.ok == 6 + 2
    assert list(report.unverified_namespaces) == [lone.namespace.digest]
    assert "layer 1 checksum" in next(f.detail for f in report.findings if f.key == corrupt_key)

    fixed = verify.repair(store, report, PREFIX)
    # Proven by the store: the stored bytes fail the checks against what the key must hold
    # (the namespace's geometry, the key's content id). A wrong shard directory proves
    # nothing about the bytes: reported, kept.
    assert set(fixed.deleted) == set(found) - {wrong_shard} and fixed.count == 4
    assert "layer 1 checksum" in fixed.proofs[corrupt_key] and "another key" in fixed.proofs[misplaced_key]
    assert "stored size" in fixed.proofs[truncated_key] and "stored size" in fixed.proofs[orphan_key]
    assert fixed.kept == {wrong_shard: "not proven"}
    assert all_keys(store) == before - set(fixed.deleted)
    again = verify.verify(store, bucket.scan(store, PREFIX))
    assert [(f.key, f.problem) for f in again.findings] == [(wrong_shard, "misplaced")] and again.ok == 8


def test_repair_refuses_anything_but_page_objects(store):
    bad = verify.Report(1, 0, 0, (verify.Finding(f"{PREFIX}/notes.txt", "corrupt", "x"),))
    store.put(f"{PREFIX}/notes.txt", b"keep me")
    with pytest.raises(ValueError, match="refusing"):
        verify.repair(store, bad, PREFIX)
    assert store.get(f"{PREFIX}/notes.txt") == b"keep me"


def test_verify_cli_exit_status_and_json(store, s3_config, capsys):
    ks = scheme()
    good = [page(ks, f"g{i}") for i in range(3)]
    key, body = page(ks, "bad")
    store.put_many(good + [(key, body[:-1] + bytes([body[-1] ^ 1]))])
    describe(store, ks)
    cfg = json.dumps(s3_config)
    assert cli.main(["verify", "--config", cfg, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["by_problem"] == {"corrupt": 1, "misplaced": 0, "orphaned": 0, "unsupported": 0} and out["ok"] == 3
    assert cli.main(["verify", "--config", cfg, "--repair", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["repaired"] == 1 and [f["repair"] for f in out["findings"]] == ["deleted"]
    assert "checksum" in out["repair"]["deleted"][key] and out["repair"]["kept"] == {}
    assert store.get(key) is None and all(store.get(k) is not None for k, _ in good)


def run_inspect(*args: str) -> subprocess.CompletedProcess:
    """objectcache-inspect as a user runs it: the installed console script, in its own process."""
    exe = os.path.join(os.path.dirname(sys.executable), "objectcache-inspect")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sglang_objectcache.inspect.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_repair_keeps_objects_of_another_format_version(store, s3_config, tmp_path):
    """B3: an object whose header says format version 2 (or a kind code this code does not
    know) is another deployment's, not corrupt: `verify --repair` reports it as unsupported
    and never deletes it."""
    ks = scheme()
    good = [page(ks, f"g{i}", seed=i) for i in range(3)]
    v2_key, body = page(ks, "newer")
    v2 = bytearray(body)
    v2[4:6] = struct.pack("<H", 2)  # the u16 version right after the magic
    kind_key, body = page(ks, "new-kind")
    odd_kind = bytearray(body)
    odd_kind[6] = 9  # a kind code this version does not know
    store.put_many(good + [(v2_key, bytes(v2)), (kind_key, bytes(odd_kind))])
    describe(store, ks)
    cfg = tmp_path / "store.json"
    cfg.write_text(json.dumps(s3_config))

    r = run_inspect("verify", "--config", f"@{cfg}", "--repair", "--json")
    assert r.returncode == 0, r.stderr  # unsupported objects are not problems to fix
    out = json.loads(r.stdout)
    found = {f["key"]: f for f in out["findings"]}
    assert set(found) == {v2_key, kind_key}
    assert found[v2_key]["problem"] == "unsupported" and "format version 2" in found[v2_key]["detail"]
    assert found[kind_key]["problem"] == "unsupported"
    assert out["by_problem"]["unsupported"] == 2 and out["ok"] == 3 and out["repaired"] == 0
    assert store.get(v2_key) == bytes(v2) and store.get(kind_key) == bytes(odd_kind)
    assert all(store.get(k) == b for k, b in good)

    r = run_inspect("verify", "--config", f"@{cfg}", "--repair")  # what a person sees
    assert r.returncode == 0, r.stderr
    assert "2 unsupported" in r.stdout and "unsupported (kept)" in r.stdout and "deleted 0" in r.stdout
    assert store.get(v2_key) == bytes(v2)


class _Recording:
    """The real store, recording every read verify and repair make."""

    def __init__(self, store, mangle: bool = False):
        self._store, self._mangle = store, mangle
        self.ranges: list[tuple[str, int, int]] = []
        self.whole: list[str] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get_many(self, keys):
        self.whole.extend(keys)
        return self._store.get_many(keys)

    def get_ranges(self, reqs):
        self.ranges.extend(reqs)
        out = self._store.get_ranges(reqs)
        if self._mangle:  # a body damaged on the way, every time: the store holds good bytes
            out = [b if b is None or isinstance(b, Exception) else
                   bytes(b)[:-1] + bytes([bytes(b)[-1] ^ 0x01]) for b in out]
        return out


def test_repair_deletes_only_what_the_store_proves_corrupt_and_reads_are_bounded(store):
    ks = scheme()
    good = [page(ks, f"g{i}", seed=i) for i in range(4)]
    flipped_key, body = page(ks, "flipped")
    flipped = bytearray(body)
    flipped[GEOM.layer_offset(0) + 5] ^= 0x10  # one payload bit, in the store
    extended_key, body = page(ks, "extended")
    extended = body + b"\0" * (1 << 20)  # 1 MiB too long: verify must not read it all
    empty_key, _ = page(ks, "empty")
    rewritten_key, rewritten = page(ks, "rewritten")
    store.put_many(good + [(flipped_key, bytes(flipped)), (extended_key, extended), (empty_key, b""),
                           (rewritten_key, rewritten[:-1] + bytes([rewritten[-1] ^ 1]))])
    describe(store, ks)
    # A namespace without a description: its objects are bounded by their own headers.
    lone = scheme("no-description")
    lone_pages = [page(lone, "l0"), page(lone, "l1")]
    store.put_many(lone_pages)

    rec = _Recording(store)
    report = verify.verify(rec, bucket.scan(store, PREFIX), batch=3)
    found = {f.key: f.problem for f in report.findings}
    assert found == {flipped_key: "corrupt", extended_key: "corrupt", empty_key: "corrupt", rewritten_key: "corrupt"}
    assert report.ok == 4 + 2
    assert rec.whole == []  # no unbounded GET
    assert all(end <= GEOM.object_bytes + 1 for _, _, end in rec.ranges)
    assert report.bytes_read <= (len(good) + 4 + 2) * (GEOM.object_bytes + 1)

    # Between the run and the repair, the last one is written again, sound: not proven, kept.
    store.put(rewritten_key, rewritten, if_absent=False)
    rec.ranges.clear()
    fixed = verify.repair(rec, report, PREFIX)
    assert set(fixed.deleted) == {flipped_key, extended_key, empty_key}
    assert fixed.kept == {rewritten_key: "not proven"}
    assert rec.whole == [] and all(end <= GEOM.object_bytes for _, _, end in rec.ranges)
    assert store.get(flipped_key) is None and store.get(extended_key) is None and store.get(empty_key) is None
    assert store.get(rewritten_key) == rewritten
    for k, b in good + lone_pages:  # sound objects are never deleted
        assert store.get(k) == b


def test_repair_keeps_an_object_damaged_only_on_the_way(store):
    """Every read returns mangled bytes (a proxy in front of a sound store): verify reports
    the objects, but the store's ETag says it holds other bytes, so nothing is deleted."""
    ks = scheme()
    good = [page(ks, f"g{i}", seed=i) for i in range(3)]
    store.put_many(good)
    describe(store, ks)
    mangled = _Recording(store, mangle=True)
    report = verify.verify(mangled, bucket.scan(store, PREFIX))
    assert {f.problem for f in report.findings} == {"corrupt"} and len(report.findings) == 3
    fixed = verify.repair(mangled, report, PREFIX)
    assert fixed.deleted == () and fixed.kept == {k: "not proven" for k, _ in good}
    assert all(store.get(k) == b for k, b in good)


# ---- access log and gc --------------------------------------------------------------------


def test_access_log_is_one_object_per_server_rewritten_with_its_reads(store):
    ks = scheme()
    log = accesslog.AccessLog(store, ks.namespace_prefix)
    assert log.flush() and store.get(log.key) == b""  # written empty at startup
    assert not log.flush()  # no reads since: no request
    k1, k2, k3 = ks.object_key("a"), ks.object_key("b"), ks.object_key("c")
    c1, c2, c3 = (k.rsplit("/", 1)[-1] for k in (k1, k2, k3))
    log.record([k1, k2], now=100.0)
    log.record([k1], now=200.0)
    assert log.flush()
    log.record([k2], now=150.0)
    assert log.flush()
    assert layout.classify(log.key, PREFIX).kind == layout.ACCESS_LOG
    other = accesslog.AccessLog(store, ks.namespace_prefix, limit=2)  # another server
    other.record([k3], now=50.0)
    other.record([k2], now=300.0)
    other.record([k1], now=60.0)
    other.flush()  # over its limit: forgets its oldest read (k3)
    reads, logs = accesslog.read(store, ks.namespace_prefix)
    # a read is stamped with the end of its second (its first page; one µs less per position)
    assert reads == pytest.approx({c1: 201 - 1e-6, c2: 301 - 1e-6}) and sorted(logs) == sorted([log.key, other.key])
    assert accesslog.parse(b"junk\n" + c1.encode() + b"\tnope\n" + c2.encode() + b"\t7\n") == {c2: 7.0}


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


def test_size_and_duration_parsing():
    assert cli.parse_size("10GiB") == 10 * 2**30 and cli.parse_size("500MB") == 500 * 10**6
    assert cli.parse_size("1234") == 1234 and cli.parse_duration("7d") == 7 * 86400
    assert cli.parse_duration("90") == 90 and cli.parse_duration("30m") == 1800


# ---- tree snapshot ------------------------------------------------------------------------


def rust_core(page_size: int = 4):
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.rust_tree_core.adapter import RustUnifiedTreeCore
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    core = RustUnifiedTreeCore(CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=None,
                                               page_size=page_size, tree_components=(ComponentType.FULL,)))
    core.set_hicache_enabled()
    return core


def insert_host(core, tokens: list[int], page_size: int = 4):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    hashes = treeview._page_hashes(tokens, page_size)
    return core.insert_host(core.root_node_handle(None), RadixKey(array("q", tokens)),
                            torch.arange(len(tokens), dtype=torch.int64), hashes)


def insert_device(core, tokens: list[int]):
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    step = core.begin_insert(InsertParams(key=RadixKey(array("q", tokens)),
                                          value=torch.arange(len(tokens), dtype=torch.int64)))
    while step.result is None:
        step = core.resume_insert()
    core.end_insert()
    return step.result


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
    treeview.note_ids(core, *handles)  # what the plugin's hook on insert_host does
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


# ---- endpoint: parameters and auth ----------------------------------------------------------


def test_endpoint_parameters_are_validated_and_capped():
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    class Tok:
        def encode(self, text):
            return [len(w) for w in text.split()]

    assert endpoint.parse_params({"prefix": "ab c", "max_nodes": "7", "keys": "false"}, Tok()) == \
        {"prefix_ids": [2, 1], "max_nodes": 7, "keys": False}
    assert endpoint.parse_params({"prefix_ids": "1,2,3"})["prefix_ids"] == [1, 2, 3]
    for bad in ({"max_nodes": "x"}, {"store": "all"}, {"prefix_ids": "1,a"}):
        with pytest.raises(ValueError):
            endpoint.parse_params(bad)
    q = treeview.Query.from_dict({"max_nodes": 10**9, "max_bytes": 10**12, "preview_tokens": 10**6})
    assert (q.max_nodes, q.max_bytes, q.preview_tokens) == (treeview.MAX_NODES_CAP, treeview.MAX_BYTES_CAP,
                                                            treeview.PREVIEW_TOKENS_CAP)


def test_endpoint_follows_sglang_admin_key_convention():
    """SGLang's own auth middleware, our route: with --admin-api-key the key is required."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sglang.srt.utils.auth import add_api_key_middleware

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    app = FastAPI()
    app.add_api_route(endpoint.ROUTE, endpoint.tree_endpoint, methods=["GET"])
    add_api_key_middleware(app, api_key="user-key", admin_api_key="admin-key")
    with TestClient(app) as c:
        assert c.get(endpoint.ROUTE).status_code == 401
        assert c.get(endpoint.ROUTE, headers={"Authorization": "Bearer user-key"}).status_code == 401
        # Past auth, this bare app has no SGLang behind it: 503 "not ready", not 401.
        assert c.get(endpoint.ROUTE, headers={"Authorization": "Bearer admin-key"}).status_code == 503
        # Read-only: no other method is routed.
        assert c.post(endpoint.ROUTE, headers={"Authorization": "Bearer user-key"}).status_code == 405


def test_previews_are_decoded_or_withheld():
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    class Tok:
        def decode(self, ids):
            return "-".join(map(str, ids))

    tree = {"nodes": [{"preview_ids": [1, 2]}, {"preview_ids": None}]}
    assert [n["preview"] for n in endpoint.decorate(json.loads(json.dumps(tree)), Tok(), False)["nodes"]] == ["1-2", None]
    hidden = endpoint.decorate(json.loads(json.dumps(tree)), Tok(), True)
    assert [n["preview"] for n in hidden["nodes"]] == [None, None] and "admin-api-key" in hidden["redacted"]


# ---- metrics ------------------------------------------------------------------------------

_METRICS_SCRIPT = r"""
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from sglang_objectcache import metrics
from sglang_objectcache.stats import Stats

class Backend:
    def __init__(self):
        self.stats = Stats()

class Linker:
    queue_depth = 5

b, l = Backend(), Linker()
l.stats = b.stats  # one Stats seen through two instances is counted once
exp = metrics.Exporter(metrics.Metrics(), instances=lambda: [b, l])
b.stats.inc("pages_hit", 4); b.stats.inc("bytes_read", 4096); b.stats.miss("corrupt", 2)
b.stats.inc("store_errors_timeout"); b.stats.inc("write_errors_server", 3); b.stats.inc("get_requests", 6)
b.stats.inc("checksum_failures"); b.stats.inc("brand_new_counter", 2)
b.stats.observe_get(0.003, 4); b.stats.observe_get(0.2, 2)
exp.export()
b.stats.inc("pages_hit", 1); b.stats.observe_get(0.003, 1)
exp.export(); exp.export()  # a repeated export adds nothing
reg = CollectorRegistry(); multiprocess.MultiProcessCollector(reg)
print(generate_latest(reg).decode())
"""


def test_metrics_exporter_in_prometheus_multiprocess_mode(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _METRICS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    samples = {}
    for line in out.splitlines():
        if line.startswith("objectcache_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["objectcache_storage_hits_total"] == 5
    assert samples["objectcache_bytes_read_total"] == 4096
    assert samples['objectcache_storage_misses_total{reason="corrupt"}'] == 2
    assert samples['objectcache_store_errors_total{kind="timeout",op="read"}'] == 1
    assert samples['objectcache_store_errors_total{kind="server",op="write"}'] == 3
    assert samples['objectcache_requests_total{op="get"}'] == 6
    assert samples["objectcache_checksum_failures_total"] == 1
    assert samples['objectcache_counter_total{name="brand_new_counter"}'] == 2
    assert samples['objectcache_get_latency_seconds_bucket{le="0.005"}'] == 5
    assert samples['objectcache_get_latency_seconds_bucket{le="0.25"}'] == 7
    assert samples["objectcache_get_latency_seconds_count"] == 7
    assert samples["objectcache_get_latency_seconds_sum"] == pytest.approx(0.003 * 5 + 0.2 * 2)
    assert samples["objectcache_scheduler_queue_depth"] == 5


# ---- tree endpoint: off by default, admin key for prompt content, namespaces (E2), one bounded
# HEAD batch (C4); gc --ttl needs a unit (H7) ------------------------------------------------


class _Registry:
    def __init__(self):
        self.calls = []

    def register(self, target, fn, kind):
        self.calls.append((target, fn))


def _objectcache_args(**kw):
    return SimpleNamespace(**{
        "hicache_storage_backend": "objectcache", "hicache_storage_backend_extra_config": None,
        "enable_unified_cache_external_linker": False, "unified_cache_external_linker_backend": None,
        "unified_cache_external_linker_config": None, "api_key": None, "admin_api_key": None, **kw})


def test_tree_route_is_off_by_default_and_only_on_objectcache_servers(tiny_model, monkeypatch):
    from fastapi import FastAPI
    from sglang.srt.entrypoints import http_server
    from sglang.srt.server_args import ServerArgs

    from sglang_objectcache.sglang import inspect_hooks as hooks, tree_endpoint as endpoint

    monkeypatch.delenv(endpoint.ENV, raising=False)
    reg = _Registry()
    hooks.register(reg)  # this (pytest) process is what the plugin takes for SGLang's HTTP process
    assert reg.calls == []

    def routes_after(server_args) -> list[str]:
        app = FastAPI()
        monkeypatch.setattr(http_server, "app", app)
        endpoint.add_routes(server_args, None, None, None, [{}], None)
        return [r.path for r in app.router.routes if r.path == endpoint.ROUTE]

    plain = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native")
    plain.resolve_once()
    assert routes_after(plain) == [] and routes_after(_objectcache_args()) == []  # no env: off

    monkeypatch.setenv(endpoint.ENV, "1")
    reg = _Registry()
    hooks.register(reg)
    assert [fn for _, fn in reg.calls] == [endpoint.add_routes]
    assert routes_after(plain) == []  # plugin installed, objectcache not used: 404
    assert routes_after(_objectcache_args()) == [endpoint.ROUTE]
    layerwise = _objectcache_args()
    layerwise.hicache_storage_backend = None
    layerwise.enable_unified_cache_external_linker = True
    layerwise.unified_cache_external_linker_backend = "dynamic"
    layerwise.unified_cache_external_linker_config = {"linker": "ObjectCacheLinker",
                                                      "linker_module_path": "sglang_objectcache.sglang.layerwise_linker"}
    assert routes_after(layerwise) == [endpoint.ROUTE]


class _TM:
    """The tokenizer manager as the route sees it: one scheduler's reply, the body it was sent."""

    def __init__(self):
        self.bodies = []
        self.tokenizer = SimpleNamespace(encode=lambda text: [len(w) for w in text.split()],
                                         decode=lambda ids: "-".join(map(str, ids)))

    async def dumper_control(self, req):
        self.bodies.append(dict(req.body))
        tree = {"nodes": [{"id": 1, "preview_ids": [1, 2, 3], "object_keys": ["k"]}]}
        return [SimpleNamespace(success=True, response=[tree], error=None)]


def _client(monkeypatch, api_key, admin_api_key):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sglang.srt import runtime_context
    from sglang.srt.entrypoints import http_server
    from sglang.srt.utils.auth import add_api_key_middleware

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    tm = _TM()
    monkeypatch.setattr(http_server, "get_global_state", lambda: SimpleNamespace(tokenizer_manager=tm))
    monkeypatch.setattr(runtime_context, "get_serving",
                        lambda: SimpleNamespace(api_key=api_key, admin_api_key=admin_api_key))
    app = FastAPI()
    app.add_api_route(endpoint.ROUTE, endpoint.tree_endpoint, methods=["GET"])
    add_api_key_middleware(app, api_key=api_key, admin_api_key=admin_api_key)
    return TestClient(app), tm


def test_tree_with_only_api_key_refuses_prefix_queries_and_previews(monkeypatch):
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    user = {"Authorization": "Bearer user-key"}
    c, tm = _client(monkeypatch, "user-key", None)
    with c:
        for q in ({"prefix_ids": "1,2,3,4"}, {"prefix": "is this prompt cached"}):
            r = c.get(endpoint.ROUTE, params=q, headers=user)
            assert r.status_code == 403 and "admin-api-key" in r.json()["error"]
        assert tm.bodies == []  # refused before the scheduler is asked
        r = c.get(endpoint.ROUTE, params={"preview_tokens": "24", "keys": "true"}, headers=user)
        assert r.status_code == 200
        assert tm.bodies[-1]["preview_tokens"] == 0 and tm.bodies[-1]["keys"] is False
        (node,) = r.json()["trees"][0]["nodes"]
        assert node["preview"] is None and "object_keys" not in node
        assert "admin-api-key" in r.json()["trees"][0]["redacted"]

    c, tm = _client(monkeypatch, None, None)  # no key at all: prompt content needs the admin key too
    with c:
        assert c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4"}).status_code == 403
        assert c.get(endpoint.ROUTE).json()["trees"][0]["nodes"][0]["preview"] is None

    c, tm = _client(monkeypatch, "user-key", "admin-key")
    with c:
        assert c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4"}, headers=user).status_code == 401
        r = c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4", "cache_salt": "t1"},
                  headers={"Authorization": "Bearer admin-key"})
        assert r.status_code == 200 and r.json()["trees"][0]["nodes"][0]["preview"] == "1-2-3"
        assert tm.bodies[-1]["prefix_ids"] == [1, 2, 3, 4] and tm.bodies[-1]["cache_salt"] == "t1"


def test_tree_scheduler_hook_applies_the_same_rule(monkeypatch):
    """SGLang's /dumper/{method} (DUMPER_SERVER_PORT=reuse) reaches the scheduler hook directly."""
    from sglang.srt.managers.io_struct import DumperControlReqInput

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    core = rust_core()
    insert_host(core, list(range(8)))
    sent, passed = [], []
    sched = SimpleNamespace(
        tree_cache=SimpleNamespace(tree_core=core, page_size=4), dp_rank=0,
        server_args=_objectcache_args(api_key="user-key"),
        ipc_channels=SimpleNamespace(send_to_tokenizer=SimpleNamespace(send_output=lambda out, req: sent.append(out))))

    def original(self, req):
        passed.append(req)

    ask = DumperControlReqInput(method=endpoint.METHOD, body={"prefix_ids": list(range(8))})
    monkeypatch.delenv(endpoint.ENV, raising=False)
    endpoint.scheduler_dispatch(original, sched, ask)
    assert passed == [ask] and sent == []  # off: SGLang's own dumper answers (unknown method)

    monkeypatch.setenv(endpoint.ENV, "1")
    endpoint.scheduler_dispatch(original, sched, ask)
    assert not sent[-1].success and "admin-api-key" in sent[-1].error
    endpoint.scheduler_dispatch(original, sched, DumperControlReqInput(method=endpoint.METHOD, body={}))
    (snap,) = sent[-1].response
    assert sent[-1].success and all(n["preview_ids"] is None for n in snap["nodes"]) and snap["nodes"]

    sched.server_args = _objectcache_args(api_key="user-key", admin_api_key="admin-key")
    endpoint.scheduler_dispatch(original, sched, ask)
    assert sent[-1].success and sent[-1].response[0]["query"]["tree_tokens"] == 8

    sched.server_args.hicache_storage_backend = "file"  # not an objectcache server
    endpoint.scheduler_dispatch(original, sched, ask)
    assert passed[-1] is ask and len(passed) == 2


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
    hung = _SlowStore(store, treeview.STORE_HEAD_DEADLINE_S + 1.5)
    backend.store = hung
    t0 = time.monotonic()
    snap = treeview.snapshot(tc, backend, q)
    assert time.monotonic() - t0 < treeview.STORE_HEAD_DEADLINE_S + 0.8
    assert "not done" in snap["store_head"]["skipped"] and snap["query"]["store_pages_present"] is None
    assert all("present" not in n["store"] for n in snap["nodes"])
    snap = treeview.snapshot(tc, backend, q)
    assert "still running" in snap["store_head"]["skipped"] and len(hung.calls) == 1
    assert treeview._last_probe.done.wait(5)

    # Reads marked down (the cache core's negative TTL): no HEAD at all.
    slow.calls.clear()
    backend.store = slow
    backend.cache = SimpleNamespace(can_read=lambda: False)
    snap = treeview.snapshot(tc, backend, q)
    assert slow.calls == [] and "down" in snap["store_head"]["skipped"]
    assert snap["query"]["store_pages_known"] == 0 and snap["query"]["store_pages_present"] is None


def test_gc_ttl_needs_a_unit(capsys):
    for text, seconds in (("7d", 7 * 86400), ("12h", 12 * 3600), ("30m", 1800), ("45s", 45)):
        assert cli.parser().parse_args(["gc", "--ttl", text]).ttl == seconds
    for bare in ("7", "0.5"):
        with pytest.raises(SystemExit) as e:
            cli.main(["gc", "--bucket", "b", "--ttl", bare, "--delete"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--ttl" in err and "unit" in err and f"{bare}d" in err
