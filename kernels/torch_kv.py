"""Torch implementation of the KV moves: CPU (SGLang's CPU engine) and a reference anywhere.

One vectorized indexing op per (layer, component), over all pages at once, on integer
word views of the bytes (8-byte words where rows allow: several times faster than uint8
on CPU). No Python loop over pages or tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sglang_objectcache.objformat import PageGeometry

from . import layout


def move(staging: torch.Tensor, pools: Sequence[Sequence[torch.Tensor]], slots: torch.Tensor,
         g: PageGeometry, gather: bool) -> None:
    """Scatter (gather=False) staging -> pools, or gather pools -> staging.

    `staging` holds `len(pools)` consecutive layers per page row; `pools[i][c]` is the
    pool buffer of component c of the i-th of those layers, as `layout.check_pools`
    returns it: `[num_pages, page, row_bytes]` uint8, page 1 for a flat pool.
    """
    n = staging.shape[0]
    if n == 0:
        return
    slot = slots.to(torch.int64).view(n, g.tokens)
    num_slots = min(r.shape[0] * r.shape[1] for layer in pools for r in layer)
    if slot.device.type == "cpu" and not 0 <= int(slot.min()) <= int(slot.max()) < num_slots:
        # torch would wrap a negative index around to the end of the pool
        raise IndexError(f"token slot out of range [0, {num_slots})")
    split = {}  # page size -> index tuple into [num_pages, page, row]
    for i, layer_pools in enumerate(pools):
        for c, rows in enumerate(layer_pools):
            page = rows.shape[1]
            if page not in split:
                split[page] = (slot,) if page == 1 else (slot // page, slot % page)
            if page == 1:
                rows = rows[:, 0]
            block = layout.component_block(staging, g, c, i)  # [N, tokens, row_bytes]
            w = layout.word_bytes(g.row_bytes[c:c + 1], (block, rows))
            block_w, rows_w = layout.as_words(block, w), layout.as_words(rows, w)
            index = split[page]
            if gather and page == 1 and block_w.is_contiguous():
                # MLA, one layer: index_select's memcpy path
                torch.index_select(rows_w, 0, slot.view(-1), out=block_w.view(-1, rows_w.shape[1]))
            elif gather:
                # index with out=: writes straight into the strided staging block, one pass
                torch.ops.aten.index.Tensor_out(rows_w, list(index), out=block_w)
            else:
                rows_w.index_put_(index, block_w)
