"""obstore for `StoreSettings`: the S3Store (timeouts and retries fitted to
`request_deadline_s`), how obstore's exceptions read as StoreError kinds, the startup probe,
and `ObstoreRequests`: one request of each kind on the transport's private event loop, each
cut at the request deadline, through objectcache's own HTTP clients where they apply.
`ObstoreStore` (obstore_.py) builds its batch calls on it.
"""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import timedelta
from typing import Callable, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import obstore
from obstore import exceptions as ox
from obstore.store import S3Store

from sglang_objectcache.store import _common as C
from sglang_objectcache.store import httpget, httpput
from sglang_objectcache.store.base import STOPPED, Buffer, GetResult, ObjectStat, Receiver, StoreError, stopped
from sglang_objectcache.store.http1 import FALL_BACK, with_env_keys
from sglang_objectcache.store.settings import StoreSettings

_STATUS = re.compile(r"status code: (\d+)")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")


class Overdue(Exception):
    """A call cut at `request_deadline_s`, retries included."""


def make_s3store(settings: StoreSettings, *, connect_s: float, read_s: float, retries: int,
                 pool: int, deadline_s: Optional[float] = None) -> S3Store:
    """An S3Store for `settings`. No attempt outlasts `deadline_s` (default `request_deadline_s`)
    and no retry starts after it; `ObstoreStore` also cuts each call, retries included,
    at the deadline (`_within`), since a retry begun just in time could run past it."""
    deadline_s = settings.request_deadline_s if deadline_s is None else deadline_s
    kw: dict = {"region": settings.region, "virtual_hosted_style_request": settings.addressing_style == "virtual",
                "unsigned_payload": not settings.sign_payload}
    if settings.endpoint_url:
        kw["endpoint"] = _endpoint(settings)
    if settings.access_key_id:
        kw.update(access_key_id=settings.access_key_id, secret_access_key=settings.secret_access_key)
        if settings.session_token:
            kw["token"] = settings.session_token
    else:
        kw["credential_provider"] = _aws_chain(settings)
    client = {
        "allow_http": settings.endpoint_url.startswith("http://"),
        "allow_invalid_certificates": not settings.verify_tls,
        "connect_timeout": timedelta(seconds=connect_s),
        # read_timeout catches a stalled server (it also covers waiting for the headers);
        # the overall cap bounds a trickling transfer.
        "read_timeout": timedelta(seconds=read_s),
        "timeout": timedelta(seconds=deadline_s),
        "pool_max_idle_per_host": str(pool),
    }
    retry = {"max_retries": retries, "retry_timeout": timedelta(seconds=deadline_s),
             # object_store's default backoff may grow to 15 s; a retry must fit the deadline
             "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=0.5),
                         "base": 2}}
    return S3Store(settings.bucket, client_options=client, retry_config=retry, **kw)


def _endpoint(settings: StoreSettings) -> str:
    # object_store wants the bucket in the host for virtual-hosted style.
    ep = settings.endpoint_url.rstrip("/")
    if settings.addressing_style != "virtual":
        return ep
    u = urlsplit(ep)
    return urlunsplit((u.scheme, f"{settings.bucket}.{u.netloc}", u.path, "", ""))


def _aws_chain(settings: StoreSettings):
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    try:
        return Boto3CredentialProvider(boto3.session.Session(region_name=settings.region))
    except ValueError:  # the chain found nothing
        raise C.check_error(settings, C.Probe("auth", "NoCredentials")) from None


class ObstoreRequests:
    """One request of each kind, as coroutines on a private event loop in a daemon thread,
    at most `max_concurrency` in flight (a semaphore), each cut at `request_deadline_s`."""

    def __init__(self, settings: StoreSettings, max_concurrency: int):
        self.settings = settings
        self.bucket = settings.bucket
        self.max_concurrency = max_concurrency
        self._redact = C.Redactor.of(settings)
        self._store = make_s3store(settings, connect_s=settings.connect_timeout_s, read_s=settings.read_timeout_s,
                                   retries=settings.retries, pool=self.max_concurrency)
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._deadline_s = settings.request_deadline_s
        fast = with_env_keys(settings)
        self._http = httpget.HttpGet(fast) if httpget.applies(fast) else None
        self._http_put = httpput.HttpPut(fast) if httpput.applies(fast) else None
        self._conditional = C.ConditionalPuts(f"{C.endpoint_of(settings)}/{settings.bucket}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="objectcache-obstore", daemon=True)
        self._thread.start()

    async def _within(self, aw, at: Optional[float] = None):
        """`await aw`, cut at loop time `at` (default: `request_deadline_s` from now) with
        Overdue: obstore's retries and a trickling body must not outlast one call's
        deadline (config.SLOW_STORE_S)."""
        at = self._loop.time() + self._deadline_s if at is None else at
        cm = asyncio.timeout_at(at)
        try:
            async with cm:
                return await aw
        except TimeoutError:
            if cm.expired():
                raise Overdue(f"no answer within the {self._deadline_s:g}s request deadline") from None
            raise

    def _run(self, coros):
        async def gather():
            return await asyncio.gather(*coros)

        return asyncio.run_coroutine_threadsafe(gather(), self._loop).result()

    async def _get(self, key: str, size: Optional[int] = None, at: Optional[float] = None) -> GetResult:
        """`at`: the loop time the call must end by (default: request_deadline_s from now)."""
        async with self._sem:
            try:
                if size is None:
                    at = self._loop.time() + self._deadline_s if at is None else at
                    r = await self._within(obstore.get_async(self._store, key), at)
                    return await self._within(r.bytes_async(), at)
                # One Rust future, not two (the response, then its body): 27-30% less client
                # CPU per GET on this box (benchmarks/results/get_path*.json).
                return await self._within(obstore.get_range_async(self._store, key, start=0, end=size + 1), at)
            except FileNotFoundError as e:
                return self._error("GET", key, e) if "NoSuchBucket" in str(e) else None
            except Exception as e:  # noqa: BLE001 - one bad object must not hide the others
                if size is not None and http_status(e) == 416:  # an empty object has no byte 0
                    return b""
                return self._error("GET", key, e)

    async def _get_sized(self, key: str, size: Optional[int], receiver: Optional[Callable[[], Receiver]] = None
                         ) -> tuple[GetResult, Optional[Callable[[], None]]]:
        """`_get`, through `HttpGet` where it applies: then (body, release), the body valid
        until release(), or (INTO, None) when it went through `receiver()`; anything HttpGet
        does not expect is read again by obstore."""
        at = None
        if self._http is not None and size:
            async with self._sem:
                at = self._loop.time() + self._deadline_s  # obstore, if asked, gets what is left
                r = await self._http.get(key, size, receiver and receiver())
            if isinstance(r, tuple):
                return r
            if r is not FALL_BACK:
                return r, None
        return await self._get(key, size, at), None

    async def _ranges(self, key: str, starts: list[int], ends: list[int]):
        async with self._sem:
            try:
                return await self._within(obstore.get_ranges_async(self._store, key, starts=starts, ends=ends,
                                                                   coalesce=C.COALESCE_GAP))
            except FileNotFoundError as e:
                return self._error("GET", key, e) if "NoSuchBucket" in str(e) else None
            except Exception as e:  # noqa: BLE001
                return self._error("GET", key, e)

    async def _put(self, key: str, data: Buffer, if_absent: bool, stop: Optional[threading.Event] = None):
        async with self._sem:
            if stopped(stop):  # its turn came after SGLang stopped the batch
                return STOPPED
            try:  # one deadline for the call: our client, obstore's retries, a conditional PUT sent again
                return await self._within(self._conditional.put_async(
                    lambda conditional: self._put_once(key, data, conditional), if_absent))
            except Overdue as e:
                return self._error("PUT", key, e)

    async def _put_once(self, key: str, data: Buffer, conditional: bool) -> Union[bool, C.Refused, StoreError]:
        if self._http_put is not None:  # anything it does not expect, obstore sends again
            r = await self._http_put.put(key, data, conditional)
            if r is not FALL_BACK:
                return r
        try:
            await obstore.put_async(self._store, key, data, mode="create" if conditional else "overwrite",
                                    use_multipart=False)
            return True
        except Exception as e:  # noqa: BLE001
            # object_store calls a 409 AlreadyExists too; the status and the S3 code in its
            # text tell the refusals apart.
            text, status = str(e), http_status(e)
            code = C.s3_code(text) or str(status)
            if isinstance(e, ox.AlreadyExistsError) and status != 409:
                status, code = 412, "412"  # a 412, or the 304 some stores answer If-None-Match with
            if not status:
                return self._error("PUT", key, e)
            return C.Refused(status, code, text, self._error("PUT", key, e))

    async def _exists(self, key: str) -> Union[bool, StoreError]:
        async with self._sem:
            try:
                await self._within(obstore.head_async(self._store, key))
                return True
            except FileNotFoundError:  # a HEAD has no body: a missing bucket looks the same
                return False
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e)

    async def _stat(self, key: str) -> Union[ObjectStat, None, StoreError]:
        async with self._sem:
            try:
                m = await self._within(obstore.head_async(self._store, key))
                return ObjectStat(m["size"], (m.get("e_tag") or "").strip('"'))
            except FileNotFoundError:  # as in _exists
                return None
            except Exception as e:  # noqa: BLE001
                return self._error("HEAD", key, e)

    def _error(self, op: str, key: str, e: Exception) -> StoreError:
        kind, what = classify(e)
        return StoreError(kind, self._redact(f"{op} {self.bucket}/{key}: {what}"), http_status(e))

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def cancel_all():
            # Requests still in flight end with CancelledError in their callers' threads;
            # stopping the loop under them would leave those threads waiting forever.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for http in (self._http, self._http_put):  # their sockets belong to this loop
                if http is not None:
                    http.close()

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def probe(store: S3Store, connect_s: float) -> C.Probe:
    # One ListObjectsV2 page: its error body names the S3 code (see Boto3Store._probe).
    try:
        next(iter(obstore.list(store, chunk_size=1)), None)
        return C.Probe("ok")
    except Exception as e:  # noqa: BLE001
        kind, what = classify(e)
        text = str(e)
        status = http_status(e)
        if kind == "timeout" and "ConnectError" in text:  # nothing answered the SYN
            return C.Probe("unreachable", f"connect timed out after {connect_s:g}s")
        return C.Probe(kind, C.s3_code(text) or what, status)


def http_status(e: Exception) -> int:
    m = _STATUS.search(str(e))
    return int(m.group(1)) if m else 0


def classify(e: Exception) -> tuple[str, str]:
    """(StoreError kind, short reason) for an obstore exception. obstore's text carries the
    HTTP status, the S3 XML error body and reqwest's error kind; we keep only those."""
    if isinstance(e, Overdue):
        return "timeout", str(e)
    text = str(e)
    m = _STATUS.search(text)
    if m:
        status, code = int(m.group(1)), C.s3_code(text)
        return C.kind_for(status, code), f"HTTP {status} {code}".rstrip()
    if isinstance(e, (ox.PermissionDeniedError, ox.UnauthenticatedError)):
        return "auth", type(e).__name__
    http = _HTTP_KIND.search(text)
    kind = http.group(1) if http else ""
    if kind == "Timeout" or "TimedOut" in text:
        return "timeout", "connect timed out" if "ConnectError" in text else "read timed out"
    if kind == "Connect":
        return "unreachable", C.net_reason(text)
    if kind in ("Request", "Interrupted", "Decode"):
        return C.net_failure(text)
    if isinstance(e, (ox.InvalidPathError, ValueError, TypeError)):
        return "client", f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    return "server" if isinstance(e, ox.GenericError) else "client", text.split("\n\nDebug source:")[0][:300]
