"""The plugin against the supported SGLang's real machinery: version check, argparse, factory,
zero-copy path selection, and the layerwise flag rewrite. No server is started."""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from pools import make_pools

import sglang_objectcache.sglang.plugin as plugin
from sglang_objectcache.sglang import compat


@pytest.fixture(scope="module", autouse=True)
def loaded():
    from sglang.srt.plugins import load_plugins

    load_plugins()  # what every SGLang process does: runs our entry point, applies hooks


def test_check_passes_on_the_pinned_sglang():
    plugin.check_sglang()


def test_other_sglang_versions_fail_with_one_clear_message(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.24")
    supported = re.escape(compat.SUPPORTED_SGLANG)
    with pytest.raises(plugin.IncompatibleSGLang, match=rf"supports sglang=={supported} only; found sglang==0\.5\.24"):
        plugin.check_sglang()


def test_a_missing_internal_is_named(monkeypatch):
    monkeypatch.setattr(compat, "USES", compat.USES + ("sglang.srt.server_args:ServerArgs.no_such_hook",))
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
    from hicache import storage_config

    from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage

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


def test_sglang_stopping_its_storage_threads_ends_a_batch_in_flight(s3, bucket, fault_proxy, monkeypatch):
    """SGLang's own attach (with the plugin's hooks) and its own `_stop_storage_threads`:
    the prefetch thread is inside a batch_get_v1 on a slow store (0.4 s a GET, one at a
    time, 12 pages: ~5 s). The stop sets the event and joins the thread for 10 s, then
    raises (and with it the scheduler): the batch must end at once instead."""
    from sglang.srt.managers import cache_controller
    from sglang.srt.managers.cache_controller import HiCacheController
    from hicache import hashes, slots, storage_config

    from objectcache_dev.harness.proxy import Faults

    monkeypatch.setattr(cache_controller, "get_parallel", lambda: SimpleNamespace(attn_dcp_size=1))
    _, host = make_pools("mha", "layer_first", torch.bfloat16, 4)
    c = object.__new__(HiCacheController)
    c.enable_storage = False
    c.storage_stop_event = threading.Event()
    c.storage_host_pool = c.mem_pool_host = host
    c.host_memory_mode = "cache"
    c.page_size = 4
    c._start_storage_threads = lambda: None
    c._create_sync_groups = lambda: []
    c._generate_storage_config = lambda model_name, extra: storage_config(extra)
    cfg = {**s3.config(bucket), "endpoint_url": fault_proxy.endpoint, "transport": "obstore", "max_concurrency": 1}
    c.attach_storage_backend("objectcache", model_name="m", storage_backend_extra_config=cfg)
    backend = c.storage_backend
    try:
        keys = hashes(12, "j")
        assert backend.batch_set_v1(keys, slots(range(12))) == [True] * 12
        fault_proxy.set(Faults(latency_s=0.4))
        got = []
        c.prefetch_thread = threading.Thread(target=lambda: got.append(backend.batch_get_v1(keys, slots(range(12, 24)))))
        c.prefetch_thread.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        HiCacheController._stop_storage_threads(c)  # raises if the thread outlives its join
        assert time.monotonic() - t0 < 0.5
        hits = sum(got[0])
        assert 1 <= hits < 12 and got[0] == [True] * hits + [False] * (12 - hits)
    finally:
        fault_proxy.clear()
        backend.close()


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
        "linker": "ObjectCacheLinker", "linker_module_path": "sglang_objectcache.sglang.layerwise_linker",
        "linker_extra_config": extra}
    assert d["disable_overlap_schedule"] is True  # C8: a failed load recomputes, never a 503


def test_layerwise_keeps_the_overlap_scheduler_only_when_told_to_abort_failed_loads(tiny_model):
    from sglang.srt.server_args import ServerArgs

    extra = {"bucket": "b", "layerwise": {"enabled": True, "recompute_on_failure": False}}
    sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native",
                    enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                    hicache_storage_backend_extra_config=json.dumps(extra))
    sa.resolve_once()
    assert sa.resolved_dict()["disable_overlap_schedule"] is False


def test_page_mode_config_is_left_alone(tiny_model):
    from sglang.srt.server_args import ServerArgs

    sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native",
                    enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                    hicache_storage_backend_extra_config=json.dumps({"bucket": "b"}))
    sa.resolve_once()
    d = sa.resolved_dict()
    assert d["enable_hierarchical_cache"] is True and d["hicache_storage_backend"] == "objectcache"
    assert d["enable_unified_cache_external_linker"] is False


def test_layerwise_file_config_keeps_its_secrets_off_server_info(tiny_model, tmp_path, monkeypatch):
    """E1: /server_info returns resolved_dict(); an @file config's secrets must not reach it,
    yet the linker SGLang builds from that dict still gets the whole config."""
    from copy import deepcopy

    from sglang.srt.mem_cache.unified_cache.linker_config import UnifiedCacheLinkerConfig
    from sglang.srt.server_args import ServerArgs

    from sglang_objectcache.sglang import tree_endpoint as endpoint
    from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

    secret = "wJalrXUtnFEMI-K7MDENG-not-for-server-info"
    (tmp_path / "oc.json").write_text(json.dumps({
        "bucket": "b", "access_key_id": "AKIDEXAMPLE", "secret_access_key": secret,
        "layerwise": {"enabled": True, "fetch": "thread"}}))
    monkeypatch.chdir(tmp_path)  # a relative @path, as users write it
    sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native",
                    enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                    hicache_storage_backend_extra_config="@oc.json")
    sa.resolve_once()
    d = sa.resolved_dict()
    assert secret not in json.dumps(d, default=str)
    assert d["enable_unified_cache_external_linker"] is True and d["hicache_storage_backend"] is None
    assert endpoint.uses_objectcache(sa)

    # What SGLang's linker factory does with it, from another working directory.
    linker_cfg = UnifiedCacheLinkerConfig.from_dict(d["unified_cache_external_linker_config"])
    assert (linker_cfg.linker, linker_cfg.linker_module_path) == (plugin.LINKER_CLASS, plugin.LINKER_MODULE)
    monkeypatch.chdir(tmp_path.parent)

    class Built(Exception):
        pass

    def stop():
        raise Built  # the config is parsed; the pools are not this test's business

    params = SimpleNamespace(token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=stop), page_size=4)
    lk = ObjectCacheLinker.__new__(ObjectCacheLinker)
    with pytest.raises(Built):
        lk.__init__(sa, params, extra_config=deepcopy(linker_cfg.linker_extra_config))
    assert (lk.cfg.bucket, lk.cfg.access_key_id, lk.cfg.secret_access_key) == ("b", "AKIDEXAMPLE", secret)
    assert lk.cfg.layerwise.enabled and lk.cfg.layerwise.fetch == "thread"


def test_tree_endpoint_knows_an_objectcache_server_from_its_resolved_args(tiny_model):
    from sglang.srt.server_args import ServerArgs

    from sglang_objectcache.sglang import tree_endpoint as endpoint

    def args(**kw):
        sa = ServerArgs(model_path=tiny_model, device="cpu", attention_backend="torch_native", **kw)
        sa.resolve_once()
        return sa

    assert not endpoint.uses_objectcache(args())
    assert not endpoint.uses_objectcache(args(enable_hierarchical_cache=True, hicache_storage_backend="file"))
    assert endpoint.uses_objectcache(args(enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
                                          hicache_storage_backend_extra_config=json.dumps({"bucket": "b"})))
    assert endpoint.uses_objectcache(args(
        enable_hierarchical_cache=True, hicache_storage_backend="objectcache",
        hicache_storage_backend_extra_config=json.dumps({"bucket": "b", "layerwise": {"enabled": True}})))
