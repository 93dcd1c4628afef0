"""The compute-or-load policy: its cost model and its online rates, with no server."""

from __future__ import annotations

import threading

import pytest

from sglang_objectcache.compute_or_load import compute_s, Choice, Hit, Rates, RateMeter, choose, ttft_s

MiB = 1 << 20
# 4K prefix of 64-token pages, 1 MiB per page, 8 layers, 128 new tokens.
HIT = Hit(pages=64, page_tokens=64, page_bytes=MiB, new_tokens=128, layers=8)


def rates(bytes_s, prefill, latency=0.01) -> Rates:
    return Rates(latency_s=latency, bytes_s=bytes_s, prefill_tokens_s=prefill)


def test_cold_estimates_load_the_whole_hit():
    for r in (Rates(), Rates(0.01, 1e9, None), Rates(None, 1e9, 1e4), Rates(0.01, None, 1e4)):
        assert choose(HIT, r, "layerwise") == Choice(64, "cold")
        assert choose(HIT, r, "page") == Choice(64, "cold")


def test_no_hit_loads_nothing():
    assert choose(Hit(0, 64, MiB, 10), rates(1e9, 1e4), "page").load_pages == 0


@pytest.mark.parametrize("mode", ["page", "layerwise"])
def test_a_store_that_keeps_up_loads_everything(mode):
    # 1 GB/s: 64 MiB in 67 ms; recompute of 4K tokens at 5K tok/s takes 0.8 s.
    c = choose(HIT, rates(1e9, 5e3), mode)
    assert (c.load_pages, c.reason) == (64, "load")


@pytest.mark.parametrize("mode", ["page", "layerwise"])
def test_when_loading_cannot_win_everything_is_computed(mode):
    # 10 MB/s: 6.7 s to load; recompute at 100K tok/s (a tiny model) takes 42 ms.
    c = choose(HIT, rates(10e6, 1e5), mode)
    assert (c.load_pages, c.reason) == (0, "compute")
    assert c.predicted_s < 0.05 < c.load_all_s


def test_layerwise_splits_where_load_and_compute_are_close():
    # 50 MB/s: 1.34 s to load all; 4K tokens at 3K tok/s: 1.4 s to compute all.
    r = rates(50e6, 3e3)
    c = choose(HIT, r, "layerwise")
    assert c.reason == "split" and 0 < c.load_pages < 64
    # The split beats both ends by the margin the policy promises, in its own model.
    both = min(ttft_s(0, HIT, r, "layerwise"), ttft_s(64, HIT, r, "layerwise"))
    assert c.predicted_s < 0.9 * both
    # And it sits where neither half waits long for the other: the best k of all k.
    best = min(range(65), key=lambda k: ttft_s(k, HIT, r, "layerwise"))
    assert abs(c.load_pages - best) <= 1


def test_page_mode_never_splits():
    # Serial load then compute is linear in k: a split is never better than an end.
    for bw in (5e6, 20e6, 50e6, 200e6, 1e9):
        for prefill in (1e3, 3e3, 1e4, 1e5):
            c = choose(HIT, rates(bw, prefill), "page")
            assert c.load_pages in (0, 64), (bw, prefill, c)


def test_a_choice_within_the_margin_keeps_loading():
    # Compute-all is ~5% faster than load-all: inside the 10% margin, so load.
    r = rates(bytes_s=64 * MiB / 1.0, prefill=(64 * 64 + 128) / 0.95, latency=0.0)
    assert choose(HIT, r, "page").load_pages == 64
    assert choose(HIT, r, "page", margin=0.0).load_pages == 0


def test_the_meter_is_cold_until_warm_and_recovers_latency_and_bandwidth():
    m = RateMeter(warmup=3)
    assert m.rates().cold
    for nbytes in (MiB, 4 * MiB, 16 * MiB, 2 * MiB, 8 * MiB):
        m.observe_read(nbytes, 0.02 + nbytes / 100e6)
    for tokens in (512, 2048, 4096):
        m.observe_prefill(tokens, tokens / 8e3)
    r = m.rates()
    assert not r.cold
    assert r.latency_s == pytest.approx(0.02, rel=1e-6)
    assert r.bytes_s == pytest.approx(100e6, rel=1e-6)
    assert r.prefill_tokens_s == pytest.approx(8e3, rel=1e-6)


def test_reads_of_one_size_charge_everything_to_bandwidth():
    m = RateMeter(warmup=1)
    for _ in range(4):
        m.observe_read(4 * MiB, 0.1)
    r = m.rates()
    assert r.latency_s == 0.0 and r.bytes_s == pytest.approx(4 * MiB / 0.1)


def test_the_meter_follows_a_store_that_slows_down():
    m = RateMeter(decay=0.8, warmup=1)
    for i in range(50):
        m.observe_read(MiB * (1 + i % 4), MiB * (1 + i % 4) / 1e9)
    for i in range(50):
        m.observe_read(MiB * (1 + i % 4), MiB * (1 + i % 4) / 10e6)
    assert m.rates().bytes_s == pytest.approx(10e6, rel=0.01)


def test_the_meter_ignores_empty_and_nonsense_samples():
    m = RateMeter(warmup=1)
    for nbytes, s in ((0, 1.0), (MiB, 0.0), (MiB, -1.0), (MiB, float("nan"))):
        m.observe_read(nbytes, s)
        m.observe_prefill(nbytes, s)
    assert m.rates() == Rates()


def test_the_meter_takes_samples_from_many_threads():
    m = RateMeter(warmup=1)

    def feed():
        for _ in range(2000):
            m.observe_read(MiB, 0.01)
            m.observe_prefill(100, 0.01)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m._n_reads == 8000 and m._n_prefill == 8000
    assert m.rates().prefill_tokens_s == pytest.approx(1e4)


# The capped-store run (benchmarks/results/ttft_cap10.json): 10 MB/s, 4K tokens of 512 KiB
# pages, recompute at ~270 tokens/s. Loading wins by far, but 64 reads in flight share the
# link for 3.4 s, and reads past the 4 s request deadline failed the load: the request then
# recomputed after the wait, 1.5x slower than plain recompute.
SLOW_HIT = Hit(pages=64, page_tokens=64, page_bytes=MiB // 2, new_tokens=256, layers=8)


@pytest.mark.parametrize("mode", ["page", "layerwise"])
def test_a_load_the_link_cannot_carry_within_the_deadline_is_cut_to_what_it_can(mode):
    c = choose(SLOW_HIT, rates(10e6, 270), mode, budget_s=2.0)
    assert c.reason == "capped"
    fits = int((2.0 - 0.01) * 10e6 / (MiB // 2))  # 37 pages in 2 s
    assert c.load_pages == fits  # all it can, the rest computed: still far sooner than recompute
    assert choose(SLOW_HIT, rates(10e6, 270), mode).load_pages == 64  # no budget: everything


def test_a_link_that_carries_every_read_in_flight_in_time_is_not_capped():
    # 1 GB/s: 128 reads of 512 KiB take 67 ms; a 1,024-page hit streams through them.
    big = Hit(pages=1024, page_tokens=64, page_bytes=MiB // 2, new_tokens=256, layers=8)
    assert choose(big, rates(1e9, 270), "layerwise", budget_s=2.0).load_pages == 1024
    # 16 reads in flight (boto3) fit at 10 MB/s: the whole hit loads, 16 at a time
    assert choose(SLOW_HIT, rates(10e6, 270), "page", budget_s=2.0, concurrency=16).load_pages == 64


def test_the_policy_budgets_half_the_request_deadline_in_page_mode_and_leaves_layerwise_to_flow_control():
    from sglang_objectcache.compute_or_load import Policy
    from sglang_objectcache.config import ObjectCacheConfig

    p = Policy.of(ObjectCacheConfig.from_dict({
        "bucket": "b", "request_deadline_s": 4.0, "policy_store_mbps": 80.0, "policy_store_latency_ms": 10.0,
        "policy_prefill_tokens_s": 270.0, "layerwise": {"layer_timeout_s": 5.0}}))
    # Page mode: 128 reads in flight, each within 2 s. Layerwise: the loader keeps its reads
    # within the deadline (flow control) and the forward waits while they come in: no cap.
    assert p.budgets == {"page": (2.0, 128)}
    assert (p.choose(SLOW_HIT, "page").load_pages, p.choose(SLOW_HIT, "page").reason) == (37, "capped")
    assert p.choose(SLOW_HIT, "layerwise").reason != "capped"
    assert Policy.of(ObjectCacheConfig(bucket="b", compute_or_load="load", request_deadline_s=4.0,
                                       policy_store_mbps=80.0)).choose(SLOW_HIT, "layerwise").load_pages == 64


def test_the_deadline_cap_holds_while_the_prefill_rate_is_still_unmeasured():
    # A layerwise server whose every request is a hit never runs a forward without a load to
    # time, so its prefill rate can stay cold; the link alone says a whole load cannot land.
    c = choose(SLOW_HIT, Rates(latency_s=0.01, bytes_s=10e6, prefill_tokens_s=None), "layerwise", budget_s=2.0)
    assert (c.load_pages, c.reason) == (37, "capped")
    assert choose(SLOW_HIT, Rates(), "layerwise", budget_s=2.0) == Choice(64, "cold")  # nothing known: load


def test_the_meter_separates_attention_from_the_per_token_cost_when_forwards_differ_in_shape():
    a, b = 1 / 2000, 2e-8  # 2,000 tokens/s, and attention per token pair
    m = RateMeter(warmup=3)
    for prefix, extend in ((0, 512), (0, 4096), (4096, 4096), (2048, 256), (0, 8192), (8192, 64)):
        pairs = extend * (prefix + extend / 2)
        m.observe_prefill(extend, a * extend + b * pairs, pairs)
    r = m.rates()
    assert r.prefill_tokens_s == pytest.approx(2000, rel=1e-6) and r.attn_s == pytest.approx(b, rel=1e-6)
    flat = RateMeter(warmup=3)
    for _ in range(5):  # one shape: the two terms cannot be told apart
        flat.observe_prefill(4096, 3.0, 4096 * 2048)
    assert flat.rates().attn_s is None and flat.rates().prefill_tokens_s == pytest.approx(4096 / 3.0)


def test_with_attention_measured_a_tail_at_long_context_is_not_computed_when_loading_it_is_sooner():
    # 10 MB/s and 8K (ttft_cap10.json): the whole load took 13-16 s, recompute 46-49 s, and a
    # tail of 64 pages computed at 4K-8K context ~30 s.
    hit = Hit(pages=128, page_tokens=64, page_bytes=MiB // 2, new_tokens=256, layers=8)
    # A flat rate from short forwards (600 tokens/s) splits it; the same per-token cost with
    # attention fitted to this machine's 45 s for 8K from scratch loads it all.
    a = 1 / 600
    b = (45.0 - 8448 * a) / (8448 * 8448 / 2)
    flat = rates(10e6, 600)
    with_attn = Rates(latency_s=0.01, bytes_s=10e6, prefill_tokens_s=1 / a, attn_s=b)
    assert choose(hit, flat, "layerwise").reason == "split"
    c = choose(hit, with_attn, "layerwise")
    assert c.load_pages == 128, c
    assert compute_s(64 * 64, with_attn, 64 * 64) > 1.5 * compute_s(64 * 64, with_attn, 0)  # the tail costs more
