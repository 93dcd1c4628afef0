"""The layerwise fetch worker process, and the per-job work every fetcher shares.

`python -m sglang_objectcache.layerwise.fetch_worker FD` serves one `fetch.ProcessFetch`
over the Unix socket FD with the messages of `messages.py`: `Init` first, then
`MapSegment` (plus the segment's memfd), `UnmapSegment`, `FetchJob` and `Quit`. It
answers each FetchJob with a `JobDone`. It exits when the socket closes, so it never
outlives its server.

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
from sglang_objectcache.layerwise.messages import (
    Corrupt,
    FetchJob,
    Init,
    JobDone,
    MapSegment,
    Missing,
    Outcome,
    Quit,
    Staged,
    StoreFailed,
    UnmapSegment,
    Unsupported,
)
from sglang_objectcache.objformat import FormatError, PageGeometry
from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)


def stage_page(g: PageGeometry, job: FetchJob, j: int, rows: dict, r) -> Outcome:
    """The outcome of page `job.group[j]` (see fetch.py), given what its GET returned;
    `rows[layer]` is that layer's staging buffer as a numpy [pages, layer_bytes] array."""
    _, start, end = job.ranges[j]
    if isinstance(r, StoreError):
        # 416: the range starts past the end: the object is shorter than its geometry
        return Corrupt(f"truncated: {r}") if r.status == 416 else StoreFailed(r.kind, str(r))
    if r is None:
        return Missing()
    mv = memoryview(r).cast("B")
    if mv.nbytes != end - start:
        return Corrupt(f"{mv.nbytes} bytes for a {end - start}-byte range")
    header = raw = None
    if start == 0:
        raw = bytes(mv[: g.header_bytes])
        try:
            header = objformat.decode_header(raw, g, job.digests[j])
        except objformat.UnsupportedFormat as e:
            return Unsupported(str(e))
        except FormatError as e:
            return Corrupt(str(e))
    sums, i = {}, job.group[j]
    for layer in job.layers:
        s, e = g.layer_range(layer)
        row = rows[layer][i]
        row[:] = mv[s - start : e - start]
        sums[layer] = objformat.checksum(row)
    return Staged(header, sums, raw)


def run_job(store, g: PageGeometry, job: FetchJob, rows: dict) -> JobDone:
    """GET and stage one job."""
    started = time.perf_counter()
    try:
        results = store.get_ranges(job.ranges)
    except Exception as e:  # noqa: BLE001 - transports should not raise; be safe
        results = [StoreError("client", f"{type(e).__name__}: {e}")] * len(job.ranges)
    arrived = time.perf_counter()
    try:
        outcomes = [stage_page(g, job, j, rows, r) for j, r in enumerate(results)]
    except Exception as e:  # noqa: BLE001 - a bug here fails the batch, not the thread
        logger.exception("objectcache: staging a fetched range failed")
        outcomes = [StoreFailed("client", f"{type(e).__name__}: {e}")] * len(job.ranges)
    return JobDone(job.tid, outcomes, arrived, started)


def failed_job(job: FetchJob, kind: str, reason: str) -> JobDone:
    """Job `job` answered with one StoreFailed(kind, reason) per page, now."""
    now = time.perf_counter()
    return JobDone(job.tid, [StoreFailed(kind, reason)] * len(job.ranges), now, now)


def serve(conn: Connection) -> None:
    from sglang_objectcache.store import make_store

    init: Init = conn.recv()
    try:
        store, broken = make_store(init.cfg), None
    except Exception as e:  # noqa: BLE001 - answer every job with the reason instead
        store, broken = None, f"fetch worker has no store: {type(e).__name__}: {e}"
    pool = ThreadPoolExecutor(init.threads, thread_name_prefix="objectcache-fetch")
    send_lock = threading.Lock()
    bufs: dict[int, np.ndarray] = {}

    def run(job: FetchJob, rows: dict, reason=None) -> None:
        reason = reason or broken
        done = failed_job(job, "client", reason) if reason else run_job(store, init.geometry, job, rows)
        try:
            with send_lock:
                conn.send(done)
        except OSError:  # the server is gone; recv() below sees it too
            pass

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if isinstance(msg, FetchJob):
            rows = {layer: bufs.get(sid) for layer, sid in msg.sids.items()}
            missing = any(r is None for r in rows.values())  # a bug: answer it, keep the worker
            pool.submit(run, msg, rows, "staging not mapped" if missing else None)
        elif isinstance(msg, MapSegment):
            fd = recv_handle(conn)
            mm = mmap.mmap(fd, msg.rows * msg.width)
            os.close(fd)
            bufs[msg.sid] = np.frombuffer(mm, np.uint8).reshape(msg.rows, msg.width)
        elif isinstance(msg, UnmapSegment):
            bufs.pop(msg.sid, None)  # a running job's view keeps the mapping until it ends
        elif isinstance(msg, Quit):
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
