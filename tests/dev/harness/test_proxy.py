"""The fault-injection proxy against a real SeaweedFS: pass-through is exact, each fault happens."""

from __future__ import annotations

import http.client
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from objectcache_dev.harness.proxy import FaultProxy, Faults


def _client(s3, endpoint, read_timeout=5, **config):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, connect_timeout=2,
                      read_timeout=read_timeout, **config),
    )


def test_pass_through_is_exact_and_keeps_connections(s3, bucket, fault_proxy):
    c = _client(s3, fault_proxy.endpoint)
    blob = bytes(range(256)) * 4096  # 1 MiB
    c.put_object(Bucket=bucket, Key="a/b", Body=blob)
    assert c.get_object(Bucket=bucket, Key="a/b")["Body"].read() == blob
    assert c.get_object(Bucket=bucket, Key="a/b", Range="bytes=10-19")["Body"].read() == blob[10:20]
    assert c.head_object(Bucket=bucket, Key="a/b")["ContentLength"] == len(blob)
    assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b"]
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket=bucket, Key="missing")
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    for _ in range(10):
        c.head_object(Bucket=bucket, Key="a/b")
    assert fault_proxy.seen["PUT"] == 1 and fault_proxy.seen["GET"] >= 2 and fault_proxy.seen["HEAD"] == 12
    assert not fault_proxy.injected
    assert fault_proxy.connections <= 2  # keep-alive: not one connection per request


def test_slowdown_is_a_real_s3_503(s3, bucket, fault_proxy):
    c = _client(s3, fault_proxy.endpoint)
    c.put_object(Bucket=bucket, Key="k", Body=b"x")
    fault_proxy.set(Faults(slowdown=1.0))
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    fault_proxy.set(Faults(slowdown=0.5))
    failed = 0
    for _ in range(40):
        try:
            c.get_object(Bucket=bucket, Key="k")["Body"].read()
        except ClientError:
            failed += 1
    assert 8 <= failed <= 32
    assert fault_proxy.injected["slowdown"] == failed + 1
    fault_proxy.clear()
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def test_reset_cuts_the_response_and_sends_rst(s3, fault_proxy):
    fault_proxy.set(Faults(reset=1.0))
    conn = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=5)
    conn.request("GET", "/")
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        conn.getresponse().read()
    assert fault_proxy.injected["reset"] == 1


def test_faults_can_target_one_method(s3, bucket, fault_proxy):
    c = _client(s3, fault_proxy.endpoint)
    fault_proxy.set(Faults(reset=1.0, methods=frozenset({"GET"})))
    c.put_object(Bucket=bucket, Key="k", Body=b"payload")
    with pytest.raises(BotoCoreError):
        c.get_object(Bucket=bucket, Key="k")["Body"].read()
    fault_proxy.clear()
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"payload"


def test_latency_and_stall(s3, bucket, fault_proxy):
    c = _client(s3, fault_proxy.endpoint, read_timeout=1)
    c.put_object(Bucket=bucket, Key="k", Body=b"v")
    fault_proxy.set(Faults(latency_s=0.4))
    t0 = time.perf_counter()
    c.head_object(Bucket=bucket, Key="k")
    assert time.perf_counter() - t0 >= 0.4
    fault_proxy.set(Faults(stall=True))
    t0 = time.perf_counter()
    with pytest.raises(ReadTimeoutError):
        c.head_object(Bucket=bucket, Key="k")
    assert 0.9 <= time.perf_counter() - t0 < 5
    assert fault_proxy.injected["stall"] == 1
    fault_proxy.clear()
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_bandwidth_cap_is_one_link_that_all_connections_share(s3, bucket, fault_proxy):
    from concurrent.futures import ThreadPoolExecutor
    c = _client(s3, fault_proxy.endpoint, read_timeout=10, max_pool_connections=4)
    blob = bytes(range(256)) * 1024  # 256 KiB
    c.put_object(Bucket=bucket, Key="k", Body=blob)
    fault_proxy.set(Faults(bandwidth_bps=1 << 20, methods=frozenset({"GET"})))  # 1 MiB/s
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:  # four readers on four connections: 1 MiB in all
        bodies = list(pool.map(lambda _: c.get_object(Bucket=bucket, Key="k")["Body"].read(), range(4)))
    took = time.perf_counter() - t0
    assert bodies == [blob] * 4
    assert 0.95 <= took < 3.0, took  # 4 x 256 KiB at 1 MiB/s: a second, not a quarter of one
    assert fault_proxy.injected["bandwidth"] == 8  # each request and each answer waited
    fault_proxy.clear()
    t0 = time.perf_counter()
    c.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert time.perf_counter() - t0 < 0.5


def test_store_down_resets_the_client(s3):
    from objectcache_dev.s3server import free_port

    with FaultProxy(free_port()) as proxy:  # nothing listens upstream
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/")
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            conn.getresponse()
        assert proxy.injected["upstream_down"] == 1


def _differ(a: bytes, b: bytes) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def test_mangle_flips_one_byte_the_same_each_time_and_keeps_the_framing(s3, bucket, fault_proxy):
    # The store sends a CRC of each object; botocore would refuse the damaged bodies, and
    # this test wants to see them.
    c = _client(s3, fault_proxy.endpoint, response_checksum_validation="when_required")
    blob, other = bytes(range(256)) * 256, bytes(reversed(range(256))) * 256  # 64 KiB each
    c.put_object(Bucket=bucket, Key="p/a", Body=blob)
    c.put_object(Bucket=bucket, Key="p/b", Body=other)
    etag = c.head_object(Bucket=bucket, Key="p/a")["ETag"]
    fault_proxy.set(Faults(mangle=True, methods=frozenset({"GET"})))
    first, again = (c.get_object(Bucket=bucket, Key="p/a") for _ in range(2))
    one, two = first["Body"].read(), again["Body"].read()
    assert first["ContentLength"] == len(one) == len(blob)  # same length, framing intact
    assert first["ETag"] == etag  # the headers still describe the intact object
    flipped = _differ(one, blob)
    assert len(flipped) == 1 and one[flipped[0]] == blob[flipped[0]] ^ 0xFF
    assert two == one  # a second read sees the same damage
    assert len(_differ(c.get_object(Bucket=bucket, Key="p/b")["Body"].read(), other)) == 1
    with pytest.raises(BotoCoreError):  # the store's own checksum header passes intact
        _client(s3, fault_proxy.endpoint).get_object(Bucket=bucket, Key="p/a", ChecksumMode="ENABLED")["Body"].read()
    ranged = [c.get_object(Bucket=bucket, Key="p/a", Range="bytes=1000-4999")["Body"].read() for _ in range(2)]
    assert len(_differ(ranged[0], blob[1000:5000])) == 1 and ranged[0] == ranged[1]
    # Only object reads: a listing, a HEAD and a write pass intact.
    assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]] == ["p/a", "p/b"]
    assert c.head_object(Bucket=bucket, Key="p/a")["ContentLength"] == len(blob)
    fault_proxy.set(Faults(mangle=True))
    c.put_object(Bucket=bucket, Key="p/c", Body=b"written while mangling")
    assert fault_proxy.injected["mangle"] == 6  # p/a 3 times, p/b, the range twice; not the PUT
    fault_proxy.clear()
    assert c.get_object(Bucket=bucket, Key="p/a")["Body"].read() == blob  # the store holds it intact
    assert c.get_object(Bucket=bucket, Key="p/c")["Body"].read() == b"written while mangling"
    assert fault_proxy.injected["mangle"] == 6


def test_mangle_keeps_chunked_framing():
    from objectcache_dev.harness.proxy import _flip

    body = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    assert _flip(body, True, lambda n: 3) == body.replace(b"de", bytes([ord("d") ^ 0xFF]) + b"e")
    assert _flip(b"0\r\n\r\n", True, lambda n: 0) is None


def test_deletes_are_recorded(s3, bucket, fault_proxy):
    c = _client(s3, fault_proxy.endpoint)
    for key in ("d/1", "d/2", "d/3"):
        c.put_object(Bucket=bucket, Key=key, Body=b"x")
    c.delete_object(Bucket=bucket, Key="d/1")
    c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d/2"}, {"Key": "d/3"}], "Quiet": True})
    assert fault_proxy.deleted == [f"{bucket}/d/1", f"{bucket}/d/2", f"{bucket}/d/3"]
    assert "Contents" not in c.list_objects_v2(Bucket=bucket)
