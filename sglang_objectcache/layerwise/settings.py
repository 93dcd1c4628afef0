"""How a `LayerwiseLoader` is built: what it works with, how it is tuned, whom it tells.

    LoaderParts     the objects it uses and others own: store, scheduler, host tier, ...
    LoaderSettings  tuning (window, layers per GET, threads, the first per-layer pace)
    LoaderHooks     callbacks into its owner (the linker) about failed pages
    GetPlan         layers per GET and the staging window, derived from the settings
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sglang_objectcache.objformat import PageGeometry

# Pages per READ transfer (one fetch job), and per host-tier block.
PAGES_PER_TRANSFER = 16

# A request costs the store and the client about as much CPU as ~0.5 MiB of its bytes
# (SeaweedFS on loopback, benchmarks/results/storage.json), and more wall time than that on
# a remote store (first-byte latency), so a GET should be at least this big.
AUTO_GET_BYTES = 1 << 20


def auto_layers_per_get(g: PageGeometry) -> int:
    """The fewest consecutive layers of a page whose byte range is at least AUTO_GET_BYTES,
    at most all of them: 1 where a page's layer is 1 MiB already (32 KV heads x 128 at page
    64), 4 for Llama-3-8B at page 64 (256 KiB a layer), whole objects for a small model."""
    return max(1, min(g.num_layers, -(-AUTO_GET_BYTES // g.layer_bytes)))


def _ignore(*args) -> None:
    pass


@dataclass(frozen=True)
class LoaderParts:
    """`content_digest(hash)`: a page's expected key digest. `counter`: the LayerReadyCounter
    a load completes unless it names its own. `fetch`: a `fetch.ProcessFetch` (what the
    linker uses), else the loader makes a ThreadFetch on `store`."""
    store: Any
    content_digest: Callable[[str], bytes]
    scheduler: Any  # transfers.TransferScheduler, owned by the loader's I/O thread from here on
    tier: Any  # hosttier.HostTier
    timeline: Any  # timeline.Timeline
    stats: Any  # stats.Stats
    counter: Any = None
    fetch: Any = None


@dataclass(frozen=True)
class LoaderSettings:
    window_layers: int = 4  # layers of a batch staged at once (at least a whole GET's)
    layers_per_get: int = 0  # consecutive layers of a page per ranged GET; 0 = auto_layers_per_get
    io_threads: int = 8  # a ThreadFetch's threads; the write and host-copy pool has at most 4
    layer_s: float = 0.002  # the forward's per-layer time until it is observed
    kernels: str = "auto"  # the scatter's kernel backend: auto | triton | torch (config layerwise.kernels)
    # > 0: the bytes in flight are held to what the observed link carries in this long (`Pace`);
    # the linker passes half the store's request deadline, so no read times out on a slow link.
    read_budget_s: float = 0.0


@dataclass(frozen=True)
class LoaderHooks:
    """Called on the loader's I/O thread; none may block.
    on_store_error(err): a StoreError of a GET.
    on_corrupt(names, hashes): the pages whose checks failed, before their batch fails (the
        linker scrubs them on another thread).
    on_missing(name): an object the lookup counted on is gone (GC, another server's scrub).
    on_read(nbytes, seconds): a read, its bytes scaled to the link share it had (`Pace`)."""
    on_store_error: Callable[[BaseException], None] = _ignore
    on_corrupt: Callable[[list, list], None] = _ignore
    on_missing: Callable[[str], None] = _ignore
    on_read: Callable[[float, float], None] = _ignore


@dataclass(frozen=True)
class GetPlan:
    """`per_get` layers per GET; with groups (per_get > 1) layer 0 is still read on its own
    (`lead_alone`) and first, before the next group, so the forward's first wait is for one
    layer's bytes. `window`: layers of a batch staged at once, at least a whole group (+ 1
    with the lead layer)."""
    per_get: int
    lead_alone: bool
    window: int

    @classmethod
    def of(cls, g: PageGeometry, settings: LoaderSettings) -> "GetPlan":
        per_get = min(settings.layers_per_get or auto_layers_per_get(g), g.num_layers)
        lead_alone = per_get > 1
        return cls(per_get, lead_alone, max(1, settings.window_layers, per_get + lead_alone))

    def group_at(self, first: int, num_layers: int) -> range:
        """The layers of the GET that starts at layer `first`."""
        size = 1 if first == 0 and self.lead_alone else self.per_get
        return range(first, min(num_layers, first + size))
