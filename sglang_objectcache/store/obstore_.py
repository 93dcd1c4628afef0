"""`ObstoreStore`: the fast transport, obstore (Rust object_store + reqwest) on one asyncio loop.

On this 2-core box (benchmarks/results/transports.json) it spends ~3x less client CPU per
256 KiB request than boto3 (0.6-0.9 ms vs 2.1-2.7 ms), GETs them 1.3-2x faster in a batch
and ~3x faster one at a time, because HTTP, signing and range splitting run in Rust
without the GIL. Large objects and PUTs are bound by the server, not the client.

Each batch is one `asyncio.gather` on a private event loop in a daemon thread, bounded by
a semaphore of `max_concurrency` and, for large objects, by bytes in flight per batch;
results are `obstore.Bytes` (buffer protocol, zero-copy from Rust), never copied into
`bytes`. A GET whose size the caller knows is one ranged GET (one Rust future), or, where
`httpget.applies` (plain http, static keys, path style), a GET by objectcache's own client
that receives the body into a reused buffer, or through the caller's `Receiver` read by
read, falling back to obstore for anything else. The caller's per-object work runs on the
loop (for bodies of `OFFLOAD_BYTES` and up, on a small pool beside it; a receiver's work is
done as the reads arrive), so the caller's thread wakes once per batch, not once per object
(on 2 cores each wake forced GIL hand-offs between the caller, the loop and obstore's
runtime threads): `get_each` runs
the caller's `land` as each GET lands, `put_iter` draws (seals) each item on the loop and
starts its PUT before drawing the next, and `exists_prefix` awaits the HEADs in order and
cancels the rest at the first miss.

Semantics kept equal to `Boto3Store`:
- `list(prefix)` is a string prefix, as in S3. object_store lists directories, so we list
  the prefix's directory from just before the prefix and stop at the first key past it.
- Conditional PUT is `mode="create"` (If-None-Match: *); what a refusal means is
  `_common.ConditionalPuts`'s (412 -> False).
- Credentials: explicit keys from the config, else boto3's chain through obstore's
  `Boto3CredentialProvider`, so temporary credentials refresh.
- Creating a bucket has no obstore call; `check(create_bucket=True)` uses boto3 for that.
Keys must be valid object_store paths (no empty segments, no "." or ".." segments); the
keys in `keys.py` are.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union
from urllib.parse import urlsplit, urlunsplit

import obstore
from obstore import exceptions as ox
from obstore.store import S3Store

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import _common as C
from sglang_objectcache.store import httpget, httpput
from sglang_objectcache.store.base import (INTO, STOP_POLL_S, STOPPED, Buffer, Cutoff, GetResult, ObjectInfo,
                                            ObjectStat, ObjectStore, Receiver, StoreError, stopped)

# In-flight requests cost no thread here. A remote store's latency needs many in flight
# (~1400 req/s per core at 20-40 ms is 28-56); 128 sends SGLang's 128-page batch in one
# round trip. On loopback (benchmarks/results/get_path*.json) 128 was 3-6% faster than 64
# for 256 KiB and 2 MiB pages.
DEFAULT_CONCURRENCY = 128
# Large objects are capped by bytes in flight instead (the raw lanes of benchmarks/results/
# storage*.json, 8 MiB pages). GET: 64 in flight beat 16 by 4-12%, and the bound is the
# transient memory a batch holds (each body is freed once landed). PUT: the store's disk
# is the bottleneck, and 16 beat 64 by 20-27% (the bodies are in the caller's staging rows
# either way).
GET_BYTES_IN_FLIGHT = 512 << 20
PUT_BYTES_IN_FLIGHT = 128 << 20

_STATUS = re.compile(r"status code: (\d+)")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")


class _Deadline(Exception):
    """A call cut at `request_deadline_s`, retries included."""


def make_s3store(cfg: ObjectCacheConfig, *, connect_s: float, read_s: float, retries: int,
                 pool: int, deadline_s: Optional[float] = None) -> S3Store:
    """An S3Store for `cfg`. No attempt outlasts `deadline_s` (default `request_deadline_s`)
    and no retry starts after it; `ObstoreStore` also cuts each call, retries included,
    at the deadline (`_within`), since a retry begun just in time could run past it."""
    deadline_s = cfg.request_deadline_s if deadline_s is None else deadline_s
    kw: dict = {"region": cfg.region, "virtual_hosted_style_request": cfg.addressing_style == "virtual",
                "unsigned_payload": not cfg.sign_payload}
    if cfg.endpoint_url:
        kw["endpoint"] = _endpoint(cfg)
    if cfg.access_key_id:
        kw.update(access_key_id=cfg.access_key_id, secret_access_key=cfg.secret_access_key)
        if cfg.session_token:
            kw["token"] = cfg.session_token
    else:
        kw["credential_provider"] = _aws_chain(cfg)
    client = {
        "allow_http": cfg.endpoint_url.startswith("http://"),
        "allow_invalid_certificates": not cfg.verify_tls,
        "connect_timeout": timedelta(seconds=connect_s),
        # read_timeout catches a stalled server (it also covers waiting for the headers);
        # the overall cap bounds a trickling transfer.
        "read_timeout": timedelta(seconds=read_s),
        "timeout": timedelta(seconds=deadline_s),
        "pool_max_idle_per_host": str(pool),
    }
    retry = {"max_retries": retries, "retry_timeout": timedelta(seconds=deadline_s),
             # object_store's default backoff may grow to 15 s; a retry must fit the deadline
             "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=0.5),
                         "base": 2}}
    return S3Store(cfg.bucket, client_options=client, retry_config=retry, **kw)


def _endpoint(cfg: ObjectCacheConfig) -> str:
    # object_store wants the bucket in the host for virtual-hosted style.
    ep = cfg.endpoint_url.rstrip("/")
    if cfg.addressing_style != "virtual":
        return ep
    u = urlsplit(ep)
    return urlunsplit((u.scheme, f"{cfg.bucket}.{u.netloc}", u.path, "", ""))


def _aws_chain(cfg: ObjectCacheConfig):
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    try:
        return Boto3CredentialProvider(boto3.session.Session(region_name=cfg.region))
    except ValueError:  # the chain found nothing
        raise C.check_error(cfg, C.Probe("auth", "NoCredentials")) from None


class ObstoreStore(ObjectStore):
    name = "obstore"
    # get_each lands bodies this large on a small thread pool rather than on the loop
    OFFLOAD_BYTES = 1 << 20

    def __init__(self, cfg: ObjectCacheConfig, max_concurrency: Optional[int] = None):
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.max_concurrency = C.concurrency(cfg, max_concurrency, DEFAULT_CONCURRENCY)
        self._redact = C.Redactor.of(cfg)
        self._store = make_s3store(cfg, connect_s=cfg.connect_timeout_s, read_s=cfg.read_timeout_s,
                                   retries=cfg.retries, pool=self.max_concurrency)
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._deadline_s = cfg.request_deadline_s
        self._land_pool: Optional[ThreadPoolExecutor] = None
        fast = httpget.with_env_keys(cfg)
        self._http = httpget.HttpGet(fast) if httpget.applies(fast) else None
        self._http_put = httpput.HttpPut(fast) if httpput.applies(fast) else None
        self._conditional = C.ConditionalPuts(f"{C.endpoint_of(cfg)}/{cfg.bucket}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="objectcache-obstore", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"ObstoreStore(endpoint={C.endpoint_of(self.cfg)!r}, bucket={self.bucket!r}, " \
               f"max_concurrency={self.max_concurrency})"

    async def _within(self, aw, at: Optional[float] = None):
        """`await aw`, cut at loop time `at` (default: `request_deadline_s` from now) with
        _Deadline: obstore's retries and a trickling body must not outlast one call's
        deadline (config.SLOW_STORE_S)."""
        at = self._loop.time() + self._deadline_s if at is None else at
        cm = asyncio.timeout_at(at)
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if cm.expired():
                raise _Deadline(f"no answer within the {self._deadline_s:g}s request deadline") from None
            raise

    def _run(self, coros):
        async def gather():
            return await asyncio.gather(*coros)

        return asyncio.run_coroutine_threadsafe(gather(), self._loop).result()

    # --- batch calls --------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[GetResult]:
        return self._run([self._get(k) for k in keys])

    def get_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> list[GetResult]:
        out: list[GetResult] = [None] * len(reqs)
        by_key: dict[str, tuple[list[int], list[int], list[int]]] = {}
        for slot, (key, start, end) in enumerate(reqs):
            if start < 0 or end <= start:
                out[slot] = C.bad_range(reqs[slot])
                continue
            slots, starts, ends = by_key.setdefault(key, ([], [], []))
            slots.append(slot)
            starts.append(start)
            ends.append(end)
        # object_store coalesces and splits each key's ranges itself (zero-copy slices).
        results = self._run([self._ranges(key, starts, ends) for key, (_, starts, ends) in by_key.items()])
        for (slots, _, _), r in zip(by_key.values(), results):
            if r is None or isinstance(r, StoreError):
                for slot in slots:
                    out[slot] = r
            else:
                for slot, buf in zip(slots, r):
                    out[slot] = buf
        return out

    def put_many(self, items: Sequence[tuple[str, Buffer]], if_absent: bool = True) -> list[Union[bool, StoreError]]:
        return self._run([self._put(k, v, if_absent) for k, v in items])

    def exists_many(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        return self._run([self._exists(k) for k in keys])

    def stat_many(self, keys: Sequence[str]) -> list[Union[ObjectStat, None, StoreError]]:
        return self._run([self._stat(k) for k in keys])

    def put_iter(self, items: Iterable[tuple[str, Buffer]], if_absent: bool = True,
                 stop: Optional[threading.Event] = None) -> list:
        async def run() -> list:
            # `items` is drawn on the loop (the caller's sealing runs here): one hand-off per
            # batch, not one per PUT. Each PUT starts before the next item is made.
            tasks = []
            limit = None
            try:
                for key, data in items:
                    limit = limit or self._bytes_limit(memoryview(data).nbytes, PUT_BYTES_IN_FLIGHT)
                    tasks.append(asyncio.ensure_future(self._limited(limit, self._put(key, data, if_absent, stop))))
                    await asyncio.sleep(0)  # let it reach the network
                    if stopped(stop):
                        break
                return await asyncio.gather(*tasks)
            finally:
                for t in tasks:  # only if we got here by an exception: no-op once done
                    t.cancel()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def get_each(self, keys: Sequence[str], land: Callable[[int, GetResult], Optional[bool]],
                 size: Optional[int] = None, into: Optional[Callable[[int], Receiver]] = None,
                 stop: Optional[threading.Event] = None) -> None:
        cut = Cutoff(len(keys), land)
        tasks: list[asyncio.Future] = []
        fetching = set(range(len(keys)))  # only these may be cancelled: never a running `land`
        limit = self._bytes_limit(size, GET_BYTES_IN_FLIGHT) if size else None

        def heavy(r: GetResult) -> bool:
            # INTO: its receiver did the work while it arrived
            return r is not None and r is not INTO and not isinstance(r, StoreError) and len(r) >= self.OFFLOAD_BYTES

        async def one(i: int, key: str) -> None:
            # `into(i)` is asked for only where the GET can receive through it
            r, release = await self._get_sized(key, size, into and (lambda: into(i)))
            fetching.discard(i)
            go = False
            try:
                if heavy(r):
                    # A large object's checks and copies (GIL released) run beside the loop.
                    go = await self._loop.run_in_executor(self._landers(), cut, i, r)
                else:
                    go = cut(i, r)
            finally:
                if release is not None:
                    release()
                if not go:  # cancel the GETs above the stop point that have not landed
                    for j in range(cut.at + 1, len(keys)):
                        if j in fetching:
                            tasks[j].cancel()

        async def halt_on_stop() -> None:
            # SGLang is stopping its storage threads: land nothing more, and cancel every GET
            # not landed yet (a cancelled GET of ours closes its connection, so nothing
            # writes into a receiver's memory after that).
            while not stop.is_set():
                await asyncio.sleep(STOP_POLL_S)
            cut.halt()
            for j in list(fetching):
                tasks[j].cancel()

        async def run() -> None:
            # The byte cap is held until each body is landed and can be freed.
            tasks.extend(asyncio.ensure_future(self._limited(limit, one(i, k))) for i, k in enumerate(keys))
            watch = asyncio.ensure_future(halt_on_stop()) if stop is not None else None
            try:
                # return_exceptions: a cancelled task must not end the gather while others
                # may still call `land`.
                for r in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                        raise r
            finally:
                if watch is not None:
                    watch.cancel()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def _bytes_limit(self, size: int, budget: int) -> Optional[asyncio.Semaphore]:
        """A per-batch cap on requests in flight for objects of `size`, or None where the
        request cap (`max_concurrency`) is the lower one."""
        n = max(1, budget // max(1, size))
        return asyncio.Semaphore(n) if n < self.max_concurrency else None

    @staticmethod
    async def _limited(limit: Optional[asyncio.Semaphore], coro):
        if limit is None:
            return await coro
        async with limit:
            return await coro

    def _landers(self) -> ThreadPoolExecutor:
        if self._land_pool is None:
            self._land_pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="objectcache-land")
        return self._land_pool

    def exists_prefix(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        async def leading_run():
            # All HEADs start at once; answers are taken in order, and the first that is
            # not True cancels the rest. One hand-off to the caller, not one per key.
            tasks = [asyncio.ensure_future(self._exists(k)) for k in keys]
            out = []
            try:
                for t in tasks:
                    out.append(await t)
                    if out[-1] is not True:
                        break
            finally:
                for t in tasks:
                    t.cancel()
            return out

        return asyncio.run_coroutine_threadsafe(leading_run(), self._loop).result()

    def delete_many(self, keys: Sequence[str]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        try:  # S3 DeleteObjects in chunks of 1000; a missing key counts as deleted
            obstore.delete(self._store, keys)
        except Exception as e:  # noqa: BLE001
            raise self._error("DELETE", f"({len(keys)} keys)", e) from None
        return len(keys)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        directory = prefix[: prefix.rfind("/") + 1]
        kw = {"prefix": directory or None}
        if prefix != directory:  # start just before the prefix; keys are listed in order
            kw["offset"] = prefix[:-1]
        try:
            for chunk in obstore.list(self._store, chunk_size=1000, **kw):
                for m in chunk:
                    key = m["path"]
                    if key.startswith(prefix):
                        yield ObjectInfo(key, m["size"], m["last_modified"].timestamp())
                    elif key > prefix:
                        return
        except Exception as e:  # noqa: BLE001
            raise self._error("LIST", prefix + "*", e) from None

    # --- one request each ---------------------------------------------------------------

    async def _get(self, key: str, size: Optional[int] = None, at: Optional[float] = None) -> GetResult:
        """`at`: the loop time the call must end by (default: request_deadline_s from now)."""
        async with self._sem:
            try:
                if size is None:
                    at = self._loop.time() + self._deadline_s if at is None else at
                    r = await self._within(obstore.get_async(self._store, key), at)
                    return await self._within(r.bytes_async(), at)
                # One Rust future, not two (the response, then its body): 27-30% less client
                # CPU per GET on this box (benchmarks/results/get_path*.json).
                return await self._within(obstore.get_range_async(self._store, key, start=0, end=size + 1), at)
            except FileNotFoundError as e:
                return self._error("GET", key, e) if "NoSuchBucket" in str(e) else None
            except Exception as e:  # noqa: BLE001 - one bad object must not hide the others
                if size is not None and _status(e) == 416:  # an empty object has no byte 0
                    return b""
                return self._error("GET", key, e)

    async def _get_sized(self, key: str, size: Optional[int], receiver: Optional[Callable[[], Receiver]] = None
                         ) -> tuple[GetResult, Optional[Callable[[], None]]]:
        """`_get`, through `HttpGet` where it applies: then (body, release), the body valid
        until release(), or (INTO, None) when it went through `receiver()`; anything HttpGet
        does not expect is read again by obstore."""
        at = None
        if self._http is not None and size:
            async with self._sem:
                at = self._loop.time() + self._deadline_s  # obstore, if asked, gets what is left
                r = await self._http.get(key, size, receiver and receiver())
            if isinstance(r, tuple):
                return r
            if r is not httpget.FALL_BACK:
                return r, None
        return await self._get(key, size, at), None

    async def _ranges(self, key: str, starts: list[int], ends: list[int]):
        async with self._sem:
            try:
                return await self._within(obstore.get_ranges_async(self._store, key, starts=starts, ends=ends,
                                                                   coalesce=C.COALESCE_GAP))
            except FileNotFoundError as e:
                return self._error("GET", key, e) if "NoSuchBucket" in str(e) else None
            except Exception as e:  # noqa: BLE001
                return self._error("GET", key, e)

    async def _put(self, key: str, data: Buffer, if_absent: bool, stop: Optional[threading.Event] = None):
        async with self._sem:
            if stopped(stop):  # its turn came after SGLang stopped the batch
                return STOPPED
            try:  # one deadline for the call: our client, obstore's retries, a conditional PUT sent again
                return await self._within(self._conditional.put_async(
                    lambda conditional: self._put_once(key, data, conditional), if_absent))
            except _Deadline as e:
                return self._error("PUT", key, e)

    async def _put_once(self, key: str, data: Buffer, conditional: bool) -> Union[bool, C.Refused, StoreError]:
        if self._http_put is not None:  # anything it does not expect, obstore sends again
            r = await self._http_put.put(key, data, conditional)
            if r is not httpget.FALL_BACK:
                return r
        try:
            await obstore.put_async(self._store, key, data, mode="create" if conditional else "overwrite",
                                    use_multipart=False)
            return True
        except Exception as e:  # noqa: BLE001
            # object_store calls a 409 AlreadyExists too; the status and the S3 code in its
            # text tell the refusals apart.
            text, status = str(e), _status(e)
            code = C.s3_code(text) or str(status)
            if isinstance(e, ox.AlreadyExistsError) and status != 409:
                status, code = 412, "412"  # a 412, or the 304 some stores answer If-None-Match with
            if not status:
                return self._error("PUT", key, e)
            return C.Refused(status, code, text, self._error("PUT", key, e))

    async def _exists(self, key: str) -> Union[bool, StoreError]:
        async with self._sem:
            try:
                await self._within(obstore.head_async(self._store, key))
                return True
            except FileNotFoundError:  # a HEAD has no body: a missing bucket looks the same
                return False
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e)

    async def _stat(self, key: str) -> Union[ObjectStat, None, StoreError]:
        async with self._sem:
            try:
                m = await self._within(obstore.head_async(self._store, key))
                return ObjectStat(m["size"], (m.get("e_tag") or "").strip('"'))
            except FileNotFoundError:  # as in _exists
                return None
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e)

    def _error(self, op: str, key: str, e: Exception) -> StoreError:
        kind, what = _classify(e)
        return StoreError(kind, self._redact(f"{op} {self.bucket}/{key}: {what}"), _status(e))

    # --- startup ------------------------------------------------------------------------

    def check(self, create_bucket: bool = False) -> None:
        from sglang_objectcache.store.boto import make_bucket

        connect_s, read_s = C.check_timeouts(self.cfg)
        probe_store = make_s3store(self.cfg, connect_s=connect_s, read_s=read_s, retries=0, pool=1)
        C.run_check(self.cfg, lambda: _probe(probe_store, connect_s), lambda: make_bucket(self.cfg),
                    create_bucket)

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def cancel_all():
            # Requests still in flight end with CancelledError in their callers' threads;
            # stopping the loop under them would leave those threads waiting forever.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for http in (self._http, self._http_put):  # their sockets belong to this loop
                if http is not None:
                    http.close()

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        if self._land_pool is not None:
            self._land_pool.shutdown()


def _probe(store: S3Store, connect_s: float) -> C.Probe:
    # One ListObjectsV2 page: its error body names the S3 code (see Boto3Store._probe).
    try:
        next(iter(obstore.list(store, chunk_size=1)), None)
        return C.Probe("ok")
    except Exception as e:  # noqa: BLE001
        kind, what = _classify(e)
        text = str(e)
        status = _status(e)
        if kind == "timeout" and "ConnectError" in text:  # nothing answered the SYN
            return C.Probe("unreachable", f"connect timed out after {connect_s:g}s")
        return C.Probe(kind, C.s3_code(text) or what, status)


def _status(e: Exception) -> int:
    m = _STATUS.search(str(e))
    return int(m.group(1)) if m else 0


def _classify(e: Exception) -> tuple[str, str]:
    """(StoreError kind, short reason) for an obstore exception. obstore's text carries the
    HTTP status, the S3 XML error body and reqwest's error kind; we keep only those."""
    if isinstance(e, _Deadline):
        return "timeout", str(e)
    text = str(e)
    m = _STATUS.search(text)
    if m:
        status, code = int(m.group(1)), C.s3_code(text)
        return C.kind_for(status, code), f"HTTP {status} {code}".rstrip()
    if isinstance(e, (ox.PermissionDeniedError, ox.UnauthenticatedError)):
        return "auth", type(e).__name__
    http = _HTTP_KIND.search(text)
    kind = http.group(1) if http else ""
    if kind == "Timeout" or "TimedOut" in text:
        return "timeout", "connect timed out" if "ConnectError" in text else "read timed out"
    if kind == "Connect":
        return "unreachable", C.net_reason(text)
    if kind in ("Request", "Interrupted", "Decode"):
        return C.net_failure(text)
    if isinstance(e, (ox.InvalidPathError, ValueError, TypeError)):
        return "client", f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    return "server" if isinstance(e, ox.GenericError) else "client", text.split("\n\nDebug source:")[0][:300]
