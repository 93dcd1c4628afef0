"""The streaming transport calls the data path uses, on both transports against a real
SeaweedFS: `get_each` (each GET handed to the caller's function as it lands) and
`exists_prefix` (HEADs that stop at the end of the leading run)."""

from __future__ import annotations

import random
import threading
import time

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


def test_get_each_lands_every_index_once_with_its_bytes(store):
    keys = [f"s/{i}" for i in range(20)]
    bodies = [blob(1000 + i, i) for i in range(20)]
    assert store.put_many(list(zip(keys, bodies))) == [True] * 20
    asked = keys[:10] + ["s/missing"] + keys[10:]
    got, lock = [], threading.Lock()

    def land(i, r):
        with lock:
            got.append((i, None if r is None else bytes(r)))

    store.get_each(asked, land)
    assert sorted(i for i, _ in got) == list(range(21))
    got = dict(got)
    assert got[10] is None
    for i, key in enumerate(asked):
        if key != "s/missing":
            assert got[i] == bodies[int(key.split("/")[1])]


@pytest.fixture(params=["inline", "offloaded"])
def landing(request, store):
    """obstore lands large objects on a thread pool, small ones on its loop: test both."""
    if request.param == "offloaded":
        if store.name != "obstore":
            pytest.skip("only obstore offloads landing")
        store.OFFLOAD_BYTES = 0
    return store


def test_get_each_stops_above_a_false_and_lands_everything_below(landing):
    store = landing
    keys = [f"c/{i}" for i in range(16)]
    store.put_many([(k, blob(50_000, 1)) for k in keys])
    landed, lock = [], threading.Lock()

    def land(i, r):
        with lock:
            landed.append(i)
            return i < 4 or any(j >= 4 for j in landed[:-1])  # the first page >= 4 stops it

    store.get_each(keys, land)
    after = list(landed)
    stop = next(i for i in after if i >= 4)
    assert len(after) == len(set(after))
    assert set(range(stop)) <= set(after)  # every index below the stop still landed
    # Above it only a GET that was landing at that moment (4 in flight at most), not the rest.
    assert len([i for i in after if i > stop]) <= 3, after
    time.sleep(0.2)
    assert landed == after  # nothing lands after get_each returned
    assert [len(b) for b in store.get_many(keys)] == [50_000] * 16  # still usable


def test_get_each_reraises_what_land_raised_and_stays_usable(landing):
    store = landing
    keys = [f"r/{i}" for i in range(12)]
    store.put_many([(k, blob(10_000, 2)) for k in keys])

    def land(i, r):
        if i == 5:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        store.get_each(keys, land)
    assert [len(b) for b in store.get_many(keys)] == [10_000] * 12


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


def test_put_iter_reraises_what_the_items_raised_and_stays_usable(store):
    def items():
        yield "x/0", blob(20_000, 0)
        raise ValueError("sealing failed")

    with pytest.raises(ValueError, match="sealing failed"):
        store.put_iter(items())
    assert store.put_iter(iter([("x/1", b"one")])) == [True]
    assert bytes(store.get("x/1")) == b"one"
