"""A staged layer into the device KV pool: one kernel launch per layer. On GPU the H2D
copy and the scatter run on a side stream, and the caller gets a CUDA event that marks
when the layer is in place (the forward waits on it, never the CPU)."""

from __future__ import annotations

from typing import Optional

import torch

from sglang_objectcache import kernels
from sglang_objectcache.layerwise.staging import StagingPool
from sglang_objectcache.objformat import PageGeometry


class DeviceScatter:
    def __init__(self, device_layers, g: PageGeometry, staging: StagingPool, backend: str = "auto"):
        """`device_layers`: [(k_buffer[l], v_buffer[l])] or [(kv_buffer[l],)]; `backend`: the
        kernels' (`kernels.BACKENDS`)."""
        self.backend = kernels.resolve_backend(device_layers[0][0].device, backend)
        self.layers = device_layers
        self.g = g
        self.staging = staging
        self.device = device_layers[0][0].device
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def wait(self, ready_event) -> None:
        """Later scatters start after `ready_event` (a batch's slots are free to write)."""
        if ready_event is not None:
            self.copy_stream.wait_event(ready_event)

    def scatter(self, layer: int, staging: torch.Tensor, slots: torch.Tensor) -> Optional[torch.cuda.Event]:
        """Scatter `staging` (one row per page) into layer `layer` at `slots`; the staging
        goes back to the pool once read. Returns the copy's CUDA event, or None (CPU: done)."""
        pools = self.layers[layer]
        if not self.cuda:
            kernels.scatter_layer(staging, pools, slots, self.g, backend=self.backend)
            self.staging.give_back([staging])
            return None
        with torch.cuda.stream(self.copy_stream):
            dev = staging.to(self.device, non_blocking=True)
            kernels.scatter_layer(dev, pools, slots, self.g, backend=self.backend)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
            # The staging buffer is reused only after this copy has read it.
            dev.record_stream(self.copy_stream)
        self.staging.give_back_after(staging, event)
        return event
