"""HTTP/1.1 pieces that objectcache's own clients (httpget.py, httpput.py) share: where they
apply (`plain`, with the AWS chain's static keys: `with_env_keys`), the connection, and
SigV4 signing of a request with no query string.

`FALL_BACK` is what either client returns for anything it does not expect; the caller
then sends the request again through obstore, which classifies every failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import os
import socket
from urllib.parse import quote, urlsplit

from sglang_objectcache.store.settings import StoreSettings

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
FALL_BACK = object()


def with_env_keys(settings: StoreSettings) -> StoreSettings:
    """`settings` with the AWS chain's static keys where the config names none: from the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), else from the shared
    credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
    AWS_PROFILE), the first two places boto3's chain looks, which obstore uses here. The fast
    clients then apply without keys in the config, which SGLang shows in its flags.
    Temporary keys (a session token, an instance role) are left to obstore, which refreshes them."""
    if settings.access_key_id:
        return settings
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY"):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        token = os.environ.get("AWS_SESSION_TOKEN")
    else:
        key, secret, token = _shared_file_keys()
    if not (key and secret) or token:
        return settings
    return dataclasses.replace(settings, access_key_id=key, secret_access_key=secret)


def _shared_file_keys() -> tuple[str, str, str]:
    from botocore.credentials import SharedCredentialProvider

    path = os.path.expanduser(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    try:
        creds = SharedCredentialProvider(path, os.environ.get("AWS_PROFILE", "default")).load()
    except Exception:  # noqa: BLE001 - an unreadable file: obstore's chain says what is wrong
        return "", "", ""
    return (creds.access_key, creds.secret_key, creds.token or "") if creds else ("", "", "")


def plain(settings: StoreSettings) -> bool:
    """Where objectcache's own HTTP clients (this one, httpput.py) can speak for obstore."""
    return (settings.endpoint_url.startswith("http://") and bool(settings.access_key_id) and not settings.session_token
            and settings.addressing_style == "path")


def host_header(endpoint_url: str) -> str:
    """`host[:port]` of the endpoint, as the Host header and SigV4 sign it: from hostname and
    port only, never userinfo (`user:pw@`) that the netloc may carry."""
    u = urlsplit(endpoint_url)
    host = u.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if u.port is None else f"{host}:{u.port}"


async def connect(host_port: tuple) -> socket.socket:
    """A non-blocking TCP connection with Nagle off (a request's headers go at once)."""
    loop = asyncio.get_running_loop()
    family, kind, proto, _, addr = (await loop.getaddrinfo(*host_port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


class Signer:
    """AWS SigV4 for requests with no query string: a body-less GET, or a PUT whose body is
    not signed (UNSIGNED-PAYLOAD, as obstore's with `sign_payload` off)."""

    def __init__(self, settings: StoreSettings):
        u = urlsplit(settings.endpoint_url)
        self.host = host_header(settings.endpoint_url)
        self.base = u.path.rstrip("/") + "/" + quote(settings.bucket, safe="") + "/"
        self.access, self.secret, self.region = settings.access_key_id, settings.secret_access_key, settings.region
        self._day, self._key = "", b""

    def request(self, key: str) -> bytes:
        return self._signed("GET", key, [], EMPTY_SHA256)

    def put(self, key: str, nbytes: int, if_absent: bool) -> bytes:
        headers = [("content-length", str(nbytes))] + ([("if-none-match", "*")] if if_absent else [])
        return self._signed("PUT", key, headers, "UNSIGNED-PAYLOAD")

    def _signed(self, method: str, key: str, headers: list[tuple[str, str]], payload: str) -> bytes:
        """The request line and headers; `headers` in lower case and sorted, before `host`."""
        path = self.base + quote(key, safe="/-_.~")
        now = dt.datetime.now(dt.timezone.utc)
        amz = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz[:8]
        if day != self._day:  # the derived key changes once a day
            k = hmac.digest(("AWS4" + self.secret).encode(), day.encode(), "sha256")
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.digest(k, part.encode(), "sha256")
            self._day, self._key = day, k
        headers = sorted([*headers, ("host", self.host), ("x-amz-content-sha256", payload), ("x-amz-date", amz)])
        signed = ";".join(name for name, _ in headers)
        lines = "".join(f"{name}:{value}\n" for name, value in headers)
        canonical = f"{method}\n{path}\n\n{lines}\n{signed}\n{payload}"
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._key, to_sign.encode(), "sha256").hexdigest()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        return (f"{method} {path} HTTP/1.1\r\n{head}Authorization: AWS4-HMAC-SHA256 "
                f"Credential={self.access}/{scope}, SignedHeaders={signed}, Signature={sig}\r\n\r\n").encode()
