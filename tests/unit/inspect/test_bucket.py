"""The bucket scan and its summary against a real SeaweedFS."""

from __future__ import annotations

import json

import pytest
from inspect_support import GEOM, PREFIX, describe, page, scheme

from sglang_objectcache.inspect import accesslog, bucket, layout


def test_store_summary_counts_namespaces_bytes_ages_and_cost(store):
    a, b = scheme("model-a"), scheme("model-b")
    pages_a = [page(a, f"a{i}") for i in range(5)]
    pages_b = [page(b, f"b{i}") for i in range(2)]
    store.put_many(pages_a + pages_b)
    describe(store, a)
    describe(store, b)
    store.put(f"{PREFIX}/notes.txt", b"someone else's")
    store.put("outside/x", b"not under the prefix")
    log = accesslog.AccessLog(store, a.namespace_prefix)
    log.record([pages_a[0][0], pages_a[1][0]])
    assert log.flush()

    s = bucket.scan(store, PREFIX)
    access = {d: accesslog.read(store, layout.namespace_prefix(PREFIX, d))[0] for d in s.namespaces}
    summary = bucket.summarize(s, access, price_gb_month=100.0)
    rows = {r["namespace"]: r for r in summary["namespaces"]}
    ra, rb = rows[a.namespace.digest], rows[b.namespace.digest]
    assert (ra["model"], ra["pages"], ra["bytes"], ra["tokens"]) == ("model-a", 5, 5 * GEOM.object_bytes, 20)
    assert (rb["model"], rb["pages"], rb["bytes"]) == ("model-b", 2, 2 * GEOM.object_bytes)
    assert ra["problem"] is None and ra["page_tokens"] == 4 and ra["dtype"] == "bfloat16"
    assert ra["written_age"]["<1h"] == 5 and sum(ra["written_age"].values()) == 5
    assert ra["access_logs"] == 1 and ra["pages_read_since_write"] == 2
    assert summary["other_objects"] == 1  # notes.txt; "outside/x" is not even listed
    assert summary["total_bytes"] == 7 * GEOM.object_bytes
    assert summary["usd_per_month"] == pytest.approx(7 * GEOM.object_bytes / 1e9 * 100.0, abs=1e-4)


def test_namespace_description_is_checked_against_its_digest(store):
    ks = scheme()
    store.put_many([page(ks, "h0")])
    wrong = {**ks.namespace.describe(), "identity": "someone-else"}
    store.put(ks.namespace_file, json.dumps(wrong).encode())
    s = bucket.scan(store, PREFIX)
    assert "describes namespace" in s.namespaces[ks.namespace.digest].description_error
    assert s.namespaces[ks.namespace.digest].geometry is None
