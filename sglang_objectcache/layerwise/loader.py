"""The layerwise pipeline: fetch layer l of many pages while layer l-1 computes.

One I/O thread owns a `sched.Scheduler` and everything mutable here. A load batch (the
pages of every request in one forward) becomes, per layer, a few transfers of ranged GETs
(layer l of a page is one contiguous byte range of its object; layer 0's range starts at
0 and so carries the header with every layer's checksum). Store calls run on a small
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
Deadlines for the scheduler: the forward starts when the batch does, and layer l is
consumed after the estimated compute of layers < l (`layer_s`, an EWMA of the
forward's observed per-layer pace).

Failure: a missing page, a checksum or size mismatch, a store error or a stop request
fails the batch; the counter releases the forward and reports the failure at finish, so
the scheduler never uses its output. Pages that failed their checks are reported first
(`on_corrupt`, which must not block: their scrub runs elsewhere). `stop(index)` returns
only once this thread will never write that batch's slots again (on GPU: once its copies
have completed), or, should this thread not answer within STOP_TIMEOUT_S, with the batch
marked failed: the scheduler thread never hangs on it. An error anywhere in this thread fails the batches concerned and
the thread goes on.

Writes (offloads) use the same scheduler with kind WRITE, so reads always go first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from sglang_objectcache import kernels, objformat
from sglang_objectcache.layerwise.fetch import ThreadFetch
from sglang_objectcache.objformat import FormatError, PageGeometry
from sglang_objectcache.transfers import READ, WRITE, TransferScheduler, Transfer
from sglang_objectcache.store import StoreError

logger = logging.getLogger(__name__)

PAGES_PER_TRANSFER = 16
# How long `stop` waits for the I/O thread. It runs on SGLang's scheduler thread (counter
# finish), which must never hang on a stuck or dead I/O thread; stopping normally takes
# well under a millisecond.
STOP_TIMEOUT_S = 5.0


@dataclass
class _Batch:
    index: int
    rids: list[str]
    hashes: list[str]
    names: list[str]
    slots: torch.Tensor
    deadline0: float
    host_objs: list  # the host-tier object of each page, or None: fetch from the store
    # Store pages being assembled for the host tier: (page indices, their staging rows as a
    # slice where they are consecutive (no temporary copy) else an index array, the block
    # [pages, object_bytes]).
    tier_blocks: list = field(default_factory=list)
    tier_at: dict = field(default_factory=dict)  # page index -> (block, row)
    headers: list = field(default_factory=list)
    staged: dict = field(default_factory=dict)  # layer -> uint8 [N, layer_bytes]
    arrived: dict = field(default_factory=dict)  # layer -> set of page indices in staging
    sums: dict = field(default_factory=dict)  # layer -> {page: checksum of its staged row}
    pending: int = 0  # pool jobs that may still write this batch's staging rows
    next_layer: int = 0  # first layer not yet submitted
    done_layers: int = 0
    events: list = field(default_factory=list)  # CUDA events of enqueued scatters
    counter: object = None  # whose layers this batch completes
    failed: Optional[BaseException] = None
    stopped: bool = False


# A request costs the store and the client about as much CPU as ~0.5 MiB of its bytes
# (SeaweedFS on loopback, benchmarks/results/storage.json), and more wall time than that on
# a remote store (first-byte latency), so a GET should be at least this big.
AUTO_GET_BYTES = 1 << 20


def auto_layers_per_get(g: PageGeometry) -> int:
    """The fewest consecutive layers of a page whose byte range is at least AUTO_GET_BYTES,
    at most all of them: 1 where a page's layer is 1 MiB already (32 KV heads x 128 at page
    64), 4 for Llama-3-8B at page 64 (256 KiB a layer), whole objects for a small model."""
    return max(1, min(g.num_layers, -(-AUTO_GET_BYTES // g.layer_bytes)))


class LayerwiseLoader:
    def __init__(self, *, store, geometry: PageGeometry, device_layers, content_digest: Callable,
                 counter, scheduler: TransferScheduler, tier, timeline, stats, window_layers: int = 4,
                 layers_per_get: int = 0, io_threads: int = 8, layer_s: float = 0.002, on_store_error=None,
                 on_corrupt=None, fetch=None, on_missing=None):
        """`fetch`: a `fetch.ProcessFetch` (what the linker uses), else a ThreadFetch on
        `store` with `io_threads` threads."""
        self.store = store
        self.g = geometry
        self.layers = device_layers  # [(k_buffer[l], v_buffer[l])] or [(kv_buffer[l],)]
        self.digest = content_digest
        self.counter = counter
        self.sched = scheduler
        self.tier = tier
        self.timeline = timeline
        self.stats = stats
        self.per_get = min(layers_per_get or auto_layers_per_get(geometry), geometry.num_layers)
        # With groups, layer 0 is still read on its own, so the forward's first wait is for one
        # layer's bytes; the next group is in flight with it (window: group + 1).
        self.lead_alone = self.per_get > 1
        self.window = max(1, window_layers, self.per_get + self.lead_alone)  # a whole group is staged at once
        self.layer_s = layer_s
        self.on_store_error = on_store_error or (lambda err: None)
        # on_corrupt(names, hashes): the pages whose checks failed, on this I/O thread before
        # their batch fails; it must not block (the linker scrubs them on another thread)
        self.on_corrupt = on_corrupt or (lambda names, hashes: None)
        # on_missing(name): an object the lookup counted on is gone (GC, another server's scrub)
        self.on_missing = on_missing or (lambda name: None)
        self.device = device_layers[0][0].device
        self._cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._batches: dict[int, _Batch] = {}
        self._observed_rate = 0.0  # EWMA of the link's bytes/s, from completed reads
        self._planned_rate = 0.0  # the rate the current deadlines were projected with
        self._free: list[torch.Tensor] = []  # staging buffers to reuse, whole
        self._whole: dict[int, torch.Tensor] = {}  # data_ptr -> every staging buffer made, whole
        self._in_copy: list = []  # (staging, CUDA event) still being read by an H2D copy
        self._inbox: "queue.Queue" = queue.Queue()
        self.fetch = fetch or ThreadFetch(store, geometry, io_threads, pinned=self._cuda)
        self.fetch.on_result = lambda *res: self._inbox.put(("fetched", *res))
        self._jobs: dict[int, Transfer] = {}  # fetch jobs out, by id
        self._next_job = 0
        self._draining: dict[int, _Batch] = {}  # stopped batches whose jobs may still write staging
        # Writes and host-tier copies; few threads, as each one competes with the forward for the GIL.
        self._pool = ThreadPoolExecutor(min(4, io_threads), thread_name_prefix="objectcache-io")
        self._thread = threading.Thread(target=self._loop, name="objectcache-io", daemon=True)
        self._running = True
        self._thread.start()

    # ---- API (any thread) --------------------------------------------------------------

    def load(self, index: int, rids: list[str], hashes: list[str], names: list[str],
             slots: torch.Tensor, ready_event=None, counter=None) -> None:
        """Start batch `index`. On GPU, `ready_event` marks when the slots are free to write.
        `counter` overrides the loader's own (several independent forwards share one link)."""
        self._inbox.put(("load", index, rids, hashes, names, slots, ready_event, counter or self.counter,
                         time.perf_counter()))

    def stop(self, index: int) -> None:
        """Stop batch `index`; returns once nothing will write its slots any more, or, if
        the I/O thread is gone or does not answer within STOP_TIMEOUT_S, marks the batch
        failed (its output is never used) and returns anyway."""
        done = threading.Event()
        self._inbox.put(("stop", index, done))
        if self._thread.is_alive() and done.wait(STOP_TIMEOUT_S):
            return
        # The queued stop still ends the batch if the thread ever gets to it.
        logger.error("objectcache: layerwise I/O thread did not stop load %d within %.0fs; "
                     "its requests recompute", index, STOP_TIMEOUT_S)
        b = self._batches.get(index)
        counter = b.counter if b is not None else self.counter
        if counter is not None:
            counter.fail(index, TimeoutError(f"layerwise load {index} not stopped within {STOP_TIMEOUT_S}s"))

    def write(self, items: list, on_done: Callable[[list], None]) -> None:
        """PUT (name, bytes) pairs if absent, after all queued reads; on_done(results)."""
        self._inbox.put(("write", items, on_done))

    def close(self) -> None:
        if self._running:
            self._running = False
            self._inbox.put(("quit",))
            self._thread.join(timeout=30)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.fetch.close()

    def _projected_start(self, store_pages: int) -> float:
        """When this batch's forward can really start consuming: after the bytes of the
        batches ahead of it, at the link's rate. Deadlines from this order the scheduler
        the way the link will actually serve the requests (see sched.plan_starts)."""
        now = time.monotonic()
        rate = self._rate()
        if rate <= 0:
            return now
        g = self.g
        ahead = sum(sum(o is None for o in b.host_objs) * (g.num_layers - b.done_layers) * g.layer_bytes
                    for b in self._batches.values() if b.failed is None and not b.stopped)
        return now + ahead / rate

    def _maybe_replan(self) -> None:
        """Re-project every live batch's start when the rate estimate moved: a burst that
        arrived before any transfer finished was planned blind (all due at once, which EDF
        serves layer by layer round-robin), and the link's real rate orders it."""
        rate = self._rate()
        if rate <= 0 or len(self._batches) < 2:
            return
        if self._planned_rate and abs(rate - self._planned_rate) < 0.25 * self._planned_rate:
            return
        self._planned_rate = rate
        now, ahead, g = time.monotonic(), 0.0, self.g
        for index in sorted(self._batches):
            b = self._batches[index]
            if b.failed is not None or b.stopped:
                continue
            d0 = now + ahead / rate
            b.deadline0 = d0
            self.sched.update_deadlines(f"b{index}", lambda t, d0=d0: d0 + t.layer * self.layer_s)
            ahead += sum(o is None for o in b.host_objs) * (g.num_layers - b.done_layers) * g.layer_bytes

    def _rate(self) -> float:
        """Bytes/s: the configured cap, else the observed read throughput."""
        cap = self.sched.cfg.bandwidth_mbps * 1e6 / 8
        return cap or self._observed_rate

    def observe_layer_pace(self, seconds: float) -> None:
        """Feed the forward's measured time per layer (deadline estimates)."""
        if seconds > 0:
            self.layer_s = 0.8 * self.layer_s + 0.2 * seconds

    # ---- the I/O thread ----------------------------------------------------------------

    def _loop(self) -> None:
        wake_at = None
        while True:
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                msg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                msg = None
            while msg is not None:
                if msg[0] == "quit":
                    return
                try:
                    self._handle(msg)
                except Exception:  # noqa: BLE001 - the thread must survive anything
                    logger.exception("objectcache: layerwise I/O thread error")
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    msg = None
            try:
                wake_at = self._dispatch()
            except Exception as e:  # noqa: BLE001 - a dead thread would hang every later load
                # Which transfers the scheduler lost is unknown: fail every live batch (they
                # recompute) rather than leave its forward waiting for layers that never
                # come, and ask the scheduler again in a second (writes may be queued).
                logger.exception("objectcache: layerwise I/O scheduling failed")
                for index in list(self._batches):
                    try:
                        self._fail(index, e)
                    except Exception:  # noqa: BLE001
                        logger.exception("objectcache: failing layerwise load %d failed", index)
                wake_at = time.monotonic() + 1.0

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
            t.payload[0]([StoreError("client", f"{type(err).__name__}: {err}")] * len(t.payload[1]))
            return
        index = t.payload[0]
        self._settle(index)
        self._fail(index, err)

    def _run_write(self, t: Transfer) -> None:
        try:
            results = self.store.put_many(t.payload[1], if_absent=True)
        except Exception as e:  # noqa: BLE001 - transports should not raise; be safe
            results = [StoreError("client", f"{type(e).__name__}: {e}")] * len(t.payload[1])
        self._inbox.put(("written", t, results))

    def _fetch(self, t: Transfer) -> None:
        index, layers, group, ranges, staged, b = t.payload
        # A range from byte 0 carries the header, checked against the page's own key.
        digests = [self.digest(b.hashes[i]) for i in group] if ranges[0][1] == 0 else None
        job, self._next_job = self._next_job, self._next_job + 1
        self._jobs[job] = t
        try:
            self.fetch.submit(job, ranges, group, layers, staged, digests)
        except BaseException:
            del self._jobs[job]  # never answered (the caller settles the transfer)
            raise

    def _copy_host(self, index: int, layers, pages: list, staged: dict, objs: list) -> None:
        """On a pool thread: host-tier pages' layers into their staging rows."""
        err = None
        try:
            for layer in layers:
                s, e = self.g.layer_range(layer)
                rows = staged[layer].numpy()
                for i in pages:
                    rows[i] = objs[i][s:e]
        except Exception as ex:  # noqa: BLE001
            err = ex
        self._inbox.put(("host", index, layers, pages, err))

    def _handle(self, msg) -> None:
        kind = msg[0]
        if kind == "load":
            self._start(*msg[1:])
        elif kind == "stop":
            _, index, done = msg
            try:
                self._stop(index)
            finally:
                done.set()  # even where stopping raised: the scheduler thread waits on it
        elif kind == "write":
            _, items, on_done = msg
            nbytes = sum(memoryview(d).nbytes for _, d in items)
            self.sched.submit([Transfer("writes", -1, nbytes, kind=WRITE, payload=(on_done, items))],
                              time.monotonic())
        elif kind == "written":
            _, t, results = msg
            self.sched.done(t, time.monotonic())
            t.payload[0](results)
        elif kind == "fetched":
            _, job, outcomes, t_arrived, t_started = msg
            t = self._jobs.pop(job)
            self.sched.done(t, time.monotonic())
            try:
                self._on_fetched(t, outcomes, t_arrived, t_started)
            except Exception as e:  # noqa: BLE001 - fail the batch, keep the thread
                logger.exception("objectcache: layerwise result handling failed")
                self._fail(t.payload[0], e)
        elif kind == "host":
            _, index, layers, pages, err = msg
            b = self._settle(index)
            if b is None:
                return
            if err is not None:
                return self._fail(index, err)
            for layer in layers:
                b.arrived[layer].update(pages)
            self._advance(b)

    def _stop(self, index: int) -> None:
        b = self._batches.pop(index, None)
        if b is None:
            return
        b.stopped = True  # first: from here no result of this batch is used
        # Queued transfers are dropped and never come back: only started ones still count.
        b.pending -= len(self.sched.cancel(f"b{index}"))
        for ev in b.events:  # GPU copies already enqueued must land first
            ev.synchronize()
        if b.pending == 0:
            self._give_back(b.staged.values())
            b.staged.clear()
        else:  # a fetch may still write its staging: reuse that once it is back
            self._draining[index] = b
        b.tier_blocks.clear()
        self.timeline.end(index, b.failed is None and b.done_layers == self.g.num_layers,
                          time.perf_counter())

    # ---- batches -------------------------------------------------------------------------

    def _start(self, index, rids, hashes, names, slots, ready_event, counter, t0) -> None:
        n = len(names)
        if ready_event is not None:
            self._copy_stream.wait_event(ready_event)
        host_objs = [self.tier.get(name) for name in names]
        b = _Batch(index, rids, hashes, names, slots, deadline0=self._projected_start(n - sum(
                   o is not None for o in host_objs)), host_objs=host_objs,
                   headers=[None] * n, counter=counter)
        if self.tier.capacity > 0:  # blocks of a transfer's size: the tier frees memory by block
            store_pages = [i for i, o in enumerate(host_objs) if o is None]
            for k in range(0, len(store_pages), PAGES_PER_TRANSFER):
                group = store_pages[k : k + PAGES_PER_TRANSFER]
                for r, i in enumerate(group):
                    b.tier_at[i] = (len(b.tier_blocks), r)
                rows = slice(group[0], group[-1] + 1) if group[-1] - group[0] == len(group) - 1 else np.array(group)
                b.tier_blocks.append((group, rows, np.empty((len(group), self.g.object_bytes), np.uint8)))
        self._batches[index] = b
        n_host = sum(o is not None for o in host_objs)
        self.timeline.begin(index, rids, n - n_host, n_host, self.g.num_layers, t0)
        self.stats.inc("layerwise_pages_host", n_host)
        self.stats.inc("layerwise_pages_store", n - n_host)
        for i, obj in enumerate(host_objs):
            if obj is not None:
                try:
                    b.headers[i] = objformat.decode_header(obj, self.g, self.digest(hashes[i]))
                except FormatError as e:
                    self.tier.discard(names[i])
                    self._fail(index, e)
                    return
        self._submit_window(b)
        self._advance(b)

    def _submit_window(self, b: _Batch) -> None:
        g = self.g
        store_pages = [i for i, o in enumerate(b.host_objs) if o is None]
        now = time.monotonic()
        while b.next_layer < g.num_layers:
            size = 1 if b.next_layer == 0 and self.lead_alone else self.per_get
            layers = range(b.next_layer, min(g.num_layers, b.next_layer + size))
            if layers[-1] >= b.done_layers + self.window:
                break  # window >= per_get: an empty window always takes a whole group
            b.next_layer = layers[-1] + 1
            staged = {}
            for layer in layers:
                b.staged[layer] = staged[layer] = self._staging(len(b.names))
                b.arrived[layer] = set()
                b.sums[layer] = {}
            host_pages = [i for i, o in enumerate(b.host_objs) if o is not None]
            if host_pages:  # DRAM hits: copied in on the pool too, off this thread
                b.pending += 1
                self._pool.submit(self._copy_host, b.index, layers, host_pages, staged, b.host_objs)
            # Layer 0's range starts at 0: it carries the header with every checksum.
            start = 0 if layers[0] == 0 else g.layer_range(layers[0])[0]
            end = g.layer_range(layers[-1])[1]
            deadline = b.deadline0 + layers[0] * self.layer_s
            transfers = []
            for k in range(0, len(store_pages), PAGES_PER_TRANSFER):
                group = store_pages[k : k + PAGES_PER_TRANSFER]
                ranges = [(b.names[i], start, end) for i in group]
                transfers.append(Transfer(f"b{b.index}", layers[0], len(group) * (end - start),
                                          deadline=deadline, kind=READ, arrival=b.index,
                                          payload=(b.index, layers, group, ranges, staged, b)))
            b.pending += len(transfers)  # less those cancelled (_fail, _stop): they never come back
            if transfers:
                now_pc = time.perf_counter()
                for layer in layers:
                    self.timeline.mark(b.index, layer, "issued", now_pc)
                self.sched.submit(transfers, now)

    def _staging(self, n: int) -> torch.Tensor:
        """The first `n` rows of a staging buffer. Reused: pinned allocations (GPU machines,
        for asynchronous H2D) and shared segments are expensive."""
        if self._in_copy:
            self._give_back(t for t, ev in self._in_copy if ev.query())
            self._in_copy = [(t, ev) for t, ev in self._in_copy if not ev.query()]
        extra = max(0, len(self._free) - 4 * self.window)
        for t in self._free[:extra]:
            self._whole.pop(t.data_ptr(), None)
            self.fetch.release(t)
        del self._free[:extra]
        for k, t in enumerate(self._free):
            if t.shape[0] >= n:
                return self._free.pop(k)[:n]
        t = self.fetch.alloc(max(n, PAGES_PER_TRANSFER))
        self._whole[t.data_ptr()] = t
        return t[:n]

    def _give_back(self, staging) -> None:
        """Staging a batch no longer uses, for reuse: the whole buffer each came from, not the
        rows the batch used (else buffers shrink to the smallest batch, and every larger one
        makes new ones)."""
        self._free.extend(self._whole.get(t.data_ptr(), t) for t in staging)

    def _on_fetched(self, t: Transfer, outcomes: list, t_arrived: float, t_started: float) -> None:
        index, layers, group, ranges = t.payload[:4]
        b = self._settle(index)
        if b is None:
            return
        self.stats.inc("get_requests", len(ranges))
        self.stats.observe_get(t_arrived - t_started, len(ranges))  # the ranges ran together
        bad = [(i, out[1]) for i, out in zip(group, outcomes) if out[0] == "corrupt"]
        if bad:  # every damaged page of the job, not only the first
            return self._corrupt(index, bad)
        for i, (name, start, end), out in zip(group, ranges, outcomes):
            kind = out[0]
            if kind == "store":
                err = StoreError(out[1], out[2])
                self.stats.inc("store_errors_" + err.kind)
                self.on_store_error(err)
                return self._fail(index, err)
            if kind == "missing":
                self.stats.miss("not_found")
                self.on_missing(name)
                return self._fail(index, KeyError(f"{name}: object missing"))
            if kind == "unsupported":
                self.stats.miss("unsupported")
                return self._fail(index, FormatError(f"{name}: {out[1]}"))
            _, header, sums, raw = out
            self.stats.inc("bytes_read", end - start)
            if header is not None:
                b.headers[i] = header
                if i in b.tier_at:
                    k, r = b.tier_at[i]
                    b.tier_blocks[k][2][r, : len(raw)] = np.frombuffer(raw, np.uint8)
            for layer in layers:
                b.sums[layer][i] = sums[layer]
                b.arrived[layer].add(i)
        for layer in layers:
            self.timeline.mark(index, layer, "arrived", t_arrived)
        took = t_arrived - t_started
        if took > 0:
            rate = t.nbytes / took * min(len(self.sched._inflight) + 1, self.sched.cfg.max_inflight)
            self._observed_rate = rate if not self._observed_rate else 0.8 * self._observed_rate + 0.2 * rate
            self._maybe_replan()
        self._advance(b)

    def _settle(self, index: int) -> Optional[_Batch]:
        """A job of batch `index` came back: count it; the batch if still live."""
        b = self._batches.get(index) or self._draining.get(index)
        if b is None:
            return None
        b.pending -= 1
        if b.stopped and b.pending == 0 and self._draining.pop(index, None) is not None:
            self._give_back(b.staged.values())  # nothing writes them any more
            b.staged.clear()
        return None if b.stopped or b.failed is not None else b

    def _advance(self, b: _Batch) -> None:
        """Verify and scatter every layer whose pages have all arrived; refill the window."""
        n = len(b.names)
        progressed = True
        while progressed and b.failed is None and not b.stopped:
            progressed = False
            for layer in sorted(b.staged):
                if len(b.arrived[layer]) < n or any(h is None for h in b.headers):
                    continue
                bad = []
                for i, digest in b.sums[layer].items():  # store pages (host-tier ones were verified on entry)
                    try:
                        objformat.check_layer_sum(b.headers[i], layer, digest)
                    except FormatError as e:
                        bad.append((i, str(e)))
                if bad:  # every page that failed, not only the first
                    return self._corrupt(b.index, bad)
                self._scatter(b, layer, b.staged.pop(layer))
                progressed = True
            if b.done_layers == self.g.num_layers:
                return self._complete(b)
            self._submit_window(b)

    def _scatter(self, b: _Batch, layer: int, staging: torch.Tensor) -> None:
        pools = self.layers[layer]
        event = None
        if self._cuda:
            with torch.cuda.stream(self._copy_stream):
                dev = staging.to(self.device, non_blocking=True)
                kernels.scatter_layer(dev, pools, b.slots, self.g)
                event = torch.cuda.Event()
                event.record(self._copy_stream)
                b.events.append(event)
                # The staging buffer is reused only after this copy has read it.
                dev.record_stream(self._copy_stream)
            self._free_after(staging, event)
        else:
            kernels.scatter_layer(staging, pools, b.slots, self.g)
            self._give_back([staging])
        b.done_layers += 1
        self.timeline.mark(b.index, layer, "scattered", time.perf_counter())
        b.counter.complete(b.index, layer, event)
        # After the forward was released: the host-tier copy is not on its path. Only
        # `_staging()`, on this thread, hands the buffer out again, so it still holds the layer.
        if b.tier_blocks:  # one strided copy per block; numpy releases the GIL for it
            s, e = self.g.layer_range(layer)
            staged = staging.numpy()
            for _, rows, block in b.tier_blocks:
                block[:, s:e] = staged[rows]

    def _free_after(self, staging: torch.Tensor, event) -> None:
        # Pinned host memory: reuse it only once the H2D copy has read it.
        self._in_copy.append((staging, event))

    def _complete(self, b: _Batch) -> None:
        for pages, _, block in b.tier_blocks:
            self.tier.put_block([b.names[i] for i in pages], block)
        b.tier_blocks.clear()
        self.stats.inc("layerwise_batches_ok")

    def _corrupt(self, index: int, bad: list[tuple[int, str]]) -> None:
        """Pages of batch `index` failed their checks (page, why). Only they are reported:
        each scrub re-reads what it checks, and pages the load never got to are checked by
        the next load that reads them. Reported before the batch fails, so the scrub holds
        their names (`ObjectCache.scrub_later`) before the recompute can write them back."""
        self.stats.inc("checksum_failures", len(bad))
        self.stats.miss("corrupt", len(bad))
        b = self._batches.get(index)
        if b is None or b.failed is not None:
            return
        try:
            self.on_corrupt([b.names[i] for i, _ in bad], [b.hashes[i] for i, _ in bad])
        except Exception:  # noqa: BLE001 - the batch fails all the same
            logger.exception("objectcache: reporting corrupt pages failed")
        i, why = bad[0]
        more = f" (and {len(bad) - 1} more page(s))" if len(bad) > 1 else ""
        self._fail(index, FormatError(f"{b.names[i]}: {why}{more}"))

    def _fail(self, index: int, err: BaseException) -> None:
        b = self._batches.get(index)
        if b is None or b.failed is not None:
            return
        b.failed = err
        # Queued transfers are dropped and never come back; without this the batch's
        # pending count never reaches 0 and _stop parks its staging in _draining forever.
        b.pending -= len(self.sched.cancel(f"b{index}"))
        self.stats.inc("layerwise_batches_failed")
        logger.warning("objectcache: layerwise load %d failed (%s: %s); its requests recompute",
                       index, type(err).__name__, err)
        b.counter.fail(index, err)
