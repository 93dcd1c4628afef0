"""The live load batches of the layerwise loader and their state machine. On the loader's
I/O thread only, which owns every field here.

A batch submits its layers a window at a time (`GetPlan`), as READ transfers of up to
PAGES_PER_TRANSFER pages each; host-tier pages are copied into staging off this thread
(`copy_host`). Each outcome that comes back lands in `arrived`/`sums`/`headers`; once every
page of a layer is in and its checksums match the headers, the layer is scattered, the
counter releases it to the forward and it is copied into the pages' host-tier blocks.
A stopped batch keeps its staging (in `draining`) until no job may write it (`pending`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from sglang_objectcache import objformat
from sglang_objectcache.layerwise.hosttier import TierBlocks
from sglang_objectcache.layerwise.messages import (
    Corrupt,
    HostCopied,
    JobDone,
    Load,
    Missing,
    ReadPayload,
    StoreFailed,
    Unsupported,
)
from sglang_objectcache.layerwise.pace import Pace
from sglang_objectcache.layerwise.scatter import DeviceScatter
from sglang_objectcache.layerwise.settings import PAGES_PER_TRANSFER, GetPlan, LoaderHooks, LoaderParts
from sglang_objectcache.layerwise.staging import StagingPool
from sglang_objectcache.objformat import FormatError, PageGeometry
from sglang_objectcache.store import StoreError
from sglang_objectcache.transfers import READ, Transfer

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    index: int
    rids: list[str]
    hashes: list[str]
    names: list[str]
    slots: torch.Tensor
    deadline0: float
    host_objs: list  # the host-tier object of each page, or None: fetch from the store
    num_layers: int
    layer_bytes: int
    tier: TierBlocks  # store pages being assembled for the host tier (no blocks: not kept)
    headers: list = field(default_factory=list)
    staged: dict = field(default_factory=dict)  # layer -> uint8 [N, layer_bytes]
    arrived: dict = field(default_factory=dict)  # layer -> set of page indices in staging
    sums: dict = field(default_factory=dict)  # layer -> {page: checksum of its staged row}
    pending: int = 0  # jobs that may still write this batch's staging rows
    next_layer: int = 0  # first layer not yet submitted
    done_layers: int = 0
    events: list = field(default_factory=list)  # CUDA events of enqueued scatters
    counter: object = None  # whose layers this batch completes
    failed: Optional[BaseException] = None
    stopped: bool = False

    @property
    def live(self) -> bool:
        return self.failed is None and not self.stopped

    def store_pages(self) -> list[int]:
        return [i for i, o in enumerate(self.host_objs) if o is None]

    def host_pages(self) -> list[int]:
        return [i for i, o in enumerate(self.host_objs) if o is not None]

    def store_bytes_left(self) -> int:
        """Bytes still to read from the store for the layers not yet scattered."""
        return len(self.store_pages()) * (self.num_layers - self.done_layers) * self.layer_bytes

    def layer_ready(self, layer: int) -> bool:
        """Every page of `layer` is staged and every page's header is known."""
        return len(self.arrived[layer]) == len(self.names) and all(h is not None for h in self.headers)


class Batches:
    def __init__(self, g: PageGeometry, parts: LoaderParts, hooks: LoaderHooks, plan: GetPlan,
                 staging: StagingPool, device: DeviceScatter, pace: Pace,
                 copy_host: Callable[[int, range, list, dict, list], None]):
        """`copy_host(index, layers, pages, staged, objs)` copies host-tier pages' layers into
        staging off this thread and answers with a HostCopied."""
        self.g, self.parts, self.hooks, self.plan = g, parts, hooks, plan
        self.staging, self.device, self.pace, self.copy_host = staging, device, pace, copy_host
        self.sched, self.stats, self.timeline = parts.scheduler, parts.stats, parts.timeline
        self.live: dict[int, Batch] = {}
        self.draining: dict[int, Batch] = {}  # stopped batches whose jobs may still write staging

    # ---- start ---------------------------------------------------------------------------

    def start(self, m: Load) -> None:
        self.device.wait(m.ready_event)
        b = self._new(m)
        self.live[m.index] = b
        n_host = len(b.host_pages())
        self.timeline.begin(m.index, m.rids, len(m.names) - n_host, n_host, self.g.num_layers, m.t0)
        self.stats.inc("layerwise_pages_host", n_host)
        self.stats.inc("layerwise_pages_store", len(m.names) - n_host)
        for i in b.host_pages():
            try:
                b.headers[i] = objformat.decode_header(b.host_objs[i], self.g, self.parts.content_digest(m.hashes[i]))
            except FormatError as e:
                self.parts.tier.discard(m.names[i])
                self.fail(m.index, e)
                return
        self.submit_window(b)
        self.advance(b)

    def _new(self, m: Load) -> Batch:
        host_objs = [self.parts.tier.get(name) for name in m.names]
        store_pages = [i for i, o in enumerate(host_objs) if o is None]
        # Blocks of a transfer's size: the tier frees memory by block.
        tier = TierBlocks(store_pages if self.parts.tier.capacity > 0 else [], PAGES_PER_TRANSFER, self.g.object_bytes)
        deadline0 = self.pace.projected_start(self.live.values())
        return Batch(m.index, m.rids, m.hashes, m.names, m.slots, deadline0=deadline0, host_objs=host_objs,
                     num_layers=self.g.num_layers, layer_bytes=self.g.layer_bytes, tier=tier,
                     headers=[None] * len(m.names), counter=m.counter)

    def submit_window(self, b: Batch) -> None:
        """Submit the layers of `b` that fit in its window, a whole GET's layers at a time.
        A lead layer read alone goes first: the next group waits until it is in. In flight
        together, the group's larger reads share the link and the CPUs with it, and layer 0
        arrived no sooner than the whole object (benchmarks/results/ttft_lead_together.json,
        then ttft_lead_first.json)."""
        while b.next_layer < self.g.num_layers:
            if self.plan.lead_alone and b.next_layer == 1 and b.done_layers == 0 and b.store_pages():
                break
            layers = self.plan.group_at(b.next_layer, self.g.num_layers)
            if layers[-1] >= b.done_layers + self.plan.window:
                break  # window >= per_get: an empty window always takes a whole group
            b.next_layer = layers[-1] + 1
            self._submit_layers(b, layers)

    def _submit_layers(self, b: Batch, layers: range) -> None:
        staged = {}
        for layer in layers:
            b.staged[layer] = staged[layer] = self.staging.take(len(b.names))
            b.arrived[layer] = set()
            b.sums[layer] = {}
        host_pages = b.host_pages()
        if host_pages:  # DRAM hits: copied in on the pool too, off this thread
            b.pending += 1
            self.copy_host(b.index, layers, host_pages, staged, b.host_objs)
        # Layer 0's range starts at 0: it carries the header with every checksum.
        start = 0 if layers[0] == 0 else self.g.layer_range(layers[0])[0]
        end = self.g.layer_range(layers[-1])[1]
        deadline = self.pace.deadline(b.deadline0, layers[0])
        transfers, store_pages = [], b.store_pages()
        for k in range(0, len(store_pages), PAGES_PER_TRANSFER):
            group = store_pages[k : k + PAGES_PER_TRANSFER]
            ranges = [(b.names[i], start, end) for i in group]
            transfers.append(Transfer(f"b{b.index}", layers[0], len(group) * (end - start),
                                      deadline=deadline, kind=READ, arrival=b.index,
                                      payload=ReadPayload(b.index, layers, group, ranges, staged, b)))
        b.pending += len(transfers)  # less those cancelled (fail, stop): they never come back
        if transfers:
            now_pc = time.perf_counter()
            for layer in layers:
                self.timeline.mark(b.index, layer, "issued", now_pc)
            self.sched.submit(transfers, time.monotonic())

    # ---- results ---------------------------------------------------------------------------

    def on_fetched(self, t: Transfer, done: JobDone) -> None:
        """Transfer `t`'s fetch job came back (the scheduler already knows it is done)."""
        p: ReadPayload = t.payload
        b = self.settle(p.index)
        if b is None:
            return
        self.stats.inc("get_requests", len(p.ranges))
        self.stats.observe_get(done.arrived - done.started, len(p.ranges))  # the ranges ran together
        bad = [(i, out.message) for i, out in zip(p.group, done.outcomes) if isinstance(out, Corrupt)]
        if bad:  # every damaged page of the job, not only the first
            return self.corrupt(p.index, bad)
        if not self._take(b, p, done.outcomes):
            return
        b.counter.progress(p.index)  # still coming in on a slow link: the forward keeps waiting
        for layer in p.layers:
            self.timeline.mark(p.index, layer, "arrived", done.arrived)
        took = done.arrived - done.started
        if took > 0:
            self.hooks.on_read(self.pace.observe_read(t.nbytes, took), took)
            self.pace.replan(self.live)
        self.advance(b)

    def _take(self, b: Batch, p: ReadPayload, outcomes: list) -> bool:
        """Record each page's staged layers; False (the batch failed) at the first page that
        did not stage."""
        for i, (name, start, end), out in zip(p.group, p.ranges, outcomes):
            if isinstance(out, StoreFailed):
                err = StoreError(out.kind, out.message)
                self.stats.inc("store_errors_" + err.kind)
                self.hooks.on_store_error(err)
                return self._failed(p.index, err)
            if isinstance(out, Missing):
                self.stats.miss("not_found")
                self.hooks.on_missing(name)
                return self._failed(p.index, KeyError(f"{name}: object missing"))
            if isinstance(out, Unsupported):
                self.stats.miss("unsupported")
                return self._failed(p.index, FormatError(f"{name}: {out.message}"))
            self.stats.inc("bytes_read", end - start)
            if out.header is not None:
                b.headers[i] = out.header
                b.tier.header(i, out.raw)
            for layer in p.layers:
                b.sums[layer][i] = out.sums[layer]
                b.arrived[layer].add(i)
        return True

    def _failed(self, index: int, err: BaseException) -> bool:
        self.fail(index, err)
        return False

    def host_copied(self, m: HostCopied) -> None:
        b = self.settle(m.index)
        if b is None:
            return
        if m.err is not None:
            return self.fail(m.index, m.err)
        for layer in m.layers:
            b.arrived[layer].update(m.pages)
        self.advance(b)

    def settle(self, index: int) -> Optional[Batch]:
        """A job of batch `index` came back: count it; the batch if still live."""
        b = self.live.get(index) or self.draining.get(index)
        if b is None:
            return None
        b.pending -= 1
        if b.stopped and b.pending == 0 and self.draining.pop(index, None) is not None:
            self.staging.give_back(b.staged.values())  # nothing writes them any more
            b.staged.clear()
        return b if b.live else None

    # ---- layers ------------------------------------------------------------------------------

    def advance(self, b: Batch) -> None:
        """Verify and scatter every layer whose pages have all arrived; refill the window."""
        progressed = True
        while progressed and b.live:
            progressed = False
            for layer in sorted(b.staged):
                if not b.layer_ready(layer):
                    continue
                bad = []
                for i, digest in b.sums[layer].items():  # store pages (host-tier ones were verified on entry)
                    try:
                        objformat.check_layer_sum(b.headers[i], layer, digest)
                    except FormatError as e:
                        bad.append((i, str(e)))
                if bad:  # every page that failed, not only the first
                    return self.corrupt(b.index, bad)
                self._scatter(b, layer, b.staged.pop(layer))
                progressed = True
            if b.done_layers == self.g.num_layers:
                return self._complete(b)
            self.submit_window(b)

    def _scatter(self, b: Batch, layer: int, staging: torch.Tensor) -> None:
        event = self.device.scatter(layer, staging, b.slots)
        if event is not None:
            b.events.append(event)
        b.done_layers += 1
        self.timeline.mark(b.index, layer, "scattered", time.perf_counter())
        b.counter.complete(b.index, layer, event)
        # After the forward was released: the host-tier copy is not on its path. Only
        # `StagingPool.take()`, on this thread, hands the buffer out again, so it still holds the layer.
        if b.tier.blocks:
            b.tier.layer(self.g.layer_range(layer), staging.numpy())

    def _complete(self, b: Batch) -> None:
        b.tier.put(self.parts.tier, b.names)
        self.stats.inc("layerwise_batches_ok")

    # ---- endings -----------------------------------------------------------------------------

    def corrupt(self, index: int, bad: list[tuple[int, str]]) -> None:
        """Pages of batch `index` failed their checks (page, why). Only they are reported:
        each scrub re-reads what it checks, and pages the load never got to are checked by
        the next load that reads them. Reported before the batch fails, so the scrub holds
        their names (`ObjectCache.scrub_later`) before the recompute can write them back."""
        self.stats.inc("checksum_failures", len(bad))
        self.stats.miss("corrupt", len(bad))
        b = self.live.get(index)
        if b is None or b.failed is not None:
            return
        try:
            self.hooks.on_corrupt([b.names[i] for i, _ in bad], [b.hashes[i] for i, _ in bad])
        except Exception:  # noqa: BLE001 - the batch fails all the same
            logger.exception("objectcache: reporting corrupt pages failed")
        i, why = bad[0]
        more = f" (and {len(bad) - 1} more page(s))" if len(bad) > 1 else ""
        self.fail(index, FormatError(f"{b.names[i]}: {why}{more}"))

    def fail(self, index: int, err: BaseException) -> None:
        b = self.live.get(index)
        if b is None or b.failed is not None:
            return
        b.failed = err
        # Queued transfers are dropped and never come back; without this the batch's
        # pending count never reaches 0 and stop parks its staging in draining forever.
        b.pending -= len(self.sched.cancel(f"b{index}"))
        self.stats.inc("layerwise_batches_failed")
        logger.warning("objectcache: layerwise load %d failed (%s: %s); its requests recompute",
                       index, type(err).__name__, err)
        b.counter.fail(index, err)

    def fail_all(self, err: BaseException) -> None:
        for index in list(self.live):
            try:
                self.fail(index, err)
            except Exception:  # noqa: BLE001
                logger.exception("objectcache: failing layerwise load %d failed", index)

    def stop(self, index: int) -> None:
        b = self.live.pop(index, None)
        if b is None:
            return
        b.stopped = True  # first: from here no result of this batch is used
        # Queued transfers are dropped and never come back: only started ones still count.
        b.pending -= len(self.sched.cancel(f"b{index}"))
        for ev in b.events:  # GPU copies already enqueued must land first
            ev.synchronize()
        if b.pending == 0:
            self.staging.give_back(b.staged.values())
            b.staged.clear()
        else:  # a fetch may still write its staging: reuse that once it is back
            self.draining[index] = b
        b.tier.blocks.clear()
        self.timeline.end(index, b.failed is None and b.done_layers == self.g.num_layers, time.perf_counter())
