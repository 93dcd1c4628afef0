"""The compatibility manifest (`sglang_objectcache/sglang/compat.py`) against the installed
sglang: every item it lists exists, nothing the wing hooks is missing from it, the linker
class is concrete against SGLang's ABC, and nothing outside the wing imports sglang."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from sglang_objectcache.sglang import compat

ROOT = Path(__file__).resolve().parents[3]


def test_the_installed_sglang_is_the_supported_one():
    assert compat.installed_version() == compat.SUPPORTED_SGLANG


@pytest.mark.parametrize("entry", [h[0] for h in compat.HOOKS] + list(compat.USES))
def test_every_hook_target_and_used_name_exists(entry):
    assert compat.resolve(entry) is not None


def test_every_hook_target_is_callable():
    for entry, kind, _handler, _when, _why in compat.HOOKS:
        assert callable(compat.resolve(entry)), entry
        assert kind in ("AROUND", "AFTER", "BEFORE"), entry


def test_every_handler_in_the_table_is_a_function_of_the_wing():
    for entry, _kind, handler, when, _why in compat.HOOKS:
        assert when in compat.WHEN, entry
        fn = compat.resolve(f"sglang_objectcache.sglang.{handler}")
        assert callable(fn) and fn.__module__.startswith("sglang_objectcache.sglang."), handler
    assert sum(len(compat.handlers(w)) for w in compat.WHEN) == len(compat.HOOKS)


@pytest.mark.parametrize("cls_entry,names", [(r[0], r[1]) for r in compat.READS]
                         + [(compat.REQ, compat.REQ_WRITES + compat.REQ_READS)])
def test_every_attribute_read_or_written_exists(cls_entry, names):
    cls = compat.resolve(cls_entry)
    assert [n for n in names if not compat.declares(cls, n)] == []


def test_the_wrapped_resolution_steps_may_be_overridden():
    from sglang.srt.arg_groups.resolution_hooks import _OVERRIDABLE_HOOKS

    assert {name for name, _ in compat.RESOLUTION_HOOKS} <= _OVERRIDABLE_HOOKS


def test_the_manifest_finds_nothing_missing():
    assert compat.missing() == []
    compat.check()


def test_declares_tells_a_missing_attribute_from_a_present_one():
    from sglang.srt.managers.schedule_batch import Req

    assert compat.declares(Req, "is_retracted")
    assert not compat.declares(Req, "no_such_field_anywhere")


def test_the_plugin_registers_only_listed_hooks(monkeypatch):
    """Run register() against a recording registry, with every optional hook switched on
    (tree endpoint, both processes, CPU shims): every target must be in the manifest."""
    from sglang.srt.arg_groups import resolution_hooks
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_objectcache.sglang import inspect_hooks, plugin
    from sglang_objectcache.sglang.cpu import compat as cpu_compat

    seen, steps = [], []
    monkeypatch.setattr(HookRegistry, "register", classmethod(lambda cls, target, fn, kind: seen.append(
        (target, kind.name))))
    monkeypatch.setattr(resolution_hooks, "register_resolution_hook", lambda name: (steps.append(name),
                                                                                   lambda fn: fn)[1])
    monkeypatch.setenv("OBJECTCACHE_TREE_ENDPOINT", "1")
    monkeypatch.setattr(inspect_hooks, "in_scheduler_process", lambda: True)
    monkeypatch.setattr(inspect_hooks, "in_http_process", lambda: True)
    monkeypatch.setattr(cpu_compat, "needed", lambda: True)
    plugin.register()

    listed = [(compat.hook_target(e), kind) for e, kind, _, _, _ in compat.HOOKS]
    assert sorted(seen) == sorted(listed)  # each once: both attach hooks, the four Rust core ones
    assert set(steps) == {name for name, _ in compat.RESOLUTION_HOOKS}


def test_the_cpu_shims_patch_only_listed_modules():
    src = inspect.getsource(importlib.import_module("sglang_objectcache.sglang.cpu.compat"))
    assert set(re.findall(r'"(sglang\.srt\.mem_cache\.pool_host\.\w+)"', src)) == {m for m, _ in compat.PATCHED}


def test_every_req_field_the_recompute_hooks_write_is_listed():
    src = inspect.getsource(importlib.import_module("sglang_objectcache.sglang.recompute_hooks"))
    written = set(re.findall(r"\breq\.(\w+)\s*=(?!=)", src))
    written |= {n for line in re.findall(r"^\s*(req\.\w+(?:\s*=\s*req\.\w+)+)\s*=", src, re.M)
                for n in re.findall(r"req\.(\w+)", line)}
    assert written and written <= set(compat.REQ_WRITES)


def test_the_linker_is_concrete_against_the_installed_abc():
    """SGLang's linker loader refuses abstract classes: ObjectCacheLinker must implement
    every abstract method of the installed UnifiedCacheLinker, and instantiate."""
    from sglang.srt.mem_cache.unified_cache.unified_cache_linker import UnifiedCacheLinker

    from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

    assert issubclass(ObjectCacheLinker, UnifiedCacheLinker)
    assert not inspect.isabstract(ObjectCacheLinker), sorted(ObjectCacheLinker.__abstractmethods__)
    # Instantiable without running our constructor (which opens a store): object.__new__
    # is what refuses an abstract class.
    linker = object.__new__(ObjectCacheLinker)
    assert isinstance(linker, UnifiedCacheLinker)


def test_sglangs_own_loader_builds_the_linker_the_plugin_names(s3_config):
    """The path `--unified-cache-external-linker-backend dynamic` takes, with the class and
    module path the plugin's layerwise switch passes."""
    import torch
    from pools import make_pools
    from sglang.srt.mem_cache.unified_cache.linker_factory import create_unified_cache_linker

    from sglang_objectcache.sglang import plugin, rank
    from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

    dev, _ = make_pools("mha", "layer_first", torch.bfloat16, 4, host=False)
    params = SimpleNamespace(
        token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: dev), page_size=4,
        attn_tp_cache_group=None, tp_cache_group=None, attn_cp_rank=0, attn_cp_size=1)
    extra = {**s3_config, "layerwise": {"enabled": True, "fetch": "thread"}}
    linker = create_unified_cache_linker(
        rank.current_server_args(), params, backend="dynamic", components=set(),
        config={"linker": plugin.LINKER_CLASS, "linker_module_path": plugin.LINKER_MODULE,
                "linker_extra_config": extra})
    try:
        assert type(linker) is ObjectCacheLinker
    finally:
        linker.close()


def test_nothing_outside_the_wing_imports_sglang():
    out = subprocess.run(["git", "grep", "-lE", r"^\s*(from|import) sglang(\.|\b)", "--", "sglang_objectcache"],
                         cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert out and all(p.startswith("sglang_objectcache/sglang/") for p in out), out


def test_sglang_inside_the_wing_is_the_real_sglang():
    import sglang

    from sglang_objectcache.sglang import hicache_backend

    assert Path(sglang.__file__).resolve().parent.name == "sglang"
    assert "site-packages" in sglang.__file__ or "dist-packages" in sglang.__file__
    assert hicache_backend.HiCacheStorage.__module__ == "sglang.srt.mem_cache.hicache_storage"


def test_the_supported_version_is_named_in_the_manifest_only():
    """Code and scripts read it from there (setup.py and install.sh parse it); docs may say it."""
    hits = subprocess.run(["git", "grep", "-lF", compat.SUPPORTED_SGLANG, "--", "*.py", "*.sh"],
                          cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert set(hits) <= {"sglang_objectcache/sglang/compat.py"}, hits


def test_the_cpu_lock_pins_the_supported_sglang():
    lock = (ROOT / "requirements" / "cpu.lock").read_text()
    assert re.search(r"^sglang==(\S+)", lock, re.M).group(1) == compat.SUPPORTED_SGLANG


def test_the_wing_files_the_manifest_names_exist():
    wing = ROOT / "sglang_objectcache" / "sglang"
    assert [f for f in compat.WING if not (wing / f).exists()] == []


def test_a_fake_controller_gets_the_zero_copy_path():
    """`_select_zero_copy` reads the controller fields the manifest lists (READS)."""
    from sglang_objectcache.sglang import plugin

    c = SimpleNamespace(enable_storage=True, _page_get_zero_copy="g", _page_set_zero_copy="s",
                        page_get_func=None, page_set_func=None)
    plugin._select_zero_copy(None, c, plugin.NAME)
    assert (c.page_get_func, c.page_set_func) == ("g", "s")


def test_the_compat_doc_lists_every_hook_target():
    doc = (ROOT / "docs" / "sglang-compat.md").read_text()
    assert [e for e, *_ in compat.HOOKS if f"`{compat.hook_target(e)}`" not in doc] == []
    assert "SUPPORTED_SGLANG" in doc
