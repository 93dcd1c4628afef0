"""Compute or load: how many of a hit's leading pages to load, the rest recomputed.

Pure: no I/O, no clock, no SGLang. The caller measures (`RateMeter.observe_*`), asks
(`choose`) and applies the answer by reporting fewer stored pages; the pages it does not
load are computed by the forward like any miss, so the choice never changes an answer.

Cost model (n pages of P tokens found, q new tokens after them, k pages loaded):
- loading k pages:      load(k)    = latency + k * page_bytes / bandwidth     (load(0) = 0)
- computing t tokens after s others:
      compute(t, s) = t / prefill_rate + attn * t * (s + t / 2)
  the second term is attention: each token attends to every token before it, so the same
  tokens cost more at the end of a long prompt (attn = 0 where it is not measured)
- page mode (HiCache prefetches, then the forward runs):
      T(k) = load(k) + compute((n - k) * P + q, k * P)
  loading and computing a page are each a cost per page, so the best k is 0 or n
  (attention makes compute(., kP) concave in k, which keeps the ends best).
- layerwise mode (layer l of the loaded head arrives while layer l-1 computes):
      T(k) = load(k) / L + max(load(k) * (L - 1) / L, compute((n - k) * P + q, k * P))
  the first layer's read is exposed; after that load and compute overlap, so a split
  where the two are equal can beat both ends.
Both compute terms are fitted on the forwards this server actually runs (`RateMeter`):
seconds on tokens and on token pairs (t * (s + t / 2) per request), by decayed least
squares. While the forwards seen cannot separate the two (one shape only), the fit is the
flat tokens/s and attn is 0. A flat rate from short forwards prices a tail computed at
long context too low: on this machine recomputing 8K took 2.2x as long as 4K, for 1.9x the
tokens (benchmarks/results/ttft_cap10.json).

While either rate is unmeasured (`cold`), or when no candidate beats loading everything by
`margin`, the whole hit is loaded (up to the deadline cap below, which needs only the
link's rates): that is what the cache did before this policy existed.

A load must also end in time, or it fails and is recomputed after the wait (slower than
computing at once: benchmarks/results/ttft_cap10_before.json). `budget_s` is part of the
limit (room for the estimate's error), and `concurrency` says what must fit in it:
- page mode: up to `concurrency` reads are in flight at once and share the link, so each
  takes about min(k, concurrency) * page_bytes / bandwidth and must end within the store's
  request deadline. A link that carries `concurrency` pages within the budget is not capped.
- layerwise mode: no budget. The loader keeps its reads in flight within the request
  deadline itself (`layerwise/pace.py`), and the forward waits for a layer as long as the
  load's bytes keep coming in (`layerwise/counter.py`), so a load the link carries slowly
  ends late but never fails; only its TTFT, in the cost model above, counts.
No candidate loads more pages than fit; when loading everything is over that, the best
candidate within it is taken, margin or not.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal, Optional

Mode = Literal["page", "layerwise"]


@dataclass(frozen=True)
class Rates:
    """What is known of this server; None where it is not measured yet."""

    latency_s: Optional[float] = None  # a store read's fixed cost
    bytes_s: Optional[float] = None  # the store's read bandwidth, bytes/s
    prefill_tokens_s: Optional[float] = None  # the engine's prefill rate, tokens/s
    attn_s: Optional[float] = None  # attention's seconds per token pair (None: not measured)

    @property
    def cold(self) -> bool:
        return not (self.bytes_s and self.prefill_tokens_s and self.latency_s is not None)


@dataclass(frozen=True)
class Hit:
    """A lookup's result, in the terms the cost model needs."""

    pages: int  # leading pages found (all loadable)
    page_tokens: int
    page_bytes: int  # bytes one page's object holds for this rank, all layers
    new_tokens: int  # tokens after the hit that are computed in any case
    layers: int = 1


@dataclass(frozen=True)
class Choice:
    load_pages: int
    reason: str  # "cold" | "load" | "compute" | "split" | "empty" | "capped" (load-all over budget)
    predicted_s: Optional[float] = None  # T(load_pages); None when cold
    load_all_s: Optional[float] = None  # T(pages), for the record


def load_s(k: int, hit: Hit, r: Rates) -> float:
    return 0.0 if k <= 0 else r.latency_s + k * hit.page_bytes / r.bytes_s


def compute_s(tokens: int, r: Rates, start: int = 0) -> float:
    """Computing `tokens` prompt tokens that follow `start` tokens already in the KV cache."""
    return tokens / r.prefill_tokens_s + (r.attn_s or 0.0) * tokens * (start + tokens / 2)


def ttft_s(k: int, hit: Hit, r: Rates, mode: Mode) -> float:
    """T(k) of the module docstring."""
    load = load_s(k, hit, r)
    compute = compute_s((hit.pages - k) * hit.page_tokens + hit.new_tokens, r, k * hit.page_tokens)
    if mode == "page":
        return load + compute
    first = load / max(hit.layers, 1)
    return first + max(load - first, compute)


def max_pages(hit: Hit, r: Rates, budget_s: Optional[float], concurrency: int = 128) -> int:
    """The most pages a load can read with every read ending within `budget_s` (all of them
    with no budget, or when the link carries `concurrency` reads in flight within it)."""
    if not budget_s:
        return hit.pages
    fits = max(0, math.floor((budget_s - r.latency_s) * r.bytes_s / hit.page_bytes))
    return hit.pages if fits >= concurrency else min(hit.pages, fits)


def _candidates(hit: Hit, r: Rates, mode: Mode) -> set[int]:
    ks = {0, hit.pages}
    if mode == "layerwise":
        # load(k) = compute(rest) solved for k: where the two pipelined halves finish together.
        per_page = hit.page_bytes / r.bytes_s + hit.page_tokens / r.prefill_tokens_s
        k = (compute_s(hit.pages * hit.page_tokens + hit.new_tokens, r) - r.latency_s) / per_page
        if math.isfinite(k):
            ks.update(min(max(int(f(k)), 0), hit.pages) for f in (math.floor, math.ceil))
        if r.attn_s:  # compute is no longer linear in k: also try an even grid of heads
            ks.update(range(0, hit.pages + 1, max(1, hit.pages // 64)))
    return ks


def choose(hit: Hit, rates: Rates, mode: Mode, margin: float = 0.1, budget_s: Optional[float] = None,
           concurrency: int = 128) -> Choice:
    """How many leading pages of `hit` to load. Another choice than all of them is made
    only when its predicted TTFT is below (1 - margin) of loading all, or when loading all
    is expected to take longer than `budget_s`."""
    if hit.pages <= 0:
        return Choice(0, "empty")
    link_known = bool(rates.bytes_s) and rates.latency_s is not None
    cap = max_pages(hit, rates, budget_s, concurrency) if link_known else hit.pages
    if rates.cold:  # the deadline cap needs only the link: a load past it can only fail
        return Choice(cap, "capped" if cap < hit.pages else "cold")
    load_all = ttft_s(hit.pages, hit, rates, mode)
    ks = {min(k, cap) for k in _candidates(hit, rates, mode)} | {cap}
    best = min(ks, key=lambda k: (ttft_s(k, hit, rates, mode), -k))
    best_s = ttft_s(best, hit, rates, mode)
    if cap < hit.pages:
        return Choice(best, "capped", best_s, load_all)
    if best == hit.pages or best_s >= (1.0 - margin) * load_all:
        return Choice(hit.pages, "load", load_all, load_all)
    return Choice(best, "compute" if best == 0 else "split", best_s, load_all)


class RateMeter:
    """Online estimates behind `Rates`: decayed least squares of read time on bytes
    (intercept = latency, slope = 1/bandwidth), and of forward time on tokens and token
    pairs (1/prefill rate, attention), else the decayed mean tokens/s.
    Thread-safe; `warmup` samples of each before it reports a rate."""

    def __init__(self, decay: float = 0.9, warmup: int = 3):
        self.decay, self.warmup = decay, warmup
        self._lock = threading.Lock()
        self._reads = [0.0] * 5  # weights: sum w, w*x, w*y, w*x*x, w*x*y
        self._n_reads = 0
        self._prefill = [0.0] * 7  # sum w*: tokens, seconds, t*t, t*p, p*p, t*s, p*s
        self._n_prefill = 0

    def observe_read(self, nbytes: int, seconds: float) -> None:
        """One read batch: `nbytes` in all, `seconds` from issue to last byte."""
        if nbytes <= 0 or not seconds > 0:
            return
        x, y = float(nbytes), float(seconds)
        with self._lock:
            s, d = self._reads, self.decay
            for i, v in enumerate((1.0, x, y, x * x, x * y)):
                s[i] = s[i] * d + v
            self._n_reads += 1

    def observe_prefill(self, tokens: int, seconds: float, pairs: float = 0.0) -> None:
        """One forward that computed `tokens` prompt tokens in `seconds`; `pairs` is the
        sum over its requests of extend * (prefix + extend / 2)."""
        if tokens <= 0 or not seconds > 0:
            return
        t, q, y = float(tokens), float(pairs), float(seconds)
        with self._lock:
            p, d = self._prefill, self.decay
            for i, v in enumerate((t, y, t * t, t * q, q * q, t * y, q * y)):
                p[i] = p[i] * d + v
            self._n_prefill += 1

    def rates(self) -> Rates:
        with self._lock:
            w, sx, sy, sxx, sxy = self._reads
            latency = bytes_s = prefill = None
            if self._n_reads >= self.warmup:
                mx, my = sx / w, sy / w
                var, cov = sxx / w - mx * mx, sxy / w - mx * my
                # Reads of one size cannot separate latency from bandwidth: charge it all
                # to bandwidth (latency 0), which favours loading, the conservative side.
                slope = cov / var if var > 1e-9 * mx * mx and cov > 0 else my / mx
                latency, bytes_s = max(0.0, my - slope * mx), 1.0 / slope
            attn = None
            if self._n_prefill >= self.warmup:
                t, y, tt, tq, qq, ty, qy = self._prefill
                prefill = t / y
                det = tt * qq - tq * tq
                if det > 1e-4 * tt * qq:  # shapes that separate the two terms
                    a, b = (ty * qq - qy * tq) / det, (qy * tt - ty * tq) / det
                    if a > 0 and b > 0:
                        prefill, attn = 1.0 / a, b
        return Rates(latency, bytes_s, prefill, attn)


class Policy:
    """The policy as the cache core applies it: `choose` on this server's `meter`, unless the
    config pins rates (`policy_*` fields, for benchmarks and tests) or asks to always load
    (`compute_or_load: load`)."""

    def __init__(self, mode: str = "auto", pinned: Rates = Rates(), margin: float = 0.1,
                 budgets: Optional[dict] = None):
        """`budgets`: per mode, (budget_s, concurrency) of `max_pages`; a mode without one
        is not capped."""
        self.mode, self.pinned, self.margin = mode, pinned, margin
        self.budgets = budgets or {}
        self.meter = RateMeter()

    @classmethod
    def of(cls, cfg) -> "Policy":
        mbps, lat_ms, tok_s = cfg.policy_store_mbps, cfg.policy_store_latency_ms, cfg.policy_prefill_tokens_s
        pinned = Rates(lat_ms / 1e3 if mbps else None, mbps * 125_000.0 or None, tok_s or None)
        # max_concurrency 0 is the transport's default (obstore's 128; boto3's 16 makes this
        # cap conservative: it may compute pages that would have loaded in time).
        # Page mode only: in layerwise mode the loader keeps each read within its deadline and
        # the forward waits for a load while it comes in, so nothing bounds a load but its TTFT
        # (capped at half the layer timeout, a 10 MB/s link cut 4K hits to 46 of 64 pages,
        # 1.5x slower than the whole load: ttft_cap10_half_timeout.json).
        budgets = {"page": (0.5 * cfg.request_deadline_s, cfg.max_concurrency or 128)}
        return cls(cfg.compute_or_load, pinned, cfg.compute_or_load_margin, budgets)

    def rates(self) -> Rates:
        m = self.meter.rates()
        p = self.pinned
        return Rates(p.latency_s if p.bytes_s else m.latency_s, p.bytes_s or m.bytes_s,
                     p.prefill_tokens_s or m.prefill_tokens_s,
                     None if p.prefill_tokens_s else m.attn_s)  # a pinned rate is flat

    def choose(self, hit: Hit, mode: Mode) -> Choice:
        if self.mode == "load" or hit.pages <= 0:
            return Choice(max(hit.pages, 0), "load" if hit.pages > 0 else "empty")
        budget_s, concurrency = self.budgets.get(mode, (None, 128))
        return choose(hit, self.rates(), mode, self.margin, budget_s, concurrency)
