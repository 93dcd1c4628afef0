"""Shared fixtures. A real SeaweedFS S3 server per test session; a fresh bucket per test."""

from __future__ import annotations

import itertools
import uuid

import pytest

from objectcache_dev.s3server import SeaweedFS

_counter = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A running SeaweedFS (S3 on 127.0.0.1, real auth, data on disk)."""
    srv = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs")))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def bucket(s3):
    """A new, empty bucket on the session's server, deleted after the test."""
    name = f"t{next(_counter)}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(name)
    yield name
    s3.delete_bucket(name)


@pytest.fixture
def s3_config(s3, bucket):
    """An objectcache extra-config dict for the session's server and a fresh bucket."""
    return s3.config(bucket)


@pytest.fixture(autouse=True)
def served_model(tmp_path_factory, monkeypatch):
    """Backends built in-process (no SGLang server) read the model's identity from here:
    one small checkpoint shared by the session. Returns a setter for other ServerArgs."""
    from served import server_args_for, write_checkpoint

    from sglang_objectcache.sglang import rank

    path = write_checkpoint(tmp_path_factory.getbasetemp() / "served-model")
    current = {"args": server_args_for(path)}
    monkeypatch.setattr(rank, "current_server_args", lambda: current["args"])

    def use(args):
        current["args"] = args

    use.path = path
    return use


def pytest_collection_modifyitems(config, items):
    # GPU tests run only where CUDA is present (the device machine), never in CI.
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


# End-to-end fixtures (tiny model, SGLang server launcher, fault proxy): the same code users
# load with `pytest -p objectcache_dev.harness.fixtures`.
from objectcache_dev.harness.fixtures import fault_proxy, sglang_server, tiny_model  # noqa: E402,F401

__all__ = ["fault_proxy", "sglang_server", "tiny_model"]  # fixtures pytest finds here
