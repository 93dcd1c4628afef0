"""Store faults under a live server: every request completes, answers equal the no-cache
reference, and the server stays healthy. The server reaches its own SeaweedFS through the
fault proxy, so a test can make the store slow, flaky, stalled, paused or dead."""

from __future__ import annotations

import os
import signal
import time

import pytest
from e2e_support import (
    BACKEND, MAX_NEW, BucketL3, full_pages, launch_on, prompts, settled, wait_for_writes,
)
from matrix import Tally

from objectcache_dev.harness.proxy import FaultProxy, Faults
from objectcache_dev.s3server import SeaweedFS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="store faults need the S3 backend (objectcache)"),
]

BUCKET = "faults"
# The shipped defaults: a stalled store must cost a request seconds, not minutes, and
# SGLang's /flush_cache gives its storage threads 10 s to stop before it kills the
# scheduler. Only the store-down window is shortened, to keep the module quick.
TIMEOUTS = {"negative_ttl_s": 1.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    srv = SeaweedFS(str(tmp_path_factory.mktemp("fault-store")), buckets=(BUCKET,))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def proxy(store):
    with FaultProxy(store.s3_port, seed=7) as p:
        yield p


@pytest.fixture(scope="module")
def l3(store, proxy):
    return BucketL3(store, BUCKET, endpoint=proxy.endpoint, **TIMEOUTS)


@pytest.fixture(scope="module")
def server(sglang_server, l3):
    return launch_on(sglang_server, l3, "faults")


@pytest.fixture(autouse=True)
def stays_healthy(server, proxy, store):
    yield
    proxy.clear()
    if store.proc is not None:
        store.resume()
    assert server.alive() and server.client.healthy(), server.log_tail()


def send(server, texts):
    return [server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in texts]


def recover(proxy):
    """Clear the faults and let the backend's store-down window pass: until it does, the
    backend answers misses and fails writes at once (and SGLang never retries a write)."""
    proxy.clear()
    time.sleep(TIMEOUTS["negative_ttl_s"] + 1.0)


def flush(server, proxy):
    """Flush with the store healthy: SGLang joins its storage threads for at most 10 s."""
    recover(proxy)
    server.client.flush_cache()


def faulted_send(tally: Tally, proxy, reference, faults: Faults, texts):
    """Send `texts` with `faults` on, counted by `tally`. Returns the completions and how
    many faults the proxy injected meanwhile."""
    before = sum(proxy.injected.values())
    proxy.set(faults)
    done = tally.send(texts)
    recover(proxy)
    tally.check(done, texts, reference)
    return done, sum(proxy.injected.values()) - before


def under_fault(server, l3, proxy, reference, faults: Faults, tag: str, fault: str):
    """Writes, then reads, with `faults` on: every request completes with the reference's
    answer and no object is deleted. Returns the faults injected in each phase."""
    tally = Tally(fault, "single node", server, proxy)
    _, injected_writing = faulted_send(tally, proxy, reference, faults, prompts(3, f"{tag}-w"))

    reads = prompts(3, f"{tag}-r")
    clean_before = l3.keys()
    send(server, reads)
    wait_for_writes(l3, clean_before)
    flush(server, proxy)
    read, injected_reading = faulted_send(tally, proxy, reference, faults, reads)
    tally.assert_clean()
    return injected_writing, injected_reading, read


def test_slowdown_503(server, l3, proxy, reference):
    w, r, _ = under_fault(server, l3, proxy, reference, Faults(slowdown=0.5), "slowdown", "503 SlowDown (half of all calls)")
    assert w > 0 and r > 0


def test_connection_resets(server, l3, proxy, reference):
    w, r, _ = under_fault(server, l3, proxy, reference, Faults(reset=0.3), "reset", "connection resets (30% of calls)")
    assert w > 0 and r > 0


def test_slow_store(server, l3, proxy, reference):
    w, r, read = under_fault(server, l3, proxy, reference, Faults(latency_s=0.3), "latency", "+0.3 s on every call")
    assert w > 0 and r > 0
    # Slow is not broken: under the read timeout, pages still come from storage.
    assert all(c.storage == full_pages(c) for c in read)


def test_stalled_store(server, l3, proxy, reference):
    w, r, read = under_fault(server, l3, proxy, reference, Faults(stall=True), "stall", "store stalls (no reply)")
    assert w > 0 and r > 0
    assert all(c.storage == 0 for c in read)  # a stalled store times out into misses


def test_store_paused(server, l3, proxy, store, reference):
    texts = prompts(3, "paused")
    before = l3.keys()
    send(server, texts)
    wait_for_writes(l3, before)
    flush(server, proxy)
    tally = Tally("store process frozen (SIGSTOP)", "single node", server, proxy)
    store.pause()
    try:
        during = tally.send(texts + prompts(2, "paused-new"))
    finally:
        store.resume()
    tally.check(during, texts + prompts(2, "paused-new"), reference)
    flush(server, proxy)
    after = tally.send(texts)
    tally.assert_clean()
    assert all(c.storage == full_pages(c) for c in after), [c.storage for c in after]


def test_store_killed_mid_run_and_restarted(server, l3, proxy, store, reference):
    early = prompts(2, "killed-early")
    before = l3.keys()
    send(server, early)
    wait_for_writes(l3, before)
    flush(server, proxy)

    def kill():
        os.killpg(store.proc.pid, signal.SIGKILL)  # no shutdown: the store just dies
        store.proc.wait()
        store.proc = None

    tally = Tally("store killed (SIGKILL) mid-run, restarted", "single node", server, proxy)
    stream = early + prompts(8, "killed-stream")
    done = tally.send_while(stream, [(2, kill), (6, store.start)])  # same data dir, same port
    tally.check(done, stream, reference)
    # The objects written before the kill survived, and the backend reconnects.
    flush(server, proxy)
    again = tally.send(early)
    tally.assert_clean()
    assert all(c.storage == full_pages(c) for c in again), [c.storage for c in again]


def test_mangled_reads_delete_no_good_object(server, l3, proxy, reference):
    """Every object read arrives with a byte flipped (in transit: the store holds it intact).
    The pages are misses, and no object is deleted: a read that fails its checksum proves
    nothing about the object the store holds."""
    texts = prompts(2, "mangle")
    before = l3.keys()
    send(server, texts)
    wait_for_writes(l3, before)
    stored = settled(l3)
    flush(server, proxy)
    tally = Tally("every GET body has a flipped byte", "single node", server, proxy)
    mangled, injected = faulted_send(tally, proxy, reference, Faults(mangle=True, methods=frozenset({"GET"})), texts)
    assert injected > 0
    assert all(c.storage == 0 for c in mangled), [c.storage for c in mangled]  # a mangled page is a miss
    after = settled(l3)
    # a server rewrites its own access log as it serves; every other object must stay as it was
    lost = {k for k in stored if "/_access/" not in k and after.get(k) != stored[k]}
    assert not lost, f"{len(lost)} of {len(stored)} objects are gone or changed"
    flush(server, proxy)
    again = tally.send(texts)
    tally.check(again, texts, reference)
    tally.assert_clean()
    assert all(c.storage == full_pages(c) for c in again), [c.storage for c in again]


def test_flush_cache_during_a_store_stall_keeps_the_server_up_with_the_shipped_defaults(server, l3, proxy,
                                                                                       reference):
    """C1: with the default timeouts, /flush_cache while the store hangs (SGLang joins its
    storage threads for 10 s, then kills the scheduler) leaves the server healthy."""
    timing = ("connect_timeout_s", "read_timeout_s", "retries", "request_deadline_s", "min_rate_mbps")
    assert not set(timing) & set(l3.config()), "this test is about the shipped defaults"
    texts = prompts(2, "stall-flush")
    before = l3.keys()
    send(server, texts)
    wait_for_writes(l3, before)
    flush(server, proxy)
    tally = Tally("store stalls, then /flush_cache (shipped timeouts)", "single node", server, proxy)
    proxy.set(Faults(stall=True))
    # The request's prefetch (HEADs, then GETs) hangs on the store when the flush comes.
    answers = tally.send_while(texts, [(0, lambda: (time.sleep(1.0), server.client.flush_cache(wait_s=60)))])
    proxy.clear()
    tally.check(answers, texts, reference)
    tally.assert_clean()
