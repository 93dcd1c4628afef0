"""`HttpPut`: PUTs over keep-alive HTTP/1.1 on the caller's event loop, the body sent from
the caller's buffer by the kernel (`sendmsg` of the signed headers and the body together).

PUTs on a store on this box are bound by the server's CPU (~2.5-3 ms per 256 KiB page,
benchmarks/results/server_put.json), and client and server share the cores, so each
client millisecond is taken from the server. `batch_set_v1` spent 0.40 ms of client CPU
per 257 KiB page with obstore's PUTs and 0.26 ms with this client, side by side
(benchmarks/results/put_client.json).

Narrow like `httpget` and used where it applies (`http1.plain`: plain http://, static
keys, path style) with `http_put` on and `sign_payload` off, since the body is not signed
(UNSIGNED-PAYLOAD, as obstore's PUTs by default). It answers only what it can be sure of:
`True` for a 200, and for a conditional PUT the store refused in a way
`_common.refusal` reads (the key exists, another writer's conditional PUT is in progress,
the store refuses the header), a `_common.Refused` for the caller's `ConditionalPuts`, the
rules every transport uses. Anything else returns `FALL_BACK`: another status, a
connection that fails or closes, a reply it cannot frame.
The caller then PUTs again through obstore, which retries and classifies every failure.
A PUT is safe to send twice: the key names its content, so a second conditional PUT after
a first that landed answers "exists", and an unconditional one writes the same bytes. A
PUT that makes no progress for `read_timeout_s` (no byte sent, no reply) is a
`StoreError("timeout")` at once, so a slow store is not waited on twice. So is a PUT not
over by its deadline (`settings.deadline_s`: connect + read + size / `min_rate_mbps`, at most
`request_deadline_s`), or whose reply's headers have not all come within `read_timeout_s`
of the body's last byte: a store that reads or answers byte by byte cannot hold a PUT
forever.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Optional, Union
from urllib.parse import urlsplit

from sglang_objectcache.store import _common as C
from sglang_objectcache.store.base import Buffer, StoreError
from sglang_objectcache.store.http1 import FALL_BACK, Signer, connect, plain
from sglang_objectcache.store.settings import StoreSettings, deadline_s

_REPLY_BYTES = 64 << 10  # a PUT's reply is headers and, for an error, a short XML body


def applies(settings: StoreSettings) -> bool:
    return settings.http_put and not settings.sign_payload and plain(settings)


class _Stalled(Exception):
    """A wait that reached a limit; the message says which."""


class HttpPut:
    """PUTs on the running event loop, one connection per PUT in flight."""

    def __init__(self, settings: StoreSettings):
        u = urlsplit(settings.endpoint_url)
        self._addr = (u.hostname, u.port or 80)
        self._signer, self._bucket, self._settings = Signer(settings), settings.bucket, settings
        self._connect_s, self._read_s = settings.connect_timeout_s, settings.read_timeout_s
        self._idle: list[socket.socket] = []

    async def put(self, key: str, data: Buffer, if_absent: bool) -> Union[bool, C.Refused, StoreError, object]:
        body = memoryview(data).cast("B")
        budget = deadline_s(self._settings, body.nbytes)
        deadline = (asyncio.get_running_loop().time() + budget, f"not done within its {budget:g}s deadline "
                                                                 f"({body.nbytes} bytes)")
        try:
            sock = self._reuse() or await asyncio.wait_for(connect(self._addr), min(self._connect_s, budget))
        except (OSError, asyncio.TimeoutError):
            return FALL_BACK  # obstore connects again and names the failure
        keep = False
        try:
            await self._send(sock, [self._signer.put(key, body.nbytes, if_absent), body], deadline)
            status, body, keep = await self._reply(sock, deadline)
        except _Stalled as e:
            return StoreError("timeout", f"PUT {self._bucket}/{key}: {e}")
        except (OSError, ValueError):
            return FALL_BACK
        finally:
            if keep:
                self._idle.append(sock)
            else:
                sock.close()
        if status == 200:
            return True
        text = body.decode(errors="replace")
        code = C.s3_code(text) or str(status)
        if if_absent and C.refusal(status, code, text):
            return C.Refused(status, code, text, StoreError(C.kind_for(status, code),
                                                            f"PUT {self._bucket}/{key}: HTTP {status} {code}", status))
        return FALL_BACK

    async def _send(self, sock: socket.socket, bufs: list, deadline: tuple[float, str]) -> None:
        bufs = [b for b in bufs if len(b)]  # an empty body: sendmsg would send 0 forever
        while bufs:
            try:
                n = sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                n = 0
            while n:  # drop what went
                if n >= len(bufs[0]):
                    n -= len(bufs.pop(0))
                else:
                    bufs[0], n = memoryview(bufs[0])[n:], 0
            if bufs:
                await self._ready(sock, True, deadline)

    async def _reply(self, sock: socket.socket, deadline: tuple[float, str]) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection can carry the next PUT)."""
        got = bytearray()
        headers_by = (asyncio.get_running_loop().time() + self._read_s,
                      f"no complete reply headers within {self._read_s:g}s")
        while True:
            # the headers must all be in within a read timeout, however slowly they trickle
            await self._ready(sock, False, deadline, *(() if b"\r\n\r\n" in got else (headers_by,)))
            try:
                chunk = sock.recv(_REPLY_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
            end = got.find(b"\r\n\r\n")
            if end < 0:
                if len(got) > _REPLY_BYTES:
                    raise ValueError("reply headers too long")
                continue
            lines = bytes(got[:end]).split(b"\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
            parts = lines[0].split()
            length = fields.get(b"content-length", b"")
            if len(parts) < 2 or not parts[1].isdigit() or not length.isdigit() or b"transfer-encoding" in fields:
                raise ValueError("unframed reply")
            if len(got) - end - 4 >= int(length):
                return int(parts[1]), bytes(got[end + 4:end + 4 + int(length)]), (
                    len(got) - end - 4 == int(length) and fields.get(b"connection", b"").lower() != b"close")
            if int(length) > _REPLY_BYTES:
                raise ValueError("reply body too long")

    async def _ready(self, sock: socket.socket, write: bool, *limits: tuple[float, str]) -> None:
        """Until `sock` is ready, or _Stalled at the first of a read timeout from now and
        `limits` ((loop time, what it means), absolute)."""
        loop = asyncio.get_running_loop()
        at, why = min(((loop.time() + self._read_s, f"no progress for {self._read_s:g}s"), *limits),
                      key=lambda limit: limit[0])
        fd = sock.fileno()
        fut = loop.create_future()
        wake = lambda: fut.done() or fut.set_result(None)  # noqa: E731
        (loop.add_writer if write else loop.add_reader)(fd, wake)
        timer = loop.call_at(at, lambda: fut.done() or fut.set_exception(_Stalled(why)))
        try:
            await fut
        finally:
            timer.cancel()
            (loop.remove_writer if write else loop.remove_reader)(fd)

    def _reuse(self) -> Optional[socket.socket]:
        """An idle connection the server has not closed: one it closed (or wrote to) while
        idle reads as ready, and would cost a PUT sent into it and then sent again."""
        while self._idle:
            sock = self._idle.pop()
            try:
                sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return sock
            except OSError:
                pass
            sock.close()
        return None

    def close(self) -> None:
        for sock in self._idle:
            sock.close()
        self._idle.clear()
