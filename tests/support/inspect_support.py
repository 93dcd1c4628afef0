"""A bucket as objectcache-inspect sees it: sealed pages under one key scheme, namespace
descriptions, and a store on the session's SeaweedFS (the `store` fixture)."""

from __future__ import annotations

import json

import pytest

from sglang_objectcache import objformat
from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.keys import KeyScheme, Namespace
from sglang_objectcache.store import make_store

PREFIX = "objectcache"
GEOM = objformat.PageGeometry("mha", num_layers=2, tokens=4, row_bytes=(16, 16), dtype="bfloat16")


def scheme(model: str = "tiny", geometry: objformat.PageGeometry = GEOM, kv_shard: str = "tp0of1") -> KeyScheme:
    return KeyScheme(PREFIX, Namespace(model=model, geometry=geometry, kv_shard=kv_shard, layers="0-2", identity=model))


def page(ks: KeyScheme, page_hash: str, geometry: objformat.PageGeometry = GEOM, seed: int = 0) -> tuple[str, bytes]:
    g = geometry
    obj = bytearray(g.object_bytes)
    obj[g.header_bytes:] = bytes((seed + i) % 251 for i in range(g.payload_bytes))
    objformat.seal(g, ks.content_digest(page_hash), memoryview(obj))
    return ks.object_key(page_hash), bytes(obj)


def describe(store, ks: KeyScheme) -> None:
    store.put(ks.namespace_file, json.dumps(ks.namespace.describe()).encode(), if_absent=False)


@pytest.fixture(name="store")
def store_fixture(s3_config):
    """A store on the session's SeaweedFS, a fresh bucket. Import `store_fixture` into a
    conftest or test module to use it as `store`."""
    st = make_store(ObjectCacheConfig.from_dict(s3_config))
    yield st
    st.close()


def all_keys(store) -> set[str]:
    return {o.key for o in store.list("")}
