"""Byte views of staging buffers and KV pool buffers, from `objformat.PageGeometry`.

Both backends (Triton and torch) take every offset from here, and here takes every
offset from `PageGeometry` (`layer_bytes`, `payload_bytes`, `component_offset`), so
the object format stays the one definition of the byte order.

A staging buffer holds N pages back to back, one page per row:
- one layer:  `[N, >= geometry.layer_bytes]` uint8, row n = layer l's range of page n;
- all layers: `[N, >= geometry.payload_bytes]` uint8, row n = page n's payload.
The row stride may exceed the bytes used (a column slice of a bigger buffer is fine, e.g.
the payload columns of whole objects), but bytes inside a row must be contiguous.

A pool buffer (one component of one layer) is, in any dtype, either
- flat:  `[num_slots, ...]`, slot s at `s * stride(0)`: SGLang's device pools
  (`k_buffer[l]`, `v_buffer[l]`, MLA `kv_buffer[l]`) and per-layer views of the
  layer_first and page_first host pools; or
- paged: `[num_pages, tokens, ...]`, slot s at `(s // tokens) * stride(0) +
  (s % tokens) * stride(1)`: per-layer views of the page_first_direct host pool.
The dims after the slot (or page, token) dims must be one contiguous run of
`row_bytes[c]` bytes. Both are handed on as uint8 `[num_pages, page, row_bytes]` views,
with page = 1 for a flat pool.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from sglang_objectcache.objformat import PageGeometry

WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def pool_rows(t: torch.Tensor, row_bytes: int, tokens: int) -> torch.Tensor:
    """`t` as uint8 `[num_pages, page, row_bytes]`, sharing memory (no copy); page is 1
    for a flat pool, `tokens` for a paged one."""
    if t.dim() < 2:
        raise ValueError(f"a pool buffer needs >= 2 dims [slots, ...], got shape {tuple(t.shape)}")
    per_lead = t[0].numel() * t.element_size() if t.shape[0] else 0
    if per_lead == row_bytes:
        lead = (t.shape[0], 1)
    elif t.dim() >= 3 and t.shape[1] == tokens and per_lead == tokens * row_bytes:
        lead = (t.shape[0], tokens)
    else:
        raise ValueError(f"pool buffer {tuple(t.shape)} {t.dtype} has no rows of {row_bytes} "
                         f"bytes: want [slots, ...] or [pages, {tokens}, ...]")
    # view, not reshape: reshape would silently copy, and writes would be lost
    try:
        rows = t.view(*lead, -1)
    except RuntimeError as e:
        raise ValueError("the dims of a pool buffer's row must be contiguous") from e
    if rows.shape[2] > 1 and rows.stride(2) != 1:
        raise ValueError("each pool row (token slot) must be contiguous")
    return rows.view(torch.uint8)


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
    return block.view(block.shape[0], g.tokens, g.row_bytes[c])  # view: unflatten is slow


def check_pools(pools: Sequence[torch.Tensor], g: PageGeometry) -> list[torch.Tensor]:
    """Pool buffers of one layer, one per component, as `pool_rows` views."""
    if len(pools) != g.num_components:
        raise ValueError(f"{g.kind} needs {g.num_components} pool buffers per layer, "
                         f"got {len(pools)}")
    return [pool_rows(p, g.row_bytes[c], g.tokens) for c, p in enumerate(pools)]


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
