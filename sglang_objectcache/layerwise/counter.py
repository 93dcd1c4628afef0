"""Per-layer readiness for layerwise loads: what SGLang's KV-pool accessors wait on.

SGLang's MHA/MLA pools call `layer_transfer_counter.wait_until(layer)` at the first K/V
access of each attention layer, and the scheduler calls `set_consumer(index)` before each
forward with the index `start_layer_wise_loading()` returned (-1: nothing to wait for).
The CUDA-graph runner also reads `consumer_index` and `num_layers`.

Contract
- `update_producer()` opens batch `index`; the loader later calls `complete(index, layer)`
  once that layer's KV is in the device pool (on GPU: once the copy has been *enqueued*
  and its CUDA event recorded), or `fail(index, error)`.
- `wait_until(layer)` blocks the CPU only until the layer has been enqueued, then makes
  the current CUDA stream wait on the layer's event: the GPU, not the launch path, waits
  for the bytes. On CPU the completion is the copy itself.
- A layer that does not arrive within `timeout_s` of the wait's start or of the batch's
  last `progress` (the loader's sign that some of its bytes came in) fails the batch
  instead of hanging the forward; the forward then runs on whatever the slots hold and
  `finish()` reports the failure, so the scheduler never uses that output (it recomputes
  or aborts the request). A load that keeps coming in on a slow link is waited for: each
  of its reads has its own deadline, and the loader keeps them within it.
- `finish(index)` returns True when every layer landed. It first stops the batch (`stop`
  callback): after it returns, the loader never writes those slots again.
- Timing of each wait (start, end) is recorded for the timeline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class _Batch:
    layers: list[threading.Event]
    cuda_events: list
    error: Optional[BaseException] = None
    waits: dict[int, tuple[float, float]] = field(default_factory=dict)
    progressed: float = 0.0  # perf_counter of the last progress()


class LayerReadyCounter:
    def __init__(self, num_layers: int, timeout_s: float = 5.0,
                 on_finish: Optional[Callable[[int], None]] = None,
                 on_wait: Optional[Callable[[int, int, float, float], None]] = None):
        self.num_layers = num_layers
        self.timeout_s = timeout_s
        self.producer_index = -1
        self.consumer_index = -1
        self._batches: dict[int, _Batch] = {}
        self._lock = threading.Lock()
        self._on_finish = on_finish  # the loader's "stop writing batch i"
        self._on_wait = on_wait  # timeline: (index, layer, wait_start, wait_end)

    # ---- producer side (loader) --------------------------------------------------------

    def update_producer(self) -> int:
        with self._lock:
            self.producer_index += 1
            self._batches[self.producer_index] = _Batch(
                [threading.Event() for _ in range(self.num_layers)], [None] * self.num_layers)
            return self.producer_index

    def complete(self, index: int, layer: int, cuda_event=None) -> None:
        b = self._batches.get(index)
        if b is None:
            return
        b.cuda_events[layer] = cuda_event
        b.layers[layer].set()

    def progress(self, index: int) -> None:
        """Some of batch `index`'s bytes came in: a wait's timeout counts from now."""
        b = self._batches.get(index)
        if b is not None:
            b.progressed = time.perf_counter()

    def fail(self, index: int, error: BaseException) -> None:
        b = self._batches.get(index)
        if b is None:
            return
        if b.error is None:
            b.error = error
        for ev in b.layers:  # release every waiter; finish() reports the failure
            ev.set()

    def failed(self, index: int) -> bool:
        b = self._batches.get(index)
        return b is not None and b.error is not None

    # ---- consumer side (forward) -------------------------------------------------------

    def set_consumer(self, index: int) -> None:
        self.consumer_index = index

    def wait_until(self, layer: int) -> None:
        index = self.consumer_index
        b = self._batches.get(index)
        if b is None or layer >= self.num_layers:
            return
        ev = b.layers[layer]
        if ev.is_set() and layer in b.waits:  # the second accessor of the same layer
            self._stream_wait(b, layer)
            return
        t0 = time.perf_counter()
        while not ev.wait(max(0.0, max(t0, b.progressed) + self.timeout_s - time.perf_counter())):
            if time.perf_counter() - max(t0, b.progressed) >= self.timeout_s:
                self.fail(index, TimeoutError(f"layer {layer} not loaded: nothing came in for {self.timeout_s}s"))
                break
        t1 = time.perf_counter()
        b.waits.setdefault(layer, (t0, t1))
        if self._on_wait is not None:
            self._on_wait(index, layer, t0, t1)
        self._stream_wait(b, layer)

    @staticmethod
    def _stream_wait(b: _Batch, layer: int) -> None:
        ev = b.cuda_events[layer]
        if ev is not None and b.error is None:
            import torch

            torch.cuda.current_stream().wait_event(ev)

    def finish(self, index: int) -> bool:
        b = self._batches.get(index)
        if b is None:
            return True
        if self._on_finish is not None:
            self._on_finish(index)  # returns once the loader has stopped writing
        with self._lock:
            self._batches.pop(index, None)
        return b.error is None and all(ev.is_set() for ev in b.layers)

    def reset(self) -> None:
        with self._lock:
            indices = list(self._batches)
        for i in indices:
            self.fail(i, RuntimeError("reset"))
            self.finish(i)
        self.consumer_index = -1
