"""Kernel test cases and the per-page PyTorch reference, shared by the CPU kernel tests
(tests/unit/kernels) and the GPU tests (tests/gpu)."""

from __future__ import annotations

import torch

from sglang_objectcache.objformat import PageGeometry

SENTINEL = 0xA5
DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,  # fp8 as torch dtype
    "uint8": torch.uint8,  # fp8 as SGLang stores it (store_dtype uint8)
}
PAGE_SIZES = (1, 16, 64, 256)
BACKENDS = ("torch", "triton")


def random_bytes(shape, dtype, gen) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype)
    t.view(torch.uint8).copy_(torch.randint(0, 256, t.view(torch.uint8).shape, dtype=torch.uint8,
                                            generator=gen))
    return t


def sentinel_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t)
    out.view(torch.uint8).fill_(SENTINEL)
    return out


def u8(t: torch.Tensor) -> torch.Tensor:
    """Rows of a pool buffer as bytes (reference side; independent of kernels.layout)."""
    return t.reshape(t.shape[0], -1).view(torch.uint8)


class Case:
    """A pool of `layers` layers and a selection of `pages` pages in it."""

    def __init__(self, kind, dtype, tokens, *, layers=2, pages=3, heads=2, head_dim=4,
                 v_head_dim=None, aligned=False, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        tdtype = DTYPES[dtype]
        if kind == "mha":
            shapes = [(heads, head_dim), (heads, v_head_dim or head_dim)]
        else:
            shapes = [(1, head_dim * 9)]  # latent + rope, like kv_lora_rank + qk_rope_head_dim
        item = tdtype.itemsize
        self.geometry = PageGeometry(kind, layers, tokens,
                                     tuple(h * d * item for h, d in shapes), dtype)
        self.num_slots = pages * tokens * 2 + 3
        self.pools = [[random_bytes((self.num_slots, *s), tdtype, self.gen) for s in shapes]
                      for _ in range(layers)]
        self.slots = self.pick_slots(pages, aligned)

    def pick_slots(self, pages, aligned, exclude=None) -> torch.Tensor:
        t = self.geometry.tokens
        if aligned:  # SGLang's paged allocator: whole pages, pages in any order
            free = torch.randperm(self.num_slots // t, generator=self.gen)[:pages]
            return (free[:, None] * t + torch.arange(t)).reshape(-1)
        perm = torch.randperm(self.num_slots, generator=self.gen)
        if exclude is not None:
            perm = perm[~torch.isin(perm, exclude)]
        return perm[: pages * t]

    def fresh_pools(self):
        return [[sentinel_like(p) for p in layer] for layer in self.pools]


def ref_gather(pools_per_layer, slots, g: PageGeometry) -> torch.Tensor:
    """Page by page, layer by layer, component by component: the object format, spelled out."""
    n = slots.numel() // g.tokens
    out = torch.empty((n, len(pools_per_layer) * g.layer_bytes), dtype=torch.uint8)
    for p in range(n):
        page_slots = slots[p * g.tokens:(p + 1) * g.tokens]
        for i, layer in enumerate(pools_per_layer):
            for c, pool in enumerate(layer):
                start = i * g.layer_bytes + g.component_offset(c)
                out[p, start:start + g.component_bytes(c)] = u8(pool)[page_slots].reshape(-1)
    return out


def ref_scatter(staging, pools_per_layer, slots, g: PageGeometry) -> None:
    for p in range(slots.numel() // g.tokens):
        page_slots = slots[p * g.tokens:(p + 1) * g.tokens]
        for i, layer in enumerate(pools_per_layer):
            for c, pool in enumerate(layer):
                start = i * g.layer_bytes + g.component_offset(c)
                block = staging[p, start:start + g.component_bytes(c)]
                u8(pool)[page_slots] = block.reshape(g.tokens, g.row_bytes[c])


def assert_pools_equal(got, want):
    for i, (gl, wl) in enumerate(zip(got, want)):
        for c, (a, b) in enumerate(zip(gl, wl)):
            assert torch.equal(u8(a), u8(b)), f"layer {i} component {c} differs"


MATRIX = [(kind, dtype, tokens)
          for kind in ("mha", "mla") for dtype in DTYPES for tokens in PAGE_SIZES]
