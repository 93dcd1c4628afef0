"""objectcache settings: one frozen dataclass, parsed from SGLang's extra-config dict.

`--hicache-storage-backend-extra-config` takes JSON or `@file` (.json/.toml/.yaml); SGLang
parses it and hands the dict to the backend. Every error names the offending key.
Credentials may be given here, but the standard AWS chain (env, ~/.aws, instance role) is
the better place; they are never logged (see `redacted`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any, Mapping
from urllib.parse import urlsplit

# Keys SGLang itself leaves in the dict (dynamic-backend plumbing, --file-storage-path).
SGLANG_KEYS = frozenset(
    {"backend_name", "module_path", "class_name", "interface_v1", "file_storage_path", "allocator"}
)
_SECRETS = ("secret_access_key", "session_token")
# Settings that are gone, and why. `verify_checksums: false` put unchecked bytes into
# SGLang's host pool, to be served as KV: a flipped bit in the store or on the way would
# become wrong output instead of a miss (review H4).
REMOVED = {
    "verify_checksums": "removed: checksums are always verified (an unchecked page would be served as KV)",
}

# SGLang joins its storage threads for 10 s before it gives up and raises ("Failed to stop
# HiCache storage threads cleanly", managers/cache_controller.py `_stop_storage_threads`),
# and a prefetch it waits on is bounded by its prefetch timeout. One call to the store must
# end well inside that: the worst case of a call (`ObjectCacheConfig.worst_case_s`) above
# this is refused unless `allow_slow_store` is set.
SLOW_STORE_S = 8.0


class ConfigError(ValueError):
    """A bad objectcache setting. The message starts with the key's name."""


@dataclass(frozen=True)
class LayerwiseConfig:
    # Serve hits layer by layer through SGLang's external linker (sglang/layerwise_linker.py)
    # instead of the HiCache L3 backend; the plugin rewrites the server flags.
    enabled: bool = False
    # Host-DRAM tier kept by layerwise mode (SGLang's own host tier is off there).
    host_cache_mb: int = 1024
    # Layers of a batch staged (fetched ahead of the forward) at once: the staging memory bound.
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
    # Write the per-layer timeline of the last batches to this JSON file, plus a Chrome
    # trace beside it (layerwise/timeline.py); empty = off, or OBJECTCACHE_TRACE's path.
    trace_path: str = ""

    def __post_init__(self) -> None:
        _finite(self)
        if self.host_cache_mb < 0:
            raise ConfigError(f"host_cache_mb: must be >= 0 (0 turns the host tier off), got {self.host_cache_mb!r}")
        if not self.layer_timeout_s > 0:
            raise ConfigError(f"layer_timeout_s: must be > 0, got {self.layer_timeout_s!r}")
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
    max_inflight: int = 32  # at most this many transfers run at once
    # deadline policy: a transfer this late (past its submission and its deadline) is no
    # longer overtaken by transfers submitted after it.
    starvation_ms: float = 200.0
    # A queued write waits behind reads at most this long (backups are not latency-bound).
    write_starvation_ms: float = 2000.0
    # Token-bucket depth: how much of the cap an idle scheduler may start at once.
    burst_ms: float = 10.0

    def __post_init__(self) -> None:
        # inf is a real setting here: no starvation bound (what the simulator compares against)
        _finite(self, unbounded=("starvation_ms", "write_starvation_ms"))
        if self.policy not in ("deadline", "fair", "fifo"):
            raise ConfigError(f"policy: must be deadline, fair or fifo, got {self.policy!r}")
        for key in ("bandwidth_mbps", "starvation_ms", "write_starvation_ms", "burst_ms"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)!r}")
        if self.max_inflight < 1:
            raise ConfigError(f"max_inflight: must be >= 1, got {self.max_inflight!r}")


@dataclass(frozen=True)
class ObjectCacheConfig:
    bucket: str = ""  # required: the S3 bucket that holds the page objects
    endpoint_url: str = ""  # empty = AWS S3 for `region`
    region: str = "us-east-1"  # the region requests are signed for (SigV4)
    # Static credentials; empty = the AWS chain (env, ~/.aws, instance role). Never logged.
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)  # goes with access_key_id
    session_token: str = field(default="", repr=False)  # for temporary credentials
    addressing_style: str = "path"  # path | virtual
    verify_tls: bool = True  # check the endpoint's TLS certificate (https)
    # Create the bucket at startup if it is missing; otherwise a missing bucket stops the server.
    create_bucket: bool = False
    key_prefix: str = "objectcache"  # every key is {key_prefix}/{namespace}/{shard}/{content}
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
    # Timeouts: one call to the store, retries included, must end inside SGLang's 10 s
    # storage-thread join (see SLOW_STORE_S). connect/read bound one attempt's stalls;
    # `request_deadline_s` bounds the whole call (obstore, boto3's stalls, our HTTP clients).
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 2.5  # one attempt's wait for the next bytes
    retries: int = 1  # attempts after the first, by the client library
    request_deadline_s: float = 4.0  # one whole call, its retries included
    # objectcache's own HTTP clients end a request that has not finished by
    # connect + read + size / min_rate (capped by request_deadline_s): a store trickling
    # bytes cannot hold a request forever. Mbit/s, as scheduler.bandwidth_mbps (8 = 1 MB/s).
    min_rate_mbps: float = 8.0
    # Accept settings whose worst case per call exceeds SLOW_STORE_S (risks SGLang's
    # storage-thread join failing, and the server with it, while the store stalls).
    allow_slow_store: bool = False
    retry_mode: str = "standard"  # botocore retry modes: standard | adaptive | legacy
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
    # Object keys remembered as present (known.py): no HEAD or PUT for them; 0 = none.
    exists_cache_entries: int = 200_000
    # Warn at startup when a page object is smaller than this: per-request cost dominates.
    small_object_warn_kb: int = 256
    # Extra init parameters for NIXL's OBJ plugin (transport: nixl); values are never logged.
    nixl_plugin_params: Mapping[str, str] = field(default_factory=dict)
    layerwise: LayerwiseConfig = field(default_factory=LayerwiseConfig)  # the `layerwise` table
    # The `scheduler` table: the transfer scheduler (sched.py) that orders layerwise mode's GETs and PUTs.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        _finite(self)
        if not self.bucket:
            raise ConfigError("bucket: required (the S3 bucket that holds the KV objects)")
        _check_bucket(self.bucket)
        if self.endpoint_url:
            object.__setattr__(self, "endpoint_url", _check_endpoint(self.endpoint_url))
        _check_key_prefix(self.key_prefix)
        for key in ("region", "access_key_id"):  # both go into our client's Authorization line
            value = getattr(self, key)
            if _unprintable(value):
                raise ConfigError(f"{key}: must not contain control characters or whitespace, got {value!r}")
        if _unprintable(self.session_token):  # sent as a header; never echoed
            raise ConfigError("session_token: must not contain control characters or whitespace")
        checks = {
            "addressing_style": self.addressing_style in ("path", "virtual"),
            "transport": self.transport in ("auto", "obstore", "boto3", "nixl"),
            "retry_mode": self.retry_mode in ("standard", "adaptive", "legacy"),
            "max_concurrency": self.max_concurrency >= 0,
            "connect_timeout_s": self.connect_timeout_s > 0,
            "read_timeout_s": self.read_timeout_s > 0,
            "retries": self.retries >= 0,
            "request_deadline_s": self.request_deadline_s > 0,
            "min_rate_mbps": self.min_rate_mbps > 0,
            # a down window longer than this reads as "the cache is off", not as a pause
            "negative_ttl_s": 0 <= self.negative_ttl_s <= 300,
            "exists_cache_entries": self.exists_cache_entries >= 0,
            "small_object_warn_kb": self.small_object_warn_kb >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}: invalid value {getattr(self, key)!r}")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("access_key_id: give both access_key_id and secret_access_key, or neither")
        worst = self.worst_case_s()
        if worst > SLOW_STORE_S and not self.allow_slow_store:
            raise ConfigError(
                f"request_deadline_s: one call to the store may take up to {worst:g}s "
                f"(request_deadline_s={self.request_deadline_s:g}, (retries+1) x (connect_timeout_s + "
                f"read_timeout_s) = {self.attempts_s():g}s), more than {SLOW_STORE_S:g}s: SGLang joins its "
                f"storage threads for 10 s and fails if a call outlasts that; lower them, or set "
                f"allow_slow_store: true to accept the risk")

    def attempts_s(self) -> float:
        """How long every attempt of one call may stall, reconnecting each time."""
        return (self.retries + 1) * (self.connect_timeout_s + self.read_timeout_s)

    def worst_case_s(self) -> float:
        """The longest one call to the store may take: its attempts, cut at the deadline."""
        return min(self.request_deadline_s, self.attempts_s())

    def redacted(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _SECRETS:
            if d[k]:
                d[k] = "***"
        # NIXL's plugin params carry the plugin's own credentials (access_key, secret_key,
        # session_token, ...) under names we do not control: every value is hidden.
        d["nixl_plugin_params"] = {k: "***" for k in d["nixl_plugin_params"]}
        return d

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "nixl_plugin_params":
                value = {k: "***" for k in value}
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "ObjectCacheConfig":
        raw = dict(raw or {})
        if "@" in raw:  # not a key; guards against passing an unparsed "@file" string
            raise ConfigError("@: pass the file as --hicache-storage-backend-extra-config @path")
        for k in SGLANG_KEYS:
            raw.pop(k, None)
        gone = sorted(set(raw) & set(REMOVED))
        if gone:
            raise ConfigError(f"{gone[0]}: {REMOVED[gone[0]]}; drop it from the config")
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


def _finite(obj, unbounded: tuple = ()) -> None:
    """JSON's Infinity/NaN (and TOML's inf/nan) pass `> 0`; they are no setting (except +inf
    where a field says `unbounded`)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in unbounded and value == math.inf:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")


def _unprintable(text: str) -> bool:
    """Control characters (CR/LF, NUL, DEL, C1) or whitespace."""
    return any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)


# S3 bucket naming rules (general purpose and directory buckets): lower-case letters, digits,
# dots and hyphens, starting and ending with a letter or digit, at most 63 characters, no
# two adjacent dots, not an IP address, none of S3's reserved prefixes and suffixes. S3's
# minimum of 3 characters is left to the store (its check names the bucket at startup).
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--table-s3")


def _check_bucket(bucket: str) -> None:
    why = ""
    if not _BUCKET.fullmatch(bucket):
        why = ("1 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit "
               "(S3 bucket naming rules)")
    elif ".." in bucket:
        why = "no two adjacent dots"
    elif bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        why = "a prefix or suffix S3 reserves"
    else:
        try:
            ipaddress.ip_address(bucket)
            why = "not an IP address"
        except ValueError:
            pass
    if why:
        raise ConfigError(f"bucket: invalid name {bucket!r}: {why}")


def _check_endpoint(url: str) -> str:
    """The endpoint with its scheme in lower case; ConfigError for anything but a plain
    http(s)://host[:port][/path]."""
    if "@" in url:  # user:password@host; never echoed, as it may hold credentials
        raise ConfigError("endpoint_url: must not carry credentials (user:password@) or an '@'; "
                          "use access_key_id/secret_access_key or the AWS chain")
    if _unprintable(url):
        raise ConfigError("endpoint_url: must not contain control characters or whitespace")
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):  # urlsplit gives the scheme in lower case
        raise ConfigError(f"endpoint_url: must start with http:// or https://, got {url!r}")
    if u.query or u.fragment or url.rstrip().endswith(("?", "#")):
        raise ConfigError(f"endpoint_url: must not have a query or fragment, got {url!r}")
    try:
        u.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ConfigError(f"endpoint_url: invalid port in {url!r}") from None
    if not u.hostname:
        raise ConfigError(f"endpoint_url: no host in {url!r}")
    return u.scheme.lower() + url[len(u.scheme):]


def _check_key_prefix(prefix: str) -> None:
    """Keys are `{prefix.strip('/')}/...` and must be valid object_store paths."""
    inner = prefix.strip("/")
    why = ""
    if not inner:
        why = "must not be empty"
    elif _unprintable(prefix):
        why = "must not contain control characters or whitespace"
    else:
        segments = inner.split("/")
        if "" in segments:
            why = "must not contain an empty segment ('//')"
        elif "." in segments or ".." in segments:
            why = "must not contain '.' or '..' segments"
    if why:
        raise ConfigError(f"key_prefix: {why}, got {prefix!r}")


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
