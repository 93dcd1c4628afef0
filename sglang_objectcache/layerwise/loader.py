"""The layerwise pipeline: fetch layer l of many pages while layer l-1 computes.

One I/O thread owns a `transfers.TransferScheduler` and everything mutable here. A load
batch (the pages of every request in one forward) becomes, per layer, a few transfers of
ranged GETs (layer l of a page is one contiguous byte range of its object; layer 0's
range starts at 0 and so carries the header with every layer's checksum). Store calls run on a small
fetcher (`fetch.py`: a worker process by default, or a thread pool), which lands each
layer of each page in that layer's staging rows and hashes it; the outcomes come back to
the I/O thread, which compares each layer's hash with its page's header and, once every
page of the layer is in, scatters the layer into the device KV pool (one kernel launch per
layer), copies it into the pages' host-tier objects and marks the layer ready on the
counter. Pages found in the host tier skip the store entirely (they were verified when
they entered it); their layers are copied into staging on a small local pool.

At most max(`window_layers`, `layers_per_get` + 1) layers of a batch are staged at once
(memory is that x pages x layer bytes; no + 1 at one layer per GET). With `layers_per_get`
= k > 1, one ranged GET reads k consecutive layers of a page (still one contiguous range,
the format being layer-major): about k times fewer requests, each layer still verified,
scattered and released on its own as soon as its group is in. Layer 0 is still read
alone, so the forward's first wait is for one layer's bytes while the next group is
already in flight: requests per page are 1 + ceil((L - 1) / k). The default (0) picks k
by `auto_layers_per_get`.
Deadlines for the scheduler: `pace.py`.

Failure: a missing page, a checksum or size mismatch, a store error or a stop request
fails the batch; the counter releases the forward and reports the failure at finish, so
the scheduler never uses its output. Pages that failed their checks are reported first
(`on_corrupt`, which must not block: their scrub runs elsewhere). `stop(index)` returns
only once this thread will never write that batch's slots again (on GPU: once its copies
have completed), or, should this thread not answer within STOP_TIMEOUT_S, with the batch
marked failed: the scheduler thread never hangs on it. An error anywhere in this thread
fails the batches concerned and the thread goes on.

Writes (offloads) use the same scheduler with kind WRITE, so reads always go first.

The parts: `messages.py` (every message between threads and processes), `settings.py`
(how a loader is built), `batches.py` (a batch's state machine), `staging.py` and
`scatter.py` (host staging buffers, and the copy into the device pool), `pace.py`
(deadlines), `fetch.py` (where the GETs run). This module is the API and the I/O loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import torch

from sglang_objectcache.layerwise.batches import Batches
from sglang_objectcache.layerwise.fetch import ThreadFetch
from sglang_objectcache.layerwise.messages import (
    FetchJob,
    HostCopied,
    JobDone,
    Load,
    Quit,
    Stop,
    Write,
    WritePayload,
    Written,
)
from sglang_objectcache.layerwise.pace import Pace
from sglang_objectcache.layerwise.scatter import DeviceScatter
from sglang_objectcache.layerwise.settings import GetPlan, LoaderHooks, LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.staging import StagingPool
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.store import StoreError
from sglang_objectcache.transfers import WRITE, Transfer

logger = logging.getLogger(__name__)

# How long `stop` waits for the I/O thread. It runs on SGLang's scheduler thread (counter
# finish), which must never hang on a stuck or dead I/O thread; stopping normally takes
# well under a millisecond.
STOP_TIMEOUT_S = 5.0


class LayerwiseLoader:
    def __init__(self, geometry: PageGeometry, device_layers, parts: LoaderParts,
                 settings: LoaderSettings = LoaderSettings(), hooks: LoaderHooks = LoaderHooks()):
        """`device_layers`: [(k_buffer[l], v_buffer[l])] or [(kv_buffer[l],)], the pool to load into."""
        self.g = geometry
        self.store = parts.store
        self.counter = parts.counter
        self.sched = parts.scheduler
        self.digest = parts.content_digest
        self.plan = GetPlan.of(geometry, settings)
        self.pace = Pace(parts.scheduler, settings.layer_s, settings.read_budget_s)
        self._inbox: "queue.Queue" = queue.Queue()  # messages.py: what comes in, from whom
        self._jobs: dict[int, Transfer] = {}  # fetch jobs out, by id
        self._next_job = 0
        # Writes and host-tier copies; few threads, as each one competes with the forward for the GIL.
        self._pool = ThreadPoolExecutor(min(4, settings.io_threads), thread_name_prefix="objectcache-io")
        cuda = device_layers[0][0].device.type == "cuda"
        self.fetch = parts.fetch or ThreadFetch(parts.store, geometry, settings.io_threads, pinned=cuda)
        self.fetch.on_result = self._inbox.put
        self.staging = StagingPool(self.fetch, keep=4 * self.plan.window)
        self.device = DeviceScatter(device_layers, geometry, self.staging, settings.kernels)
        self.batches = Batches(geometry, parts, hooks, self.plan, self.staging, self.device, self.pace,
                               copy_host=lambda *job: self._pool.submit(self._copy_host, *job))
        self._thread = threading.Thread(target=self._loop, name="objectcache-io", daemon=True)
        self._running = True
        self._thread.start()

    @property
    def per_get(self) -> int:
        """Layers of a page per ranged GET."""
        return self.plan.per_get

    # ---- API (any thread) --------------------------------------------------------------

    def load(self, index: int, rids: list[str], hashes: list[str], names: list[str],
             slots: torch.Tensor, ready_event=None, counter=None) -> None:
        """Start batch `index`. On GPU, `ready_event` marks when the slots are free to write.
        `counter` overrides the loader's own (several independent forwards share one link)."""
        self._inbox.put(Load(index, rids, hashes, names, slots, ready_event, counter or self.counter,
                             time.perf_counter()))

    def stop(self, index: int) -> None:
        """Stop batch `index`; returns once nothing will write its slots any more, or, if
        the I/O thread is gone or does not answer within STOP_TIMEOUT_S, marks the batch
        failed (its output is never used) and returns anyway."""
        done = threading.Event()
        self._inbox.put(Stop(index, done))
        if self._thread.is_alive() and done.wait(STOP_TIMEOUT_S):
            return
        # The queued stop still ends the batch if the thread ever gets to it.
        logger.error("objectcache: layerwise I/O thread did not stop load %d within %.0fs; "
                     "its requests recompute", index, STOP_TIMEOUT_S)
        b = self.batches.live.get(index)
        counter = b.counter if b is not None else self.counter
        if counter is not None:
            counter.fail(index, TimeoutError(f"layerwise load {index} not stopped within {STOP_TIMEOUT_S}s"))

    def write(self, items: list, on_done: Callable[[list], None]) -> None:
        """PUT (name, bytes) pairs if absent, after all queued reads; on_done(results)."""
        self._inbox.put(Write(items, on_done))

    def observe_layer_pace(self, seconds: float) -> None:
        """Feed the forward's measured time per layer (deadline estimates)."""
        self.pace.observe_layer(seconds)

    def close(self) -> None:
        if self._running:
            self._running = False
            self._inbox.put(Quit())
            self._thread.join(timeout=30)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.fetch.close()

    # ---- the I/O thread ----------------------------------------------------------------

    def _loop(self) -> None:
        wake_at = None
        while True:
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            if not self._drain(timeout):
                return
            try:
                wake_at = self._dispatch()
            except Exception as e:  # noqa: BLE001 - a dead thread would hang every later load
                # Which transfers the scheduler lost is unknown: fail every live batch (they
                # recompute) rather than leave its forward waiting for layers that never
                # come, and ask the scheduler again in a second (writes may be queued).
                logger.exception("objectcache: layerwise I/O scheduling failed")
                self.batches.fail_all(e)
                wake_at = time.monotonic() + 1.0

    def _drain(self, timeout: Optional[float]) -> bool:
        """Handle the inbox's messages: the first within `timeout`, then all there are.
        False on Quit."""
        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return True
        while True:
            if isinstance(msg, Quit):
                return False
            try:
                self._handle(msg)
            except Exception:  # noqa: BLE001 - the thread must survive anything
                logger.exception("objectcache: layerwise I/O thread error")
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _handle(self, msg) -> None:
        if isinstance(msg, JobDone):
            self._fetched(msg)
        elif isinstance(msg, HostCopied):
            self.batches.host_copied(msg)
        elif isinstance(msg, Load):
            self.batches.start(msg)
        elif isinstance(msg, Stop):
            try:
                self.batches.stop(msg.index)
            finally:
                msg.done.set()  # even where stopping raised: the scheduler thread waits on it
        elif isinstance(msg, Write):
            nbytes = sum(memoryview(d).nbytes for _, d in msg.items)
            payload = WritePayload(msg.items, msg.on_done)
            self.sched.submit([Transfer("writes", -1, nbytes, kind=WRITE, payload=payload)], time.monotonic())
        elif isinstance(msg, Written):
            self.sched.done(msg.transfer, time.monotonic())
            msg.transfer.payload.on_done(msg.results)

    def _fetched(self, done: JobDone) -> None:
        t = self._jobs.pop(done.tid)
        self.sched.done(t, time.monotonic())
        try:
            self.batches.on_fetched(t, done)
        except Exception as e:  # noqa: BLE001 - fail the batch, keep the thread
            logger.exception("objectcache: layerwise result handling failed")
            self.batches.fail(t.payload.index, e)

    def _dispatch(self) -> Optional[float]:
        """Start what the scheduler picks; returns when to ask it again."""
        decision = self.sched.next(time.monotonic())
        for t in decision.start:
            try:
                if t.kind == WRITE:
                    self._pool.submit(self._run_write, t)
                else:
                    self._fetch(t)
            except Exception as e:  # noqa: BLE001 - it never started: no result will come back
                logger.exception("objectcache: starting a layerwise transfer failed")
                self._lost(t, e)
        return decision.wake_at

    def _lost(self, t: Transfer, err: BaseException) -> None:
        """Settle a transfer whose start raised, as its result would have: the scheduler's
        slot, the batch's pending count (its staging is released) and the batch or write."""
        self.sched.done(t, time.monotonic())
        if t.kind == WRITE:
            t.payload.on_done([StoreError("client", f"{type(err).__name__}: {err}")] * len(t.payload.items))
            return
        self.batches.settle(t.payload.index)
        self.batches.fail(t.payload.index, err)

    def _fetch(self, t: Transfer) -> None:
        p = t.payload
        # A range from byte 0 carries the header, checked against the page's own key.
        digests = [self.digest(p.batch.hashes[i]) for i in p.group] if p.ranges[0][1] == 0 else None
        job, self._next_job = self._next_job, self._next_job + 1
        self._jobs[job] = t
        try:
            self.fetch.submit(FetchJob(job, p.ranges, p.group, p.layers, digests), p.staged)
        except BaseException:
            del self._jobs[job]  # never answered (the caller settles the transfer)
            raise

    # ---- the pool ------------------------------------------------------------------------

    def _run_write(self, t: Transfer) -> None:
        items = t.payload.items
        try:
            results = self.store.put_many(items, if_absent=True)
        except Exception as e:  # noqa: BLE001 - transports should not raise; be safe
            results = [StoreError("client", f"{type(e).__name__}: {e}")] * len(items)
        self._inbox.put(Written(t, results))

    def _copy_host(self, index: int, layers: range, pages: list, staged: dict, objs: list) -> None:
        """Host-tier pages' layers into their staging rows."""
        err = None
        try:
            for layer in layers:
                s, e = self.g.layer_range(layer)
                rows = staged[layer].numpy()
                for i in pages:
                    rows[i] = objs[i][s:e]
        except Exception as ex:  # noqa: BLE001
            err = ex
        self._inbox.put(HostCopied(index, layers, pages, err))
