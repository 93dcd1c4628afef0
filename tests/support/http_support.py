"""What the tests of objectcache's own HTTP clients (store/httpget.py, store/httpput.py) share."""

from __future__ import annotations

import hashlib
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import StoreSettings, make_store
from sglang_objectcache.store.obstore_ import ObstoreStore


def blob(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(n))


def store(s3, bucket, **kw) -> ObstoreStore:
    st = make_store(ObjectCacheConfig.from_dict(s3.config(bucket, transport="obstore", **kw)))
    assert isinstance(st, ObstoreStore)
    return st


@contextmanager
def silent_store(s3, bucket, read_timeout_s: float) -> Iterator[ObstoreStore]:
    """A store whose endpoint accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(4)], daemon=True).start()
    cfg = {**s3.config(bucket), "endpoint_url": f"http://127.0.0.1:{srv.getsockname()[1]}", "transport": "obstore",
           "read_timeout_s": read_timeout_s}
    st = ObstoreStore(StoreSettings.of(ObjectCacheConfig.from_dict(cfg)))
    try:
        yield st
    finally:
        st.close()
        srv.close()


class LocalEndpoint:
    """A loopback HTTP/1.1 listener that serves each connection on a thread (`_one`), with
    the objectcache config that points at it."""

    def __init__(self, backlog: int = 64):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def config(self, **extra) -> dict:
        return {"endpoint_url": self.endpoint, "bucket": "b", "access_key_id": "fake-key",
                "secret_access_key": "fake-secret", **extra}

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        raise NotImplementedError


class FakeS3(LocalEndpoint):
    """An HTTP/1.1 endpoint that answers every request with `answer(method, path, headers,
    body)` -> (status line, body), on keep-alive connections, with the ETag of the body it
    was sent (obstore wants one on a PUT's reply), and keeps what it was sent in `requests`
    as (method, path, headers, body); header names in lower case."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []
        super().__init__()

    def _one(self, conn: socket.socket) -> None:
        got = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in got:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got += chunk
                head, _, got = got.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path = lines[0].split()[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                length = int(headers.get("content-length", 0))
                while len(got) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got += chunk
                body, got = got[:length], got[length:]
                self.requests.append((method, path, headers, body))
                status, reply = self.answer(method, path, headers, body)
                etag = hashlib.md5(body).hexdigest()
                try:
                    conn.sendall(f"HTTP/1.1 {status}\r\nETag: \"{etag}\"\r\nContent-Length: {len(reply)}\r\n\r\n"
                                 .encode() + reply)
                except OSError:  # the client went away mid-reply (it took what it wanted)
                    return

    def close(self) -> None:
        self.sock.close()


def s3_error(code: str, message: str = "") -> bytes:
    return (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>/b/k</Resource><RequestId>1</RequestId></Error>").encode()
