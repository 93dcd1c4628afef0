"""Helpers for the end-to-end tests: the L3 tier under test, prompts, waiting for write-back.

`OBJECTCACHE_E2E_BACKEND` picks the L3 tier: `objectcache` (default: our backend on a
SeaweedFS bucket) or `file` (SGLang's built-in file backend in a directory, the baseline).
Both expose the same view (`server_args`, `keys`, `read`, `write`), so one test body checks
either; where SGLang's file backend cannot pass (it has no checksums), the test says so.
"""

from __future__ import annotations

import os
import random
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

import requests

from sglang_objectcache.harness.client import Completion
from sglang_objectcache.harness.server import ServerPool, cpu_args, file_args, nocache_args, objectcache_args
from sglang_objectcache.harness.settle import until_quiet
from sglang_objectcache.harness.workloads import words

BACKEND = os.environ.get("OBJECTCACHE_E2E_BACKEND", "objectcache")
PAGE = 64
MAX_NEW = 16  # greedy tokens compared between runs: long enough that a wrong KV shows


class L3(ABC):
    """The storage tier one or more servers share (a bucket or a directory)."""

    @abstractmethod
    def server_args(self, **overrides) -> list[str]: ...

    @abstractmethod
    def keys(self) -> set[str]: ...

    @abstractmethod
    def read(self, key: str) -> bytes: ...

    @abstractmethod
    def write(self, key: str, data: bytes) -> None: ...


class BucketL3(L3):
    def __init__(self, s3, bucket: str, endpoint: str | None = None, **extra):
        self.s3, self.bucket, self.endpoint, self.extra = s3, bucket, endpoint, extra
        self._client = s3.client()

    def config(self, **overrides) -> dict:
        cfg = self.s3.config(self.bucket, **{**self.extra, **overrides})
        if self.endpoint:
            cfg["endpoint_url"] = self.endpoint
        return cfg

    def server_args(self, **overrides) -> list[str]:
        return objectcache_args(self.config(**overrides))

    def keys(self) -> set[str]:
        return set(self.etags())

    def etags(self) -> dict[str, str]:
        """Every object's key and ETag (the MD5 of its bytes): what tells an object unchanged."""
        out = {}
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out.update((o["Key"], o["ETag"]) for o in page.get("Contents", []))
        return out

    def read(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data)


class FileL3(L3):
    def __init__(self, path: str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def server_args(self, **overrides) -> list[str]:
        return file_args(str(self.path))

    def keys(self) -> set[str]:
        return {str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()}

    def read(self, key: str) -> bytes:
        return (self.path / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.path / key).write_bytes(data)


class Reference:
    """Greedy outputs from a server with no HiCache and no radix cache: every token computed.

    Requests go one at a time, as in the runs they are compared with, so batch composition
    cannot explain a difference.
    """

    def __init__(self, pool: ServerPool):
        self._pool = pool
        self._server = None
        self._memo: dict[str, Completion] = {}

    def completions(self, texts: list[str]) -> list[Completion]:
        """The reference answers, with their top-2 logprobs (to tell a near-tie from a real change)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            if self._server is None:
                self._server = self._pool.launch(cpu_args() + nocache_args(), name="reference")
            for t in missing:
                c = self._server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2)
                assert c.cached_tokens == 0, "the reference must compute every token"
                self._memo[t] = c
        return [self._memo[t] for t in texts]


def prompts(n: int, seed: str, min_tokens: int = 330, max_tokens: int = 460) -> list[str]:
    """Distinct prompts whose cacheable pages exceed SGLang's 256-token storage-prefetch threshold."""
    rng = random.Random(seed)
    # A unique head word sequence keeps prompts from sharing a first page by chance.
    return [f"{seed} {i} " + words(rng, rng.randint(min_tokens, max_tokens)) for i in range(n)]


def full_pages(c: Completion) -> int:
    """Prompt tokens a cache can serve: whole pages, never the last prompt token."""
    return (c.prompt_tokens - 1) // PAGE * PAGE


def wait_for_writes(l3: L3, before: set[str], timeout_s: float = 60.0, quiet_s: float = 1.5) -> set[str]:
    """Wait until new keys appeared and none arrived for `quiet_s`; return the new keys."""
    return until_quiet(lambda: l3.keys() - before, ready=bool, quiet_s=quiet_s, timeout_s=timeout_s,
                       describe=lambda new: f"write-back to L3 ({len(new)} new keys)")


def wait_quiet(l3: L3, quiet_s: float = 1.5, timeout_s: float = 60.0) -> None:
    """Wait until no key has appeared for `quiet_s` (a new server's warm-up write-back)."""
    until_quiet(l3.keys, quiet_s=quiet_s, timeout_s=timeout_s, describe=lambda keys: f"L3 ({len(keys)} keys)")


def settled(l3: BucketL3) -> dict[str, str]:
    """The bucket's keys and ETags once nothing has changed for 2 s (write-back, scrubs)."""
    return until_quiet(l3.etags, quiet_s=2.0, timeout_s=60, describe=lambda e: f"L3 ({len(e)} objects)")


def launch_on(sglang_server, l3: L3, name: str):
    """A CPU server whose L3 tier is `l3`, returned once its warm-up write-back is done."""
    srv = sglang_server(cpu_args() + l3.server_args(), name=name)
    wait_quiet(l3)
    return srv


def outputs(completions: list[Completion]) -> list[tuple[str, tuple[int, ...]]]:
    return [c.output for c in completions]


# How far apart (in logprob) two candidates may be for a flip between them to count as a tie.
# SGLang's CPU engine is not bitwise reproducible from one launch to the next: of 22 plain
# no-cache launches (nothing of ours), one drifted from the first of its run by up to 7.8e-3
# (two bf16 ulps) on every prompt and flipped 2 of 16 greedy answers, both at exact ties
# (scripts/check_launch_determinism.py, benchmarks/results/launch_determinism_*.json). The
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


def computed(server, texts: list[str]) -> list[Completion]:
    """A reference from `server` itself: each text under a cache salt that no page carries,
    so every token is computed by the weights it serves now. For a model with no reference
    server of its own (a second launch costs a minute on CPU)."""
    salt = f"computed-{uuid.uuid4().hex}"
    done = [server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2, cache_salt=salt) for t in texts]
    assert all(c.cached_tokens == 0 for c in done), "a salted request must compute every token"
    return done


def update_weights_from_disk(server, model_path: str) -> dict:
    """SGLang's in-place weight update (`POST /update_weights_from_disk`, which also flushes
    the device and host tiers); returns its answer, and fails the test unless it succeeded."""
    r = requests.post(server.url + "/update_weights_from_disk", json={"model_path": str(model_path)}, timeout=300)
    answer = r.json()
    if not answer.get("success") and "cache was not flushed" in answer.get("message", ""):
        # SGLang updated the weights but found storage work in flight; its own remedy is a
        # later /flush_cache (objectcache pauses storage until then).
        server.client.flush_cache()
        return answer
    assert r.status_code == 200 and answer["success"], (r.status_code, answer, server.log_tail())
    return answer
