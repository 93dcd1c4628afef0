"""One L3 tier outliving and shared between servers: a restart, and two servers on one bucket."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_support import MAX_NEW, full_pages, launch_on, prompts, wait_for_writes
from objectcache_dev.harness.compare import differences

pytestmark = pytest.mark.e2e

EARLY = prompts(3, "restart")


@pytest.fixture(scope="module")
def l3(new_l3):
    return new_l3("shared")


@pytest.fixture(scope="module")
def restarted(sglang_server, l3):
    """A server that wrote EARLY to L3, was stopped, and a new one on the same tier."""
    first = launch_on(sglang_server, l3, "before-restart")
    before = l3.keys()
    for text in EARLY:
        first.client.generate(text, max_new_tokens=MAX_NEW)
    wait_for_writes(l3, before)
    first.stop()
    return launch_on(sglang_server, l3, "after-restart")


def test_restart_serves_earlier_prefixes_from_storage(restarted, reference):
    done = [restarted.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2) for t in EARLY]
    assert [(c.device, c.host, c.storage) for c in done] == [(0, 0, full_pages(c)) for c in done]
    assert not differences(done, reference.completions(EARLY))


def test_two_servers_share_pages_and_store_them_once(restarted, sglang_server, l3, reference):
    other = launch_on(sglang_server, l3, "second")
    one, two = restarted.client, other.client
    # Same length, different words: a single writer's object count for `both` is known.
    text, both = prompts(2, "shared", min_tokens=400, max_tokens=400)
    # Written by one server, a storage hit on the other; the hit writes nothing new.
    before = l3.keys()
    a = one.generate(text, max_new_tokens=MAX_NEW, top_logprobs=2)
    written = wait_for_writes(l3, before)
    b = two.generate(text, max_new_tokens=MAX_NEW, top_logprobs=2)
    assert (a.storage, b.device, b.host, b.storage) == (0, 0, 0, full_pages(b))
    time.sleep(2)
    assert l3.keys() == before | written
    # Both compute one new prefix at the same time: still one object per page, not two.
    before = l3.keys()
    with ThreadPoolExecutor(2) as pool:
        x, y = pool.map(lambda c: c.generate(both, max_new_tokens=MAX_NEW, top_logprobs=2), (one, two))
    assert len(wait_for_writes(l3, before)) == len(written)
    assert not differences([a, b, x, y], reference.completions([text, text, both, both]))
