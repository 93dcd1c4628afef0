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

from objectcache_dev.harness.client import Completion
from objectcache_dev.harness.server import ServerPool, cpu_args, file_args, nocache_args, objectcache_args
from objectcache_dev.harness.settle import until_quiet
from objectcache_dev.harness.workloads import words

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
        # The storage-path tests expect every hit loaded: the compute-or-load choice has its
        # own module (test_e2e_compute_or_load.py) and opts back in.
        cfg = self.s3.config(self.bucket, **{"compute_or_load": "load", **self.extra, **overrides})
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
