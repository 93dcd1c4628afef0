"""Where results live: shared by the result schema and the plotting module."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def result_path(name: str | os.PathLike) -> Path:
    """`storage` -> benchmarks/results/storage.json; a path (with or without .json) as given."""
    p = Path(name)
    if p.parent == Path(".") and not p.suffix:
        p = RESULTS / p
    return p if p.suffix == ".json" else p.with_name(p.name + ".json")
