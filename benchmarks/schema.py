"""One result schema for every benchmark: `benchmarks/results/<name>.json`.

Every result written by `write_result` holds, at its top level:
  command   how to run it again from the repository root, flags included (and its nice
            level, which moves timings): `.venv/bin/python -m benchmarks.<module> ...`
  commit    `git rev-parse --short HEAD` when it ran; `dirty`: the tree had changes
  machine   CPU count and model, kernel, python, torch (and its threads), load average
  runs      what was measured: the per-run (or per-batch) records, or their count
  medians   the summary a reader (and docs/results.md) looks at first
  plot      how `benchmarks.plot` draws `<name>.png` from this JSON ({"kind": ...}), or absent
plus whatever else the benchmark records (`extra`, merged at the top level).

Results committed before this schema keep their own layout; each records at least
`command` (the new invocation) and, where it changed, `command_as_run`.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.paths import RESULTS, ROOT, result_path

__all__ = ["RESULTS", "ROOT", "command_line", "commit", "load_result", "machine", "result_path", "write_result"]


def command_line() -> str:
    """How this benchmark was run, as a command to run it again from the repository root."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # python -m benchmarks.<name>
        argv = ["-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    else:
        argv = sys.argv
    nice = f"nice -n {os.nice(0)} " if os.nice(0) else ""
    return nice + " ".join([".venv/bin/python", *(shlex.quote(a) for a in argv)])


def commit() -> tuple[str, bool]:
    """(short hash of HEAD, whether the tracked tree has changes); ("unknown", False) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        return git("rev-parse", "--short", "HEAD").strip(), bool(git("status", "--porcelain", "-uno").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def machine() -> dict:
    """What ran it: enough to tell two machines (or two loads of one) apart."""
    out = {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
           "machine": platform.machine(), "python": platform.python_version(), "loadavg": os.getloadavg()}
    torch = sys.modules.get("torch")  # only if the benchmark uses it: importing it costs seconds
    if torch is not None:
        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(name: str | os.PathLike, runs, medians, extra: dict | None = None,
                 plot: dict | None = None) -> Path:
    """Write the result JSON (see the module docstring) and, when `plot` names a kind, its PNG
    beside it. `name`: a result name or an output path such as an `--out` flag. Returns the
    JSON's path."""
    path = result_path(name)
    sha, dirty = commit()
    out = {"command": command_line(), "commit": sha, "dirty": dirty, "machine": machine(),
           "runs": runs, "medians": medians, **({"plot": plot} if plot else {}), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    if plot:
        from benchmarks import plot as plotting

        plotting.draw(out, path.with_suffix(".png"))
    return path


def load_result(name: str | os.PathLike) -> dict:
    """The result JSON by name (`storage`) or path."""
    return json.loads(result_path(name).read_text())
