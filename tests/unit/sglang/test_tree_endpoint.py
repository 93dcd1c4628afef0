"""The tree endpoint: parameters and caps, SGLang's auth convention, previews; off by default,
the admin key for prompt content, the scheduler hook's same rule."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tree_cores import insert_host, rust_core

from sglang_objectcache.sglang import treeview


def test_endpoint_parameters_are_validated_and_capped():
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    class Tok:
        def encode(self, text):
            return [len(w) for w in text.split()]

    assert endpoint.parse_params({"prefix": "ab c", "max_nodes": "7", "keys": "false"}, Tok()) == \
        {"prefix_ids": [2, 1], "max_nodes": 7, "keys": False}
    assert endpoint.parse_params({"prefix_ids": "1,2,3"})["prefix_ids"] == [1, 2, 3]
    for bad in ({"max_nodes": "x"}, {"store": "all"}, {"prefix_ids": "1,a"}):
        with pytest.raises(ValueError):
            endpoint.parse_params(bad)
    q = treeview.Query.from_dict({"max_nodes": 10**9, "max_bytes": 10**12, "preview_tokens": 10**6})
    assert (q.max_nodes, q.max_bytes, q.preview_tokens) == (treeview.MAX_NODES_CAP, treeview.MAX_BYTES_CAP,
                                                            treeview.PREVIEW_TOKENS_CAP)


def test_endpoint_follows_sglang_admin_key_convention():
    """SGLang's own auth middleware, our route: with --admin-api-key the key is required."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sglang.srt.utils.auth import add_api_key_middleware

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    app = FastAPI()
    app.add_api_route(endpoint.ROUTE, endpoint.tree_endpoint, methods=["GET"])
    add_api_key_middleware(app, api_key="user-key", admin_api_key="admin-key")
    with TestClient(app) as c:
        assert c.get(endpoint.ROUTE).status_code == 401
        assert c.get(endpoint.ROUTE, headers={"Authorization": "Bearer user-key"}).status_code == 401
        # Past auth, this bare app has no SGLang behind it: 503 "not ready", not 401.
        assert c.get(endpoint.ROUTE, headers={"Authorization": "Bearer admin-key"}).status_code == 503
        # Read-only: no other method is routed.
        assert c.post(endpoint.ROUTE, headers={"Authorization": "Bearer user-key"}).status_code == 405


def test_previews_are_decoded_or_withheld():
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    class Tok:
        def decode(self, ids):
            return "-".join(map(str, ids))

    tree = {"nodes": [{"preview_ids": [1, 2]}, {"preview_ids": None}]}
    assert [n["preview"] for n in endpoint.decorate(json.loads(json.dumps(tree)), Tok(), False)["nodes"]] == ["1-2", None]
    hidden = endpoint.decorate(json.loads(json.dumps(tree)), Tok(), True)
    assert [n["preview"] for n in hidden["nodes"]] == [None, None] and "admin-api-key" in hidden["redacted"]


class _Registry:
    def __init__(self):
        self.calls = []

    def register(self, target, fn, kind):
        self.calls.append((target, fn))


def _objectcache_args(**kw):
    return SimpleNamespace(**{
        "hicache_storage_backend": "objectcache", "hicache_storage_backend_extra_config": {"bucket": "b"},
        "enable_unified_cache_external_linker": False, "unified_cache_external_linker_backend": None,
        "unified_cache_external_linker_config": None, "api_key": None, "admin_api_key": None, **kw})


def test_tree_route_is_off_by_default_and_only_on_objectcache_servers(tiny_model, monkeypatch, tmp_path):
    from fastapi import FastAPI
    from sglang.srt.entrypoints import http_server
    from sglang.srt.server_args import ServerArgs

    from sglang_objectcache.sglang import inspect_hooks as hooks, tree_endpoint as endpoint

    monkeypatch.delenv(endpoint.ENV, raising=False)
    reg = _Registry()
    hooks.register(reg)  # this (pytest) process is what the plugin takes for SGLang's HTTP process
    # Always registered: on or off is the objectcache config's, known only from the server args.
    assert [fn for _, fn in reg.calls] == [endpoint.add_routes]

    def routes_after(server_args) -> list[str]:
        app = FastAPI()
        monkeypatch.setattr(http_server, "app", app)
        endpoint.add_routes(server_args, None, None, None, [{}], None)
        return [r.path for r in app.router.routes if r.path == endpoint.ROUTE]

    plain = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native")
    plain.resolve_once()
    assert routes_after(plain) == [] and routes_after(_objectcache_args()) == []  # no field, no env: off
    on = {"bucket": "b", "tree_endpoint": True}
    assert routes_after(_objectcache_args(hicache_storage_backend_extra_config=on)) == [endpoint.ROUTE]
    assert routes_after(_objectcache_args(hicache_storage_backend_extra_config=json.dumps(on))) == [endpoint.ROUTE]
    assert routes_after(_objectcache_args(hicache_storage_backend_extra_config={"tree_endpoint": True})) == []  # invalid

    monkeypatch.setenv(endpoint.ENV, "1")  # the config's environment overlay
    assert routes_after(plain) == []  # plugin installed, objectcache not used: 404
    assert routes_after(_objectcache_args()) == [endpoint.ROUTE]
    off = {"bucket": "b", "tree_endpoint": False}
    assert routes_after(_objectcache_args(hicache_storage_backend_extra_config=off)) == []  # the config wins
    layerwise = _objectcache_args()
    layerwise.hicache_storage_backend = None
    layerwise.enable_unified_cache_external_linker = True
    layerwise.unified_cache_external_linker_backend = "dynamic"
    layerwise.unified_cache_external_linker_config = {"linker": "ObjectCacheLinker",
                                                      "linker_module_path": "sglang_objectcache.sglang.layerwise_linker",
                                                      "linker_extra_config": {"bucket": "b"}}
    assert routes_after(layerwise) == [endpoint.ROUTE]
    monkeypatch.delenv(endpoint.ENV)
    assert routes_after(layerwise) == []
    path = tmp_path / "oc.json"  # the plugin's layerwise form: the config file's path, never its contents
    path.write_text(json.dumps(on))
    layerwise.unified_cache_external_linker_config["linker_extra_config"] = {"objectcache_config": f"@{path}"}
    assert routes_after(layerwise) == [endpoint.ROUTE]


class _TM:
    """The tokenizer manager as the route sees it: one scheduler's reply, the body it was sent."""

    def __init__(self):
        self.bodies = []
        self.tokenizer = SimpleNamespace(encode=lambda text: [len(w) for w in text.split()],
                                         decode=lambda ids: "-".join(map(str, ids)))

    async def dumper_control(self, req):
        self.bodies.append(dict(req.body))
        tree = {"nodes": [{"id": 1, "preview_ids": [1, 2, 3], "object_keys": ["k"]}]}
        return [SimpleNamespace(success=True, response=[tree], error=None)]


def _client(monkeypatch, api_key, admin_api_key):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sglang.srt import runtime_context
    from sglang.srt.entrypoints import http_server
    from sglang.srt.utils.auth import add_api_key_middleware

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    tm = _TM()
    monkeypatch.setattr(http_server, "get_global_state", lambda: SimpleNamespace(tokenizer_manager=tm))
    monkeypatch.setattr(runtime_context, "get_serving",
                        lambda: SimpleNamespace(api_key=api_key, admin_api_key=admin_api_key))
    app = FastAPI()
    app.add_api_route(endpoint.ROUTE, endpoint.tree_endpoint, methods=["GET"])
    add_api_key_middleware(app, api_key=api_key, admin_api_key=admin_api_key)
    return TestClient(app), tm


def test_tree_with_only_api_key_refuses_prefix_queries_and_previews(monkeypatch):
    from sglang_objectcache.sglang import tree_endpoint as endpoint

    user = {"Authorization": "Bearer user-key"}
    c, tm = _client(monkeypatch, "user-key", None)
    with c:
        for q in ({"prefix_ids": "1,2,3,4"}, {"prefix": "is this prompt cached"}):
            r = c.get(endpoint.ROUTE, params=q, headers=user)
            assert r.status_code == 403 and "admin-api-key" in r.json()["error"]
        assert tm.bodies == []  # refused before the scheduler is asked
        r = c.get(endpoint.ROUTE, params={"preview_tokens": "24", "keys": "true"}, headers=user)
        assert r.status_code == 200
        assert tm.bodies[-1]["preview_tokens"] == 0 and tm.bodies[-1]["keys"] is False
        (node,) = r.json()["trees"][0]["nodes"]
        assert node["preview"] is None and "object_keys" not in node
        assert "admin-api-key" in r.json()["trees"][0]["redacted"]

    c, tm = _client(monkeypatch, None, None)  # no key at all: prompt content needs the admin key too
    with c:
        assert c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4"}).status_code == 403
        assert c.get(endpoint.ROUTE).json()["trees"][0]["nodes"][0]["preview"] is None

    c, tm = _client(monkeypatch, "user-key", "admin-key")
    with c:
        assert c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4"}, headers=user).status_code == 401
        r = c.get(endpoint.ROUTE, params={"prefix_ids": "1,2,3,4", "cache_salt": "t1"},
                  headers={"Authorization": "Bearer admin-key"})
        assert r.status_code == 200 and r.json()["trees"][0]["nodes"][0]["preview"] == "1-2-3"
        assert tm.bodies[-1]["prefix_ids"] == [1, 2, 3, 4] and tm.bodies[-1]["cache_salt"] == "t1"


def test_tree_scheduler_hook_applies_the_same_rule(monkeypatch):
    """SGLang's /dumper/{method} (DUMPER_SERVER_PORT=reuse) reaches the scheduler hook directly."""
    from sglang.srt.managers.io_struct import DumperControlReqInput

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    core = rust_core()
    insert_host(core, list(range(8)))
    sent, passed = [], []
    sched = SimpleNamespace(
        tree_cache=SimpleNamespace(tree_core=core, page_size=4), dp_rank=0,
        server_args=_objectcache_args(api_key="user-key"),
        ipc_channels=SimpleNamespace(send_to_tokenizer=SimpleNamespace(send_output=lambda out, req: sent.append(out))))

    def original(self, req):
        passed.append(req)

    ask = DumperControlReqInput(method=endpoint.METHOD, body={"prefix_ids": list(range(8))})
    monkeypatch.delenv(endpoint.ENV, raising=False)
    endpoint.scheduler_dispatch(original, sched, ask)
    assert passed == [ask] and sent == []  # off: SGLang's own dumper answers (unknown method)

    monkeypatch.setenv(endpoint.ENV, "1")
    endpoint.scheduler_dispatch(original, sched, ask)
    assert not sent[-1].success and "admin-api-key" in sent[-1].error
    endpoint.scheduler_dispatch(original, sched, DumperControlReqInput(method=endpoint.METHOD, body={}))
    (snap,) = sent[-1].response
    assert sent[-1].success and all(n["preview_ids"] is None for n in snap["nodes"]) and snap["nodes"]

    sched.server_args = _objectcache_args(api_key="user-key", admin_api_key="admin-key")
    endpoint.scheduler_dispatch(original, sched, ask)
    assert sent[-1].success and sent[-1].response[0]["query"]["tree_tokens"] == 8

    sched.server_args.hicache_storage_backend = "file"  # not an objectcache server
    endpoint.scheduler_dispatch(original, sched, ask)
    assert passed[-1] is ask and len(passed) == 2
