"""The prefill meter: SGLang's extend forwards feed the compute-or-load policy's rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_objectcache import runtime
from sglang_objectcache.compute_or_load import Policy
from sglang_objectcache.sglang import prefill_meter


class Mode:
    def __init__(self, extend: bool):
        self.extend = extend

    def is_extend(self) -> bool:
        return self.extend


class Instance:
    """What the meter looks for on a live backend or linker."""

    def __init__(self, last_wait_end: float = 0.0):
        self.cache = SimpleNamespace(policy=Policy())
        self.last_wait_end = last_wait_end


def batch(tokens: int, launched: float, extend: bool = True):
    return SimpleNamespace(forward_mode=Mode(extend), extend_num_tokens=tokens, launch_ts=launched)


@pytest.fixture
def live():
    """Only this test's instances are live (other tests' linkers may linger until collected)."""
    others = runtime.instances()
    runtime._live.clear()
    made = []

    def make(**kw) -> Instance:
        inst = Instance(**kw)
        made.append(inst)
        runtime.register(inst)
        return inst

    yield make
    runtime._live.clear()
    for inst in others:
        runtime.register(inst)


def test_extend_forwards_give_the_rate_in_tokens_per_second(live):
    inst = live()
    for tokens in (512, 1024, 2048):
        prefill_meter._observe(batch(tokens, launched=100.0), now=100.0 + tokens / 4000)
    assert inst.cache.policy.meter.rates().prefill_tokens_s == pytest.approx(4000)


def test_each_requests_prefix_gives_the_meter_attentions_share(live):
    inst = live()
    a, b = 1 / 4000, 1e-8
    for prefix, extend in ((0, 512), (4096, 2048), (0, 4096), (8192, 256)):
        fwd = SimpleNamespace(forward_mode=Mode(True), extend_num_tokens=extend, launch_ts=100.0,
                              prefix_lens=[prefix], extend_lens=[extend])
        prefill_meter._observe(fwd, now=100.0 + a * extend + b * extend * (prefix + extend / 2))
    r = inst.cache.policy.meter.rates()
    assert r.prefill_tokens_s == pytest.approx(4000, rel=1e-6) and r.attn_s == pytest.approx(b, rel=1e-6)


def test_decode_small_and_unlaunched_batches_are_not_measured(live):
    inst = live()
    for b in (batch(4096, 100.0, extend=False), batch(prefill_meter.MIN_TOKENS - 1, 100.0),
              SimpleNamespace(forward_mode=Mode(True), extend_num_tokens=4096, launch_ts=None)):
        prefill_meter._observe(b, now=101.0)
    assert inst.cache.policy.meter._n_prefill == 0


def test_a_forward_that_waited_for_a_layerwise_load_is_not_compute(live):
    waited = live(last_wait_end=100.5)  # a linker that waited during the forward below
    prefill_meter._observe(batch(4096, launched=100.0), now=101.0)
    assert waited.cache.policy.meter._n_prefill == 0
    prefill_meter._observe(batch(4096, launched=101.0), now=102.0)  # launched after that wait
    assert waited.cache.policy.meter._n_prefill == 1


def test_the_hook_never_raises_and_keeps_sglangs_result(live):
    live()
    assert prefill_meter.observe_forward("result", object(), object()) is None
