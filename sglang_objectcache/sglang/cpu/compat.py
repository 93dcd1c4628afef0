"""Make SGLang's HiCache host pools work on its CPU engine (no CUDA driver).

Applied by the plugin in every SGLang process, and only when SGLANG_USE_CPU_ENGINE=1 and
torch sees no CUDA device, so a GPU machine never runs any of this. Two gaps, both in
`sglang.srt.mem_cache.pool_host`:
- host pools pin or cudaHostRegister their buffers, which needs a driver ("Found no NVIDIA
  driver"): the pool is built with pin_memory=False instead;
- the "direct" io ops are imported from sgl_kernel only on CUDA/HIP/XPU, so the first
  host<->device copy raises NameError: torch versions are bound into those modules.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

_POOL_MODULES = ("sglang.srt.mem_cache.pool_host.mha", "sglang.srt.mem_cache.pool_host.mla")


def needed() -> bool:
    if os.environ.get("SGLANG_USE_CPU_ENGINE", "0") != "1":
        return False
    import torch

    return not torch.cuda.is_available()


def _no_pinning(*args, **kwargs):
    kwargs["pin_memory"] = False
    return args, kwargs


def apply(hooks) -> None:
    """Register the fixes on SGLang's HookRegistry (passed in so this module stays import-light)."""
    import importlib

    from sglang_objectcache.sglang import compat
    from sglang_objectcache.sglang.cpu.kvcacheio import OPS

    compat.register_hooks(hooks, "cpu")  # _no_pinning on HostKVCache.__init__
    for name in _POOL_MODULES:
        mod = importlib.import_module(name)
        for op, fn in OPS.items():
            if not hasattr(mod, op):
                setattr(mod, op, fn)
    logger.info("objectcache: CPU engine fixes applied (unpinned host pools, torch direct io)")

