"""Session fixtures for the end-to-end suite: the no-cache reference server and L3 tiers."""

from __future__ import annotations

import itertools
import uuid

import pytest
from e2e_support import BACKEND, MAX_NEW, BucketL3, FileL3

from sglang_objectcache.harness.client import Completion
from sglang_objectcache.harness.server import ServerPool, cpu_args, nocache_args


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


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    pool = ServerPool(tiny_model, str(tmp_path_factory.mktemp("reference-logs")))
    try:
        yield Reference(pool)
    finally:
        pool.close()


_names = itertools.count()


@pytest.fixture(scope="session")
def new_l3(request, tmp_path_factory):
    """`new_l3(tag)`: a fresh, empty L3 tier of the backend under test."""

    def make(tag: str = "l3"):
        name = f"e2e-{tag}-{next(_names)}-{uuid.uuid4().hex[:8]}"
        if BACKEND == "file":
            return FileL3(str(tmp_path_factory.mktemp(name)))
        s3 = request.getfixturevalue("s3")
        s3.create_bucket(name)
        return BucketL3(s3, name)

    return make
