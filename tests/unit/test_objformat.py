"""The object format: layer-major geometry, sealing, and every corruption detected. No server needed."""

from __future__ import annotations

import pickle

import pytest
import torch

from sglang_objectcache import objformat
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
