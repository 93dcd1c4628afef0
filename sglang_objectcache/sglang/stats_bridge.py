"""`Stats` -> SGLang's `StorageMetrics`: what HiCache's `get_stats()` returns."""

from __future__ import annotations

from sglang_objectcache.stats import Stats


def storage_metrics(stats: Stats):
    """SGLang's StorageMetrics with the lists gathered since the last call (they are emptied)."""
    from sglang.srt.observability.metrics_collector import StorageMetrics

    return StorageMetrics(*stats.drain_transfer_lists())
