"""Chaos on a store of many nodes: a SeaweedFS cluster (master, three volume servers keeping
two copies of every object, filer, S3 gateway: separate processes) under a live server.
A volume server dies, the gateway restarts, SGLang's own failure injector runs: every request
completes with the no-cache answer, nothing good is deleted, and the server stays up."""

from __future__ import annotations

import time

import pytest
from e2e_support import BACKEND, BucketL3, full_pages, launch_on, prompts, wait_for_writes
from matrix import Tally

from objectcache_dev.harness.proxy import FaultProxy
from objectcache_dev.harness.server import cpu_args
from objectcache_dev.s3cluster import SeaweedCluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BACKEND != "objectcache", reason="a store cluster needs the S3 backend (objectcache)"),
]

BUCKET = "cluster"
CLUSTER = "cluster (3 volume servers, 2 copies)"
DOWN_TTL = {"negative_ttl_s": 1.0}  # shipped timeouts; only the store-down window is shorter


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SeaweedCluster(str(tmp_path_factory.mktemp("cluster"))) as c:
        c.create_bucket(BUCKET)
        yield c


@pytest.fixture(scope="module")
def proxy(cluster):
    # No faults: it only counts the DELETEs the server sends (any page deleted here is good).
    with FaultProxy(cluster.s3_port) as p:
        yield p


@pytest.fixture(scope="module")
def l3(cluster, proxy):
    return BucketL3(cluster, BUCKET, endpoint=proxy.endpoint, **DOWN_TTL)


@pytest.fixture(scope="module")
def server(sglang_server, l3):
    return launch_on(sglang_server, l3, "cluster")


@pytest.fixture(autouse=True)
def stays_healthy(server, cluster):
    yield
    for i in range(cluster.volumes):  # a test that failed may have left one down
        if not cluster.parts[f"volume{i}"].alive:
            cluster.start_volume(i)
    assert server.alive() and server.client.healthy(), server.log_tail()


def stored(server, l3, texts) -> None:
    """`texts` computed once and written back, then dropped from the device and host tiers."""
    before = l3.keys()
    for t in texts:
        server.client.generate(t, max_new_tokens=2)
    wait_for_writes(l3, before)
    time.sleep(DOWN_TTL["negative_ttl_s"] + 0.5)
    server.client.flush_cache()


def test_a_volume_server_killed_mid_run(server, l3, cluster, proxy, reference):
    early = prompts(3, "vol-early")
    stored(server, l3, early)
    tally = Tally("a volume server killed (SIGKILL) mid-run", CLUSTER, server, proxy)
    stream = early + prompts(6, "vol-stream")
    done = tally.send_while(stream, [(1, lambda: cluster.kill_volume(0))])
    tally.check(done, stream, reference)
    # The other copy of every page lives on: flushed, the same prompts are hits again.
    time.sleep(DOWN_TTL["negative_ttl_s"] + 0.5)
    server.client.flush_cache()
    again = tally.send(early + stream[len(early):len(early) + 2])
    tally.check(again, early + stream[len(early):len(early) + 2], reference)
    tally.assert_clean()
    assert all(c.storage == full_pages(c) for c in again[:len(early)]), [c.storage for c in again]
    # Pages written while the volume server was dead were stored too, on the survivors.
    assert all(c.storage == full_pages(c) for c in again[len(early):]), [c.storage for c in again]
    cluster.start_volume(0)


def test_the_s3_gateway_restarted_mid_run(server, l3, cluster, proxy, reference):
    early = prompts(3, "gw-early")
    stored(server, l3, early)
    tally = Tally("S3 gateway restarted mid-run (2 s down)", CLUSTER, server, proxy)
    stream = early + prompts(6, "gw-stream")
    done = tally.send_while(stream, [(1, lambda: cluster.restart_gateway(down_s=2.0))])
    tally.check(done, stream, reference)
    time.sleep(DOWN_TTL["negative_ttl_s"] + 0.5)
    server.client.flush_cache()
    again = tally.send(early)
    tally.check(again, early, reference)
    tally.assert_clean()
    assert all(c.storage == full_pages(c) for c in again), [c.storage for c in again]


def test_sglang_failure_injector(sglang_server, cluster, proxy, reference):
    """SGLang's own test injector (`SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE` / `_DELAY`)
    wraps our backend: a third of the storage calls fail and each waits up to 0.2 s."""
    l3 = BucketL3(cluster, "cluster-injector", endpoint=proxy.endpoint, **DOWN_TTL)
    cluster.create_bucket("cluster-injector")
    env = {"SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE": "0.3", "SGLANG_TEST_HICACHE_BACKEND_RANDOM_DELAY": "0.2"}
    srv = sglang_server(cpu_args() + l3.server_args(), name="injector", env=env)
    assert "test injector enabled" in srv.log_text(), "SGLang did not wrap the backend"
    tally = Tally("SGLang's failure injector (30% fail, <=0.2 s delay)", CLUSTER, srv, proxy)
    texts = prompts(4, "injector")
    first = tally.send(texts)
    tally.check(first, texts, reference)
    hits = 0
    for _ in range(2):  # twice more from storage, through the injector
        time.sleep(2.0)
        srv.client.flush_cache()
        again = tally.send(texts)
        tally.check(again, texts, reference)
        hits += sum(c.storage for c in again if c is not None)
    tally.assert_clean()
    assert hits > 0, "no page came from storage: the injector run tested nothing of ours"
    assert srv.alive() and srv.client.healthy(), srv.log_tail()
