"""The engine's prefill rate, measured on its own forwards, for the compute-or-load policy.

An AFTER hook on `Scheduler.process_batch_result`: for an extend batch, the time from
`batch.launch_ts` (SGLang sets it as `run_batch` starts) to the end of its result
processing, over the prompt tokens it computed (`extend_num_tokens`). With the overlap
scheduler that span also holds some CPU work of the next batch: it overstates compute,
which favours loading, the cautious side. Forwards that waited for a layerwise load are
skipped (their time is not compute), and so are small ones, where a forward's fixed cost
would pass for a slow rate.
"""

from __future__ import annotations

import logging
import time

from sglang_objectcache import runtime

logger = logging.getLogger(__name__)

MIN_TOKENS = 64


def observe_forward(result, scheduler, batch, *args, **kwargs):
    try:
        _observe(batch, time.monotonic())
    except Exception:  # noqa: BLE001 - a measurement must never break a forward
        logger.debug("objectcache: prefill measurement skipped", exc_info=True)
    return None  # keep SGLang's result


def _observe(batch, now: float) -> None:
    mode = getattr(batch, "forward_mode", None)
    launched = getattr(batch, "launch_ts", None)
    tokens = getattr(batch, "extend_num_tokens", None) or 0
    if mode is None or not mode.is_extend() or launched is None or tokens < MIN_TOKENS:
        return
    # Attention's share: each request's new tokens attend to its prefix and to each other.
    pairs = sum(e * (p + e / 2) for p, e in zip(getattr(batch, "prefix_lens", None) or [],
                                                 getattr(batch, "extend_lens", None) or []))
    live = runtime.instances()
    if any(getattr(inst, "last_wait_end", 0.0) >= launched for inst in live):
        return  # a layerwise load was waited for during this forward
    for inst in live:
        policy = getattr(getattr(inst, "cache", None), "policy", None)
        if policy is not None:
            policy.meter.observe_prefill(tokens, now - launched, pairs)
