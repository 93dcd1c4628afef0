"""Transfer scheduler: which pending object-store transfers start now, across all requests.

Pure Python: no I/O, no threads, no SGLang. Time is always passed in (seconds, any
monotonic clock), so the discrete-event simulator (`sim.py`, virtual time) and the
layerwise pipeline (`time.monotonic()`) drive the same object.

Contract
- A `Transfer` is one fetch (or write) the caller performs: layer `layer` of one request's
  prefix KV (or a whole page or page group in page mode, `layer == -1`). `deadline` is the
  absolute time the forward will consume it (`deadlines.py`); `payload`
  is the caller's own (e.g. the (key, start, end) ranges). Transfers compare by identity.
- `submit(transfers, now)` queues them. Submit a request's transfers in consumption order
  (layer 0 first, pages in prefix order): that order breaks remaining ties.
- `next(now)` returns `Decision(start, wake_at)`. The caller must begin every transfer in
  `start` now, and call `next` again at `wake_at` (the bandwidth cap is what holds the rest
  back) or, when `wake_at` is None, after its next `submit` or `done`.
- `done(transfer, now)` frees the transfer's slot; call it for every started transfer,
  failed or not. `cancel(request_id)` drops that request's queued transfers and returns
  them; its started ones still end with `done`.
- `update_deadlines(request_id, deadline_of)` re-keys a request's queued transfers, e.g.
  when its forward actually starts later or earlier than planned. Transfers are frozen, so
  the queued objects are replaced: find your own state through `payload`, not through the
  object you submitted.
- Not thread-safe: one owner (the pipeline's I/O loop) calls it. A real-time loop:
      while True:
          d = sched.next(time.monotonic())
          for t in d.start: pool.submit(fetch, t)       # completions come back on a queue
          timeout = None if d.wake_at is None else max(0.0, d.wake_at - time.monotonic())
          for msg in wait(queue, timeout): sched.submit(...) / sched.done(t, time.monotonic())

Rate and concurrency (every policy)
- At most `max_inflight` transfers run at once.
- `set_byte_cap(n)`: a started transfer may join others only while fewer than `n` bytes are
  in flight (one always may start alone). The layerwise loader sets it to what the observed
  link carries within half the store's request deadline, so a slow link queues reads here,
  where no deadline runs, instead of starting them all to time out together.
- `bandwidth_mbps` > 0 is a token bucket on started bytes: a transfer may start when the
  bucket is not in debt and takes its full size (the bucket may go into debt), so started
  bytes never exceed `rate * t + depth + one transfer`. The bucket holds `burst_ms` of rate.
  It paces admissions; the bytes themselves then move at whatever the path allows.
- Writes start only when no read is queued, unless the oldest write has waited
  `write_starvation_ms`: then it goes first. Writes among themselves go in queue order.

Read policies (`SchedulerConfig.policy`)
- "deadline": earliest `deadline` first; ties by `priority` (smaller first), `arrival`,
  then submission order. Starvation bound: once a transfer is `starvation_ms` late (that
  long past both its submission and its deadline), no transfer submitted after it starts
  before it (waited-out transfers go in submission order, EDF among those submitted
  together). So it starts at most `starvation_ms` after its deadline plus the time to start
  what was queued before it, however much more urgent work keeps arriving. The clock starts
  at the deadline, not at submission: a transfer that is not due yet is not starving, and
  counting its wait from submission would, in a long bandwidth-bound burst, turn EDF into
  round-robin (every transfer ages out and submission order takes over).
- "fair": equal bandwidth per request with queued reads, by start-time fair queuing on bytes
  (each request is a flow; the transfer with the smallest start tag goes next).
- "fifo": request arrival order, then layer order.

Deadlines come from the caller (`deadlines.py` has the arithmetic). The deadline policy is
only as good as they are: if queued requests are given their arrival as start, a burst
ties layer by layer and EDF degenerates into round-robin.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, NamedTuple, Optional

from sglang_objectcache.config import SchedulerConfig

READ, WRITE = "read", "write"


@dataclass(frozen=True, eq=False)
class Transfer:
    request_id: str
    layer: int  # -1: a whole page (or page group), all layers
    nbytes: int
    deadline: float = 0.0  # absolute seconds, the caller's clock
    kind: str = READ
    arrival: float = 0.0  # the request's arrival
    priority: int = 0  # smaller goes first among equal deadlines
    payload: Any = None


class Decision(NamedTuple):
    start: list
    wake_at: Optional[float]


@dataclass(frozen=True)
class SchedStats:
    queued_reads: int
    queued_writes: int
    queued_bytes: int
    inflight: int
    inflight_bytes: int
    oldest_wait_s: float
    started: int
    started_bytes: int
    starved_starts: int  # reads started early by the starvation bound
    promoted_writes: int  # writes started ahead of reads by their bound


class TokenBucket:
    """`rate` bytes/s, `depth` bytes deep; a start may put it into debt (see module doc)."""

    def __init__(self, rate: float, depth: float):
        self.rate, self.depth = rate, depth
        self.tokens, self._last = depth, None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.tokens = min(self.depth, self.tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def ready_at(self, now: float) -> float:
        self._refill(now)
        # Less than one byte of debt is float noise from the previous ready_at.
        return now if self.tokens > -1.0 else now + (-self.tokens) / self.rate

    def take(self, nbytes: int, now: float) -> None:
        self._refill(now)
        self.tokens -= nbytes


class _Entry:
    __slots__ = ("t", "key", "qtime", "seq", "live")

    def __init__(self, t: Transfer, key: tuple, qtime: float, seq: int):
        self.t, self.key, self.qtime, self.seq, self.live = t, key, qtime, seq, True

    @property
    def due(self) -> float:
        """When the starvation clock starts: submitted and due."""
        return max(self.qtime, self.t.deadline)


class _Queue:
    """Queued entries by policy key, and by (due time, policy key) for the starvation bound."""

    def __init__(self) -> None:
        self._by_key: list = []
        self._by_age: list = []
        self.count = 0
        self.nbytes = 0
        self._pushes = itertools.count()  # a re-keyed entry reuses its seq; this never repeats

    def push(self, e: _Entry) -> None:
        n = next(self._pushes)
        heapq.heappush(self._by_key, (e.key, n, e))
        heapq.heappush(self._by_age, (e.due, e.key, n, e))
        self.count += 1
        self.nbytes += e.t.nbytes

    def kill(self, e: _Entry) -> None:
        e.live = False
        self.count -= 1
        self.nbytes -= e.t.nbytes

    def _top(self, heap: list) -> Optional[_Entry]:
        while heap and not heap[0][-1].live:
            heapq.heappop(heap)  # lazily drop entries removed through the other heap
        return heap[0][-1] if heap else None

    def oldest(self) -> Optional[_Entry]:
        return self._top(self._by_age)

    def pop(self, now: float, max_wait: float) -> tuple[Optional[_Entry], bool]:
        """The policy's pick, or the oldest entry once it has waited `max_wait`; and
        whether the age bound changed the pick."""
        old = self._top(self._by_age)
        if old is None:
            return None, False
        best = self._top(self._by_key)
        e = old if now - old.due >= max_wait else best
        self.kill(e)
        return e, e is not best


class _Flow:
    __slots__ = ("index", "finish_tag", "queued", "inflight")

    def __init__(self, index: int):
        self.index, self.finish_tag, self.queued, self.inflight = index, 0.0, {}, 0


class TransferScheduler:
    """Orders and paces transfers for all in-flight requests; see the module docstring."""

    def __init__(self, cfg: SchedulerConfig = SchedulerConfig()):
        self.cfg = cfg
        rate = cfg.bandwidth_mbps * 125_000.0  # Mbit/s -> bytes/s
        self._bucket = TokenBucket(rate, rate * cfg.burst_ms / 1000.0) if rate > 0 else None
        self._max_wait = cfg.starvation_ms / 1000.0 if cfg.policy == "deadline" else math.inf
        self._write_wait = cfg.write_starvation_ms / 1000.0
        self._reads, self._writes = _Queue(), _Queue()
        self._flows: dict[str, _Flow] = {}
        self._seq = itertools.count()
        self._flow_index = itertools.count()
        self._vtime = 0.0  # start-time fair queuing's virtual time
        self._inflight: dict[Transfer, _Flow] = {}
        self._inflight_bytes = 0
        self._byte_cap = math.inf
        self._started = self._started_bytes = self._starved = self._promoted = 0

    # -- caller API -------------------------------------------------------------------
    def submit(self, transfers: Iterable[Transfer], now: float) -> None:
        for t in transfers:
            if t.kind not in (READ, WRITE) or t.nbytes < 0:
                raise ValueError(f"bad transfer {t!r}")
            flow = self._flows.get(t.request_id)
            if flow is None:
                flow = self._flows[t.request_id] = _Flow(next(self._flow_index))
            e = _Entry(t, (), now, next(self._seq))
            e.key = self._key(t, flow, e.seq)
            flow.queued[e] = None
            (self._reads if t.kind == READ else self._writes).push(e)

    def next(self, now: float) -> Decision:
        start = []
        while self._reads.count + self._writes.count and self._room():
            if self._bucket is not None and self._bucket.ready_at(now) > now:
                break
            e = self._pick(now)
            flow = self._flows[e.t.request_id]
            del flow.queued[e]
            flow.inflight += 1
            self._inflight[e.t] = flow
            self._inflight_bytes += e.t.nbytes
            self._started += 1
            self._started_bytes += e.t.nbytes
            if self._bucket is not None:
                self._bucket.take(e.t.nbytes, now)
            start.append(e.t)
        wake_at = None
        if self._reads.count + self._writes.count and self._room():
            wake_at = self._bucket.ready_at(now) if self._bucket is not None else now
        return Decision(start, wake_at)

    def set_byte_cap(self, nbytes: float) -> None:
        """Bytes in flight beyond which no transfer joins the ones running (inf: no cap)."""
        self._byte_cap = nbytes if nbytes > 0 else math.inf

    def done(self, transfer: Transfer, now: float) -> None:
        flow = self._inflight.pop(transfer)  # KeyError: not started, or done twice
        self._inflight_bytes -= transfer.nbytes
        flow.inflight -= 1
        self._forget(transfer.request_id, flow)

    def cancel(self, request_id: str) -> list[Transfer]:
        flow = self._flows.get(request_id)
        if flow is None:
            return []
        dropped = []
        for e in list(flow.queued):
            (self._reads if e.t.kind == READ else self._writes).kill(e)
            dropped.append(e.t)
        flow.queued.clear()
        self._forget(request_id, flow)
        return dropped

    def update_deadlines(self, request_id: str, deadline_of: Callable[[Transfer], float]) -> None:
        flow = self._flows.get(request_id)
        if flow is None:
            return
        for e in list(flow.queued):
            if e.t.kind != READ:
                continue
            t = replace(e.t, deadline=deadline_of(e.t))
            if self.cfg.policy != "deadline":
                e.t = t  # the key does not depend on the deadline
                continue
            self._reads.kill(e)
            del flow.queued[e]
            # Same queue time and sequence: re-keying must not reset the age bound.
            ne = _Entry(t, self._key(t, flow, e.seq), e.qtime, e.seq)
            flow.queued[ne] = None
            self._reads.push(ne)

    def stats(self, now: float) -> SchedStats:
        ages = [e.qtime for e in (self._reads.oldest(), self._writes.oldest()) if e is not None]
        return SchedStats(
            queued_reads=self._reads.count,
            queued_writes=self._writes.count,
            queued_bytes=self._reads.nbytes + self._writes.nbytes,
            inflight=len(self._inflight),
            inflight_bytes=self._inflight_bytes,
            oldest_wait_s=max(0.0, now - min(ages)) if ages else 0.0,
            started=self._started,
            started_bytes=self._started_bytes,
            starved_starts=self._starved,
            promoted_writes=self._promoted,
        )

    @property
    def queue_depth(self) -> int:
        return self._reads.count + self._writes.count

    @property
    def inflight_count(self) -> int:
        """Transfers started and not yet `done`."""
        return len(self._inflight)

    # -- internals --------------------------------------------------------------------
    def _room(self) -> bool:
        return len(self._inflight) < self.cfg.max_inflight and (
            not self._inflight or self._inflight_bytes < self._byte_cap)

    def _key(self, t: Transfer, flow: _Flow, seq: int) -> tuple:
        if t.kind == WRITE:
            return (seq,)
        if self.cfg.policy == "deadline":
            return (t.deadline, t.priority, t.arrival, seq)
        if self.cfg.policy == "fifo":
            return (t.arrival, flow.index, t.layer, seq)
        # fair: start-time fair queuing, one flow per request, tags in bytes.
        start_tag = max(self._vtime, flow.finish_tag)
        flow.finish_tag = start_tag + max(t.nbytes, 1)
        return (start_tag, flow.index, seq)

    def _pick(self, now: float) -> _Entry:
        w = self._writes.oldest()
        if w is not None and (self._reads.count == 0 or now - w.qtime >= self._write_wait):
            self._promoted += self._reads.count > 0
            return self._writes.pop(now, math.inf)[0]
        e, starved = self._reads.pop(now, self._max_wait)
        self._starved += starved
        if self.cfg.policy == "fair":
            self._vtime = max(self._vtime, e.key[0])
        return e

    def _forget(self, request_id: str, flow: _Flow) -> None:
        if not flow.queued and not flow.inflight:
            del self._flows[request_id]
