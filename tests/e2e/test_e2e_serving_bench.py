"""The system benchmark as a user runs it against a deployment of their own: `python -m
benchmarks.serving --server NAME=URL --tokenizer PATH` drives SGLang's own
generated-shared-prefix client (W1) and the multi-turn chat (W2) against a server it did not
start, and writes one record per workload with TTFT, throughput and tokens per tier."""

from __future__ import annotations

import json

import pytest

from benchmarks import serving
from objectcache_dev.harness.server import cpu_args

pytestmark = pytest.mark.e2e


def test_serving_benchmark_measures_a_server_it_did_not_start(sglang_server, tiny_model, tmp_path):
    server = sglang_server(cpu_args(), name="radix")
    out = tmp_path / "serving.json"
    serving.main(["--server", f"radix={server.url}", "--tokenizer", tiny_model, "--gsp", "2", "2", "256", "32", "4",
                  "--chats", "2", "2", "64", "--concurrency", "1", "--out", str(out)])
    got = json.loads(out.read_text())
    w1, w2 = got["runs"]
    assert (w1["workload"], w1["config"], w1["requests"], w1["errors"]) == ("w1", "radix", 4, 0), w1
    assert (w2["workload"], w2["requests"], w2["errors"]) == ("w2", 4, 0), w2
    # one at a time: W1's second group member reuses the first's system prompt from the device pool
    assert 0 < w1["device_tokens"] < w1["prompt_tokens"], w1
    assert w2["device_tokens"] > 0, w2  # a chat's second turn resends its first
    assert all(r["ttft_mean_ms"] > 0 and r["requests_s"] > 0 for r in (w1, w2))
    assert got["medians"]["w1_radix_ttft_mean_ms"] == w1["ttft_mean_ms"]
    assert server.alive()  # measured, never stopped
