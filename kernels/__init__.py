"""Move KV between the object format's layer-major bytes and SGLang's per-layer KV pools.

Installed as `sglang_objectcache.kernels`. The byte order is `objformat.PageGeometry`'s
(see `layout`): page payload = for each layer, for each component (MHA: K then V; MLA:
the latent), `tokens` rows of `row_bytes[c]` bytes, token-major, each row exactly a row
of the pool buffer. Rows are moved as bytes: byte-exact for any dtype (fp16, bf16,
fp32, fp8 stored as uint8 or float8, ...).

    scatter_layer(staging, pools, slots, geometry)                 staging -> pools
    gather_layer(pools, slots, geometry, out=None) -> staging      pools -> staging
    scatter_all_layers(staging, pools_per_layer, slots, geometry)
    gather_all_layers(pools_per_layer, slots, geometry, out=None) -> staging

- `staging`: uint8 `[N, >= geometry.layer_bytes]` for one layer (row n = the bytes a
  ranged GET of that layer of page n returns) or `[N, >= geometry.payload_bytes]` for all
  layers (row n = page n's payload). Rows must be contiguous; the row stride is free.
  `out=None` allocates a contiguous one on the pools' device.
- `pools`: one layer's buffers, one per component: `(k_buffer[l], v_buffer[l])` of
  `MHATokenToKVPool`, `(kv_buffer[l],)` of `MLATokenToKVPool`; each `[num_slots, ...]`
  with contiguous rows (any row stride), or paged `[num_pages, tokens, ...]` (slot s =
  token s % tokens of page s // tokens; see `layout`). `pools_per_layer[l]` is that for
  layer l, with the same strides per component across layers.
- `slots`: int32/int64 `[N * tokens]` on the same device: token t of page n lives in pool
  row `slots[n * tokens + t]`. Any order, not necessarily contiguous. Slots must be in
  `[0, num_slots)`: the GPU kernel does not check (the CPU path does). Scatter with a slot
  listed twice leaves either row's bytes there.
- `geometry`: the page object's (all its layers); one-layer calls use its `layer_bytes`.
- Nothing else in the pools or the staging buffer is touched.

HiCache host pools fit the same calls through per-layer views, slots = host indices:
layer_first `(kv_buffer[0, l], kv_buffer[1, l])`; page_first and page_first_direct
`(kv_buffer[0][:, l], kv_buffer[1][:, l])` (flat rows strided over all layers, and paged
`[pages, page, H, D]`); MLA the same with the one latent buffer.

Each call is one kernel launch on GPU (the all-layers calls too) and one indexing op per
layer and component with torch, never a loop over pages. Calls are stream-ordered on
the current CUDA stream and do not synchronize.

`backend`: "triton", "torch" or "auto" (default); callers pass the config's
`layerwise.kernels`. Auto picks Triton for CUDA tensors and torch otherwise. Triton on CPU tensors runs
Triton's interpreter, only when `TRITON_INTERPRET=1`; that is how CI tests the kernels.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from sglang_objectcache.objformat import PageGeometry

from . import layout, torch_kv

BACKENDS = ("auto", "triton", "torch")

__all__ = ["scatter_layer", "gather_layer", "scatter_all_layers", "gather_all_layers",
           "resolve_backend", "BACKENDS"]


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend a call on `device` uses: "triton" or "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda":
        if device.type != "cpu" or os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"the Triton kernels need CUDA tensors, or CPU tensors with "
                               f"TRITON_INTERPRET=1 (the interpreter); got {device}")
    return backend


def _run(staging, pools_per_layer, slots, g: PageGeometry, gather: bool, backend: str):
    layout.staging_rows(staging, len(pools_per_layer) * g.layer_bytes)
    slots = layout.check_slots(slots, staging.shape[0], g)
    if slots.device != staging.device:
        raise ValueError(f"slots on {slots.device}, staging on {staging.device}")
    pools = [layout.check_pools(p, g) for p in pools_per_layer]
    if resolve_backend(staging.device, backend) == "triton":
        from . import triton_kv  # imports triton; the torch path never needs it

        triton_kv.move(staging, pools, slots, g, gather)
    else:
        torch_kv.move(staging, pools, slots, g, gather)
    return staging


def _new_staging(pools_per_layer, slots, g: PageGeometry, span: int, out):
    if out is not None:
        return out
    device = pools_per_layer[0][0].device
    return torch.empty((slots.numel() // g.tokens, span), dtype=torch.uint8, device=device)


def scatter_layer(staging: torch.Tensor, pools: Sequence[torch.Tensor], slots: torch.Tensor,
                  geometry: PageGeometry, *, backend: str = "auto") -> None:
    """Write one layer of N pages from `staging` into rows `slots` of `pools`."""
    _run(staging, [pools], slots, geometry, False, backend)


def gather_layer(pools: Sequence[torch.Tensor], slots: torch.Tensor, geometry: PageGeometry,
                 out: Optional[torch.Tensor] = None, *, backend: str = "auto") -> torch.Tensor:
    """Read rows `slots` of one layer's `pools` into a one-layer staging buffer."""
    out = _new_staging([pools], slots, geometry, geometry.layer_bytes, out)
    return _run(out, [pools], slots, geometry, True, backend)


def scatter_all_layers(staging: torch.Tensor, pools_per_layer: Sequence[Sequence[torch.Tensor]],
                       slots: torch.Tensor, geometry: PageGeometry, *,
                       backend: str = "auto") -> None:
    """Write whole page payloads from `staging` into every layer's pools."""
    _check_layers(pools_per_layer, geometry)
    _run(staging, pools_per_layer, slots, geometry, False, backend)


def gather_all_layers(pools_per_layer: Sequence[Sequence[torch.Tensor]], slots: torch.Tensor,
                      geometry: PageGeometry, out: Optional[torch.Tensor] = None, *,
                      backend: str = "auto") -> torch.Tensor:
    """Read rows `slots` of every layer into page payloads, one page per staging row."""
    _check_layers(pools_per_layer, geometry)
    out = _new_staging(pools_per_layer, slots, geometry, geometry.payload_bytes, out)
    return _run(out, pools_per_layer, slots, geometry, True, backend)


def _check_layers(pools_per_layer, g: PageGeometry) -> None:
    if len(pools_per_layer) != g.num_layers:
        raise ValueError(f"geometry has {g.num_layers} layers, got pools for "
                         f"{len(pools_per_layer)}")
