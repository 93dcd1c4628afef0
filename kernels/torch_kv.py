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
    pool buffer of component c of the i-th of those layers, as `layout.check_pools` returns.
    """
    n = staging.shape[0]
    if n == 0:
        return
    index = slots.to(torch.int64).view(n, g.tokens)
    if index.device.type == "cpu" and int(index.min()) < 0:
        # torch would wrap a negative index around to the end of the pool
        raise IndexError("negative token slot")
    for i, layer_pools in enumerate(pools):
        for c, rows in enumerate(layer_pools):
            block = layout.component_block(staging, g, c, i)  # [N, tokens, row_bytes]
            w = layout.word_bytes(g.row_bytes[c:c + 1], (block, rows))
            block_w, rows_w = layout.as_words(block, w), layout.as_words(rows, w)
            if gather and block_w.is_contiguous():  # MLA, one layer: index_select's memcpy path
                torch.index_select(rows_w, 0, index.view(-1), out=block_w.view(-1, rows_w.shape[1]))
            elif gather:
                # index with out=: writes straight into the strided staging block, one pass
                torch.ops.aten.index.Tensor_out(rows_w, [index], out=block_w)
            else:
                rows_w.index_put_((index,), block_w)
