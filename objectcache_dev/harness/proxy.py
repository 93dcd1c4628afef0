"""A fault-injection HTTP proxy for an S3 endpoint: the failures object stores have in production.

Contract: `FaultProxy(upstream_port).start()` listens on 127.0.0.1 and forwards every HTTP/1.1
request to the upstream unchanged (keep-alive is kept: one upstream connection per client
connection, responses framed by Content-Length, chunked encoding or end of stream). While
`faults` is set, each request (optionally only those of some methods, or whose target
contains some text, such as one object key) may instead get:
- `slowdown`: a fraction answered `503 SlowDown` with the XML error body S3 sends;
- `reset`: a fraction whose response is cut halfway and the connection reset (TCP RST);
- `latency_s`: a delay before forwarding;
- `stall`: held without an answer until the stall is lifted (then forwarded) or the client
  gives up;
- `bandwidth_bps`: a link of this many bytes per second that every connection shares, both
  ways: each request and each response waits its turn on the link for its length divided by
  the rate (first come, first served; no burst), which is how a capped network or a
  throttled bucket looks to the client;
- `mangle`: an object's bytes answered with one byte flipped (bit-rot or a bad NIC, not a
  failed request): every 200/206 answer with a body to a GET of an object (not of a bucket
  listing) passes with the byte at one offset XORed with 0xFF. Status, headers
  (Content-Length, ETag...) and framing are the upstream's, untouched. The offset is a hash
  of the object's path and the first byte of the range asked for, so reading the same bytes
  again gives the same damaged bytes: the damage looks persistent to the reader, while the
  store itself holds the intact object (its ETag still says so).
If the upstream cannot be reached (the store is down), the client connection is reset.
`seen` counts requests per method and `injected` counts faults per kind, so a test can
assert that a fault really happened; `deleted` lists every object a client asked to delete
("bucket/key", by DELETE or a multi-object `POST ?delete`), faults or not. Random choices
come from a seeded RNG.

`Expect: 100-continue` is answered by the proxy itself (RFC 9110 allows an intermediary to):
otherwise botocore would wait a second for every PUT before sending its body.
"""

from __future__ import annotations

import hashlib
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>objectcache-fault-proxy</RequestId></Error>"
)


@dataclass(frozen=True)
class Faults:
    slowdown: float = 0.0
    reset: float = 0.0
    latency_s: float = 0.0
    stall: bool = False
    mangle: bool = False
    bandwidth_bps: float = 0.0
    # Methods the faults apply to (e.g. frozenset({"GET"})); None means every method.
    methods: frozenset[str] | None = None
    # Only requests whose target (path and query) contains this text; "" means all.
    target: str = ""

    def applies(self, method: str, target: str = "") -> bool:
        return (self.methods is None or method in self.methods) and self.target in target


NO_FAULTS = Faults()


class _Closed(Exception):
    """The peer closed the connection (or we must stop talking to it)."""


def _read_head(reader) -> tuple[bytes, list[tuple[str, str]]] | None:
    """Start line and headers; None on a clean EOF before any byte."""
    first = reader.readline(65537)
    if not first:
        return None
    if not first.endswith(b"\n"):
        raise _Closed()
    headers = []
    while True:
        line = reader.readline(65537)
        if not line:
            raise _Closed()
        if line in (b"\r\n", b"\n"):
            return first, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _read_exact(reader, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise _Closed()
    return data


def _read_chunked(reader) -> bytes:
    """The raw bytes of a chunked body, framing included, through the last trailer."""
    out = bytearray()
    while True:
        size_line = reader.readline(65537)
        if not size_line:
            raise _Closed()
        out += size_line
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:
                trailer = reader.readline(65537)
                if not trailer:
                    raise _Closed()
                out += trailer
                if trailer in (b"\r\n", b"\n"):
                    return bytes(out)
        out += _read_exact(reader, size + 2)


def _read_body(reader, headers, until_eof: bool) -> bytes:
    if (_header(headers, "transfer-encoding") or "").lower().endswith("chunked"):
        return _read_chunked(reader)
    length = _header(headers, "content-length")
    if length is not None:
        return _read_exact(reader, int(length))
    return reader.read() if until_eof else b""


def _serialize(start: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = [start] + [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers] + [b"\r\n"]
    return b"".join(lines)


def _object_path(target: str) -> str | None:
    """'bucket/key' of a path-style object request; None for a bucket-level one (a listing)."""
    path = unquote(urlsplit(target).path).lstrip("/")
    bucket, _, key = path.partition("/")
    return f"{bucket}/{key}" if bucket and key else None


def _deleted_keys(method: str, target: str, body: bytes) -> list[str]:
    """The objects a request deletes: a DELETE of one, or S3's multi-object `POST /bucket?delete`."""
    parts = urlsplit(target)
    if method == "DELETE":
        obj = _object_path(target)
        return [obj] if obj and "uploadId=" not in parts.query else []
    if method == "POST" and "delete" in (q.partition("=")[0] for q in parts.query.split("&")):
        bucket = unquote(parts.path).strip("/")
        return [f"{bucket}/{k.decode()}" for k in re.findall(rb"<Key>(.*?)</Key>", body, re.S)]
    return []


def _mangle_offset(target: str, headers: list[tuple[str, str]], length: int) -> int:
    """Where in a body of `length` bytes to flip a byte: the same for the same object and range."""
    first = (_header(headers, "range") or "").partition("=")[2].partition("-")[0]
    seed = f"{_object_path(target)}@{first}".encode()
    return int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big") % length


def _body_spans(body: bytes, chunked: bool) -> list[tuple[int, int]]:
    """Where the payload bytes lie in a raw body: (start, end) pairs, chunk framing skipped."""
    if not chunked:
        return [(0, len(body))]
    spans, pos = [], 0
    while True:
        eol = body.index(b"\n", pos)
        size = int(body[pos:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return spans
        spans.append((eol + 1, eol + 1 + size))
        pos = eol + 1 + size + 2


def _flip(body: bytes, chunked: bool, offset_of) -> bytes | None:
    """`body` with one payload byte XORed with 0xFF (`offset_of(payload_length)` picks which);
    None when there is no payload byte to flip."""
    spans = _body_spans(body, chunked)
    total = sum(end - start for start, end in spans)
    if not total:
        return None
    k = offset_of(total)
    for start, end in spans:
        if k < end - start:
            out = bytearray(body)
            out[start + k] ^= 0xFF
            return bytes(out)
        k -= end - start
    return None


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a crashed peer or a load balancer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0, seed: int = 0,
                 connect_timeout_s: float = 2.0):
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.faults = NO_FAULTS
        self.seen: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.connections = 0  # client connections accepted (keep-alive reuses one)
        self.deleted: list[str] = []  # "bucket/key" of every object a client asked to delete
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._link_free = 0.0  # monotonic time the capped link is next free

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, faults: Faults = NO_FAULTS) -> None:
        self.faults = faults

    def clear(self) -> None:
        self.faults = NO_FAULTS

    def start(self) -> "FaultProxy":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._stopping.clear()
        threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        ls = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = ls.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def _roll(self) -> float:
        with self._lock:
            return self._rng.random()

    def _count(self, counter: Counter, key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _serve(self, client: socket.socket) -> None:
        upstream: list = [None, None]  # socket, reader
        reader = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                start, headers = head
                method, target = start.decode("latin-1").split(" ")[:2]
                if (_header(headers, "expect") or "").lower() == "100-continue":
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(reader, headers, until_eof=False)
                self._count(self.seen, method)
                deleted = _deleted_keys(method, target, body)
                if deleted:
                    with self._lock:
                        self.deleted.extend(deleted)
                if not self._handle(client, upstream, method, target, _serialize(start, headers) + body,
                                    headers):
                    return
        except (_Closed, OSError, ValueError):
            return
        finally:
            self._untrack(client)
            for sock in (client, upstream[0]):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass

    def _handle(self, client: socket.socket, upstream: list, method: str, target: str, request: bytes,
                headers: list[tuple[str, str]] = ()) -> bool:
        """Answer one request; False when the client connection must end."""
        faults = self.faults
        kind = None
        mangle = False
        if faults.applies(method, target):
            if faults.stall:
                self._count(self.injected, "stall")
                if not self._hold(client):
                    return False
                faults = self.faults
            if faults.latency_s:
                self._count(self.injected, "latency")
                time.sleep(faults.latency_s)
            roll = self._roll()
            if roll < faults.slowdown:
                kind = "slowdown"
            elif roll < faults.slowdown + faults.reset:
                kind = "reset"
            mangle = faults.mangle and method == "GET" and _object_path(target) is not None
        if kind == "slowdown":
            self._count(self.injected, "slowdown")
            client.sendall(
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n\r\n".encode() + SLOWDOWN_BODY
            )
            return True
        rate = faults.bandwidth_bps if faults.applies(method, target) else 0.0
        try:
            self._on_link(len(request), rate)
            response, keep_alive = self._forward(upstream, method, request)
            self._on_link(len(response), rate)
        except (OSError, _Closed, ValueError):
            # Store unreachable or it dropped us: the client sees its connection reset.
            self._count(self.injected, "upstream_down")
            _reset(client)
            return False
        if kind == "reset":
            self._count(self.injected, "reset")
            client.sendall(response[: len(response) // 2])
            _reset(client)
            return False
        if mangle:
            response = self._mangled(response, target, headers)
        client.sendall(response)
        return keep_alive

    def _on_link(self, nbytes: int, rate: float) -> None:
        """Hold the caller while `nbytes` cross a link of `rate` bytes/s shared by all."""
        if rate <= 0:
            return
        with self._lock:
            start = max(time.monotonic(), self._link_free)
            self._link_free = start + nbytes / rate
            done = self._link_free
        self._count(self.injected, "bandwidth")
        time.sleep(max(0.0, done - time.monotonic()))

    def _mangled(self, response: bytes, target: str, request_headers: list[tuple[str, str]]) -> bytes:
        """`response` with one byte of its body flipped if it is a 200/206 with a body."""
        end = response.index(b"\r\n\r\n") + 4
        head, body = response[:end], response[end:]
        status = int(head.split(None, 2)[1])
        if status not in (200, 206) or not body:
            return response
        chunked = b"transfer-encoding: chunked" in head.lower()
        flipped = _flip(body, chunked, lambda n: _mangle_offset(target, request_headers, n))
        if flipped is None:
            return response
        self._count(self.injected, "mangle")
        return head + flipped

    def _hold(self, client: socket.socket) -> bool:
        """Wait while the stall lasts; False if the client went away or we stop."""
        while self.faults.stall and not self._stopping.is_set():
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable:
                try:
                    if not client.recv(1, socket.MSG_PEEK):
                        return False
                except OSError:
                    return False
                time.sleep(0.1)  # a pipelined request waits its turn
        return not self._stopping.is_set()

    def _forward(self, upstream: list, method: str, request: bytes) -> tuple[bytes, bool]:
        for attempt in (0, 1):
            fresh = upstream[0] is None
            if fresh:
                sock = socket.create_connection(self.upstream, timeout=self.connect_timeout_s)
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._track(sock)
                upstream[0], upstream[1] = sock, sock.makefile("rb")
            try:
                upstream[0].sendall(request)
                head = _read_head(upstream[1])
                if head is None:
                    raise _Closed()
            except (OSError, _Closed):
                self._drop(upstream)
                if fresh or attempt:
                    raise
                continue  # an idle keep-alive connection the store had closed: retry once
            start, headers = head
            status = int(start.split()[1])
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            framed = no_body or _header(headers, "content-length") is not None or \
                (_header(headers, "transfer-encoding") or "").lower().endswith("chunked")
            body = b"" if no_body else _read_body(upstream[1], headers, until_eof=True)
            keep_alive = framed and (_header(headers, "connection") or "").lower() != "close"
            if not keep_alive:
                self._drop(upstream)
            return _serialize(start, headers) + body, keep_alive
        raise _Closed()

    def _drop(self, upstream: list) -> None:
        if upstream[0] is not None:
            self._untrack(upstream[0])
            try:
                upstream[0].close()
            except OSError:
                pass
        upstream[0] = upstream[1] = None
