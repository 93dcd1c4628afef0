"""HostPages on SGLang's real host pools: the payload order, pages moved across layouts, and
page parts as writable views of the pool."""

from __future__ import annotations

import itertools

import pytest
import torch
from pools import fill_random, make_pools

from sglang_objectcache import objformat
from sglang_objectcache.hostpool import HostPages

LAYOUTS = ("layer_first", "page_first", "page_first_direct")


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_payload_order_matches_the_pool(kind):
    _, host = make_pools(kind, "page_first")
    fill_random(host)
    pages = HostPages(host)
    g = pages.geometry
    payload = torch.empty(g.payload_bytes, dtype=torch.uint8)
    pages.read_page(8, payload)
    comps = [host.k_buffer, host.v_buffer] if kind == "mha" else [host.kv_buffer]
    for layer, c, t in itertools.product(range(g.num_layers), range(len(comps)), range(g.tokens)):
        start = layer * g.layer_bytes + g.component_offset(c) + t * g.row_bytes[c]
        want = comps[c][8 + t, layer].contiguous().view(torch.uint8).flatten()
        assert torch.equal(payload[start : start + g.row_bytes[c]], want)


@pytest.mark.parametrize("joined", [True, False], ids=["one_copy", "per_component"])
@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("src_layout,dst_layout", list(itertools.product(LAYOUTS, LAYOUTS)))
def test_pages_move_across_layouts(kind, src_layout, dst_layout, joined):
    _, a = make_pools(kind, src_layout)
    _, b = make_pools(kind, dst_layout)
    fill_random(a, seed=1)
    b.kv_buffer.view(torch.uint8).fill_(0xAB)
    pa, pb = HostPages(a), HostPages(b)
    assert pa.geometry == pb.geometry
    # SGLang's pools join (one copy moves every component of a page); the per-component
    # copies are what a pool whose components differ in shape gets
    assert pa._joint is not None and pb._joint is not None
    if not joined:
        pa._joint = pb._joint = None
    payload = torch.empty(pa.geometry.payload_bytes, dtype=torch.uint8)
    for src, dst in ((0, 12), (20, 4)):
        pa.read_page(src, payload)
        pb.write_page(dst, payload)
        for va, vb in zip(pa.page_views(src), pb.page_views(dst)):
            assert torch.equal(va, vb)
    # a slot that was not written still holds the sentinel
    assert all(bool((v == 0xAB).all()) for v in pb.page_views(8))


@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_page_parts_are_the_page_in_payload_order(kind, layout):
    _, host = make_pools(kind, layout)
    fill_random(host, seed=2)
    pages = HostPages(host)
    g = pages.geometry
    payload = torch.empty(g.payload_bytes, dtype=torch.uint8)
    pages.read_page(12, payload)
    parts = pages.page_parts(12)
    assert b"".join(parts) == payload.numpy().tobytes()
    assert len(parts) == pages.parts_per_layer * g.num_layers
    # writable views of the pool itself: what a GET scatters into them lands in the slot
    key = b"k" * 16
    other = objformat.sealed(g, key, bytes(reversed(payload.numpy().tobytes())))
    got = memoryview(other)[g.header_bytes:]
    at = 0
    for part in parts:
        part[:] = got[at:at + len(part)]
        at += len(part)
    objformat.verify_layers(objformat.decode_header(other, g, key), 0, parts, pages.parts_per_layer)
    pages.read_page(12, payload)
    assert payload.numpy().tobytes() == bytes(got)
    parts[-1][:1] = bytes([parts[-1][0] ^ 1])
    with pytest.raises(objformat.FormatError, match=f"layer {g.num_layers - 1} checksum"):
        objformat.verify_layers(objformat.decode_header(other, g, key), 0, parts, pages.parts_per_layer)
