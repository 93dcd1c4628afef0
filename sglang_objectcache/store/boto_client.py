"""boto3 clients for `StoreSettings`: the client itself (botocore's timeouts and retries
fitted to `request_deadline_s`: `deadline_settings`), bucket creation, the startup probe,
and how botocore's exceptions read as `StoreError` kinds. `Boto3Store` (boto.py) and the
other transports' checks (obstore cannot create a bucket) use them.
"""

from __future__ import annotations

import boto3
from botocore import exceptions as bx
from botocore.config import Config
from botocore.handlers import add_expect_header

from sglang_objectcache.store import _common as C
from sglang_objectcache.store.base import Buffer, StoreError
from sglang_objectcache.store.settings import StoreSettings


def deadline_settings(settings: StoreSettings) -> tuple[float, int]:
    """(read timeout, attempts) for botocore so that a call whose every attempt stalls ends by
    `request_deadline_s`. botocore has no total deadline of its own: its read timeout is per
    socket read, so a store that trickles a body byte by byte is not cut (obstore's and our
    own clients' are); the read timeout is cut to what the deadline leaves after a connect,
    and only the retries that fit the deadline are made."""
    read_s = min(settings.read_timeout_s, max(0.1, settings.request_deadline_s - settings.connect_timeout_s))
    per = settings.connect_timeout_s + read_s
    attempts, used = 1, per
    # botocore waits up to 2 ** (n - 1) s before its n-th retry (throttling; 50 ms x that otherwise)
    while attempts <= settings.retries and used + 2 ** (attempts - 1) + per <= settings.request_deadline_s:
        used += 2 ** (attempts - 1) + per
        attempts += 1
    return read_s, attempts


def make_client(settings: StoreSettings, *, connect_s: float, read_s: float, attempts: int, pool: int):
    """A boto3 S3 client for `settings`. Explicit keys win; otherwise boto3's credential chain."""
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id or None,
        aws_secret_access_key=settings.secret_access_key or None,
        aws_session_token=settings.session_token or None,
        region_name=settings.region,
    )
    conf = Config(
        region_name=settings.region,
        connect_timeout=connect_s,
        read_timeout=read_s,
        retries={"mode": settings.retry_mode, "total_max_attempts": attempts},
        max_pool_connections=pool,
        tcp_keepalive=True,
        s3={"addressing_style": settings.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = session.client("s3", endpoint_url=settings.endpoint_url or None, verify=settings.verify_tls, config=conf)
    # botocore sends every PUT body with "Expect: 100-continue": one more round trip per
    # PUT, and a fixed 1 s wait when the server is slow to answer it. Pages are small
    # enough to just send.
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def make_bucket(settings: StoreSettings) -> None:
    """Create `settings.bucket` (used by every transport's check, since obstore cannot)."""
    connect_s, read_s = C.check_timeouts(settings)
    client = make_client(settings, connect_s=connect_s, read_s=read_s, attempts=1, pool=1)
    kw = {}
    if settings.region != "us-east-1":  # S3 rejects an explicit us-east-1 location
        kw["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    try:
        client.create_bucket(Bucket=settings.bucket, **kw)
    except bx.ClientError as e:
        status, code = status_code(e)
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # a racing creator
            raise StoreError(C.kind_for(status, code) if status != 404 else "client",
                             f"cannot create bucket '{settings.bucket}' at {C.endpoint_of(settings)}: "
                             f"HTTP {status} {code}", status) from None
    except Exception as e:  # noqa: BLE001 - the probe that follows reports network errors
        raise StoreError("unreachable", f"cannot create bucket '{settings.bucket}' at "
                         f"{C.endpoint_of(settings)}: {C.net_reason(str(e))}") from None
    finally:
        client.close()


def status_code(e: bx.ClientError) -> tuple[int, str]:
    return (e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
            e.response.get("Error", {}).get("Code", ""))


class BufferReader:
    """A seekable file over a buffer: botocore accepts bytes or files, not memoryviews, and
    `bytes(view)` would copy every PUT. Reads return zero-copy slices."""

    def __init__(self, view: memoryview):
        self._v, self._pos = view, 0

    def read(self, n: int = -1) -> memoryview:
        end = len(self._v) if n is None or n < 0 else min(len(self._v), self._pos + n)
        out, self._pos = self._v[self._pos:end], end
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else len(self._v) + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._v)


def body_of(data: Buffer):
    if isinstance(data, (bytes, bytearray)):
        return data
    return BufferReader(memoryview(data).cast("B"))


def classify(e: Exception) -> tuple[str, str, int]:
    """(StoreError kind, short reason, HTTP status or 0) for a botocore exception."""
    if isinstance(e, bx.ClientError):
        status, code = status_code(e)
        return C.kind_for(status, code), f"HTTP {status} {code}", status
    if isinstance(e, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return "timeout", "connect timed out" if isinstance(e, bx.ConnectTimeoutError) else "read timed out", 0
    if isinstance(e, (bx.ConnectionError, bx.HTTPClientError)):
        return (*C.net_failure(str(getattr(e, "kwargs", {}).get("error", e))), 0)
    if isinstance(e, bx.NoCredentialsError):
        return "auth", "no AWS credentials found (config keys or the AWS chain)", 0
    return "client", f"{type(e).__name__}: {e}", 0


def probe(client, settings: StoreSettings) -> C.Probe:
    # ListObjectsV2 rather than HeadBucket: a HEAD error has no body, so it cannot say
    # SignatureDoesNotMatch from InvalidAccessKeyId or NoSuchBucket from a 404 route.
    try:
        client.list_objects_v2(Bucket=settings.bucket, MaxKeys=1)
        return C.Probe("ok")
    except bx.ClientError as e:
        status, code = status_code(e)
        return C.Probe(C.kind_for(status, code), code, status)
    except bx.ConnectTimeoutError:
        return C.Probe("unreachable", f"connect timed out after {C.check_timeouts(settings)[0]:g}s")
    except bx.ReadTimeoutError:
        return C.Probe("timeout", "connected, but no response")
    except (bx.ConnectionError, bx.HTTPClientError) as e:
        return C.Probe(*C.net_failure(str(getattr(e, "kwargs", {}).get("error", e))))
    except bx.NoCredentialsError:
        return C.Probe("auth", "NoCredentials")
