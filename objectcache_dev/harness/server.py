"""Launch and stop a real `python -m sglang.launch_server` for tests and local runs.

Contract: `SGLangServer.start()` returns only when `/health` answers and one real
`/generate` has completed (the first request on CPU pays seconds of lazy init), or raises
`ServerExited` (the process died: exit code plus the log's last error line) or
`TimeoutError`. `stop()` always ends the whole process tree: SIGTERM to the launcher's
process group, SIGKILL after a timeout; it is idempotent and safe after a crash. All
output goes to one log file. The argument builders below are the one place that knows
which flags a CPU test server, a HiCache tier and a no-cache reference need.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from objectcache_dev.harness.client import Client, RequestError
from objectcache_dev.s3server import free_port


def cpu_args(page_size: int = 64, max_total_tokens: int = 8192, context_length: int = 4096) -> list[str]:
    """Flags for SGLang's CPU engine (set SGLANG_USE_CPU_ENGINE=1 too: `cpu_env()`).

    --sleep-on-idle: an idle scheduler otherwise spins a whole core, and tests run several
    servers side by side on two cores.
    """
    return [
        "--device", "cpu", "--attention-backend", "torch_native", "--disable-overlap-schedule",
        "--max-total-tokens", str(max_total_tokens), "--context-length", str(context_length),
        "--page-size", str(page_size), "--enable-cache-report", "--sleep-on-idle",
    ]


def cpu_env() -> dict[str, str]:
    return {"SGLANG_USE_CPU_ENGINE": "1"}


def hicache_args(backend: str, extra_config: dict, prefetch_policy: str = "wait_complete") -> list[str]:
    """HiCache with an L3 storage backend. `direct`/`layer_first` are what the CPU engine supports."""
    return [
        "--enable-hierarchical-cache", "--hicache-io-backend", "direct", "--hicache-mem-layout", "layer_first",
        "--hicache-storage-prefetch-policy", prefetch_policy,
        "--hicache-storage-backend", backend, "--hicache-storage-backend-extra-config", json.dumps(extra_config),
    ]


def objectcache_args(s3_config: dict, prefetch_policy: str = "wait_complete") -> list[str]:
    """objectcache as the L3 tier; `s3_config` is an ObjectCacheConfig dict (see SeaweedFS.config)."""
    return hicache_args("objectcache", s3_config, prefetch_policy)


def file_args(path: str, prefetch_policy: str = "wait_complete") -> list[str]:
    """SGLang's built-in file backend as the L3 tier: the baseline objectcache is compared with."""
    return hicache_args("file", {"file_storage_path": str(path)}, prefetch_policy)


def nocache_args() -> list[str]:
    """The reference: no HiCache and no radix cache, so every token is computed."""
    return ["--disable-radix-cache"]


# `SomeError: message` (a traceback's last line) or `prog: error: message` (argparse).
_ERROR_LINE = re.compile(r"^(?:[\w.]*(?:Error|Exception)\b[^:]*: .+|[\w .-]+: error: .+)")


def last_error_line(log_text: str) -> str:
    """The last `SomeError: message` line of a log: what a crashed launch reports."""
    found = [ln.strip() for ln in log_text.splitlines() if _ERROR_LINE.match(ln.strip())]
    return found[-1] if found else ""


class _PortTaken(Exception):
    pass


class ServerExited(RuntimeError):
    def __init__(self, returncode: int, error_line: str, log_path: str):
        self.returncode = returncode
        self.error_line = error_line
        self.log_path = log_path
        super().__init__(f"sglang exited with {returncode}: {error_line or '(no error line)'} (log: {log_path})")


@dataclass
class SGLangServer:
    model_path: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    log_path: str = ""
    name: str = "sglang"
    python: str = sys.executable
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    ready: bool = False
    tmp_dir: str = ""  # the server's TMPDIR while it runs; removed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> Client:
        return Client(self.url, api_key=self.api_key)

    @property
    def api_key(self) -> str:
        """The key the server's admin routes (flush_cache) take: --admin-api-key, else --api-key."""
        for flag in ("--admin-api-key", "--api-key"):
            if flag in self.args:
                return self.args[self.args.index(flag) + 1]
        return ""

    def command(self) -> list[str]:
        return [self.python, "-m", "sglang.launch_server", "--model-path", str(self.model_path),
                "--host", "127.0.0.1", "--port", str(self.port), *self.args]

    def spawn(self) -> "SGLangServer":
        """Start the process without waiting (a launch that is expected to fail uses this)."""
        if self.proc is not None:
            return self
        self.port = self.port or free_port()
        if not self.log_path:
            self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1]
        env = {**os.environ, **self.env}
        if "TMPDIR" not in self.env:
            # SGLang leaves its ZMQ sockets and Prometheus files in TMPDIR after every launch
            # (a test run left hundreds in /tmp): give it a directory of its own. torch's
            # compile cache stays where it would have been, shared between launches.
            env.setdefault("TORCHINDUCTOR_CACHE_DIR",
                           os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
            self.tmp_dir = env["TMPDIR"] = tempfile.mkdtemp(prefix=f"{self.name}-tmp-")
        with open(self.log_path, "ab") as log:
            # Own process group, so stop() reaches the scheduler and detokenizer children.
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def start(self, timeout_s: float = 300.0, warmup_text: str | None = None) -> "SGLangServer":
        """Spawn (unless spawned already) and wait until ready; stop it if that fails."""
        if self.ready and self.alive():
            return self
        pick_port = not self.port and self.proc is None
        for attempt in range(3):
            self.spawn()
            try:
                self._wait_ready(timeout_s, warmup_text)
            except _PortTaken:
                # The free port was taken (say, as another connection's ephemeral port)
                # before SGLang bound it; SGLang then hangs instead of exiting. Try another.
                self.stop()
                if not pick_port or attempt == 2:
                    raise RuntimeError(f"{self.name}: port {self.port} was taken (log: {self.log_path})") from None
                self.port = 0
                continue
            except BaseException:
                self.stop()
                raise
            self.ready = True
            return self

    def _wait_ready(self, timeout_s: float, warmup_text: str | None) -> None:
        deadline = time.monotonic() + timeout_s
        client = Client(self.url, timeout_s=max(10.0, timeout_s), api_key=self.api_key)
        while not client.healthy(timeout_s=2):
            self._raise_if_exited()
            if f"while attempting to bind on address ('127.0.0.1', {self.port})" in self.log_text():
                raise _PortTaken()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: /health not ready after {timeout_s:.0f}s (log: {self.log_path})")
            time.sleep(0.5)
        # The first long prompt on CPU costs seconds of lazy init; pay it here, not in a test.
        # Its own cache salt keeps its pages apart from every prefix a test sends.
        text = warmup_text or " ".join(["warm"] * 300)
        while True:
            try:
                client.generate(text, max_new_tokens=2, cache_salt="objectcache-harness-warmup")
                return
            except RequestError:
                self._raise_if_exited()
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _raise_if_exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerExited(self.proc.returncode, last_error_line(self.log_text()), self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        # Children can outlive the launcher (it may die first); the group is ours, end it.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.returncode = self.proc.returncode
        self.proc = None
        self.ready = False
        if self.tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = ""

    def pids(self) -> list[int]:
        """The launcher and every descendant (scheduler, detokenizer...)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            # Fields after the ")" that closes the command name: state, ppid, ...
            ppid = int(text[text.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree (sum of VmRSS)."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "SGLangServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerPool:
    """Launches servers and stops every one of them on close(), whatever happened in between."""

    def __init__(self, model_path: str, log_dir: str):
        self.model_path = model_path
        self.log_dir = Path(log_dir)
        self.servers: list[SGLangServer] = []

    def launch(self, args: list[str], name: str = "sglang", env: dict | None = None, start: bool = True,
               timeout_s: float = 300.0) -> SGLangServer:
        """Start a server (start=False: spawn only, for launches that are meant to fail)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        srv = SGLangServer(
            self.model_path, list(args), {**cpu_env(), **(env or {})},
            log_path=str(self.log_dir / f"{name}-{len(self.servers)}.log"), name=name,
        )
        self.servers.append(srv)
        return srv.start(timeout_s=timeout_s) if start else srv.spawn()

    def close(self) -> None:
        for srv in self.servers:
            srv.stop()
