"""A small blocking client for SGLang's native HTTP API (`/generate`, `/flush_cache`, `/health`).

Contract: `generate` streams one request and returns a `Completion` with the time to the
first streamed chunk (TTFT), the greedy output (text and token ids) and SGLang's own
cached-token report split by tier (device = GPU/L1, host = L2, storage = L3) and, when
asked (`top_logprobs=k`), each output step's top-k token logprobs. It raises
`RequestError` for anything that is not a complete answer (HTTP error, error event,
dropped stream, timeout), so callers count errors instead of guessing. Thread-safe: each
call opens its own connection, so many threads can share one `Client`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import requests


class RequestError(RuntimeError):
    """A request that did not complete with a full answer."""


@dataclass(frozen=True)
class Completion:
    text: str
    output_ids: tuple[int, ...]
    prompt_tokens: int
    cached_tokens: int
    # None when the server gives no per-tier split of a hit (no --enable-cache-report).
    device: int | None
    host: int | None
    storage: int | None
    ttft_s: float
    latency_s: float
    # Per output token, the top-k (token id, logprob) pairs, best first; () unless asked for.
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()

    @property
    def output(self) -> tuple[str, tuple[int, ...]]:
        """What parity checks compare: the text and the token ids."""
        return self.text, self.output_ids


@dataclass(frozen=True)
class Client:
    url: str
    timeout_s: float = 120.0
    api_key: str = ""  # the server's --admin-api-key or --api-key, sent as a bearer token

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def generate(self, text: str, max_new_tokens: int = 8, cache_salt: str | None = None,
                 top_logprobs: int = 0) -> Completion:
        body = {
            "text": text,
            "stream": True,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
        }
        if top_logprobs:
            body.update(return_logprob=True, top_logprobs_num=top_logprobs)
        if cache_salt is not None:
            body["cache_salt"] = cache_salt
        start = time.perf_counter()
        ttft = None
        last = None
        try:
            with requests.post(self.url + "/generate", json=body, stream=True, timeout=self.timeout_s,
                               headers=self.headers) as r:
                if r.status_code != 200:
                    raise RequestError(f"HTTP {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise RequestError(f"error event: {str(chunk['error'])[:300]}")
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    last = chunk
        except requests.RequestException as e:
            raise RequestError(f"{type(e).__name__}: {e}") from e
        latency = time.perf_counter() - start
        if last is None:
            raise RequestError("stream ended before the first chunk")
        meta = last["meta_info"]
        if not meta.get("finish_reason"):
            raise RequestError("stream ended without a finish_reason")
        if meta["finish_reason"].get("type") == "abort":
            raise RequestError(f"aborted: {meta['finish_reason']}")
        cached = int(meta.get("cached_tokens", 0))
        details = meta.get("cached_tokens_details") or {}
        if not details and cached == 0:
            details = {"device": 0, "host": 0, "storage": 0}  # SGLang omits the split for a miss
        tier = details.get
        return Completion(
            text=last.get("text", ""),
            output_ids=tuple(last.get("output_ids") or ()),
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            cached_tokens=cached,
            device=tier("device"),
            host=tier("host"),
            storage=tier("storage"),
            ttft_s=ttft,
            latency_s=latency,
            top_logprobs=tuple(tuple((int(t), float(lp)) for lp, t, *_ in step)
                               for step in meta.get("output_top_logprobs") or ()),
        )

    def flush_cache(self, wait_s: float = 30.0) -> None:
        """Drop the device and host tiers (storage is untouched).

        SGLang refuses (HTTP 400) while requests are queued or running, so retry until
        `wait_s`; raise RequestError if it never succeeds.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                r = requests.post(self.url + "/flush_cache", timeout=self.timeout_s, headers=self.headers)
            except requests.RequestException as e:
                raise RequestError(f"/flush_cache: {type(e).__name__}: {e}") from e
            if r.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise RequestError(f"/flush_cache: HTTP {r.status_code}: {r.text[:300]}")
            time.sleep(0.5)

    def healthy(self, timeout_s: float = 5.0) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=timeout_s, headers=self.headers).status_code == 200
        except requests.RequestException:
            return False
