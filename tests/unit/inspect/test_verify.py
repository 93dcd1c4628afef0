"""verify and verify --repair against a real SeaweedFS: what is found, what is deleted (only
what the store proves), how much is read; the CLI's exit status and JSON."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from inspect_support import GEOM, PREFIX, all_keys, describe, page, scheme

from sglang_objectcache import objformat
from sglang_objectcache.inspect import bucket, cli, verify


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
