"""Keys: every namespace field changes the key; keys are sharded, deterministic and owned."""

from __future__ import annotations

from sglang_objectcache.keys import KeyScheme, Namespace
from sglang_objectcache.objformat import PageGeometry

GEOM = PageGeometry("mha", num_layers=3, tokens=4, row_bytes=(32, 32), dtype="bfloat16")


def _ns(**kw):
    base = dict(model="m", geometry=GEOM, kv_shard="tp0of1", layers="0-3")
    base.update(kw)
    return Namespace(**base)


def test_namespaces_never_collide():
    variants = [
        _ns(), _ns(identity="w2"), _ns(kv_dtype="fp8_e5m2"), _ns(kv_shard="tp1of2"), _ns(kv_shard="replicated"), _ns(layers="3-6"),
        _ns(geometry=PageGeometry("mha", 3, 4, (32, 32), "float16")),
        _ns(geometry=PageGeometry("mha", 3, 8, (32, 32), "bfloat16")),
        _ns(extra="salt:tenant-a"),
    ]
    keys = {KeyScheme("oc", ns).object_key("ab" * 32) for ns in variants}
    assert len(keys) == len(variants)
    ks = KeyScheme("oc", _ns())
    key = ks.object_key("ab" * 32)
    assert key.startswith(ks.namespace_prefix) and ks.owns(key)
    shard = key[len(ks.namespace_prefix):].split("/")[0]
    assert len(shard) == 2 and key.endswith(ks.content_digest("ab" * 32).hex())
    assert ks.object_key("ab" * 32) == key  # deterministic
