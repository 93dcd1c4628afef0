"""Helpers shared by the storage benchmarks (bench_storage.py, bench_transports.py)."""

from __future__ import annotations

import os
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def server_cpu_s(pid: int) -> float:
    """CPU seconds a process has used: utime + stime (fields 14, 15 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
