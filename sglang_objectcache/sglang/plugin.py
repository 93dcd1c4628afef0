"""The `sglang.srt.plugins` entry point: makes `--hicache-storage-backend objectcache` real.

SGLang runs this in every process it starts (launcher, scheduler, detokenizer), before it
applies hooks. Every hook target of this wing (`sglang_objectcache.sglang`), and everything
else it relies on in SGLang, is listed in the manifest `compat.py` and checked first
(`check_sglang`), so another SGLang version fails loudly here
instead of misbehaving later. Registering the name alone is not enough in the supported SGLang:
1. the factory's `_create_builtin_backend` is an if/elif that rejects unknown names;
2. argparse `choices` for `--hicache-storage-backend` are fixed at parser build time;
3. the controller picks the zero-copy v1 path only for a hard-coded list of names.
`--hicache-storage-backend dynamic` with `interface_v1` needs none of this (see README).

Layerwise mode (`"layerwise": {"enabled": true}` in the extra config) is SGLang's external
linker, which excludes HiCache: a resolution hook on `handle_hicache` rewrites the flags to
the linker before SGLang validates them, and two hooks turn a failed load into a recompute
instead of an abort (`recompute_hooks.py`).
"""

from __future__ import annotations

import logging

from sglang_objectcache.sglang import compat

logger = logging.getLogger(__name__)

NAME = "objectcache"
BACKEND_MODULE = "sglang_objectcache.sglang.hicache_backend"
BACKEND_CLASS = "ObjectCacheStorage"
SUPPORTED_SGLANG = compat.SUPPORTED_SGLANG
IncompatibleSGLang = compat.IncompatibleSGLang


def check_sglang() -> None:
    """Raise IncompatibleSGLang naming the version and every missing internal (`compat.py`)."""
    compat.check()


def _create_builtin_backend(original, cls_, backend_name, backend_class, storage_config, mem_pool_host):
    if backend_name == NAME:
        return backend_class(storage_config, mem_pool_host)
    return original(cls_, backend_name, backend_class, storage_config, mem_pool_host)


def _add_choice(result, parser):
    action = parser._option_string_actions.get("--hicache-storage-backend")
    if action is not None and action.choices is not None and NAME not in action.choices:
        action.choices = list(action.choices) + [NAME]


def _select_zero_copy(result, self, storage_backend, *args, **kwargs):
    if storage_backend == NAME and self.enable_storage:
        self.page_get_func = self._page_get_zero_copy
        self.page_set_func = self._page_set_zero_copy


def _share_stop_event(result, self, storage_backend, *args, **kwargs):
    """AFTER hook on attach: the backend watches the controller's `storage_stop_event`.
    SGLang sets it, then joins its storage threads for 10 s and raises if one is still in a
    batch (`_stop_storage_threads`, on /flush_cache, a reset, a detach); a batch in flight
    then returns at once instead of running its GETs or PUTs to the end."""
    backend = getattr(self, "storage_backend", None)
    if storage_backend == NAME and self.enable_storage and hasattr(backend, "watch_stop"):
        backend.watch_stop(self.storage_stop_event)


def _weights_updated(result, manager, recv_req, *args, **kwargs):
    """AFTER hook on SGLang's `flush_cache_after_weight_update` (every update_weights_* path
    ends there): every objectcache core of this process moves to a namespace of the new
    weights. If SGLang's radix cache was not flushed, its pages hold the old weights' KV,
    so storage pauses until a flush."""
    from sglang_objectcache import identity, runtime

    ok = isinstance(result, tuple) and bool(result[0])
    flushed = ok and bool(getattr(recv_req, "flush_cache", True))
    path = getattr(recv_req, "model_path", None)
    for face in runtime.instances():
        cache = getattr(face, "cache", None)
        if cache is None:
            continue
        try:
            if path and getattr(recv_req, "load_format", None) != "dummy":
                weights = identity.fingerprint_path(path, full=cache.cfg.full_fingerprint)
            else:
                weights = identity.random_fingerprint(f"weights updated by {type(recv_req).__name__}")
            cache.rotate(weights, suspend=not flushed)
        except Exception:  # noqa: BLE001 - never fail the update; but never serve old KV either
            logger.exception("objectcache: could not rotate the namespace after a weight update; "
                             "storage paused until restart")
            cache.suspended = True
            cache.frozen = True
    return None


def _flushed(result, scheduler, *args, **kwargs):
    """AFTER hook on Scheduler.flush_cache: a flushed radix cache holds no old-weight KV."""
    if result:
        from sglang_objectcache import runtime

        for face in runtime.instances():
            if getattr(face, "cache", None) is not None and face.cache.suspended and not face.cache.frozen:
                face.cache.suspended = False
                logger.info("objectcache: cache flushed after a weight update: storage resumes")
    return None


LINKER_MODULE = "sglang_objectcache.sglang.layerwise_linker"
LINKER_CLASS = "ObjectCacheLinker"


def _layerwise_to_linker(server_args, previous) -> None:
    """objectcache + layerwise.enabled -> SGLang's external linker with our linker class.

    The linker config is a server arg, and `/server_info` returns every server arg: so an
    `@file` config goes on as its path (`{"objectcache_config": "@/abs/path"}`, which the
    linker loads itself), never as the file's contents (its secrets). Inline JSON, or a
    dict, goes on as given: the user already put it in a server arg."""
    import os

    from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

    from sglang_objectcache.config import load_dict

    cfg = resolving_view(server_args)
    text = cfg.hicache_storage_backend_extra_config
    if cfg.hicache_storage_backend == NAME and text:
        extra = load_dict(text)
        if (extra.get("layerwise") or {}).get("enabled"):
            logger.info("objectcache: layerwise mode: using SGLang's external linker (HiCache host tier "
                        "off; objectcache keeps its own host tier, layerwise.host_cache_mb)")
            if isinstance(text, str) and text.startswith("@"):
                # Absolute: the scheduler process may not share the launcher's cwd.
                passed = {"objectcache_config": "@" + os.path.abspath(text[1:])}
            else:
                passed = extra
            # A failed load recomputes (never an HTTP 503) only without the overlap scheduler.
            recompute = (extra.get("layerwise") or {}).get("recompute_on_failure", True)
            overlap = {"disable_overlap_schedule": True} if recompute else {}
            if recompute and not cfg.disable_overlap_schedule:
                logger.info("objectcache: layerwise mode turns the overlap scheduler off, so a failed load "
                            "is recomputed (layerwise.recompute_on_failure: false keeps it, aborting such loads)")
            declare_resolution(
                server_args, "objectcache_layerwise", **overlap,
                enable_hierarchical_cache=False,
                hicache_storage_backend=None,
                enable_unified_cache_external_linker=True,
                unified_cache_external_linker_backend="dynamic",
                unified_cache_external_linker_config={
                    "linker": LINKER_CLASS, "linker_module_path": LINKER_MODULE, "linker_extra_config": passed,
                },
            )
    previous(server_args)


def register() -> None:
    """Entry point. SGLang logs (and survives) an exception here; the message says why.
    Every hook comes from the manifest's table (`compat.HOOKS`): those registered "always"
    here, the inspector's by `inspect_hooks.register`, the CPU shims by `cpu.compat.apply`."""
    try:
        check_sglang()
    except IncompatibleSGLang as e:
        logger.error("%s", e)
        raise

    from sglang.srt.arg_groups.resolution_hooks import register_resolution_hook
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
    from sglang.srt.plugins.hook_registry import HookRegistry

    if NAME not in StorageBackendFactory._registry:
        StorageBackendFactory.register_backend(NAME, BACKEND_MODULE, BACKEND_CLASS)
    # A classmethod (the factory's) reaches an AROUND hook with cls as the first positional argument.
    compat.register_hooks(HookRegistry, "always")
    register_resolution_hook("handle_hicache")(_layerwise_to_linker)

    try:  # objectcache-inspect: tree endpoint (inspect_hooks.py)
        from sglang_objectcache.sglang import inspect_hooks

        inspect_hooks.register(HookRegistry)
    except Exception:  # noqa: BLE001 - optional features; caching must work without them
        logger.exception("objectcache: inspection hooks not registered")

    from sglang_objectcache.sglang.cpu import compat as cpu

    if cpu.needed():
        cpu.apply(HookRegistry)
