"""Where a layerwise load's GETs run and where their bytes land: the loader's fetchers.

Contract. A fetch job (`messages.FetchJob`) is one READ transfer of the loader: ranged
GETs of layers `layers` for the pages `group` of a batch (`ranges[j]` is page `group[j]`'s
range). `submit(job, staged)` GETs them, copies each layer of each page into that layer's
staging buffer `staged[layer]` at row `group[j]`, hashes every staged row (xxh3, the bytes
that will be scattered) and, where a range starts at byte 0, checks the header against the
page's expected key digest. It reports a `messages.JobDone` to `on_result`, with one
outcome per page in `ranges` order (perf_counter times; CLOCK_MONOTONIC, so comparable
across processes):

    Staged(header | None, {layer: xxh3}, raw header bytes | None)
    StoreFailed(kind, message)   a StoreError of that kind
    Missing()                    no such object
    Corrupt(message)             wrong size or a bad header
    Unsupported(message)         another format version: a miss, never scrubbed

It never compares a layer's hash with the header's: that needs the page's header, which
may come in another job; the loader does it. Staging buffers come from the fetcher
(`alloc`/`release`), so each fetcher can put them where its GETs can write.

    ThreadFetch    GETs and copies on a thread pool of this process, into pinned tensors.
    ProcessFetch   a worker process (`fetch_worker.py`) with its own store client, writing
                   into shared memory (memfd; registered with CUDA as pinned on GPU), so
                   the bytes never cross a pipe. Per job this process only pickles a few
                   names and reads back a few hashes.

Why a process: in the serving process every thread that runs Python for the requests (the
obstore event loop, the copy and hash loops) competes for the GIL with the forward, and
the forward gives the GIL up at every torch call, then waits up to the switch interval
(5 ms) to get it back while those threads are busy. On the H100, one layer per GET at 64K
context needed ~260 ms of wall time per layer for ~1 ms of GPU work
(benchmarks/results/ttft_gpu.json, layerwise mode, thread fetch).
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from typing import Callable, Optional

import torch

from sglang_objectcache.layerwise.fetch_worker import failed_job, run_job
from sglang_objectcache.layerwise.messages import (
    FetchJob,
    Init,
    JobDone,
    MapSegment,
    Quit,
    StoreFailed,
    UnmapSegment,
)
from sglang_objectcache.objformat import PageGeometry

logger = logging.getLogger(__name__)

OnResult = Callable[[JobDone], None]


class ThreadFetch:
    """Fetch on a thread pool of this process, with `store` itself."""

    def __init__(self, store, geometry: PageGeometry, threads: int, pinned: bool):
        self.store, self.g, self.pinned = store, geometry, pinned
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="objectcache-fetch")
        self.on_result: OnResult = lambda *a: None

    def alloc(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, self.g.layer_bytes), dtype=torch.uint8, pin_memory=self.pinned)

    def release(self, buf: torch.Tensor) -> None:
        pass

    def submit(self, job: FetchJob, staged: dict) -> None:
        self._pool.submit(self._run, job, {layer: staged[layer].numpy() for layer in job.layers})

    def _run(self, job: FetchJob, rows: dict) -> None:
        self.on_result(run_job(self.store, self.g, job, rows))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Segment:
    """One staging buffer in shared memory: the memfd (kept to map it again in a restarted
    worker), this process's mapping, and the tensor over it."""

    def __init__(self, sid: int, rows: int, width: int, pinned: bool):
        self.sid, self.rows, self.nbytes = sid, rows, rows * width
        self.fd = os.memfd_create(f"objectcache-staging-{sid}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.nbytes)
        self.map = mmap.mmap(self.fd, self.nbytes)
        self.tensor = torch.frombuffer(self.map, dtype=torch.uint8).view(rows, width)
        self.pinned = False
        if pinned:
            # Page-locked, so the H2D copy is asynchronous: what pin_memory=True gives a
            # private tensor, for memory another process writes.
            try:
                torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(self.tensor.data_ptr(), self.nbytes, 0))
                self.pinned = True
            except Exception as e:  # noqa: BLE001 - still correct, only the copy is synchronous
                logger.warning("objectcache: cannot pin shared staging (%s); H2D copies will block", e)

    def free(self) -> None:
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
        self.tensor = None
        try:
            self.map.close()
        except BufferError:  # a view is still alive somewhere; the GC unmaps it later
            pass
        os.close(self.fd)


def job_deadline_s(cfg) -> float:
    """How long a job may go unanswered before its worker counts as hung: two calls' worst
    case (`cfg.worst_case_s`; a job may wait for a worker thread while another job's call
    runs) and a second for staging and the socket."""
    return 2 * cfg.worst_case_s() + 1.0


class ProcessFetch:
    """Fetch in a worker process with its own store client (from `cfg`), into shared memory.

    A worker that dies fails its in-flight jobs (their batches recompute) and is started
    again, with every live staging segment mapped again, at the next job. So is one that
    leaves a job unanswered past `job_deadline_s` (a GET whose transport ignores its
    timeouts, a stopped or deadlocked process): it is killed, else every later job would
    queue behind it and every load wait out `layer_timeout_s`, for ever, and the loader
    would keep those jobs' staging."""

    def __init__(self, cfg, geometry: PageGeometry, threads: int, pinned: bool):
        self.cfg, self.g, self.threads, self.pinned = cfg, geometry, threads, pinned
        self.on_result: OnResult = lambda *a: None
        self.deadline_s = job_deadline_s(cfg)
        self._segments: dict[int, _Segment] = {}  # by the tensor's data_ptr
        # tid -> (pages, monotonic deadline), for failing them if the worker dies or hangs
        self._inflight: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()  # one sender at a time; guards _inflight and the worker
        self._next_sid = 0
        self._proc: Optional[subprocess.Popen] = None
        self._conn: Optional[Connection] = None
        self._closed = False
        with self._lock:
            try:
                self._spawn()
            except Exception as e:  # noqa: BLE001 - a server without a worker still serves
                logger.error("objectcache: cannot start the layerwise fetch worker (%s: %s); "
                             "store hits recompute until it starts", type(e).__name__, e)
                self._proc = self._conn = None

    def _spawn(self) -> None:
        """Start a worker, or leave none. One started halfway (it died before reading init, a
        segment's map hit EPIPE) has no reader thread, so nothing would ever see it go and
        `submit`, which starts a worker only when there is none, would never replace it."""
        parent, child = socket.socketpair()
        try:
            env = dict(os.environ)
            # The worker must import this package from where this process did (a source
            # checkout on sys.path; an installed package is found anyway).
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if os.path.basename(root) not in ("site-packages", "dist-packages"):
                paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
                env["PYTHONPATH"] = os.pathsep.join([root] + paths)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sglang_objectcache.layerwise.fetch_worker", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env, close_fds=True)
            child.close()
            self._conn = conn = Connection(parent.detach())
            conn.send(Init(self.cfg, self.g, self.threads))
            for seg in self._segments.values():
                self._send_map(seg)
            threading.Thread(target=self._read, args=(conn, self._proc), name="objectcache-fetch-reader",
                             daemon=True).start()
        except BaseException:
            child.close()  # no-ops where already closed or detached
            parent.close()
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None  # the next submit starts a whole new worker
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
            if proc is not None:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            raise

    def _send_map(self, seg: _Segment) -> None:
        self._conn.send(MapSegment(seg.sid, seg.rows, self.g.layer_bytes))
        send_handle(self._conn, seg.fd, self._proc.pid)

    def _tell(self, send) -> None:
        """Send a map or unmap; a dead worker is left to the reader, and a restarted one
        maps every live segment anyway."""
        if self._conn is not None:
            try:
                send()
            except OSError:
                pass

    def _read(self, conn: Connection, proc) -> None:
        """The worker's answers, until it goes, or hangs (then it is killed)."""
        tick = min(1.0, self.deadline_s / 4)
        next_check, hung = time.monotonic() + tick, ""
        while not hung:
            try:
                if conn.poll(tick):
                    msg = conn.recv()
                    if isinstance(msg, JobDone):
                        with self._lock:
                            self._inflight.pop(msg.tid, None)
                        self.on_result(msg)
            except (EOFError, OSError):
                break
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + tick
                hung = self._overdue(proc)
        self._gone(conn, proc, hung)

    def _overdue(self, proc) -> str:
        """Why `proc` counts as hung, or ''."""
        # A sender holds the lock while it writes to the worker's socket: held this long,
        # the worker has stopped reading it (killing the worker frees the sender).
        if not self._lock.acquire(timeout=self.deadline_s):
            return f"a send to it blocked for {self.deadline_s:g}s"
        try:
            if self._proc is not proc:
                return ""
            now = time.monotonic()
            late = sum(due < now for _, due in self._inflight.values())
        finally:
            self._lock.release()
        return f"{late} job(s) unanswered for {self.deadline_s:g}s" if late else ""

    def _gone(self, conn: Connection, proc, hung: str) -> None:
        """The worker exited, or is hung (`hung` says why): whatever it had not answered
        fails (those batches recompute), and the next job starts a new one."""
        with self._lock:
            mine = self._proc is proc
            if mine:
                lost, self._inflight = self._inflight, {}
                self._proc = self._conn = None
        if hung:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if not mine:
            return
        try:
            conn.close()
        except OSError:
            pass
        if hung:
            logger.error("objectcache: the layerwise fetch worker hung (%s); killed it, %d jobs failed; "
                         "a new one starts with the next load", hung, len(lost))
            outcome = StoreFailed("timeout", f"fetch worker hung: {hung}")
        else:
            if not self._closed:
                logger.error("objectcache: the layerwise fetch worker exited (code %s); %d jobs failed; "
                             "it restarts with the next load", proc.poll(), len(lost))
            outcome = StoreFailed("client", "fetch worker exited")
        now = time.perf_counter()
        for tid, (n, _) in lost.items():
            self.on_result(JobDone(tid, [outcome] * n, now, now))

    def alloc(self, rows: int) -> torch.Tensor:
        with self._lock:
            seg = _Segment(self._next_sid, rows, self.g.layer_bytes, self.pinned)
            self._next_sid += 1
            self._segments[seg.tensor.data_ptr()] = seg
            self._tell(lambda: self._send_map(seg))
        return seg.tensor

    def release(self, buf: torch.Tensor) -> None:
        with self._lock:
            seg = self._segments.pop(buf.data_ptr(), None)
            if seg is not None:
                self._tell(lambda: self._conn.send(UnmapSegment(seg.sid)))
        if seg is not None:
            seg.free()

    def submit(self, job: FetchJob, staged: dict) -> None:
        sids = {layer: self._segments[staged[layer].data_ptr()].sid for layer in job.layers}
        with self._lock:
            try:
                if self._conn is None and not self._closed:
                    self._spawn()
                self._conn.send(replace(job, sids=sids))
                self._inflight[job.tid] = (len(job.ranges), time.monotonic() + self.deadline_s)
                return
            except Exception as e:  # noqa: BLE001 - the worker cannot start or is gone
                err = f"fetch worker unavailable: {type(e).__name__}: {e}"
        self.on_result(failed_job(job, "client", err))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
            if conn is not None:
                try:
                    conn.send(Quit())
                except OSError:
                    pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if conn is not None:
            conn.close()
        for seg in self._segments.values():
            seg.free()
        self._segments.clear()
