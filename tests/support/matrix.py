"""The fault matrix: what each fault test saw, one row per fault, written to a Markdown table
at the end of the session when `OBJECTCACHE_FAULT_MATRIX` names a file (docs/fault-matrix.md
is made this way: scripts/fault_matrix.sh).

A test counts through a `Tally` and asserts on it, so the table holds the numbers the tests
passed on, not a second measurement.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from e2e_support import MAX_NEW
from objectcache_dev.harness.compare import differences

ROWS: list["Tally"] = []
COLUMNS = ("fault", "store", "sent", "completed", "errors", "wrong answers", "good objects deleted",
           "server restarts")


@dataclass
class Tally:
    """Requests sent under one fault, and what came of them. `proxy` (a FaultProxy the server
    reaches the store through) counts DELETEs: every object in these runs is intact, so any
    page deleted is a good one."""

    fault: str
    store: str
    server: object
    proxy: object = None
    sent: int = 0
    completed: int = 0
    errors: list = field(default_factory=list)
    wrong: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    restarts: int = 0
    _finished: int = 0

    def __post_init__(self):
        self._pid = self.server.proc.pid
        self._deleted_at = len(self.proxy.deleted) if self.proxy is not None else 0
        ROWS.append(self)

    def send(self, texts: list[str], **kw) -> list:
        """Each text once; an error is counted (and left out of the answers), never raised."""
        out = []
        for t in texts:
            self.sent += 1
            try:
                out.append(self.server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2, **kw))
                self.completed += 1
            except Exception as e:  # noqa: BLE001 - counted, asserted by the caller
                self.errors.append(f"{type(e).__name__}: {e}")
                out.append(None)
        return out

    def send_while(self, texts: list[str], events: list, timeout_s: float = 300.0) -> list:
        """`texts` from one client thread, in order; each `(n, action)` of `events` runs here
        once `n` requests have finished (a store part killed mid-run, say)."""
        done: list = []
        worker = threading.Thread(target=self._each, args=(texts, done))
        worker.start()
        for n, action in events:
            deadline = time.monotonic() + timeout_s
            while self._finished < n and worker.is_alive():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} requests did not finish in {timeout_s}s")
                time.sleep(0.1)
            action()
        worker.join(timeout_s)
        assert not worker.is_alive(), "a request hung"
        return done

    def _each(self, texts, done):
        self._finished = 0
        for t in texts:
            done.append(self.send([t])[0])
            self._finished += 1

    def check(self, completions: list, texts: list[str], reference) -> None:
        """Count the answers that differ from the no-cache reference (errors are not answers)."""
        pairs = [(c, t) for c, t in zip(completions, texts) if c is not None]
        self.wrong += differences([c for c, _ in pairs], reference.completions([t for _, t in pairs]))

    def close(self) -> "Tally":
        """Take the deletions and restarts, once the run is over."""
        if self.proxy is not None:
            # A server's access log is its own to rewrite; pages are what must never go.
            self.deleted = [k for k in self.proxy.deleted[self._deleted_at:] if "/_access/" not in k]
        alive = self.server.proc is not None and self.server.proc.poll() is None
        self.restarts = 0 if alive and self.server.proc.pid == self._pid else 1
        return self

    def assert_clean(self) -> None:
        self.close()
        assert not self.errors, f"{len(self.errors)} requests failed: {self.errors[:3]}"
        assert self.completed == self.sent
        assert not self.wrong, "answers changed:\n" + "\n".join(self.wrong)
        assert not self.deleted, f"good objects deleted: {self.deleted[:5]}"
        assert self.restarts == 0, self.server.log_tail()

    def cells(self) -> tuple:
        return (self.fault, self.store, self.sent, self.completed, len(self.errors), len(self.wrong),
                len(self.deleted) if self.proxy is not None else "n/a", self.restarts)


def write(path: str, command: str) -> None:
    lines = [
        "# Fault matrix",
        "",
        "Made by the end-to-end suite (`tests/support/matrix.py`): each row is one fault test, counted",
        "as it ran, on a CPU SGLang server with the tiny model and SeaweedFS. \"wrong answers\" are",
        "greedy answers that differ from a no-cache server's; \"good objects deleted\" counts DELETEs",
        "that passed the fault proxy (every stored object is intact in these runs).",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(c) for c in row.cells()) + " |" for row in ROWS]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_if_asked(exitstatus: int) -> None:
    path = os.environ.get("OBJECTCACHE_FAULT_MATRIX")
    if path and ROWS:
        write(path, os.environ.get("OBJECTCACHE_FAULT_MATRIX_COMMAND", "bash scripts/fault_matrix.sh"))
