"""The plugin against SGLang 0.5.23's real machinery: version check, argparse, factory,
zero-copy path selection, and the layerwise flag rewrite. No server is started."""

from __future__ import annotations

import argparse
import json
import threading
from types import SimpleNamespace

import pytest
import torch
from pools import make_pools

import sglang_objectcache.plugin as plugin


@pytest.fixture(scope="module", autouse=True)
def loaded():
    from sglang.srt.plugins import load_plugins

    load_plugins()  # what every SGLang process does: runs our entry point, applies hooks


def test_check_passes_on_the_pinned_sglang():
    plugin.check_sglang()


def test_other_sglang_versions_fail_with_one_clear_message(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.24")
    with pytest.raises(plugin.IncompatibleSGLang, match=r"supports sglang==0\.5\.23 only; found sglang==0\.5\.24"):
        plugin.check_sglang()


def test_a_missing_internal_is_named(monkeypatch):
    monkeypatch.setattr(plugin, "REQUIRED", plugin.REQUIRED + (("sglang.srt.server_args", "ServerArgs.no_such_hook"),))
    with pytest.raises(plugin.IncompatibleSGLang, match="missing internals: sglang.srt.server_args.ServerArgs.no_such_hook"):
        plugin.check_sglang()


def test_cli_accepts_objectcache():
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(["--model-path", "m", "--hicache-storage-backend", "objectcache"])
    assert ns.hicache_storage_backend == "objectcache"


def test_factory_builds_the_backend(s3_config):
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
    from test_backend import storage_config

    from sglang_objectcache.backend import ObjectCacheStorage

    _, host = make_pools("mha", "layer_first", torch.bfloat16, 4)
    backend = StorageBackendFactory.create_backend("objectcache", storage_config(s3_config), host)
    assert isinstance(backend, ObjectCacheStorage) and backend.pages is not None
    backend.close()


def test_controller_selects_the_zero_copy_path(monkeypatch):
    from sglang.srt.managers import cache_controller
    from sglang.srt.managers.cache_controller import HiCacheController
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    class Backend:
        def register_mem_pool_host(self, pool):
            self.pool = pool

        def on_host_pools_registered(self):
            pass

    monkeypatch.setattr(StorageBackendFactory, "create_backend", classmethod(lambda cls, *a, **k: Backend()))
    monkeypatch.setattr(cache_controller, "get_parallel", lambda: SimpleNamespace(attn_dcp_size=1))
    _, host = make_pools("mha", "layer_first", torch.bfloat16, 4)
    c = object.__new__(HiCacheController)
    c.enable_storage = False
    c.storage_stop_event = threading.Event()
    c.storage_host_pool = c.mem_pool_host = host
    c.host_memory_mode = "cache"
    c.page_size = 4
    c._stop_storage_threads = c._start_storage_threads = lambda: None
    c._create_sync_groups = lambda: []
    c._generate_storage_config = lambda model_name, extra: SimpleNamespace(extra_config=extra or {})
    c.attach_storage_backend("objectcache", model_name="m", storage_backend_extra_config={"bucket": "b"})
    assert c.page_get_func == c._page_get_zero_copy
    assert c.page_set_func == c._page_set_zero_copy


def test_layerwise_config_switches_to_the_external_linker(tiny_model):
    from sglang.srt.server_args import ServerArgs

    extra = {"bucket": "b", "layerwise": {"enabled": True}}
    sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native",
                    enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                    hicache_storage_backend_extra_config=json.dumps(extra))
    sa.resolve_once()
    d = sa.resolved_dict()
    assert d["enable_hierarchical_cache"] is False and d["hicache_storage_backend"] is None
    assert d["enable_unified_cache_external_linker"] is True
    assert d["unified_cache_external_linker_backend"] == "dynamic"
    assert d["unified_cache_external_linker_config"] == {
        "linker": "ObjectCacheLinker", "linker_module_path": "sglang_objectcache.layerwise.linker",
        "linker_extra_config": extra}


def test_page_mode_config_is_left_alone(tiny_model):
    from sglang.srt.server_args import ServerArgs

    sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native",
                    enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                    hicache_storage_backend_extra_config=json.dumps({"bucket": "b"}))
    sa.resolve_once()
    d = sa.resolved_dict()
    assert d["enable_hierarchical_cache"] is True and d["hicache_storage_backend"] == "objectcache"
    assert d["enable_unified_cache_external_linker"] is False
