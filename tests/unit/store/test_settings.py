"""StoreSettings: a transport gets the config's store fields and nothing else; secrets stay hidden."""

from __future__ import annotations

import dataclasses

import pytest

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import StoreSettings, make_store
from sglang_objectcache.store.boto import Boto3Store
from sglang_objectcache.store.settings import deadline_s


def test_of_takes_the_store_fields_only():
    cfg = ObjectCacheConfig.from_dict({"bucket": "kv", "region": "eu-west-1", "retries": 0,
                                       "nixl_plugin_params": {"k": "v"}, "layerwise": {"enabled": True}})
    s = StoreSettings.of(cfg)
    assert (s.bucket, s.region, s.retries, dict(s.nixl_plugin_params)) == ("kv", "eu-west-1", 0, {"k": "v"})
    names = {f.name for f in dataclasses.fields(StoreSettings)}
    assert not names & {"layerwise", "scheduler", "key_prefix", "tenant_salt", "metrics_interval_s",
                        "access_log_interval_s", "create_bucket", "allow_clear"}
    assert names <= {f.name for f in dataclasses.fields(ObjectCacheConfig)}
    assert StoreSettings.of(s) is s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bucket = "other"  # type: ignore[misc]


def test_secrets_are_not_in_the_repr():
    cfg = ObjectCacheConfig(bucket="kv", access_key_id="AKID", secret_access_key="SECRET-1",
                            session_token="TOKEN-1", nixl_plugin_params={"secret_key": "SECRET-2"})
    shown = repr(StoreSettings.of(cfg))
    assert "AKID" in shown
    for secret in ("SECRET-1", "TOKEN-1", "SECRET-2"):
        assert secret not in shown


def test_deadline_s_is_connect_read_and_the_bytes_at_min_rate_capped():
    s = StoreSettings.of(ObjectCacheConfig(bucket="kv"))  # connect 1, read 2.5, 8 Mbit/s, deadline 4
    assert deadline_s(s, 0) == pytest.approx(3.5)
    assert deadline_s(s, 8 << 20) == pytest.approx(4.0)


def test_make_store_takes_a_config_or_settings_and_hands_the_transport_settings():
    cfg = ObjectCacheConfig(bucket="kv", transport="boto3", endpoint_url="http://127.0.0.1:9")
    for given in (cfg, StoreSettings.of(cfg)):
        with make_store(given) as st:
            assert isinstance(st, Boto3Store) and st.settings == StoreSettings.of(cfg)
