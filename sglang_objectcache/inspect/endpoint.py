"""`GET /objectcache/tree`: the radix tree with tier residency, served by SGLang's own HTTP server.

The tree lives in the scheduler process and HTTP lives in the launcher. The request crosses
on SGLang's generic control channel, `DumperControlReqInput(method, body)` ->
`DumperControlReqOutput(success, response: list[dict])`: the tokenizer manager fans it out
to every data-parallel scheduler and gathers one reply each. The plugin hooks the
scheduler's `handle_dumper_control` and answers `method == "objectcache.tree"` itself;
every other method goes to SGLang as before.

Contract of the endpoint:
- GET only, read-only (see `treeview`), bounded: `max_nodes` <= 10,000 and `max_bytes`
  <= 8 MiB per scheduler, `preview_tokens` <= 256.
- Auth is SGLang's `AuthLevel.ADMIN_OPTIONAL`, as for `/hicache/storage-backend*`: with
  `--admin-api-key` the admin key is required; with only `--api-key`, that key. Token ids
  and text previews are prompt content: with `--api-key` but no `--admin-api-key` they are
  withheld (any API user could read other users' prompts otherwise).
- Query parameters: `max_nodes`, `max_bytes`, `max_depth`, `preview_tokens`, `keys`
  (object keys per node, default true), `store=known|head`, `prefix` (text, tokenized with
  the server's tokenizer) or `prefix_ids` (comma-separated token ids).
- Reply: `{"version": 1, "trees": [snapshot per scheduler]}`; each node's `preview` is its
  first tokens decoded. Errors: 400 for bad parameters, 500 with the scheduler's message.
- Only single-tokenizer mode (the default): with `--tokenizer-worker-num > 1` the uvicorn
  workers are separate processes the plugin does not reach, and the route is absent (404).
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from sglang_objectcache.inspect import treeview

logger = logging.getLogger(__name__)

ROUTE = "/objectcache/tree"
METHOD = "objectcache.tree"
_INT_PARAMS = ("max_nodes", "max_bytes", "max_depth", "preview_tokens")


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
    from sglang.srt.managers.io_struct import DumperControlReqOutput

    try:
        query = treeview.Query.from_dict(dict(recv_req.body or {}))
        snap = treeview.snapshot(self.tree_cache, find_backend(self.tree_cache), query)
        snap["dp_rank"] = getattr(self, "dp_rank", None)
        out = DumperControlReqOutput(success=True, response=[snap])
    except Exception as e:  # noqa: BLE001 - the HTTP caller gets the reason, the server lives on
        logger.exception("objectcache: tree snapshot failed")
        out = DumperControlReqOutput(success=False, response=[], error=f"{type(e).__name__}: {e}")
    self.ipc_channels.send_to_tokenizer.send_output(out, recv_req)


# ---- HTTP server process -----------------------------------------------------------------


def add_routes(*args, **kwargs):
    """BEFORE hook on http_server._setup_and_run_http_server: add the route once."""
    try:
        from sglang.srt.entrypoints import http_server

        app = http_server.app
        if not any(getattr(r, "path", None) == ROUTE for r in app.router.routes):
            app.add_api_route(ROUTE, tree_endpoint, methods=["GET"])
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
            continue
        node["preview"] = tokenizer.decode(ids) if (tokenizer is not None and ids is not None) else None
    if redact:
        tree["redacted"] = "token text is withheld: set --admin-api-key to see it"
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
    serving = get_serving()
    redact = bool(serving.api_key) and not serving.admin_api_key
    try:
        body = parse_params(request.query_params, tokenizer)
    except ValueError as e:
        return _json({"error": str(e)}, 400)
    if redact:
        body["preview_tokens"] = 0
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
