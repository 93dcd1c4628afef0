"""Helpers shared by the benchmarks: percentiles, a process's CPU time, CPU pinning, the
command line for the results file, the log-log plot."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def server_cpu_s(pid: int) -> float:
    """CPU seconds a process has used: utime + stime (fields 14, 15 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line() -> str:
    """How this script was run, for its results file (with its nice level, which moves timings)."""
    nice = f"nice -n {os.nice(0)} " if os.nice(0) else ""
    return nice + " ".join([".venv/bin/python", *sys.argv])


def pin_client() -> None:
    """--pin, this side: the benchmark on CPU 1 (pin_server puts the store on CPU 0), so
    client and server stop taking CPU from each other, as with a store on another host."""
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("--pin needs two CPUs")
    pin(os.getpid(), {1})


def pin_server(pid: int) -> None:
    pin(pid, {0})


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` to `cpus`; threads it starts later inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that has just ended
            pass


def loglog_plot(path, lines, xlabel: str, ylabel: str, title: str,
                size: tuple[float, float] = (7, 4.5), dpi: int = 120) -> None:
    """One log-log chart, `lines` = [(label, xs, ys, marker)], saved to `path`. Does nothing
    without matplotlib (the GPU machine has none); the JSON is the result, the plot a view."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=size)
    for label, xs, ys, marker in lines:
        ax.plot(xs, ys, marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
