"""The scheduler on the real layerwise pipeline and a real SeaweedFS (small: CI-sized)."""

from dataclasses import replace

from objectcache_dev.replay import Workload, compare


def test_deadline_order_beats_equal_sharing_under_a_cap(s3_config):
    # 4 requests x 8 pages x 8 layers x 64 KiB through 80 Mbit/s: ~0.4 s per request, so
    # equal sharing delays every request to the end while deadline order serves them in turn.
    res = compare(s3_config, replace(Workload(), requests=4), cap_mbps=80.0)
    assert all(r["failed"] == 0 for r in res.values())
    assert res["deadline"]["mean_s"] < 0.85 * res["fair"]["mean_s"], res
    assert res["deadline"]["p99_s"] <= res["fair"]["p99_s"] * 1.15, res
