"""The rig every benchmark stands on: a local S3 server per run, real SGLang CPU KV pools,
CPU accounting (this process and the server's), CPU pinning and percentiles.

Contracts:
- `s3_server(dir, buckets, pin=...)` is a running SeaweedFS for the `with` block, stopped
  (and, with `pin`, pinned to CPU 0) by the rig; its data lives under `dir`.
- `CpuTimer(pid)(fn)` returns `(fn(), {"wall_s", "client_cpu_s", "server_cpu_s"})`.
- `make_host(shape, page_tokens, pages, layout)` is a real `MHATokenToKVPoolHost` holding
  at least `pages` pages of incompressible bytes, on the CPU (no GPU needed).
- `serve_model()`: from then on, objectcache's backends built in this process identify
  their model as a small stand-in checkpoint (there is no SGLang server to publish one).
"""

from __future__ import annotations

import json
import os
import random
import struct
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # SGLang's pools, with no GPU

import torch  # noqa: E402

from objectcache_dev.s3server import SeaweedFS  # noqa: E402

MiB = 1 << 20


# ---- statistics and CPU accounting ------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def server_cpu_s(pid: int) -> float:
    """CPU seconds a process has used: utime + stime (fields 14, 15 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuTimer:
    """Times a call: wall time, this process's CPU and the server process's CPU."""

    def __init__(self, srv_pid: int):
        self.pid = srv_pid

    def __call__(self, fn):
        c0, s0, t0 = time.process_time(), server_cpu_s(self.pid), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        return result, {"wall_s": wall, "client_cpu_s": time.process_time() - c0,
                        "server_cpu_s": server_cpu_s(self.pid) - s0}


# ---- CPU pinning ------------------------------------------------------------------------


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


# ---- the S3 server ----------------------------------------------------------------------


@contextmanager
def s3_server(data_dir: str, buckets: tuple[str, ...] = (), pin: bool = False, **opts):
    """A local SeaweedFS for the block; `pin`: on CPU 0 (see pin_client). `opts` go to
    SeaweedFS (e.g. debug_port)."""
    with SeaweedFS(str(data_dir), buckets=tuple(buckets), **opts) as srv:
        if pin:
            pin_server(srv.proc.pid)
        yield srv


# ---- SGLang's KV pools on the CPU -------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Per-rank KV shape. Default: Llama-3.1-8B at TP 1 (32 layers, 8 KV heads x 128, bf16),
    128 KiB of K+V per token: a 2-token page is 256 KiB, a 64-token page 8 MiB."""

    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"

    @property
    def token_bytes(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * getattr(torch, self.dtype).itemsize


def storage_config(extra: dict):
    """SGLang's HiCacheStorageConfig for rank 0 of 1, with `extra` as its extra_config."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=False,
        model_name="meta-llama/Llama-3.1-8B-Instruct", extra_config=dict(extra),
    )


def make_host(shape: Shape, page_tokens: int, pages: int, layout: str):
    """A real SGLang host pool with room for `pages` pages (and a one-page device pool)."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

    dtype = getattr(torch, shape.dtype)
    dev = MHATokenToKVPool(page_tokens, page_tokens, dtype, shape.kv_heads, shape.head_dim, shape.layers,
                           "cpu", False, start_layer=0, end_layer=shape.layers)
    info = dev.get_device_pool_infos()[0].buffer_info
    host = MHATokenToKVPoolHost(info, 1.0, 0, page_tokens, layout, pin_memory=False,
                                device_capacity_tokens=dev.size, start_layer=0, end_layer=shape.layers,
                                host_token_capacity=(pages + 1) * page_tokens)
    u8 = host.kv_buffer.view(torch.uint8)
    g = torch.Generator().manual_seed(0)
    for chunk in u8.view(-1).split(64 * MiB):  # bf16-like entropy, not compressible
        chunk.copy_(torch.randint(0, 256, chunk.shape, dtype=torch.uint8, generator=g))
    return host


@lru_cache(maxsize=None)
def serve_model() -> str:
    """objectcache's page-mode backend names its pages by the model SGLang serves (the
    ServerArgs SGLang publishes in a server process). A benchmark has no server, so this
    writes a small checkpoint (config.json and one safetensors file of seeded bytes) and
    makes it the served model, once per process. Returns its path."""
    from sglang_objectcache.sglang import rank

    path = tempfile.mkdtemp(prefix="bench-model-")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}, f)
    header = json.dumps({"w": {"dtype": "U8", "shape": [4096], "data_offsets": [0, 4096]}}).encode()
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + random.Random(0).randbytes(4096))
    args = SimpleNamespace(model_path=path, served_model_name=None, revision=None, load_format="auto",
                           dtype="auto", kv_cache_dtype="auto", quantization=None, json_model_override_args="{}",
                           quantization_param_path=None, lora_paths=None, tp_size=1, dcp_size=1,
                           disable_overlap_schedule=True)
    rank.current_server_args = lambda: args
    return path


def host_indices(first_page: int, n: int, page_tokens: int) -> torch.Tensor:
    """The token slots of pages first_page .. first_page + n - 1."""
    return torch.arange(first_page * page_tokens, (first_page + n) * page_tokens, dtype=torch.int64)


def page_hashes(n: int) -> list[str]:
    """n fresh page keys, shaped like SGLang's (64 hex digits)."""
    return [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(n)]


def check_pages(host, src_first: int, dst_first: int, n: int, P: int) -> None:
    """Raises unless pages dst_first.. hold the same bytes as pages src_first.."""
    from sglang_objectcache.hostpool import HostPages

    hp = HostPages(host)
    for i in range(n):
        for a, b in zip(hp.page_views((src_first + i) * P), hp.page_views((dst_first + i) * P)):
            if not torch.equal(a, b):
                raise AssertionError(f"page {i} differs after the read")


def zero_pages(host, first: int, n: int, P: int) -> None:
    from sglang_objectcache.hostpool import HostPages

    hp = HostPages(host)
    for i in range(n):
        for v in hp.page_views((first + i) * P):
            v.zero_()
