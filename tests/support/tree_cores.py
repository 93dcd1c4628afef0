"""SGLang's real tree cores, filled as the HiCache paths fill them: host pages with their
hashes, device pages through the insert state machine."""

from __future__ import annotations

from array import array

import torch

from sglang_objectcache.sglang import treeview


def rust_core(page_size: int = 4):
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.rust_tree_core.adapter import RustUnifiedTreeCore
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    core = RustUnifiedTreeCore(CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=None,
                                               page_size=page_size, tree_components=(ComponentType.FULL,)))
    core.set_hicache_enabled()
    return core


def insert_host(core, tokens: list[int], page_size: int = 4):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    hashes = treeview._page_hashes(tokens, page_size)
    return core.insert_host(core.root_node_handle(None), RadixKey(array("q", tokens)),
                            torch.arange(len(tokens), dtype=torch.int64), hashes)


def insert_device(core, tokens: list[int]):
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    step = core.begin_insert(InsertParams(key=RadixKey(array("q", tokens)),
                                          value=torch.arange(len(tokens), dtype=torch.int64)))
    while step.result is None:
        step = core.resume_insert()
    core.end_insert()
    return step.result
