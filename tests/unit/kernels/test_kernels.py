"""KV scatter/gather kernels: byte-exact against a plain per-page PyTorch reference.

Both backends run here: torch directly, Triton under its interpreter (TRITON_INTERPRET=1,
CPU tensors). Every pool and staging buffer starts filled with a sentinel and is compared
whole, so a byte written outside the selected slots (or columns) fails the test. Pool
bytes are random, NaN payloads included, so any float conversion on the way fails too.
"""

from __future__ import annotations

import pytest
import torch

from sglang_objectcache import objformat
from sglang_objectcache.kernels import (
    gather_all_layers,
    gather_layer,
    resolve_backend,
    scatter_all_layers,
    scatter_layer,
)
from sglang_objectcache.objformat import PageGeometry

from kernel_cases import (SENTINEL, BACKENDS, random_bytes, sentinel_like, u8, Case, ref_gather, ref_scatter, assert_pools_equal, MATRIX)


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,dtype,tokens", MATRIX)
def test_one_layer(kind, dtype, tokens, backend):
    case = Case(kind, dtype, tokens, seed=tokens)
    g, layer = case.geometry, 1

    # gather into a sentinel-filled staging buffer wider than a layer: the extra columns stay
    n = case.slots.numel() // tokens
    wide = torch.full((n, g.layer_bytes + 32), SENTINEL, dtype=torch.uint8)
    got = gather_layer(case.pools[layer], case.slots, g, out=wide[:, :g.layer_bytes],
                       backend=backend)
    want = ref_gather([case.pools[layer]], case.slots, g)
    assert got.data_ptr() == wide.data_ptr()
    assert torch.equal(wide[:, :g.layer_bytes], want)
    assert bool((wide[:, g.layer_bytes:] == SENTINEL).all())
    assert torch.equal(gather_layer(case.pools[layer], case.slots, g, backend=backend), want)

    # scatter the reference bytes at other slots of a sentinel-filled pool
    dst = case.pick_slots(case.slots.numel() // tokens, aligned=False)
    got_pools = [sentinel_like(p) for p in case.pools[layer]]
    scatter_layer(want, got_pools, dst, g, backend=backend)
    want_pools = [sentinel_like(p) for p in case.pools[layer]]
    ref_scatter(want, [want_pools], dst, g)
    assert_pools_equal([got_pools], [want_pools])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,dtype,tokens", MATRIX)
def test_all_layers(kind, dtype, tokens, backend):
    case = Case(kind, dtype, tokens, layers=3, aligned=True, seed=100 + tokens)
    g = case.geometry
    got = gather_all_layers(case.pools, case.slots, g, backend=backend)
    want = ref_gather(case.pools, case.slots, g)
    assert got.shape == (case.slots.numel() // tokens, g.payload_bytes)
    assert torch.equal(got, want)

    dst = case.pick_slots(case.slots.numel() // tokens, aligned=True)
    got_pools = case.fresh_pools()
    scatter_all_layers(want, got_pools, dst, g, backend=backend)
    want_pools = case.fresh_pools()
    ref_scatter(want, want_pools, dst, g)
    assert_pools_equal(got_pools, want_pools)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim,v_head_dim,dtype", [
    (8, 4, "bfloat16"),  # K and V rows of different sizes
    (3, 5, "float16"),  # 6- and 10-byte rows: 2-byte words, masked columns
    (1, 1, "uint8"),  # 2-byte rows, 1-byte words
])
def test_odd_rows(head_dim, v_head_dim, dtype, backend):
    case = Case("mha", dtype, 16, head_dim=head_dim, v_head_dim=v_head_dim, pages=4, seed=7)
    g = case.geometry
    want = ref_gather(case.pools, case.slots, g)
    assert torch.equal(gather_all_layers(case.pools, case.slots, g, backend=backend), want)
    got_pools = case.fresh_pools()
    scatter_all_layers(want, got_pools, case.slots, g, backend=backend)
    want_pools = case.fresh_pools()
    ref_scatter(want, want_pools, case.slots, g)
    assert_pools_equal(got_pools, want_pools)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_pools_and_int32_slots(backend):
    """Per-layer views of a layer-strided host buffer [slots, layers, heads, dim]."""
    g = PageGeometry("mha", 3, 16, (2 * 8 * 2, 2 * 8 * 2), "bfloat16")
    gen = torch.Generator().manual_seed(3)
    k, v = (random_bytes((200, 3, 2, 8), torch.bfloat16, gen) for _ in range(2))
    pools = [[k[:, i], v[:, i]] for i in range(3)]
    slots = torch.randperm(200, generator=gen)[:5 * 16].to(torch.int32)
    want = ref_gather(pools, slots.long(), g)
    assert torch.equal(gather_all_layers(pools, slots, g, backend=backend), want)
    assert torch.equal(gather_layer(pools[2], slots, g, backend=backend),
                       want[:, 2 * g.layer_bytes:])

    k2, v2 = sentinel_like(k), sentinel_like(v)
    scatter_all_layers(want, [[k2[:, i], v2[:, i]] for i in range(3)], slots, g, backend=backend)
    k3, v3 = sentinel_like(k), sentinel_like(v)
    ref_scatter(want, [[k3[:, i], v3[:, i]] for i in range(3)], slots.long(), g)
    assert torch.equal(u8(k2), u8(k3)) and torch.equal(u8(v2), u8(v3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_paged_host_pool(kind, backend):
    """HiCache's page_first_direct host pool, [pages, layers, page, heads, dim] per
    component: per-layer views are paged, slot s = token s % page of page s // page."""
    layers, tokens, pages = 3, 16, 6
    heads, dim = (2, 8) if kind == "mha" else (1, 36)
    g = PageGeometry(kind, layers, tokens, (heads * dim * 2,) * (2 if kind == "mha" else 1),
                     "bfloat16")
    gen = torch.Generator().manual_seed(9)
    bufs = [random_bytes((pages, layers, tokens, heads, dim), torch.bfloat16, gen)
            for _ in g.row_bytes]
    slots = torch.randperm(pages * tokens, generator=gen)[:4 * tokens]

    def per_layer(bs):
        return [[b[:, i] for b in bs] for i in range(layers)]

    def row(b, i, s):  # the bytes of slot s of layer i
        return b[s // tokens, i, s % tokens].reshape(-1).view(torch.uint8)

    want = torch.empty((4, g.payload_bytes), dtype=torch.uint8)
    for p in range(4):
        for i in range(layers):
            for c, b in enumerate(bufs):
                start = i * g.layer_bytes + g.component_offset(c)
                page_slots = slots[p * tokens:(p + 1) * tokens].tolist()
                want[p, start:start + g.component_bytes(c)] = torch.cat(
                    [row(b, i, s) for s in page_slots])
    assert torch.equal(gather_all_layers(per_layer(bufs), slots, g, backend=backend), want)
    assert torch.equal(gather_layer(per_layer(bufs)[1], slots, g, backend=backend),
                       want[:, g.layer_bytes:2 * g.layer_bytes])

    got = [sentinel_like(b) for b in bufs]
    scatter_all_layers(want, per_layer(got), slots, g, backend=backend)
    for c, (b, out) in enumerate(zip(bufs, got)):
        exp = sentinel_like(b)
        for s in slots.tolist():
            exp[s // tokens, :, s % tokens] = b[s // tokens, :, s % tokens]
        assert torch.equal(u8(out), u8(exp)), f"component {c}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_through_objects(backend):
    """Pool -> gather -> sealed objects -> bytes -> decode -> scatter (whole pages and per
    layer ranges) into a fresh pool at other slots: the same bytes arrive."""
    case = Case("mha", "bfloat16", 16, layers=3, pages=4, aligned=True, seed=11)
    g = case.geometry
    n = case.slots.numel() // g.tokens
    objects = torch.zeros((n, g.object_bytes), dtype=torch.uint8)
    gather_all_layers(case.pools, case.slots, g, out=objects[:, g.header_bytes:], backend=backend)
    blobs = []
    for p in range(n):
        digest = bytes([p]) * 16
        objformat.seal(g, digest, memoryview(objects[p].numpy()))
        blobs.append(bytes(objects[p].numpy()))

    arrived = torch.empty((n, g.object_bytes), dtype=torch.uint8)
    for p, blob in enumerate(blobs):
        objformat.decode(blob, g, bytes([p]) * 16)  # header, size and every layer checksum
        arrived[p] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)

    dst = case.pick_slots(n, aligned=False, exclude=case.slots)
    whole = case.fresh_pools()
    scatter_all_layers(arrived[:, g.header_bytes:], whole, dst, g, backend=backend)
    by_layer = case.fresh_pools()
    for layer in range(g.num_layers):
        start, end = g.layer_range(layer)  # what a ranged GET of this layer returns
        ranges = torch.stack([torch.frombuffer(bytearray(b[start:end]), dtype=torch.uint8)
                              for b in blobs])
        scatter_layer(ranges, by_layer[layer], dst, g, backend=backend)

    for layer in range(g.num_layers):
        for c, src in enumerate(case.pools[layer]):
            want = torch.full_like(u8(src), SENTINEL)
            want[dst] = u8(src)[case.slots]
            assert torch.equal(u8(whole[layer][c]), want)
            assert torch.equal(u8(by_layer[layer][c]), want)


def test_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(cpu) == "torch"
    assert resolve_backend(cpu, "triton") == "triton"  # the interpreter (fixture sets it)
    assert resolve_backend(cpu, "torch") == "torch"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend(cpu, "triton")
    with pytest.raises(ValueError):
        resolve_backend(cpu, "cuda")
    if torch.cuda.is_available():
        assert resolve_backend(torch.device("cuda")) == "triton"


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_bad_arguments(backend):
    case = Case("mha", "float16", 16)
    g, pools, slots = case.geometry, case.pools[0], case.slots
    staging = ref_gather([pools], slots, g)
    with pytest.raises(ValueError, match="slots"):
        scatter_layer(staging, pools, slots[:-1], g, backend=backend)
    with pytest.raises(ValueError, match="bytes"):
        scatter_layer(staging, [pools[0][:, :1], pools[1]], slots, g, backend=backend)
    with pytest.raises(ValueError, match="pool buffers"):
        scatter_layer(staging, pools[:1], slots, g, backend=backend)
    with pytest.raises(ValueError, match="staging"):
        scatter_layer(staging[:, :-2], pools, slots, g, backend=backend)
    with pytest.raises(ValueError, match="layers"):
        scatter_all_layers(staging, [pools], slots, g, backend=backend)
    bad = slots.clone()
    bad[5] = -1
    with pytest.raises(IndexError):
        scatter_layer(staging, pools, bad, g, backend=backend)
    bad[5] = case.num_slots
    with pytest.raises(IndexError):
        scatter_layer(staging, pools, bad, g, backend=backend)


@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("kind,row_bytes,tokens,layers,paged", [
    ("mha", (2048, 2048), 64, 1, False),  # Llama-8B-like rank: 8 KV heads x 128 x bf16
    ("mha", (2048, 2048), 64, 4, False),  # all layers: pointer table
    ("mha", (2048, 2048), 64, 4, True),  # page_first_direct host views
    ("mla", (576,), 64, 1, False),  # DeepSeek latent in fp8
    ("mla", (1152,), 1, 1, False),  # bf16 latent, page size 1
])
def test_gpu_codegen_uses_16_byte_vectors(kind, row_bytes, tokens, layers, paged, gather,
                                          monkeypatch):
    """Compile for sm_90 without a GPU (the wheel ships ptxas): rows must move as 16-byte
    vector loads and stores, the main thing that makes a copy kernel reach bandwidth."""
    pytest.importorskip("triton.backends.nvidia")
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # no float math here; silences a warning
    from sglang_objectcache.kernels import aot, layout, triton_kv

    g = PageGeometry(kind, layers, tokens, row_bytes, "bfloat16")
    lead = (4096 // tokens, layers, tokens) if paged else (4096, layers)
    bufs = [torch.empty(*lead, rb, dtype=torch.uint8) for rb in row_bytes]
    pools = [layout.check_pools([b[:, i] for b in bufs], g) for i in range(layers)]
    staging = torch.empty((16, g.layer_bytes * layers), dtype=torch.uint8)
    slots = torch.randperm(4096)[:16 * tokens]
    launch = triton_kv.plan(staging, pools, slots, g, gather, triton_kv.GPU_TUNING)
    accesses = aot.global_accesses(aot.ptx(launch))
    assert {"ld.global.v2.b64", "st.global.v2.b64"} <= accesses, accesses
    assert "st.global.b64" not in accesses, accesses  # every store is a 16-byte vector


@pytest.mark.parametrize("tuning", [
    dict(tile_bytes=16384, max_chunk_bytes=4096, num_warps=4),  # what a GPU runs
    dict(tile_bytes=64, max_chunk_bytes=16, num_warps=1),  # many token blocks and chunks
])
@pytest.mark.parametrize("kind,head_dim,v_head_dim,dtype,tokens", [
    ("mha", 8, 8, "bfloat16", 16),
    ("mha", 8, 4, "float32", 1),
    ("mha", 3, 5, "float16", 64),
    ("mla", 4, None, "uint8", 16),
])
def test_triton_tilings(tuning, kind, head_dim, v_head_dim, dtype, tokens):
    """The interpreter runs a few big programs by default; force the GPU tiling and a tiny
    one, so token blocks with tails, several column chunks and the K/V chunk split run."""
    from sglang_objectcache.kernels import layout, triton_kv

    case = Case(kind, dtype, tokens, layers=2, pages=5, head_dim=head_dim, v_head_dim=v_head_dim,
                seed=5)
    g, tune = case.geometry, triton_kv.Tuning(**tuning)
    rows = [layout.check_pools(layer, g) for layer in case.pools]
    want = ref_gather(case.pools, case.slots, g)
    got = torch.full_like(want, SENTINEL)
    triton_kv.move(got, rows, case.slots, g, gather=True, tuning=tune)
    assert torch.equal(got, want)
    one = torch.full((want.shape[0], g.layer_bytes), SENTINEL, dtype=torch.uint8)
    triton_kv.move(one, rows[1:], case.slots, g, gather=True, tuning=tune)
    assert torch.equal(one, want[:, g.layer_bytes:])

    got_pools = case.fresh_pools()
    triton_kv.move(want, [layout.check_pools(layer, g) for layer in got_pools], case.slots, g,
                   gather=False, tuning=tune)
    want_pools = case.fresh_pools()
    ref_scatter(want, want_pools, case.slots, g)
    assert_pools_equal(got_pools, want_pools)
