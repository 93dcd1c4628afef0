"""The transport contract: how objectcache talks to an S3-compatible object store.

A transport moves bytes. It knows nothing of KV, pages, layouts or SGLang, and it never
retries by hand: retries and timeouts are the client library's own (botocore's retry
modes, obstore's retry config), set from `StoreSettings` (settings.py).

Batch methods run their requests concurrently, at most `max_concurrency` at a time, and
return one result per input, in input order. A per-item failure is returned as a
`StoreError` in that slot, never raised, so one bad object cannot hide the others:
- `get_many(keys)`: the object's bytes (any buffer: bytes, memoryview, obstore.Bytes),
  `None` if the key does not exist, or a `StoreError`.
- `get_each(keys, land)`: the same GETs as `get_many` (as many in flight as
  `max_concurrency`), but each result is handed to `land(index, result)` on the
  transport's own thread(s) as soon as it arrives, in completion order, so the caller's
  work on one object overlaps the transfers of the rest with no hand-off per object.
  `land` must be thread-safe (boto3's pool calls it from several threads at once). If it
  returns False, the GETs of higher indices that have not landed yet are cancelled and not
  handed to it; lower indices still are. An exception from `land` stops the batch and is
  re-raised. Returns only when no `land` call is running or will run, so the caller owns
  whatever `land` wrote once it returns. The result handed to `land` may be valid only
  during the call (a transport may receive the next body into its memory): copy what you
  keep. With `size`, every object is expected to be
  `size` bytes: the transport may read only its first `size + 1` bytes (so one too long
  still arrives the wrong size, and an empty one arrives empty rather than as an error).
  With `into` as well, `into(i)` gives a `Receiver` for object i: a transport that can
  streams the object through it as it arrives (read into `receiver.parts`, or handed over
  read by read), calling `receiver.received` after each read, and hands `land` the result
  `INTO` once all `size` bytes went through. It may ignore `into` for any object (that
  object then lands as a body, as without it), and a receiver may have been fed part of an
  object that then lands as a body (a read cut short, read again): what a receiver writes
  must be the caller's scratch until `land` says otherwise. With `stop` (a
  `threading.Event`: SGLang's, set when it stops its storage threads), once it is set no
  GET starts and no result is handed to `land` any more (a `land` running goes on), GETs in
  flight are abandoned where the transport can (obstore cancels them, boto3 cuts their
  connections) and get_each returns within about `STOP_POLL_S` of it.
- `get_ranges(reqs)`: for each (key, start, end) the bytes of [start, end); `None` if the
  key does not exist. Adjacent ranges of one key may be coalesced into one request; that
  is the transport's business.
- `put_many(items)`: True if written, False if the key already existed (with
  `if_absent=True` a conditional PUT, `If-None-Match: *`, so two writers store once).
- `put_iter(items)`: `put_many` over an iterable, each PUT started as soon as its item is
  produced (the caller seals page i + 1 while page i uploads); results in input order.
  `items` may be drawn on the transport's own thread; an exception it raises stops the
  batch and is re-raised. With `stop` (as get_each's), once it is set no more items are
  drawn (the results end there) and a PUT not started yet is not sent: its result is
  `STOPPED`. PUTs in flight are finished (each by its deadline): the caller may reuse the
  memory it handed over only once no PUT can read it.
- `exists_many(keys)`: True/False per key (HEAD), or a `StoreError`.
- `exists_prefix(keys)`: `exists_many` for a leading run: the answers in order up to and
  including the first one that is not True; the HEADs past it may be cancelled unanswered.
- `delete_many(keys)`: deletes what exists; returns how many keys it was asked to delete
  that are now gone.
- `list(prefix)`: every object under `prefix`, as `ObjectInfo`, paginated lazily.
- `stat_many(keys)`: what the store says it holds (HEAD): an `ObjectStat` (size and ETag),
  `None` if the key does not exist, or a `StoreError`. The scrub uses it to tell bytes
  damaged in the store from bytes damaged on the way (`etag_matches`).
- `check(create_bucket)`: one round trip at startup. Raises `StoreError` with a message a
  user can act on: endpoint unreachable, credentials rejected, bucket missing.
Methods other than the batch ones raise `StoreError` on failure.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

Buffer = Union[bytes, bytearray, memoryview]


# S3 refuses a request signed more than 15 minutes off its own clock (403). botocore corrects
# for it; obstore and our own clients sign with this machine's clock, so say what to fix.
CLOCK_SKEW_HINT = ("this machine's clock and the store's differ by more than S3 allows (15 minutes); "
                   "fix the clock (NTP)")


class StoreError(Exception):
    """A store failure. `kind` is one of KINDS, so callers can count miss reasons."""

    KINDS = ("unreachable", "auth", "no_bucket", "timeout", "throttled", "server", "client")

    def __init__(self, kind: str, message: str, status: int = 0):
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.status = status  # the HTTP status where there was one (416: a range past the end)

    @property
    def store_wide(self) -> bool:
        """Says the store (not one object) is unwell: connection-level failures, timeouts,
        5xx and throttling. A 4xx about one object (416, 403 on an archived object, 404)
        is that object's miss, never the whole store's."""
        return self.kind in ("unreachable", "timeout", "throttled", "server")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # seconds since the epoch


@dataclass(frozen=True)
class ObjectStat:
    size: int
    etag: str  # as the store reports it, quotes stripped; "" if it gave none


def etag_matches(body, etag: str) -> Optional[bool]:
    """Whether `body` is the bytes the store holds under `etag`: a single-part PUT's ETag
    is the MD5 of its body on S3, SeaweedFS, MinIO and Ceph. None where the ETag is no
    plain MD5 (multipart, SSE-KMS): then the body proves nothing either way."""
    import hashlib
    import re

    if not re.fullmatch(r"[0-9a-f]{32}", etag or ""):
        return None
    return hashlib.md5(memoryview(body).cast("B")).hexdigest() == etag


class _Into:
    def __repr__(self) -> str:
        return "INTO"


INTO = _Into()  # get_each's result for an object that went whole through its Receiver
GetResult = Union[Buffer, None, StoreError, _Into]


class _Stopped:
    def __repr__(self) -> str:
        return "STOPPED"


STOPPED = _Stopped()  # put_iter's result for a PUT not sent because `stop` was set
# How often a batch looks at its `stop` event while it waits on the store.
STOP_POLL_S = 0.02


def stopped(stop: Optional[threading.Event]) -> bool:
    return stop is not None and stop.is_set()


class Receiver(ABC):
    """Where one object's bytes go as they arrive (`get_each`'s `into`): the caller checks
    and places each read while it is still in the CPU's cache, and the transport needs no
    buffer the size of the object."""

    # Writable 1-D byte buffers totalling the object's size, in its order, to receive
    # straight into; None: each read is handed to `received`.
    parts: Optional[Sequence[memoryview]] = None

    @abstractmethod
    def received(self, data: Optional[memoryview], upto: int) -> None:
        """The object's bytes up to `upto` have arrived. With `parts` they are in place and
        `data` is None; without, `data` is the bytes just read, [upto - len(data), upto),
        valid during this call only (the transport reads the next ones into the same
        memory): keep what you need. Called on the transport's thread, in order, the last
        time with upto equal to the size. Must not raise: a transport that sees an
        exception reads the object again without the receiver."""


class Cutoff:
    """`get_each`'s stop point, shared by the threads that land results: `at` is the lowest
    index whose `land` returned False (-1 once one raised); nothing above it is landed."""

    def __init__(self, n: int, land: Callable[[int, GetResult], Optional[bool]]):
        self.at = n
        self._land = land
        self._lock = threading.Lock()

    def _stop(self, i: int) -> None:
        with self._lock:
            self.at = min(self.at, i)

    def halt(self) -> None:
        """Nothing more is landed (the batch was stopped from outside)."""
        self._stop(-1)

    def __call__(self, i: int, result: GetResult) -> bool:
        """Land result i unless the batch stopped below it; False if the batch stops here."""
        if i > self.at:
            return False
        try:
            go = self._land(i, result) is not False
        except BaseException:
            self._stop(-1)
            raise
        if not go:
            self._stop(i)
        return go


class ObjectStore(ABC):
    name: str = "abstract"
    max_concurrency: int = 1

    @abstractmethod
    def check(self, create_bucket: bool = False) -> None: ...

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[GetResult]: ...

    @abstractmethod
    def get_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> list[GetResult]: ...

    @abstractmethod
    def put_many(self, items: Sequence[tuple[str, Buffer]],
                 if_absent: bool = True) -> list[Union[bool, StoreError]]: ...

    @abstractmethod
    def exists_many(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]: ...

    @abstractmethod
    def delete_many(self, keys: Sequence[str]) -> int: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def stat_many(self, keys: Sequence[str]) -> list[Union["ObjectStat", None, StoreError]]:
        return [StoreError("client", f"{self.name}: stat is not supported")] * len(keys)

    def get_each(self, keys: Sequence[str], land: Callable[[int, GetResult], Optional[bool]],
                 size: Optional[int] = None, into: Optional[Callable[[int], Receiver]] = None,
                 stop: Optional[threading.Event] = None) -> None:
        cut = Cutoff(len(keys), land)
        for i, r in enumerate(self.get_many(keys)):  # one call: a stop is seen once it is over
            if stopped(stop) or not cut(i, r):
                return

    def put_iter(self, items: Iterable[tuple[str, Buffer]], if_absent: bool = True,
                 stop: Optional[threading.Event] = None) -> list[Union[bool, StoreError, _Stopped]]:
        drawn = []
        for item in items:
            if stopped(stop):
                break
            drawn.append(item)
        return self.put_many(drawn, if_absent)

    def exists_prefix(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        answers = self.exists_many(keys)
        end = next((i for i, r in enumerate(answers) if r is not True), len(answers) - 1)
        return answers[: end + 1]

    def get(self, key: str) -> Optional[Buffer]:
        (r,) = self.get_many([key])
        if isinstance(r, StoreError):
            raise r
        return r

    def put(self, key: str, data: Buffer, if_absent: bool = True) -> bool:
        (r,) = self.put_many([(key, data)], if_absent)
        if isinstance(r, StoreError):
            raise r
        return r

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
