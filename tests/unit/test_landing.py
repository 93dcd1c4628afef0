"""`PageLanding` fed by hand, as a GET feeds it: reads of any size (cutting the header and
layers anywhere), each layer checked and copied once its last byte is in, and damage found
wherever it sits."""

from __future__ import annotations

import random

import pytest
import torch
from pools import fill_random, make_pools, page_bytes

from sglang_objectcache import hostpool, objformat
from sglang_objectcache.hostpool import HostPages
from sglang_objectcache.landing import PageLanding

KEY = b"k" * 16
SRC, DST = 12, 40  # slots


def sealed_page(host, slot: int) -> bytes:
    pages = HostPages(host)
    payload = torch.empty(pages.geometry.payload_bytes, dtype=torch.uint8)
    pages.read_page(slot, payload)
    return bytes(objformat.sealed(pages.geometry, KEY, payload.numpy().tobytes()))


class Feeder:
    """Hands an object to a landing as a GET would: the bytes go into its parts, or each
    read is handed over in a scratch buffer that is scribbled on after the call (as the
    next read reuses it)."""

    def __init__(self, land: PageLanding, obj: bytes):
        self.land, self.obj, self.at = land, memoryview(obj), 0
        self.scratch = memoryview(bytearray(len(obj)))

    def to(self, upto: int) -> None:
        lo, hi = self.at, upto
        if self.land.parts is None:
            read = self.scratch[:hi - lo]
            read[:] = self.obj[lo:hi]
            self.at = upto
            self.land.received(read, upto)
            read[:] = b"\xee" * len(read)
            return
        else:
            pos = 0
            for part in self.land.parts:  # the slice of this read that falls in each part
                a, b = max(lo, pos), min(hi, pos + len(part))
                if a < b:
                    part[a - pos:b - pos] = self.obj[a:b]
                pos += len(part)
        self.at = upto
        self.land.received(None, upto)


def feed(land: PageLanding, obj: bytes, seed: int) -> None:
    """The whole object, in reads of random sizes."""
    rng, f = random.Random(seed), Feeder(land, obj)
    while f.at < len(obj):
        f.to(min(len(obj), f.at + rng.randint(1, len(obj) // 5 + 1)))


@pytest.fixture(params=["copy", "scatter"])
def how(request, monkeypatch):
    monkeypatch.setattr(hostpool, "MIN_PART_BYTES", 1 << 40 if request.param == "copy" else 0)
    return request.param


@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("layout", hostpool.LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_page_fed_in_any_reads_lands_whole(kind, layout, seed, how):
    _, host = make_pools(kind, layout)
    fill_random(host, seed=seed)
    obj = sealed_page(host, SRC)
    land = PageLanding(HostPages(host), DST, KEY)
    assert (land.parts is None) == (how == "copy")
    feed(land, obj, seed)
    land.check()
    assert land.layers == land.g.num_layers
    assert page_bytes(host, DST) == page_bytes(host, SRC)


def test_each_layer_lands_once_its_last_byte_is_in(how):
    _, host = make_pools("mha", "page_first")
    fill_random(host)
    g = HostPages(host).geometry
    land = PageLanding(HostPages(host), DST, KEY)
    obj = sealed_page(host, SRC)
    seen, f = [], Feeder(land, obj)
    for upto in (g.header_bytes - 1, g.header_bytes + g.layer_bytes - 1,  # short of each by a byte
                 g.header_bytes + g.layer_bytes, g.header_bytes + 2 * g.layer_bytes + 5, len(obj)):
        f.to(upto)
        seen.append((land.header is not None, land.layers))
    assert seen == [(False, 0), (True, 0), (True, 1), (True, 2), (True, g.num_layers)] and g.num_layers == 3
    land.check()
    assert page_bytes(host, DST) == page_bytes(host, SRC)


@pytest.mark.parametrize("where", ["header", "key", "layer0", "last"])
def test_damage_anywhere_is_found_and_stops_the_work(how, where):
    _, host = make_pools("mha", "layer_first")
    fill_random(host, seed=5)
    pages = HostPages(host)
    g = pages.geometry
    obj = bytearray(sealed_page(host, SRC))
    # 70: inside layer 0's sum in the header's table
    at = {"header": 70, "layer0": g.header_bytes + 3, "last": len(obj) - 2}.get(where)
    if at is None:  # a valid object of another key
        land = PageLanding(pages, DST, b"x" * 16)
    else:
        obj[at] ^= 0x10
        land = PageLanding(pages, DST, KEY)
    feed(land, bytes(obj), 3)
    want = {"header": "header checksum", "key": "another key", "layer0": "layer 0 checksum",
            "last": f"layer {g.num_layers - 1} checksum"}[where]
    with pytest.raises(objformat.FormatError, match=want):
        land.check()
    assert land.layers == (g.num_layers - 1 if where == "last" else 0)


def test_a_page_cut_short_is_not_usable(how):
    _, host = make_pools("mha", "page_first_direct")
    fill_random(host)
    obj = sealed_page(host, SRC)
    land = PageLanding(HostPages(host), DST, KEY)
    Feeder(land, obj).to(len(obj) - 1)
    with pytest.raises(objformat.FormatError, match="of 3 layers arrived"):
        land.check()
