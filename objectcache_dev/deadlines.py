"""Deadline arithmetic for the simulator (`sim.py`) of the transfer scheduler: when the
forward will consume each layer, and when queued forwards will really start. The layerwise
loader projects the same way on its own (`sglang_objectcache/layerwise/pace.py`).

`ComputeModel` is the per-layer forward time;
`layer_deadlines` turns a forward start into per-layer consumption times; `plan_starts`
projects forward starts for requests served in the GPU's order under a bandwidth estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class ComputeModel:
    """Seconds one decoder layer of a prefill takes: a + b*new + c*new*context, summed over
    the batch's requests (a once per batch). With no cached prefix (new == context) this is
    a + b*t + c*t^2. The defaults are a FLOP-count estimate for Llama-3.1-8B bf16 on one
    H100 (about 1.5 s for a 32K prefill, 1.5 ms per layer for 1K new tokens on a 32K
    prefix), not a measurement; fit a, b, c to your own forward timings."""

    a: float = 30e-6
    b: float = 6.0e-10
    c: float = 2.5e-11

    def layer_s(self, new_tokens: int, context_tokens: int) -> float:
        return self.a + self.b * new_tokens + self.c * new_tokens * context_tokens

    def batch_layer_s(self, reqs: Iterable[tuple[int, int]]) -> float:
        """`reqs`: (new_tokens, context_tokens) per request of one prefill batch."""
        return self.a + sum(self.b * n + self.c * n * ctx for n, ctx in reqs)


def layer_deadlines(start: float, num_layers: int, layer_s: float | Sequence[float]) -> list[float]:
    """When the forward consumes each layer: layer l is needed once layers < l have run."""
    per = [layer_s] * num_layers if isinstance(layer_s, (int, float)) else list(layer_s)
    out, t = [], start
    for s in per[:num_layers]:
        out.append(t)
        t += s
    return out


def plan_starts(free_at: float, jobs: Sequence[tuple[float, int, float]], rate: float) -> list[float]:
    """Projected forward start of each job, in the GPU's order. A job is (ready time, bytes
    still to fetch, compute seconds); it starts after the previous one and lasts the longer
    of its compute and its bytes at `rate` bytes/s (0: bandwidth not the limit)."""
    starts, t = [], free_at
    for ready, nbytes, compute_s in jobs:
        t = max(t, ready)
        starts.append(t)
        t += max(compute_s, nbytes / rate if rate > 0 else 0.0)
    return starts
