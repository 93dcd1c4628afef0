"""Object format, keys, config and host-layout conversion: no server needed."""

from __future__ import annotations

import itertools
import pickle

import pytest
import torch
from pools import fill_random, make_pools

from sglang_objectcache import objformat
from sglang_objectcache.config import ConfigError, ObjectCacheConfig, parse
from sglang_objectcache.hostpool import HostPages
from sglang_objectcache.keys import KeyScheme, Namespace
from sglang_objectcache.objformat import FormatError, PageGeometry

GEOM = PageGeometry("mha", num_layers=3, tokens=4, row_bytes=(32, 32), dtype="bfloat16")
DIGEST = bytes(range(16))


def _object(geom=GEOM, digest=DIGEST, seed=0):
    g = torch.Generator().manual_seed(seed)
    buf = torch.randint(0, 256, (geom.object_bytes,), dtype=torch.uint8, generator=g)
    mv = memoryview(buf.numpy())
    objformat.seal(geom, digest, mv)
    return bytearray(mv)


def test_geometry_is_layer_major():
    g = GEOM
    assert g.layer_bytes == 4 * 64
    assert g.header_bytes % objformat.ALIGN == 0
    assert g.layer_range(0) == (g.header_bytes, g.header_bytes + g.layer_bytes)
    assert g.layer_range(2)[1] == g.object_bytes
    assert g.component_offset(1) == 4 * 32


def test_roundtrip_and_every_corruption_is_detected():
    obj = _object()
    h = objformat.decode(obj, GEOM, DIGEST)
    assert len(h.checksums) == 3
    # one flipped bit anywhere (header or payload) must be detected
    for pos in (0, 10, 60, GEOM.header_bytes + 5, GEOM.object_bytes - 1):
        bad = bytearray(obj)
        bad[pos] ^= 0x01
        with pytest.raises(FormatError):
            objformat.decode(bad, GEOM, DIGEST)
    with pytest.raises(FormatError, match="bytes, expected"):
        objformat.decode(obj[:-1], GEOM, DIGEST)  # truncated
    with pytest.raises(FormatError, match="another key"):
        objformat.decode(obj, GEOM, bytes(16))
    other = PageGeometry("mha", 3, 4, (32, 32), "float16")
    with pytest.raises(FormatError, match="geometry"):
        objformat.decode(obj, other, DIGEST)


def test_layer_ranges_verify_alone():
    obj = _object()
    h = objformat.decode_header(obj[: GEOM.layer_range(0)[1]], GEOM, DIGEST)
    for layer in range(GEOM.num_layers):
        s, e = GEOM.layer_range(layer)
        objformat.verify_layer(h, layer, memoryview(obj)[s:e])
    s, e = GEOM.layer_range(1)
    bad = bytearray(obj[s:e])
    bad[3] ^= 0xFF
    with pytest.raises(FormatError, match="checksum"):
        objformat.verify_layer(h, 1, bad)


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


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^bucket"):
        ObjectCacheConfig.from_dict({})
    with pytest.raises(ConfigError, match="^bucketz: unknown"):
        ObjectCacheConfig.from_dict({"bucket": "b", "bucketz": 1})
    with pytest.raises(ConfigError, match="^max_concurrency"):
        ObjectCacheConfig.from_dict({"bucket": "b", "max_concurrency": -1})
    with pytest.raises(ConfigError, match="^read_timeout_s: expected a number"):
        ObjectCacheConfig.from_dict({"bucket": "b", "read_timeout_s": "fast"})
    with pytest.raises(ConfigError, match="^scheduler.policy"):
        ObjectCacheConfig.from_dict({"bucket": "b", "scheduler": {"policy": "random"}})
    with pytest.raises(ConfigError, match="^layerwise.nope"):
        ObjectCacheConfig.from_dict({"bucket": "b", "layerwise": {"nope": 1}})
    cfg = ObjectCacheConfig.from_dict({"bucket": "b", "access_key_id": "AK", "secret_access_key": "SHH",
                                       "backend_name": "x", "interface_v1": 1})
    assert "SHH" not in repr(cfg) and "SHH" not in str(cfg.redacted())
    p = tmp_path / "c.toml"
    p.write_text('bucket = "kv"\nmax_concurrency = 8\n[layerwise]\nenabled = true\n')
    cfg = parse("@" + str(p))
    assert cfg.max_concurrency == 8 and cfg.layerwise.enabled


LAYOUTS = ("layer_first", "page_first", "page_first_direct")


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_payload_order_matches_the_pool(kind):
    _, host = make_pools(kind, "page_first")
    fill_random(host)
    pages = HostPages(host)
    g = pages.geometry
    payload = torch.empty(g.payload_bytes, dtype=torch.uint8)
    pages.read_page(8, payload)
    comps = [host.k_buffer, host.v_buffer] if kind == "mha" else [host.kv_buffer]
    for layer, c, t in itertools.product(range(g.num_layers), range(len(comps)), range(g.tokens)):
        start = layer * g.layer_bytes + g.component_offset(c) + t * g.row_bytes[c]
        want = comps[c][8 + t, layer].contiguous().view(torch.uint8).flatten()
        assert torch.equal(payload[start : start + g.row_bytes[c]], want)


@pytest.mark.parametrize("joined", [True, False], ids=["one_copy", "per_component"])
@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("src_layout,dst_layout", list(itertools.product(LAYOUTS, LAYOUTS)))
def test_pages_move_across_layouts(kind, src_layout, dst_layout, joined):
    _, a = make_pools(kind, src_layout)
    _, b = make_pools(kind, dst_layout)
    fill_random(a, seed=1)
    b.kv_buffer.view(torch.uint8).fill_(0xAB)
    pa, pb = HostPages(a), HostPages(b)
    assert pa.geometry == pb.geometry
    # SGLang's pools join (one copy moves every component of a page); the per-component
    # copies are what a pool whose components differ in shape gets
    assert pa._joint is not None and pb._joint is not None
    if not joined:
        pa._joint = pb._joint = None
    payload = torch.empty(pa.geometry.payload_bytes, dtype=torch.uint8)
    for src, dst in ((0, 12), (20, 4)):
        pa.read_page(src, payload)
        pb.write_page(dst, payload)
        for va, vb in zip(pa.page_views(src), pb.page_views(dst)):
            assert torch.equal(va, vb)
    # a slot that was not written still holds the sentinel
    assert all(bool((v == 0xAB).all()) for v in pb.page_views(8))


@pytest.mark.parametrize("kind", ["mha", "mla"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_page_parts_are_the_page_in_payload_order(kind, layout):
    _, host = make_pools(kind, layout)
    fill_random(host, seed=2)
    pages = HostPages(host)
    g = pages.geometry
    payload = torch.empty(g.payload_bytes, dtype=torch.uint8)
    pages.read_page(12, payload)
    parts = pages.page_parts(12)
    assert b"".join(parts) == payload.numpy().tobytes()
    assert len(parts) == pages.parts_per_layer * g.num_layers
    # writable views of the pool itself: what a GET scatters into them lands in the slot
    key = b"k" * 16
    other = objformat.sealed(g, key, bytes(reversed(payload.numpy().tobytes())))
    got = memoryview(other)[g.header_bytes:]
    at = 0
    for part in parts:
        part[:] = got[at:at + len(part)]
        at += len(part)
    objformat.verify_layers(objformat.decode_header(other, g, key), 0, parts, pages.parts_per_layer)
    pages.read_page(12, payload)
    assert payload.numpy().tobytes() == bytes(got)
    parts[-1][:1] = bytes([parts[-1][0] ^ 1])
    with pytest.raises(objformat.FormatError, match=f"layer {g.num_layers - 1} checksum"):
        objformat.verify_layers(objformat.decode_header(other, g, key), 0, parts, pages.parts_per_layer)


def test_a_geometry_that_has_decoded_pickles():
    # the layerwise fetch worker gets its geometry pickled; the table decode keeps on it
    # (a struct.Struct) must not travel
    obj = objformat.sealed(GEOM, DIGEST, bytes(GEOM.payload_bytes))
    objformat.decode(obj, GEOM, DIGEST)
    back = pickle.loads(pickle.dumps(GEOM))
    assert back == GEOM
    objformat.decode(obj, back, DIGEST)


def test_a_damaged_layer_is_named_in_a_run_that_starts_past_layer_0():
    obj = objformat.sealed(GEOM, DIGEST, bytes(range(256)) * (GEOM.payload_bytes // 256))
    header = objformat.decode(obj, GEOM, DIGEST)
    layers = [bytearray(obj[s:e]) for s, e in map(GEOM.layer_range, range(1, GEOM.num_layers))]
    objformat.verify_layers(header, 1, layers)  # layers 1.. as a receiver lands them
    layers[-1][0] ^= 1
    with pytest.raises(objformat.FormatError, match=f"^layer {GEOM.num_layers - 1} checksum mismatch"):
        objformat.verify_layers(header, 1, layers)
