"""Torch versions of the `sgl_kernel.kvcacheio` "direct" ops that HiCache's host pools call.

On CUDA the host pools import these from sgl_kernel; on SGLang's CPU engine they import
nothing and fail with NameError at the first host<->device copy. `cpu_compat` binds these
into the pool modules, only when there is no CUDA. Index tensors hold token slots and are
page aligned; page-first host buffers are [num_pages, layers, page_size, ...].
"""

from __future__ import annotations

import torch


def _page_starts(indices: torch.Tensor, page_size: int) -> torch.Tensor:
    return indices.reshape(-1, page_size)[:, 0].to(torch.int64)


def transfer_kv_direct(src_layers, dst_layers, src_indices, dst_indices, page_size) -> None:
    if src_indices.numel() == 0:
        return
    si = src_indices.to(torch.int64)
    di = dst_indices.to(torch.int64)
    for src, dst in zip(src_layers, dst_layers):
        dst.index_copy_(0, di.to(dst.device), src.index_select(0, si.to(src.device)).to(dst.device))


def transfer_kv_per_layer_direct_pf_lf(
    src_ptrs, dst_ptrs, src_indices, dst_indices, layer_id, page_size
) -> None:
    """One layer, page-first host pools -> layer-first device buffers."""
    if src_indices.numel() == 0:
        return
    host_pages = _page_starts(src_indices, page_size) // page_size
    di = dst_indices.to(torch.int64)
    for src, dst in zip(src_ptrs, dst_ptrs):
        rows = src[host_pages, layer_id]  # [pages, page_size, ...]
        dst.index_copy_(0, di.to(dst.device), rows.reshape(di.numel(), *dst.shape[1:]).to(dst.device))


def transfer_kv_all_layer_direct_lf_pf(src_ptrs, dst_ptrs, src_indices, dst_indices, page_size) -> None:
    """All layers, layer-first device buffers [k_0..k_L-1, v_0..v_L-1] -> page-first host pools."""
    if src_indices.numel() == 0:
        return
    num_layers = len(src_ptrs) // len(dst_ptrs)
    host_pages = _page_starts(dst_indices, page_size) // page_size
    si = src_indices.to(torch.int64)
    for slot, dst in enumerate(dst_ptrs):
        for layer in range(num_layers):
            src = src_ptrs[slot * num_layers + layer]
            rows = src.index_select(0, si.to(src.device)).to(dst.device)
            dst[host_pages, layer] = rows.reshape(host_pages.numel(), page_size, *dst.shape[3:])


OPS = {
    "transfer_kv_direct": transfer_kv_direct,
    "transfer_kv_per_layer_direct_pf_lf": transfer_kv_per_layer_direct_pf_lf,
    "transfer_kv_all_layer_direct_lf_pf": transfer_kv_all_layer_direct_lf_pf,
}
