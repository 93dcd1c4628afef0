"""The access log: one object per server, rewritten with its reads, read back merged."""

from __future__ import annotations

import pytest
from inspect_support import PREFIX, scheme

from sglang_objectcache.inspect import accesslog, layout


def test_access_log_is_one_object_per_server_rewritten_with_its_reads(store):
    ks = scheme()
    log = accesslog.AccessLog(store, ks.namespace_prefix)
    assert log.flush() and store.get(log.key) == b""  # written empty at startup
    assert not log.flush()  # no reads since: no request
    k1, k2, k3 = ks.object_key("a"), ks.object_key("b"), ks.object_key("c")
    c1, c2, c3 = (k.rsplit("/", 1)[-1] for k in (k1, k2, k3))
    log.record([k1, k2], now=100.0)
    log.record([k1], now=200.0)
    assert log.flush()
    log.record([k2], now=150.0)
    assert log.flush()
    assert layout.classify(log.key, PREFIX).kind == layout.ACCESS_LOG
    other = accesslog.AccessLog(store, ks.namespace_prefix, limit=2)  # another server
    other.record([k3], now=50.0)
    other.record([k2], now=300.0)
    other.record([k1], now=60.0)
    other.flush()  # over its limit: forgets its oldest read (k3)
    reads, logs = accesslog.read(store, ks.namespace_prefix)
    # a read is stamped with the end of its second (its first page; one µs less per position)
    assert reads == pytest.approx({c1: 201 - 1e-6, c2: 301 - 1e-6}) and sorted(logs) == sorted([log.key, other.key])
    assert accesslog.parse(b"junk\n" + c1.encode() + b"\tnope\n" + c2.encode() + b"\t7\n") == {c2: 7.0}
