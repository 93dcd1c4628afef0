"""`NixlObjStore`: GET/PUT bytes through NIXL's OBJ plugin; everything else through boto3.

UNTESTED: this module has never run. NIXL is not installed in this environment, and its
OBJ plugin needs NVIDIA's cuObject client (`libcuobjclient.so.1`, from the CUDA toolkit's
GPUDirect Storage packages), which no package registry here provides. Only the failure
paths (no `nixl`, OBJ plugin not loadable) and the transfer bookkeeping, against a stand-in
agent (tests/unit/store/test_transports.py: what is released when), are exercised by the tests. The calls follow
NIXL's Python API (`nixl._api.nixl_agent`) as used in /work/shared/research/s3-servers.md §6,
where a DRAM<->OBJ round trip was shown to work against SeaweedFS with a stub cuObject.

Why the split: the OBJ plugin moves whole objects (WRITE) and byte ranges (READ: the OBJ
descriptor's `addr` is the offset in the object) between registered memory and S3, and has
no HEAD, LIST or DELETE primitive. So exists/stat/list/delete/check go to a `Boto3Store`, as
Dynamo does. Two consequences:
- `get_many` must learn each object's size first (a HEAD per key) because a NIXL READ
  needs the length; `get_ranges` does not (the ranges give the lengths).
- `put_many(if_absent=True)` is HEAD-then-WRITE, not atomic: two writers may both write.
  objectcache keys are content addresses, so both write the same page; the loser's write
  is wasted work, not corruption.
A failed transfer fails as a whole; its keys are then checked with HEAD so a missing key
still reads as None.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Iterator, Optional, Sequence, Union

from sglang_objectcache.store.settings import StoreSettings
from sglang_objectcache.store import _common as C
from sglang_objectcache.store.base import Buffer, GetResult, ObjectInfo, ObjectStat, ObjectStore, StoreError
from sglang_objectcache.store.boto import Boto3Store

NO_NIXL = ("transport 'nixl' needs the `nixl` Python package (pip install nixl; it pulls CUDA "
           "wheels), and its OBJ plugin needs NVIDIA's cuObject client library "
           "libcuobjclient.so.1 (CUDA toolkit >= 13.1 with GPUDirect Storage / GDS) on the "
           "library path. Use transport: obstore or boto3 where those are missing.")
NO_OBJ = ("NIXL could not create its OBJ backend ({err}). The OBJ plugin links NVIDIA's cuObject "
          "client libcuobjclient.so.1 (CUDA toolkit >= 13.1, GPUDirect Storage / GDS packages); "
          "check `ldd libplugin_OBJ.so` in the nixl wheel's plugin directory, put the library on "
          "LD_LIBRARY_PATH, or use transport: obstore or boto3. Plugin params sent: {params}.")

logger = logging.getLogger(__name__)
_ids = itertools.count()


def obj_params(settings: StoreSettings) -> dict[str, str]:
    """OBJ plugin init params (names from NIXL's obj plugin README); nixl_plugin_params win."""
    p = {"bucket": settings.bucket, "region": settings.region,
         "use_virtual_addressing": str(settings.addressing_style == "virtual").lower(),
         "req_checksum": "supported"}
    if settings.endpoint_url:
        p["endpoint_override"] = settings.endpoint_url
        p["scheme"] = settings.endpoint_url.split("://", 1)[0]
    if settings.access_key_id:  # else the AWS SDK's own credential chain
        p.update(access_key=settings.access_key_id, secret_key=settings.secret_access_key)
        if settings.session_token:
            p["session_token"] = settings.session_token
    p.update(settings.nixl_plugin_params)
    return p


class NixlObjStore(ObjectStore):
    name = "nixl"

    def __init__(self, settings: StoreSettings, max_concurrency: Optional[int] = None):
        try:
            import numpy as np
            from nixl._api import nixl_agent, nixl_agent_config
        except ImportError:
            raise StoreError("client", NO_NIXL) from None
        self.settings, self.bucket, self._np = settings, settings.bucket, np
        redact = C.Redactor.of(settings)
        self._agent_name = f"objectcache-{os.getpid()}-{next(_ids)}"
        params = obj_params(settings)
        try:
            self._agent = nixl_agent(self._agent_name, nixl_agent_config(backends=[]))
            self._agent.create_backend("OBJ", params)
        except Exception as e:  # noqa: BLE001 - nixl raises its own binding errors
            shown = {k: ("***" if k in ("secret_key", "session_token") else v) for k, v in params.items()}
            raise StoreError("client", redact(NO_OBJ.format(err=f"{type(e).__name__}: {e}", params=shown))) from None
        self._control = Boto3Store(settings, max_concurrency)
        self.max_concurrency = self._control.max_concurrency
        self._timeout_s = settings.connect_timeout_s + settings.read_timeout_s * (settings.retries + 1)
        self._abandoned: list = []  # transfers past their wait, kept with their memory (`_abandon`)
        self._warned_abandon = False

    def __repr__(self) -> str:
        return f"NixlObjStore(endpoint={C.endpoint_of(self.settings)!r}, bucket={self.bucket!r})"

    # --- control plane: boto3 -----------------------------------------------------------

    def check(self, create_bucket: bool = False) -> None:
        self._control.check(create_bucket)

    def exists_many(self, keys: Sequence[str]) -> list[Union[bool, StoreError]]:
        return self._control.exists_many(keys)

    def stat_many(self, keys: Sequence[str]) -> list[Union[ObjectStat, None, StoreError]]:
        return self._control.stat_many(keys)

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._control.delete_many(keys)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._control.list(prefix)

    def close(self) -> None:
        self._control.close()

    # --- data plane: NIXL ---------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[GetResult]:
        sizes = self._control._map(self._size, keys)
        reqs = [(k, 0, s) for k, s in zip(keys, sizes) if isinstance(s, int) and s > 0]
        got = iter(self._xfer("READ", reqs) if reqs else [])
        return [next(got) if isinstance(s, int) and s > 0 else (b"" if s == 0 else s) for s in sizes]

    def get_ranges(self, reqs: Sequence[tuple[str, int, int]]) -> list[GetResult]:
        out: list[GetResult] = [None] * len(reqs)
        good = [i for i, (_, a, b) in enumerate(reqs) if 0 <= a < b]
        for i in set(range(len(reqs))) - set(good):
            out[i] = C.bad_range(reqs[i])
        for i, r in zip(good, self._xfer("READ", [reqs[i] for i in good]) if good else []):
            out[i] = r
        return out

    def put_many(self, items: Sequence[tuple[str, Buffer]], if_absent: bool = True) -> list[Union[bool, StoreError]]:
        exists = self._control.exists_many([k for k, _ in items]) if if_absent else [False] * len(items)
        todo = [i for i, e in enumerate(exists) if e is False]
        out: list[Union[bool, StoreError]] = [e if isinstance(e, StoreError) else False for e in exists]
        if todo:
            done = self._xfer("WRITE", [(items[i][0], 0, len(memoryview(items[i][1]).cast("B"))) for i in todo],
                              [items[i][1] for i in todo])
            for i, r in zip(todo, done):
                out[i] = True if r is None else r
        return out

    def _size(self, key: str) -> Union[int, None, StoreError]:
        try:
            return self._control._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except Exception as e:  # noqa: BLE001
            if getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            return self._control._error("HEAD", key, e)

    def _xfer(self, op: str, reqs: Sequence[tuple[str, int, int]], data: Sequence[Buffer] = ()) -> list:
        """One NIXL transfer of `reqs` (key, offset, end). READ returns memoryview slices of one
        fresh buffer; WRITE returns None per item. On failure every slot gets the error."""
        np, agent = self._np, self._agent
        lens = [b - a for _, a, b in reqs]
        if op == "READ":
            buf = np.empty(sum(lens), dtype=np.uint8)
            offs = np.concatenate(([0], np.cumsum(lens)[:-1])).tolist()
            local = [(buf.ctypes.data + o, n, 0) for o, n in zip(offs, lens)]
            dram = [(buf.ctypes.data, buf.nbytes, 0, "")]
        else:
            arrs = [np.frombuffer(d, dtype=np.uint8) for d in data]
            local = [(a.ctypes.data, a.nbytes, 0) for a in arrs]
            dram = [(a.ctypes.data, a.nbytes, 0, "") for a in arrs]
        extent: dict[str, int] = {}  # key -> bytes of it this transfer touches
        for k, _, b in reqs:
            extent[k] = max(extent.get(k, 0), b)
        dev = {k: i for i, k in enumerate(extent)}  # devId -> object key, for this transfer
        obj = [(0, n, dev[k], k) for k, n in extent.items()]
        remote = [(a, n, dev[k]) for (k, a, _), n in zip(reqs, lens)]
        reg_dram = reg_obj = handle = None
        live = False  # a transfer was posted and is not known to be over
        try:
            reg_dram = agent.register_memory(dram, "DRAM", backends=["OBJ"])
            reg_obj = agent.register_memory(obj, "OBJ", backends=["OBJ"])
            handle = agent.initialize_xfer(op, agent.get_xfer_descs(local, "DRAM"),
                                           agent.get_xfer_descs(remote, "OBJ"), self._agent_name,
                                           backends=["OBJ"])
            live = True
            state, deadline = agent.transfer(handle), time.monotonic() + self._timeout_s
            while state not in ("DONE", "ERR") and time.monotonic() < deadline:
                time.sleep(0.0005)
                state = agent.check_xfer_state(handle)
            live = state not in ("DONE", "ERR")
            if state != "DONE":
                raise RuntimeError(f"NIXL OBJ {op} ended in state {state}")
        except Exception as e:  # noqa: BLE001
            return self._failed(op, reqs, e)
        finally:
            if live:
                self._abandon(op, handle, (reg_obj, reg_dram), buf if op == "READ" else arrs)
            else:
                if handle is not None:
                    agent.release_xfer_handle(handle)
                for reg in (reg_obj, reg_dram):
                    if reg is not None:
                        agent.deregister_memory(reg, backends=["OBJ"])
        if op == "WRITE":
            return [None] * len(reqs)
        mv = memoryview(buf)
        return [mv[o:o + n] for o, n in zip(offs, lens)]

    def _abandon(self, op: str, handle, regs, memory) -> None:
        """A transfer past its wait (or whose state could not be read) may still be writing
        into `memory` (READ) or reading it (WRITE). Releasing its handle and deregistering
        the memory, or letting a READ buffer be freed, would let it write into memory that
        is no longer its (review H11). So all of it is kept, deliberately leaked, for the
        life of the store: one buffer per timed-out transfer. (A WRITE reads the caller's
        memory, which the caller reuses: the object may then be stored damaged, and its
        checksums make it a miss on read, never wrong KV.)"""
        self._abandoned.append((handle, regs, memory))
        if not self._warned_abandon:
            self._warned_abandon = True
            logger.warning("objectcache: a NIXL OBJ %s did not finish within %gs; its handle and registered "
                           "memory are kept (leaked) rather than released while it may still run (logged once)",
                           op, self._timeout_s)

    def _failed(self, op: str, reqs, e: Exception) -> list:
        # A READ of a missing key fails the whole transfer; say None for those keys.
        exists = self._control.exists_many([k for k, _, _ in reqs]) if op == "READ" else [True] * len(reqs)
        err = StoreError("server", C.Redactor.of(self.settings)(f"NIXL OBJ {op} of {len(reqs)} objects in "
                                                           f"{self.bucket}: {type(e).__name__}: {e}"))
        return [None if x is False else (x if isinstance(x, StoreError) else err) for x in exists]
