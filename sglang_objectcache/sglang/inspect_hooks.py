"""Every hook the inspection features (tree endpoint, access log, metrics) put into SGLang.

Called once from the plugin's `register()` in every SGLang process; each hook is
registered only in the process that needs it, so no process imports more than it uses:

    process      target                                                   hook     for
    scheduler    managers.scheduler.Scheduler.handle_dumper_control        AROUND   tree request
    scheduler    rust_tree_core.adapter.RustUnifiedTreeCore.{match_prefix, AFTER    node handles
                 begin_insert, resume_insert, insert_host}                          (treeview)
    launcher     entrypoints.http_server._setup_and_run_http_server        BEFORE   the route

None of these is required for caching, but all are listed in the manifest (`compat.HOOKS`),
so the plugin's check names a missing one at startup like any other; were one to fail to
apply anyway, SGLang's HookRegistry logs it, the feature is absent, and storage keeps working.

The tree endpoint is off unless the server's environment has OBJECTCACHE_TREE_ENDPOINT=1:
without it none of these hooks is registered. With it, the route is added only if the
server uses objectcache (decided from its server args when the HTTP server starts), and
the scheduler hook answers only on such a server (`tree_endpoint.uses_objectcache`).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys

logger = logging.getLogger(__name__)

SCHEDULER_MODULE = "sglang.srt.managers.scheduler"
RUST_CORE = "sglang.srt.mem_cache.rust_tree_core.adapter.RustUnifiedTreeCore"


def in_scheduler_process() -> bool:
    # run_scheduler_process (in that module) calls load_plugins, so it is loaded by then;
    # the detokenizer never imports it.
    return multiprocessing.parent_process() is not None and SCHEDULER_MODULE in sys.modules


def in_http_process() -> bool:
    return multiprocessing.parent_process() is None


def register(registry) -> None:
    from sglang.srt.plugins.hook_registry import HookType

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    if not endpoint.enabled():
        return
    if in_scheduler_process():
        registry.register(f"{SCHEDULER_MODULE}.Scheduler.handle_dumper_control",
                          endpoint.scheduler_dispatch, HookType.AROUND)
        for method in ("match_prefix", "begin_insert", "resume_insert", "insert_host"):
            registry.register(f"{RUST_CORE}.{method}", note_handles, HookType.AFTER)
    if in_http_process():
        registry.register("sglang.srt.entrypoints.http_server._setup_and_run_http_server",
                          endpoint.add_routes, HookType.BEFORE)


def note_handles(result, core, *args, **kwargs):
    """AFTER hook: remember the highest node handle a Rust core has returned."""
    from sglang_objectcache.sglang import treeview

    try:
        r = getattr(result, "result", result)  # an insert step wraps its InsertResult
        if r is not None:
            treeview.note_ids(core, *(getattr(r, f, None) for f in (
                "last_device_node", "last_host_node", "best_match_node", "last_visited_node_id",
                "inserted_host_node")))
    except Exception:  # noqa: BLE001 - never fail a tree operation over bookkeeping
        logger.exception("objectcache: could not note tree handles")
    return None
