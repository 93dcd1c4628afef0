"""`HttpGet`: GETs of objects of a known size over keep-alive HTTP/1.1, each body received by
the kernel straight into memory that is reused: the caller's buffers, a buffer the
connection reuses, or, read by read, a scratch buffer the caller's receiver takes from.

obstore (reqwest/hyper) gathers every body into a fresh buffer: one more copy and one more
allocation per object. On this 2-core box that made a 257 KiB GET cost 440 µs of client CPU
against 177 µs this way, and an 8 MiB GET 3.4 ms against 2.3 ms
(benchmarks/results/probe_http_get_*.json; bench_storage's `http/N` lanes measure it now).
With a receiver's `parts`, the body is scattered by `recvmsg_into` across the caller's
buffers, in order: the backend passes the host-pool rows each part of a page belongs in, so
the copy out of a response buffer is gone too.

It is narrow on purpose. It handles plain http://, static credentials and path-style
addressing (`applies`), and it signs with SigV4. Only a `200` whose Content-Length is
exactly the size asked for is received. Anything else returns `FALL_BACK`: another status,
another length, chunked encoding, or a connection that fails or closes. The caller then
asks obstore, which already classifies every failure. A miss, a corrupt object or a dead
store therefore reads exactly as before, one request later. A read that stalls past
`read_timeout_s` is a `StoreError("timeout")` at once, so a slow store is not waited on
twice. So is a GET that is not over by its deadline (`deadline_s`: connect + read + size /
`min_rate_mbps`, at most `request_deadline_s`) or whose headers have not all come within
`read_timeout_s` of the request: a store that trickles bytes cannot hold a GET forever.

Contract of `get(key, size, receiver=None)`:
- without a receiver, on success `(body, release)`: `body` is a memoryview of exactly
  `size` bytes, valid until `release()` is called. After that the connection reads its next
  body into the same memory.
- with a `Receiver` (base.py), on success `INTO`: the body went through it, read into its
  `parts`, or read by read (at most about 1 MiB each) into one scratch buffer that all of
  this client's connections share, and `received` was called after each read, the last
  time with `size`. Whatever the outcome, it may have been fed part of a body (one cut
  short, a read that timed out). If `received` raises, the result is `FALL_BACK`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import socket
from typing import Callable, Optional, Union
from urllib.parse import urlsplit

from sglang_objectcache.store.base import INTO, Receiver, StoreError
from sglang_objectcache.store.http1 import FALL_BACK, Signer, connect, plain
from sglang_objectcache.store.settings import StoreSettings, deadline_s

logger = logging.getLogger(__name__)

_HEAD_BYTES = 16 << 10
_IOV_MAX = 1024  # Linux's UIO_MAXIOV: buffers per recvmsg_into
# At most this much per read of a receiver's GET: the scratch buffer's size, and the bytes of
# parts passed to one recvmsg_into
_READ_BYTES = 1 << 20


def applies(settings: StoreSettings) -> bool:
    return settings.http_get and plain(settings)


class _Conn:
    """One keep-alive connection, one GET at a time, read on the loop's readiness callbacks
    (asyncio's protocols take one buffer per read; a body scattered over host-pool rows
    needs `recvmsg_into`'s many)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, scratch: memoryview):
        self.sock, self.loop, self.fd = sock, loop, sock.fileno()
        self.own = memoryview(bytearray(0))  # the body of a GET without a receiver
        # Where a receiver's reads land: one buffer for every connection of the loop (reads
        # run one at a time there, and a receiver keeps what it needs), so no buffer per
        # connection grows to the largest object (benchmarks/results/get_memory.json).
        self.scratch = scratch
        self._head = bytearray(_HEAD_BYTES)
        self._head_mv = memoryview(self._head)
        self.done: Optional[asyncio.Future] = None
        self.reusable = False  # cleared when an idle connection is closed or sent to
        self.progress = 0  # reads so far: a read timeout is a stall, not a slow transfer
        self._pos = 0
        # Watched for its whole life, as asyncio's transports do: registering per GET cost
        # ~10% more client CPU on 257 KiB GETs (selectors' Python on every GET).
        loop.add_reader(self.fd, self._readable)
        self.watched = True

    def get(self, request: bytes, size: int, receiver: Optional[Receiver]) -> asyncio.Future:
        parts = receiver.parts if receiver is not None else None
        if receiver is None and len(self.own) < size:
            self.own = memoryview(bytearray(size))
        self._receiver, self._parts = receiver, parts
        # where each part ends in the body; None: the body goes to `own`, or read by read
        # through `scratch` to the receiver
        self._ends = None if parts is None else list(itertools.accumulate(map(len, parts)))
        self._size, self._hlen, self._pos, self._part = size, 0, -1, 0
        self.reusable = False
        self.done = self.loop.create_future()
        try:
            sent = self.sock.send(request)  # a few hundred bytes into an idle socket's buffer
        except OSError:
            sent = -1
        if sent != len(request) or not self.watched:
            self.done.set_result(FALL_BACK)
        return self.done

    def _readable(self) -> None:
        if self.done is None or self.done.done():  # idle: the server closed it or lost framing
            self.reusable = self.watched = False
            self.loop.remove_reader(self.fd)
            return
        try:
            if self._pos < 0:
                n = self.sock.recv_into(self._head_mv[self._hlen:])
                if n:
                    self._headers(n)
            elif self._receiver is None:
                n = self.sock.recv_into(self.own[self._pos:self._size])
                self._pos += n
            elif self._ends is None:
                n = self.sock.recv_into(self.scratch[:min(len(self.scratch), self._size - self._pos)])
                if n:
                    self._pos += n
                    self._arrived(self.scratch[:n])
            else:
                iov = self._iov()
                # recv_into where there is one buffer: recvmsg_into costs more per call
                n = self.sock.recv_into(iov[0]) if len(iov) == 1 else self.sock.recvmsg_into(iov)[0]
                if n:
                    self._advance(n)
                    self._arrived(None)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        self.progress += 1
        if self.done.done():  # the receiver refused
            return
        if not n:  # closed or failed under us
            self._finish(FALL_BACK)
        elif self._pos == self._size:
            self._finish(self._size)

    @property
    def in_headers(self) -> bool:
        """Whether the response's headers are still coming."""
        return self._pos < 0

    def _arrived(self, data: Optional[memoryview]) -> None:
        try:
            self._receiver.received(data, self._pos)
        except Exception:  # noqa: BLE001 - a bug must not hang the GET: obstore reads it again
            logger.exception("objectcache: a receiver failed; reading the object again")
            self._finish(FALL_BACK)

    def _iov(self) -> list:
        # Parts for about _READ_BYTES, not all of them: each buffer passed costs
        # recvmsg_into an export whether it is filled or not, and a read brings only what
        # the socket holds.
        k = self._part
        start = self._ends[k - 1] if k else 0
        first = self._parts[k][self._pos - start:]
        last = bisect.bisect_left(self._ends, self._pos + _READ_BYTES, lo=k)
        return [first, *self._parts[k + 1:min(last + 1, k + _IOV_MAX)]]

    def _advance(self, n: int) -> None:
        self._pos += n
        self._part = bisect.bisect_right(self._ends, self._pos, lo=self._part)

    def _fill(self, data: memoryview) -> None:
        """Body bytes that arrived with the headers, where the rest will go."""
        if self._receiver is None:
            self.own[:len(data)] = data
            self._pos = len(data)
            return
        if self._ends is None:
            self._pos = len(data)
            self._arrived(data)
            return
        while data:
            k = self._part
            start = self._ends[k - 1] if k else 0
            take = min(len(data), self._ends[k] - self._pos)
            self._parts[k][self._pos - start:self._pos - start + take] = data[:take]
            data = data[take:]
            self._advance(take)
        self._arrived(None)

    def _headers(self, n: int) -> None:
        self._hlen += n
        end = self._head.find(b"\r\n\r\n", 0, self._hlen)
        if end < 0:
            if self._hlen == _HEAD_BYTES:
                self._finish(FALL_BACK)
            return
        lines = bytes(self._head[:end]).split(b"\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
        parts = lines[0].split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        length = fields.get(b"content-length", b"")
        if status != 200 or not length.isdigit() or int(length) != self._size or b"transfer-encoding" in fields:
            self._finish(FALL_BACK)  # obstore reads it again and says what it is
            return
        extra = self._hlen - end - 4
        self._keep = fields.get(b"connection", b"").lower() != b"close" and extra <= self._size
        self._pos = 0
        if extra:
            self._fill(self._head_mv[end + 4:end + 4 + min(extra, self._size)])

    def _finish(self, result) -> None:
        if result is not FALL_BACK:
            self.reusable = self._keep
        if not self.done.done():
            self.done.set_result(result)

    def close(self) -> None:
        self.reusable = False
        self.loop.remove_reader(self.fd)
        self.sock.close()


class HttpGet:
    """Whole-object GETs on the caller's event loop, one connection per GET in flight."""

    def __init__(self, settings: StoreSettings):
        u = urlsplit(settings.endpoint_url)
        self._addr = (u.hostname, u.port or 80)
        self._signer, self._bucket, self._settings = Signer(settings), settings.bucket, settings
        self._connect_s, self._read_s = settings.connect_timeout_s, settings.read_timeout_s
        self._idle: list[_Conn] = []
        self._scratch = memoryview(bytearray(_READ_BYTES))

    async def get(self, key: str, size: int, receiver: Optional[Receiver] = None
                  ) -> Union[tuple[memoryview, Callable[[], None]], StoreError, object]:
        loop = asyncio.get_running_loop()
        budget = deadline_s(self._settings, size)
        deadline = loop.time() + budget
        try:
            conn = await self._conn(min(self._connect_s, budget))
        except (OSError, asyncio.TimeoutError):
            return FALL_BACK  # obstore connects again and names the failure
        ok = False
        try:
            fut = conn.get(self._signer.request(key), size, receiver)
            # The headers must all be in within a read timeout of the request, however
            # slowly they trickle.
            headers_by = loop.time() + self._read_s
            while not fut.done():
                # A read timeout is time without progress, as obstore's; the deadline and the
                # header cap are absolute.
                seen, now = conn.progress, loop.time()
                wait = min(self._read_s, deadline - now, headers_by - now if conn.in_headers else self._read_s)
                if wait > 0:
                    await asyncio.wait((fut,), timeout=wait)
                if fut.done():
                    break
                now = loop.time() + 1e-3  # a timer may fire within the clock's resolution
                if now >= deadline:
                    return StoreError("timeout", f"GET {self._bucket}/{key}: not done within its {budget:g}s "
                                                 f"deadline ({size} bytes)")
                if conn.in_headers and now >= headers_by:
                    return StoreError("timeout", f"GET {self._bucket}/{key}: no complete response headers "
                                                 f"within {self._read_s:g}s")
                if conn.progress == seen:
                    return StoreError("timeout", f"GET {self._bucket}/{key}: read timed out after {self._read_s:g}s")
            if fut.result() is FALL_BACK:
                return FALL_BACK
            ok = True
            if receiver is not None:
                self._release(conn)
                return INTO
            return conn.own[:size], lambda: self._release(conn)
        finally:
            if not ok:
                conn.close()

    async def _conn(self, connect_s: float) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return await asyncio.wait_for(self._connect(), connect_s)

    async def _connect(self) -> _Conn:
        return _Conn(await connect(self._addr), asyncio.get_running_loop(), self._scratch)

    def _release(self, conn: _Conn) -> None:
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
