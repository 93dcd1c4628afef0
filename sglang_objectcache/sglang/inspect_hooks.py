"""The hooks of the inspection features (the tree endpoint) into SGLang, per process.

Called once from the plugin's `register()` in every SGLang process; each hook is registered
only in the process that needs it, so no process imports more than it uses. The hooks are
rows of the manifest's table (`compat.HOOKS`, when "scheduler" or "http"):

    process      target                                                   hook     for
    scheduler    managers.scheduler.Scheduler.handle_dumper_control        AROUND   tree request
    scheduler    rust_tree_core.adapter.RustUnifiedTreeCore.{match_prefix, AFTER    node handles
                 begin_insert, resume_insert, insert_host}                          (treeview)
    launcher     entrypoints.http_server._setup_and_run_http_server        BEFORE   the route

None of these is required for caching, but all are in the manifest, so the plugin's check
names a missing one at startup like any other; were one to fail to apply anyway, SGLang's
HookRegistry logs it, the feature is absent, and storage keeps working.

Whether the endpoint is on is the objectcache config's `tree_endpoint` (or its environment
overlay, OBJECTCACHE_TREE_ENDPOINT=1), which is known only from the server args, and SGLang
loads plugins before it has them (the launcher before it parses the command line, the
scheduler before it publishes them). So the hooks are always registered, and each decides
when it runs (`tree_endpoint.enabled(server_args)`): the route is added only on a server
that uses objectcache with the endpoint on, and the scheduler hook answers only there.
Noting a Rust core's node handles costs a dict lookup per tree operation, on or off.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys

logger = logging.getLogger(__name__)

SCHEDULER_MODULE = "sglang.srt.managers.scheduler"


def in_scheduler_process() -> bool:
    # run_scheduler_process (in that module) calls load_plugins, so it is loaded by then;
    # the detokenizer never imports it.
    return multiprocessing.parent_process() is not None and SCHEDULER_MODULE in sys.modules


def in_http_process() -> bool:
    return multiprocessing.parent_process() is None


def register(registry) -> None:
    from sglang_objectcache.sglang import compat

    if in_scheduler_process():
        compat.register_hooks(registry, "scheduler")
    if in_http_process():
        compat.register_hooks(registry, "http")


def note_handles(result, core, *args, **kwargs):
    """AFTER hook: remember the highest node handle a Rust core has returned."""
    from sglang_objectcache.sglang import treecores

    try:
        r = getattr(result, "result", result)  # an insert step wraps its InsertResult
        if r is not None:
            treecores.note_ids(core, *(getattr(r, f, None) for f in (
                "last_device_node", "last_host_node", "best_match_node", "last_visited_node_id",
                "inserted_host_node")))
    except Exception:  # noqa: BLE001 - never fail a tree operation over bookkeeping
        logger.exception("objectcache: could not note tree handles")
    return None
