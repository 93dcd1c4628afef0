"""Every message of the layerwise pipeline, and who sends it to whom.

The loader's I/O thread owns all batch state; everything else talks to it through its
inbox (a queue.Queue):

    Load, Stop, Write, Quit    the API (`LayerwiseLoader.load/stop/write/close`), any thread
    Written                    a write (PUT) job, from the loader's pool
    HostCopied                 host-tier pages' layers copied into staging, from the pool
    JobDone                    a fetch job's outcomes, from the fetcher (`fetch.py`)

The transfer scheduler carries the loader's own state through each transfer's payload:
`ReadPayload` (layers of some pages of a batch) or `WritePayload` (a write's items).

The loader hands the fetcher a `FetchJob`; the fetcher answers `JobDone` with one outcome
per page, in `ranges` order: `Staged`, `StoreFailed`, `Missing`, `Corrupt` or `Unsupported`.

`fetch.ProcessFetch` and its worker process (`fetch_worker.py`) speak over a socket
(multiprocessing Connection): `Init` first, then `MapSegment` (followed by the segment's
memfd), `UnmapSegment`, `FetchJob` and `Quit`; the worker answers each FetchJob with a
`JobDone`. Those are pickled, so they hold only plain data; the wire stays as cheap as the
tuples it replaced (pages as lists of ints, ranges as tuples, no object per page but the
outcome). No torch here: the worker imports this module.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union


# ---- fetch outcomes, one per page (fetcher -> loader) -----------------------------------

@dataclass(frozen=True)
class Staged:
    """Every layer of the page's range is in its staging row. `header`: the decoded header
    where the range starts at byte 0 (`raw` its bytes, for the host tier), else None."""
    header: Any
    sums: dict  # layer -> xxh3 of the staged row
    raw: Optional[bytes]


@dataclass(frozen=True)
class StoreFailed:
    """A StoreError of kind `kind` (see store.StoreError.KINDS)."""
    kind: str
    message: str


@dataclass(frozen=True)
class Missing:
    """No such object."""


@dataclass(frozen=True)
class Corrupt:
    """Wrong size or a bad header: the page is scrubbed."""
    message: str


@dataclass(frozen=True)
class Unsupported:
    """Another format version: a miss, never scrubbed."""
    message: str


Outcome = Union[Staged, StoreFailed, Missing, Corrupt, Unsupported]


# ---- loader <-> fetcher, and the worker's socket ----------------------------------------

@dataclass(frozen=True)
class FetchJob:
    """Ranged GETs of `layers` for pages `group` of a batch: `ranges[j]` = (name, start, end)
    is page `group[j]`'s range. `digests`: each page's expected key digest where the range
    starts at byte 0 (it carries the header), else None. `sids`: layer -> the shared staging
    segment to write, over the worker's socket only."""
    tid: int
    ranges: list
    group: list
    layers: range
    digests: Optional[list]
    sids: Optional[dict] = None


@dataclass(frozen=True)
class JobDone:
    """Fetch job `tid`'s outcomes, one per page in `ranges` order; `arrived` and `started`
    are perf_counter times (CLOCK_MONOTONIC, so comparable across processes)."""
    tid: int
    outcomes: list
    arrived: float
    started: float


@dataclass(frozen=True)
class Init:
    """The worker's first message: its store settings, geometry and thread count."""
    cfg: Any
    geometry: Any
    threads: int


@dataclass(frozen=True)
class MapSegment:
    """A staging segment of `rows` x `width` bytes; its memfd follows on the socket."""
    sid: int
    rows: int
    width: int


@dataclass(frozen=True)
class UnmapSegment:
    sid: int


@dataclass(frozen=True)
class Quit:
    """End the receiver's loop: the loader's I/O thread, or the worker."""


# ---- the loader's inbox (any thread -> the I/O thread) ----------------------------------

@dataclass(frozen=True)
class Load:
    """Start batch `index`; `t0` is the perf_counter time of the call."""
    index: int
    rids: list
    hashes: list
    names: list
    slots: Any  # torch.Tensor of KV slots, P per page
    ready_event: Any  # a CUDA event: the slots are free to write once it has passed; or None
    counter: Any  # the LayerReadyCounter this batch completes
    t0: float


@dataclass(frozen=True)
class Stop:
    """Stop batch `index`; the I/O thread sets `done` once nothing writes its slots."""
    index: int
    done: threading.Event


@dataclass(frozen=True)
class Write:
    """PUT (name, bytes) `items` if absent; `on_done(results)`."""
    items: list
    on_done: Callable[[list], None]


@dataclass(frozen=True)
class Written:
    """The write transfer `transfer` ended with `results`, one per item."""
    transfer: Any
    results: list


@dataclass(frozen=True)
class HostCopied:
    """Host-tier `pages` of batch `index` have `layers` in staging, unless `err`."""
    index: int
    layers: range
    pages: list
    err: Optional[BaseException]


# ---- transfer payloads (loader -> scheduler -> loader) -----------------------------------

@dataclass(frozen=True)
class ReadPayload:
    """One READ transfer: `layers` of pages `group` of batch `batch` (a batches.Batch),
    `ranges` as in FetchJob, landing in `staged` (layer -> staging tensor)."""
    index: int
    layers: range
    group: list
    ranges: list
    staged: dict
    batch: Any


@dataclass(frozen=True)
class WritePayload:
    items: list
    on_done: Callable[[list], None]
