"""`GET /objectcache/tree`: the radix tree with tier residency, served by SGLang's own HTTP server.

The tree lives in the scheduler process and HTTP lives in the launcher. The request crosses
on SGLang's generic control channel, `DumperControlReqInput(method, body)` ->
`DumperControlReqOutput(success, response: list[dict])`: the tokenizer manager fans it out
to every data-parallel scheduler and gathers one reply each. The plugin hooks the
scheduler's `handle_dumper_control` and answers `method == "objectcache.tree"` itself;
every other method goes to SGLang as before.

Contract of the endpoint:
- Off unless enabled: the route exists only when the server uses objectcache
  (`--hicache-storage-backend objectcache`, the `dynamic` backend with an objectcache
  `module_path`, or the layerwise linker) AND its objectcache config says `tree_endpoint:
  true` (or, where the config does not set it, the environment has
  `OBJECTCACHE_TREE_ENDPOINT=1`: the config's overlay); otherwise 404, and the scheduler
  hook answers nothing either. Both processes read the config from their server args, as
  the backend or linker does (`enabled`).
- GET only, read-only (see `treeview`), bounded: `max_nodes` <= 10,000 and `max_bytes`
  <= 8 MiB per scheduler, `preview_tokens` <= 256, one HEAD batch (`store=head`).
- Auth is SGLang's `AuthLevel.ADMIN_OPTIONAL`, as for `/hicache/storage-backend*`: with
  `--admin-api-key` the admin key is required; with only `--api-key`, that key; with no key
  at all, none. Prompt content needs `--admin-api-key` configured (and then sent): without
  it, text previews and object keys (hashes of the prompt) are withheld, and a prefix query
  is refused (403); any API user could otherwise read, or probe for, other users' prompts.
  The scheduler applies the same rule, so SGLang's `/dumper/{method}` cannot get around it.
- Query parameters: `max_nodes`, `max_bytes`, `max_depth`, `preview_tokens`, `keys`
  (object keys per node, default true), `store=known|head`, `prefix` (text, tokenized with
  the server's tokenizer) or `prefix_ids` (comma-separated token ids), and the prefix's
  namespace, `cache_salt` and `extra_key` (as in the request that would use it): a prefix
  matches only nodes of that namespace (default: no salt, no extra key).
- Reply: `{"version": 1, "trees": [snapshot per scheduler]}`; each node's `preview` is its
  first tokens decoded. Errors: 400 for bad parameters, 500 with the scheduler's message.
- Only single-tokenizer mode (the default): with `--tokenizer-worker-num > 1` the uvicorn
  workers are separate processes the plugin does not reach, and the route is absent (404).
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from sglang_objectcache.sglang import treeview

logger = logging.getLogger(__name__)

ROUTE = "/objectcache/tree"
METHOD = "objectcache.tree"
_INT_PARAMS = ("max_nodes", "max_bytes", "max_depth", "preview_tokens")
ENV = "OBJECTCACHE_TREE_ENDPOINT"  # the config's environment overlay of `tree_endpoint`
NEEDS_ADMIN = ("prefix queries need --admin-api-key: start the server with it and pass that key "
               "(a prefix query tells whether a prompt was sent)")
WITHHELD = "token text and object keys are withheld: set --admin-api-key (and pass it) to see them"


def _arg(server_args, name):
    """A server arg as SGLang resolved it (a resolution hook's rewrite included)."""
    try:
        from sglang.srt.arg_groups.overrides import resolution_result

        return resolution_result(server_args, name)
    except Exception:  # noqa: BLE001 - not a ServerArgs record (tests) or another SGLang
        return getattr(server_args, name, None)


def _objectcache_extra(server_args):
    """The extra config this server passes objectcache (a dict, JSON text or "@path"; {} if
    none), or None if the server does not store KV with objectcache: page mode (the backend
    by name, or SGLang's `dynamic` backend pointed at our module) or layerwise mode (our linker)."""
    from sglang_objectcache.config import load_dict

    if server_args is None:
        return None
    backend = _arg(server_args, "hicache_storage_backend")
    if backend in ("objectcache", "dynamic"):
        text = _arg(server_args, "hicache_storage_backend_extra_config") or {}
        if backend == "objectcache":
            return text
        try:
            extra = load_dict(text)
        except Exception:  # noqa: BLE001 - unreadable: SGLang itself will say so
            extra = {}
        if str(extra.get("module_path", "")).startswith("sglang_objectcache"):
            return extra
    if _arg(server_args, "enable_unified_cache_external_linker") and \
            _arg(server_args, "unified_cache_external_linker_backend") == "dynamic":
        cfg = _arg(server_args, "unified_cache_external_linker_config")
        if isinstance(cfg, dict) and str(cfg.get("linker_module_path", "")).startswith("sglang_objectcache"):
            return cfg.get("linker_extra_config") or {}
    return None


def uses_objectcache(server_args) -> bool:
    """Whether this server stores KV with objectcache (in either mode)."""
    return _objectcache_extra(server_args) is not None


def enabled(server_args) -> bool:
    """Whether this server serves the endpoint: it uses objectcache, and the objectcache
    config it passes (read as its backend or linker reads it, environment overlay included)
    says `tree_endpoint`. A config that does not parse means no endpoint: the backend or
    linker refuses to start on it anyway."""
    from sglang_objectcache.config import ObjectCacheConfig, load_dict

    extra = _objectcache_extra(server_args)
    if extra is None:
        return False
    try:
        extra = load_dict(extra)
        if set(extra) == {"objectcache_config"}:  # the plugin's layerwise form: "@path"
            extra = load_dict(extra["objectcache_config"])
        return ObjectCacheConfig.from_dict(extra).tree_endpoint
    except Exception:  # noqa: BLE001 - see above
        return False


def admin_key_set(server_args) -> bool:
    return bool(_arg(server_args, "admin_api_key"))


def restrict(body: dict, admin: bool) -> dict:
    """The prompt-content rule on a request body. Raises PermissionError for a prefix query
    without an admin key; otherwise withholds previews and object keys."""
    if admin:
        return body
    if body.get("prefix_ids"):
        raise PermissionError(NEEDS_ADMIN)
    return {**body, "preview_tokens": 0, "keys": False}


# ---- scheduler process -------------------------------------------------------------------


def find_backend(tree_cache):
    """The ObjectCacheStorage behind this tree (through SGLang's wrappers), or None."""
    from sglang_objectcache import runtime

    b = getattr(getattr(tree_cache, "cache_controller", None), "storage_backend", None)
    for _ in range(4):  # e.g. SGLang's failure-injection wrapper keeps the real one in _backend
        if b is None or (hasattr(b, "keys") and hasattr(b, "known")):
            break
        b = getattr(b, "_backend", None)
    if b is not None and hasattr(b, "keys") and hasattr(b, "known"):
        return b
    live = [x for x in runtime.instances() if hasattr(x, "keys") and hasattr(x, "known")]
    return live[0] if len(live) == 1 else None


def scheduler_dispatch(original, self, recv_req):
    """AROUND hook on Scheduler.handle_dumper_control."""
    if getattr(recv_req, "method", None) != METHOD:
        return original(self, recv_req)
    server_args = getattr(self, "server_args", None)
    if not enabled(server_args):
        return original(self, recv_req)
    from sglang.srt.managers.io_struct import DumperControlReqOutput

    try:
        # Again here: SGLang's /dumper/{method} route reaches this hook without ours.
        body = restrict(dict(recv_req.body or {}), admin_key_set(server_args))
        query = treeview.Query.from_dict(body)
        snap = treeview.snapshot(self.tree_cache, find_backend(self.tree_cache), query)
        snap["dp_rank"] = getattr(self, "dp_rank", None)
        out = DumperControlReqOutput(success=True, response=[snap])
    except PermissionError as e:
        out = DumperControlReqOutput(success=False, response=[], error=str(e))
    except Exception as e:  # noqa: BLE001 - the HTTP caller gets the reason, the server lives on
        logger.exception("objectcache: tree snapshot failed")
        out = DumperControlReqOutput(success=False, response=[], error=f"{type(e).__name__}: {e}")
    self.ipc_channels.send_to_tokenizer.send_output(out, recv_req)


# ---- HTTP server process -----------------------------------------------------------------


def add_routes(*args, **kwargs):
    """BEFORE hook on http_server._setup_and_run_http_server(server_args, ...): add the route
    once, if this server uses objectcache with `tree_endpoint` on (`enabled`)."""
    try:
        server_args = args[0] if args else kwargs.get("server_args")
        if server_args is None:
            from sglang.srt.runtime_context import get_server_args

            server_args = get_server_args()
        if not enabled(server_args):
            return None
        from sglang.srt.entrypoints import http_server

        app = http_server.app
        if not any(getattr(r, "path", None) == ROUTE for r in app.router.routes):
            app.add_api_route(ROUTE, tree_endpoint, methods=["GET"])
            logger.info("objectcache: %s enabled (tree_endpoint)", ROUTE)
    except Exception:  # noqa: BLE001 - a missing debug route must not stop the server
        logger.exception("objectcache: could not add %s", ROUTE)
    return None


def parse_params(params, tokenizer=None) -> dict:
    """Query parameters -> the scheduler's request body. Raises ValueError on bad input."""
    body: dict = {}
    for name in _INT_PARAMS:
        if params.get(name) not in (None, ""):
            try:
                body[name] = int(params[name])
            except ValueError:
                raise ValueError(f"{name}: expected an integer, got {params[name]!r}") from None
    if "keys" in params:
        body["keys"] = str(params["keys"]).lower() not in ("0", "false", "no")
    if params.get("store"):
        body["store"] = params["store"]
    for name in ("cache_salt", "extra_key"):
        if params.get(name) is not None:
            body[name] = str(params[name])
    if params.get("prefix_ids"):
        try:
            body["prefix_ids"] = [int(t) for t in str(params["prefix_ids"]).split(",") if t.strip()]
        except ValueError:
            raise ValueError("prefix_ids: expected comma-separated integers") from None
    elif params.get("prefix"):
        if tokenizer is None:
            raise ValueError("prefix: this server has no tokenizer (--skip-tokenizer-init); use prefix_ids")
        body["prefix_ids"] = list(tokenizer.encode(params["prefix"]))
    if len(body.get("prefix_ids", ())) > treeview.QUERY_TOKENS_CAP:
        raise ValueError(f"prefix: at most {treeview.QUERY_TOKENS_CAP} tokens")
    treeview.Query.from_dict(body)  # same validation the scheduler applies
    return body


def decorate(tree: dict, tokenizer, redact: bool) -> dict:
    """Turn preview token ids into text (or withhold both)."""
    for node in tree.get("nodes", ()):
        ids = node.pop("preview_ids", None)
        if redact:
            node["preview"] = None
            node.pop("object_keys", None)  # the scheduler sends none then; never pass them on
            continue
        node["preview"] = tokenizer.decode(ids) if (tokenizer is not None and ids is not None) else None
    if redact:
        (tree.get("query") or {}).pop("object_keys", None)
        tree["redacted"] = WITHHELD
    return tree


def _json(data, status_code: int = 200):
    import orjson
    from starlette.responses import Response

    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


async def tree_endpoint(request: Request):
    from sglang.srt.entrypoints import http_server
    from sglang.srt.managers.io_struct import DumperControlReqInput
    from sglang.srt.runtime_context import get_serving

    state = http_server.get_global_state()
    tm = getattr(state, "tokenizer_manager", None)
    if tm is None:
        return _json({"error": "server is not ready"}, 503)
    tokenizer = getattr(tm, "tokenizer", None)
    redact = not get_serving().admin_api_key
    if redact and (request.query_params.get("prefix") or request.query_params.get("prefix_ids")):
        return _json({"error": NEEDS_ADMIN}, 403)
    try:
        body = restrict(parse_params(request.query_params, tokenizer), not redact)
    except ValueError as e:
        return _json({"error": str(e)}, 400)
    except PermissionError as e:
        return _json({"error": str(e)}, 403)
    results = await tm.dumper_control(DumperControlReqInput(method=METHOD, body=body))
    errors = [r.error for r in results if not r.success]
    if errors:
        return _json({"error": errors}, 500)
    trees = [decorate(t, tokenizer, redact) for r in results for t in r.response]
    return _json({"version": 1, "trees": trees})


def _mark_admin_optional(fn):
    try:
        from sglang.srt.utils.auth import AuthLevel, auth_level
    except ImportError:  # SGLang without per-endpoint auth levels: NORMAL (api-key) auth
        return fn
    return auth_level(AuthLevel.ADMIN_OPTIONAL)(fn)


tree_endpoint = _mark_admin_optional(tree_endpoint)
