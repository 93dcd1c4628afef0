"""Layerwise mode end to end: a real CPU SGLang server streams object-store layers into its
KV pool while the forward runs. Answers must equal the no-cache reference on store hits,
on host-tier hits, under concurrency with shared prefixes, and when a load fails (then
the request is recomputed, never aborted). The server reaches SeaweedFS through the fault
proxy, which also counts the store requests it sees. A page-mode server on the same bucket
reads what layerwise mode wrote and the reverse; damage in transit deletes nothing; and a
weight update (last: the server serves other weights for its duration) means recompute."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from e2e_support import (
    BACKEND, MAX_NEW, BucketL3, computed, full_pages, launch_on, outputs, prompts, settled, update_weights_from_disk, wait_for_writes,
)
from objectcache_dev.harness.compare import differences

from objectcache_dev.harness.proxy import FaultProxy, Faults
from objectcache_dev.harness.server import cpu_args
from objectcache_dev.harness.workloads import words
from sglang_objectcache.layerwise.timeline import overlapped_layers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="layerwise mode is objectcache's"),
]

BUCKET = "layerwise-e2e"


@pytest.fixture(scope="module")
def proxy(s3):
    s3.create_bucket(BUCKET)
    with FaultProxy(s3.s3_port, seed=11) as p:
        yield p


@pytest.fixture(scope="module")
def l3(s3, proxy):
    return BucketL3(s3, BUCKET, endpoint=proxy.endpoint, connect_timeout_s=1.0, read_timeout_s=2.0,
                    retries=1, negative_ttl_s=1.0)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return str(tmp_path_factory.mktemp("layerwise-trace") / "timeline.json")


@pytest.fixture(scope="module")
def server(sglang_server, l3, trace):
    # window_layers=1 and one layer per GET (auto would read this small model's whole
    # object at once): a layer is fetched only once the previous one is in the pool, so
    # the timeline shows fetches that finish while the forward already computes.
    layerwise = {"enabled": True, "layer_timeout_s": 3.0, "window_layers": 1, "layers_per_get": 1,
                 "trace_path": trace}
    return sglang_server(cpu_args() + l3.server_args(layerwise=layerwise), name="layerwise")


@pytest.fixture(autouse=True)
def healthy_after(server, proxy):
    yield
    proxy.clear()
    assert server.alive() and server.client.healthy(), server.log_tail()


def send(server, texts):
    return [server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in texts]


def populate(server, l3, texts):
    before = l3.keys()
    done = send(server, texts)
    wait_for_writes(l3, before)
    return done


def test_store_hits_stream_in_and_match_the_reference(server, l3, reference):
    texts = prompts(20, "lw-parity")
    first = populate(server, l3, texts)
    assert all(c.cached_tokens == 0 for c in first)
    server.client.flush_cache()  # drops the device pool and objectcache's host tier
    hit = send(server, texts)
    # SGLang reports an external-linker hit as "host"; device stays 0 after the flush.
    assert [(c.device, c.host) for c in hit] == [(0, full_pages(c)) for c in hit], server.log_tail()
    assert outputs(hit) == outputs(first)
    assert not differences(first, reference.completions(texts))


def test_fetch_overlaps_the_forward(server, trace):
    batches = json.load(open(trace))["batches"]
    assert batches, "no layerwise batch traced"
    assert any(b["ok"] and overlapped_layers(b) for b in batches), batches[-3:]
    chrome = json.load(open(trace[:-5] + ".trace.json"))
    assert {e["tid"] for e in chrome["traceEvents"]} >= {"fetch", "scatter", "forward wait"}


def test_store_reads_run_in_one_fetch_worker_of_the_server(server):
    """The default `fetch: process`: SGLang's scheduler process started the worker (one per
    scheduler; here TP=1), so its GETs and copies never hold the scheduler's GIL."""
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    workers = [p for p in tree if "sglang_objectcache.layerwise.fetch_worker" in " ".join(p.cmdline())]
    assert len(workers) == 1, [p.cmdline() for p in tree]
    assert workers[0].parent().pid != server.proc.pid  # a child of the scheduler, not the launcher


def test_host_tier_serves_repeats_without_the_store(server, l3, proxy, reference):
    texts = prompts(2, "lw-tier")
    first = populate(server, l3, texts)
    # evict the prompts from the device pool with fresh prompts that fill it (8192 tokens)
    filler = [f"filler {i} " + words(random.Random(i), 700) for i in range(14)]
    send(server, filler)
    gets = proxy.seen.get("GET", 0)
    again = send(server, texts)
    assert all(c.device == 0 and c.host == full_pages(c) for c in again), [(c.device, c.host) for c in again]
    assert proxy.seen.get("GET", 0) == gets, "a host-tier hit must not touch the store"
    assert outputs(again) == outputs(first)
    assert not differences(first, reference.completions(texts))


def test_concurrent_requests_with_shared_prefixes(server, l3, reference):
    system = "lw-shared system prompt " + words(random.Random(5), 400)
    texts = [f"{system} question {i} " + words(random.Random(100 + i), 40) for i in range(8)]
    populate(server, l3, texts)
    server.client.flush_cache()
    with ThreadPoolExecutor(8) as pool:
        hit = list(pool.map(lambda t: server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2), texts))
    assert all(c.cached_tokens > 0 for c in hit)
    assert not differences(hit, reference.completions(texts))


def test_a_corrupt_object_means_recompute_not_abort(server, l3, reference):
    texts = prompts(3, "lw-corrupt")
    before = l3.keys()
    send(server, texts)
    new = sorted(k for k in wait_for_writes(l3, before) if not k.endswith(".json"))
    damaged = {}
    for key in new:  # damage the last layer of every page: the header and layer 0 stay valid
        body = bytearray(l3.read(key))
        body[-5] ^= 0x20
        damaged[key] = bytes(body)
        l3.write(key, damaged[key])
    server.client.flush_cache()
    again = send(server, texts)  # each load fails at its last layer, then is recomputed
    assert not differences(again, reference.completions(texts))
    assert all(c.cached_tokens == 0 for c in again), "a recomputed request reports no cache hit"
    assert "recomputing them" in server.log_text()
    # The damaged objects it read were deleted before the recompute and stored again by it,
    # intact. Pages past the prompts (decoded tokens) are never read and stay damaged.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(new) <= l3.keys():
        time.sleep(0.25)
    assert set(new) <= l3.keys(), f"{len(set(new) - l3.keys())} scrubbed objects were not written again"
    assert len(unhealed(l3, damaged)) < len(damaged), "no damaged object was replaced"
    server.client.flush_cache()
    healed = send(server, texts)
    assert [c.host for c in healed] == [full_pages(c) for c in healed]
    assert not differences(healed, reference.completions(texts))


def unhealed(l3, damaged: dict[str, bytes]) -> list[str]:
    """Keys missing or still holding the damaged bytes."""
    left = []
    for key, body in damaged.items():
        try:
            if l3.read(key) != body:
                continue
        except Exception:  # noqa: BLE001 - deleted and not yet written again
            pass
        left.append(key)
    return left


def test_a_stalled_store_costs_time_not_answers(server, l3, proxy, reference):
    texts = prompts(2, "lw-stall")
    populate(server, l3, texts)
    server.client.flush_cache()
    proxy.set(Faults(stall=True, methods=frozenset({"GET"})))
    t0 = time.monotonic()
    again = send(server, texts)
    proxy.clear()
    assert not differences(again, reference.completions(texts))
    assert time.monotonic() - t0 < 60


@pytest.fixture(scope="module")
def page_server(sglang_server, l3):
    """A page-mode server (SGLang's HiCache with objectcache as L3) on the same bucket."""
    return launch_on(sglang_server, l3, "page-mode")


def test_page_mode_reads_what_layerwise_wrote(server, l3, page_server, reference):
    texts = prompts(2, "lw-to-page")
    populate(server, l3, texts)
    hit = send(page_server, texts)
    assert [(c.device, c.host, c.storage) for c in hit] == [(0, 0, full_pages(c)) for c in hit], \
        page_server.log_tail()
    assert not differences(hit, reference.completions(texts))


def test_layerwise_reads_what_page_mode_wrote(server, l3, proxy, page_server, reference):
    texts = prompts(2, "page-to-lw")
    populate(page_server, l3, texts)
    page_server.stop()
    gets = proxy.seen.get("GET", 0)
    hit = send(server, texts)  # new to this server: only the store has them
    assert [(c.device, c.host) for c in hit] == [(0, full_pages(c)) for c in hit], server.log_tail()
    assert proxy.seen.get("GET", 0) > gets
    assert not differences(hit, reference.completions(texts))


def test_mangled_reads_delete_no_good_object(server, l3, proxy, reference):
    """Every layer read arrives with a byte flipped (in transit: the store holds it intact).
    Each load fails and is recomputed, and no object is deleted: a read that fails its
    checksum proves nothing about the object the store holds."""
    texts = prompts(2, "lw-mangle")
    populate(server, l3, texts)
    stored = settled(l3)
    deleted, mangled_before = len(proxy.deleted), proxy.injected["mangle"]
    server.client.flush_cache()
    proxy.set(Faults(mangle=True, methods=frozenset({"GET"})))
    try:
        mangled = send(server, texts)
    finally:
        proxy.clear()
    assert proxy.injected["mangle"] > mangled_before
    assert not differences(mangled, reference.completions(texts))
    assert all(c.cached_tokens == 0 for c in mangled), "a mangled layer was served as a hit"
    after = settled(l3)
    assert proxy.deleted[deleted:] == [], f"{len(proxy.deleted) - deleted} intact objects were deleted"
    # a server rewrites its own access log as it serves; every other object must stay as it was
    lost = {k for k in stored if "/_access/" not in k and after.get(k) != stored[k]}
    assert not lost, f"{len(lost)} of {len(stored)} objects are gone or changed"
    server.client.flush_cache()
    again = send(server, texts)
    assert [c.host for c in again] == [full_pages(c) for c in again]
    assert not differences(again, reference.completions(texts))


def test_update_weights_from_disk_means_the_next_request_computes(server, l3, tiny_model, model_b, reference):
    """Layerwise mode: the same as in page mode (test_e2e_identity.py). Last in this module;
    it gives the server its own weights back."""
    [text] = prompts(1, "lw-update")
    populate(server, l3, [text])
    try:
        update_weights_from_disk(server, model_b)
        [again] = send(server, [text])
        [expected] = computed(server, [text])
    finally:
        update_weights_from_disk(server, tiny_model)
    assert outputs([expected]) != outputs(reference.completions([text])), "the update changed no answer"
    assert again.cached_tokens == 0, (
        f"after the weight update, cached device/host {again.device}/{again.host}: the old weights' KV was served")
    bad = differences([again], [expected])
    assert not bad, "the answer after the update is not model B's:\n" + "\n".join(bad)
