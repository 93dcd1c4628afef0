"""Layerwise mode end to end: a real CPU SGLang server streams object-store layers into its
KV pool while the forward runs. Answers must equal the no-cache reference on store hits,
on host-tier hits, under concurrency with shared prefixes, and when a load fails (then
the request is recomputed, never aborted). The server reaches SeaweedFS through the fault
proxy, which also counts the store requests it sees."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from e2e_support import BACKEND, MAX_NEW, BucketL3, differences, full_pages, outputs, prompts, wait_for_writes

from sglang_objectcache.harness.proxy import FaultProxy, Faults
from sglang_objectcache.harness.server import cpu_args
from sglang_objectcache.harness.workloads import words
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
