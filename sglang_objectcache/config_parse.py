"""Reading objectcache settings: the raw dict (JSON, '@file'), the environment overlay, typed
values with errors that name the key, and the checks of values S3 is strict about.

Standard library only (scripts/config_doc.py imports config.py without the runtime's
dependencies). The dataclasses themselves, and what each field means, are in config.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import unicodedata
from dataclasses import fields
from typing import Any, Mapping
from urllib.parse import urlsplit

# Every field `f` can also come from the environment variable ENV_PREFIX + F (a nested
# table's field `t.f` from ENV_PREFIX + T_F): one config file can then serve many hosts.
ENV_PREFIX = "OBJECTCACHE_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A bad objectcache setting. The message starts with the key's name."""


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


# ---- the environment overlay ---------------------------------------------------------------

def env_name(path: str) -> str:
    """The variable that sets the field at `path` ("bucket", "layerwise.trace_path")."""
    return ENV_PREFIX + path.replace(".", "_").upper()


def env_overlay(cls, raw: Mapping[str, Any], where: str = "", environ: Mapping[str, str] = os.environ) -> dict:
    """`raw` with every field of `cls` it does not set taken from the environment, where
    the variable is set and not empty. The config wins over the environment; a nested
    table is overlaid field by field. Values are typed by the field's default."""
    out = dict(raw)
    for f in fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            inner = out.get(f.name, {})
            if isinstance(inner, Mapping):  # anything else is refused by `build`, naming the key
                table = env_overlay(type(default), inner, f"{where}{f.name}.", environ)
                if table:
                    out[f.name] = table
            continue
        text = environ.get(env_name(where + f.name), "")
        if text and f.name not in out:
            out[f.name] = _from_env(where + f.name, text, default)
    return out


def _from_env(path: str, text: str, default: Any) -> Any:
    """A variable's text as the field's type; ConfigError names the field and the variable."""
    try:
        if isinstance(default, bool):
            if text.strip().lower() in _TRUE + _FALSE:
                return text.strip().lower() in _TRUE
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, Mapping):
            value = json.loads(text)
            if not isinstance(value, Mapping):
                raise ValueError
            return value
    except ValueError:
        kind = {bool: "true/false (1/0, yes/no, on/off)", int: "an integer", float: "a number"}.get(
            type(default), "a JSON object")
        raise ConfigError(f"{path}: {env_name(path)} must be {kind}, got {text!r}") from None
    return text


# ---- typed values ---------------------------------------------------------------------------

def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def build(cls, raw: Mapping[str, Any], where: str = ""):
    """`cls(**raw)` with every value checked against its field's type; errors name the key."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}{unknown[0]}: unknown objectcache setting; valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {name: _coerce(f"{where}{name}", value, _default(known[name])) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def _coerce(name: str, value: Any, default: Any) -> Any:
    if dataclasses.is_dataclass(default):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table/object, got {type(value).__name__}")
        return build(type(default), value, name + ".")
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


# ---- value checks ---------------------------------------------------------------------------

def finite(obj, unbounded: tuple = ()) -> None:
    """JSON's Infinity/NaN (and TOML's inf/nan) pass `> 0`; they are no setting (except +inf
    where a field says `unbounded`)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in unbounded and value == math.inf:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")


def unprintable(text: str) -> bool:
    """Control characters (CR/LF, NUL, DEL, C1) or whitespace."""
    return any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)


# S3 bucket naming rules (general purpose and directory buckets): lower-case letters, digits,
# dots and hyphens, starting and ending with a letter or digit, at most 63 characters, no
# two adjacent dots, not an IP address, none of S3's reserved prefixes and suffixes. S3's
# minimum of 3 characters is left to the store (its check names the bucket at startup).
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--table-s3")


def check_bucket(bucket: str) -> None:
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


def check_endpoint(url: str) -> str:
    """The endpoint with its scheme in lower case; ConfigError for anything but a plain
    http(s)://host[:port][/path]."""
    if "@" in url:  # user:password@host; never echoed, as it may hold credentials
        raise ConfigError("endpoint_url: must not carry credentials (user:password@) or an '@'; "
                          "use access_key_id/secret_access_key or the AWS chain")
    if unprintable(url):
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


def check_key_prefix(prefix: str) -> None:
    """Keys are `{prefix.strip('/')}/...` and must be valid object_store paths."""
    inner = prefix.strip("/")
    why = ""
    if not inner:
        why = "must not be empty"
    elif unprintable(prefix):
        why = "must not contain control characters or whitespace"
    else:
        segments = inner.split("/")
        if "" in segments:
            why = "must not contain an empty segment ('//')"
        elif "." in segments or ".." in segments:
            why = "must not contain '.' or '..' segments"
    if why:
        raise ConfigError(f"key_prefix: {why}, got {prefix!r}")
