"""`PageLanding`: one page of a `batch_get_v1`, checked and put in its host slot while its
object arrives.

The GET feeds it each read (`store.Receiver`). Once the header is in, it is checked against
the page's geometry and key. Then, run by run of complete layers, each layer's xxh3 is
checked and, where the GET reads into a buffer of its own, the layers are copied into the
page's slot. Where the GET scatters the object straight into the slot's rows (`parts`,
`HostPages.scatter_pays`), there is nothing to copy. Either way the bytes are checked and
copied while the read has just left them in the CPU's cache: done after the whole body is
in, every byte comes back from memory, twice.

Contract: the slot is the batch's own scratch, written whether or not the object turns out
usable. After the transport handed `INTO`, `check()` raises `FormatError` unless every
layer was checked and is in the slot.
"""

from __future__ import annotations

from typing import Optional

from sglang_objectcache import objformat
from sglang_objectcache.hostpool import HostPages
from sglang_objectcache.store import Receiver

# Layers are taken in runs of at least this many bytes (or the rest of the object): a few
# calls per read, not one per layer, and still well inside the cache the read filled.
RUN_BYTES = 256 << 10


class PageLanding(Receiver):
    def __init__(self, pages: HostPages, slot: int, key_digest: bytes, verify: bool = True):
        self.pages, self.slot, self.key_digest, self.verify = pages, slot, key_digest, verify
        g = self.g = pages.geometry
        self.parts = [memoryview(bytearray(g.header_bytes)), *pages.page_parts(slot)] if pages.scatter_pays else None
        self.header: Optional[objformat.Header] = None
        self.layers = 0  # layers checked and in the slot
        self.error: Optional[objformat.FormatError] = None

    def received(self, body: Optional[memoryview], upto: int) -> None:
        if self.error is not None:
            return
        g = self.g
        try:
            if self.header is None:
                if upto < g.header_bytes:
                    return
                self.header = objformat.decode_header(body if self.parts is None else self.parts[0], g,
                                                      self.key_digest)
            ready = min(g.num_layers, (upto - g.header_bytes) // g.layer_bytes)
            if ready < g.num_layers and (ready - self.layers) * g.layer_bytes < RUN_BYTES:
                return
            self._take(body, self.layers, ready)
            self.layers = ready
        except objformat.FormatError as e:
            self.error = e

    def _take(self, body: Optional[memoryview], first: int, last: int) -> None:
        g = self.g
        if self.parts is not None:  # already in the slot
            if self.verify:
                per = self.pages.parts_per_layer
                objformat.verify_layers(self.header, first, self.parts[1 + first * per:1 + last * per], per)
            return
        payload = body[g.header_bytes:g.object_bytes]
        if self.verify:
            lb = g.layer_bytes
            objformat.verify_layers(self.header, first, [payload[i * lb:(i + 1) * lb] for i in range(first, last)])
        self.pages.write_layers(self.slot, payload, first, last)

    def check(self) -> None:
        """Raise FormatError unless the whole page is checked and in its slot."""
        if self.error is not None:
            raise self.error
        if self.layers < self.g.num_layers:
            raise objformat.FormatError(f"only {self.layers} of {self.g.num_layers} layers arrived")
