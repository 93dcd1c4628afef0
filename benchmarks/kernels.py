"""Bandwidth of the KV scatter/gather kernels against a plain copy of the same bytes.

For 1..1024 pages (powers of two) of a Llama-8B-like rank (8 KV heads x 128 x bf16, page
64: 128 KiB per component per layer per page) it times, side by side in one run:
- copy: `dst.copy_(src)` of the same number of contiguous bytes (device-to-device on GPU);
- scatter_layer / gather_layer: one layer of N pages, slots in whole pages in random page
  order (SGLang's paged allocator) and, as `*_random`, single tokens in random order;
- scatter_all_layers / gather_all_layers: every layer of N pages (`--layers`), one call.
GB/s counts the bytes of KV moved once (what the copy moves), and `ratio` = op GB/s /
copy GB/s at the same size. Each op is checked byte-exact against the torch backend first.

CPU tensors run the torch fallback (what SGLang's CPU engine uses); CUDA runs the Triton
kernels, timed with CUDA events around CUDA-graph replays (GPU time, not Python launch
time, which is reported apart as `eager_us`), L2 flushed before each rep. `--sweep`
(CUDA) also times kernel tunings. Writes benchmarks/results/kernels_{cpu,cuda}.json (or
`--out`) and its plot beside it.

    .venv/bin/python -m benchmarks.kernels                # CPU, or CUDA when present
    .venv/bin/python -m benchmarks.kernels --device cuda --sweep
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from benchmarks.schema import RESULTS, write_result
from sglang_objectcache import kernels
from sglang_objectcache.objformat import PageGeometry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-pages", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=64, help="page size")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--layers", type=int, default=4, help="layers of the all-layers ops")
    p.add_argument("--min-reps", type=int, default=10)
    p.add_argument("--budget", type=float, default=1.0, help="seconds per measurement, at least")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sweep", action="store_true", help="CUDA: also time kernel tunings")
    p.add_argument("--out", default=None, help="JSON path; the plot goes beside it")
    return p


class Clock:
    """Seconds of one call of an op and of its copy baseline, measured in alternation
    (op, copy, op, copy, ...) so both see the same machine, caches flushed before each
    call. Returns (best, median) of each: on a shared machine the best of the reps is the
    stable number, the median shows what contention did."""

    def __init__(self, device: torch.device, min_reps: int, budget: float):
        self.device, self.min_reps, self.budget = device, min_reps, budget
        flush_mib = 256 if device.type == "cuda" else 64  # > H100 L2 (50 MB), > CPU LLC
        self.scratch = torch.zeros(flush_mib << 20, dtype=torch.uint8, device=device)
        self.graph_failures: list[str] = []

    def pair(self, op, copy) -> tuple[tuple[float, float], tuple[float, float]]:
        runs = [self._runner(op), self._runner(copy)]
        times: list[list[float]] = [[], []]
        while len(times[0]) < self.min_reps or (sum(times[0]) + sum(times[1]) < self.budget
                                                and len(times[0]) < 200):
            for run, ts in zip(runs, times):
                self.scratch.fill_(1)
                ts.append(run())
        return tuple((min(ts), statistics.median(ts)) for ts in times)

    def _runner(self, fn):
        fn()  # warm up: compile, allocate, fill address tables
        if self.device.type != "cuda":
            def run():
                t0 = time.perf_counter()
                fn()
                return time.perf_counter() - t0
            return run
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            launch = graph.replay
        except RuntimeError as e:  # time plain launches rather than nothing
            self.graph_failures.append(repr(e))
            torch.cuda.synchronize()
            launch = fn

        def run():
            start.record()
            launch()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def eager_us(self, fn, calls: int = 50) -> float:
        """Wall time per call, back to back: on GPU the Python launch cost shows here."""
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls * 1e6


class Setup:
    """Pools, staging and copy buffers for the largest size; smaller sizes use slices."""

    def __init__(self, args, device: torch.device):
        dtype = getattr(torch, args.dtype)
        row = args.heads * args.head_dim * dtype.itemsize
        self.layer_geometry = PageGeometry("mha", 1, args.tokens, (row, row), args.dtype)
        self.geometry = PageGeometry("mha", args.layers, args.tokens, (row, row), args.dtype)
        g, n = self.geometry, args.max_pages
        self.num_slots = n * g.tokens
        gen = torch.Generator().manual_seed(0)
        shape = (self.num_slots, args.heads, args.head_dim)
        self.pools = [[self._random(shape, dtype, device, gen) for _ in range(2)]
                      for _ in range(args.layers)]
        self.staging = torch.empty((n, g.payload_bytes), dtype=torch.uint8, device=device)
        self.layer_staging = torch.empty((n, g.layer_bytes), dtype=torch.uint8, device=device)
        self.copy_src = torch.zeros(n * g.payload_bytes, dtype=torch.uint8, device=device)
        self.copy_dst = torch.zeros_like(self.copy_src)  # touched now: no page faults timed
        self.page_order = torch.randperm(n, generator=gen)
        self.token_order = torch.randperm(self.num_slots, generator=gen)
        self.device = device

    @staticmethod
    def _random(shape, dtype, device, gen):
        t = torch.empty(shape, dtype=dtype)
        t.view(torch.uint8).copy_(torch.randint(0, 256, t.view(torch.uint8).shape,
                                                dtype=torch.uint8, generator=gen))
        return t.to(device)

    def slots(self, pages: int, pattern: str) -> torch.Tensor:
        t = self.geometry.tokens
        if pattern == "paged":
            s = (self.page_order[:pages, None] * t + torch.arange(t)).reshape(-1)
        else:
            s = self.token_order[: pages * t]
        return s.to(self.device)

    def ops(self, pages: int):
        """(name, bytes moved, op, check) for every op at this size. `check` runs the op
        once on fresh bytes and compares with the torch backend."""
        gl, g = self.layer_geometry, self.geometry
        layer0 = self.pools[0]
        for pattern, suffix in (("paged", ""), ("random", "_random")):
            slots, st = self.slots(pages, pattern), self.layer_staging[:pages]
            yield (f"scatter_layer{suffix}", pages * gl.layer_bytes,
                   lambda st=st, s=slots: kernels.scatter_layer(st, layer0, s, gl),
                   lambda st=st, s=slots: self._check(st, [layer0], s, gl, scatter=True))
            yield (f"gather_layer{suffix}", pages * gl.layer_bytes,
                   lambda st=st, s=slots: kernels.gather_layer(layer0, s, gl, out=st),
                   lambda st=st, s=slots: self._check(st, [layer0], s, gl, scatter=False))
        slots, st = self.slots(pages, "paged"), self.staging[:pages]
        yield ("scatter_all_layers", pages * g.payload_bytes,
               lambda: kernels.scatter_all_layers(st, self.pools, slots, g),
               lambda: self._check(st, self.pools, slots, g, scatter=True))
        yield ("gather_all_layers", pages * g.payload_bytes,
               lambda: kernels.gather_all_layers(self.pools, slots, g, out=st),
               lambda: self._check(st, self.pools, slots, g, scatter=False))

    def copy(self, nbytes: int):
        src, dst = self.copy_src[:nbytes], self.copy_dst[:nbytes]
        return lambda: dst.copy_(src)

    @staticmethod
    def _check(staging, pools, slots, g, scatter: bool) -> None:
        """Run the op on fresh bytes; the torch backend must read the same bytes back."""
        if scatter:
            staging.random_(0, 256)
            if len(pools) > 1:
                kernels.scatter_all_layers(staging, pools, slots, g)
            else:
                kernels.scatter_layer(staging, pools[0], slots, g)
        else:
            staging.fill_(0xA5)
            if len(pools) > 1:
                kernels.gather_all_layers(pools, slots, g, out=staging)
            else:
                kernels.gather_layer(pools[0], slots, g, out=staging)
        if len(pools) > 1:
            want = kernels.gather_all_layers(pools, slots, g, backend="torch")
        else:
            want = kernels.gather_layer(pools[0], slots, g, backend="torch")
        assert torch.equal(staging, want), "the op and the torch backend disagree"


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        env["cpu"] = platform.processor()
    if device.type == "cuda":
        import triton

        env["gpu"] = torch.cuda.get_device_name(device)
        env["triton"] = triton.__version__
    return env


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup, clock = Setup(args, device), Clock(device, args.min_reps, args.budget)
    backend = kernels.resolve_backend(device)
    load_start = os.getloadavg()
    sizes = [1 << i for i in range(args.max_pages.bit_length()) if 1 << i <= args.max_pages]
    rows = []
    for pages in sizes:
        for name, nbytes, fn, check in setup.ops(pages):
            check()
            (sec, sec_med), (copy, copy_med) = clock.pair(fn, setup.copy(nbytes))
            row = {"op": name, "pages": pages, "bytes": nbytes, "seconds": sec,
                   "copy_seconds": copy, "gbps": nbytes / sec / 1e9,
                   "copy_gbps": nbytes / copy / 1e9, "ratio": copy / sec,
                   "seconds_median": sec_med, "copy_seconds_median": copy_med,
                   "ratio_median": copy_med / sec_med}
            if device.type == "cuda":
                row["eager_us"] = clock.eager_us(fn)
                row["copy_eager_us"] = clock.eager_us(setup.copy(nbytes))
            rows.append(row)
            print(f"{name:22s} {pages:5d} pages {nbytes / 2**20:9.2f} MiB  {row['gbps']:8.2f} GB/s"
                  f"  copy {row['copy_gbps']:8.2f} GB/s  ratio {row['ratio']:.2f}", flush=True)
    g = setup.geometry
    return {
        "device": str(device), "backend": backend, "environment": environment(device),
        "geometry": {"kind": g.kind, "tokens": g.tokens, "row_bytes": list(g.row_bytes),
                     "dtype": g.dtype, "layers_all_layers_ops": g.num_layers,
                     "layer_bytes_per_page": g.layer_bytes},
        "timing": ("CUDA events around CUDA-graph replay" if device.type == "cuda"
                   else "perf_counter") + ", caches flushed, op and copy alternated; seconds/"
                  "gbps/ratio from the best rep, *_median from the median rep",
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "results": rows,
        "sweep": sweep(setup, clock, sizes) if args.sweep else None,
        "graph_capture_failures": clock.graph_failures[:3],
    }


def sweep(setup: Setup, clock: Clock, sizes: list[int]) -> list[dict]:
    """Time the Triton kernel under other tunings (per-layer ops, paged slots). Meant for
    CUDA; on CPU it runs the interpreter (TRITON_INTERPRET=1), which only checks it runs."""
    from sglang_objectcache.kernels import layout, triton_kv

    g, out = setup.layer_geometry, []
    rows = [layout.check_pools(setup.pools[0], g)]
    for pages in sorted({p for p in sizes if p >= 64 or p == sizes[-1]} & {64, sizes[-1]}):
        slots, st = setup.slots(pages, "paged"), setup.layer_staging[:pages]
        for tile in (4096, 8192, 16384, 32768, 65536):
            for warps in (2, 4, 8):
                for chunk in (1024, 4096):
                    tune = triton_kv.Tuning(tile, chunk, warps, min_programs=1)
                    for gather in (False, True):
                        (sec, _), (copy, _) = clock.pair(
                            lambda: triton_kv.move(st, rows, slots, g, gather, tune),
                            setup.copy(pages * g.layer_bytes))
                        out.append({"pages": pages, "gather": gather, "tile_bytes": tile,
                                    "num_warps": warps, "max_chunk_bytes": chunk,
                                    "ratio": copy / sec,
                                    "gbps": pages * g.layer_bytes / sec / 1e9})
        best = max((r for r in out if r["pages"] == pages), key=lambda r: r["ratio"])
        print(f"sweep {pages} pages: best {best}", flush=True)
    return out


def draw(fig, result: dict) -> None:
    """The `kernels` plot kind (drawn by benchmarks.plot): GB/s, then op / copy, per size."""
    rows = result["results"]
    top, bottom = fig.subplots(2, 1, sharex=True)
    ops = list(dict.fromkeys(r["op"] for r in rows))
    copy = {r["pages"]: r["copy_gbps"] for r in rows if r["op"] == "scatter_layer"}
    top.plot(list(copy), list(copy.values()), "k-", lw=2, label="copy (same bytes, one layer)")
    for op in ops:
        rs = [r for r in rows if r["op"] == op]
        style = "--" if op.endswith("_random") else "-"
        top.plot([r["pages"] for r in rs], [r["gbps"] for r in rs], style, marker="o", ms=3,
                 label=op)
        bottom.plot([r["pages"] for r in rs], [r["ratio"] for r in rs], style, marker="o", ms=3,
                    label=op)
    bottom.axhline(0.8, color="red", lw=1, ls=":", label="target 0.8 (GPU, >= 64 pages)")
    top.set_ylabel("GB/s")
    top.set_yscale("log")
    bottom.set_ylabel("op / copy bandwidth")
    geo = result["geometry"]
    bottom.set_xlabel(f"pages ({geo['tokens']} tokens, {geo['layer_bytes_per_page'] >> 10} KiB "
                      f"per layer per page; all-layers ops: {geo['layers_all_layers_ops']} layers)")
    bottom.set_xscale("log", base=2)
    env = result["environment"]
    where = env.get("gpu") or f"{env.get('cpu')}, {env['cpu_threads']} threads"
    top.set_title(f"KV scatter/gather, {result['backend']} backend on {result['device']} "
                  f"({where})\n"
                  f"best of reps; load average {result['load_average']['start'][0]:.1f} at start",
                  fontsize=10)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)


PLOT = {"kind": "kernels", "size": [9, 8], "dpi": 110}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"kernels_{kind}.json"
    largest = max(r["pages"] for r in result["results"])
    medians = {r["op"]: r["ratio_median"] for r in result["results"] if r["pages"] == largest}
    path = write_result(out, runs=len(result["results"]), medians={"ratio_at_max_pages": medians},
                        extra=result, plot=PLOT)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
