"""`Boto3Store`: the portable transport, boto3 over a pooled connection set and a thread pool.

Works with any S3-compatible server and any credential source boto3 knows (explicit keys
from the config, else the standard AWS chain). Retries and timeouts are botocore's own
(`retry_mode`, `total_max_attempts = retries + 1`, fewer where `request_deadline_s` leaves
no room: `deadline_settings`), and each call's total is kept by `boto_deadline.Deadlines`
(botocore's read timeout is per socket read: a trickling store never trips it). Checksums
are `when_required`: older servers reject the newer flexible checksums, and our objects
carry their own xxh3 sums.

Per-request Python work, not bytes, is its ceiling (several times obstore's client CPU per
request: `benchmarks.transports`, docs/storage.md), so the batch calls run on a thread pool
of `max_concurrency` and a batch of one runs inline.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar, Union

from botocore import exceptions as bx

from sglang_objectcache.store import _common as C
from sglang_objectcache.store.base import (STOP_POLL_S, STOPPED, Buffer, Cutoff, GetResult, ObjectInfo, ObjectStat,
                                            ObjectStore, Receiver, StoreError, stopped)
from sglang_objectcache.store.boto_client import (body_of, classify, deadline_settings, make_bucket, make_client,
                                                   probe, status_code)
from sglang_objectcache.store.boto_deadline import Call, Deadlines, Group, PastDeadline
from sglang_objectcache.store.settings import StoreSettings, deadline_s

# From benchmarks/results/transports.json: ~2.2 ms of client CPU per request caps boto3 at
# ~450 req/s per core, which 16 threads keep busy even at 35 ms of store latency; at 64,
# 8 MiB PUTs queued past the 60 s socket timeout on this box while throughput did not rise.
DEFAULT_CONCURRENCY = 16

T = TypeVar("T")
R = TypeVar("R")


class Boto3Store(ObjectStore):
    name = "boto3"

    def __init__(self, settings: StoreSettings, max_concurrency: Optional[int] = None):
        self.settings = settings
        self.bucket = settings.bucket
        self.max_concurrency = C.concurrency(settings, max_concurrency, DEFAULT_CONCURRENCY)
        self._redact = C.Redactor.of(settings)
        read_s, attempts = deadline_settings(settings)
        self._client = make_client(settings, connect_s=settings.connect_timeout_s, read_s=read_s,
                                   attempts=attempts, pool=self.max_concurrency)
        self._deadlines = Deadlines()
        self._deadlines.install(self._client)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="objectcache-boto3")
        self._conditional = C.ConditionalPuts(f"{C.endpoint_of(settings)}/{settings.bucket}")

    def __repr__(self) -> str:
        return f"Boto3Store(endpoint={C.endpoint_of(self.settings)!r}, bucket={self.bucket!r}, " \
               f"max_concurrency={self.max_concurrency})"

    # --- batch calls --------------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:  # a thread hop costs more than it saves
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def get_many(self, keys: Sequence[str]) -> list[GetResult]:
        return self._map(self._get, keys)

    def get_each(self, keys: Sequence[str], land: Callable[[int, GetResult], Optional[bool]],
                 size: Optional[int] = None, into: Optional[Callable[[int], Receiver]] = None,
                 stop: Optional[threading.Event] = None) -> None:
        # `into` is not used: botocore reads each body into bytes of its own. With `size`,
        # each GET asks for size + 1 bytes and reads no more, even from a server that
        # ignores Range: a longer object arrives the wrong size, as with obstore.
        calls = Group()  # the GETs in flight, to cut if SGLang stops the batch

        def get(key: str) -> GetResult:
            if size is None:
                return self._get(key, group=calls)
            return self._get(key, 0, size + 1, sized=True, group=calls)

        cut = Cutoff(len(keys), land)
        if len(keys) <= 1:
            for i, k in enumerate(keys):
                if not stopped(stop):
                    cut(i, get(k))
            return

        def one(i: int, key: str) -> None:
            if i <= cut.at and not stopped(stop):  # else the batch stopped before it started
                cut(i, get(key))

        pending = {self._pool.submit(one, i, k) for i, k in enumerate(keys)}
        futures = list(pending)
        while pending:  # every one, so no `land` runs after we return
            _, pending = wait(pending, timeout=None if stop is None else STOP_POLL_S)
            if pending and stopped(stop):
                cut.halt()  # nothing more lands, and the GETs in flight end now
                self._deadlines.end_now(calls)
                wait(pending)
                break
        for f in futures:
            if f.exception() is not None:
                raise f.exception()

    def exists_prefix(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        if len(keys) <= 1:
            return [self._exists(k) for k in keys]
        futures = [self._pool.submit(self._exists, k) for k in keys]
        out = []
        try:
            for f in futures:
                out.append(f.result())
                if out[-1] is not True:
                    break
        finally:
            for f in futures:  # HEADs not started yet are dropped
                f.cancel()
        return out

    def get_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> list[GetResult]:
        spans, bad = C.plan_ranges(reqs)
        out: list[GetResult] = [None] * len(reqs)
        for slot in bad:
            out[slot] = C.bad_range(reqs[slot])
        for span, r in zip(spans, self._map(lambda s: self._get(s.key, s.start, s.end), spans)):
            if r is None or isinstance(r, StoreError):
                for slot, _, _ in span.members:
                    out[slot] = r
            else:
                C.split_span(span, r, out)
        return out

    def put_many(self, items: Sequence[tuple[str, Buffer]], if_absent: bool = True) -> list[Union[bool, StoreError]]:
        return self._map(lambda kv: self._put(kv[0], kv[1], if_absent), items)

    def put_iter(self, items: Iterable[tuple[str, Buffer]], if_absent: bool = True,
                 stop: Optional[threading.Event] = None) -> list:
        futures = []
        try:
            for key, data in items:
                if stopped(stop):
                    break
                futures.append(self._pool.submit(self._put, key, data, if_absent, stop))
            return [f.result() for f in futures]
        finally:
            for f in futures:  # only if we got here by an exception: drop what has not started
                f.cancel()

    def exists_many(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        return self._map(self._exists, keys)

    def stat_many(self, keys: Sequence[str]) -> list[Union[ObjectStat, None, StoreError]]:
        return self._map(self._stat, keys)

    def delete_many(self, keys: Sequence[str]) -> int:
        gone = 0
        for chunk in C.chunks(list(keys), 1000):  # DeleteObjects takes at most 1000 keys
            try:
                r = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            except Exception as e:  # noqa: BLE001
                raise self._error("DELETE", f"({len(chunk)} keys)", e) from None
            gone += len(chunk) - len(r.get("Errors", []))
        return gone

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    yield ObjectInfo(o["Key"], o["Size"], o["LastModified"].timestamp())
        except Exception as e:  # noqa: BLE001
            raise self._error("LIST", prefix + "*", e) from None

    # --- one request each ---------------------------------------------------------------

    def _timed(self, nbytes: Optional[int] = None, group: Optional[Group] = None):
        """One call's deadlines (`boto_deadline`): `request_deadline_s` in all, and each
        attempt `settings.deadline_s` of its bytes where they are known."""
        total = self.settings.request_deadline_s
        return self._deadlines.call(total, total if nbytes is None else deadline_s(self.settings, nbytes), group)

    def _get(self, key: str, start: int = 0, end: int = 0, sized: bool = False,
             group: Optional[Group] = None) -> GetResult:
        """The object, or its bytes [start, end) (`end` 0: to its end). Never more than
        `end` bytes are read, even from a server that ignores Range. `sized`: a GET from 0
        where an empty object is b"" (S3 answers its range with 416), as get_each wants."""
        with self._timed(end - start if end else None, group) as call:
            try:
                if not end:
                    return self._answer("GET", key, call, self._client.get_object(
                        Bucket=self.bucket, Key=key)["Body"].read())
                r = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
                whole = r["ResponseMetadata"]["HTTPStatusCode"] == 200  # a server that ignores Range
                body = r["Body"]
                try:
                    data = body.read(end if whole else end - start)
                finally:
                    body.close()  # drops the connection only if a body is left unread
                expected = min(r.get("ContentLength", len(data)), end if whole else end - start)
                if len(data) != expected and not call.timed_out:
                    return StoreError("unreachable", self._redact(
                        f"GET {self.bucket}/{key}: body cut short, {len(data)} of {expected} bytes"))
                return self._answer("GET", key, call, memoryview(data)[start:end] if whole else data)
            except bx.ClientError as e:
                status, code = status_code(e)
                if status == 404 and code != "NoSuchBucket" and not call.timed_out:
                    return None
                if status == 416 and sized and not call.timed_out:
                    return b""
                return self._error("GET", key, e, call)
            except Exception as e:  # noqa: BLE001 - one bad object must not hide the others
                return self._error("GET", key, e, call)

    def _answer(self, op: str, key: str, call: Call, result: T) -> Union[T, StoreError]:
        """`result`, unless the call was cut at its deadline: a reply cut short in its
        headers or body can parse as a success."""
        return self._error(op, key, PastDeadline("cut"), call) if call.timed_out else result

    def _put(self, key: str, data: Buffer, if_absent: bool, stop: Optional[threading.Event] = None):
        if stopped(stop):  # its turn came after SGLang stopped the batch
            return STOPPED
        with self._timed(memoryview(data).nbytes) as call:  # one deadline, a conditional PUT sent again included
            return self._answer("PUT", key, call, self._conditional.put(
                lambda conditional: self._put_once(key, data, conditional), if_absent))

    def _put_once(self, key: str, data: Buffer, conditional: bool) -> Union[bool, C.Refused, StoreError]:
        try:
            if conditional:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body_of(data), IfNoneMatch="*")
            else:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body_of(data))
            return True
        except bx.ClientError as e:
            status, code = status_code(e)
            return C.Refused(status, code, e.response.get("Error", {}).get("Message", ""), self._error("PUT", key, e))
        except Exception as e:  # noqa: BLE001
            return self._error("PUT", key, e)

    def _exists(self, key: str) -> Union[bool, StoreError]:
        with self._timed(0) as call:
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
                return self._answer("HEAD", key, call, True)
            except bx.ClientError as e:
                if status_code(e)[0] == 404 and not call.timed_out:  # a HEAD has no body: a missing
                    return False  # bucket looks the same
                return self._error("HEAD", key, e, call)
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e, call)

    def _stat(self, key: str) -> Union[ObjectStat, None, StoreError]:
        with self._timed(0) as call:
            try:
                r = self._client.head_object(Bucket=self.bucket, Key=key)
                return self._answer("HEAD", key, call, ObjectStat(r["ContentLength"], r.get("ETag", "").strip('"')))
            except bx.ClientError as e:
                if status_code(e)[0] == 404 and not call.timed_out:  # as in _exists
                    return None
                return self._error("HEAD", key, e, call)
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e, call)

    def _error(self, op: str, key: str, e: Exception, call: Optional[Call] = None) -> StoreError:
        where = f"{op} {self.bucket}/{key}"
        call = call or self._deadlines.current()
        if isinstance(e, PastDeadline) or (call is not None and call.timed_out):
            return StoreError("timeout", self._redact(
                f"{where}: not done within its deadline ({self.settings.request_deadline_s:g}s a call; each attempt "
                f"connect + read + its bytes at {self.settings.min_rate_mbps:g} Mbit/s)"))
        kind, what, status = classify(e)
        return StoreError(kind, self._redact(f"{where}: {what}"), status)

    # --- startup ------------------------------------------------------------------------

    def check(self, create_bucket: bool = False) -> None:
        connect_s, read_s = C.check_timeouts(self.settings)
        client = make_client(self.settings, connect_s=connect_s, read_s=read_s, attempts=1, pool=1)
        try:
            C.run_check(self.settings, lambda: probe(client, self.settings), lambda: make_bucket(self.settings),
                        create_bucket)
        finally:
            client.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
        self._deadlines.close()

