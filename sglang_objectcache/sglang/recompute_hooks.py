"""Recompute instead of abort when a layerwise load fails.

SGLang aborts (HTTP 503) every request whose external-linker load failed. For a
cache that is the wrong contract: a missing, corrupt, slow or unreachable object must
cost time, never the request. Two narrow hooks turn the abort into a retraction:

1. after the forward, `UnifiedRadixCache.finish_external_linker_loads` has marked the
   failed requests for abort; for objectcache's linker we take the mark back and flag
   them `is_retracted`, which makes SGLang's result processor skip their (garbage) output
   exactly as it does for a request retracted mid-flight;
2. after `Scheduler.process_batch_result`, each flagged request gives back its KV slots,
   is reset, leaves the batch and returns to the waiting queue, the way SGLang's own
   decode retraction does; the linker's `suppress(rid)` makes its next lookup miss, so
   the retry computes the whole prompt.

Chunked-prefill requests keep SGLang's abort: their later chunks were built on the failed
prefix. With the overlap scheduler the prefill's requests may already be in the next
decode batch when its result is processed, so these hooks only act with
`--disable-overlap-schedule` (always the case on the CPU engine); otherwise SGLang's
abort stands and the plugin warns at startup.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_FLAG = "_objectcache_recompute"


def _objectcache_linker(tree_cache):
    from sglang_objectcache.sglang.layerwise_linker import ObjectCacheLinker

    wrapper = getattr(tree_cache, "linker", None)
    linker = getattr(wrapper, "cache_linker", None)
    return linker if isinstance(linker, ObjectCacheLinker) else None


def finish_loads_or_recompute(original, self, reqs):
    failed = original(self, reqs)
    linker = _objectcache_linker(self)
    if not failed or linker is None or not linker.recompute_on_failure:
        return failed
    # Nothing here waits for a scrub of the failed pages (SGLang's scheduler thread must not):
    # the recompute's write-back of a page under scrub waits for it instead (layerwise_linker._write).
    keep_abort = []
    for req in failed:
        if req.inflight_middle_chunks > 0:  # a chunked prefill: later chunks build on it
            keep_abort.append(req)
            continue
        req.discard_output_reason = None
        req.is_retracted = True
        setattr(req, _FLAG, True)
        linker.suppress(req.rid)
    n = len(failed) - len(keep_abort)
    if n:
        logger.warning("objectcache: %d request(s) lost their layerwise load; recomputing them", n)
    return keep_abort


def requeue_after_result(original, self, batch, result):
    out = original(self, batch, result)
    retry = [r for r in batch.reqs if getattr(r, _FLAG, False)]
    if not retry:
        return out
    from sglang.srt.mem_cache.common import release_kv_cache

    for req in retry:
        setattr(req, _FLAG, False)
        release_kv_cache(req, self.tree_cache, checkpoint=False)
        req.reset_for_retract()
        req.skip_radix_cache_insert = False
        # Report what the retry really reuses: the failed load's tokens were recomputed.
        req.retracted_stain = False
        req.cached_tokens = req.cached_tokens_device = req.cached_tokens_host = 0
        req.cached_tokens_storage = 0
        req._cache_breakdown_computed = False
        self._add_request_to_queue(req, is_retracted=True)
    batch.filter_batch(reqs_to_exclude=retry)
    return out
