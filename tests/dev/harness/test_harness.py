"""The harness's pure parts, no server: workloads are reproducible, stats and table are right."""

from __future__ import annotations

import time

import pytest

from objectcache_dev.harness import cli
from objectcache_dev.harness.client import Completion
from objectcache_dev.harness.settle import until_quiet
from objectcache_dev.harness.workloads import LongDoc, MultiTurn, Report, Request, Result, RoundStats, SharedPrefix


def _done(prompt=400, cached=384, tiers=(0, 0, 384), ttft=0.1, text="x"):
    return Completion(text, (1, 2), prompt, cached, *tiers, ttft_s=ttft, latency_s=ttft * 2)


def test_workloads_are_reproducible_and_reuse_what_they_claim():
    assert SharedPrefix(seed=3).requests(0, []) == SharedPrefix(seed=3).requests(0, [])
    assert SharedPrefix(seed=3).requests(0, []) != SharedPrefix(seed=4).requests(0, [])
    sp = SharedPrefix(requests_per_round=3, system_tokens=50).requests(1, [])
    system = sp[0].text.split("\nuser:")[0]
    assert len(system.split()) == 51 and all(r.text.startswith(system) for r in sp)
    doc0, doc1 = LongDoc(documents=1, doc_tokens=100).requests(0, []), LongDoc(documents=1, doc_tokens=100).requests(1, [])
    assert doc0[0].text.split("\nquestion:")[0] == doc1[0].text.split("\nquestion:")[0]
    assert doc0[0].text != doc1[0].text  # a new question about the same document

    mt = MultiTurn(conversations=2, system_tokens=20, turn_tokens=5)
    first = mt.requests(0, [])
    second = mt.requests(1, [Result(r, _done(text=f" answer{i}")) for i, r in enumerate(first)])
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.key == b.key and b.text.startswith(a.text + f" answer{i}\n")


def test_round_stats_and_table():
    req = Request("t", "k")
    stats = RoundStats.of(1, [Result(req, _done(ttft=0.1)), Result(req, _done(ttft=0.3)),
                              Result(req, None, "HTTP 500: boom")], wall_s=1.0, flushed=True)
    assert (stats.requests, stats.errors, stats.ttft_p50_ms, stats.ttft_mean_ms) == (3, 1, 200.0, 200.0)
    assert (stats.prompt_tokens, stats.cached_tokens, stats.storage_tokens, stats.hit_rate) == (800, 768, 768, 0.96)
    no_split = RoundStats.of(0, [Result(req, _done(tiers=(None, None, None)))], 1.0, False)
    table = cli.format_table([Report("long-doc", "u", {}, (stats, no_split))]).splitlines()
    assert table[1].split() == ["long-doc", "1", "yes", "3", "1", "200.0", "200.0", "800", "768", "0", "0", "768",
                                "96.0%"]
    assert table[2].split()[9:12] == ["-", "-", "-"]  # the server gave no split: unknown, not zero
    assert table[3] == "error in long-doc round 1: HTTP 500: boom"


def test_cli_rejects_unknown_workloads_and_dead_servers(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--url", "http://127.0.0.1:9", "nope"])
    assert e.value.code == 2
    assert cli.main(["--url", "http://127.0.0.1:9", "long-doc"]) == 2
    assert "not healthy" in capsys.readouterr().err


def _answer(ids, tops):
    return Completion("", tuple(ids), 400, 0, 0, 0, 0, ttft_s=0.1, latency_s=0.2, top_logprobs=tuple(tops))


def test_parity_forgives_only_a_flip_between_near_tied_tokens():
    from objectcache_dev.harness.compare import TIE, differences, same_answer

    tie = ((7, -6.900), (9, -6.900 - TIE / 2))
    want = _answer([5, 7, 1], [((5, -6.8), (3, -7.0)), tie, ((1, -6.7), (2, -6.9))])
    flipped = _answer([5, 9, 4], [((5, -6.8), (3, -7.0)), ((9, -6.900), (7, -6.900 - TIE / 2)), ((4, -6.7), (2, -6.9))])
    assert same_answer(want, want) and same_answer(flipped, want)
    assert not differences([flipped], [want])
    # The same flip where the reference preferred its token clearly: a changed answer.
    clear = _answer([5, 7, 1], [((5, -6.8), (3, -7.0)), ((7, -6.80), (9, -6.80 - 5 * TIE)), ((1, -6.7), (2, -6.9))])
    assert not same_answer(flipped, clear)
    assert "step 1" in differences([flipped], [clear])[0]
    # A token outside the other side's top-2, an early stop, or no logprobs: changed.
    assert not same_answer(_answer([5, 8, 1], [((5, -6.8), (3, -7.0)), ((8, -6.9), (9, -6.9))]), want)
    assert not same_answer(_answer([5, 7], want.top_logprobs[:2]), want)
    assert not same_answer(_answer([5, 9, 4], []), _answer([5, 7, 1], []))


def test_until_quiet_waits_for_a_ready_value_that_stopped_changing():
    readings = iter([0] + [1] * 10 + [2, 3] + [3] * 20)  # 1 holds for 0.1 s, twice quiet_s
    seen = []

    def read():
        seen.append(next(readings))
        return seen[-1]

    t0 = time.monotonic()
    assert until_quiet(read, ready=lambda n: n >= 2, quiet_s=0.05, timeout_s=5, poll_s=0.01) == 3
    assert seen[:13] == [0] + [1] * 10 + [2, 3]  # it did not stop on 1: quiet but not ready
    assert time.monotonic() - t0 >= 0.05


def test_until_quiet_times_out_naming_the_last_value():
    counter = iter(range(10_000))
    with pytest.raises(TimeoutError, match="still moving: 1?[0-9]"):
        until_quiet(lambda: next(counter), quiet_s=1.0, timeout_s=0.1, poll_s=0.01,
                    describe=lambda n: f"still moving: {n}")
