"""The streaming transport calls the data path uses, on both transports against a real
SeaweedFS: `iter_get` (each GET handed over as it lands) and `exists_prefix` (HEADs that
stop at the end of the leading run)."""

from __future__ import annotations

import random

import pytest

from sglang_objectcache.config import ObjectCacheConfig
from sglang_objectcache.store import make_store


@pytest.fixture(params=["boto3", "obstore"])
def store(request, s3, bucket):
    st = make_store(ObjectCacheConfig.from_dict(s3.config(bucket, transport=request.param, max_concurrency=4)))
    yield st
    st.close()


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_iter_get_yields_every_index_once_with_its_bytes(store):
    keys = [f"s/{i}" for i in range(20)]
    bodies = [blob(1000 + i, i) for i in range(20)]
    assert store.put_many(list(zip(keys, bodies))) == [True] * 20
    asked = keys[:10] + ["s/missing"] + keys[10:]
    got = dict(store.iter_get(asked))
    assert sorted(got) == list(range(21))
    assert got[10] is None
    for i, key in enumerate(asked):
        if key != "s/missing":
            assert bytes(got[i]) == bodies[int(key.split("/")[1])]


def test_iter_get_stopped_early_leaves_the_store_usable(store):
    keys = [f"e/{i}" for i in range(16)]
    store.put_many([(k, blob(50_000, 1)) for k in keys])
    it = store.iter_get(keys)
    i, first = next(it)
    assert len(first) == 50_000
    it.close()  # cancels what is still in flight
    assert [len(b) for b in store.get_many(keys)] == [50_000] * 16


def test_exists_prefix_stops_at_the_first_missing_key(store):
    present = [f"p/{i}" for i in range(12)]
    store.put_many([(k, b"x") for k in present])
    assert store.exists_prefix(present) == [True] * 12
    asked = present[:5] + ["p/missing"] + present[5:]
    assert store.exists_prefix(asked) == [True] * 5 + [False]
    assert store.exists_prefix(["p/missing"] + present) == [False]
    assert store.exists_prefix([]) == []



def test_put_iter_writes_each_item_as_it_is_made_and_keeps_if_absent(store):
    made = []

    def items():
        for i in range(10):
            made.append(i)
            yield f"w/{i}", blob(30_000, i)

    assert store.put_iter(items()) == [True] * 10
    assert made == list(range(10))
    assert store.put_iter(iter([("w/3", b"other"), ("w/new", b"new")])) == [False, True]  # if absent
    assert bytes(store.get("w/3")) == blob(30_000, 3)
