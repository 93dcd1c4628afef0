"""The compute-or-load choice end to end, on real CPU servers. With the rates pinned so
that part of a hit is best recomputed (layerwise mode) or all of it (page mode), the
servers load exactly what the policy chose and their greedy answers still equal the
no-cache reference: the choice costs time, never answers."""

from __future__ import annotations

import pytest
from e2e_support import BACKEND, MAX_NEW, PAGE, BucketL3, full_pages, outputs, prompts, wait_for_writes
from objectcache_dev.harness.compare import differences

from objectcache_dev.harness.server import cpu_args
from objectcache_dev.tinymodel import TinyModelSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="the policy is objectcache's"),
]

BUCKET = "compute-or-load-e2e"
PREFILL_TOKENS_S = 2000.0


def balanced_store_mbps() -> float:
    """A store bandwidth at which loading a page takes as long as computing it: then the
    layerwise pipeline loads about 2/3 of a hit and computes the rest while it arrives."""
    s = TinyModelSpec()
    page_bytes = 2 * s.num_layers * PAGE * s.num_kv_heads * s.head_dim * 2  # K and V, bf16
    return page_bytes * PREFILL_TOKENS_S / PAGE * 8 / 1e6


@pytest.fixture(scope="module")
def l3(s3):
    s3.create_bucket(BUCKET)
    return BucketL3(s3, BUCKET)


def send(server, texts):
    return [server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in texts]


def test_a_layerwise_split_hit_loads_a_head_and_answers_like_the_reference(sglang_server, l3, reference):
    pinned = {"compute_or_load": "auto", "policy_prefill_tokens_s": PREFILL_TOKENS_S,
              "policy_store_mbps": balanced_store_mbps(), "policy_store_latency_ms": 0.0}
    server = sglang_server(cpu_args() + l3.server_args(layerwise={"enabled": True}, **pinned), name="split")
    texts = prompts(6, "split-hit")
    before = l3.keys()
    first = send(server, texts)
    wait_for_writes(l3, before)
    server.client.flush_cache()  # the device pool and the host tier: what remains is the store
    hit = send(server, texts)
    # The linker reports its hit as "host": a head of the pages, not none and not all.
    assert all(0 < c.host < full_pages(c) for c in hit), [(c.host, full_pages(c)) for c in hit]
    assert all(c.host % PAGE == 0 for c in hit)
    assert outputs(hit) == outputs(first)
    assert not differences(hit, reference.completions(texts))


def test_page_mode_computes_what_a_slow_store_would_only_delay(sglang_server, l3, reference):
    pinned = {"compute_or_load": "auto", "policy_prefill_tokens_s": 1e6, "policy_store_mbps": 0.1,
              "policy_store_latency_ms": 50.0}
    server = sglang_server(cpu_args() + l3.server_args(**pinned), name="compute")
    texts = prompts(4, "page-compute")
    before = l3.keys()
    first = send(server, texts)
    wait_for_writes(l3, before)
    server.client.flush_cache()
    again = send(server, texts)
    assert all(c.storage == 0 for c in again), [(c.device, c.host, c.storage) for c in again]
    assert outputs(again) == outputs(first)
    assert not differences(again, reference.completions(texts))
