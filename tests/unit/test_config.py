"""Settings: timeouts that fit SGLang's storage-thread join (C1), validation of every value
a user can get wrong (H1, H2, H3), and redaction (H10). No store needed."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import pytest

from sglang_objectcache.config import ConfigError, ObjectCacheConfig, parse
from sglang_objectcache.store import StoreSettings, http1

ROOT = str(Path(__file__).resolve().parents[2])
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "configs", "*")))
# SGLang joins each storage thread for 10 s, then raises and the scheduler dies
# (managers/cache_controller.py `_stop_storage_threads`).
SGLANG_JOIN_S = 10.0


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("OBJECTCACHE_")]:  # every field has its variable
        monkeypatch.delenv(name)


def uncapped_s(cfg: ObjectCacheConfig) -> float:
    """Every attempt stalling: a connect, then (retries + 1) read timeouts."""
    return cfg.connect_timeout_s + (cfg.retries + 1) * cfg.read_timeout_s


def worst_s(cfg: ObjectCacheConfig) -> float:
    return min(uncapped_s(cfg), getattr(cfg, "request_deadline_s", math.inf))


def kv(**extra) -> dict:
    return {"bucket": "kv", **extra}


# --- C1: timeouts -----------------------------------------------------------------------------


def test_the_default_timeouts_fit_inside_sglangs_storage_thread_join():
    cfg = ObjectCacheConfig(bucket="kv")
    assert worst_s(cfg) < SGLANG_JOIN_S
    assert cfg.worst_case_s() < SGLANG_JOIN_S and cfg.worst_case_s() >= worst_s(cfg)
    # and the attempts alone, reconnecting each time, without the deadline's help
    assert (cfg.retries + 1) * (cfg.connect_timeout_s + cfg.read_timeout_s) < SGLANG_JOIN_S
    assert cfg.request_deadline_s <= 8


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_config_parses_and_fits(path):
    assert len(SHIPPED) >= 5
    cfg = parse("@" + path)
    assert not cfg.allow_slow_store
    assert worst_s(cfg) < SGLANG_JOIN_S
    # examples are copied: they must fit without the deadline's help too
    assert (cfg.retries + 1) * (cfg.connect_timeout_s + cfg.read_timeout_s) < SGLANG_JOIN_S, \
        (cfg.connect_timeout_s, cfg.read_timeout_s, cfg.retries)


def test_a_slow_store_is_refused_unless_allowed():
    slow = kv(connect_timeout_s=2.0, read_timeout_s=10.0, retries=3, request_deadline_s=30.0)
    with pytest.raises(ConfigError, match=r"^request_deadline_s: .*10 s.*allow_slow_store"):
        ObjectCacheConfig.from_dict(slow)
    assert ObjectCacheConfig.from_dict({**slow, "allow_slow_store": True}).worst_case_s() == 30.0
    # long reads are fine where the deadline cuts the call short of 8 s
    assert ObjectCacheConfig.from_dict(kv(read_timeout_s=30.0, retries=2)).worst_case_s() == 4.0
    with pytest.raises(ConfigError, match="^request_deadline_s"):
        ObjectCacheConfig.from_dict(kv(request_deadline_s=9.0, read_timeout_s=5.0))


@pytest.mark.parametrize("key", ["request_deadline_s", "min_rate_mbps"])
def test_the_new_limits_must_be_positive(key):
    with pytest.raises(ConfigError, match=f"^{key}: invalid value"):
        ObjectCacheConfig.from_dict(kv(**{key: 0}))


# --- H2: numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key", [
    ('{"bucket": "kv", "read_timeout_s": Infinity}', "read_timeout_s"),
    ('{"bucket": "kv", "connect_timeout_s": NaN}', "connect_timeout_s"),
    ('{"bucket": "kv", "negative_ttl_s": -Infinity}', "negative_ttl_s"),
    ('{"bucket": "kv", "request_deadline_s": Infinity, "allow_slow_store": true}', "request_deadline_s"),
    ('{"bucket": "kv", "min_rate_mbps": Infinity}', "min_rate_mbps"),
    ('{"bucket": "kv", "layerwise": {"layer_timeout_s": Infinity}}', "layerwise.layer_timeout_s"),
    ('{"bucket": "kv", "scheduler": {"bandwidth_mbps": Infinity}}', "scheduler.bandwidth_mbps"),
    ('{"bucket": "kv", "scheduler": {"starvation_ms": NaN}}', "scheduler.starvation_ms"),
])
def test_non_finite_numbers_are_refused_by_name(text, key):
    with pytest.raises(ConfigError, match=f"^{key}: must be a finite number"):
        parse(text)


def test_an_unbounded_starvation_is_a_setting_nan_is_not():
    import math

    from sglang_objectcache.config import SchedulerConfig

    assert SchedulerConfig(starvation_ms=math.inf).starvation_ms == math.inf  # no bound (the simulator's lane)
    with pytest.raises(ConfigError, match="starvation_ms"):
        SchedulerConfig(starvation_ms=math.nan)


def test_toml_inf_is_refused_too(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('bucket = "kv"\nread_timeout_s = inf\n')
    with pytest.raises(ConfigError, match="^read_timeout_s: must be a finite number"):
        parse("@" + str(p))


@pytest.mark.parametrize("key,raw", [("layerwise.host_cache_mb", {"layerwise": {"host_cache_mb": -2}}),
                                     ("small_object_warn_kb", {"small_object_warn_kb": -1})])
def test_sizes_must_not_be_negative(key, raw):
    # H12: "a bad value fails at startup with the key's name" (README); a negative host
    # tier was taken as "off" without a word
    with pytest.raises(ConfigError, match=f"^{key}"):
        ObjectCacheConfig.from_dict(kv(**raw))
    assert ObjectCacheConfig.from_dict(kv(layerwise={"host_cache_mb": 0})).layerwise.host_cache_mb == 0


@pytest.mark.parametrize("value", [0, -1.0])
def test_layer_timeout_must_be_positive(value):
    with pytest.raises(ConfigError, match="^layerwise.layer_timeout_s"):
        ObjectCacheConfig.from_dict(kv(layerwise={"layer_timeout_s": value}))


def test_negative_ttl_is_at_most_five_minutes():
    assert ObjectCacheConfig.from_dict(kv(negative_ttl_s=300)).negative_ttl_s == 300
    for value in (301, 1e9):
        with pytest.raises(ConfigError, match="^negative_ttl_s"):
            ObjectCacheConfig.from_dict(kv(negative_ttl_s=value))


# --- H1: key_prefix -----------------------------------------------------------------------------


def test_key_prefix_must_make_object_store_paths():
    # each of these made every GET and PUT a StoreError("client") after a clean start
    for bad in ("a//b", "a/../b", "..", ".", "./a", "a/./b", "a/.", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a\tb",
                "a\u0085b"):
        with pytest.raises(ConfigError, match="^key_prefix: "):
            ObjectCacheConfig(bucket="kv", key_prefix=bad)
    for good in ("objectcache", "team/kv", "/objectcache/", "a+b=c:d", "é", "a.b", "..a", "a-1_2~3"):
        assert ObjectCacheConfig(bucket="kv", key_prefix=good).key_prefix == good


# --- H2: bucket and endpoint --------------------------------------------------------------------


def test_bucket_follows_s3_naming_rules():
    for bad in ("My-Bucket", "my_bucket", "-kv", "kv-", ".kv", "kv.", "k..v", "192.168.1.1", "a" * 64, "xn--kv",
                "sthree-kv", "kv-s3alias", "kv--ol-s3", "k/v", "k v", "kv?", "k\nv"):
        with pytest.raises(ConfigError, match="^bucket: "):
            ObjectCacheConfig(bucket=bad)
    for good in ("kv", "objectcache", "my-kv-cache--usw2-az1--x-s3", "a.b-c", "a" * 63, "t0-0123456789"):
        assert ObjectCacheConfig(bucket=good).bucket == good


@pytest.mark.parametrize("url", ["ftp://store:9000", "store:9000", "//store:9000", "http://", "http:///x",
                                 "http://store:9000/?x=1", "http://store:9000/#top", "http://store:9000?",
                                 "http://store:99999", "http://store:port", "http://sto re:9000",
                                 "http://store:9000\r\nX-Injected: 1"])
def test_endpoint_url_is_plain_http_or_https(url):
    with pytest.raises(ConfigError, match="^endpoint_url: "):
        ObjectCacheConfig(bucket="kv", endpoint_url=url)


def test_endpoint_url_with_credentials_is_refused_without_echoing_them():
    for url in ("http://user:hunter2@store:9000", "https://hunter2@store", "user:hunter2@store:9000"):
        with pytest.raises(ConfigError, match="^endpoint_url: ") as e:
            ObjectCacheConfig(bucket="kv", endpoint_url=url)
        assert "hunter2" not in str(e.value)


def test_endpoint_scheme_is_case_insensitive():
    # HTTP:// used to make obstore refuse plain http (allow_http false) and skip our clients
    cfg = ObjectCacheConfig(bucket="kv", endpoint_url="HTTP://127.0.0.1:8333", access_key_id="a",
                            secret_access_key="s")
    assert cfg.endpoint_url == "http://127.0.0.1:8333"
    assert http1.plain(StoreSettings.of(cfg))
    assert ObjectCacheConfig(bucket="kv", endpoint_url="Https://s3.example.com/base").endpoint_url == \
        "https://s3.example.com/base"
    assert ObjectCacheConfig(bucket="kv", endpoint_url="http://[::1]:9000").endpoint_url == "http://[::1]:9000"


# --- the environment overlay: OBJECTCACHE_<FIELD>, the config wins ---------------------------


def test_every_field_can_come_from_the_environment_and_the_config_wins(monkeypatch):
    for name, value in {"BUCKET": "from-env", "RETRIES": "0", "VERIFY_TLS": "off", "METRICS_INTERVAL_S": "0.5",
                        "TREE_ENDPOINT": "1", "ACCESS_LOG_MAX_KEYS": "7", "LAYERWISE_TRACE_PATH": "/tmp/t.json",
                        "LAYERWISE_KERNELS": "torch", "NIXL_PLUGIN_PARAMS": '{"a": "b"}', "REGION": ""}.items():
        monkeypatch.setenv("OBJECTCACHE_" + name, value)
    cfg = parse('{"retries": 2, "layerwise": {"kernels": "triton"}}')
    assert cfg.bucket == "from-env" and cfg.retries == 2 and cfg.verify_tls is False
    assert cfg.metrics_interval_s == 0.5 and cfg.tree_endpoint is True and cfg.access_log_max_keys == 7
    assert cfg.region == "us-east-1"  # an empty variable is unset
    assert cfg.layerwise.trace_path == "/tmp/t.json" and cfg.layerwise.kernels == "triton"
    assert dict(cfg.nixl_plugin_params) == {"a": "b"}


@pytest.mark.parametrize("name, value, match", [
    ("RETRIES", "two", r"^retries: OBJECTCACHE_RETRIES must be an integer, got 'two'"),
    ("ALLOW_CLEAR", "maybe", r"^allow_clear: OBJECTCACHE_ALLOW_CLEAR must be true/false"),
    ("NIXL_PLUGIN_PARAMS", "[1]", r"^nixl_plugin_params: OBJECTCACHE_NIXL_PLUGIN_PARAMS must be a JSON object"),
    ("LAYERWISE_WINDOW_LAYERS", "0", r"^layerwise\.window_layers: must be >= 1"),
    ("LAYERWISE_KERNELS", "cuda", r"^layerwise\.kernels: must be auto, triton or torch"),
    ("ACCESS_LOG_INTERVAL_S", "-1", r"^access_log_interval_s: invalid value -1\.0"),
    ("METRICS_INTERVAL_S", "0", r"^metrics_interval_s: invalid value 0\.0"),
    ("ACCESS_LOG_MAX_KEYS", "0", r"^access_log_max_keys: invalid value 0"),
])
def test_a_bad_environment_value_is_refused_by_key(monkeypatch, name, value, match):
    monkeypatch.setenv("OBJECTCACHE_" + name, value)
    with pytest.raises(ConfigError, match=match):
        ObjectCacheConfig.from_dict(kv())


# --- H3: what goes into our client's headers ----------------------------------------------------


@pytest.mark.parametrize("key", ["region", "access_key_id"])
@pytest.mark.parametrize("value", ["us-east-1\r\nX-Injected: 1", "us-east-1\n", "a\x00b", "a b", "a\tb"])
def test_header_values_with_control_characters_are_refused(key, value):
    extra = {"secret_access_key": "s"} if key == "access_key_id" else {}
    with pytest.raises(ConfigError, match=f"^{key}: "):
        ObjectCacheConfig.from_dict(kv(**{key: value}, **extra))


def test_a_session_token_with_control_characters_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="^session_token: ") as e:
        ObjectCacheConfig.from_dict(kv(access_key_id="a", secret_access_key="s", session_token="tok-SECRET\r\nX: 1"))
    assert "SECRET" not in str(e.value)


# --- H10: redaction -----------------------------------------------------------------------------


def test_nixl_plugin_params_are_redacted_in_repr_and_redacted():
    cfg = ObjectCacheConfig.from_dict(kv(transport="nixl", nixl_plugin_params={
        "access_key": "NIXL-AK-VALUE", "secret_key": "NIXL-SECRET-VALUE", "session_token": "NIXL-TOKEN-VALUE"}))
    assert cfg.nixl_plugin_params["secret_key"] == "NIXL-SECRET-VALUE"  # the plugin still gets them
    for text in (repr(cfg), str(cfg), str(cfg.redacted()), json.dumps(cfg.redacted())):
        assert "NIXL-" not in text, text
        assert "secret_key" in text  # which params were set stays visible
    assert cfg.redacted()["nixl_plugin_params"] == {"access_key": "***", "secret_key": "***",
                                                   "session_token": "***"}
    # the rest of repr is as the dataclass's: the secrets hidden, everything else shown
    cfg = ObjectCacheConfig.from_dict(kv(access_key_id="AK", secret_access_key="SHH", session_token="TOK",
                                         nixl_plugin_params={"k": "v"}))
    text = repr(cfg)
    assert "SHH" not in text and "TOK" not in text and "'v'" not in text
    assert text.startswith("ObjectCacheConfig(bucket='kv'") and "LayerwiseConfig(" in text


# --- H4: no unchecked pages ------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, True])
def test_verify_checksums_is_refused_checksums_are_always_verified(value, tmp_path):
    # `verify_checksums: false` put unchecked bytes into SGLang's host pool; naming the
    # setting at all now fails at startup, saying why, from inline JSON or a file alike.
    with pytest.raises(ConfigError, match=r"^verify_checksums: removed: checksums are always verified"):
        ObjectCacheConfig.from_dict(kv(verify_checksums=value))
    path = tmp_path / "c.toml"
    path.write_text(f'bucket = "kv"\nverify_checksums = {str(value).lower()}\n')
    with pytest.raises(ConfigError, match=r"^verify_checksums: removed"):
        parse(f"@{path}")
    assert "verify_checksums" not in ObjectCacheConfig(bucket="kv").redacted()
    assert not hasattr(ObjectCacheConfig(bucket="kv"), "verify_checksums")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^bucket"):
        ObjectCacheConfig.from_dict({})
    with pytest.raises(ConfigError, match="^bucketz: unknown"):
        ObjectCacheConfig.from_dict({"bucket": "b", "bucketz": 1})
    with pytest.raises(ConfigError, match="^max_concurrency"):
        ObjectCacheConfig.from_dict({"bucket": "b", "max_concurrency": -1})
    with pytest.raises(ConfigError, match="^read_timeout_s: expected a number"):
        ObjectCacheConfig.from_dict({"bucket": "b", "read_timeout_s": "fast"})
    with pytest.raises(ConfigError, match="^scheduler.policy"):
        ObjectCacheConfig.from_dict({"bucket": "b", "scheduler": {"policy": "random"}})
    with pytest.raises(ConfigError, match="^layerwise.nope"):
        ObjectCacheConfig.from_dict({"bucket": "b", "layerwise": {"nope": 1}})
    cfg = ObjectCacheConfig.from_dict({"bucket": "b", "access_key_id": "AK", "secret_access_key": "SHH",
                                       "backend_name": "x", "interface_v1": 1})
    assert "SHH" not in repr(cfg) and "SHH" not in str(cfg.redacted())
    p = tmp_path / "c.toml"
    p.write_text('bucket = "kv"\nmax_concurrency = 8\n[layerwise]\nenabled = true\n')
    cfg = parse("@" + str(p))
    assert cfg.max_concurrency == 8 and cfg.layerwise.enabled
