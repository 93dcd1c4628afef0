"""A rank's identity, read from SGLang's objects: the one place both modes get it.

Page mode sees a `HiCacheStorageConfig` and a host pool; layerwise mode sees the linker's
`CacheInitParams` and the device pool. Both describe the same rank, and both end here in
one neutral `keys.RankIdentity`, with the model's identity taken from the same ServerArgs,
so the two modes derive one namespace by construction.

Pools this code cannot store faithfully are refused with one line (`UnsupportedPool`):
KV pools with scale buffers (MXFP8, FP4: the scales would not travel with the pages) and
the HND device layout (a page-sized row per head would be scattered as token rows).
"""

from __future__ import annotations

import functools
import logging

import xxhash

from sglang_objectcache.hostpool import UnsupportedPool
from sglang_objectcache.identity import ModelIdentity, fingerprint_path, normalized_json, random_fingerprint
from sglang_objectcache.keys import RankIdentity
from sglang_objectcache.objformat import PageGeometry

logger = logging.getLogger(__name__)


def current_server_args():
    """The ServerArgs SGLang published in this process (scheduler), or None."""
    from sglang.srt.runtime_context import get_server_args

    return get_server_args()


def model_identity(server_args, full_fingerprint: bool = False) -> ModelIdentity:
    if server_args is None:
        raise RuntimeError("objectcache: SGLang published no ServerArgs in this process, so the model "
                           "behind the KV cannot be identified; refusing to share pages")
    a = server_args
    return _model_identity(
        str(a.served_model_name or a.model_path), str(a.model_path), str(getattr(a, "revision", "") or ""),
        str(getattr(a, "load_format", "") or ""), str(getattr(a, "dtype", "") or ""),
        str(getattr(a, "kv_cache_dtype", "") or ""), str(getattr(a, "quantization", "") or ""),
        normalized_json(getattr(a, "json_model_override_args", "") or ""),
        str(getattr(a, "quantization_param_path", "") or ""),
        normalized_json(_lora_paths(getattr(a, "lora_paths", None))), full_fingerprint)


@functools.lru_cache(maxsize=8)  # each process fingerprints its checkpoint once
def _model_identity(label, model_path, revision, load_format, dtype, kv_dtype, quantization, overrides,
                    scales_path, lora, full) -> ModelIdentity:
    if load_format == "dummy":
        weights = random_fingerprint("--load-format dummy: random weights")
    else:
        weights = fingerprint_path(model_path, revision, full)
    return ModelIdentity(
        label=label, weights=weights, dtype=dtype, kv_dtype=kv_dtype, quantization=quantization,
        overrides=overrides, kv_scales=_file_digest(scales_path), lora=_lora_digest(lora, full),
    )


def _lora_paths(paths) -> dict:
    if not paths:
        return {}
    if isinstance(paths, dict):
        return {str(k): str(v) for k, v in paths.items()}
    out = {}
    for p in paths:  # "name=path", a path, or SGLang's LoRARef-like objects
        p = getattr(p, "lora_path", p)
        name, _, path = str(p).partition("=")
        out[name] = path or name
    return out


def _lora_digest(lora_json: str, full: bool) -> str:
    if not lora_json:
        return ""
    import json

    return normalized_json({n: fingerprint_path(p, "", full) for n, p in json.loads(lora_json).items()})


def _file_digest(path: str) -> str:
    if not path:
        return ""
    with open(path, "rb") as f:
        return xxhash.xxh3_128_hexdigest(f.read())


def refuse_scaled(pool) -> None:
    """KV pools that keep per-page scales beside K and V (MXFP8, FP4) hold them in
    attributes named *scale* (a tensor, or one per layer); plain pools leave them None."""
    def is_tensors(v) -> bool:
        return hasattr(v, "shape") or (isinstance(v, (list, tuple)) and any(hasattr(t, "shape") for t in v))

    scaled = sorted(n for n, v in vars(pool).items() if "scale" in n and is_tensors(v))
    if scaled:
        raise UnsupportedPool(f"objectcache cannot store {type(pool).__name__}: its KV scale buffers "
                              f"({', '.join(scaled)}) would not travel with the pages; use a KV cache "
                              "dtype without per-page scales (auto, bf16, fp8_e4m3, fp8_e5m2)")


def page_mode_rank(storage_config, host_pool, geometry: PageGeometry, server_args) -> RankIdentity:
    """Page mode: the HiCache controller's storage config and host pool."""
    refuse_scaled(host_pool)
    sc = storage_config
    return RankIdentity(
        model=model_identity(server_args), geometry=geometry, is_mla=bool(sc.is_mla_model),
        tp=(sc.tp_rank, sc.tp_size), start_layer=int(getattr(host_pool, "start_layer", 0) or 0),
        cp=(sc.attn_cp_rank, sc.attn_cp_size), dcp=(getattr(sc, "dcp_rank", 0), getattr(sc, "dcp_size", 1)),
    )


def linker_rank(server_args, params, kvcache, geometry: PageGeometry, is_mla: bool) -> RankIdentity:
    """Layerwise mode: the linker's init params and the device pool."""
    refuse_scaled(kvcache)
    return RankIdentity(
        model=model_identity(server_args), geometry=geometry, is_mla=is_mla, tp=tp_rank_size(params, server_args),
        start_layer=int(getattr(kvcache, "start_layer", 0) or 0),
        cp=(params.attn_cp_rank, params.attn_cp_size), dcp=dcp_rank_size(server_args),
    )


def tp_rank_size(params, server_args) -> tuple[int, int]:
    import torch

    group = params.attn_tp_cache_group or params.tp_cache_group
    if group is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(group=group), torch.distributed.get_world_size(group=group)
    if int(getattr(server_args, "tp_size", 1) or 1) > 1:  # never let every rank share tp0of1
        raise RuntimeError("objectcache: tp_size > 1 but no initialized TP group to read this rank from")
    return 0, 1


def dcp_rank_size(server_args) -> tuple[int, int]:
    """Decode-context-parallel rank and size, as page mode's storage config carries them."""
    if int(getattr(server_args, "dcp_size", 1) or 1) <= 1:
        return 0, 1
    from sglang.srt.runtime_context import get_parallel

    p = get_parallel()  # raises if SGLang did not place this rank: better than sharing rank 0's shard
    return int(p.attn_dcp_rank), int(p.attn_dcp_size)
