"""objectcache's own GET client (store/httpget.py) against a real SeaweedFS, and its fallback
to obstore for everything it does not expect."""

from __future__ import annotations

import asyncio
import datetime as _dt
import random
import socket
import time
from types import SimpleNamespace

import pytest

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import INTO, Receiver, StoreError, StoreSettings, http1, httpget
from sglang_objectcache.store.obstore_ import ObstoreStore
from sglang_objectcache.store.settings import deadline_s

from http_support import blob, silent_store, store
from trickle_support import endless_body, endless_headers


def settings_of(raw: dict) -> StoreSettings:
    return StoreSettings.of(ObjectCacheConfig.from_dict(raw))


def calls(monkeypatch, st: ObstoreStore) -> dict:
    """Count the GETs each client makes."""
    n = {"http": 0, "obstore": 0}

    def counted(name, fn):
        async def wrapped(*a):
            n[name] += 1
            return await fn(*a)
        return wrapped

    if st._http is not None:
        monkeypatch.setattr(st._http, "get", counted("http", st._http.get))
    monkeypatch.setattr(st, "_get", counted("obstore", st._get))
    return n


def test_it_applies_only_where_it_can_sign_and_speak(s3, bucket):
    base = s3.config(bucket)
    assert httpget.applies(settings_of(base))
    for other in ({"http_get": False}, {"endpoint_url": base["endpoint_url"].replace("http:", "https:")},
                  {"addressing_style": "virtual"}, {"session_token": "t"},
                  {"access_key_id": "", "secret_access_key": ""}):
        assert not httpget.applies(settings_of({**base, **other})), other


def test_the_fast_paths_apply_with_keys_from_the_environment(s3, bucket, monkeypatch):
    """Keys from the AWS chain's environment, none in the config (SGLang shows its flags):
    GETs and PUTs still take objectcache's own clients, and read back the bytes."""
    cfg = {k: v for k, v in s3.config(bucket, transport="obstore").items() if "key" not in k}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    st = ObstoreStore(settings_of(cfg))
    try:
        assert st._http is not None and st._http_put is not None
        data = blob(5000, 3)
        assert st.put("env/k", data) is True
        assert bytes(st.get("env/k")) == data
    finally:
        st.close()


def test_the_fast_paths_apply_with_keys_from_the_shared_credentials_file(s3, bucket, monkeypatch, tmp_path):
    """No keys in the config or the environment, a profile in ~/.aws/credentials (as boto3's
    chain, which obstore uses, finds them): the fast clients apply too."""
    cfg = settings_of({k: v for k, v in s3.config(bucket, transport="obstore").items() if "key" not in k})
    creds = tmp_path / "credentials"
    keys = f"[kv]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    creds.write_text(keys)
    with monkeypatch.context() as m:  # undone before the bucket fixture's own boto3 cleans up
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            m.delenv(name, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
        m.setenv("AWS_PROFILE", "kv")
        st = ObstoreStore(cfg)
        try:
            assert st._http is not None and st._http_put is not None
            data = blob(5000, 4)
            assert st.put("file/k", data) is True
            assert bytes(st.get("file/k")) == data
        finally:
            st.close()
        creds.write_text(keys + "aws_session_token = temporary\n")
        assert not httpget.applies(http1.with_env_keys(cfg))  # temporary keys: left to obstore


@pytest.mark.parametrize("size", [1000, 300_000, 2_500_000])  # one read, many, and landed off the loop
def test_get_each_reads_the_same_bytes_as_obstore(s3, bucket, monkeypatch, size):
    fast, slow = store(s3, bucket), store(s3, bucket, http_get=False)
    keys = [f"h/{size}/{i}" for i in range(6)]
    try:
        assert slow.put_many([(k, blob(size, i)) for i, k in enumerate(keys)]) == [True] * 6
        n = calls(monkeypatch, fast)
        for _ in range(2):  # the second batch reuses the first one's connections
            got = {}
            fast.get_each(keys, lambda i, r: got.__setitem__(i, bytes(r)), size=size)
            assert got == {i: blob(size, i) for i in range(6)}
        assert n == {"http": 12, "obstore": 0}
        assert 1 <= len(fast._http._idle) <= 6
    finally:
        fast.close()
        slow.close()


def test_anything_unexpected_is_read_again_by_obstore(s3, bucket, monkeypatch):
    st = store(s3, bucket)
    size = 4096
    st.put_many([("u/ok", blob(size, 1)), ("u/long", blob(size + 1, 2)), ("u/short", blob(size - 9, 3)),
                 ("u/empty", b"")])
    keys = ["u/ok", "u/missing", "u/long", "u/short", "u/empty"]
    try:
        n = calls(monkeypatch, st)
        got = {}
        st.get_each(keys, lambda i, r: got.__setitem__(keys[i], r if r is None else bytes(r)), size=size)
        # as obstore alone answers them: absent, one byte too long, short, empty
        assert got == {"u/ok": blob(size, 1), "u/missing": None, "u/long": blob(size + 1, 2)[: size + 1],
                       "u/short": blob(size - 9, 3), "u/empty": b""}
        assert n == {"http": 5, "obstore": 4}
    finally:
        st.close()


def test_wrong_credentials_are_an_auth_error_as_before(s3, bucket):
    st = store(s3, bucket)
    st.put_many([("a/1", blob(100, 1))])
    st.close()
    bad = ObstoreStore(settings_of(s3.config(bucket, secret_access_key="wrong", transport="obstore")))
    try:
        got = []
        bad.get_each(["a/1"], lambda i, r: got.append(r), size=100)
        assert isinstance(got[0], StoreError) and got[0].kind == "auth", got
    finally:
        bad.close()


def test_a_store_that_stalls_is_a_timeout_once(s3, bucket):
    # A server that accepts and never answers: the GET ends after read_timeout_s with a
    # timeout, not after a second wait in obstore.
    with silent_store(s3, bucket, read_timeout_s=0.5) as st:
        got = []
        t0 = time.monotonic()
        st.get_each(["s/1"], lambda i, r: got.append(r), size=100)
        took = time.monotonic() - t0
        assert isinstance(got[0], StoreError) and got[0].kind == "timeout", got
        assert 0.4 < took < 1.5, took


class Taker(Receiver):
    """Records what a GET hands it: with `cuts`, the parts to scatter into; else it keeps a
    copy of each read it is handed."""

    def __init__(self, size: int, cuts=None):
        self.buf, self.ups = bytearray(size), []
        mv = memoryview(self.buf)
        self.parts = None if cuts is None else [mv[a:b] for a, b in zip([0, *cuts], [*cuts, size])]

    def received(self, data, upto):
        if data is not None:
            assert upto - len(data) == (self.ups[-1] if self.ups else 0)  # in order, no gaps
            self.buf[upto - len(data):upto] = data
        self.ups.append(upto)


@pytest.mark.parametrize("how", ["parts", "read by read"])
def test_a_body_goes_through_the_callers_receiver(s3, bucket, how):
    # With parts: 1,500 parts of uneven sizes (1 byte to 16 KB), more than one recvmsg_into
    # can take, with part boundaries inside reads and inside the bytes that came with the
    # headers. Without: the receiver is handed each read. The object of another size is
    # read whole by obstore, as without a receiver.
    st = store(s3, bucket)
    size = 3_000_000
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, size), 1499)) if how == "parts" else None
    keys = ["p/0", "p/1", "p/short"]
    st.put_many([("p/0", blob(size, 5)), ("p/1", blob(size, 6)), ("p/short", blob(size - 1, 7))])
    given = {}

    def into(i):
        given[i] = Taker(size, cuts)
        return given[i]

    try:
        got = {}
        st.get_each(keys, lambda i, r: got.__setitem__(i, r if r is INTO else bytes(r)), size=size, into=into)
        assert got[0] is INTO and got[1] is INTO
        assert bytes(given[0].buf) == blob(size, 5) and bytes(given[1].buf) == blob(size, 6)
        assert got[2] == blob(size - 1, 7)
        for t in (given[0], given[1]):  # growing, whole at the end, and in reads of ~1 MiB at most
            assert t.ups == sorted(t.ups) and t.ups[-1] == size and len(t.ups) >= 3
            longest = max(map(len, t.parts)) if t.parts else 0  # a read ends at a part's end
            assert max(b - a for a, b in zip([0, *t.ups], t.ups)) <= httpget._READ_BYTES + longest
    finally:
        st.close()


def test_a_receiver_that_raises_means_the_object_is_read_again(s3, bucket):
    st = store(s3, bucket)
    st.put_many([("r/0", blob(100_000, 8))])

    class Broken(Receiver):
        def received(self, body, upto):
            raise RuntimeError("a bug")

    try:
        got = []
        st.get_each(["r/0"], lambda i, r: got.append(r if r is INTO else bytes(r)), size=100_000,
                    into=lambda i: Broken())
        assert got == [blob(100_000, 8)]  # obstore's body: not INTO
    finally:
        st.close()


@pytest.mark.parametrize("server_does", ["close", "send"])
def test_an_idle_connection_the_server_closed_is_not_reused(server_does):
    async def main():
        ours, server = socket.socketpair()
        ours.setblocking(False)
        conn = httpget._Conn(ours, asyncio.get_running_loop(), memoryview(bytearray(16)))
        conn.reusable = True  # as after a complete keep-alive response
        await asyncio.sleep(0.05)
        assert conn.reusable
        if server_does == "close":
            server.close()
        else:  # bytes no GET asked for: the framing is lost
            server.sendall(b"x")
        await asyncio.sleep(0.05)
        assert not conn.reusable
        conn.close()
        server.close()

    asyncio.run(main())


# --- deadlines (C2) and the Host header (H3) -------------------------------------------------


def timed_get(cfg: ObjectCacheConfig, size: int, cap_s: float = 8.0):
    """(result, seconds) of one HttpGet GET; a GET still running after `cap_s` is a failure
    of the deadline, not a hang of the test."""
    client = httpget.HttpGet(StoreSettings.of(cfg))

    async def main():
        try:
            return await asyncio.wait_for(client.get("k/1", size), cap_s)
        finally:
            client.close()

    t0 = time.monotonic()
    try:
        r = asyncio.run(main())
    except asyncio.TimeoutError:
        r = f"still running after {cap_s}s"
    return r, time.monotonic() - t0


def test_a_trickling_body_ends_at_the_deadline_as_a_timeout():
    # Every 50 ms one byte of the body: no read ever stalls for read_timeout_s, so only the
    # deadline (connect + read + size / min_rate = 0.5 + 0.5 + 1000 B at 1 MB/s) ends it.
    srv = endless_body(1000)
    try:
        r, took = timed_get(ObjectCacheConfig.from_dict(srv.config(connect_timeout_s=0.5, read_timeout_s=0.5)),
                            1000)
        assert isinstance(r, StoreError) and r.kind == "timeout", r
        assert "deadline" in str(r), r
        assert 0.8 < took < 2.0, took
    finally:
        srv.close()


def test_trickled_headers_end_within_a_read_timeout():
    # A header that never ends, one byte every 50 ms: the header phase is capped at
    # read_timeout_s (0.3 s), well before the deadline (1.3 s).
    srv = endless_headers()
    try:
        r, took = timed_get(ObjectCacheConfig.from_dict(srv.config(connect_timeout_s=1.0, read_timeout_s=0.3)),
                            1000)
        assert isinstance(r, StoreError) and r.kind == "timeout", r
        assert "headers" in str(r), r
        assert took < 1.0, took
    finally:
        srv.close()


def test_the_deadline_grows_with_the_size_up_to_request_deadline_s():
    cfg = StoreSettings.of(ObjectCacheConfig(bucket="b"))  # connect 1, read 2.5, 8 Mbit/s, request_deadline_s 4
    assert deadline_s(cfg, 0) == pytest.approx(3.5)
    assert deadline_s(cfg, 250_000) == pytest.approx(3.75)
    assert deadline_s(cfg, 8 << 20) == pytest.approx(4.0)
    fast = StoreSettings.of(ObjectCacheConfig(bucket="b", min_rate_mbps=800.0, request_deadline_s=6.0))
    assert deadline_s(fast, 100_000_000) == pytest.approx(1.0 + 2.5 + 1.0)


class FrozenClock:
    """`http1.dt` at a fixed instant, so that two signers' requests can be compared."""

    timezone = _dt.timezone

    class datetime:
        @staticmethod
        def now(tz=None):
            return _dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=tz)


def signer_for(endpoint_url: str) -> http1.Signer:
    # not StoreSettings of a config: the config refuses userinfo, the signer must not rely on it
    return http1.Signer(SimpleNamespace(endpoint_url=endpoint_url, bucket="b", access_key_id="AK",
                                        secret_access_key="SK", region="us-east-1"))


@pytest.mark.parametrize("endpoint, host", [
    ("http://user:pw@store.example:9000", "store.example:9000"),
    ("http://user@store.example", "store.example"),
    ("http://user:pw@[::1]:9000/base", "[::1]:9000"),
])
def test_the_host_header_is_hostname_and_port_never_userinfo(monkeypatch, endpoint, host):
    monkeypatch.setattr(http1, "dt", FrozenClock)
    request = signer_for(endpoint).request("k/1").decode()
    assert f"\r\nhost: {host}\r\n" in request, request
    assert "user" not in request and "pw" not in request, request
    clean = endpoint.replace("user:pw@", "").replace("user@", "")
    assert request == signer_for(clean).request("k/1").decode()  # signed as without userinfo
