"""`StoreSettings`: what a transport uses of the config, and nothing else.

Every transport, and every helper in store/, takes one of these, never the whole
`ObjectCacheConfig`: the layerwise, scheduler and observability settings are not the
transport's business, and a transport cannot come to depend on them. `StoreSettings.of`
is the one place a config becomes store settings (`make_store` calls it). The values are
the config's, already checked there; the fields mean what the config's fields of the same
names mean (docs/configuration.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping


@dataclass(frozen=True)
class StoreSettings:
    bucket: str
    endpoint_url: str  # empty = AWS S3 for `region`
    region: str
    # Static credentials; empty = the AWS chain. Never shown.
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    addressing_style: str  # path | virtual
    verify_tls: bool
    transport: str  # auto | obstore | boto3 | nixl
    max_concurrency: int  # 0: the transport's own default
    connect_timeout_s: float
    read_timeout_s: float
    retries: int
    request_deadline_s: float
    min_rate_mbps: float
    retry_mode: str  # botocore's
    sign_payload: bool
    http_get: bool
    http_put: bool
    # They carry the NIXL plugin's own credentials under names we do not control: never shown.
    nixl_plugin_params: Mapping[str, str] = field(repr=False)

    @classmethod
    def of(cls, cfg) -> "StoreSettings":
        """The store settings of an `ObjectCacheConfig` (or anything with those fields;
        StoreSettings themselves come back as they are)."""
        if isinstance(cfg, cls):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def deadline_s(s: StoreSettings, nbytes: int) -> float:
    """How long one request moving `nbytes` may take in all: a connect, a read timeout's
    wait for the reply, and the bytes at `min_rate_mbps`, capped by `request_deadline_s`
    (objectcache's own HTTP clients, and boto3's per-attempt cut)."""
    rate = s.min_rate_mbps * 125_000.0  # Mbit/s -> bytes/s
    return min(s.request_deadline_s, s.connect_timeout_s + s.read_timeout_s + nbytes / rate)
