"""The compatibility manifest: everything objectcache relies on in SGLang, in one place.

objectcache supports exactly one SGLang release, `SUPPORTED_SGLANG`. What it relies on:
- `HOOKS`: every target handed to SGLang's `HookRegistry` (plugin, recompute hooks,
  inspector hooks, CPU-engine shims) with our handler and when it is registered: the
  wing registers its hooks from this table (`register_hooks`), so the two cannot drift;
  and `RESOLUTION_HOOKS`, the resolution steps wrapped;
- `PATCHED`: module attributes set directly (the CPU engine's io ops);
- `USES`: every SGLang class, function or method this wing imports, subclasses or calls;
- `READS`: attributes read on SGLang's objects (ServerArgs, storage config, linker params,
  pools, the HiCache controller, the tree core), per class;
- `REQ_WRITES`: the `Req` fields the recompute hooks write (and `REQ_READS`, those they read).

`check()` runs when SGLang loads the plugin (`plugin.register`, in every SGLang process),
before any hook is registered: another SGLang fails there with one error naming the version
found, the one supported and every missing item, instead of misbehaving later.
tests/unit/sglang/test_compat.py checks the same list against the installed sglang, checks that
the plugin registers no hook this manifest does not list, and instantiates the layerwise
linker against SGLang's installed ABC. docs/sglang-compat.md says what a version bump touches.

Nothing here imports SGLang at module import; `check()` does.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys

SUPPORTED_SGLANG = "0.5.23"

# The modules of this wing an SGLang version bump may have to change (docs/sglang-compat.md).
WING = (
    "plugin.py", "hicache_backend.py", "layerwise_linker.py", "recompute_hooks.py", "rank.py",
    "stats_bridge.py", "inspect_hooks.py", "tree_endpoint.py", "treeview.py", "treecores.py", "treestore.py",
    "flat_pages.py", "pool_view.py", "prefill_meter.py", "cpu/compat.py",
    "cpu/kvcacheio.py", "cpu/standin/",
)

_RUST_CORE = "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore"

# Every hook this wing registers, and the one table it registers them from (`register_hooks`):
# (target as "module:attribute.path", hook type, our handler as "module:function" under
# `sglang_objectcache.sglang`, when it is registered, why). The HookRegistry target is the
# module and the path joined by a dot (`hook_target`). When: "always" (plugin.register, in
# every process), "scheduler" / "http" (inspect_hooks.register, in that process only),
# "cpu" (cpu/compat.apply, on SGLang's CPU engine without CUDA).
HOOKS = (
    ("sglang.srt.mem_cache.storage.backend_factory:StorageBackendFactory._create_builtin_backend", "AROUND",
     "plugin:_create_builtin_backend", "always", "build the backend for the name 'objectcache'"),
    ("sglang.srt.server_args:ServerArgs.add_cli_args", "AFTER", "plugin:_add_choice", "always",
     "add 'objectcache' to --hicache-storage-backend's choices"),
    ("sglang.srt.managers.cache_controller:HiCacheController.attach_storage_backend", "AFTER",
     "plugin:_select_zero_copy", "always", "zero-copy page functions"),
    ("sglang.srt.managers.cache_controller:HiCacheController.attach_storage_backend", "AFTER",
     "plugin:_share_stop_event", "always", "hand over storage_stop_event"),
    ("sglang.srt.managers.scheduler_components.weight_updater:"
     "SchedulerWeightUpdaterManager.flush_cache_after_weight_update", "AFTER",
     "plugin:_weights_updated", "always", "rotate the namespace after a weight update"),
    ("sglang.srt.managers.scheduler:Scheduler.flush_cache", "AFTER", "plugin:_flushed", "always",
     "resume storage after a flush"),
    ("sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.finish_external_linker_loads", "AROUND",
     "recompute_hooks:finish_loads_or_recompute", "always", "take back the abort of a failed layerwise load"),
    ("sglang.srt.managers.scheduler:Scheduler.process_batch_result", "AROUND",
     "recompute_hooks:requeue_after_result", "always", "requeue the requests whose load failed"),
    ("sglang.srt.managers.scheduler:Scheduler.process_batch_result", "AFTER",
     "prefill_meter:observe_forward", "always", "measure the engine's prefill rate (compute_or_load)"),
    ("sglang.srt.managers.scheduler:Scheduler.handle_dumper_control", "AROUND",
     "tree_endpoint:scheduler_dispatch", "scheduler", "answer the tree request in the scheduler"),
    (_RUST_CORE + ".match_prefix", "AFTER", "inspect_hooks:note_handles", "scheduler", "note node handles (treeview)"),
    (_RUST_CORE + ".begin_insert", "AFTER", "inspect_hooks:note_handles", "scheduler", "note node handles (treeview)"),
    (_RUST_CORE + ".resume_insert", "AFTER", "inspect_hooks:note_handles", "scheduler", "note node handles (treeview)"),
    (_RUST_CORE + ".insert_host", "AFTER", "inspect_hooks:note_handles", "scheduler", "note node handles (treeview)"),
    ("sglang.srt.entrypoints.http_server:_setup_and_run_http_server", "BEFORE",
     "tree_endpoint:add_routes", "http", "add GET /objectcache/tree"),
    ("sglang.srt.mem_cache.pool_host.base:HostKVCache.__init__", "BEFORE",
     "cpu.compat:_no_pinning", "cpu", "unpinned host pools on the CPU engine"),
)
WHEN = ("always", "scheduler", "http", "cpu")

# Resolution steps wrapped with register_resolution_hook (must be in _OVERRIDABLE_HOOKS).
RESOLUTION_HOOKS = (
    ("handle_hicache", "plugin: layerwise.enabled -> SGLang's external linker with ObjectCacheLinker"),
)

# Modules whose attributes are set directly (not through HookRegistry).
PATCHED = (
    ("sglang.srt.mem_cache.pool_host.mha", "cpu/compat: torch io ops (cpu/kvcacheio.OPS) where absent"),
    ("sglang.srt.mem_cache.pool_host.mla", "cpu/compat: torch io ops (cpu/kvcacheio.OPS) where absent"),
)

# Classes, functions and methods imported, subclassed or called ("module:attribute.path").
USES = (
    "sglang.srt.plugins.hook_registry:HookRegistry.register",
    "sglang.srt.plugins.hook_registry:HookType.AROUND",
    "sglang.srt.plugins.hook_registry:HookType.AFTER",
    "sglang.srt.plugins.hook_registry:HookType.BEFORE",
    "sglang.srt.arg_groups.resolution_hooks:register_resolution_hook",
    "sglang.srt.arg_groups.overrides:declare_resolution",
    "sglang.srt.arg_groups.overrides:resolving_view",
    "sglang.srt.arg_groups.overrides:resolution_result",
    "sglang.srt.mem_cache.storage.backend_factory:StorageBackendFactory.register_backend",
    "sglang.srt.mem_cache.storage.backend_factory:StorageBackendFactory._registry",
    "sglang.srt.managers.cache_controller:HiCacheController._stop_storage_threads",
    "sglang.srt.managers.cache_controller:HiCacheController._page_get_zero_copy",
    "sglang.srt.managers.cache_controller:HiCacheController._page_set_zero_copy",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorage",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorage.batch_get_v1",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorage.batch_set_v1",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorage.register_mem_pool_host",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorage.register_mem_host_pool_v2",
    "sglang.srt.mem_cache.hicache_storage:HiCacheStorageConfig",
    "sglang.srt.mem_cache.hicache_storage:PoolName.KV",
    "sglang.srt.mem_cache.unified_cache.unified_cache_linker:UnifiedCacheLinker",
    "sglang.srt.mem_cache.unified_cache.component_type:ComponentType.FULL",
    "sglang.srt.mem_cache.common:release_kv_cache",
    "sglang.srt.mem_cache.utils:get_hash_str",
    "sglang.srt.mem_cache.utils:storage_namespace_seed",
    "sglang.srt.managers.scheduler:Scheduler._add_request_to_queue",
    "sglang.srt.managers.schedule_batch:Req.reset_for_retract",
    "sglang.srt.managers.schedule_batch:ScheduleBatch.filter_batch",
    "sglang.srt.managers.io_struct:DumperControlReqInput",
    "sglang.srt.managers.io_struct:DumperControlReqOutput",
    "sglang.srt.entrypoints.http_server:get_global_state",
    "sglang.srt.runtime_context:get_server_args",
    "sglang.srt.runtime_context:get_parallel",
    "sglang.srt.runtime_context:get_serving",
    "sglang.srt.observability.metrics_collector:StorageMetrics",
    "sglang.srt.utils.auth:AuthLevel.ADMIN_OPTIONAL",
    "sglang.srt.utils.auth:auth_level",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.root_node_handle",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.is_root",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.collect_path_info",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.build_storage_backup_spec",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.get_hash_values",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.is_backuped",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.is_full_device_evicted",
    "sglang.srt.mem_cache.rust_tree_core.adapter:RustUnifiedTreeCore.prefetch_anchor_info",
)

# Attributes read on SGLang's objects: ("module:Class", attribute names, who reads them).
# An attribute counts as present if the class (or a base) annotates it, has it, or assigns
# `self.<name>` in its source (`declares`).
READS = (
    ("sglang.srt.managers.schedule_batch:ScheduleBatch", ("forward_mode", "extend_num_tokens", "launch_ts"),
     "prefill_meter"),
    ("sglang.srt.server_args:ServerArgs",
     ("served_model_name", "model_path", "revision", "load_format", "dtype", "kv_cache_dtype", "quantization",
      "json_model_override_args", "quantization_param_path", "lora_paths", "tp_size", "dcp_size",
      "disable_overlap_schedule", "hicache_storage_backend", "hicache_storage_backend_extra_config",
      "enable_hierarchical_cache", "hicache_ratio", "hicache_size", "enable_unified_cache_external_linker",
      "unified_cache_external_linker_backend", "unified_cache_external_linker_config"),
     "rank, plugin, tree_endpoint, layerwise_linker"),
    ("sglang.srt.mem_cache.hicache_storage:HiCacheStorageConfig",
     ("extra_config", "is_mla_model", "tp_rank", "tp_size", "attn_cp_rank", "attn_cp_size", "dcp_rank",
      "dcp_size", "enable_storage_metrics"),
     "hicache_backend, rank"),
    ("sglang.srt.mem_cache.hicache_storage:HiCacheStorage", ("mem_pool_host", "registered_pools"),
     "hicache_backend"),
    ("sglang.srt.mem_cache.cache_init_params:CacheInitParams",
     ("token_to_kv_pool_allocator", "page_size", "attn_tp_cache_group", "tp_cache_group", "attn_cp_rank",
      "attn_cp_size"),
     "layerwise_linker, rank"),
    ("sglang.srt.mem_cache.pool_host.mha:MHATokenToKVPoolHost",
     ("layout", "page_size", "layer_num", "k_buffer", "v_buffer", "start_layer", "get_dummy_flat_data_page"),
     "hostpool (HostPages), rank, hicache_backend"),
    ("sglang.srt.mem_cache.pool_host.mla:MLATokenToKVPoolHost",
     ("layout", "page_size", "layer_num", "kv_buffer", "kv_cache_dim", "start_layer"),
     "hostpool (HostPages), rank"),
    ("sglang.srt.mem_cache.memory_pool:MHATokenToKVPool", ("k_buffer", "v_buffer", "start_layer"),
     "pool_view (device_pool_view), rank"),
    ("sglang.srt.mem_cache.memory_pool:MLATokenToKVPool", ("kv_buffer", "start_layer"),
     "pool_view (device_pool_view), rank"),
    ("sglang.srt.managers.cache_controller:HiCacheController",
     ("enable_storage", "storage_backend", "storage_stop_event", "page_get_func", "page_set_func"),
     "plugin, tree_endpoint"),
    ("sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache", ("linker", "tree_core", "page_size"),
     "recompute_hooks, treeview"),
    ("sglang.srt.mem_cache.unified_cache.unified_cache_linker:UnifiedCacheLinkerWrapper", ("cache_linker",),
     "recompute_hooks"),
    # (tree_endpoint also reads `dp_rank` with a default: 0.5.23's Scheduler has none, so null.)
    ("sglang.srt.managers.scheduler:Scheduler", ("tree_cache", "server_args"), "recompute_hooks, tree_endpoint"),
    ("sglang.srt.managers.schedule_batch:ScheduleBatch", ("reqs",), "recompute_hooks"),
    ("sglang.srt.observability.metrics_collector:StorageMetrics",
     ("prefetch_pgs", "backup_pgs", "prefetch_bandwidth", "backup_bandwidth"), "stats_bridge (in this order)"),
)

REQ = "sglang.srt.managers.schedule_batch:Req"
# The Req fields recompute_hooks.py writes, and those it reads.
REQ_WRITES = (
    "discard_output_reason", "is_retracted", "skip_radix_cache_insert", "retracted_stain", "cached_tokens",
    "cached_tokens_device", "cached_tokens_host", "cached_tokens_storage", "_cache_breakdown_computed",
)
REQ_READS = ("rid", "inflight_middle_chunks")


class IncompatibleSGLang(RuntimeError):
    pass


def hook_target(entry: str) -> str:
    """"module:Class.method" -> the dotted target HookRegistry takes."""
    mod, _, path = entry.partition(":")
    return f"{mod}.{path}"


def resolve(entry: str):
    """Import "module:attribute.path" and return the object (ImportError/AttributeError)."""
    mod, _, path = entry.partition(":")
    obj = importlib.import_module(mod)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def handlers(when: str) -> list[tuple[str, str, object]]:
    """(HookRegistry target, hook type name, our handler) of each hook registered `when`
    (one of `WHEN`), in the manifest's order. Imports the handlers' modules."""
    return [(hook_target(entry), kind, resolve(f"{__package__}.{handler}"))
            for entry, kind, handler, w, _why in HOOKS if w == when]


def register_hooks(registry, when: str) -> None:
    """Hand SGLang's HookRegistry every hook of the manifest registered `when`."""
    from sglang.srt.plugins.hook_registry import HookType

    for target, kind, fn in handlers(when):
        registry.register(target, fn, HookType[kind])


def declares(cls, name: str) -> bool:
    """Whether instances of `cls` have `name`: annotated, a class attribute, or assigned as
    `self.<name>` in the module source of the class or a base (a whole-file scan: cheap
    enough for every process start, and it errs towards present)."""
    if hasattr(cls, name):
        return True
    pattern = re.compile(r"\bself\.%s\s*(?::[^=\n]*)?=(?!=)" % re.escape(name))
    for c in getattr(cls, "__mro__", (cls,)):
        if name in getattr(c, "__annotations__", {}):
            return True
        src = _module_source(c.__module__)
        if src and pattern.search(src):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _module_source(module: str) -> str:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path or not path.endswith(".py"):
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _entry_problem(entry: str):
    try:
        resolve(entry)
    except ImportError as e:  # the module itself does not import: say why
        return f"{entry.partition(':')[0]} ({type(e).__name__}: {e})"
    except AttributeError:
        return hook_target(entry)
    return None


def missing() -> list[str]:
    """Every manifest item the installed sglang lacks (empty: all present)."""
    out: list[str] = []
    for entry in list(dict.fromkeys(h[0] for h in HOOKS)) + list(USES):
        problem = _entry_problem(entry)
        if problem and problem not in out:
            out.append(problem)
    for mod, _why in PATCHED:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            out.append(f"{mod} ({type(e).__name__}: {e})")
    try:
        from sglang.srt.arg_groups import resolution_hooks

        steps = getattr(resolution_hooks, "_OVERRIDABLE_HOOKS", None)
        out += [f"resolution step {name}" for name, _why in RESOLUTION_HOOKS if steps is not None and name not in steps]
    except ImportError as e:
        out.append(f"sglang.srt.arg_groups.resolution_hooks ({type(e).__name__}: {e})")
    for cls_entry, names, _who in READS + ((REQ, REQ_WRITES + REQ_READS, "recompute_hooks"),):
        try:
            cls = resolve(cls_entry)
        except (ImportError, AttributeError):
            problem = _entry_problem(cls_entry)
            if problem not in out:
                out.append(problem)
            continue
        out += [f"{hook_target(cls_entry)}.{n}" for n in names if not declares(cls, n)]
    return out


def installed_version():
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001 - not installed at all
        return None


def check() -> None:
    """Raise IncompatibleSGLang naming the version found, the one supported and what is missing."""
    found = installed_version()
    if found is None:
        raise IncompatibleSGLang("objectcache needs sglang==%s; sglang is not installed" % SUPPORTED_SGLANG)
    gaps = missing()
    if found != SUPPORTED_SGLANG or gaps:
        raise IncompatibleSGLang(
            f"objectcache supports sglang=={SUPPORTED_SGLANG} only; found sglang=={found}"
            + (f", missing internals: {', '.join(gaps)}" if gaps else "")
            + ". Pin sglang==%s, or use --hicache-storage-backend dynamic "
            "(see docs/usage.md, 'Without the plugin')." % SUPPORTED_SGLANG
        )
