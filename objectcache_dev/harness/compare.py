"""Is an answer the same as the reference's? Greedy answers from two SGLang launches, compared
token by token, with near-ties allowed (the CPU engine is not bitwise reproducible)."""

from __future__ import annotations

from .client import Completion

# How far apart (in logprob) two candidates may be for a flip between them to count as a tie.
# SGLang's CPU engine is not bitwise reproducible from one launch to the next: of 22 plain
# no-cache launches (nothing of ours), one drifted from the first of its run by up to 7.8e-3
# (two bf16 ulps) on every prompt and flipped 2 of 16 greedy answers, both at exact ties
# (benchmarks/launch_determinism.py, benchmarks/results/launch_determinism_*.json). The
# reference and the server under test are different launches, so a flip between two
# near-equal tokens is not a cache fault.
TIE = 0.02


def differences(completions: list[Completion], expected: list[Completion]) -> list[str]:
    """One line per answer that differs from `expected`, with where its prefix came from.

    Answers must agree token for token until they end, or until a step where both sides
    rank the two tokens as a near-tie (within TIE, when both carry top-2 logprobs); after
    such a step the prefixes differ and nothing further is comparable."""
    return [
        f"#{i}: prompt {c.prompt_tokens} tokens, cached device/host/storage {c.device}/{c.host}/{c.storage}: "
        f"got {c.output_ids} expected {want.output_ids}{_describe(c, want)}"
        for i, (c, want) in enumerate(zip(completions, expected)) if not same_answer(c, want)
    ]


def first_change(got: Completion, want: Completion) -> int | None:
    """The first step where two answers differ (one ending early counts), or None."""
    a, b = got.output_ids, want.output_ids
    return None if a == b else next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def gap(tops, token: int) -> float | None:
    """How far `token` is below the best candidate at one step (None: not in the top-k)."""
    lp = dict(tops)
    return tops[0][1] - lp[token] if token in lp else None


def same_answer(got: Completion, want: Completion) -> bool:
    k = first_change(got, want)
    if k is None:
        return True
    if k >= min(len(got.output_ids), len(want.output_ids), len(got.top_logprobs), len(want.top_logprobs)):
        return False
    ours, theirs = got.output_ids[k], want.output_ids[k]
    gaps = (gap(want.top_logprobs[k], ours), gap(got.top_logprobs[k], theirs))
    return all(g is not None and g <= TIE for g in gaps)


def drift(got: Completion, want: Completion) -> float:
    """The largest difference in the best candidate's logprob before the answers part."""
    steps = list(zip(got.top_logprobs, want.top_logprobs))[: first_change(got, want)]
    return max((abs(g[0][1] - w[0][1]) for g, w in steps), default=0.0)


def _describe(got: Completion, want: Completion) -> str:
    k = first_change(got, want)
    if k is None or k >= min(len(got.top_logprobs), len(want.top_logprobs)):
        return ""
    return (f"; at step {k} the reference's top-2 were {want.top_logprobs[k]}, this run's {got.top_logprobs[k]}; "
            f"largest logprob drift before it {drift(got, want):.2e}")
