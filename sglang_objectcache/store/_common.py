"""What every transport shares: error kinds, the startup-check messages, what a refused
conditional PUT means, range coalescing.

One place for the text a user reads when the store is misconfigured, so boto3 and obstore
say the same thing. Messages name the endpoint, the bucket and the S3 error code, never a
secret: `Redactor` scrubs the configured secret and session token from any text that
leaves a transport.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Optional, Sequence

from sglang_objectcache.store.settings import StoreSettings
from sglang_objectcache.store.base import CLOCK_SKEW_HINT, StoreError

logger = logging.getLogger(__name__)

# Ranges of one key closer than this are fetched by one request. 0 = only adjacent or
# overlapping ones: a gap is bytes paid for and thrown away, and the caller chose the ranges.
COALESCE_GAP = 0

# The startup check uses short timeouts (or the configured ones, if shorter) and no
# retries: a wrong endpoint should fail in seconds, not after the data path's patience.
CHECK_CONNECT_TIMEOUT_S = 2.0
CHECK_READ_TIMEOUT_S = 5.0


def check_timeouts(settings: StoreSettings) -> tuple[float, float]:
    return min(settings.connect_timeout_s, CHECK_CONNECT_TIMEOUT_S), min(settings.read_timeout_s, CHECK_READ_TIMEOUT_S)

_AUTH_CODES = {
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "InvalidSecurity", "AllAccessDisabled", "RequestTimeTooSkewed",
}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                   "TooManyRequests", "RequestThrottled", "ServiceUnavailable"}
# S3 answers a conditional PUT (`If-None-Match: *`) of a key another writer is writing
# conditionally with 409 ConditionalRequestConflict ("a conditional write is in progress").
# That is no proof the key exists, as that write may still fail: the PUT is sent again once,
# after this pause.
BUSY_PAUSE_S = 0.05
NO_CONDITIONAL_PUTS = ("store does not support conditional PUTs (If-None-Match); writing unconditionally: "
                       "safe because objects are content-addressed and checksummed")


@dataclass(frozen=True)
class Refused:
    """A PUT the store answered with an HTTP error, as `ConditionalPuts` reads it."""

    status: int
    code: str  # the S3 error code, or the status as text where the reply had none
    text: str  # the reply's message: a 400 names the header it refuses there
    error: StoreError  # what the PUT returns where no rule below applies


def refusal(status: int, code: str, text: str) -> str:
    """What a store's refusal of a conditional PUT says: "exists" (the key exists), "busy"
    (another conditional write of it is in progress), "unsupported" (the store refuses the
    header itself: 501, or a 400 NotImplemented, or a 400 InvalidArgument that names it), or ""."""
    if status == 412 and code in ("PreconditionFailed", "412"):
        return "exists"
    if status == 409 and code in ("ConditionalRequestConflict", "409"):
        return "busy"
    if status == 501 or (status == 400 and (code == "NotImplemented" or (
            code == "InvalidArgument" and "if-none-match" in text.lower()))):
        return "unsupported"
    return ""


_AGAIN, _WAIT = object(), object()


class ConditionalPuts:
    """How one store answers conditional PUTs, shared by its PUT clients. Each transport
    hands `put` a `send(conditional)` of one PUT that returns True, a `Refused` or a
    StoreError; the rules of what a refusal means live here, for all of them."""

    def __init__(self, where: str):
        self.where = where  # endpoint/bucket, for the log
        self.supported = True  # until the store refuses the header itself
        self._lock = threading.Lock()

    def use(self, if_absent: bool) -> bool:
        return if_absent and self.supported

    def put(self, send: Callable[[bool], object], if_absent: bool):
        tries = 0
        while True:
            tries += 1
            conditional = self.use(if_absent)
            r = self._after(send(conditional), conditional, tries)
            if r is _WAIT:
                time.sleep(BUSY_PAUSE_S)
            elif r is not _AGAIN:
                return r

    async def put_async(self, send: Callable[[bool], Awaitable[object]], if_absent: bool):
        tries = 0
        while True:
            tries += 1
            conditional = self.use(if_absent)
            r = self._after(await send(conditional), conditional, tries)
            if r is _WAIT:
                await asyncio.sleep(BUSY_PAUSE_S)
            elif r is not _AGAIN:
                return r

    def _after(self, reply, conditional: bool, tries: int):
        """The PUT's result, or _AGAIN / _WAIT: send it again (after BUSY_PAUSE_S)."""
        if not isinstance(reply, Refused):
            return reply
        why = refusal(reply.status, reply.code, reply.text) if conditional else ""
        if why == "exists":
            return False
        if why == "unsupported":
            # Nothing could ever be stored otherwise. Two writers of a key then both write
            # it, the same bytes, so only `pages_deduped` is off.
            with self._lock:
                if self.supported:
                    self.supported = False
                    logger.warning("objectcache: %s: %s", self.where, NO_CONDITIONAL_PUTS)
            return _AGAIN
        if why == "busy" and tries == 1:
            return _WAIT
        return reply.error


def concurrency(settings: StoreSettings, override: Optional[int], transport_default: int) -> int:
    """Requests in flight: an explicit override, else the user's `max_concurrency` if set
    (non-zero), else the transport's own measured default (`benchmarks.transports`)."""
    return override or settings.max_concurrency or transport_default


def kind_for(status: int, code: str) -> str:
    if code == "NoSuchBucket":
        return "no_bucket"
    if code in _AUTH_CODES or status in (401, 403):
        return "auth"
    if code in _THROTTLE_CODES or status in (429, 503):
        return "throttled"
    if status >= 500:
        return "server"
    return "client"


def endpoint_of(settings: StoreSettings) -> str:
    return settings.endpoint_url.rstrip("/") or f"https://s3.{settings.region}.amazonaws.com"


@dataclass(frozen=True)
class Redactor:
    """Removes the configured secrets from text. Libraries do not echo secrets today; this
    makes sure a future one cannot leak them through our messages."""

    secrets: tuple[str, ...]

    @classmethod
    def of(cls, settings: StoreSettings) -> "Redactor":
        return cls(tuple(s for s in (settings.secret_access_key, settings.session_token) if s))

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


# --- the startup check -------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one bucket probe saw, in transport-neutral terms."""

    kind: str  # "ok", or a StoreError kind
    code: str = ""  # S3 error code, or a short network reason ("connection refused")
    status: int = 0


def check_error(settings: StoreSettings, p: Probe) -> StoreError:
    ep, b = endpoint_of(settings), settings.bucket
    if p.kind == "unreachable":
        return StoreError("unreachable", f"cannot reach S3 endpoint {ep}: {p.code}")
    if p.kind == "timeout":
        return StoreError(
            "timeout", f"S3 endpoint {ep} did not answer within {check_timeouts(settings)[1]:g}s ({p.code}); "
            "is the server overloaded or stalled?")
    if p.kind == "no_bucket":
        return StoreError(
            "no_bucket", f"bucket '{b}' does not exist at {ep} (set create_bucket: true in the "
            "objectcache config to create it at startup, or create it yourself)", p.status)
    if p.kind == "auth":
        if p.code == "AccessDenied":
            hint = "the credentials are valid but lack s3:ListBucket/GetObject/PutObject/DeleteObject on it"
        elif p.code in ("ExpiredToken", "TokenRefreshRequired", "InvalidToken"):
            hint = "the session_token is expired or invalid; refresh the temporary credentials"
        elif p.code == "RequestTimeTooSkewed":
            hint = CLOCK_SKEW_HINT
        elif p.code == "NoCredentials":
            hint = ("no credentials found: set access_key_id/secret_access_key in the objectcache "
                    "config, or configure the AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)")
        else:
            hint = "check access_key_id/secret_access_key"
        return StoreError("auth", f"S3 rejected the credentials for bucket '{b}' at {ep}: "
                                  f"{p.code or p.status} ({hint})", p.status)
    return StoreError(p.kind, f"S3 check of bucket '{b}' at {ep} failed: HTTP {p.status} {p.code}".rstrip(), p.status)


def run_check(settings: StoreSettings, probe: Callable[[], Probe], create: Callable[[], None],
              create_bucket: bool) -> None:
    """Probe the bucket; create it if asked and missing; raise a user-facing StoreError."""
    p = probe()
    if p.kind == "no_bucket" and create_bucket:
        create()
        p = probe()
    if p.kind != "ok":
        raise check_error(settings, p)


# --- ranged reads ------------------------------------------------------------------------


@dataclass
class Span:
    """One request: bytes [start, end) of `key`, serving `members` (slot, start, end)."""

    key: str
    start: int
    end: int
    members: list[tuple[int, int, int]]


def plan_ranges(reqs: Sequence[tuple[str, int, int]], gap: int = COALESCE_GAP) -> tuple[list[Span], list[int]]:
    """Group ranges by key and merge overlapping/adjacent ones. Returns the spans and the
    slots whose range is empty or negative (the caller answers those with an error)."""
    by_key: dict[str, list[tuple[int, int, int]]] = {}
    bad = []
    for slot, (key, start, end) in enumerate(reqs):
        if start < 0 or end <= start:
            bad.append(slot)
        else:
            by_key.setdefault(key, []).append((start, end, slot))
    spans: list[Span] = []
    for key, rs in by_key.items():
        rs.sort()
        cur = None
        for start, end, slot in rs:
            if cur is not None and start <= cur.end + gap:
                cur.end = max(cur.end, end)
                cur.members.append((slot, start, end))
            else:
                cur = Span(key, start, end, [(slot, start, end)])
                spans.append(cur)
    return spans, bad


def split_span(span: Span, data, out: list) -> None:
    """Answer each member of `span` with a zero-copy slice of `data` (its bytes)."""
    mv = memoryview(data)
    for slot, start, end in span.members:
        out[slot] = mv[start - span.start:end - span.start]


def bad_range(req: tuple[str, int, int]) -> StoreError:
    key, start, end = req
    return StoreError("client", f"invalid byte range [{start}, {end}) for {key}")


def chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")


def s3_code(text: str) -> str:
    m = _S3_CODE.search(text)
    return m.group(1) if m else ""


def net_failure(text: str) -> tuple[str, str]:
    """(kind, reason) for a request that failed below HTTP: a socket send or receive that
    timed out is "timeout", any other broken connection "unreachable"."""
    reason = net_reason(text)
    return ("timeout" if reason == "timed out" else "unreachable"), reason


def net_reason(text: str) -> str:
    """A short reason for a failed connection, from a library's error text."""
    t = text.lower()
    for needles, reason in (
        (("refused",), "connection refused"),
        (("dns error", "name or service not known", "nodename nor servname",
          "temporary failure in name resolution", "failed to lookup address"), "host name not resolved"),
        (("timed out", "timedout", "kind: timeout"), "timed out"),
        (("reset",), "connection reset"),
        (("certificate", "ssl", "tls"), "TLS handshake failed (check verify_tls / the CA bundle)"),
        (("unreachable",), "network unreachable"),
        (("closed", "broken pipe", "incomplete"), "connection closed by the server"),
    ):
        if any(n in t for n in needles):
            return reason
    return text.strip().splitlines()[0][:200] if text.strip() else "connection failed"
