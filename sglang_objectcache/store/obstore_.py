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
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import obstore

from sglang_objectcache.store import _common as C
from sglang_objectcache.store.base import (INTO, STOP_POLL_S, Buffer, Cutoff, GetResult, ObjectInfo, ObjectStat,
                                            ObjectStore, Receiver, StoreError, stopped)
from sglang_objectcache.store.obstore_client import ObstoreRequests, make_s3store, probe
from sglang_objectcache.store.settings import StoreSettings

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


class ObstoreStore(ObstoreRequests, ObjectStore):
    name = "obstore"
    # get_each lands bodies this large on a small thread pool rather than on the loop
    OFFLOAD_BYTES = 1 << 20

    def __init__(self, settings: StoreSettings, max_concurrency: Optional[int] = None):
        super().__init__(settings, C.concurrency(settings, max_concurrency, DEFAULT_CONCURRENCY))
        self._land_pool: Optional[ThreadPoolExecutor] = None

    def __repr__(self) -> str:
        return f"ObstoreStore(endpoint={C.endpoint_of(self.settings)!r}, bucket={self.bucket!r}, " \
               f"max_concurrency={self.max_concurrency})"

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

    # --- startup ------------------------------------------------------------------------

    def check(self, create_bucket: bool = False) -> None:
        from sglang_objectcache.store.boto_client import make_bucket

        connect_s, read_s = C.check_timeouts(self.settings)
        probe_store = make_s3store(self.settings, connect_s=connect_s, read_s=read_s, retries=0, pool=1)
        C.run_check(self.settings, lambda: probe(probe_store, connect_s), lambda: make_bucket(self.settings),
                    create_bucket)

    def close(self) -> None:
        super().close()
        if self._land_pool is not None:
            self._land_pool.shutdown()
