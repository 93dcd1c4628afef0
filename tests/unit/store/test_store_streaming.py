"""The streaming transport calls the data path uses, on both transports against a real
SeaweedFS: `get_each` (each GET handed to the caller's function as it lands) and
`exists_prefix` (HEADs that stop at the end of the leading run)."""

from __future__ import annotations

import asyncio
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


def test_get_each_with_a_size_still_shows_objects_of_another_size(store):
    # obstore reads at most size + 1 bytes in one ranged GET; boto3 reads the whole object.
    # Either way a caller checking the length sees every object that is not `size` bytes.
    size = 4096
    bodies = {"z/exact": blob(size, 1), "z/short": blob(100, 2), "z/long": blob(3 * size, 3), "z/empty": b""}
    assert store.put_many(list(bodies.items())) == [True] * 4
    asked = list(bodies) + ["z/missing"]
    got = {}

    def land(i, r):
        got[asked[i]] = r if r is None else bytes(r)

    store.get_each(asked, land, size=size)
    assert got["z/exact"] == bodies["z/exact"] and got["z/short"] == bodies["z/short"]
    assert got["z/empty"] == b"" and got["z/missing"] is None
    assert len(got["z/long"]) > size and got["z/long"] == bodies["z/long"][: len(got["z/long"])]


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


def test_obstore_caps_bytes_in_flight_for_large_objects(s3, bucket, monkeypatch):
    # Large objects are limited by bytes in flight (the memory a batch holds), not only by
    # the request cap: here a budget of 3 objects against a cap of 16 requests.
    from sglang_objectcache.store import obstore_

    st = make_store(ObjectCacheConfig.from_dict(s3.config(bucket, transport="obstore", max_concurrency=16)))
    size = 20_000
    monkeypatch.setattr(obstore_, "GET_BYTES_IN_FLIGHT", 3 * size)
    monkeypatch.setattr(obstore_, "PUT_BYTES_IN_FLIGHT", 2 * size)
    active, peak = [0], {"get": 0, "put": 0}

    def counting(op, fn):
        async def wrapped(*a):
            active[0] += 1  # on the store's one event loop: no lock needed
            peak[op] = max(peak[op], active[0])
            try:
                await asyncio.sleep(0.01)  # long enough for the others to pile up
                return await fn(*a)
            finally:
                active[0] -= 1
        return wrapped

    monkeypatch.setattr(st, "_put", counting("put", st._put))
    monkeypatch.setattr(st, "_get_sized", counting("get", st._get_sized))
    keys = [f"big/{i}" for i in range(12)]
    try:
        assert st.put_iter(((k, blob(size, i)) for i, k in enumerate(keys))) == [True] * 12
        got = {}
        st.get_each(keys, lambda i, r: got.__setitem__(i, len(r)), size=size)
        assert got == {i: size for i in range(12)}
        assert peak == {"get": 3, "put": 2}
    finally:
        st.close()
