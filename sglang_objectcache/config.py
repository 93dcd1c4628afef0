"""objectcache settings: one frozen dataclass, parsed from SGLang's extra-config dict.

`--hicache-storage-backend-extra-config` takes JSON or `@file` (.json/.toml/.yaml); SGLang
parses it and hands the dict to the backend. Every error names the offending key.
Every field may also come from the environment, `OBJECTCACHE_<FIELD>` (a table's field:
`OBJECTCACHE_<TABLE>_<FIELD>`, e.g. OBJECTCACHE_LAYERWISE_TRACE_PATH) where the config does
not set it: the config wins (config_parse.env_overlay). Credentials may be given here, but
the standard AWS chain (env, ~/.aws, instance role) is the better place; they are never
logged (see `redacted`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from sglang_objectcache.config_parse import (ConfigError, build, check_bucket, check_endpoint, check_key_prefix,
                                             env_overlay, finite, load_dict, unprintable)

__all__ = ["ConfigError", "LayerwiseConfig", "ObjectCacheConfig", "SchedulerConfig", "load_dict", "parse"]

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


@dataclass(frozen=True)
class LayerwiseConfig:
    # Serve hits layer by layer through SGLang's external linker (sglang/layerwise_linker.py)
    # instead of the HiCache L3 backend; the plugin rewrites the server flags.
    enabled: bool = False
    # Host-DRAM tier kept by layerwise mode (SGLang's own host tier is off there); 0 = none.
    # -1: as large as SGLang's flags make its host tier (--hicache-size, else --hicache-ratio
    # times the device KV pool).
    host_cache_mb: int = -1
    # Layers of a batch staged (fetched ahead of the forward) at once: the staging memory bound.
    window_layers: int = 4
    # Consecutive layers of a page read by one ranged GET. 1 (the paper's pipeline) makes
    # the first layer arrive soonest; more cuts the request count by that factor, for
    # stores where each request costs more than its bytes (small layers, CPU-bound servers).
    # 0 = auto: the fewest layers that make a GET at least 1 MiB (layerwise.settings.auto_layers_per_get).
    layers_per_get: int = 0
    # Where the GETs run: "process", a worker process writing into shared staging memory
    # (keeps the serving process's GIL for the forward; see layerwise/fetch.py), or
    # "thread", a thread pool in the serving process.
    fetch: str = "process"
    # A layer not ready after this long with nothing of its load coming in (counted from the
    # wait or the last arrival, whichever is later) makes the request fall back to recompute.
    layer_timeout_s: float = 5.0
    # A failed or late load re-queues its requests for a full recompute (needs
    # --disable-overlap-schedule); off, SGLang aborts them with HTTP 503.
    recompute_on_failure: bool = True
    # Write the per-layer timeline of the last batches to this JSON file, plus a Chrome
    # trace beside it (layerwise/timeline.py); empty = off.
    trace_path: str = ""
    # Backend of the KV scatter/gather kernels (`sglang_objectcache.kernels`): "auto" (Triton
    # for CUDA tensors, torch otherwise), "triton" or "torch".
    kernels: str = "auto"

    def __post_init__(self) -> None:
        finite(self)
        if self.host_cache_mb < -1:
            raise ConfigError(f"host_cache_mb: must be >= -1 (-1 follows SGLang's --hicache-size/--hicache-ratio, "
                              f"0 turns the host tier off), got {self.host_cache_mb!r}")
        if not self.layer_timeout_s > 0:
            raise ConfigError(f"layer_timeout_s: must be > 0, got {self.layer_timeout_s!r}")
        if self.window_layers < 1:
            raise ConfigError(f"window_layers: must be >= 1, got {self.window_layers!r}")
        if self.layers_per_get < 0:
            raise ConfigError(f"layers_per_get: must be >= 1, or 0 for auto; got {self.layers_per_get!r}")
        if self.fetch not in ("process", "thread"):
            raise ConfigError(f"fetch: must be 'process' or 'thread', got {self.fetch!r}")
        if self.kernels not in ("auto", "triton", "torch"):
            raise ConfigError(f"kernels: must be auto, triton or torch, got {self.kernels!r}")


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
        finite(self, unbounded=("starvation_ms", "write_starvation_ms"))
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
    # Per request, how much of a hit to load (compute_or_load.py): "auto" loads a leading part
    # (all, some or none) from this server's measured store and prefill rates, recomputing the
    # rest when that is sooner; "load" always loads the whole hit. Answers are the same.
    compute_or_load: str = "auto"
    # "auto" loads less than the whole hit only when its predicted TTFT is this much shorter.
    compute_or_load_margin: float = 0.1
    # Pinned rates for "auto" instead of measured ones, for benchmarks and tests. The store's
    # read bandwidth in Mbit/s (0 = measure)...
    policy_store_mbps: float = 0.0
    # ... and its per-read latency, used only with policy_store_mbps.
    policy_store_latency_ms: float = 0.0
    # The engine's prefill rate, prompt tokens per second (0 = measure).
    policy_prefill_tokens_s: float = 0.0
    # Seconds between exports of objectcache's counters to Prometheus (SGLang's --enable-metrics).
    # The exporter runs in the scheduler process, beside the backend that holds this config.
    metrics_interval_s: float = 1.0
    # Seconds between rewrites of a server's access log in the bucket (the last reads
    # `objectcache-inspect gc` goes by; inspect/accesslog.py); 0 turns the log off.
    access_log_interval_s: float = 60.0
    # Most pages one access log remembers per namespace; beyond it a server forgets its oldest reads.
    access_log_max_keys: int = 100_000
    # Serve `GET /objectcache/tree` (`objectcache-inspect tree`) on SGLang's HTTP server. That
    # runs in SGLang's HTTP process, which reads it from the same extra-config flag (or the
    # environment, OBJECTCACHE_TREE_ENDPOINT) as the backend does.
    tree_endpoint: bool = False
    # Extra init parameters for NIXL's OBJ plugin (transport: nixl); values are never logged.
    nixl_plugin_params: Mapping[str, str] = field(default_factory=dict)
    layerwise: LayerwiseConfig = field(default_factory=LayerwiseConfig)  # the `layerwise` table
    # The `scheduler` table: the transfer scheduler (transfers.py) that orders layerwise mode's GETs and PUTs.
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        finite(self)
        if not self.bucket:
            raise ConfigError("bucket: required (the S3 bucket that holds the KV objects)")
        check_bucket(self.bucket)
        if self.endpoint_url:
            object.__setattr__(self, "endpoint_url", check_endpoint(self.endpoint_url))
        check_key_prefix(self.key_prefix)
        for key in ("region", "access_key_id"):  # both go into our client's Authorization line
            value = getattr(self, key)
            if unprintable(value):
                raise ConfigError(f"{key}: must not contain control characters or whitespace, got {value!r}")
        if unprintable(self.session_token):  # sent as a header; never echoed
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
            "compute_or_load": self.compute_or_load in ("auto", "load"),
            "compute_or_load_margin": 0 <= self.compute_or_load_margin < 1,
            "policy_store_mbps": self.policy_store_mbps >= 0,
            "policy_store_latency_ms": self.policy_store_latency_ms >= 0,
            "policy_prefill_tokens_s": self.policy_prefill_tokens_s >= 0,
            "metrics_interval_s": self.metrics_interval_s > 0,
            "access_log_interval_s": self.access_log_interval_s >= 0,
            "access_log_max_keys": self.access_log_max_keys >= 1,
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
        return build(cls, env_overlay(cls, raw))


def parse(text) -> ObjectCacheConfig:
    """Parse JSON text or '@path' (json/toml/yaml), the way SGLang's flag does."""
    return ObjectCacheConfig.from_dict(load_dict(text))
