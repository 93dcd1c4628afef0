"""A HiCacheStorageConfig like the one SGLang builds, and page hashes and slots for a
page-mode backend: shared by the SGLang-wing unit tests."""

from __future__ import annotations

import torch

PAGE = 4

def storage_config(extra: dict, kind="mha", tp_rank=0, tp_size=1, model="tiny-model"):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=kind == "mla", enable_storage_metrics=True, is_page_first_layout=False,
        model_name=model, extra_config=dict(extra),
    )

def hashes(n: int, tag: str = "p") -> list[str]:
    return [f"{tag}{i:062d}" for i in range(n)]

def slots(pages: list[int]) -> torch.Tensor:
    return torch.tensor([p * PAGE + t for p in pages for t in range(PAGE)], dtype=torch.int64)
