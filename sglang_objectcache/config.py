"""objectcache settings: one frozen dataclass, parsed from SGLang's extra-config dict.

`--hicache-storage-backend-extra-config` takes JSON or `@file` (.json/.toml/.yaml); SGLang
parses it and hands the dict to the backend. Every error names the offending key.
Credentials may be given here, but the standard AWS chain (env, ~/.aws, instance role) is
the better place; they are never logged (see `redacted`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

# Keys SGLang itself leaves in the dict (dynamic-backend plumbing, --file-storage-path).
SGLANG_KEYS = frozenset(
    {"backend_name", "module_path", "class_name", "interface_v1", "file_storage_path", "allocator"}
)
_SECRETS = ("secret_access_key", "session_token")


class ConfigError(ValueError):
    """A bad objectcache setting. The message starts with the key's name."""


@dataclass(frozen=True)
class LayerwiseConfig:
    enabled: bool = False
    # Host-DRAM tier kept by layerwise mode (SGLang's own host tier is off there).
    host_cache_mb: int = 1024
    # Pages fetched per ranged-GET group and layers fetched ahead of the forward.
    window_layers: int = 4
    # Consecutive layers of a page read by one ranged GET. 1 (the paper's pipeline) makes
    # the first layer arrive soonest; more cuts the request count by that factor, for
    # stores where each request costs more than its bytes (small layers, CPU-bound servers).
    # 0 = auto: the fewest layers that make a GET at least 1 MiB (loader.auto_layers_per_get).
    layers_per_get: int = 0
    # Where the GETs run: "process", a worker process writing into shared staging memory
    # (keeps the serving process's GIL for the forward; see layerwise/fetch.py), or
    # "thread", a thread pool in the serving process.
    fetch: str = "process"
    # A layer not ready after this long makes the request fall back to recompute.
    layer_timeout_s: float = 5.0
    # A failed or late load re-queues its requests for a full recompute (needs
    # --disable-overlap-schedule); off, SGLang aborts them with HTTP 503.
    recompute_on_failure: bool = True
    trace_path: str = ""

    def __post_init__(self) -> None:
        if self.window_layers < 1:
            raise ConfigError(f"window_layers: must be >= 1, got {self.window_layers!r}")
        if self.layers_per_get < 0:
            raise ConfigError(f"layers_per_get: must be >= 1, or 0 for auto; got {self.layers_per_get!r}")
        if self.fetch not in ("process", "thread"):
            raise ConfigError(f"fetch: must be 'process' or 'thread', got {self.fetch!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "deadline"  # deadline | fair | fifo
    bandwidth_mbps: float = 0.0  # 0 = no cap
    max_inflight: int = 32
    starvation_ms: float = 200.0
    # A queued write waits behind reads at most this long (backups are not latency-bound).
    write_starvation_ms: float = 2000.0
    # Token-bucket depth: how much of the cap an idle scheduler may start at once.
    burst_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.policy not in ("deadline", "fair", "fifo"):
            raise ConfigError(f"policy: must be deadline, fair or fifo, got {self.policy!r}")
        for key in ("bandwidth_mbps", "starvation_ms", "write_starvation_ms", "burst_ms"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)!r}")
        if self.max_inflight < 1:
            raise ConfigError(f"max_inflight: must be >= 1, got {self.max_inflight!r}")


@dataclass(frozen=True)
class ObjectCacheConfig:
    bucket: str = ""
    endpoint_url: str = ""  # empty = AWS S3 for `region`
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    addressing_style: str = "path"  # path | virtual
    verify_tls: bool = True
    create_bucket: bool = False
    key_prefix: str = "objectcache"
    tenant_salt: str = ""  # separates deployments that must never share pages
    # An extra label in the namespace (it separates, it never joins): the namespace already
    # covers the weights (`identity.py`), so servers of one checkpoint share pages without it.
    model_id: str = ""
    # Fingerprint every byte of the weight files instead of samples of each tensor (for
    # checkpoints edited in place in a few bytes; costs one full read of the weights).
    full_fingerprint: bool = False
    # `/hicache/storage-backend/clear` deletes this namespace's pages, every server's, only
    # if set; otherwise the server just forgets what it knows.
    allow_clear: bool = False
    transport: str = "auto"  # auto | obstore | boto3 | nixl
    max_concurrency: int = 0  # 0: the transport's measured default (obstore 128, boto3 16)
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 10.0
    retries: int = 2
    retry_mode: str = "standard"  # botocore retry modes: standard | adaptive | legacy
    verify_checksums: bool = True
    # SigV4 over the PUT body (obstore). Off by default: every object carries xxh3 sums that
    # each read checks, the body of an HTTPS PUT is covered by TLS, and over plain HTTP an
    # unsigned GET reply is open to the same tampering, so the SHA-256 guards nothing here
    # but costs client CPU (benchmarks/results/storage.json; boto3 signs over HTTP regardless).
    sign_payload: bool = False
    # obstore transport: receive whole-object GETs with objectcache's own HTTP/1.1 client
    # where it applies (http://, static keys, path style; `store/httpget.py`), else obstore.
    # Where the host layout keeps a page's rows long (layer_first, page_first_direct; 2 MiB
    # pages and up), it receives each page straight into its host-pool slot.
    http_get: bool = True
    # obstore transport: send PUTs with objectcache's own HTTP/1.1 client where it applies
    # (as http_get, and sign_payload off; `store/httpput.py`), else obstore.
    http_put: bool = True
    # After a store failure, reads answer "miss" for this long instead of retrying at once.
    negative_ttl_s: float = 2.0
    exists_cache_entries: int = 200_000
    # Warn at startup when a page object is smaller than this: per-request cost dominates.
    small_object_warn_kb: int = 256
    nixl_plugin_params: Mapping[str, str] = field(default_factory=dict)
    layerwise: LayerwiseConfig = field(default_factory=LayerwiseConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigError("bucket: required (the S3 bucket that holds the KV objects)")
        checks = {
            "addressing_style": self.addressing_style in ("path", "virtual"),
            "transport": self.transport in ("auto", "obstore", "boto3", "nixl"),
            "retry_mode": self.retry_mode in ("standard", "adaptive", "legacy"),
            "max_concurrency": self.max_concurrency >= 0,
            "connect_timeout_s": self.connect_timeout_s > 0,
            "read_timeout_s": self.read_timeout_s > 0,
            "retries": self.retries >= 0,
            "negative_ttl_s": self.negative_ttl_s >= 0,
            "exists_cache_entries": self.exists_cache_entries >= 0,
            "key_prefix": bool(self.key_prefix.strip("/")) and " " not in self.key_prefix,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}: invalid value {getattr(self, key)!r}")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("access_key_id: give both access_key_id and secret_access_key, or neither")

    def redacted(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _SECRETS:
            if d[k]:
                d[k] = "***"
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "ObjectCacheConfig":
        raw = dict(raw or {})
        if "@" in raw:  # not a key; guards against passing an unparsed "@file" string
            raise ConfigError("@: pass the file as --hicache-storage-backend-extra-config @path")
        for k in SGLANG_KEYS:
            raw.pop(k, None)
        _env_defaults(raw)
        return _build(cls, raw, "")


def load_dict(text) -> dict:
    """The dict behind SGLang's extra-config flag: JSON text, '@path' (json/toml/yaml) or a dict."""
    if isinstance(text, Mapping):
        return dict(text)
    if text.startswith("@"):
        path = text[1:]
        with open(path, "rb") as f:
            if path.endswith(".toml"):
                import tomllib

                return tomllib.load(f)
            if path.endswith((".yaml", ".yml")):
                import yaml

                return yaml.safe_load(f)
            return json.load(f)
    return json.loads(text)


def parse(text) -> ObjectCacheConfig:
    """Parse JSON text or '@path' (json/toml/yaml), the way SGLang's flag does."""
    return ObjectCacheConfig.from_dict(load_dict(text))


def _env_defaults(raw: dict) -> None:
    # OBJECTCACHE_ENDPOINT_URL / OBJECTCACHE_BUCKET let one config file serve many hosts.
    for key in ("endpoint_url", "bucket", "region", "key_prefix", "tenant_salt"):
        env = os.environ.get("OBJECTCACHE_" + key.upper())
        if env and key not in raw:
            raw[key] = env


def _build(cls, raw: Mapping[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}{unknown[0]}: unknown objectcache setting; valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        f = known[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs[name] = _coerce(f"{where}{name}", value, default)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def _coerce(name: str, value: Any, default: Any) -> Any:
    if dataclasses.is_dataclass(default):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table/object, got {type(value).__name__}")
        return _build(type(default), value, name + ".")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        raise ConfigError(f"{name}: expected a table/object, got {type(value).__name__}")
    return value
