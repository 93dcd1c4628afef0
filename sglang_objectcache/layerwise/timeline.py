"""Per-batch, per-layer timeline of layerwise loads: the proof that fetch overlaps compute.

For every load batch (one forward) and layer it keeps: when the first fetch of the layer
was issued, when its last bytes arrived, when its scatter into the KV pool finished, and
when the forward started and stopped waiting for it. Bounded to the last `max_batches`.
Export as plain JSON (`to_json`) or as a Chrome trace (`chrome_trace`, open it in
chrome://tracing or ui.perfetto.dev): one row for fetches, one for scatters, one for the
forward's waits.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Optional

_FIRST = ("issued",)  # keep the earliest time; everything else keeps the latest


class Timeline:
    def __init__(self, max_batches: int = 256):
        self.max_batches = max_batches
        self._batches: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, index: int, rids: list[str], store_pages: int, host_pages: int,
              num_layers: int, t: float) -> None:
        with self._lock:
            self._batches[index] = {
                "index": index, "rids": list(rids), "store_pages": store_pages,
                "host_pages": host_pages, "start": t, "end": None, "ok": None,
                "layers": [{"layer": l} for l in range(num_layers)],
            }
            while len(self._batches) > self.max_batches:
                self._batches.popitem(last=False)

    def mark(self, index: int, layer: int, what: str, t: float) -> None:
        with self._lock:
            b = self._batches.get(index)
            if b is None:
                return
            rec = b["layers"][layer]
            old = rec.get(what)
            if old is None or (t < old if what in _FIRST else t > old):
                rec[what] = t

    def wait(self, index: int, layer: int, t0: float, t1: float) -> None:
        with self._lock:
            b = self._batches.get(index)
            if b is not None and "wait_start" not in b["layers"][layer]:
                b["layers"][layer]["wait_start"] = t0
                b["layers"][layer]["wait_end"] = t1

    def end(self, index: int, ok: bool, t: float) -> None:
        with self._lock:
            b = self._batches.get(index)
            if b is not None:
                b["end"], b["ok"] = t, ok

    def batch(self, index: int) -> Optional[dict]:
        with self._lock:
            b = self._batches.get(index)
            return json.loads(json.dumps(b)) if b is not None else None

    def to_json(self) -> dict:
        with self._lock:
            batches = json.loads(json.dumps(list(self._batches.values())))
            return {"clock": "time.perf_counter seconds", "batches": batches}

    def chrome_trace(self) -> dict:
        data = self.to_json()["batches"]
        t0 = min((b["start"] for b in data), default=0.0)
        us = lambda t: round((t - t0) * 1e6, 1)  # noqa: E731
        events = []
        for b in data:
            pid = f"batch {b['index']} ({len(b['rids'])} req, {b['store_pages']} store + {b['host_pages']} host pages)"
            for rec in b["layers"]:
                name = f"L{rec['layer']}"
                for tid, a, z in (("fetch", "issued", "arrived"), ("scatter", "arrived", "scattered"),
                                  ("forward wait", "wait_start", "wait_end")):
                    if rec.get(a) is not None and rec.get(z) is not None:
                        events.append({"name": name, "ph": "X", "pid": pid, "tid": tid,
                                       "ts": us(rec[a]), "dur": max(0.1, us(rec[z]) - us(rec[a]))})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def save(self, path: str) -> tuple[str, str]:
        """Write `path` (JSON) and the Chrome trace next to it; return both paths."""
        trace = path[:-5] + ".trace.json" if path.endswith(".json") else path + ".trace.json"
        with open(path, "w") as f:
            json.dump(self.to_json(), f)
        with open(trace, "w") as f:
            json.dump(self.chrome_trace(), f)
        return path, trace


def overlapped_layers(batch: dict) -> list[int]:
    """Layers whose bytes arrived after the forward had already started computing an
    earlier layer (it finished waiting for layer j < l before layer l's data was in)."""
    layers = batch["layers"]
    out = []
    for rec in layers:
        l, arrived = rec["layer"], rec.get("arrived")
        if arrived is None:
            continue
        if any(r.get("wait_end") is not None and r["wait_end"] < arrived for r in layers[:l]):
            out.append(l)
    return out
