"""Session fixtures for the end-to-end suite: the no-cache reference server and L3 tiers."""

from __future__ import annotations

import itertools
import uuid

import pytest
from e2e_support import BACKEND, BucketL3, FileL3, Reference

from objectcache_dev.harness.server import ServerPool
from objectcache_dev.tinymodel import TinyModelSpec, make_tiny_model


@pytest.fixture(scope="session")
def reference(tiny_model, tmp_path_factory):
    pool = ServerPool(tiny_model, str(tmp_path_factory.mktemp("reference-logs")))
    try:
        yield Reference(pool)
    finally:
        pool.close()


@pytest.fixture(scope="session")
def model_b(tmp_path_factory) -> str:
    """The tiny model with other weights: the same spec but the seed, so the same config.json,
    tokenizer and shapes. Only the weights tell it from `tiny_model`. Its answers come from
    `computed` on a server of it, not from a reference server of its own: one launch less."""
    where = make_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), TinyModelSpec(seed=1))
    return str(where)


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


def pytest_sessionfinish(session, exitstatus):
    import matrix

    matrix.write_if_asked(exitstatus)
