"""Named workloads that exercise a prefix cache, and the runner that measures them.

Contract: a `Workload` produces rounds of `Request`s; round r may depend on the answers of
round r-1 (multi-turn chat appends the model's reply). `run_workload` sends each round with
`clients` concurrent clients, optionally calls `/flush_cache` before every round after the
first (so reuse can only come from the storage tier), and returns a `Report`: per round the
TTFT (p50/mean), prompt and cached tokens by tier, hit rate and errors. Prompts come from a
seeded generator over the tiny model's vocabulary, so a run is reproducible and each word
is one token there (on a real model a word is about one to two tokens).
"""

from __future__ import annotations

import random
import statistics
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from objectcache_dev.harness.client import Client, Completion, RequestError
# The tiny model's tokenizer was trained on exactly these words (one token each).
from objectcache_dev.tinymodel import _WORDS as WORDS


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def prompts(n: int, seed: str, min_words: int = 330, max_words: int = 460) -> list[str]:
    """n distinct prompts, the same for the same seed. The defaults pass SGLang's 256-token
    storage-prefetch threshold on the tiny model; the unique head keeps first pages apart."""
    rng = random.Random(seed)
    return [f"{seed} {i} " + words(rng, rng.randint(min_words, max_words)) for i in range(n)]


@dataclass(frozen=True)
class Request:
    text: str
    key: str  # stable name of the request (conversation, document...) across rounds
    cache_salt: str | None = None


@dataclass(frozen=True)
class Result:
    request: Request
    completion: Completion | None
    error: str = ""


class Workload(ABC):
    name: str
    rounds: int

    @abstractmethod
    def requests(self, round_idx: int, previous: list[Result]) -> list[Request]:
        """The requests of one round; `previous` holds the last round's results."""


@dataclass
class MultiTurn(Workload):
    """Chat sessions: every turn resends the whole conversation plus a new user message."""

    conversations: int = 4
    rounds: int = 4
    system_tokens: int = 300
    turn_tokens: int = 64
    seed: int = 0
    name: str = "multiturn"

    def requests(self, round_idx, previous):
        rng = random.Random(f"{self.seed}-mt-{round_idx}")
        if round_idx == 0:
            base = random.Random(f"{self.seed}-mt-system")
            system = words(base, self.system_tokens)
            history = {f"chat{i}": f"system: {system}\n" for i in range(self.conversations)}
        else:
            history = {
                r.request.key: r.request.text + (r.completion.text if r.completion else "") + "\n"
                for r in previous
            }
        return [Request(history[k] + "user: " + words(rng, self.turn_tokens) + "\nassistant:", k)
                for k in sorted(history)]


@dataclass
class SharedPrefix(Workload):
    """Many requests behind one long system prompt; each round brings new questions."""

    requests_per_round: int = 16
    rounds: int = 2
    system_tokens: int = 1024
    question_tokens: int = 32
    seed: int = 0
    name: str = "shared-prefix"

    def requests(self, round_idx, previous):
        system = words(random.Random(f"{self.seed}-sp-system"), self.system_tokens)
        rng = random.Random(f"{self.seed}-sp-{round_idx}")
        return [Request(f"system: {system}\nuser: {words(rng, self.question_tokens)}\nassistant:", f"q{i}")
                for i in range(self.requests_per_round)]


@dataclass
class LongDoc(Workload):
    """Long documents read once (populate), then asked about again (repeat passes)."""

    documents: int = 4
    rounds: int = 2
    doc_tokens: int = 2048
    question_tokens: int = 24
    seed: int = 0
    name: str = "long-doc"

    def requests(self, round_idx, previous):
        rng = random.Random(f"{self.seed}-ld-{round_idx}")
        out = []
        for d in range(self.documents):
            doc = words(random.Random(f"{self.seed}-ld-doc{d}"), self.doc_tokens)
            out.append(Request(f"document: {doc}\nquestion: {words(rng, self.question_tokens)}\nanswer:", f"doc{d}"))
        return out


WORKLOADS = {"multiturn": MultiTurn, "shared-prefix": SharedPrefix, "long-doc": LongDoc}


@dataclass(frozen=True)
class RoundStats:
    round: int
    requests: int
    errors: int
    ttft_p50_ms: float | None
    ttft_mean_ms: float | None
    prompt_tokens: int
    cached_tokens: int
    # None when the server does not split hits by tier (started without --enable-cache-report).
    device_tokens: int | None
    host_tokens: int | None
    storage_tokens: int | None
    hit_rate: float
    wall_s: float
    flushed_before: bool
    error_samples: tuple[str, ...] = ()

    @classmethod
    def of(cls, idx: int, results: list[Result], wall_s: float, flushed: bool) -> "RoundStats":
        done = [r.completion for r in results if r.completion is not None]
        ttfts = [c.ttft_s * 1000 for c in done]
        prompt = sum(c.prompt_tokens for c in done)
        cached = sum(c.cached_tokens for c in done)
        split = all(c.storage is not None for c in done)

        def tier(name: str) -> int | None:
            return sum(getattr(c, name) for c in done) if split else None

        return cls(
            round=idx, requests=len(results), errors=len(results) - len(done),
            ttft_p50_ms=round(statistics.median(ttfts), 1) if ttfts else None,
            ttft_mean_ms=round(statistics.fmean(ttfts), 1) if ttfts else None,
            prompt_tokens=prompt, cached_tokens=cached,
            device_tokens=tier("device"), host_tokens=tier("host"), storage_tokens=tier("storage"),
            hit_rate=round(cached / prompt, 4) if prompt else 0.0, wall_s=round(wall_s, 3), flushed_before=flushed,
            error_samples=tuple(sorted({r.error for r in results if r.error}))[:3],
        )


@dataclass(frozen=True)
class Report:
    workload: str
    url: str
    params: dict
    rounds: tuple[RoundStats, ...]
    results: tuple[tuple[Result, ...], ...] = field(default=(), repr=False, compare=False)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    def to_json(self) -> dict:
        return {"workload": self.workload, "url": self.url, "params": self.params,
                "errors": self.errors, "rounds": [asdict(r) for r in self.rounds]}


def _send(client: Client, req: Request, max_new_tokens: int) -> Result:
    try:
        return Result(req, client.generate(req.text, max_new_tokens=max_new_tokens, cache_salt=req.cache_salt))
    except RequestError as e:
        return Result(req, None, str(e))


def run_workload(client: Client, workload: Workload, clients: int = 4, max_new_tokens: int = 8,
                 flush_between: bool = False, settle_s: float = 1.0) -> Report:
    """Run every round; `settle_s` lets write-through to storage finish before a flush."""
    rounds, all_results, previous = [], [], []
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for idx in range(workload.rounds):
            flushed = flush_between and idx > 0
            if flushed:
                time.sleep(settle_s)
                client.flush_cache()
            reqs = workload.requests(idx, previous)
            t0 = time.perf_counter()
            results = list(pool.map(lambda r: _send(client, r, max_new_tokens), reqs))
            rounds.append(RoundStats.of(idx, results, time.perf_counter() - t0, flushed))
            all_results.append(tuple(results))
            previous = results
    params = {k: v for k, v in vars(workload).items() if k != "name"}
    params.update(clients=clients, max_new_tokens=max_new_tokens, flush_between=flush_between)
    return Report(workload.name, client.url, params, tuple(rounds), tuple(all_results))
