"""`HttpGet`: GETs of objects of a known size over keep-alive HTTP/1.1, each body received by
the kernel straight into a buffer its connection reuses.

obstore (reqwest/hyper) gathers every body into a fresh buffer: one more copy and one more
allocation per object. On this 2-core box that made a 257 KiB GET cost 440 µs of client CPU
against 177 µs this way, and an 8 MiB GET 3.4 ms against 2.3 ms
(benchmarks/results/probe_http_get_*.json; bench_storage's `http/N` lanes measure it now).

It is narrow on purpose. It handles plain http://, static credentials and path-style
addressing (`applies`), and it signs with SigV4. Only a `200` whose Content-Length is
exactly the size asked for is received. Anything else returns `FALL_BACK`: another status, another
length, chunked encoding, or a connection that fails or closes. The caller then asks
obstore, which already classifies every failure. A miss, a corrupt object or a dead store
therefore reads exactly as before, one request later. A read that stalls past
`read_timeout_s` is a `StoreError("timeout")` at once, so a slow store is not waited on
twice.

Contract of `get(key, size)`: on success `(body, release)`, where `body` is a memoryview of
exactly `size` bytes, valid until `release()` is called. After that the connection reads its
next body into the same memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from typing import Callable, Optional, Union
from urllib.parse import quote, urlsplit

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store.base import StoreError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
FALL_BACK = object()
_HEAD_BYTES = 16 << 10


def applies(cfg: ObjectCacheConfig) -> bool:
    return (cfg.http_get and cfg.endpoint_url.startswith("http://") and bool(cfg.access_key_id)
            and not cfg.session_token and cfg.addressing_style == "path")


class _Signer:
    """AWS SigV4 for a body-less GET with no query string."""

    def __init__(self, cfg: ObjectCacheConfig):
        u = urlsplit(cfg.endpoint_url)
        self.host, self.base = u.netloc, u.path.rstrip("/") + "/" + quote(cfg.bucket, safe="") + "/"
        self.access, self.secret, self.region = cfg.access_key_id, cfg.secret_access_key, cfg.region
        self._day, self._key = "", b""

    def request(self, key: str) -> bytes:
        path = self.base + quote(key, safe="/-_.~")
        now = dt.datetime.now(dt.timezone.utc)
        amz = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz[:8]
        if day != self._day:  # the derived key changes once a day
            k = hmac.digest(("AWS4" + self.secret).encode(), day.encode(), "sha256")
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.digest(k, part.encode(), "sha256")
            self._day, self._key = day, k
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (f"GET\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{EMPTY_SHA256}\n"
                     f"x-amz-date:{amz}\n\n{signed}\n{EMPTY_SHA256}")
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._key, to_sign.encode(), "sha256").hexdigest()
        return (f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nx-amz-date: {amz}\r\n"
                f"x-amz-content-sha256: {EMPTY_SHA256}\r\nAuthorization: AWS4-HMAC-SHA256 "
                f"Credential={self.access}/{scope}, SignedHeaders={signed}, Signature={sig}\r\n\r\n").encode()


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection, one GET at a time. The body lands in `self.body`."""

    def __init__(self):
        self.body = memoryview(bytearray(0))
        self._head = bytearray(_HEAD_BYTES)
        self._head_mv = memoryview(self._head)
        self._hlen, self._pos, self._want = 0, 0, -1
        self.transport: Optional[asyncio.Transport] = None
        self.done: Optional[asyncio.Future] = None
        self.reusable = False
        self.progress = 0  # reads so far: a read timeout is a stall, not a slow transfer

    def connection_made(self, transport):
        self.transport = transport

    def get(self, request: bytes, size: int) -> asyncio.Future:
        if len(self.body) < size:
            self.body = memoryview(bytearray(size))
        self._size, self._hlen, self._pos, self._want = size, 0, 0, -1
        self.reusable = False
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done

    def get_buffer(self, sizehint):
        if 0 <= self._pos < self._want:
            self.progress += 1
            return self.body[self._pos:self._want]
        if self._want < 0 and self._hlen < _HEAD_BYTES:
            return self._head_mv[self._hlen:]
        return self._head_mv  # bytes no GET asked for: dropped by buffer_updated

    def buffer_updated(self, n):
        if self.done is None or self.done.done():
            self.reusable = False  # unasked bytes: this connection's framing is lost
            return
        if self._want >= 0:
            self._pos += n
        elif not self._headers(n):
            return
        if self._pos == self._want:
            self.done.set_result(self._want)

    def _headers(self, n: int) -> bool:
        """Take `n` more header bytes; True once the body has started."""
        self._hlen += n
        end = self._head.find(b"\r\n\r\n", 0, self._hlen)
        if end < 0:
            if self._hlen == _HEAD_BYTES:
                self.done.set_result(FALL_BACK)
            return False
        lines = bytes(self._head[:end]).split(b"\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
        parts = lines[0].split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        length = fields.get(b"content-length", b"")
        if status != 200 or not length.isdigit() or int(length) != self._size or b"transfer-encoding" in fields:
            self.done.set_result(FALL_BACK)  # obstore reads it again and says what it is
            return False
        self._want = self._size
        extra = min(self._hlen - end - 4, self._want)
        self.body[:extra] = self._head_mv[end + 4:end + 4 + extra]
        self._pos = extra
        self.reusable = fields.get(b"connection", b"").lower() != b"close" and self._hlen - end - 4 == extra
        return True

    def connection_lost(self, exc):
        self.reusable = False
        if self.done is not None and not self.done.done():
            self.done.set_result(FALL_BACK)


class HttpGet:
    """Whole-object GETs on the caller's event loop, one connection per GET in flight."""

    def __init__(self, cfg: ObjectCacheConfig):
        u = urlsplit(cfg.endpoint_url)
        self._addr = (u.hostname, u.port or 80)
        self._signer, self._bucket = _Signer(cfg), cfg.bucket
        self._connect_s, self._read_s = cfg.connect_timeout_s, cfg.read_timeout_s
        self._idle: list[_Conn] = []

    async def get(self, key: str, size: int) -> Union[tuple[memoryview, Callable[[], None]], StoreError, object]:
        try:
            conn = await self._conn()
        except (OSError, asyncio.TimeoutError):
            return FALL_BACK  # obstore connects again and names the failure
        ok = False
        try:
            fut = conn.get(self._signer.request(key), size)
            while not fut.done():  # a read timeout is time without progress, as obstore's
                seen = conn.progress
                await asyncio.wait((fut,), timeout=self._read_s)
                if not fut.done() and conn.progress == seen:
                    return StoreError("timeout", f"GET {self._bucket}/{key}: read timed out after {self._read_s:g}s")
            if fut.result() is FALL_BACK:
                return FALL_BACK
            ok = True
            return conn.body[:size], lambda: self._release(conn)
        finally:
            if not ok:
                conn.transport.close()

    async def _conn(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:  # connection_lost clears it
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(_Conn, *self._addr), self._connect_s)
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.transport.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.transport.close()
        self._idle.clear()
