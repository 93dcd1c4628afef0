"""objectcache's own PUT client (store/httpput.py) against a real SeaweedFS, and its fallback
to obstore for everything it does not expect."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from http_support import blob, silent_store, store
from trickle_support import endless_body, endless_headers

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import StoreError, StoreSettings, httpput
from sglang_objectcache.store._common import Refused
from sglang_objectcache.store.http1 import FALL_BACK
from sglang_objectcache.store.obstore_ import ObstoreStore


def settings_of(raw: dict) -> StoreSettings:
    return StoreSettings.of(ObjectCacheConfig.from_dict(raw))


def counted(monkeypatch, st: ObstoreStore) -> dict:
    """Count what each client answers: `http` its own results, `fallback` its FALL_BACKs."""
    n = {"http": 0, "fallback": 0}
    put = st._http_put.put

    async def wrapped(*a):
        r = await put(*a)
        n["fallback" if r is FALL_BACK else "http"] += 1
        return r

    monkeypatch.setattr(st._http_put, "put", wrapped)
    return n


def test_it_applies_only_where_it_can_sign_and_speak(s3, bucket):
    base = s3.config(bucket)
    assert httpput.applies(settings_of(base))
    for other in ({"http_put": False}, {"sign_payload": True},
                  {"endpoint_url": base["endpoint_url"].replace("http:", "https:")},
                  {"addressing_style": "virtual"}, {"session_token": "t"},
                  {"access_key_id": "", "secret_access_key": ""}):
        assert not httpput.applies(settings_of({**base, **other})), other


def test_puts_write_the_bytes_and_are_conditional(s3, bucket, monkeypatch):
    # 0 bytes, one send, and bodies the socket takes in many sends
    sizes = [0, 1, 4096, 257 * 1024, 9 * 1024 * 1024 + 3]
    fast, slow = store(s3, bucket), store(s3, bucket, http_put=False)
    items = [(f"p/{i}", blob(n, i)) for i, n in enumerate(sizes)]
    try:
        n = counted(monkeypatch, fast)
        assert fast.put_many(items) == [True] * len(items)
        assert [bytes(b) for b in slow.get_many([k for k, _ in items])] == [v for _, v in items]
        assert fast.put_many(items) == [False] * len(items)  # conditional: they exist
        assert fast.put_many(items[:2], if_absent=False) == [True, True]
        assert n == {"http": 2 * len(items) + 2, "fallback": 0}
        assert 1 <= len(fast._http_put._idle) <= len(items)  # kept alive for the next batch
        # put_iter goes the same way
        assert fast.put_iter(iter([("p/iter", blob(5000, 9))])) == [True]
        assert bytes(slow.get_many(["p/iter"])[0]) == blob(5000, 9)
    finally:
        fast.close()
        slow.close()


def test_wrong_keys_are_an_auth_error_named_by_obstore(s3, bucket, monkeypatch):
    st = ObstoreStore(settings_of(s3.config(bucket, transport="obstore", secret_access_key="wrong")))
    try:
        n = counted(monkeypatch, st)
        got = st.put_many([("m/1", blob(10, 1))])
        assert isinstance(got[0], StoreError) and got[0].kind == "auth", got
        assert n == {"http": 0, "fallback": 1}
    finally:
        st.close()


def test_a_store_that_stalls_is_a_timeout_once(s3, bucket):
    # A server that accepts and never answers: the PUT ends after read_timeout_s with a
    # timeout, not after a second wait in obstore.
    with silent_store(s3, bucket, read_timeout_s=0.5) as st:
        t0 = time.monotonic()
        got = st.put_many([("s/1", blob(100, 1))])
        took = time.monotonic() - t0
        assert isinstance(got[0], StoreError) and got[0].kind == "timeout", got
        assert 0.4 < took < 1.5, took


class OneReplyServer:
    """Answers each PUT on a connection with `reply`, then closes the connection when
    `close_after` PUTs were answered on it. Counts connections."""

    def __init__(self, reply: bytes, close_after: int):
        self.reply, self.close_after, self.connections = reply, close_after, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            for _ in range(self.close_after):
                got = b""
                while b"\r\n\r\n" not in got:
                    got += conn.recv(65536)
                head, _, body = got.partition(b"\r\n\r\n")
                length = int(next(v for k, _, v in (x.partition(b": ") for x in head.split(b"\r\n"))
                                  if k.lower() == b"content-length"))
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(self.reply)
            time.sleep(0.05)


@pytest.mark.parametrize("how", ["closes_idle", "says_close"])
def test_a_connection_the_server_ends_is_not_reused(how):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + (b"Connection: close\r\n" if how == "says_close" else b"") + b"\r\n"
    srv = OneReplyServer(ok, close_after=1)
    cfg = ObjectCacheConfig.from_dict({"endpoint_url": f"http://127.0.0.1:{srv.sock.getsockname()[1]}",
                                       "bucket": "b", "access_key_id": "a", "secret_access_key": "s",
                                       "read_timeout_s": 2.0})
    client = httpput.HttpPut(StoreSettings.of(cfg))

    async def main():
        for i in range(3):
            assert await client.put(f"k/{i}", blob(1000, i), True) is True
            await asyncio.sleep(0.2)  # the server closes its end while the connection is idle
        client.close()

    try:
        asyncio.run(main())
        assert srv.connections == 3  # none sent into a closed connection and sent again
    finally:
        srv.sock.close()


def xml_error(status: str, code: str) -> bytes:
    body = f"<?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>".encode()
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("reply, conditional, expect", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", True, FALL_BACK),
    (b"HTTP/1.1 503 Slow Down\r\nContent-Length: 4\r\n\r\nbusy", True, FALL_BACK),
    # a refusal is the conditional-PUT rules' to read only for a conditional PUT, and only
    # with a code they know (store/_common.py refusal)
    (b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n", False, FALL_BACK),
    (xml_error("409 Conflict", "OperationAborted"), True, FALL_BACK),
    (xml_error("409 Conflict", "ConditionalRequestConflict"), True, 409),
    (xml_error("412 Precondition Failed", "PreconditionFailed"), True, 412),
    (xml_error("501 Not Implemented", "NotImplemented"), True, 501),
    (xml_error("501 Not Implemented", "NotImplemented"), False, FALL_BACK),
], ids=["unframed", "server_error", "412_unconditional", "409_other", "409_race", "412_exists", "501_conditional",
        "501_unconditional"])
def test_what_it_answers_and_what_it_leaves_to_obstore(reply, conditional, expect):
    # FALL_BACK: obstore sends the PUT again, retries what it retries and names the failure
    srv = OneReplyServer(reply, close_after=1)
    cfg = ObjectCacheConfig.from_dict({"endpoint_url": f"http://127.0.0.1:{srv.sock.getsockname()[1]}",
                                       "bucket": "b", "access_key_id": "a", "secret_access_key": "s"})
    client = httpput.HttpPut(StoreSettings.of(cfg))
    try:
        got = asyncio.run(client.put("k", b"x" * 10, conditional))
        if expect is FALL_BACK:
            assert got is expect
        else:
            assert isinstance(got, Refused) and got.status == expect == got.error.status, got
    finally:
        srv.sock.close()


# --- deadlines (C2) --------------------------------------------------------------------------


def timed_put(cfg: ObjectCacheConfig, data: bytes, cap_s: float = 8.0):
    """(result, seconds) of one HttpPut PUT; one still running after `cap_s` is a failure of
    the deadline, not a hang of the test."""
    client = httpput.HttpPut(StoreSettings.of(cfg))

    async def main():
        try:
            return await asyncio.wait_for(client.put("k/1", data, True), cap_s)
        finally:
            client.close()

    t0 = time.monotonic()
    try:
        r = asyncio.run(main())
    except asyncio.TimeoutError:
        r = f"still running after {cap_s}s"
    return r, time.monotonic() - t0


def test_a_trickling_reply_ends_at_the_deadline_as_a_timeout():
    # The reply's headers at once, then its body one byte every 50 ms: never a stall of
    # read_timeout_s, so only the deadline (0.5 + 0.5 + 1000 B at 1 MB/s) ends the PUT.
    srv = endless_body(60_000)  # a reply body the client takes (at most 64 KiB)
    try:
        r, took = timed_put(ObjectCacheConfig.from_dict(srv.config(connect_timeout_s=0.5, read_timeout_s=0.5)),
                            blob(1000, 1))
        assert srv.requests == 1
        assert isinstance(r, StoreError) and r.kind == "timeout", r
        assert "deadline" in str(r), r
        assert 0.8 < took < 2.0, took
    finally:
        srv.close()


def test_trickled_reply_headers_end_within_a_read_timeout():
    # Reply headers that never end, one byte every 50 ms: capped at read_timeout_s (0.3 s)
    # after the body went, well before the deadline (1.3 s).
    srv = endless_headers()
    try:
        r, took = timed_put(ObjectCacheConfig.from_dict(srv.config(connect_timeout_s=1.0, read_timeout_s=0.3)),
                            blob(1000, 2))
        assert isinstance(r, StoreError) and r.kind == "timeout", r
        assert "headers" in str(r), r
        assert took < 1.0, took
    finally:
        srv.close()
