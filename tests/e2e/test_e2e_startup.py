"""A misconfigured store stops the server at startup with one clear error line, not later
with a stream of misses."""

from __future__ import annotations

import os
import socket

import pytest
from e2e_support import BACKEND

from objectcache_dev.harness.server import ServerExited, cpu_args, nocache_args, objectcache_args

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="startup checks are objectcache's"),
]


@pytest.fixture(scope="module")
def failed_launches(sglang_server, s3):
    """Both misconfigured servers at once: each spends most of a minute importing before it fails."""
    bucket = "startup-checks"
    s3.create_bucket(bucket)
    configs = {
        "wrong-credentials": s3.config(bucket, secret_access_key="not-the-secret"),
        "missing-bucket": s3.config("no-such-bucket-objectcache"),
    }
    servers = {name: sglang_server(cpu_args() + objectcache_args(cfg), name=name, start=False)
               for name, cfg in configs.items()}
    out, tmp_dirs = {}, {}
    for name, srv in servers.items():
        tmp_dirs[name] = srv.spawn().tmp_dir
        with pytest.raises(ServerExited) as e:
            srv.start(timeout_s=300)  # returns only if the server came up
            pytest.fail(f"{name}: the server came up; log tail:\n{srv.log_tail()}")
        print(f"\n{name}: exit {e.value.returncode}: {e.value.error_line}")
        out[name] = e.value
    return bucket, out, tmp_dirs


def test_wrong_credentials_is_a_clear_startup_error(failed_launches, s3):
    bucket, out, _ = failed_launches
    err = out["wrong-credentials"]
    line = err.error_line
    assert err.returncode != 0
    assert "objectcache" in line and (bucket in line or s3.endpoint in line), line
    assert any(w in line.lower() for w in ("credential", "access denied", "signature", "403")), line
    assert "not-the-secret" not in line  # the secret is never logged


def test_missing_bucket_is_a_clear_startup_error(failed_launches):
    err = failed_launches[1]["missing-bucket"]
    assert err.returncode != 0
    assert "no-such-bucket-objectcache" in err.error_line, err.error_line
    assert any(w in err.error_line.lower() for w in ("does not exist", "no such bucket", "not found")), err


def test_a_stopped_server_leaves_no_temporary_files(failed_launches):
    # SGLang leaves ZMQ sockets and Prometheus files in TMPDIR; the harness gives each server
    # its own and removes it on stop, so a test run leaves nothing in the shared /tmp.
    for name, tmp in failed_launches[2].items():
        assert tmp, f"{name}: the server was given no TMPDIR of its own"
        assert not os.path.exists(tmp), f"{name}: {tmp} is still there after stop()"


def test_a_launch_whose_port_is_taken_moves_to_another(sglang_server, monkeypatch):
    # A port found free can be taken before SGLang binds it (CI once lost a launch that way:
    # SGLang logged the bind error and hung for the full timeout). Force it: the first port
    # the harness picks is already listening.
    from objectcache_dev.harness import server as harness_server

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    first = iter([taken])
    real = harness_server.free_port
    monkeypatch.setattr(harness_server, "free_port", lambda: next(first, None) or real())
    try:
        srv = sglang_server(cpu_args() + nocache_args(), name="port-taken", timeout_s=240)
    finally:
        squatter.close()
    assert srv.port != taken
    assert srv.client.healthy()
