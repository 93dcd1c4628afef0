"""The Prometheus exporter in multiprocess mode: counters, labels, the latency histogram."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_METRICS_SCRIPT = r"""
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from sglang_objectcache import metrics
from sglang_objectcache.stats import Stats

class Backend:
    def __init__(self):
        self.stats = Stats()

class Linker:
    queue_depth = 5

b, l = Backend(), Linker()
l.stats = b.stats  # one Stats seen through two instances is counted once
exp = metrics.Exporter(metrics.Metrics(), instances=lambda: [b, l])
b.stats.inc("pages_hit", 4); b.stats.inc("bytes_read", 4096); b.stats.miss("corrupt", 2)
b.stats.inc("store_errors_timeout"); b.stats.inc("write_errors_server", 3); b.stats.inc("get_requests", 6)
b.stats.inc("checksum_failures"); b.stats.inc("brand_new_counter", 2)
b.stats.observe_get(0.003, 4); b.stats.observe_get(0.2, 2)
exp.export()
b.stats.inc("pages_hit", 1); b.stats.observe_get(0.003, 1)
exp.export(); exp.export()  # a repeated export adds nothing
reg = CollectorRegistry(); multiprocess.MultiProcessCollector(reg)
print(generate_latest(reg).decode())
"""


def test_metrics_exporter_in_prometheus_multiprocess_mode(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _METRICS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    samples = {}
    for line in out.splitlines():
        if line.startswith("objectcache_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples["objectcache_storage_hits_total"] == 5
    assert samples["objectcache_bytes_read_total"] == 4096
    assert samples['objectcache_storage_misses_total{reason="corrupt"}'] == 2
    assert samples['objectcache_store_errors_total{kind="timeout",op="read"}'] == 1
    assert samples['objectcache_store_errors_total{kind="server",op="write"}'] == 3
    assert samples['objectcache_requests_total{op="get"}'] == 6
    assert samples["objectcache_checksum_failures_total"] == 1
    assert samples['objectcache_counter_total{name="brand_new_counter"}'] == 2
    assert samples['objectcache_get_latency_seconds_bucket{le="0.005"}'] == 5
    assert samples['objectcache_get_latency_seconds_bucket{le="0.25"}'] == 7
    assert samples["objectcache_get_latency_seconds_count"] == 7
    assert samples["objectcache_get_latency_seconds_sum"] == pytest.approx(0.003 * 5 + 0.2 * 2)
    assert samples["objectcache_scheduler_queue_depth"] == 5
