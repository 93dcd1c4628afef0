"""Views of SGLang host-pool pages in object-payload order.

SGLang's host pool (L2) keeps KV in one of three layouts; the object payload is always
layer-major (`objformat`). For every layout, one component (K, V or the MLA latent) of one
page is a strided uint8 view of shape [layers, tokens, row_bytes], and so is the matching
slice of an object's payload. Moving a page is therefore one strided copy per component
straight between the network buffer and the pool: no staging copy, and the same code for
every layout. A page written under `page_first` reads back under `layer_first`. Where a
page's rows are long (`scatter_pays`), a GET skips even that copy: `page_parts` gives the
page's slot rows in payload order, and the GET receives the object straight into them.

`read_page`/`write_page` take the payload as any buffer (a torch tensor, a numpy array, a
memoryview, the bytes a GET returned), `write_layers` any run of whole layers of it (one
read's worth, `landing.py`), and copy with numpy on the calling thread, with the
GIL released. torch's `copy_` splits each copy over its OpenMP threads, and on cores shared
with SGLang's scheduler (and the S3 server, on a small box) every copy waits for the slowest
thread; numpy's single-threaded copy is several times faster there (docs/storage.md,
`benchmarks.storage`). A host page is a few long runs of contiguous rows, so strided copies
also beat an indexed gather (`sglang_objectcache.kernels`).

    layout             component tensor            page p (slot s = p * P) as [L, P, row]
    layer_first        [L, slots, H, D]            X[:, s:s+P]
    page_first         [slots, L, H, D]            X[s:s+P].transpose(0, 1)
    page_first_direct  [pages, L, P, H, D]         X[p]
MLA buffers have H = 1 and D = kv_cache_dim.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from sglang_objectcache import objformat
from sglang_objectcache.objformat import PageGeometry

LAYOUTS = ("layer_first", "page_first", "page_first_direct")
MIN_PART_BYTES = 32 << 10


class UnsupportedPool(ValueError):
    pass


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class HostPages:
    """Adapter over one SGLang host pool (MHATokenToKVPoolHost / MLATokenToKVPoolHost)."""

    def __init__(self, pool):
        layout = getattr(pool, "layout", None)
        if layout not in LAYOUTS:
            raise UnsupportedPool(f"host layout {layout!r} is not supported; use one of {LAYOUTS}")
        self.layout = layout
        self.page_size = int(pool.page_size)
        self.num_layers = int(pool.layer_num)
        if hasattr(pool, "kv_cache_dim"):  # MLATokenToKVPoolHost: one latent buffer
            kind, comps = "mla", [pool.kv_buffer]
        else:
            kind, comps = "mha", [pool.k_buffer, pool.v_buffer]
        self._bytes = [self._as_rows(t) for t in comps]
        self._arrays = [x.numpy() for x in self._bytes]
        self._joint = self._join()
        self._parts = self._part_table()
        self.geometry = PageGeometry(
            kind=kind,
            num_layers=self.num_layers,
            tokens=self.page_size,
            row_bytes=tuple(v.shape[-1] for v in self._bytes),
            dtype=_dtype_name(comps[0].dtype),
        )

    def _as_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The component as uint8 with the head and dim axes folded into one row axis."""
        lead = 3 if self.layout == "page_first_direct" else 2
        u8 = t.view(torch.uint8) if t.dtype != torch.uint8 else t
        return u8.reshape(*u8.shape[:lead], -1)

    def page_views(self, slot: int) -> list[torch.Tensor]:
        """One [L, P, row_bytes] uint8 view per component of the page starting at `slot`."""
        P = self.page_size
        if self.layout == "layer_first":
            return [x[:, slot : slot + P] for x in self._bytes]
        if self.layout == "page_first":
            return [x[slot : slot + P].transpose(0, 1) for x in self._bytes]
        return [x[slot // P] for x in self._bytes]

    def flat_page(self, flat: torch.Tensor) -> "HostPages":
        """A one-page adapter over a flat page in this host layout's own order (SGLang's
        legacy `get_data_page`/`set_from_flat_data_page` API); its only slot is 0."""
        page = object.__new__(HostPages)
        page.layout, page.page_size, page.num_layers, page.geometry = (
            self.layout, self.page_size, self.num_layers, self.geometry)
        L, P, n = self.num_layers, self.page_size, self.geometry.num_components
        u8 = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
        row = self.geometry.row_bytes[0]
        shape = {"layer_first": (n, L, P, row), "page_first": (n, P, L, row),
                 "page_first_direct": (n, 1, L, P, row)}[self.layout]
        # Reuse page_views by presenting the flat page as a one-page pool of this layout.
        page._bytes = [u8.reshape(shape)[c] for c in range(n)]
        page._arrays = [x.numpy() for x in page._bytes]
        page._joint = page._join()
        page._parts = page._part_table()
        return page

    def _join(self) -> Optional[np.ndarray]:
        """The components as one array with a leading component axis, where they share
        shape and strides (MHA's K and V do, a fixed distance apart; MLA has one): a page
        then moves in one copy, not one per component (1-4 µs less per 256 KiB page, no
        difference at 8 MiB: benchmarks/results/page_work.json)."""
        a = self._arrays
        at = [x.__array_interface__["data"][0] - a[0].__array_interface__["data"][0] for x in a]
        gap = at[-1] // max(1, len(a) - 1)
        if any(x.shape != a[0].shape or x.strides != a[0].strides for x in a) or at != [c * gap for c in range(len(a))]:
            return None
        # Element (c, ...) lies at gap * c from component 0's: exactly component c's own
        # element, which self._arrays keeps alive.
        return np.lib.stride_tricks.as_strided(a[0], (len(a), *a[0].shape), (gap, *a[0].strides))

    def _page_arrays(self, slot: int) -> list[np.ndarray]:
        """The page at `slot` as numpy views to copy to and from: one [L, C, P, row] view
        over every component where they join, else one [L, P, row] view per component."""
        j, P = self._joint, self.page_size
        if j is None:
            return self._component_arrays(slot)
        if self.layout == "layer_first":
            return [j[:, :, slot : slot + P].transpose(1, 0, 2, 3)]
        if self.layout == "page_first":
            return [j[:, slot : slot + P].transpose(2, 0, 1, 3)]
        return [j[:, slot // P].transpose(1, 0, 2, 3)]

    def _component_arrays(self, slot: int) -> list[np.ndarray]:
        """`page_views` as numpy views (no torch dispatch per page)."""
        P = self.page_size
        if self.layout == "layer_first":
            return [x[:, slot : slot + P] for x in self._arrays]
        if self.layout == "page_first":
            return [x[slot : slot + P].transpose(1, 0, 2) for x in self._arrays]
        return [x[slot // P] for x in self._arrays]

    def _part_table(self):
        """Where a page's payload lies in the pool, as (component, start, end) byte ranges
        relative to the page's first byte in that component's buffer, in payload order,
        with each component's bytes per slot; None if a buffer is not one contiguous block."""
        if not all(a.flags.c_contiguous for a in self._arrays):
            return None
        flats = [memoryview(a.reshape(-1)) for a in self._arrays]
        P, table = self.page_size, []
        views = self._component_arrays(0)  # [L, P, row]: a row is contiguous, tokens may not be
        for layer in range(self.num_layers):
            for c, v in enumerate(views):
                s_layer, s_tok, row = v.strides[0], v.strides[1], v.shape[2]
                start = layer * s_layer
                if s_tok == row:  # the page's tokens are adjacent in this layer
                    table.append((c, start, start + P * row))
                else:
                    table.extend((c, t, t + row) for t in range(start, start + P * s_tok, s_tok))
        slot_bytes = [(a.strides[1] if self.layout == "layer_first" else a.strides[0] // (
            P if self.layout == "page_first_direct" else 1)) for a in self._arrays]
        return flats, table, slot_bytes

    @property
    def scatter_pays(self) -> bool:
        """Whether a GET should scatter the page straight into `page_parts` rather than
        receive it whole and copy it. Either way the kernel or numpy writes the same cold
        pool memory; scattering saves the read of the received copy, and costs a view, an
        iovec and a hash update per part. On this 2-core box scattering saved 0.9 ms of
        client CPU per 8 MiB layer_first page (128 KiB parts) and 0.3 ms per 2 MiB one
        (32 KiB parts), and cost 56 µs more per 256 KiB page (4 KiB parts); an 8 MiB
        page_first page (2 KiB rows) took twice as long (benchmarks/results/get_path_scatter_*).
        Against copying each read as it arrives (`landing.py`), scattering still saved 0.3 ms
        per 8 MiB layer_first page and took 3.5x as long in page_first
        (benchmarks/results/get_path_landing_8mib_*)."""
        return bool(self._parts) and self.geometry.payload_bytes >= MIN_PART_BYTES * len(self._parts[1])

    @property
    def parts_per_layer(self) -> int:
        return len(self._parts[1]) // self.num_layers if self._parts else 0

    def page_parts(self, slot: int) -> Optional[list[memoryview]]:
        """The page at `slot` as writable byte views of the pool, in payload order (layer by
        layer, `parts_per_layer` each): a GET can scatter an object's payload straight into
        them. None where the pool's buffers are not contiguous."""
        if self._parts is None:
            return None
        flats, table, slot_bytes = self._parts
        base = [slot * b for b in slot_bytes]
        return [flats[c][base[c] + s:base[c] + e] for c, s, e in table]

    def _layer_arrays(self, buf) -> list[np.ndarray]:
        """The views `_page_arrays` gives, over any buffer holding whole layers of a payload
        (all of them, or a run of them)."""
        g = self.geometry
        if isinstance(buf, torch.Tensor):
            buf = buf.view(-1).numpy()
        n, extra = divmod(memoryview(buf).nbytes, g.layer_bytes)
        if extra:
            raise ValueError(f"{memoryview(buf).nbytes} bytes is not whole layers of {g.layer_bytes}")
        # Built straight on the buffer: a view, never a copy (read_page writes through it).
        if self._joint is not None:
            row = g.row_bytes[0]
            return [np.ndarray((n, g.num_components, g.tokens, row), np.uint8, buf, 0,
                               (g.layer_bytes, g.tokens * row, row, 1))]
        return [np.ndarray((n, g.tokens, row), np.uint8, buf, g.component_offset(c), (g.layer_bytes, row, 1))
                for c, row in enumerate(g.row_bytes)]

    def _check_payload(self, payload) -> None:
        size = payload.numel() if isinstance(payload, torch.Tensor) else memoryview(payload).nbytes
        if size != self.geometry.payload_bytes:
            raise ValueError(f"payload is {size} bytes, expected {self.geometry.payload_bytes}")

    def read_page(self, slot: int, payload) -> None:
        """Host page -> payload bytes (a writable buffer of payload_bytes)."""
        self._check_payload(payload)
        for dst, src in zip(self._layer_arrays(payload), self._page_arrays(slot)):
            np.copyto(dst, src)

    def write_page(self, slot: int, payload) -> None:
        """Payload bytes (any buffer of payload_bytes) -> host page."""
        self._check_payload(payload)
        self.write_layers(slot, payload, 0)

    def write_layers(self, slot: int, layers, first: int) -> None:
        """Whole layers of a payload (any buffer: layers first, first + 1, ...) -> host page."""
        srcs = self._layer_arrays(layers)
        last = first + len(srcs[0])
        for dst, src in zip(self._page_arrays(slot), srcs):
            np.copyto(dst[first:last], src)


def seal_pages(pages: "HostPages", digests: Sequence[bytes], slots: Sequence[int],
               staging: np.ndarray) -> Iterator[memoryview]:
    """Seal one object per (digest, slot) into the rows of `staging`, lazily: one copy from
    the host pool per component, one xxh3 per layer. PUTs send straight from the rows."""
    g = pages.geometry
    for row, digest, slot in zip(staging, digests, slots):
        pages.read_page(slot, row[g.header_bytes:])
        mv = memoryview(row)
        objformat.seal(g, digest, mv)
        yield mv
