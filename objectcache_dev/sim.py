"""Discrete-event simulator for the transfer scheduler: virtual time, the real `TransferScheduler`.

`added_ttft(...)` runs one workload twice (storage, and every byte already local) and
returns each request's added TTFT. The model, each part a stated simplification:

- Link: one shared bottleneck of `cap_gbps` (0: unlimited), processor-shared equally among
  the transfers moving on it. A started transfer first waits `latency_ms` (time to first
  byte), then joins the share. With `pace` the scheduler's token bucket runs at the same
  cap, so the scheduler decides who moves; without it the scheduler only orders transfers
  and bounds their number (`max_inflight`), and the link shares bytes among those started.
- GPU: SGLang's prefill loop. One prefill batch at a time; when the GPU is idle it takes
  waiting requests in arrival order while their new tokens fit `max_prefill_tokens` (the
  first always fits). A batch's layer takes `ComputeModel.batch_layer_s`. TTFT ends with
  the prefill (decode is not modelled).
  - mode "page" (HiCache L3 prefetch with wait_complete): a request may join a batch once
    all its bytes are in; its forward then never stalls. Transfers are page groups
    (layer -1) in prefix order.
  - mode "layerwise" (the external linker): requests join batches whatever their data;
    batch layer l runs once layer l-1 has run and every member's layer-l bytes are in.
    Fetching starts at arrival (the pipeline stages ahead of admission).
- Deadlines, set here as the pipeline would (`System.plan`): each request's forward start
  is projected with `plan_starts` at the cap and re-projected on every arrival, in arrival
  order ("arrival"), or in page mode shortest remaining fetch first ("shortest": SGLang
  admits whichever prefetch completes, so the pipeline may choose); "none" takes the
  arrival as the start. Layerwise deadlines are start + per-layer compute; page deadlines
  are the start. When a layerwise batch starts, its members take the actual start and the
  waiting requests are re-projected behind it.
- Writes (`writes`): after its prefill a request backs up its new tokens' KV, on the same
  link (a cap that counts both directions).
- Added TTFT = TTFT here minus TTFT in the same run with every byte local (same arrivals,
  same batching rule). Serving requests one by one can also shrink the batch a request
  waits for, so a request's added TTFT may be negative.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from sglang_objectcache.config import SchedulerConfig
from objectcache_dev.deadlines import ComputeModel, layer_deadlines, plan_starts
from sglang_objectcache.transfers import READ, WRITE, Transfer, TransferScheduler


@dataclass(frozen=True)
class Workload:
    requests: int = 8
    rate: float = 0.0  # requests/s, Poisson in groups of `burst`; 0: all at t=0
    burst: int = 1
    prefix_tokens: tuple[int, int] = (32768, 32768)  # uniform in [lo, hi], page-aligned
    new_tokens: int = 1024
    num_layers: int = 32
    kv_bytes_per_token: int = 128 * 1024  # all layers, K and V (Llama-3.1-8B bf16)
    page_tokens: int = 64
    pages_per_transfer: int = 8  # page mode: pages per transfer
    seed: int = 0


@dataclass(frozen=True)
class System:
    cap_gbps: float = 10.0  # 0: unlimited
    latency_ms: float = 10.0
    pace: bool = True
    mode: str = "page"  # page | layerwise
    max_prefill_tokens: int = 16384
    compute: ComputeModel = field(default_factory=ComputeModel)
    plan: str = "arrival"  # arrival | shortest (page mode only) | none (start = arrival)
    writes: bool = False  # back up each request's new KV after its prefill
    sched: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("page", "layerwise"):
            raise ValueError(f"mode: page or layerwise, got {self.mode!r}")
        if self.plan not in ("arrival", "shortest", "none"):
            raise ValueError(f"plan: arrival, shortest or none, got {self.plan!r}")
        if self.plan == "shortest" and self.mode == "layerwise":
            raise ValueError("plan: SGLang batches layerwise requests in arrival order")

    @property
    def cap_bps(self) -> float:
        return self.cap_gbps * 1.25e8 if self.cap_gbps > 0 else 0.0


@dataclass(frozen=True)
class Request:
    rid: str
    arrival: float
    prefix: int
    new: int


def make_requests(w: Workload) -> list[Request]:
    rng = random.Random(w.seed)
    lo, hi = (max(w.page_tokens, x // w.page_tokens * w.page_tokens) for x in w.prefix_tokens)
    out, t = [], 0.0
    for i in range(w.requests):
        if w.rate > 0 and i % w.burst == 0 and i:
            t += rng.expovariate(w.rate / w.burst)
        prefix = rng.randrange(lo, hi + 1, w.page_tokens)
        out.append(Request(f"r{i}", t, prefix, w.new_tokens))
    return out


def added_ttft(reqs: Sequence[Request], w: Workload, s: System) -> list[float]:
    local, remote = ttfts(reqs, w, s)
    return [b - a for a, b in zip(local, remote)]


def ttfts(reqs: Sequence[Request], w: Workload, s: System) -> tuple[list[float], list[float]]:
    """Each request's TTFT with every byte local, and with the storage fetch."""
    local = _Sim(reqs, w, s, local=True).run()
    remote = _Sim(reqs, w, s, local=False).run()
    return [local[r.rid] for r in reqs], [remote[r.rid] for r in reqs]


def summarize(xs: Sequence[float]) -> dict:
    ys = sorted(xs)
    return {
        "n": len(ys),
        "mean": sum(ys) / len(ys),
        "p50": percentile(ys, 50),
        "p99": percentile(ys, 99),
        "max": ys[-1],
    }


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


class _Req:
    def __init__(self, r: Request, w: Workload, s: System):
        self.r = r
        self.layer_s = s.compute.layer_s(r.new, r.prefix + r.new)
        self.nbytes = r.prefix * w.kv_bytes_per_token
        self.left = 0  # transfers not yet arrived
        self.start: float | None = None  # planned (or, in a batch, actual) forward start
        self.layer_left = [0] * w.num_layers


class _Batch:
    def __init__(self, members: list, layer_s: list):
        self.members, self.layer_s = members, layer_s
        self.layer, self.computing = 0, False


class _Sim:
    def __init__(self, reqs: Sequence[Request], w: Workload, s: System, local: bool):
        self.w, self.s, self.local = w, s, local
        cfg = replace(s.sched, bandwidth_mbps=s.cap_gbps * 1000.0 if s.pace else 0.0)
        self.sched = TransferScheduler(cfg)
        self.reqs = [_Req(r, w, s) for r in reqs]
        self.now = 0.0
        self.events: list = []
        self._seq = itertools.count()
        self.moving: dict[Transfer, float] = {}  # remaining bytes
        self.waiting: list[_Req] = []  # arrived, not in a batch, arrival order
        self.batch: _Batch | None = None
        self.fetching: list[_Req] = []  # page mode: arrived, bytes still missing
        self.fetched: dict[str, int] = {}
        self.ttft: dict[str, float] = {}
        self._wakes: set[float] = set()

    # -- loop -------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        for q in self.reqs:
            self._at(q.r.arrival, self._arrive, q)
        cap = self.s.cap_bps
        while self.events or self.moving:
            t_link = math.inf
            if self.moving:
                t_link = self.now + min(self.moving.values()) * len(self.moving) / cap
            t_evt = self.events[0][0] if self.events else math.inf
            t = min(t_link, t_evt)
            if self.moving:
                moved = (t - self.now) * cap / len(self.moving)
                for x in self.moving:
                    self.moving[x] -= moved
            self.now = max(self.now, t)
            if t_link <= t_evt:
                first = min(self.moving, key=self.moving.get)
                for x in [x for x, rem in self.moving.items() if rem <= 1e-3 or x is first]:
                    del self.moving[x]
                    self._arrived(x)
            else:
                # Everything due at this instant first, so a burst reaches one batch.
                while self.events and self.events[0][0] <= t:
                    _, _, fn, arg = heapq.heappop(self.events)
                    fn(arg)
            # Admission before I/O: SGLang forms a batch in the same loop pass that
            # receives a burst, so the pipeline knows the batch when it next starts I/O.
            self._gpu()
            self._dispatch()
        assert len(self.ttft) == len(self.reqs), "simulation ended with requests unserved"
        return self.ttft

    def _at(self, t: float, fn, arg=None) -> None:
        heapq.heappush(self.events, (t, next(self._seq), fn, arg))

    def _dispatch(self) -> None:
        start, wake_at = self.sched.next(self.now)
        for x in start:
            self._at(self.now + self.s.latency_ms / 1000.0, self._first_byte, x)
        if wake_at is not None and wake_at not in self._wakes:
            self._wakes.add(wake_at)
            self._at(wake_at, self._wake, wake_at)

    def _wake(self, t: float) -> None:
        self._wakes.discard(t)

    def _first_byte(self, x: Transfer) -> None:
        if self.s.cap_bps > 0 and x.nbytes > 0:
            self.moving[x] = float(x.nbytes)
        else:
            self._arrived(x)

    def _arrived(self, x: Transfer) -> None:
        self.sched.done(x, self.now)
        if x.kind == WRITE:
            return
        q = x.payload  # not the submitted object: update_deadlines replaces it
        self.fetched[q.r.rid] = self.fetched.get(q.r.rid, 0) + x.nbytes
        q.left -= 1
        if x.layer >= 0:
            q.layer_left[x.layer] -= 1

    # -- requests and their plan -------------------------------------------------------
    def _arrive(self, q: _Req) -> None:
        self.waiting.append(q)
        if self.local:
            return
        w, r = self.w, q.r
        xs = []
        if self.s.mode == "layerwise":
            deadlines = layer_deadlines(r.arrival, w.num_layers, q.layer_s)
            per_layer = r.prefix * w.kv_bytes_per_token // w.num_layers
            for layer in range(w.num_layers):
                xs.append(Transfer(r.rid, layer, per_layer, deadlines[layer], READ, r.arrival, payload=q))
                q.layer_left[layer] = 1
        else:
            group = w.page_tokens * w.pages_per_transfer
            for lo in range(0, r.prefix, group):
                nbytes = (min(r.prefix, lo + group) - lo) * w.kv_bytes_per_token
                xs.append(Transfer(r.rid, -1, nbytes, r.arrival, READ, r.arrival, payload=q))
            self.fetching.append(q)
        q.left = len(xs)
        self.sched.submit(xs, self.now)
        self._plan()

    def _plan(self) -> None:
        """Project every not-yet-started request's forward start and re-key its transfers."""
        if self.s.plan == "none":
            return
        free = self.now
        if self.s.mode == "layerwise":
            queue = self.waiting  # SGLang batches in arrival order
            b = self.batch
            if b is not None:
                left = sum(self._left_bytes(q) for q in b.members)
                free += self._duration(left, (self.w.num_layers - b.layer) * b.layer_s[0])
        else:
            self.fetching = queue = [q for q in self.fetching if q.left]
            if self.s.plan == "shortest":  # page mode admits whichever prefetch ends first
                queue = sorted(queue, key=lambda q: (self._left_bytes(q), q.r.arrival))
        jobs = [(q.r.arrival, self._left_bytes(q), self._compute_s(q)) for q in queue]
        for q, start in zip(queue, plan_starts(free, jobs, self.s.cap_bps)):
            if q.start != start:
                self._set_start(q, start, q.layer_s)

    def _set_start(self, q: _Req, start: float, layer_s: float) -> None:
        q.start = start
        ds = layer_deadlines(start, self.w.num_layers, layer_s)
        self.sched.update_deadlines(q.r.rid, lambda x: ds[x.layer] if x.layer >= 0 else start)

    def _left_bytes(self, q: _Req) -> int:
        return q.nbytes - self.fetched.get(q.r.rid, 0)

    def _compute_s(self, q: _Req) -> float:
        return q.layer_s * self.w.num_layers

    def _duration(self, nbytes: int, compute_s: float) -> float:
        # As plan_starts: the longer of compute and the bytes at the cap.
        return max(compute_s, nbytes / self.s.cap_bps if self.s.cap_bps else 0.0)

    # -- GPU ----------------------------------------------------------------------------
    def _gpu(self) -> None:
        if self.batch is None:
            self._form_batch()
        b = self.batch
        if b is None or b.computing:
            return
        if self.local or all(q.layer_left[b.layer] == 0 for q in b.members):
            b.computing = True
            self._at(self.now + b.layer_s[b.layer], self._layer_done)

    def _form_batch(self) -> None:
        members, tokens = [], 0
        for q in self.waiting:
            if self.s.mode == "page" and not self.local and q.left:
                continue
            if members and tokens + q.r.new > self.s.max_prefill_tokens:
                break
            members.append(q)
            tokens += q.r.new
        if not members:
            return
        self.waiting = [q for q in self.waiting if q not in members]
        per_layer = self.s.compute.batch_layer_s((q.r.new, q.r.prefix + q.r.new) for q in members)
        self.batch = _Batch(members, [per_layer] * self.w.num_layers)
        if self.s.mode == "layerwise" and self.s.plan != "none" and not self.local:
            for q in members:  # the batch's actual start; then the rest queue behind it
                self._set_start(q, self.now, per_layer)
            self._plan()

    def _layer_done(self, _=None) -> None:
        b = self.batch
        b.layer += 1
        b.computing = False
        if b.layer < self.w.num_layers:
            return
        self.batch = None
        for q in b.members:
            self.ttft[q.r.rid] = self.now - q.r.arrival
            if self.s.writes and not self.local:
                x = Transfer(q.r.rid, -1, q.r.new * self.w.kv_bytes_per_token, kind=WRITE, arrival=self.now)
                self.sched.submit([x], self.now)
