"""SGLang's device KV pool as the layerwise pipeline sees it: per-layer token-row buffers
and the page geometry their objects have."""

from __future__ import annotations

from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.sglang import rank


def device_pool_view(kvcache, page_size: int):
    """(per-layer buffers, geometry, is_mla) of SGLang's MHA or MLA device KV pool: one
    token-major row per slot (NHD). The kernels scatter token rows, so the HND layout
    (a page-sized block per head) and pools with scale buffers are refused."""
    layout = str(getattr(kvcache, "kv_cache_layout", "nhd") or "nhd").lower()
    if layout != "nhd":
        raise rank.UnsupportedPool(f"objectcache layerwise mode needs the NHD device KV layout, not {layout!r} "
                                   "(unset SGLANG_USE_HND_KVCACHE, or use page mode)")
    rank.refuse_scaled(kvcache)
    if hasattr(kvcache, "kv_buffer") and not hasattr(kvcache, "v_buffer"):
        layers = [(b,) for b in kvcache.kv_buffer]
        is_mla = True
    elif hasattr(kvcache, "k_buffer") and hasattr(kvcache, "v_buffer"):
        layers = list(zip(kvcache.k_buffer, kvcache.v_buffer))
        is_mla = False
    else:
        raise TypeError(f"objectcache layerwise mode supports MHA/MLA KV pools, not {type(kvcache).__name__}")
    if layers[0][0].dim() != 3:
        raise rank.UnsupportedPool(f"objectcache layerwise mode needs [slots, heads, dim] layer buffers, "
                                   f"not {tuple(layers[0][0].shape)}")
    row_bytes = tuple(t[0].numel() * t.element_size() for t in layers[0])
    geometry = PageGeometry(
        kind="mla" if is_mla else "mha", num_layers=len(layers), tokens=page_size,
        row_bytes=row_bytes, dtype=str(layers[0][0].dtype).removeprefix("torch."),
    )
    return layers, geometry, is_mla


def host_tier_bytes(host_cache_mb: int, server_args, device_layers) -> int:
    """The layerwise host tier's size: `layerwise.host_cache_mb` where set (>= 0), else what
    SGLang's own flags give its HiCache host pool, which layerwise mode turns off:
    `--hicache-size` GB per rank, else `--hicache-ratio` (SGLang's default 2) times the
    device KV pool."""
    if host_cache_mb >= 0:
        return host_cache_mb << 20
    size_gb = getattr(server_args, "hicache_size", 0) or 0
    if size_gb > 0:
        return int(size_gb * 1e9)
    ratio = getattr(server_args, "hicache_ratio", None) or 2.0
    return int(ratio * sum(t.numel() * t.element_size() for layer in device_layers for t in layer))
