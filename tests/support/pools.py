"""Real SGLang KV pools on the CPU (device pool + host pool), for backend tests."""

from __future__ import annotations

import os

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import torch  # noqa: E402

LAYERS = 3


def make_pools(kind: str = "mha", layout: str = "layer_first", dtype=torch.bfloat16,
               page_size: int = 4, size: int = 256, heads: int = 2, head_dim: int = 8, host: bool = True):
    """(device_pool, host_pool) with host pin_memory off, as on SGLang's CPU engine.
    host=False skips the host pool (None): SGLang sizes it against free RAM."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

    if kind == "mha":
        dev = MHATokenToKVPool(size, page_size, dtype, heads, head_dim, LAYERS, "cpu", False,
                               start_layer=0, end_layer=LAYERS)
        if not host:
            return dev, None
        info = dev.get_device_pool_infos()[0].buffer_info
        host = MHATokenToKVPoolHost(info, 2.0, 0, page_size, layout, pin_memory=False,
                                    device_capacity_tokens=dev.size, start_layer=0, end_layer=LAYERS)
    else:
        dev = MLATokenToKVPool(size, page_size, dtype, 16, 8, LAYERS, "cpu", False,
                               start_layer=0, end_layer=LAYERS)
        if not host:
            return dev, None
        info = dev.get_device_pool_infos()[0].buffer_info
        host = MLATokenToKVPoolHost(info, 2.0, 0, page_size, layout, pin_memory=False,
                                    device_capacity_tokens=dev.size, start_layer=0,
                                    end_layer=LAYERS, target_layer_num=LAYERS)
    return dev, host


def fill_random(host, seed: int = 0) -> None:
    """Random bytes in every host buffer (as uint8, so every bit pattern is exercised)."""
    g = torch.Generator().manual_seed(seed)
    buf = host.kv_buffer
    u8 = buf.view(torch.uint8)
    u8.copy_(torch.randint(0, 256, u8.shape, dtype=torch.uint8, generator=g))


def page_bytes(host, slot: int) -> list[bytes]:
    """The page's bytes, layer by layer, component by component (layout independent)."""
    from sglang_objectcache.hostpool import HostPages

    return [v.contiguous().numpy().tobytes() for v in HostPages(host).page_views(slot)]
