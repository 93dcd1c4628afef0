"""Conditional PUTs against stores that answer them oddly (review B7), on every PUT client:
obstore with objectcache's own PUT client in front (`httpput`), obstore alone, and boto3.
The stores are fakes on 127.0.0.1 that answer canned replies (tests/support/http_support.py).
Then reads bounded in bytes and time (H6, C2): a sized GET takes at most size + 1 bytes of
any object (real SeaweedFS, and a fake that ignores Range), and a store that trickles
bytes ends a boto3 call at its deadline (tests/support/trickle_support.py)."""

from __future__ import annotations

import logging
import time

import pytest

from http_support import FakeS3, s3_error
from trickle_support import endless_body, endless_headers

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import StoreError, make_store
from sglang_objectcache.store._common import NO_CONDITIONAL_PUTS, refusal

CLIENTS = {"httpput": {"transport": "obstore"}, "obstore": {"transport": "obstore", "http_put": False},
           "boto3": {"transport": "boto3"}}


@pytest.fixture(params=list(CLIENTS))
def client(request):
    return request.param


def open_store(srv: FakeS3, client: str):
    # no retries: each PUT the store saw is one the transport chose to send
    return make_store(ObjectCacheConfig.from_dict(srv.config(retries=0, read_timeout_s=5.0, **CLIENTS[client])))


def puts(srv: FakeS3) -> list[tuple[str, bool, bytes]]:
    """(path, conditional, body) of each PUT the fake was sent, in order."""
    return [(path, "if-none-match" in h, body) for method, path, h, body in srv.requests if method == "PUT"]


def no_conditional_puts(method, path, headers, body):
    # as older RGW/MinIO/gateways answer a header they do not implement
    if method == "PUT" and "if-none-match" in headers:
        return "501 Not Implemented", s3_error(
            "NotImplemented", "A header you provided implies functionality that is not implemented")
    return "200 OK", b""


def test_a_store_without_conditional_puts_is_written_unconditionally(client, caplog):
    srv = FakeS3(no_conditional_puts)
    try:
        with caplog.at_level(logging.WARNING), open_store(srv, client) as st:
            assert st.put_many([("k/1", b"one"), ("k/2", b"two")]) == [True, True]
            assert st.put_iter(iter([("k/3", b"three")])) == [True]
        sent = puts(srv)
        assert {p: b for p, conditional, b in sent if not conditional} == {
            "/b/k/1": b"one", "/b/k/2": b"two", "/b/k/3": b"three"}
        assert [c for p, c, _ in sent if p == "/b/k/3"] == [False]  # learnt once, not per PUT
        warned = [r for r in caplog.records if NO_CONDITIONAL_PUTS in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING, caplog.text
    finally:
        srv.close()


def conflicts(times: int):
    """A store where another writer's conditional PUT of each key under c/ is in progress
    for the first `times` PUTs of it, and where every key under x/ exists."""
    seen: dict[str, int] = {}

    def answer(method, path, headers, body):
        seen[path] = seen.get(path, 0) + 1
        if method == "PUT" and path.startswith("/b/x/"):
            return "412 Precondition Failed", s3_error("PreconditionFailed", "At least one of the preconditions failed")
        if method == "PUT" and seen[path] <= times:
            return "409 Conflict", s3_error("ConditionalRequestConflict", "A conditional write is in progress")
        return "200 OK", b""

    return answer


def test_a_conditional_write_in_progress_is_sent_again_once(client):
    # 409 is not "exists": the other writer may fail, and then nobody stored the page
    srv = FakeS3(conflicts(1))
    try:
        with open_store(srv, client) as st:
            t = time.monotonic()
            assert st.put_many([("c/1", b"one")]) == [True]
            assert time.monotonic() - t >= 0.04  # after a short pause
        assert puts(srv) == [("/b/c/1", True, b"one")] * 2
    finally:
        srv.close()


def test_a_conditional_write_still_in_progress_is_an_error_and_412_is_exists(client):
    srv = FakeS3(conflicts(10))
    try:
        with open_store(srv, client) as st:
            r, exists = st.put_many([("c/1", b"one"), ("x/1", b"two")])
        assert isinstance(r, StoreError) and r.kind == "client" and r.status == 409, r
        assert not r.store_wide
        assert exists is False
        assert sorted(p for p, _, _ in puts(srv)) == ["/b/c/1", "/b/c/1", "/b/x/1"]
    finally:
        srv.close()


def test_what_a_refused_conditional_put_says():
    assert refusal(412, "PreconditionFailed", "") == refusal(412, "412", "") == "exists"
    assert refusal(409, "ConditionalRequestConflict", "") == "busy"
    assert refusal(409, "OperationAborted", "") == ""
    assert refusal(501, "NotImplemented", "") == refusal(501, "501", "") == "unsupported"
    assert refusal(400, "NotImplemented", "A header you provided implies functionality") == "unsupported"
    assert refusal(400, "InvalidArgument", "If-None-Match: only If-None-Match: * is supported") == "unsupported"
    # a 400 about anything else is that PUT's error: the header stays
    assert refusal(400, "InvalidArgument", "Invalid content length") == ""
    assert refusal(403, "AccessDenied", "If-None-Match") == ""


# --- H6: sized reads take at most size + 1 bytes --------------------------------------------


def land_all(st, keys, size):
    got = {}
    st.get_each(keys, lambda i, r: got.__setitem__(keys[i], r if r is None or isinstance(r, StoreError)
                                                   else bytes(r)), size=size)
    return got


@pytest.mark.parametrize("transport", ["boto3", "obstore"])
def test_a_sized_get_reads_at_most_size_plus_one_bytes(s3, bucket, transport):
    # Against real SeaweedFS: whatever sits at a page key, a GET for a page of 100 bytes
    # takes 101 at most, so a longer object arrives the wrong size (corrupt), never whole.
    cfg = ObjectCacheConfig.from_dict(s3.config(bucket, transport=transport, http_get=False))
    objects = {"k/exact": b"e" * 100, "k/long": b"l" * (4 << 20), "k/short": b"s" * 40, "k/empty": b""}
    with make_store(cfg) as st:
        st.put_many(list(objects.items()))
        got = land_all(st, [*objects, "k/missing"], 100)
    assert got == {"k/exact": b"e" * 100, "k/long": b"l" * 101, "k/short": b"s" * 40, "k/empty": b"",
                   "k/missing": None}


def test_boto3_reads_at_most_size_plus_one_bytes_from_a_server_that_ignores_range():
    big = b"z" * (64 << 20)
    srv = FakeS3(lambda method, path, headers, body: ("200 OK", big))  # the whole object, Range or not
    try:
        with make_store(ObjectCacheConfig.from_dict(srv.config(transport="boto3", retries=0))) as st:
            t = time.monotonic()
            got = land_all(st, ["k/1", "k/2"], 1000)
            assert time.monotonic() - t < 2.0
            assert st.get_ranges([("k/1", 10, 20)]) == [b"z" * 10]
        assert got == {"k/1": b"z" * 1001, "k/2": b"z" * 1001}
        assert sorted(h.get("range") for _, _, h, _ in srv.requests) == ["bytes=0-1000"] * 2 + ["bytes=10-19"]
    finally:
        srv.close()


# --- C2: a trickling store ends a boto3 call at its deadline -------------------------------


@pytest.mark.parametrize("trickle", ["body", "headers"])
def test_boto3_calls_end_at_the_deadline_however_slowly_the_store_trickles(trickle):
    # One byte every 50 ms never trips botocore's read timeout (per socket read), so
    # without the deadline each call below would run for as long as the store likes.
    srv = endless_body(1000) if trickle == "body" else endless_headers()
    cfg = ObjectCacheConfig.from_dict(srv.config(transport="boto3", connect_timeout_s=0.5, read_timeout_s=1.0,
                                                 retries=1, request_deadline_s=1.5))
    calls = {
        "get_many": lambda st: st.get_many(["d/1"]),
        "get_each": lambda st: list(land_all(st, ["d/1", "d/2"], 999).values()),
        "get_ranges": lambda st: st.get_ranges([("d/1", 0, 10)]),
        "put_many": lambda st: st.put_many([("d/2", b"v" * 100)]),
        "exists_many": lambda st: st.exists_many(["d/1"]),
        "stat_many": lambda st: st.stat_many(["d/1"]),
    }
    if trickle == "body":
        # a HEAD's reply has no body: whole headers are a whole answer; and 10 bytes come
        # in 0.5 s, even from a server that ignores Range (only they are read)
        del calls["exists_many"], calls["stat_many"], calls["get_ranges"]
    try:
        with make_store(cfg) as st:
            for name, call in calls.items():
                t = time.monotonic()
                out = call(st)
                took = time.monotonic() - t
                assert took < 2.2, (name, took)
                assert all(isinstance(r, StoreError) and r.kind == "timeout" and "deadline" in str(r)
                           for r in out), (name, out)
    finally:
        srv.close()


# --- clock skew (H3) --------------------------------------------------------------------------

def skewed(method, path, headers, body):
    # what S3 answers a request signed more than 15 minutes off its clock
    return "403 Forbidden", s3_error("RequestTimeTooSkewed",
                                     "The difference between the request time and the current time is too large.")


@pytest.mark.parametrize("transport", ["obstore", "boto3"])
def test_a_clock_too_far_off_the_stores_is_named_at_startup(transport):
    srv = FakeS3(skewed)
    try:
        store = make_store(ObjectCacheConfig.from_dict(srv.config(retries=0, transport=transport)))
        with pytest.raises(StoreError) as e:
            store.check()
        assert e.value.kind == "auth"
        assert "RequestTimeTooSkewed" in str(e.value) and "clock" in str(e.value)
        assert "check access_key_id" not in str(e.value)  # not sent off to check the keys
        store.close()
    finally:
        srv.close()
