"""What a page's bytes depend on beyond its tokens: the model's identity.

SGLang's page hash covers the token ids (and the tenant's extra_key/cache_salt), never the
weights. Two servers whose weights differ but whose model *name* and shapes agree (a
re-pointed path, a fine-tune served under the same name, an RL engine after a weight
update) compute different K/V for the same tokens, so the namespace must differ. This
module derives a digest of everything that changes those bytes, from files on disk and
the serving flags, with no SGLang import: `ModelIdentity`.

The weights fingerprint reads little: each weight file's size and, for safetensors, its
header (names, dtypes, shapes, offsets) plus 64 bytes at the start, middle and end of every
tensor; other weight files give their size and 16 samples. Small JSON files (config.json,
the weight index, quantization configs) are hashed whole. `full=True` hashes every byte,
for checkpoints edited in place in a few bytes. Nothing depends on paths or mtimes, so
every host that holds the same checkpoint gets the same fingerprint and shares its pages.
A path that is not a local directory (unresolved hub id) or dummy weights get a random
fingerprint: correct, but shared with nobody.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".npz")
SMALL_JSON = 1 << 20  # JSON files up to this size are hashed whole (config, index, quant config)
SAMPLE = 64  # bytes read at the start, middle and end of each tensor
OTHER_SAMPLES = 16  # evenly spaced 4 KiB samples of a weight file that is not safetensors


def random_fingerprint(why: str) -> str:
    logger.warning("objectcache: %s: the weights cannot be fingerprinted, so this server's pages get "
                   "a namespace of their own, shared with no other server", why)
    return "random:" + uuid.uuid4().hex


def fingerprint_path(path: str, revision: str = "", full: bool = False) -> str:
    """The weights fingerprint of a checkpoint directory (or single weight file)."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not any(
            part.startswith(".") for part in f.relative_to(p).parts))
    else:
        return random_fingerprint(f"model path {path!r} is not a local directory")
    h = xxhash.xxh3_128()
    h.update(revision.encode())
    hashed = 0
    for f in files:
        rel = f.name if p.is_file() else str(f.relative_to(p))
        if f.suffix == ".json" and f.stat().st_size <= SMALL_JSON:
            part = f.read_bytes()
        elif f.suffix in WEIGHT_SUFFIXES:
            part = _file_digest(f, full)
            hashed += 1
        else:
            continue  # tokenizer, README, ...: they change token ids (already in the page hash) or nothing
        h.update(rel.encode() + b"\0" + xxhash.xxh3_128_digest(part))
    if not hashed:
        return random_fingerprint(f"no weight files under {path!r}")
    return h.hexdigest()


def _file_digest(f: Path, full: bool) -> bytes:
    h = xxhash.xxh3_128()
    size = f.stat().st_size
    h.update(struct.pack("<Q", size))
    with open(f, "rb") as fh:
        if full:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                h.update(chunk)
            return h.digest()
        fd = fh.fileno()
        spans = _safetensors_spans(fd, size, h) if f.suffix == ".safetensors" else None
        if spans is None:  # not safetensors (or unparseable): evenly spaced samples
            step = max(1, size // OTHER_SAMPLES)
            spans = [(min(i * step, max(0, size - 4096)), 4096) for i in range(OTHER_SAMPLES)]
        for off, n in spans:
            h.update(os.pread(fd, n, off))
    return h.digest()


def _safetensors_spans(fd: int, size: int, h) -> list[tuple[int, int]] | None:
    """Hash the header into `h`; the (offset, length) samples of every tensor's data."""
    if size < 8:
        return None
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > min(size - 8, 100 << 20):
        return None
    raw = os.pread(fd, n, 8)
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    h.update(raw)
    base, spans = 8 + n, []
    for name, t in sorted(header.items()):
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        b, e = t.get("data_offsets", (0, 0))
        k = min(SAMPLE, e - b)
        if k > 0:
            spans += [(base + b, k), (base + (b + e - k) // 2, k), (base + e - k, k)]
    return spans


@dataclass(frozen=True)
class ModelIdentity:
    """Everything about the served model that changes the bytes of a KV page.

    `label` is for people (the served name); the digest leaves it out, so servers of one
    checkpoint share pages whatever they call it or wherever it lives. (`model_id` in the
    objectcache config keeps deployments apart on purpose: it goes into the namespace.)
    """

    label: str
    weights: str  # fingerprint_path of the checkpoint, or random:...
    dtype: str = ""  # --dtype (compute dtype: changes K/V values)
    kv_dtype: str = ""  # the *logical* KV dtype (fp8_e4m3 and fp8_e5m2 both store as uint8)
    quantization: str = ""
    overrides: str = ""  # --json-model-override-args (RoPE scaling changes K), normalized
    kv_scales: str = ""  # digest of --quantization-param-path (per-tensor k/v scales)
    lora: str = ""  # digest of the adapters loaded at start

    @property
    def digest(self) -> str:
        d = asdict(self)
        del d["label"]
        return xxhash.xxh3_128_hexdigest(json.dumps(d, sort_keys=True).encode())

    def after_update(self, weights: str) -> "ModelIdentity":
        """After SGLang swapped the weights: those weights' fingerprint (the same as a server
        started on that checkpoint gets, so they share), or a random one."""
        return ModelIdentity(**{**asdict(self), "weights": weights})


def normalized_json(text) -> str:
    if not text:
        return ""
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except ValueError:
            return text
    return json.dumps(text, sort_keys=True)
