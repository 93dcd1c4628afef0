"""The transports (boto3, obstore) against a real SeaweedFS: data, conditional PUT, listing,
the startup check's errors, a stalled server, and that secrets never leak into messages."""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import signal
import socket
import threading
import time
import uuid

import pytest

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import (ObjectStat, StoreError, StoreSettings, etag_matches, make_store,
                                      resolve_transport)
from sglang_objectcache.store._common import plan_ranges

TRANSPORTS = ["boto3", "obstore"]


def config(s3, bucket, transport, **extra) -> ObjectCacheConfig:
    return ObjectCacheConfig.from_dict(s3.config(bucket, transport=transport, **extra))


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def store(s3, bucket, transport):
    st = make_store(config(s3, bucket, transport))
    yield st
    st.close()


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


# --- data ----------------------------------------------------------------------------------


def test_round_trip_many_sizes(store, transport):
    assert store.name == transport
    sizes = [0, 1, 255, 4096, 65537, 256 * 1024] * 8 + [3 * 1024 * 1024 + 7, 9 * 1024 * 1024]
    items = [(f"rt/{i:03d}", blob(n, i)) for i, n in enumerate(sizes)]
    # Callers hand in bytes, bytearray or a view of a larger buffer (a host-pool page).
    items[1] = (items[1][0], bytearray(items[1][1]))
    backing = bytearray(b"x" * 100) + bytearray(items[2][1]) + bytearray(b"y" * 100)
    items[2] = (items[2][0], memoryview(backing)[100:-100])
    assert store.put_many(items) == [True] * len(items)

    got = store.get_many([k for k, _ in items] + ["rt/missing"])
    assert got[-1] is None
    for (k, v), g in zip(items, got):
        assert bytes(g) == bytes(v), k
    if transport == "obstore":  # zero-copy: Rust's buffer, never copied into bytes
        assert type(got[0]).__name__ == "Bytes"
    assert store.get("rt/missing") is None
    assert bytes(store.get(items[-1][0])) == items[-1][1]


@pytest.mark.parametrize("sign_payload", [False, True])
def test_obstore_payload_signing_either_way_still_authenticates(s3, bucket, sign_payload):
    # Unsigned payload (the default) drops only the body's SHA-256 from SigV4: the request
    # is still signed, so a wrong secret must still be refused, on a PUT as on a GET.
    data = blob(256 * 1024 + 3, 7)
    with make_store(config(s3, bucket, "obstore", sign_payload=sign_payload)) as st:
        key = f"sign/{sign_payload}/{uuid.uuid4().hex}"
        assert st.put_many([(key, data)]) == [True]
        assert bytes(st.get(key)) == data
    with make_store(config(s3, bucket, "obstore", sign_payload=sign_payload,
                           secret_access_key="wrong-" + uuid.uuid4().hex)) as st:
        (r,) = st.put_many([(f"sign/bad/{uuid.uuid4().hex}", data)])
        assert isinstance(r, StoreError) and r.kind == "auth"


def test_get_ranges_byte_exact(store):
    objs = {f"rg/{i}": blob(300_000 + i, 100 + i) for i in range(12)}
    assert all(store.put_many(list(objs.items())))
    one = objs["rg/0"]
    reqs = [
        ("rg/0", 0, 10), ("rg/0", 1000, 5000), ("rg/0", 299_000, 300_000),  # several, apart
        ("rg/0", 5000, 9000), ("rg/0", 9000, 20_000),  # adjacent to each other and to [1000, 5000)
        ("rg/0", 4000, 6000),  # overlapping two others
    ]
    reqs += [(k, 1 + j * 70_000, 1 + j * 70_000 + 4096) for k in list(objs)[1:] for j in range(4)]
    reqs += [("rg/missing", 0, 100), ("rg/0", 10, 10)]
    out = store.get_ranges(reqs)
    for (k, a, b), r in zip(reqs[:-2], out):
        assert bytes(r) == objs[k][a:b], (k, a, b)
    assert out[-2] is None
    assert isinstance(out[-1], StoreError) and out[-1].kind == "client"
    assert bytes(store.get_ranges([("rg/0", 0, len(one))])[0]) == one


def test_a_range_past_the_end_says_416(store):
    # A truncated object: the caller must tell "this object is short" (416) from a store
    # that is unwell, so the error carries the HTTP status.
    store.put("short/k", blob(100, 3))
    (r,) = store.get_ranges([("short/k", 150, 200)])
    assert isinstance(r, StoreError) and r.kind == "client", r
    assert r.status == 416 and not r.store_wide
    assert bytes(store.get_ranges([("short/k", 50, 150)])[0]) == blob(100, 3)[50:]


def test_stat_many_gives_size_and_etag(store):
    b = blob(70_000, 5)
    assert store.put_many([("st/a", b), ("st/empty", b"")]) == [True, True]
    a, empty, missing = store.stat_many(["st/a", "st/empty", "st/missing"])
    assert isinstance(a, ObjectStat) and a.size == len(b) and '"' not in a.etag
    assert empty.size == 0 and etag_matches(b"", empty.etag) is True
    assert missing is None
    assert etag_matches(b, a.etag) is True
    flipped = bytearray(b)
    flipped[1234] ^= 0x10
    assert etag_matches(flipped, a.etag) is False


def test_coalescing_plan_merges_adjacent_and_overlapping_only():
    spans, bad = plan_ranges([("a", 0, 10), ("b", 0, 5), ("a", 10, 20), ("a", 15, 18), ("a", 21, 30), ("a", 3, 3)])
    assert bad == [5]
    got = sorted((s.key, s.start, s.end, sorted(m[0] for m in s.members)) for s in spans)
    assert got == [("a", 0, 20, [0, 2, 3]), ("a", 21, 30, [4]), ("b", 0, 5, [1])]


def test_boto3_splits_a_coalesced_range_without_copying(s3, bucket):
    with make_store(config(s3, bucket, "boto3")) as st:
        st.put("c/1", blob(1000, 1))
        a, b = st.get_ranges([("c/1", 0, 100), ("c/1", 100, 300)])
        assert isinstance(a, memoryview) and a.obj is b.obj  # one GET, two views of its body
        assert len(a.obj) == 300


# --- conditional PUT -----------------------------------------------------------------------


def test_put_if_absent_keeps_the_first(store):
    first, second = blob(5000, 1), blob(5000, 2)
    assert store.put_many([("d/k", first), ("d/j", first)]) == [True, True]
    assert store.put_many([("d/k", second)]) == [False]
    assert bytes(store.get("d/k")) == first
    assert store.put("d/j", second, if_absent=False) is True  # plain overwrite
    assert bytes(store.get("d/j")) == second


def test_two_concurrent_writers_store_once(s3, bucket, transport):
    keys = [f"race/{i}" for i in range(24)]
    stores = [make_store(config(s3, bucket, transport)) for _ in range(2)]
    payloads = [blob(200_000, 10), blob(200_000, 20)]
    results: dict[int, list] = {}
    start = threading.Barrier(2)

    def writer(i):
        start.wait()
        results[i] = stores[i].put_many([(k, payloads[i]) for k in keys])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for st in stores:
        st.close()
    with make_store(config(s3, bucket, transport)) as st:
        got = st.get_many(keys)
    for j, k in enumerate(keys):
        won = [results[i][j] for i in range(2)]
        assert sorted(won) == [False, True], (k, won)
        assert bytes(got[j]) == payloads[won.index(True)]


# --- exists, list, delete ------------------------------------------------------------------


def test_exists_many(store):
    store.put_many([("e/a", b"1"), ("e/b", b"")])
    assert store.exists_many(["e/a", "e/nope", "e/b", "e"]) == [True, False, True, False]


def test_list_paginates_and_delete_many(store):
    keys = [f"ls/p/{i:05d}" for i in range(1005)]  # > 1000: a second ListObjectsV2 page
    others = ["ls/p2/x", "ls/px", "ls/q/y"]
    assert all(r is True for r in store.put_many([(k, b"ab") for k in keys + others]))

    listed = list(store.list("ls/p/"))
    assert [o.key for o in listed] == keys
    assert all(o.size == 2 and o.last_modified > time.time() - 3600 for o in listed)
    # A string prefix, as in S3, not a directory:
    assert {o.key for o in store.list("ls/p")} == set(keys) | {"ls/p2/x", "ls/px"}
    assert [o.key for o in store.list("ls/q")] == ["ls/q/y"]
    assert list(store.list("nothing/")) == []

    assert store.delete_many(keys + ["ls/never-existed"]) == len(keys) + 1
    assert [o.key for o in store.list("ls/")] == sorted(others)
    assert store.exists_many(keys[:3]) == [False] * 3
    assert store.delete_many([]) == 0


# --- the startup check ---------------------------------------------------------------------


def test_check_passes_on_a_good_bucket(store):
    store.check()


def test_check_wrong_secret(s3, bucket, transport):
    secret = "wrong-secret-" + uuid.uuid4().hex
    with make_store(config(s3, bucket, transport, secret_access_key=secret)) as st:
        with pytest.raises(StoreError) as e:
            st.check()
        assert e.value.kind == "auth"
        assert str(e.value) == (f"S3 rejected the credentials for bucket '{bucket}' at {s3.endpoint}: "
                                "SignatureDoesNotMatch (check access_key_id/secret_access_key)")
        (r,) = st.get_many(["any/key"])  # the data path says the same, without the secret
        assert isinstance(r, StoreError) and r.kind == "auth" and r.status == 403
        assert e.value.status == 403
        for text in (str(e.value), repr(e.value), str(r), repr(st)):
            assert secret not in text and s3.secret_key not in text


def test_check_unknown_access_key(s3, bucket, transport):
    with make_store(config(s3, bucket, transport, access_key_id="nobody")) as st:
        with pytest.raises(StoreError) as e:
            st.check()
    assert e.value.kind == "auth"
    assert "InvalidAccessKeyId (check access_key_id/secret_access_key)" in str(e.value)
    assert s3.secret_key not in str(e.value)


def test_check_unreachable_endpoint(s3, bucket, transport):
    port = closed_port()
    cfg = config(s3, bucket, transport, endpoint_url=f"http://127.0.0.1:{port}")
    with make_store(cfg) as st:
        t = time.monotonic()
        with pytest.raises(StoreError) as e:
            st.check()
        assert time.monotonic() - t < 5
        assert e.value.kind == "unreachable"
        assert str(e.value) == f"cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused"
        (r,) = st.get_many(["k"])
        assert isinstance(r, StoreError) and r.kind == "unreachable"


def test_check_missing_bucket_and_create(s3, transport):
    name = f"missing-{transport}-{uuid.uuid4().hex[:8]}"
    with make_store(config(s3, name, transport)) as st:
        with pytest.raises(StoreError) as e:
            st.check()
        assert e.value.kind == "no_bucket"
        assert str(e.value).startswith(f"bucket '{name}' does not exist at {s3.endpoint} (set create_bucket: true")
        st.check(create_bucket=True)
        st.check()
        assert st.put("made/it", b"ok") is True
    assert name in {b["Name"] for b in s3.client().list_buckets()["Buckets"]}
    s3.delete_bucket(name)


# --- a stalled server ----------------------------------------------------------------------


def test_paused_server_times_out_then_recovers(s3, bucket, transport):
    cfg = config(s3, bucket, transport, connect_timeout_s=0.5, read_timeout_s=0.5, retries=0,
                 max_concurrency=4)
    keys = [f"stall/{i}" for i in range(4)]
    with make_store(config(s3, bucket, transport)) as setup:  # a new bucket's first write is slow
        assert setup.put_many([(k, b"v" * 1000) for k in keys]) == [True] * 4
    with make_store(cfg) as st:
        assert all(len(r) == 1000 for r in st.get_many(keys))  # and opens the pooled connections
        s3.pause()
        time.sleep(0.2)  # let SIGSTOP reach every weed thread before the first request
        try:
            for call in (lambda: st.get_many(keys), lambda: st.exists_many(keys),
                         lambda: st.put_many([(f"stall/new{i}", b"n") for i in range(4)]),
                         lambda: st.get_ranges([(k, 0, 10) for k in keys])):
                t = time.monotonic()
                out = call()
                took = time.monotonic() - t
                assert took < 4, took  # four requests at once, 0.5 s each, no retries
                assert all(isinstance(r, StoreError) and r.kind in ("timeout", "unreachable") for r in out), out
            t = time.monotonic()
            with pytest.raises(StoreError) as e:
                st.check()
            assert time.monotonic() - t < 4
            assert e.value.kind in ("timeout", "unreachable")
        finally:
            s3.resume()
        deadline = time.monotonic() + 10
        while not all(isinstance(r, bytes | bytearray | memoryview) or type(r).__name__ == "Bytes"
                      for r in st.get_many(keys)):
            assert time.monotonic() < deadline, "store did not recover after resume"
            time.sleep(0.2)
        st.check()


# --- choosing a transport ------------------------------------------------------------------


def test_make_store_picks_a_transport(s3, bucket):
    cfg = config(s3, bucket, "auto")
    expected = "obstore" if importlib.util.find_spec("obstore") else "boto3"
    assert resolve_transport(cfg) == expected
    with make_store(cfg) as st:
        assert st.name == expected
        assert s3.secret_key not in repr(st)


@pytest.mark.skipif(importlib.util.find_spec("nixl") is not None, reason="nixl is installed here")
def test_nixl_without_nixl_says_what_is_missing(s3, bucket):
    with pytest.raises(StoreError) as e:
        make_store(config(s3, bucket, "nixl"))
    assert e.value.kind == "client"
    msg = str(e.value)
    assert "pip install nixl" in msg and "libcuobjclient.so.1" in msg and "transport: obstore or boto3" in msg
    assert s3.secret_key not in msg
    importlib.import_module("sglang_objectcache.store.nixl")  # the module itself imports without nixl


class StandInAgent:
    """NIXL is not installed here: the few agent calls `NixlObjStore._xfer` makes, with the
    transfer's states scripted, and a record of what was released."""

    def __init__(self, states):
        self.states = iter(states)
        self.released, self.deregistered = [], []

    def register_memory(self, descs, kind, backends):
        return f"reg-{kind}"

    def get_xfer_descs(self, descs, kind):
        return descs

    def initialize_xfer(self, op, local, remote, name, backends):
        return "handle"

    def transfer(self, handle):
        return next(self.states)

    def check_xfer_state(self, handle):
        state = next(self.states)
        if isinstance(state, Exception):
            raise state
        return state

    def release_xfer_handle(self, handle):
        self.released.append(handle)

    def deregister_memory(self, reg, backends):
        self.deregistered.append(reg)


def nixl_store(agent, timeout_s: float = 0.05):
    import numpy as np

    from sglang_objectcache.store.nixl import NixlObjStore

    st = object.__new__(NixlObjStore)  # its __init__ needs nixl itself
    st.settings, st.bucket, st._np = StoreSettings.of(ObjectCacheConfig(bucket="kv")), "kv", np
    st._agent, st._agent_name = agent, "a"
    st._control = type("Control", (), {"exists_many": lambda self, keys: [True] * len(keys)})()
    st._timeout_s, st._abandoned, st._warned_abandon = timeout_s, [], False
    return st


@pytest.mark.parametrize("stuck", ["in_progress", "state_unreadable"])
def test_nixl_keeps_the_memory_of_a_transfer_that_may_still_run(stuck, caplog):
    # H11: a transfer past its wait may still write into its buffer: releasing its handle
    # and deregistering (and freeing) the buffer would let it write into memory no longer
    # its. It fails, and its handle and memory are kept.
    tail = itertools.repeat("PROC") if stuck == "in_progress" else [RuntimeError("agent lost")]
    agent = StandInAgent(itertools.chain(["PROC"], tail))
    st = nixl_store(agent)
    out = st._xfer("READ", [("k/1", 0, 16), ("k/2", 0, 16)])
    assert all(isinstance(r, StoreError) for r in out), out
    assert agent.released == [] and agent.deregistered == []
    (handle, regs, memory), = st._abandoned
    assert handle == "handle" and regs == ("reg-OBJ", "reg-DRAM") and memory.nbytes == 32
    if stuck == "in_progress":  # another one: kept too, and not logged again
        st._xfer("READ", [("k/3", 0, 8)])
        assert len(st._abandoned) == 2
    assert sum("kept (leaked)" in r.getMessage() for r in caplog.records) == 1  # logged once


@pytest.mark.parametrize("end", ["DONE", "ERR"])
def test_nixl_releases_a_transfer_that_is_over(end):
    agent = StandInAgent(["PROC", "PROC", end])
    st = nixl_store(agent, timeout_s=5.0)
    out = st._xfer("READ", [("k/1", 0, 16)])
    assert agent.released == ["handle"] and agent.deregistered == ["reg-OBJ", "reg-DRAM"]
    assert st._abandoned == []
    assert isinstance(out[0], StoreError) == (end == "ERR")


def test_concurrency_is_the_users_or_the_transports_default(s3, bucket, transport):
    from sglang_objectcache.store import boto, obstore_

    default = {"boto3": boto, "obstore": obstore_}[transport].DEFAULT_CONCURRENCY
    with make_store(config(s3, bucket, transport)) as st:
        assert st.max_concurrency == default
    with make_store(config(s3, bucket, transport, max_concurrency=7)) as st:
        assert st.max_concurrency == 7


# --- credentials from the AWS chain ---------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return monkeypatch


def chain_config(s3, bucket, transport) -> ObjectCacheConfig:
    raw = s3.config(bucket, transport=transport)
    del raw["access_key_id"], raw["secret_access_key"]
    return ObjectCacheConfig.from_dict(raw)


def test_credentials_from_the_aws_chain(s3, bucket, transport, aws_env):
    aws_env.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    with make_store(chain_config(s3, bucket, transport)) as st:
        st.check()
        assert st.put("chain/k", b"from env") is True
        assert bytes(st.get("chain/k")) == b"from env"


def test_no_credentials_anywhere_is_an_auth_error(s3, bucket, transport, aws_env):
    with pytest.raises(StoreError) as e:
        with make_store(chain_config(s3, bucket, transport)) as st:
            st.check()
    assert e.value.kind == "auth"
    assert "no credentials found" in str(e.value) and "access_key_id" in str(e.value)


# --- the local test server itself --------------------------------------------------------


def test_the_local_server_gives_buckets_volumes_by_count_not_free_disk(tmp_path):
    # weed gives each bucket one volume. Left to itself it caps their count (`weed mini` at
    # free-disk / 256 MiB: a CI disk with 24 GiB free failed every PUT from the 95th bucket on,
    # HTTP 500). The count is ours to set, and a deleted bucket gives its volume back.
    from objectcache_dev.s3server import SeaweedFS

    with SeaweedFS(str(tmp_path / "sw"), max_volumes=3) as srv:
        c = srv.client()
        names = [f"vol-{i}" for i in range(4)]
        for n in names:
            srv.create_bucket(n)
        for n in names[:3]:
            c.put_object(Bucket=n, Key="k", Body=b"x")
        with pytest.raises(Exception, match="InternalError"):
            c.put_object(Bucket=names[3], Key="k", Body=b"x")
        srv.delete_bucket(names[0])
        srv.delete_bucket(names[0])  # already gone: not an error
        c.put_object(Bucket=names[3], Key="k", Body=b"x")
        assert c.get_object(Bucket=names[3], Key="k")["Body"].read() == b"x"
        # Every slot is in use now; a restart must still come up and serve what it holds.
        srv.stop()
        srv.start(timeout_s=30)
        assert srv.client().get_object(Bucket=names[3], Key="k")["Body"].read() == b"x"


def test_the_local_server_refuses_to_start_on_a_disk_it_would_not_write_to(tmp_path, monkeypatch):
    # Below its minimum free space weed turns every volume read-only, and PUTs then hang until
    # the client's timeout: a CI run spent 50 minutes in such timeouts. Starting must fail at once.
    from types import SimpleNamespace

    from objectcache_dev import s3server

    real = os.statvfs(tmp_path)
    srv = s3server.SeaweedFS(str(tmp_path / "sw"), min_free_mb=64)
    almost = (64 + 255) * 2**20 // real.f_frsize
    monkeypatch.setattr(s3server.os, "statvfs", lambda _path: SimpleNamespace(f_frsize=real.f_frsize, f_bavail=almost))
    with pytest.raises(RuntimeError, match="stops writing below 64 MiB"):
        srv.start()
    assert srv.proc is None
    monkeypatch.undo()
    with srv:
        srv.create_bucket("roomy")
        srv.client().put_object(Bucket="roomy", Key="k", Body=b"x")


def test_the_local_server_leaves_nothing_in_tmp(tmp_path):
    # weed puts a unix socket per service in /tmp and, by default, glog files there too; a
    # killed weed removes neither, and a test run used to leave hundreds behind.
    import glob

    from objectcache_dev.s3server import SeaweedFS

    with SeaweedFS(str(tmp_path / "sw"), buckets=("tidy-bucket",)) as srv:
        srv.client().put_object(Bucket="tidy-bucket", Key="k", Body=b"x")

        def ours():
            return [p for port in srv._sockets for p in glob.glob(f"/tmp/seaweedfs-*-{port}.sock")]

        first = ours()
        assert first, "weed made no socket in /tmp: this test no longer checks anything"
        # Killed outright (as a fault test does) and started again: the dead one's go too.
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        srv.proc = None
        srv.start()
        pid = srv.proc.pid
        assert [p for p in first if os.path.exists(p) and p not in ours()] == []
    assert ours() == []
    assert glob.glob(f"/tmp/weed.*.{pid}") == []  # glog names its files after the pid
    assert "s3api_server" in (tmp_path / "sw" / "weed.log").read_text()  # its log went to weed.log


def test_the_local_server_cli_stops_weed_even_when_signalled_twice(tmp_path):
    # `bash scripts/run.sh` then Ctrl-C: the CLI gets SIGINT and starts stopping weed (its own
    # session, so the terminal's signal never reaches it), then run.sh's EXIT trap sends
    # SIGTERM. That second signal used to cut the stop short: the CLI died, weed ran on
    # and kept the port, so the next run.sh could not start. The SIGINT comes right after
    # "ready at", which once landed before the CLI's try and skipped the stop altogether.
    import subprocess
    import sys

    from objectcache_dev.s3server import free_port

    port, data = free_port(), str(tmp_path / "sw")
    proc = subprocess.Popen([sys.executable, "-m", "objectcache_dev.s3server", "start", "--dir", data,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "ready at" in proc.stdout.readline()
        assert len(_running_with(data)) == 2, "the CLI and weed, both named by --dir"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert _running_with(data) == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        for pid in _running_with(data):
            os.kill(pid, signal.SIGKILL)


def _running_with(arg: str) -> list[int]:
    """Live processes with `arg` in their command line (a zombie's is empty)."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if arg in open(f"/proc/{d}/cmdline").read():
                out.append(int(d))
        except OSError:
            pass
    return out


# --- the per-call deadline (C1) ------------------------------------------------------------


@pytest.fixture
def stalled_endpoint():
    """An endpoint whose kernel completes every connect (the backlog) and that never reads
    or answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def test_no_call_outlasts_request_deadline_s(s3, bucket, transport, stalled_endpoint):
    # Without the deadline: 4 attempts of 1 s reads each (and backoff) per call, > 4 s.
    cfg = ObjectCacheConfig.from_dict({**s3.config(bucket), "endpoint_url": stalled_endpoint, "transport": transport,
                                       "connect_timeout_s": 0.5, "read_timeout_s": 1.0, "retries": 3,
                                       "request_deadline_s": 1.5, "http_get": False, "http_put": False})
    with make_store(cfg) as st:
        for call in (lambda: st.get_many(["d/1"]), lambda: st.exists_many(["d/1"]),
                     lambda: st.put_many([("d/2", b"v" * 100)]), lambda: st.get_ranges([("d/1", 0, 10)])):
            t = time.monotonic()
            out = call()
            took = time.monotonic() - t
            assert took < 2.5, took
            assert isinstance(out[0], StoreError) and out[0].kind == "timeout", out


def test_obstore_cuts_a_trickling_body_at_the_deadline(s3, bucket):
    # A body one byte every 50 ms never trips a read timeout; object_store's own cap was
    # max(30 s, connect + 3 x read).
    from trickle_support import endless_body

    srv = endless_body(1000)
    cfg = ObjectCacheConfig.from_dict(srv.config(transport="obstore", connect_timeout_s=0.5, read_timeout_s=1.0,
                                                 retries=1, request_deadline_s=1.5, http_get=False))
    try:
        with make_store(cfg) as st:
            t = time.monotonic()
            out = st.get_many(["d/1"])
            took = time.monotonic() - t
            assert took < 2.5, took
            assert isinstance(out[0], StoreError) and out[0].kind == "timeout", out
    finally:
        srv.close()


def test_boto3_makes_only_the_retries_that_fit_the_deadline():
    from sglang_objectcache.store.boto_client import deadline_settings

    def cfg(**kw):
        return StoreSettings.of(ObjectCacheConfig(bucket="kv", **kw))

    assert deadline_settings(cfg()) == (2.5, 1)  # 1 + 2.5, and a retry would not fit 4 s
    assert deadline_settings(cfg(request_deadline_s=8.0)) == (2.5, 2)
    assert deadline_settings(cfg(connect_timeout_s=0.5, read_timeout_s=30.0, retries=0)) == (3.5, 1)
    for kw in ({}, {"retries": 5, "read_timeout_s": 0.2}, {"request_deadline_s": 8.0, "retries": 3}):
        c = cfg(**kw)
        read_s, attempts = deadline_settings(c)
        stalls = attempts * (c.connect_timeout_s + read_s) + sum(2 ** n for n in range(attempts - 1))
        assert stalls <= c.request_deadline_s and attempts <= c.retries + 1, (kw, read_s, attempts)
