"""Object-store transports behind one contract (`base.ObjectStore`); `make_store` picks one.

    transport   module        when
    auto        obstore_.py   obstore importable (the fast path), else boto3
    obstore     obstore_.py   Rust HTTP client on one asyncio loop; ~3x boto3's GET rate here
    boto3       boto.py       portable; any credential source boto3 knows
    nixl        nixl.py       NIXL OBJ plugin for data, boto3 for control; needs nixl + cuObject

Each transport takes `StoreSettings` (settings.py), the part of the config a transport uses;
obstore_client.py, boto_client.py and http1.py build their clients, httpget.py and httpput.py
are objectcache's own HTTP/1.1 GET and PUT paths. Only the chosen transport's module is
imported, so a missing optional package only matters when it is asked for by name.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Union

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store.base import (INTO, STOPPED, Buffer, GetResult, ObjectInfo, ObjectStat, ObjectStore,
                                          Receiver, StoreError, etag_matches)
from sglang_objectcache.store.settings import StoreSettings

__all__ = ["INTO", "STOPPED", "Buffer", "GetResult", "ObjectInfo", "ObjectStat", "ObjectStore", "Receiver",
           "StoreError", "StoreSettings", "etag_matches", "make_store", "open_store", "resolve_transport"]


def resolve_transport(cfg: Union[ObjectCacheConfig, StoreSettings]) -> str:
    if cfg.transport != "auto":
        return cfg.transport
    return "obstore" if importlib.util.find_spec("obstore") is not None else "boto3"


def make_store(cfg: Union[ObjectCacheConfig, StoreSettings]) -> ObjectStore:
    """The transport `cfg.transport` names, given `StoreSettings.of(cfg)` and nothing else of
    the config: this is the one place a config becomes store settings (callers may pass
    either). Raises StoreError("client") if the transport cannot load."""
    settings = StoreSettings.of(cfg)
    transport = resolve_transport(settings)
    if transport == "obstore":
        if importlib.util.find_spec("obstore") is None:
            raise StoreError("client", "transport 'obstore' needs the obstore package "
                                       "(pip install obstore), or set transport: boto3")
        from sglang_objectcache.store.obstore_ import ObstoreStore

        return ObstoreStore(settings)
    if transport == "nixl":
        from sglang_objectcache.store.nixl import NixlObjStore

        return NixlObjStore(settings)
    from sglang_objectcache.store.boto import Boto3Store

    return Boto3Store(settings)


def open_store(cfg: Union[ObjectCacheConfig, StoreSettings], create_bucket: Optional[bool] = None) -> ObjectStore:
    """`make_store`, then check endpoint, credentials and bucket, creating a missing bucket if
    `create_bucket` (default: a config's `create_bucket`; StoreSettings alone never create one).
    A server must not start on a store it cannot use: any failure is a RuntimeError with one
    readable line."""
    if create_bucket is None:
        create_bucket = isinstance(cfg, ObjectCacheConfig) and cfg.create_bucket
    try:
        store = make_store(cfg)
    except StoreError as e:
        raise RuntimeError(f"objectcache: {e}") from None
    warn_if_plain_http(cfg.endpoint_url)
    try:
        store.check(create_bucket=create_bucket)
    except StoreError as e:
        store.close()
        raise RuntimeError(f"objectcache: {e}") from None
    return store


def warn_if_plain_http(endpoint_url: str) -> bool:
    """Plain HTTP to another host: anyone on the path can read prompts' KV and plant pages
    whose checksums pass (they are integrity checks, not signatures). Loopback is fine."""
    import ipaddress
    import logging
    from urllib.parse import urlsplit

    u = urlsplit(endpoint_url)
    if u.scheme.lower() != "http":
        return False
    host = (u.hostname or "").lower()
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if not local:
        logging.getLogger(__name__).warning(
            "objectcache: endpoint %s is plain http:// to another host: KV pages travel unencrypted and "
            "unauthenticated; use https:// (or a private, trusted network)",
            f"{u.scheme}://{u.hostname}:{u.port or 80}")
    return not local
