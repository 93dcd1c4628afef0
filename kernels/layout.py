"""Byte views of staging buffers and KV pool buffers, from `objformat.PageGeometry`.

Both backends (Triton and torch) take every offset from here, and here takes every
offset from `PageGeometry` (`layer_bytes`, `payload_bytes`, `component_offset`), so
the object format stays the one definition of the byte order.

A staging buffer holds N pages back to back, one page per row:
- one layer:  `[N, >= geometry.layer_bytes]` uint8, row n = layer l's range of page n;
- all layers: `[N, >= geometry.payload_bytes]` uint8, row n = page n's payload.
The row stride may exceed the bytes used (a column slice of a bigger buffer is fine, e.g.
the payload columns of whole objects), but bytes inside a row must be contiguous.

A pool buffer (one component of one layer) is `[num_slots, ...]` of any dtype whose
dims after the first are contiguous, so a token slot is `row_bytes[c]` contiguous bytes
at `slot * stride(0)`. This covers SGLang's device pools (`k_buffer[l]`,
`v_buffer[l]`, MLA `kv_buffer[l]`) and per-layer views of its layer-strided host pools.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from sglang_objectcache.objformat import PageGeometry

WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def pool_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as `[num_slots, row_bytes]` uint8, sharing memory (no copy)."""
    if t.dim() < 2:
        raise ValueError(f"a pool buffer needs >= 2 dims [slots, ...], got shape {tuple(t.shape)}")
    if t.dim() > 2:
        # view, not flatten: flatten would silently copy, and writes would be lost
        try:
            t = t.view(t.shape[0], -1)
        except RuntimeError as e:
            raise ValueError("the dims after the first of a pool buffer must be contiguous") from e
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError("each pool row (token slot) must be contiguous")
    return t.view(torch.uint8)


def staging_rows(staging: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """Check a staging buffer `[N, >= row_bytes]` uint8 with contiguous rows; return it."""
    if staging.dtype != torch.uint8 or staging.dim() != 2:
        raise ValueError(f"staging must be a 2-D uint8 tensor [pages, bytes], got "
                         f"{staging.dtype} {tuple(staging.shape)}")
    if staging.shape[1] < row_bytes or staging.stride(1) != 1:
        raise ValueError(f"staging rows must be >= {row_bytes} contiguous bytes, got shape "
                         f"{tuple(staging.shape)} strides {staging.stride()}")
    return staging


def component_block(staging: torch.Tensor, g: PageGeometry, c: int, layer: int = 0) -> torch.Tensor:
    """View `[N, tokens, row_bytes[c]]` of component c of `layer` in a staging buffer
    (layer 0 of a one-layer buffer is that layer)."""
    start = layer * g.layer_bytes + g.component_offset(c)
    block = staging[:, start:start + g.component_bytes(c)]
    return block.unflatten(1, (g.tokens, g.row_bytes[c]))


def check_pools(pools: Sequence[torch.Tensor], g: PageGeometry) -> list[torch.Tensor]:
    """Pool buffers of one layer, one per component, as uint8 rows of the right size."""
    if len(pools) != g.num_components:
        raise ValueError(f"{g.kind} needs {g.num_components} pool buffers per layer, got {len(pools)}")
    rows = [pool_rows(p) for p in pools]
    for c, r in enumerate(rows):
        if r.shape[1] != g.row_bytes[c]:
            raise ValueError(f"component {c}: pool rows are {r.shape[1]} bytes, geometry says "
                             f"{g.row_bytes[c]}")
    return rows


def check_slots(slots: torch.Tensor, num_pages: int, g: PageGeometry) -> torch.Tensor:
    if slots.dim() != 1 or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slots must be a 1-D int32/int64 tensor, got {slots.dtype} "
                         f"{tuple(slots.shape)}")
    if slots.numel() != num_pages * g.tokens:
        raise ValueError(f"{num_pages} pages of {g.tokens} tokens need {num_pages * g.tokens} "
                         f"slots, got {slots.numel()}")
    return slots.contiguous()


def word_bytes(sizes: Iterable[int], tensors: Iterable[torch.Tensor], limit: int = 8) -> int:
    """The widest word (<= limit bytes) that divides every size and every tensor's
    address and byte strides, so all rows can be moved as whole words."""
    values = list(sizes)
    for t in tensors:
        values.append(t.data_ptr())
        values.extend(s * t.element_size() for s in t.stride()[:-1])
    w = limit
    for v in values:
        while v % w:
            w //= 2
    return w


def as_words(t: torch.Tensor, w: int) -> torch.Tensor:
    """A uint8 tensor with contiguous last dim, viewed as w-byte integer words."""
    return t.view(WORDS[w])
