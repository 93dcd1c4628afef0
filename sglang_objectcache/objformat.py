"""The object byte format: one page of KV for one rank's layers, layer-major, self-describing.

This module is the single definition of the bytes in the object store. The backend, the
layerwise loader and the kernels all take offsets and shapes from `PageGeometry`.

    object  = header | payload
    header  = FIXED | L x (offset u64, length u64, xxh3_64 u64) | xxh3_64(header so far) u64,
              zero-padded to a multiple of ALIGN bytes
    payload = for layer l in 0..L-1:            <- one contiguous byte range per layer
                for component c in components:  <- (K, V) for MHA, (KV latent,) for MLA
                  tokens x row_bytes[c]         <- token-major rows, exactly as in the KV pool

All integers are little-endian. Layer l is `geometry.layer_range(l)`, so a reader that
knows its own geometry can issue a ranged GET for one layer without reading the header
first; the header (with every layer's checksum) sits right before layer 0, so it arrives
with the first range. The format does not depend on SGLang's host layout: converting host
layouts to and from the payload happens in `hostpool.py`.

Contract of `decode_header`/`verify_layer`: any mismatch (magic, version, geometry, key,
size, checksum) raises `FormatError` with the reason. Callers turn that into a cache miss.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import xxhash

MAGIC = b"OCKV"
VERSION = 1
ALIGN = 256

KIND_CODES = {"mha": 0, "mla": 1}
DTYPE_CODES = {
    "float16": 1,
    "bfloat16": 2,
    "float32": 3,
    "float8_e4m3fn": 4,
    "float8_e5m2": 5,
    "uint8": 6,
    "int8": 7,
}

# magic, version, kind, dtype, layers, components, tokens, header_bytes,
# row_bytes[0], row_bytes[1], payload_bytes, key_digest
_FIXED = struct.Struct("<4sHBBHBxIIIIQ16s")
_ENTRY = struct.Struct("<QQQ")
_TAIL = struct.Struct("<Q")


class FormatError(ValueError):
    """The bytes are not a valid object for the expected geometry and key."""


class UnsupportedFormat(FormatError):
    """A well-formed start of an object this code cannot read (another format version, an
    unknown kind or dtype code). Never proof of corruption: a newer writer may share the
    bucket, so nothing deletes an object for this reason."""


@dataclass(frozen=True)
class PageGeometry:
    """Shape of one page object. `row_bytes[c]` is the bytes of one token of component c
    in one layer (heads x head_dim x itemsize). Derived sizes are cached: they sit on the
    per-page, per-layer path of every read and write."""

    kind: str  # "mha" or "mla"
    num_layers: int
    tokens: int
    row_bytes: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.kind not in KIND_CODES:
            raise ValueError(f"kind must be one of {sorted(KIND_CODES)}, got {self.kind!r}")
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported dtype {self.dtype!r}")
        want = 2 if self.kind == "mha" else 1
        if len(self.row_bytes) != want or min(self.row_bytes) <= 0:
            raise ValueError(f"{self.kind} needs {want} positive row sizes, got {self.row_bytes}")
        if self.num_layers <= 0 or self.tokens <= 0:
            raise ValueError("num_layers and tokens must be positive")

    @functools.cached_property
    def num_components(self) -> int:
        return len(self.row_bytes)

    def component_bytes(self, c: int) -> int:
        return self.tokens * self.row_bytes[c]

    @functools.cached_property
    def layer_bytes(self) -> int:
        return self.tokens * sum(self.row_bytes)

    @functools.cached_property
    def payload_bytes(self) -> int:
        return self.num_layers * self.layer_bytes

    @functools.cached_property
    def header_bytes(self) -> int:
        raw = _FIXED.size + self.num_layers * _ENTRY.size + _TAIL.size
        return -(-raw // ALIGN) * ALIGN

    @functools.cached_property
    def object_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes

    def layer_offset(self, layer: int) -> int:
        """Offset of layer `layer` inside the whole object."""
        return self.header_bytes + layer * self.layer_bytes

    def layer_range(self, layer: int) -> tuple[int, int]:
        """[start, end) of layer `layer` inside the whole object."""
        start = self.layer_offset(layer)
        return start, start + self.layer_bytes

    @functools.cached_property
    def _table(self) -> "_Table":
        # on the geometry, not in an lru_cache: that hashes the dataclass on every lookup
        # (~1 us), and decode runs per page
        return _make_table(self)

    def __getstate__(self) -> dict:
        # a geometry travels to the fetch worker process; its table (a struct.Struct) is
        # made again there
        return {k: v for k, v in self.__dict__.items() if k != "_table"}

    def component_offset(self, c: int) -> int:
        """Offset of component c inside one layer's range."""
        return self.tokens * sum(self.row_bytes[:c])


class Header(NamedTuple):
    # a tuple, not a frozen dataclass: one is made per page read, and a tuple is cheaper to make
    geometry: PageGeometry
    key_digest: bytes
    checksums: tuple[int, ...]


_GIL_FREE_BYTES = 1 << 16


def _xxh3_gil_free(buf) -> int:
    return xxhash.xxh3_64(buf).intdigest()


def hasher_for(nbytes: int):
    """The xxh3 function for inputs of `nbytes`. xxhash's one-shot function holds the GIL
    while it hashes; its hasher object releases it (same XXH3 value), so big layers hash in
    parallel on the loader's and backend's threads. Small inputs keep the cheaper one-shot
    call."""
    return _xxh3_gil_free if nbytes >= _GIL_FREE_BYTES else xxhash.xxh3_64_intdigest


def checksum(buf) -> int:
    return hasher_for(memoryview(buf).nbytes)(buf)


def encode_header(geometry: PageGeometry, key_digest: bytes, checksums: Sequence[int]) -> bytes:
    g = geometry
    if len(key_digest) != 16:
        raise ValueError("key_digest must be 16 bytes")
    if len(checksums) != g.num_layers:
        raise ValueError("one checksum per layer")
    rb = tuple(g.row_bytes) + (0,) * (2 - g.num_components)
    parts = [
        _FIXED.pack(
            MAGIC, VERSION, KIND_CODES[g.kind], DTYPE_CODES[g.dtype], g.num_layers,
            g.num_components, g.tokens, g.header_bytes, rb[0], rb[1], g.payload_bytes, key_digest,
        )
    ]
    for layer, cs in enumerate(checksums):
        parts.append(_ENTRY.pack(g.layer_offset(layer), g.layer_bytes, cs))
    raw = b"".join(parts)
    raw += _TAIL.pack(checksum(raw))
    return raw + b"\0" * (g.header_bytes - len(raw))


def seal(geometry: PageGeometry, key_digest: bytes, obj: memoryview) -> None:
    """Fill in the header of `obj` (object_bytes long) whose payload is already written."""
    g = geometry
    t = g._table
    obj[: g.header_bytes] = encode_header(g, key_digest, [t.hash_layer(obj[s]) for s in t.slices])


def sealed(geometry: PageGeometry, key_digest: bytes, payload) -> memoryview:
    """A new object: `payload` (one page's payload_bytes, any buffer) behind its header."""
    g = geometry
    obj = np.empty(g.object_bytes, np.uint8)
    obj[g.header_bytes :] = np.frombuffer(payload, np.uint8)
    mv = memoryview(obj)
    seal(g, key_digest, mv)
    return mv


def _unpack_fixed(mv: memoryview) -> tuple:
    """The fixed header fields after magic and version (kind ... key_digest)."""
    if len(mv) < _FIXED.size:
        raise FormatError(f"truncated header: {len(mv)} bytes")
    magic, version, *fields = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise FormatError("bad magic")
    if version != VERSION:
        raise UnsupportedFormat(f"format version {version}, expected {VERSION}")
    return tuple(fields)


def decode_header(buf, expected: PageGeometry, key_digest: bytes) -> Header:
    """Parse and check the header at the start of `buf` against what the reader expects."""
    mv = memoryview(buf).cast("B")
    *got, digest = _unpack_fixed(mv)
    g = expected
    t = g._table
    if tuple(got) != t.fixed:
        raise FormatError(f"geometry mismatch: object {tuple(got)}, expected {t.fixed}")
    if digest != key_digest:
        raise FormatError("object belongs to another key")
    table_end = _FIXED.size + g.num_layers * _ENTRY.size
    if len(mv) < table_end + _TAIL.size:
        raise FormatError("truncated layer table")
    (stored,) = _TAIL.unpack_from(mv, table_end)
    if stored != checksum(mv[:table_end]):
        raise FormatError("header checksum mismatch")
    entries = t.struct.unpack_from(mv, _FIXED.size)  # (offset, length, xxh3) per layer, flat
    if entries[0::3] != t.starts or entries[1::3] != t.lengths:
        for layer in range(g.num_layers):
            off, length = entries[3 * layer : 3 * layer + 2]
            if (off, off + length) != g.layer_range(layer):
                raise FormatError(f"layer {layer} range mismatch")
    return Header(g, digest, entries[2::3])


@dataclass(frozen=True)
class _Table:
    fixed: tuple  # the fixed header fields after magic and version, less the key digest
    struct: struct.Struct  # the layer table: one unpack per header
    starts: tuple[int, ...]  # the layer offsets it must hold
    lengths: tuple[int, ...]
    slices: tuple[slice, ...]  # each layer's range in the object
    hash_layer: object  # hasher_for(one layer's bytes), looked up once


def _make_table(g: PageGeometry) -> _Table:
    """What every header of geometry `g` must hold (`PageGeometry._table` keeps it)."""
    rb = tuple(g.row_bytes) + (0,) * (2 - g.num_components)
    fixed = (KIND_CODES[g.kind], DTYPE_CODES[g.dtype], g.num_layers, g.num_components, g.tokens,
             g.header_bytes, rb[0], rb[1], g.payload_bytes)
    starts = tuple(map(g.layer_offset, range(g.num_layers)))
    return _Table(fixed, struct.Struct("<" + "QQQ" * g.num_layers), starts, (g.layer_bytes,) * g.num_layers,
                  tuple(slice(s, s + g.layer_bytes) for s in starts), hasher_for(g.layer_bytes))


def peek_header(buf) -> tuple[PageGeometry, bytes]:
    """The geometry and key digest a header claims, checked for nothing but parseability.

    For tools that know neither (a bucket verifier): pass the result back to `decode` to
    check the object against its own claims. Raises FormatError if it cannot be parsed.
    """
    kind, dtype, layers, comps, tokens, _hb, rb0, rb1, _payload, digest = _unpack_fixed(memoryview(buf).cast("B"))
    kinds = {v: k for k, v in KIND_CODES.items()}
    dtypes = {v: k for k, v in DTYPE_CODES.items()}
    try:
        geometry = PageGeometry(kinds[kind], layers, tokens, (rb0, rb1)[:comps], dtypes[dtype])
    except (KeyError, ValueError) as e:
        raise UnsupportedFormat(f"unparseable geometry: {e}") from None
    return geometry, bytes(digest)


def verify_layer(header: Header, layer: int, data) -> None:
    """Check one layer's bytes (exactly its range) against the header's checksum."""
    if len(data) != header.geometry.layer_bytes:
        raise FormatError(f"layer {layer}: {len(data)} bytes, expected {header.geometry.layer_bytes}")
    check_layer_sum(header, layer, checksum(data))


def check_layer_sum(header: Header, layer: int, digest: int) -> None:
    """Check a layer's xxh3, computed elsewhere (the loader hashes on its pool threads)."""
    if digest != header.checksums[layer]:
        raise FormatError(f"layer {layer} checksum mismatch")


def verify_layers(header: Header, first: int, parts: Sequence, per_layer: int = 1) -> None:
    """Check the checksums of layers first, first + 1, ... whose bytes lie in `parts`
    (buffers in payload order, `per_layer` of them per layer, as `HostPages.page_parts`
    gives; one per layer: each layer's own range)."""
    sums = header.checksums
    if per_layer == 1:
        h = header.geometry._table.hash_layer
        for layer, part in enumerate(parts, first):
            if h(part) != sums[layer]:
                raise FormatError(f"layer {layer} checksum mismatch")
        return
    for k in range(len(parts) // per_layer):
        h = xxhash.xxh3_64()  # the same XXH3 as one call over the layer's bytes
        for part in parts[k * per_layer:(k + 1) * per_layer]:
            h.update(part)
        if h.intdigest() != sums[first + k]:
            raise FormatError(f"layer {first + k} checksum mismatch")


def decode(buf, expected: PageGeometry, key_digest: bytes) -> Header:
    """Check a whole object: header, total size and every layer's checksum."""
    mv = memoryview(buf).cast("B")
    if len(mv) != expected.object_bytes:
        _unpack_fixed(mv)  # another format version is unsupported, whatever its size
        raise FormatError(f"object is {len(mv)} bytes, expected {expected.object_bytes}")
    header = decode_header(mv, expected, key_digest)
    verify_layers(header, 0, [mv[s] for s in expected._table.slices])
    return header
