"""A store that answers byte by byte (slowloris), for the deadline tests of objectcache's own
HTTP clients (tests/unit/store/test_httpget.py, tests/unit/store/test_httpput.py) and of the transports
(tests/unit/store/test_transports.py)."""

from __future__ import annotations

import socket
import threading

from http_support import LocalEndpoint


class Trickle(LocalEndpoint):
    """An HTTP/1.1 endpoint that reads each request whole (headers, and the body its
    Content-Length names), sends `head` at once, then one byte of `drip` (repeated
    forever) every `every_s` until the client goes away or `close()`. Every byte is progress,
    so only an absolute deadline ends such a request."""

    def __init__(self, head: bytes, drip: bytes = b"x", every_s: float = 0.05):
        self.head, self.drip, self.every_s = head, drip, every_s
        self.requests = 0
        self._stop = threading.Event()
        super().__init__(backlog=16)

    def _one(self, conn: socket.socket) -> None:
        with conn:
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.requests += 1
            try:
                conn.sendall(self.head)
                i = 0
                while not self._stop.wait(self.every_s):
                    conn.sendall(self.drip[i % len(self.drip):][:1])
                    i += 1
            except OSError:  # the client gave up
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def endless_headers() -> Trickle:
    """A status line, then one header that never ends."""
    return Trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a")


def endless_body(length: int) -> Trickle:
    """Whole headers at once (a 200 of `length` bytes), then the body byte by byte."""
    return Trickle(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nETag: \"e\"\r\n\r\n".encode(), b"b")
