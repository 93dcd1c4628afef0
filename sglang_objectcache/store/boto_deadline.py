"""Deadlines for boto3 calls that botocore cannot keep by itself.

botocore's read timeout is per socket read: a store that trickles bytes (headers or body)
never trips it, and holds a call, and SGLang's storage thread with it, for as long as it
likes (review C2, H6). `Deadlines` gives each call an end (`request_deadline_s` from its
start) and each attempt of it another (connect + read + its bytes at `min_rate_mbps`, as
objectcache's own HTTP clients: `settings.deadline_s`). A watchdog thread shuts down the
socket of an attempt past its end, which ends the read blocked on it at once; botocore may
then retry inside the call's end, and an attempt that would start after that is refused
(`PastDeadline`, which botocore does not retry). `end_now` ends calls early the same way
(a batch SGLang stops).

How it finds the socket: the client's connection pools make connections of a subclass that
tells `Deadlines` which call (thread) is using it (`install`). That reaches into botocore's
HTTP session; where it is not there (another botocore), calls go uncut, as before, and
that is logged once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

logger = logging.getLogger(__name__)

# An attempt whose connection has no socket yet (connecting: bounded by the connect
# timeout) is looked at again this much later.
RECHECK_S = 0.05


class PastDeadline(Exception):
    """No attempt of a call starts after its end (raised in botocore's before-send event,
    so botocore does not retry it)."""


class Call:
    """One call to the store, made on one thread."""

    def __init__(self, end: float, attempt_s: float):
        self.end = end  # time.monotonic() by which the call ends
        self.attempt_s = attempt_s
        self.attempt_end = end
        self.conn = None  # the connection its current attempt uses
        self.attempts = 0
        self.cut_at = 0  # the attempt last cut at its end (1 = the first)
        self.refused = False  # an attempt was refused: the call's end had passed
        self.done = False

    @property
    def timed_out(self) -> bool:
        """Whether the call ended at a deadline. Then whatever botocore made of the bytes
        it had (a reply whose headers or body were cut short can parse as a success) is
        no answer."""
        return self.refused or (self.cut_at > 0 and self.cut_at == self.attempts)


class Group:
    """Calls that end together (one batch's)."""

    def __init__(self):
        self.calls: set[Call] = set()
        self.ended = False


class Deadlines:
    def __init__(self):
        self._local = threading.local()
        self._cond = threading.Condition()
        self._heap: list = []  # (attempt_end, seq, call)
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def install(self, client) -> bool:
        """Watch `client`'s calls. False where its botocore has no place for the watch."""
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        classes = getattr(session, "_pool_classes_by_scheme", None)  # shared with its pool managers
        if not isinstance(classes, dict) or not {"http", "https"} <= set(classes):
            logger.warning("objectcache: this botocore has no connection pool classes to watch: boto3 calls "
                           "are bounded by read_timeout_s per read only, not by request_deadline_s")
            return False
        for scheme in ("http", "https"):
            classes[scheme] = _watched_pool(classes[scheme], self)
        client.meta.events.register("before-send.s3", self._before_send)
        return True

    @contextmanager
    def call(self, total_s: float, attempt_s: float, group: Optional["Group"] = None) -> Iterator[Call]:
        """One call on this thread: it ends by `total_s` from now, each attempt by
        `attempt_s` from its start. While it runs it is in `group` (for `end_now`)."""
        c = Call(time.monotonic() + total_s, min(attempt_s, total_s))
        self._local.call = c
        if group is not None:
            with self._cond:
                group.calls.add(c)
                if group.ended:  # the group was ended before this call began: no attempt starts
                    c.end = time.monotonic()
        try:
            yield c
        finally:
            with self._cond:
                c.done = True
                if c.conn is not None and getattr(c.conn, "_objectcache_call", None) is c:
                    c.conn._objectcache_call = None
                c.conn = None
                if group is not None:
                    group.calls.discard(c)
            self._local.call = None

    def current(self) -> Optional[Call]:
        return getattr(self._local, "call", None)

    def end_now(self, group: "Group") -> None:
        """End the group's calls now, those to come too: their attempts are cut, and none
        starts again."""
        now = time.monotonic()
        with self._cond:
            group.ended = True
            for c in group.calls:
                c.end = c.attempt_end = now
                heapq.heappush(self._heap, (now, next(self._seq), c))
            self._start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # ---- botocore and urllib3 side ---------------------------------------------------------

    def _before_send(self, **_) -> None:
        c = self.current()
        if c is None:
            return None
        now = time.monotonic()
        with self._cond:
            if now >= c.end:
                c.refused = True
                raise PastDeadline("the call's deadline has passed")
            c.attempts += 1
            c.attempt_end = min(c.end, now + c.attempt_s)
            heapq.heappush(self._heap, (c.attempt_end, next(self._seq), c))
            self._start()
            self._cond.notify()
        return None

    def claim(self, conn) -> None:
        """`conn` now carries this thread's call (or none)."""
        c = self.current()
        with self._cond:
            conn._objectcache_call = c
            if c is not None:
                c.conn = conn

    # ---- the watchdog ----------------------------------------------------------------------

    def _start(self) -> None:  # under self._cond
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="objectcache-boto3-deadline", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    end, _, c = heapq.heappop(self._heap)
                    if c.done or end != c.attempt_end:  # over, or a later attempt's end rules
                        continue
                    if not self._cut(c):
                        c.attempt_end = now + RECHECK_S
                        heapq.heappush(self._heap, (c.attempt_end, next(self._seq), c))
                self._cond.wait(self._heap[0][0] - now if self._heap else None)

    @staticmethod
    def _cut(c: Call) -> bool:  # under self._cond
        conn = c.conn
        if conn is None or getattr(conn, "_objectcache_call", None) is not c:
            return False
        sock = getattr(conn, "sock", None)
        if sock is None:
            return False
        c.cut_at = c.attempts
        try:
            # the plain socket's shutdown, also under TLS: the blocked read returns at once
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
        return True


def _watched_pool(pool_cls, deadlines: Deadlines):
    """A subclass of botocore's pool class whose connections tell `deadlines` who uses them."""
    base = pool_cls.ConnectionCls

    class WatchedConnection(base):
        def connect(self):
            deadlines.claim(self)
            return super().connect()

        def request(self, *args, **kwargs):
            deadlines.claim(self)
            return super().request(*args, **kwargs)

    return type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": WatchedConnection})
