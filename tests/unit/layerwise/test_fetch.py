"""The layerwise fetchers (`layerwise/fetch.py`) and the host tier's block accounting: the
worker process's lifecycle against a real SeaweedFS, and what happens when it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from layerwise_rig import Rig, hashes

from objectcache_dev.s3server import SeaweedFS, free_port
from sglang_objectcache.layerwise.hosttier import HostTier


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


@pytest.fixture
def rig(s3_config):
    r = Rig(s3_config, fetch="process")
    yield r
    r.close()


def test_a_killed_worker_is_replaced_and_loads_go_on(rig):
    keys = hashes(4, "k")
    rig.put(keys, [1, 2, 3, 4])
    assert rig.load(keys, [10, 11, 12, 13])[1]
    fetch = rig.loader.fetch
    first = fetch._proc
    first.kill()
    assert wait_for(lambda: fetch._proc is None)  # the reader saw it go
    assert rig.load(keys, [20, 21, 22, 23])[1]  # a new worker, with the staging mapped again
    assert fetch._proc is not None and fetch._proc.pid != first.pid
    assert rig.same([1, 2, 3, 4], [20, 21, 22, 23])


def test_a_worker_dying_mid_load_fails_the_batch_fast_and_writes_nothing(tmp_path):
    srv = SeaweedFS(str(tmp_path / "sw"), s3_port=free_port(), buckets=("die",)).start()
    rig = Rig(srv.config("die", read_timeout_s=30.0, retries=0), timeout_s=20.0, fetch="process")
    try:
        keys = hashes(3, "d")
        rig.put(keys, [1, 2, 3])
        srv.pause()  # the worker's GETs hang
        killer = threading.Timer(0.5, rig.loader.fetch._proc.kill)
        killer.start()
        t0 = time.monotonic()
        _, ok = rig.load(keys, [10, 11, 12])
        assert not ok and time.monotonic() - t0 < 10  # failed by the lost jobs, not the 20 s timeout
        assert rig.untouched([10, 11, 12])
        srv.resume()
        assert rig.load(keys, [20, 21, 22])[1]
        assert rig.same([1, 2, 3], [20, 21, 22])
    finally:
        srv.resume()
        rig.close()
        srv.stop()


def test_staging_segments_are_reused_not_leaked(rig):
    keys = hashes(6, "r")
    rig.put(keys, [1, 2, 3, 4, 5, 6])
    for k in range(8):
        assert rig.load(keys, [10 + k, 17 + k, 24 + k, 31 + k, 38 + k, 45 + k])[1]
    fetch = rig.loader.fetch
    # each load stages every layer once; buffers come back and are reused, not made anew
    assert len(fetch._segments) <= rig.g.num_layers + 1
    assert fetch._next_sid == len(fetch._segments)


def test_the_worker_dies_with_its_server(s3_config):
    """A server killed outright (SIGKILL: no cleanup runs) leaves no worker behind."""
    code = (
        "import json, sys, time\n"
        "from sglang_objectcache.config import ObjectCacheConfig\n"
        "from sglang_objectcache.layerwise.fetch import ProcessFetch\n"
        "from sglang_objectcache.objformat import PageGeometry\n"
        "f = ProcessFetch(ObjectCacheConfig.from_dict(json.loads(sys.argv[1])),\n"
        "                 PageGeometry('mha', 2, 4, (64, 64), 'float16'), 2, pinned=False)\n"
        "f.alloc(16)\n"
        "print(f._proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    server = subprocess.Popen([sys.executable, "-c", code, json.dumps(s3_config)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(server.stdout.readline())
        os.kill(worker, 0)  # alive
        server.kill()
        server.wait()
        assert wait_for(lambda: not alive(worker)), "the fetch worker outlived its server"
    finally:
        server.kill()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_broken_store_config_in_the_worker_fails_loads_not_the_server(s3_config):
    rig = Rig(dict(s3_config, secret_access_key="wrong"), fetch="process")
    try:
        keys = hashes(2, "w")
        _, ok = rig.load(keys, [10, 11])
        assert not ok and rig.untouched([10, 11])
        assert rig.stats.counters.get("store_errors_auth", 0) >= 1
    finally:
        rig.close()


def test_host_tier_counts_a_block_until_its_last_row_leaves():
    mib = 1 << 20
    tier = HostTier(3 * mib)
    block = np.zeros((4, mib // 2), np.uint8)  # 2 MiB in four rows
    tier.put_block(["a", "b", "c", "d"], block)
    assert tier.used == 2 * mib and len(tier) == 4
    tier.put("e", np.zeros(mib, np.uint8))  # 3 MiB: full
    assert tier.used == 3 * mib
    tier.put("f", np.zeros(mib // 2, np.uint8))  # over: rows of the block leave, LRU first
    assert tier.used <= 3 * mib
    assert "a" not in tier and "e" in tier and "f" in tier
    assert "d" not in tier  # the block's memory came back only once every row had gone
    assert tier.used == mib + mib // 2


def test_host_tier_discard_and_oversized_blocks():
    tier = HostTier(1 << 20)
    tier.put_block(["x", "y"], np.zeros((2, 1 << 20), np.uint8))  # larger than the tier: not kept
    assert len(tier) == 0 and tier.used == 0
    tier.put_block(["x", "y"], np.zeros((2, 1000), np.uint8))
    tier.discard("x")
    assert tier.used == 2000 and tier.get("y") is not None
    tier.discard("y")
    assert tier.used == 0


def test_a_worker_that_fails_halfway_through_its_start_is_replaced(rig):
    """A start that fails after the socket is up (a segment's map hits EPIPE) left the half
    started worker in place with no reader: it was never replaced and every load timed out."""
    keys = hashes(3, "hs")
    rig.put(keys, [1, 2, 3])
    assert rig.load(keys, [10, 11, 12])[1]  # staging segments exist: a new worker maps them
    fetch = rig.loader.fetch
    fetch._proc.kill()
    assert wait_for(lambda: fetch._proc is None)
    send_map, half = fetch._send_map, []

    def map_failing_once(seg):
        if not half:
            half.append(fetch._proc)
            raise BrokenPipeError("the worker went before its maps")
        send_map(seg)

    fetch._send_map = map_failing_once
    assert rig.load(keys, [20, 21, 22])[1] is False  # the start failed: that load recomputes
    assert rig.load(keys, [30, 31, 32])[1]  # the next job started a healthy worker
    assert rig.same([1, 2, 3], [30, 31, 32])
    assert half and fetch._proc is not half[0]
    assert wait_for(lambda: not alive(half[0].pid))  # the half started one was killed


def test_a_hung_worker_is_killed_and_replaced_and_lets_go_of_its_jobs(s3_config):
    """C7: a worker that never answers (stopped here; in the field, a GET whose transport
    ignores its timeouts) kept every later job queued behind it: each load waited out its
    layer timeout and recomputed, for ever, and the loader kept those jobs and their staging
    (L3). Past the job deadline (from the store's per-call worst case) it is killed, its
    jobs fail, and the next load starts a new worker."""
    rig = Rig(s3_config, timeout_s=1.0, fetch="process")  # the shipped store timeouts
    fetch = rig.loader.fetch
    hung = fetch._proc
    try:
        keys = hashes(3, "hang")
        rig.put(keys, [1, 2, 3])
        assert rig.load(keys, [10, 11, 12])[1]
        assert fetch.deadline_s == 2 * rig.cfg.worst_case_s() + 1.0 < 10
        os.kill(hung.pid, signal.SIGSTOP)  # alive, never answers
        t0 = time.monotonic()
        assert rig.load(keys, [20, 21, 22])[1] is False  # the layer timeout released the forward
        assert rig.loader._jobs and rig.loader.batches.draining  # waiting for the worker's answers
        let_go = wait_for(lambda: not rig.loader._jobs and not rig.loader.batches.draining, fetch.deadline_s + 5)
        assert let_go, "the hung worker's jobs were never let go"
        assert time.monotonic() - t0 < fetch.deadline_s + 3
        assert wait_for(lambda: not alive(hung.pid)) and fetch._proc is None
        assert rig.load(keys, [30, 31, 32])[1]  # a new worker, against the real store
        assert fetch._proc is not None and fetch._proc.pid != hung.pid
        assert rig.same([1, 2, 3], [30, 31, 32]) and rig.untouched([20, 21, 22])
    finally:
        hung.kill()
        rig.close()


def test_the_workers_argv_and_environment_carry_no_secret(rig, s3_config):
    """E (issue 27): the store's keys reach the worker through its socket, never its argv or
    environment, which other users of the machine can read (ps, /proc)."""
    keys = hashes(2, "secret")
    rig.put(keys, [1, 2])
    assert rig.load(keys, [10, 11])[1]  # the worker is up and has read with the keys
    pid = rig.loader.fetch._proc.pid
    secret = s3_config["secret_access_key"].encode()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert secret not in f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert secret not in f.read()
