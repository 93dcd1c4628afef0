"""Waiting out asynchronous work that no API reports as finished.

SGLang backs pages up to L3 on its own threads, after the request that made them has
returned. A test or benchmark that must not see that backlog land in its next measurement
polls what it can see (the bucket's keys, a count of objects) until the reading is what it
wants and has stopped changing.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until_quiet(read: Callable[[], T], *, quiet_s: float, timeout_s: float,
                ready: Callable[[T], bool] = lambda value: True, poll_s: float = 0.25,
                describe: Callable[[T], str] = repr) -> T:
    """Poll `read()` until its value is `ready` and has not changed for `quiet_s`; return it.
    After `timeout_s` raise TimeoutError with `describe` of the last value."""
    deadline = time.monotonic() + timeout_s
    last, since = read(), time.monotonic()
    while not (ready(last) and time.monotonic() - since >= quiet_s):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not settled after {timeout_s:g}s: {describe(last)}")
        time.sleep(poll_s)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last
