"""The SGLang wing: every module that names an SGLang internal lives here.

The rest of the package (the cache core `cache.py`, `store/`, `objformat.py`, `keys.py`,
`layerwise/loader.py`, ...) never imports `sglang`; it sees neutral types (`keys.RankIdentity`,
`objformat.PageGeometry`, `hostpool.HostPages` over a duck-typed pool). What this wing
relies on in SGLang is listed in one manifest, `compat.py`, checked at import of the plugin
and by tests/unit/sglang/test_compat.py; docs/sglang-compat.md says what a version bump touches.

    compat.py            the manifest, and the table every hook is registered from
    plugin.py            the `sglang.srt.plugins` entry point: registers the backend and hooks
    hicache_backend.py   page mode: `ObjectCacheStorage(HiCacheStorage)`; flat_pages.py: its legacy API
    layerwise_linker.py  layerwise mode: `ObjectCacheLinker(UnifiedCacheLinker)`, device pool view
    recompute_hooks.py   a failed layerwise load is recomputed, not aborted
    rank.py              a rank's identity from ServerArgs / storage config / linker params
    stats_bridge.py      `Stats` -> SGLang's `StorageMetrics`
    inspect_hooks.py     the inspector's hooks; tree_endpoint.py: the tree endpoint's route
    treeview.py          the radix tree snapshot; treecores.py: its nodes; treestore.py: its HEADs
    cpu/                 shims that make HiCache's host pools work on SGLang's CPU engine

Absolute imports (`from sglang.srt ...`) inside this package reach the real `sglang`: this
package is `sglang_objectcache.sglang`, never a top-level `sglang`.
"""
