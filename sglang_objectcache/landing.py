"""`PageLanding`: one page of a `batch_get_v1`, checked and put in its host slot while its
object arrives.

The GET feeds it each read (`store.Receiver`). The header is gathered until whole, then
checked against the page's geometry and key. Each layer is checked against its xxh3 and
copied into the page's slot as soon as its last byte is in: whole layers straight from the
read, a layer cut by a read's end gathered first (at most one layer). So each byte is
checked and copied in one pass as it arrives, on the transport's loop: no second pass over a
whole body, no hand-off to a thread pool, and nothing the size of the object held. Where
the GET scatters the object straight into the slot's rows instead (`parts`,
`HostPages.scatter_pays`), each layer is checked in place once it is in.

Objects under `MIN_OBJECT_BYTES` are not worth it: each read costs them calls, and the
backend takes them whole (5% less client CPU per 256 KiB page that way; an 8 MiB page costs
14-26% less this way: benchmarks/results/get_path_landing_*.json).

Contract: the slot is the batch's own scratch, written whether or not the object turns out
usable. After the transport handed `INTO`, `check()` raises `FormatError` unless every
layer was checked and is in the slot.
"""

from __future__ import annotations

from typing import Optional

from sglang_objectcache import objformat
from sglang_objectcache.hostpool import HostPages
from sglang_objectcache.store import Receiver


MIN_OBJECT_BYTES = 1 << 20


class PageLanding(Receiver):
    @staticmethod
    def pays(g: objformat.PageGeometry) -> bool:
        return g.object_bytes >= MIN_OBJECT_BYTES

    def __init__(self, pages: HostPages, slot: int, key_digest: bytes):
        self.pages, self.slot, self.key_digest = pages, slot, key_digest
        g = self.g = pages.geometry
        self.parts = [memoryview(bytearray(g.header_bytes)), *pages.page_parts(slot)] if pages.scatter_pays else None
        self.header: Optional[objformat.Header] = None
        self.layers = 0  # layers checked and in the slot
        self.error: Optional[objformat.FormatError] = None
        self._part: Optional[memoryview] = None  # a layer's first bytes (or the header's)
        self._have = 0  # bytes in _part

    def received(self, data: Optional[memoryview], upto: int) -> None:
        if self.error is not None:
            return
        try:
            if self.parts is not None:
                self._check_in_place(upto)
            else:
                self._take(data)
        except objformat.FormatError as e:
            self.error = e

    def _check_in_place(self, upto: int) -> None:
        g = self.g
        if self.header is None:
            if upto < g.header_bytes:
                return
            self.header = objformat.decode_header(self.parts[0], g, self.key_digest)
        ready = min(g.num_layers, (upto - g.header_bytes) // g.layer_bytes)
        if ready > self.layers:
            per = self.pages.parts_per_layer
            objformat.verify_layers(self.header, self.layers, self.parts[1 + self.layers * per:1 + ready * per], per)
        self.layers = max(self.layers, ready)

    def _take(self, data: memoryview) -> None:
        """The next bytes of the object, in order."""
        g = self.g
        if self.header is None:
            if not self._have and len(data) >= g.header_bytes:  # as it nearly always comes
                self.header = objformat.decode_header(data, g, self.key_digest)
                data = data[g.header_bytes:]
            else:
                data = self._gather(data, g.header_bytes)
                if self.header is None:  # still short of it
                    return
        if self._have:  # a layer a read cut: finish it first
            data = self._gather(data, g.layer_bytes)
        whole = len(data) // g.layer_bytes * g.layer_bytes
        if whole:
            self._land(data[:whole])
        if whole < len(data):
            self._gather(data[whole:], g.layer_bytes)

    def _gather(self, data: memoryview, size: int) -> memoryview:
        """Add data to the partial header or layer (of `size` bytes); land it once whole.
        Returns what is left of data."""
        if self._part is None:
            self._part = memoryview(bytearray(max(self.g.header_bytes, self.g.layer_bytes)))
        n = min(len(data), size - self._have)
        self._part[self._have:self._have + n] = data[:n]
        self._have += n
        if self._have == size:
            self._have = 0
            if self.header is None:
                self.header = objformat.decode_header(self._part, self.g, self.key_digest)
            else:
                self._land(self._part[:size])
        return data[n:]

    def _land(self, layers: memoryview) -> None:
        """Whole layers, the next ones of the page: checked, then copied into the slot."""
        g, first = self.g, self.layers
        lb = g.layer_bytes
        objformat.verify_layers(self.header, first, [layers[i:i + lb] for i in range(0, len(layers), lb)])
        self.pages.write_layers(self.slot, layers, first)
        self.layers = first + len(layers) // g.layer_bytes

    def check(self) -> None:
        """Raise FormatError unless the whole page is checked and in its slot."""
        if self.error is not None:
            raise self.error
        if self.layers < self.g.num_layers:
            raise objformat.FormatError(f"only {self.layers} of {self.g.num_layers} layers arrived")
