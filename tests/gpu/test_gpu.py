"""On a CUDA GPU: the compiled Triton kernels and the layerwise loader into device KV pools.

Skipped without CUDA (CI has none). `scripts/gpu_run.sh` runs this file on a lent GPU and
keeps its report in benchmarks/results/gpu_tests.txt.

- Kernels: every dtype x page size x MHA/MLA case of test_kernels.py, plus strided,
  paged (HiCache page_first_direct views), int32-slot and Llama-8B-sized launches, compiled
  for the device and compared byte for byte with the plain CPU reference.
- Loader: pages from a real SeaweedFS land in CUDA pools through pinned staging and the
  copy stream; the forward's stream waits on each layer's CUDA event, so `wait_until`
  returns before the copy is done (no CPU stall) and reads on that stream still see the
  right bytes. Failure leaves the destination slots untouched.
"""

from __future__ import annotations

import time

import pytest
import torch
from kernel_cases import MATRIX, SENTINEL, Case, assert_pools_equal, random_bytes, ref_gather, ref_scatter, sentinel_like

from sglang_objectcache import kernels, objformat
from sglang_objectcache.config import ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.fetch import ProcessFetch
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.transfers import TransferScheduler
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import make_store

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def on_gpu(pools_per_layer):
    return [[p.to(CUDA) for p in layer] for layer in pools_per_layer]


def on_cpu(pools_per_layer):
    return [[p.cpu() for p in layer] for layer in pools_per_layer]


# ---- kernels ---------------------------------------------------------------------------


def test_cuda_tensors_run_triton():
    assert kernels.resolve_backend(CUDA) == "triton"


@pytest.mark.parametrize("kind,dtype,tokens", MATRIX)
def test_kernels_match_the_reference(kind, dtype, tokens):
    case = Case(kind, dtype, tokens, layers=3, pages=5, seed=tokens)
    g, n = case.geometry, case.slots.numel() // tokens
    want = ref_gather(case.pools, case.slots, g)
    pools, slots = on_gpu(case.pools), case.slots.to(CUDA)

    assert torch.equal(kernels.gather_all_layers(pools, slots, g).cpu(), want)
    wide = torch.full((n, g.layer_bytes + 48), SENTINEL, dtype=torch.uint8, device=CUDA)
    kernels.gather_layer(pools[2], slots, g, out=wide[:, :g.layer_bytes])
    assert torch.equal(wide[:, :g.layer_bytes].cpu(), want[:, 2 * g.layer_bytes:])
    assert bool((wide[:, g.layer_bytes:] == SENTINEL).all())

    dst = case.pick_slots(n, aligned=False)
    got = on_gpu(case.fresh_pools())
    kernels.scatter_all_layers(want.to(CUDA), got, dst.to(CUDA), g)
    ref = case.fresh_pools()
    ref_scatter(want, ref, dst, g)
    assert_pools_equal(on_cpu(got), ref)

    one = on_gpu(case.fresh_pools())
    kernels.scatter_layer(want[:, g.layer_bytes:2 * g.layer_bytes].to(CUDA), one[1], dst.to(CUDA), g)
    ref_one = case.fresh_pools()
    ref_scatter(want[:, g.layer_bytes:2 * g.layer_bytes], [ref_one[1]], dst, g)
    assert_pools_equal(on_cpu(one), ref_one)


@pytest.mark.parametrize("head_dim,v_head_dim,dtype", [(8, 4, "bfloat16"), (3, 5, "float16"),
                                                       (1, 1, "uint8")])
def test_odd_rows(head_dim, v_head_dim, dtype):
    case = Case("mha", dtype, 16, head_dim=head_dim, v_head_dim=v_head_dim, pages=4, seed=7)
    g = case.geometry
    want = ref_gather(case.pools, case.slots, g)
    assert torch.equal(kernels.gather_all_layers(on_gpu(case.pools), case.slots.to(CUDA), g).cpu(), want)
    got = on_gpu(case.fresh_pools())
    kernels.scatter_all_layers(want.to(CUDA), got, case.slots.to(CUDA), g)
    ref = case.fresh_pools()
    ref_scatter(want, ref, case.slots, g)
    assert_pools_equal(on_cpu(got), ref)


@pytest.mark.parametrize("paged", [False, True])
def test_strided_and_paged_views_with_int32_slots(paged):
    """Per-layer views of all-layer buffers: layer-strided rows, and HiCache's
    page_first_direct [pages, layers, page, heads, dim] (slot s = token s % page of page s // page)."""
    layers, tokens, pages = 3, 16, 12
    g = PageGeometry("mha", layers, tokens, (2 * 8 * 2,) * 2, "bfloat16")
    gen = torch.Generator().manual_seed(3)
    shape = (pages, layers, tokens, 2, 8) if paged else (pages * tokens, layers, 2, 8)
    bufs = [random_bytes(shape, torch.bfloat16, gen) for _ in range(2)]
    slots = torch.randperm(pages * tokens, generator=gen)[:5 * tokens].to(torch.int32)

    def views(bs):
        return [[b[:, i] for b in bs] for i in range(layers)]

    want = kernels.gather_all_layers(views(bufs), slots, g, backend="torch")  # CPU, tested vs the reference
    gpu = [b.to(CUDA) for b in bufs]
    assert torch.equal(kernels.gather_all_layers(views(gpu), slots.to(CUDA), g).cpu(), want)
    got = [sentinel_like(b).to(CUDA) for b in bufs]
    kernels.scatter_all_layers(want.to(CUDA), views(got), slots.to(CUDA), g)
    ref = [sentinel_like(b) for b in bufs]
    kernels.scatter_all_layers(want, views(ref), slots, g, backend="torch")
    for a, b in zip(got, ref):
        assert torch.equal(a.cpu().view(torch.uint8), b.view(torch.uint8))


def test_llama_8b_sized_launch_matches_torch():
    """1024 pages of 64 tokens, 8 KV heads x 128 bf16, 4 layers: 1 GiB moved each way."""
    layers, tokens, n = 4, 64, 1024
    g = PageGeometry("mha", layers, tokens, (2048, 2048), "bfloat16")
    slots_total = n * tokens + 4096
    gen = torch.Generator(device=CUDA).manual_seed(1)
    pools = [[torch.randint(-2**15, 2**15, (slots_total, 8, 128), dtype=torch.int16, device=CUDA,
                            generator=gen).view(torch.bfloat16) for _ in range(2)] for _ in range(layers)]
    pages = torch.randperm(slots_total // tokens, device=CUDA, generator=gen)[:n]
    slots = (pages[:, None] * tokens + torch.arange(tokens, device=CUDA)).reshape(-1)
    got = kernels.gather_all_layers(pools, slots, g)
    assert torch.equal(got, kernels.gather_all_layers(pools, slots, g, backend="torch"))
    dst = [[torch.zeros_like(p) for p in layer] for layer in pools]
    kernels.scatter_all_layers(got, dst, slots, g)
    for layer, ref in zip(dst, pools):
        for a, b in zip(layer, ref):
            assert torch.equal(a[slots].view(torch.int16), b[slots].view(torch.int16))
            a[slots] = 0
            assert not a.view(torch.int16).any()  # nothing written outside the slots


# ---- layerwise loader into CUDA pools --------------------------------------------------

PAGE, LAYERS, HEADS, DIM, SLOTS = 16, 4, 4, 64, 1024


class GpuRig:
    """Source pages (CPU) sealed into the bucket; a CUDA destination pool to load into."""

    def __init__(self, s3_config: dict, *, host_mb: int = 0, timeout_s: float = 10.0, fetch: str = "process"):
        self.cfg = ObjectCacheConfig.from_dict(s3_config)
        self.g = PageGeometry("mha", LAYERS, PAGE, (HEADS * DIM * 2,) * 2, "bfloat16")
        gen = torch.Generator().manual_seed(5)
        self.src = [[random_bytes((SLOTS, HEADS, DIM), torch.bfloat16, gen) for _ in range(2)]
                    for _ in range(LAYERS)]
        self.dst = [[torch.full((SLOTS, HEADS, DIM), 0, dtype=torch.bfloat16, device=CUDA)
                     for _ in range(2)] for _ in range(LAYERS)]
        for layer in self.dst:
            for t in layer:
                t.view(torch.uint8).fill_(SENTINEL)
        self.keys = KeyScheme("oc", make_namespace(self.cfg, RankIdentity(ModelIdentity("m", "test"), self.g, is_mla=False)))
        self.store = make_store(self.cfg)
        self.stats = Stats()
        self.timeline = Timeline()
        self.events = []  # (layer, CUDA event) as the loader completes them
        self.counter = LayerReadyCounter(LAYERS, timeout_s, on_finish=lambda i: self.loader.stop(i),
                                         on_wait=self.timeline.wait)
        complete = self.counter.complete

        def spy(index, layer, cuda_event=None):
            self.events.append((layer, cuda_event))
            complete(index, layer, cuda_event)

        self.counter.complete = spy
        self.loader = LayerwiseLoader(
            self.g, self.dst,
            LoaderParts(store=self.store, content_digest=self.keys.content_digest,
                        scheduler=TransferScheduler(SchedulerConfig()), tier=HostTier(host_mb << 20),
                        timeline=self.timeline, stats=self.stats, counter=self.counter,
                        fetch=ProcessFetch(self.cfg, self.g, 4, pinned=True) if fetch == "process" else None),
            LoaderSettings(window_layers=2, layers_per_get=1))

    def slots(self, pages) -> torch.Tensor:
        return torch.tensor([p * PAGE + t for p in pages for t in range(PAGE)], dtype=torch.int64)

    def put(self, hashes, pages) -> None:
        payload = kernels.gather_all_layers(self.src, self.slots(pages), self.g)
        items = [(self.keys.object_key(h), objformat.sealed(self.g, self.keys.content_digest(h), row.numpy()))
                 for h, row in zip(hashes, payload)]
        assert self.store.put_many(items) == [True] * len(items)

    def forward(self, hashes, pages, block_copy_s: float = 0.0):
        """What SGLang's attention layers do, on the forward's own stream: wait for the
        layer, then read its K/V. Returns (ok, bytes read per layer, copy events still
        running when wait_until returned)."""
        if block_copy_s:  # hold the copy stream, so every scatter completes late
            with torch.cuda.stream(self.loader.device.copy_stream):
                torch.cuda._sleep(int(block_copy_s * 1.4e9))
        idx = self.counter.update_producer()
        dst = self.slots(pages).to(CUDA)
        self.loader.load(idx, ["r"], list(hashes), [self.keys.object_key(h) for h in hashes], dst)
        self.counter.set_consumer(idx)
        stream, read, pending = torch.cuda.Stream(), [], 0
        with torch.cuda.stream(stream):
            for layer in range(LAYERS):
                self.counter.wait_until(layer)
                pending += sum(1 for l, ev in self.events if l == layer and ev is not None and not ev.query())
                read.append(torch.cat([t[dst].reshape(-1).view(torch.uint8) for t in self.dst[layer]]))
        stream.synchronize()
        ok = self.counter.finish(idx)
        self.counter.set_consumer(-1)
        return ok, [r.cpu() for r in read], pending

    def want(self, pages) -> list[torch.Tensor]:
        s = self.slots(pages)
        return [torch.cat([t[s].reshape(-1).view(torch.uint8) for t in layer]) for layer in self.src]

    def close(self):
        self.loader.close()
        self.store.close()


def hashes(n, tag):
    return [f"{tag}{i:063d}" for i in range(n)]


@pytest.fixture(params=["process", "thread"])
def rig(s3_config, request):
    r = GpuRig(s3_config, host_mb=64, fetch=request.param)
    yield r
    r.close()


def test_layers_land_in_cuda_pools_and_the_forward_waits_on_events(rig):
    keys = hashes(8, "a")
    rig.put(keys, list(range(8)))
    # First load: allocates the loader's pinned staging buffers, which cudaHostAlloc does
    # in step with the device (it would wait out the blocked stream below); later loads reuse them.
    assert rig.forward(keys, list(range(48, 56)))[0]
    rig.events.clear()
    ok, read, pending = rig.forward(keys, [40, 9, 17, 33, 2, 11, 60, 25], block_copy_s=0.5)
    assert ok
    assert all(ev is not None for _, ev in rig.events)  # GPU completions are CUDA events
    assert pending >= 1  # wait_until returned while the copy was still queued: no CPU stall
    segments = getattr(rig.loader.fetch, "_segments", {})
    assert all(seg.pinned for seg in segments.values())  # the worker's shared staging is page-locked
    for layer, (got, want) in enumerate(zip(read, rig.want(list(range(8))))):
        assert torch.equal(got, want), f"layer {layer}"  # yet the stream-ordered reads are right


def test_host_tier_repeat_on_gpu(rig):
    keys = hashes(6, "t")
    rig.put(keys, list(range(6)))
    assert rig.forward(keys, [10, 11, 12, 13, 14, 15])[0]
    gets = rig.stats.counters["get_requests"]
    ok, read, _ = rig.forward(keys, [50, 51, 52, 53, 54, 55])
    assert ok and rig.stats.counters["get_requests"] == gets
    assert all(torch.equal(a, b) for a, b in zip(read, rig.want(list(range(6)))))


def test_a_missing_page_fails_and_leaves_the_slots_untouched(rig):
    keys = hashes(4, "m")
    rig.put(keys[:3], [0, 1, 2])
    t0 = time.monotonic()
    ok, read, _ = rig.forward(keys, [20, 21, 22, 23])
    assert not ok and time.monotonic() - t0 < 5
    torch.cuda.synchronize()
    assert all(bool((r == SENTINEL).all()) for r in read)
