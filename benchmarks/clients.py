"""The storage paths the storage benchmarks put side by side, against one SeaweedFS:

- `RawObstore`: the ceiling, a tuned parallel S3 client (obstore's async API on one event
  loop, `conc` in flight, no SGLang, no format); `checked=True`: the floor of any
  checksummed cache (each body's xxh3 checked and the body copied once, as it lands;
  conditional PUTs).
- `RawHttp`: the same lanes on objectcache's own GET and PUT clients.
- `Backend`: one HiCacheStorage driven the way SGLang's cache controller drives it;
  `make_systems` builds objectcache's, SGLang's in-tree SeaweedFSStore and HiCacheFile.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from benchmarks.rig import serve_model, storage_config
from objectcache_dev.s3server import SeaweedFS
from sglang_objectcache import objformat
from sglang_objectcache.hostpool import seal_pages

# The buckets make_systems and the raw lanes write to (each server is made with them).
BUCKETS = ("bench-objectcache", "bench-seaweedfs", "bench-raw")


class RawObstore:
    """The ceiling: obstore's async API on one event loop, `conc` requests in flight, no
    SGLang, no format, no copy out of the response buffer.

    With `checked`, the floor of any checksummed cache instead: `get` checks each body's
    xxh3 against `digests` and copies it into `sink` as it lands; `put` hashes each body
    (as a writer of checksummed objects must) and is conditional."""

    def __init__(self, srv: SeaweedFS, bucket: str, conc: int, checked: bool = False,
                 digests: dict | None = None, sink: np.ndarray | None = None, ranged: bool = True):
        import obstore
        from obstore.store import S3Store

        self.obstore, self.conc = obstore, conc
        self.checked, self.digests, self.sink, self.ranged = checked, digests, sink, ranged
        self.store = S3Store(bucket, endpoint=srv.endpoint, access_key_id=srv.access_key,
                             secret_access_key=srv.secret_key, region="us-east-1",
                             unsigned_payload=True,  # as objectcache's default
                             client_options={"allow_http": True, "pool_max_idle_per_host": str(conc),
                                             "timeout": "120s"})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _gather(self, fn, items):
        sem = asyncio.Semaphore(self.conc)

        async def one(x):
            async with sem:
                return await fn(x)

        async def all_():
            return await asyncio.gather(*(one(x) for x in items))

        return asyncio.run_coroutine_threadsafe(all_(), self.loop).result()

    def get(self, keys, size: int) -> list[int]:
        """Each body's length (checked: 0 if its xxh3 does not match). Each object is
        expected to be `size` bytes and read with one ranged GET of size + 1 bytes, as
        objectcache does: one Rust future per object instead of two (response, then body;
        `ranged=False`, compared in benchmarks/get_path.py)."""
        async def get(ik):
            i, k = ik
            body, release = await self._fetch(k, size)
            try:
                if not self.checked:
                    return len(body)
                if objformat.checksum(body) != self.digests[k]:
                    return 0
                np.copyto(self.sink[i % len(self.sink)], np.frombuffer(body, np.uint8))
                return len(body)
            finally:
                release()

        return self._gather(get, list(enumerate(keys)))

    async def _fetch(self, k: str, size: int):
        """(body, release): the body is valid until release()."""
        if self.ranged:
            return await self.obstore.get_range_async(self.store, k, start=0, end=size + 1), _nothing
        return await (await self.obstore.get_async(self.store, k)).bytes_async(), _nothing

    def put(self, items) -> int:
        mode = "create" if self.checked else "overwrite"
        if self.checked:
            self.digests.update((k, objformat.checksum(v)) for k, v in items)
        return sum(r is not None for r in
                   self._gather(lambda kv: self.obstore.put_async(self.store, kv[0], kv[1], mode=mode), items))

    def head(self, keys):
        return self._gather(lambda k: self.obstore.head_async(self.store, k), keys)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def _nothing() -> None:
    pass


def seal_into(pages, digests, slots, staging: np.ndarray):
    """objectcache's own sealing (`hostpool.seal_pages`, what batch_set_v1 runs per page)."""
    return seal_pages(pages, digests, slots, staging)


def sealed_pages(storage, keys: list[str], slots: list[int]) -> list[bytes]:
    """The objects objectcache's `storage` writes for page `keys` held in host `slots`."""
    staging = np.empty((len(keys), storage.pages.geometry.object_bytes), np.uint8)
    digests = [storage.keys.content_digest(k) for k in keys]
    return [bytes(mv) for mv in seal_into(storage.pages, digests, slots, staging)]


class RawHttp(RawObstore):
    """The raw (or checked) lane with objectcache's own GET and PUT clients
    (`store/httpget.py`, `store/httpput.py`): each body received into its connection's
    reused buffer, each PUT sent from the caller's buffer. HEADs are obstore's."""

    def __init__(self, srv: SeaweedFS, bucket: str, conc: int, checked: bool = False,
                 digests: dict | None = None, sink: np.ndarray | None = None):
        from sglang_objectcache.config import ObjectCacheConfig
        from sglang_objectcache.store import StoreSettings, httpget, httpput

        super().__init__(srv, bucket, conc, checked, digests, sink)
        settings = StoreSettings.of(ObjectCacheConfig.from_dict(srv.config(bucket, read_timeout_s=60.0)))
        self.http, self.http_put = httpget.HttpGet(settings), httpput.HttpPut(settings)

    async def _fetch(self, k: str, size: int):
        r = await self.http.get(k, size)
        if not isinstance(r, tuple):
            raise RuntimeError(f"raw http GET {k}: {r}")
        return r

    def put(self, items) -> int:
        if self.checked:
            self.digests.update((k, objformat.checksum(v)) for k, v in items)

        async def put(kv):
            r = await self.http_put.put(kv[0], kv[1], self.checked)
            if r is not True:
                raise RuntimeError(f"raw http PUT {kv[0]}: {r}")
            return r

        return sum(self._gather(put, items))

    def close(self):
        for http in (self.http, self.http_put):  # their idle sockets belong to the loop
            self.loop.call_soon_threadsafe(http.close)
        super().close()


class Backend:
    """One HiCacheStorage driven the way SGLang's cache controller drives it."""

    def __init__(self, name: str, storage, page_tokens: int, generic: bool = False):
        self.name, self.storage, self.P, self.generic = name, storage, page_tokens, generic

    def set(self, keys, idx) -> int:
        if self.generic:  # HiCacheController._generic_page_set
            host = self.storage.mem_pool_host
            data = [host.get_data_page(idx[i * self.P]) for i in range(len(keys))]
            return len(keys) if self.storage.batch_set(keys, data) else 0
        return sum(self.storage.batch_set_v1(keys, idx))

    def get(self, keys, idx) -> int:
        if self.generic:  # HiCacheController._generic_page_get
            host = self.storage.mem_pool_host
            pages = self.storage.batch_get(keys, [host.get_dummy_flat_data_page() for _ in keys])
            n = 0
            for i, page in enumerate(pages):
                if page is None:
                    break
                host.set_from_flat_data_page(idx[i * self.P], page)
                n += 1
            return n
        out = self.storage.batch_get_v1(keys, idx)
        return next((i for i, ok in enumerate(out) if not ok), len(out))

    def exists(self, keys, cold: bool) -> int:
        if cold and hasattr(self.storage, "known"):
            self.storage.known.clear()  # objectcache: as a fresh server would see them
        return self.storage.batch_exists(keys)


def make_systems(srv: SeaweedFS, host, page_tokens: int, file_dir: str) -> dict:
    from sglang.srt.mem_cache.hicache_storage import HiCacheFile
    from sglang.srt.mem_cache.storage.seaweedfs.seaweedfs_store import SeaweedFSStore

    from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage

    serve_model()
    oc = ObjectCacheStorage(storage_config(srv.config("bench-objectcache", read_timeout_s=60.0)), host)
    oc.register_mem_pool_host(host)
    # SGLang's factory: SeaweedFSStore(storage_config, mem_pool_host), then the controller
    # registers the host pool. Its defaults (16 workers) are what users get.
    sw = SeaweedFSStore(storage_config({"endpoint": srv.endpoint, "bucket": "bench-seaweedfs",
                                        "access_key": srv.access_key, "secret_key": srv.secret_key}), host)
    sw.register_mem_pool_host(host)
    fb = HiCacheFile(storage_config({"file_storage_path": file_dir}))
    fb.register_mem_pool_host(host)
    return {"objectcache": Backend("objectcache", oc, page_tokens),
            "seaweedfs": Backend("seaweedfs", sw, page_tokens),
            "file": Backend("file", fb, page_tokens, generic=True)}
