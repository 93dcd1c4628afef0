"""pytest fixtures for end-to-end tests against a real SGLang server (load with `-p` or import).

    pytest -p objectcache_dev.harness.fixtures ...      # or: from ...fixtures import *

- `tiny_model` (session): a local tiny Llama directory (`OBJECTCACHE_TINY_MODEL_DIR` to reuse one).
- `sglang_server` (module): a launcher, `sglang_server(args, name=...) -> SGLangServer`; every
  server it started is stopped at the end of the module, whether the tests passed or not.
  Logs go to a temporary directory, or under `OBJECTCACHE_E2E_LOG_DIR` if set.
- `fault_proxy`: a `FaultProxy` in front of the session's `s3` fixture (defined by the caller).
"""

from __future__ import annotations

import os

import pytest

from objectcache_dev.harness.proxy import FaultProxy
from objectcache_dev.harness.server import ServerPool
from objectcache_dev.tinymodel import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    where = os.environ.get("OBJECTCACHE_TINY_MODEL_DIR") or tmp_path_factory.mktemp("tiny-model")
    return str(make_tiny_model(where))


@pytest.fixture(scope="module")
def sglang_server(tiny_model, tmp_path_factory, request):
    # OBJECTCACHE_E2E_LOG_DIR keeps the server logs where CI can collect them.
    keep = os.environ.get("OBJECTCACHE_E2E_LOG_DIR")
    where = os.path.join(keep, request.module.__name__) if keep else str(tmp_path_factory.mktemp("sglang-logs"))
    pool = ServerPool(tiny_model, where)
    try:
        yield pool.launch
    finally:
        pool.close()


@pytest.fixture
def fault_proxy(s3):
    with FaultProxy(s3.s3_port) as proxy:
        yield proxy
