"""A pure-Python stand-in for the two `sgl_kernel` ops SGLang's CPU engine imports unconditionally.

The CPU build of sgl-kernel is not on PyPI, and the CUDA wheels cannot import without a
driver. `sglang.srt.mem_cache.allocation` and `sglang.kernels.ops.kvcache.cache_move` import
`assign_req_to_token_pool_cpu` and `copy_all_layer_kv_cache_cpu` at import time when
SGLANG_USE_CPU_ENGINE=1, so this must be
importable before any plugin runs. `scripts/install.sh` puts this folder on sys.path (a
.pth file) only on a machine with no CUDA and no real sgl_kernel. Every other CPU op SGLang
has is used only with Intel AMX, which this path does not claim.
"""

import ctypes

import torch

__version__ = "0.0.0+objectcache-cpu-standin"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    # Request i owns out_cache_loc[sum(len_<i) : sum(len_<=i)] and writes it at
    # req_to_token[req_pool_indices[i], start[i]:end[i]].
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    pos = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        req_to_token[row, s:e] = out_cache_loc[pos : pos + n].to(req_to_token.dtype)
        pos += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    # data_ptrs[b] is the address of buffer b (one per layer and K/V); strides[b] its row size
    # in bytes. Row src_loc[i] of every buffer is copied to row tgt_loc[i].
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        for tgt, src in pairs:
            ctypes.memmove(base + tgt * stride, base + src * stride, stride)


def __getattr__(name: str):
    # SGLang also imports speculative-decoding CPU ops at module level (EAGLE trees, draft
    # cache locations). They are only called with --speculative-algorithm, which this
    # install does not support; resolve them to a callable that says so. Other names stay
    # missing so that SGLang's own `try: from sgl_kernel import x` fallbacks still work.
    if not name.endswith("_cpu"):
        raise AttributeError(name)

    def _unsupported(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not in the objectcache CPU stand-in "
            "(speculative decoding needs the real CPU build of sgl-kernel)"
        )

    _unsupported.__name__ = name
    return _unsupported
