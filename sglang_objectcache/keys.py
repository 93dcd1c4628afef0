"""Object keys: a namespace digest plus a content key per page.

    {prefix}/{namespace}/{shard}/{content}
    namespace = xxh3_64 of everything that changes the bytes of a page (16 hex): the model's
                identity (weights, dtypes, quantization, overrides, adapters; `identity.py`),
                the page geometry, the rank's shard of heads, layers and context
    content   = xxh3_128 of (namespace, SGLang's page hash) (32 hex)
    shard     = first SHARD_CHARS hex characters of content

SGLang's page hash is a SHA-256 chain over the token ids of every page up to this one,
seeded with the request's extra_key/cache_salt, so equal prefixes give equal keys and
tenants differ by construction. SGLang's hash carries no model, dtype, layout or rank; the
namespace adds them, so a page written by another model, dtype, page size, TP shard or PP
stage can never be read as ours. The shard spreads keys over S3's prefix partitions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property

import xxhash

from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.objformat import VERSION, PageGeometry

SHARD_CHARS = 2
NAMESPACE_FILE = "_namespace.json"


@dataclass(frozen=True)
class Namespace:
    model: str  # a label for people: the served name or `model_id`
    geometry: PageGeometry
    kv_shard: str  # "tp{rank}of{size}" for head-sharded MHA, "replicated" for MLA
    layers: str  # "{start}-{end}" of this pipeline stage
    extra: str = ""  # attention-CP / DCP ranks when used, and the operator's tenant salt
    format_version: int = VERSION
    identity: str = ""  # ModelIdentity.digest: what the label cannot tell apart
    kv_dtype: str = ""  # the logical KV dtype (the geometry's is the stored one)

    def describe(self) -> dict:
        d = asdict(self)
        d["geometry"]["row_bytes"] = list(self.geometry.row_bytes)
        return d

    @cached_property  # every object key uses it; a frozen dataclass, so it never changes
    def digest(self) -> str:
        d = self.describe()
        del d["model"]  # a label for people; `identity` says what the weights are
        return xxhash.xxh3_64_hexdigest(json.dumps(d, sort_keys=True).encode())


@dataclass(frozen=True)
class KeyScheme:
    prefix: str
    namespace: Namespace

    @property
    def namespace_prefix(self) -> str:
        """Every object of this namespace starts with this; nothing else does."""
        return f"{self.prefix.strip('/')}/{self.namespace.digest}/"

    @property
    def namespace_file(self) -> str:
        return self.namespace_prefix + NAMESPACE_FILE

    def content_digest(self, page_hash: str) -> bytes:
        """16 bytes, stored in the object header to bind the bytes to their key."""
        return xxhash.xxh3_128_digest((self.namespace.digest + page_hash).encode())

    def object_key(self, page_hash: str) -> str:
        content = self.content_digest(page_hash).hex()
        return f"{self.namespace_prefix}{content[:SHARD_CHARS]}/{content}"

    def owns(self, key: str) -> bool:
        return key.startswith(self.namespace_prefix)


@dataclass(frozen=True)
class RankIdentity:
    """One rank's description, neutral of SGLang: both modes build it (`sglang/rank.py`) and
    derive the namespace from it here, so each reads what the other wrote."""

    model: ModelIdentity
    geometry: PageGeometry
    is_mla: bool
    tp: tuple[int, int] = (0, 1)  # (rank, size) of the attention TP group that shards heads
    start_layer: int = 0
    cp: tuple[int, int] = (0, 1)
    dcp: tuple[int, int] = (0, 1)

    def updated(self, model: ModelIdentity) -> "RankIdentity":
        return RankIdentity(model, self.geometry, self.is_mla, self.tp, self.start_layer, self.cp, self.dcp)


def make_namespace(cfg, rank: RankIdentity) -> Namespace:
    """The namespace of one rank's pages. `cfg` is an ObjectCacheConfig: `model_id` adds a
    label (and so separates), it never replaces the model's identity."""
    extra = []
    if rank.cp[1] > 1:
        extra.append(f"cp{rank.cp[0]}of{rank.cp[1]}")
    if rank.dcp[1] > 1:
        extra.append(f"dcp{rank.dcp[0]}of{rank.dcp[1]}")
    if cfg.tenant_salt:
        extra.append("salt:" + cfg.tenant_salt)
    if cfg.model_id:
        extra.append("model_id:" + cfg.model_id)
    return Namespace(
        model=cfg.model_id or rank.model.label,
        geometry=rank.geometry,
        kv_shard="replicated" if rank.is_mla else f"tp{rank.tp[0]}of{rank.tp[1]}",
        layers=f"{rank.start_layer}-{rank.start_layer + rank.geometry.num_layers}",
        extra=",".join(extra),
        identity=rank.model.digest,
        kv_dtype=rank.model.kv_dtype,
    )
