"""The layerwise loader's deadlines: when each batch's forward will really start, and how
fast it then consumes layers. On the I/O thread, but `observe_layer` (any thread).

The forward starts when the batch does, after the bytes of the live batches ahead of it
at the link's rate (the configured cap, else the observed read throughput); layer l is
consumed after the estimated compute of layers < l (`layer_s`, an EWMA of the forward's
observed per-layer pace). Deadlines from this order the scheduler the way the link will
actually serve the requests (the simulator models the same: objectcache_dev/deadlines.py).
"""

from __future__ import annotations

import time
from typing import Iterable

from sglang_objectcache.transfers import TransferScheduler


class Pace:
    def __init__(self, sched: TransferScheduler, layer_s: float, read_budget_s: float = 0.0):
        """`read_budget_s` > 0: keep the bytes in flight to what the link carries in that long
        (the scheduler's byte cap, from the observed rate), so every read ends within it."""
        self.sched = sched
        self.layer_s = layer_s
        self.read_budget_s = read_budget_s
        self.observed_rate = 0.0  # EWMA of the link's bytes/s, from completed reads
        self.planned_rate = 0.0  # the rate the current deadlines were projected with

    def rate(self) -> float:
        """Bytes/s: the configured cap, else the observed read throughput."""
        cap = self.sched.cfg.bandwidth_mbps * 1e6 / 8
        return cap or self.observed_rate

    def deadline(self, start: float, layer: int) -> float:
        """When a forward that starts at `start` consumes layer `layer`."""
        return start + layer * self.layer_s

    def observe_layer(self, seconds: float) -> None:
        """The forward's measured time per layer."""
        if seconds > 0:
            self.layer_s = 0.8 * self.layer_s + 0.2 * seconds

    def observe_read(self, nbytes: int, took: float) -> float:
        """A read of `nbytes` took `took` s (> 0) while others shared the link. Returns the
        bytes the whole link moved meanwhile (`nbytes` times the reads sharing it)."""
        shared = nbytes * min(self.sched.inflight_count + 1, self.sched.cfg.max_inflight)
        rate = shared / took
        self.observed_rate = rate if not self.observed_rate else 0.8 * self.observed_rate + 0.2 * rate
        if self.read_budget_s > 0:
            self.sched.set_byte_cap(self.rate() * self.read_budget_s)
        return shared

    def projected_start(self, live: Iterable) -> float:
        """When a new batch's forward can start consuming: after the bytes still to come of
        the `live` batches (each a batches.Batch) ahead of it."""
        now = time.monotonic()
        rate = self.rate()
        if rate <= 0:
            return now
        return now + sum(b.store_bytes_left() for b in live if b.live) / rate

    def replan(self, batches: dict) -> None:
        """Re-project every live batch's start when the rate estimate moved: a burst that
        arrived before any transfer finished was planned blind (all due at once, which EDF
        serves layer by layer round-robin), and the link's real rate orders it."""
        rate = self.rate()
        if rate <= 0 or len(batches) < 2:
            return
        if self.planned_rate and abs(rate - self.planned_rate) < 0.25 * self.planned_rate:
            return
        self.planned_rate = rate
        now, ahead = time.monotonic(), 0.0
        for index in sorted(batches):
            b = batches[index]
            if not b.live:
                continue
            d0 = now + ahead / rate
            b.deadline0 = d0
            self.sched.update_deadlines(f"b{index}", lambda t, d0=d0: self.deadline(d0, t.layer))
            ahead += b.store_bytes_left()
