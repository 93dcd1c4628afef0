"""The layerwise fetch worker process, and the per-job work every fetcher shares.

`python -m sglang_objectcache.layerwise.fetch_worker FD` serves one `fetch.ProcessFetch`
over the Unix socket FD: ("init", config, geometry, threads) first, then ("map", sid, rows,
width) plus the segment's memfd, ("unmap", sid), ("get", tid, ranges, group, layers,
{layer: sid}, digests) and ("quit",). It answers each get with ("got", tid, outcomes,
arrived, started). It exits when the socket closes, so it never outlives its server.

No torch here: the worker starts in well under a second and holds no CUDA context.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle

import numpy as np

from sglang_objectcache import objformat
from sglang_objectcache.objformat import FormatError, PageGeometry
from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)


def stage(g: PageGeometry, ranges, group, layers, rows: dict, digests, results) -> list:
    """The outcome of each page of one job (see the module docstring); `rows[layer]` is
    that layer's staging buffer as a numpy [pages, layer_bytes] array."""
    out = []
    for j, ((_, start, end), r) in enumerate(zip(ranges, results)):
        if isinstance(r, StoreError):
            # 416: the range starts past the end: the object is shorter than its geometry
            out.append(("corrupt", f"truncated: {r}") if r.status == 416 else ("store", r.kind, str(r)))
            continue
        if r is None:
            out.append(("missing",))
            continue
        mv = memoryview(r).cast("B")
        if mv.nbytes != end - start:
            out.append(("corrupt", f"{mv.nbytes} bytes for a {end - start}-byte range"))
            continue
        header = raw = None
        if start == 0:
            raw = bytes(mv[: g.header_bytes])
            try:
                header = objformat.decode_header(raw, g, digests[j])
            except objformat.UnsupportedFormat as e:
                out.append(("unsupported", str(e)))
                continue
            except FormatError as e:
                out.append(("corrupt", str(e)))
                continue
        sums, i = {}, group[j]
        for layer in layers:
            s, e = g.layer_range(layer)
            row = rows[layer][i]
            row[:] = mv[s - start : e - start]
            sums[layer] = objformat.checksum(row)
        out.append(("ok", header, sums, raw))
    return out


def run_job(store, g: PageGeometry, job: tuple, rows: dict) -> tuple[list, float, float]:
    """GET and stage one job: (outcomes, arrived, started)."""
    _, ranges, group, layers, _, digests = job
    started = time.perf_counter()
    try:
        results = store.get_ranges(ranges)
    except Exception as e:  # noqa: BLE001 - transports should not raise; be safe
        results = [StoreError("client", f"{type(e).__name__}: {e}")] * len(ranges)
    arrived = time.perf_counter()
    try:
        return stage(g, ranges, group, layers, rows, digests, results), arrived, started
    except Exception as e:  # noqa: BLE001 - a bug here fails the batch, not the thread
        logger.exception("objectcache: staging a fetched range failed")
        return [("store", "client", f"{type(e).__name__}: {e}")] * len(ranges), arrived, started


def serve(conn: Connection) -> None:
    from sglang_objectcache.store import make_store

    _, cfg, g, threads = conn.recv()
    try:
        store, broken = make_store(cfg), None
    except Exception as e:  # noqa: BLE001 - answer every job with the reason instead
        store, broken = None, f"fetch worker has no store: {type(e).__name__}: {e}"
    pool = ThreadPoolExecutor(threads, thread_name_prefix="objectcache-fetch")
    send_lock = threading.Lock()
    bufs: dict[int, np.ndarray] = {}

    def job(msg, rows, reason=None) -> None:
        reason = reason or broken
        if reason:
            now = time.perf_counter()
            res = ([("store", "client", reason)] * len(msg[1]), now, now)
        else:
            res = run_job(store, g, msg, rows)
        try:
            with send_lock:
                conn.send(("got", msg[0], *res))
        except OSError:  # the server is gone; recv() below sees it too
            pass

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        kind = msg[0]
        if kind == "get":
            rows = {layer: bufs.get(sid) for layer, sid in msg[5].items()}
            missing = any(r is None for r in rows.values())  # a bug: answer it, keep the worker
            pool.submit(job, msg[1:], rows, "staging not mapped" if missing else None)
        elif kind == "map":
            _, sid, rows, width = msg
            fd = recv_handle(conn)
            mm = mmap.mmap(fd, rows * width)
            os.close(fd)
            bufs[sid] = np.frombuffer(mm, np.uint8).reshape(rows, width)
        elif kind == "unmap":
            bufs.pop(msg[1], None)  # a running job's view keeps the mapping until it ends
        elif kind == "quit":
            break
    pool.shutdown(wait=False, cancel_futures=True)
    if store is not None:
        store.close()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="objectcache fetch worker: %(message)s")
    serve(Connection(int(sys.argv[1])))
    sys.stdout.flush()
    os._exit(0)  # do not wait for a GET still stuck in a socket: nobody wants its answer


if __name__ == "__main__":
    main()
