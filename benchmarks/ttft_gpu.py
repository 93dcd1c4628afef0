"""TTFT on a GPU against context length (4K..64K): recompute, DRAM hit, objectcache page-mode
and layerwise hits, side by side in one run.

Component level, not a served SGLang: SGLang's CUDA engine needs its sgl-kernel and
flashinfer wheels (hundreds of MiB), which cannot reach the lent GPU machine (no registry
there, 64 MiB per transfer). So the forward is a random-weight Llama-style model in plain
torch (benchmarks/paged_llama.py: bf16; fused QKV, RoPE, SDPA attention over K/V gathered
from a paged per-layer KV pool by slot, SwiGLU), and everything objectcache contributes is
the real thing: its LayerwiseLoader, LayerReadyCounter, HostTier, TransferScheduler, obstore transport and
Triton scatter kernel, reading sealed objects from a real SeaweedFS on the same machine.

Every prompt is a prefix of `ctx` tokens plus `--suffix` new tokens; TTFT runs from the
request to the first token on the host (argmax of the last position, synchronized):

    recompute        every token computed (flash attention, causal)
    dram             the prefix's KV in pinned host memory, loaded layer by layer on a copy
                     stream (H2D + scatter per layer, one CUDA event each) while the forward
                     runs and waits per layer: what SGLang's HiCache L2 hit does
    page             objectcache page mode: every page object GET to pinned host memory and
                     verified, then loaded, then computed (SGLang's L3 prefetch path)
    layerwise        objectcache layerwise mode: ranged GETs of layer l of every page while
                     layers < l compute; the forward waits on the counter per layer. One
                     layer per GET (`layers_per_get` 1), the paper's pipeline; objectcache's
                     default (0, auto: GETs of >= 1 MiB) reads, after layer 0 alone, 8 of the
                     1B shape's 128 KiB layers per GET and 4 of the 8B shape's 256 KiB ones
    layerwise_g4     the same, 4 layers per ranged GET (`layers_per_get`; layer 0 alone)
    layerwise_gall   `layers_per_get` = layers: layer 0 alone, then the rest of the page in
                     one GET (2 requests per page; before layer 0 was read alone, as in the
                     committed ttft_gpu*.json, 1), each layer scattered and computed as soon
                     as its page objects are in
    layerwise_host   layerwise mode, prefix in objectcache's own host tier (repeat hit)
    *_thread         the same with `fetch: thread`: GETs, copies and hashes on a thread pool
                     of this process instead of the fetch worker process (the default)

Also measured in the same run: the store's raw read rate (every object of the prefix, one
parallel batch, no GPU) and pinned H2D bandwidth, the two ceilings of the hit modes. All
hit modes load the same bytes, so their first-token logits must equal dram's bit for bit
(checked; `parity` in the JSON).

    python -m benchmarks.ttft_gpu --contexts 4096 16384 32768 65536 --reps 3

Writes benchmarks/results/ttft_gpu.json (or `--out`) and its plot beside it, and the
layerwise mode's per-layer timelines as ttft_gpu_trace.json (Chrome trace).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import plot
from benchmarks.paged_llama import SHAPES, Model, on_stream, sync
from benchmarks.rig import s3_server
from benchmarks.schema import RESULTS, write_result
from sglang_objectcache import kernels, objformat
from sglang_objectcache.config import ObjectCacheConfig, SchedulerConfig
from sglang_objectcache.identity import ModelIdentity
from sglang_objectcache.keys import KeyScheme, RankIdentity, make_namespace
from sglang_objectcache.layerwise.counter import LayerReadyCounter
from sglang_objectcache.layerwise.fetch import ProcessFetch
from sglang_objectcache.layerwise.hosttier import HostTier
from sglang_objectcache.layerwise.loader import LayerwiseLoader
from sglang_objectcache.layerwise.settings import LoaderParts, LoaderSettings
from sglang_objectcache.layerwise.timeline import Timeline, overlapped_layers
from sglang_objectcache.objformat import PageGeometry
from sglang_objectcache.stats import Stats
from sglang_objectcache.store import open_store
from sglang_objectcache.transfers import TransferScheduler

MODES = ("recompute", "dram", "page", "layerwise", "layerwise_thread", "layerwise_g4", "layerwise_gall",
         "layerwise_host", "layerwise_host_thread")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384, 32768, 65536])
    p.add_argument("--suffix", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--model", choices=sorted(SHAPES), default="1b")
    p.add_argument("--page", type=int, default=64)
    p.add_argument("--io-threads", type=int, default=16)
    p.add_argument("--window", type=int, default=4, help="layerwise window_layers")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default=None, help="SeaweedFS data (default: a temp dir)")
    p.add_argument("--out", default=str(RESULTS / "ttft_gpu.json"))
    return p


class Bench:
    def __init__(self, a, store, cfg, dev):
        self.a, self.store, self.dev = a, store, dev
        s = SHAPES[a.model]
        self.s = s
        longest = max(a.contexts)
        self.pages_total = (longest + a.suffix) // a.page + 2
        self.model = Model(s, longest + a.suffix, self.pages_total * a.page * 2, dev)
        row = s.kv_heads * s.head_dim * 2
        self.g = PageGeometry("mha", s.layers, a.page, (row, row), "bfloat16")
        self.keys = KeyScheme("oc", make_namespace(cfg, RankIdentity(
            ModelIdentity(f"bench-{a.model}", "bench"), self.g, is_mla=False)))
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, s.vocab, (longest + a.suffix,), generator=gen).to(dev)
        # hit modes place the prefix on random pages of the upper half (SGLang's allocator)
        perm = torch.randperm(self.pages_total, generator=gen) + self.pages_total
        self.hit_pages = perm.to(dev)
        self.hashes = [f"p{i:063d}" for i in range(longest // a.page)]
        self.names = [self.keys.object_key(h) for h in self.hashes]

    def slots(self, pages):
        return (pages[:, None] * self.a.page + torch.arange(self.a.page, device=self.dev)).reshape(-1)

    def prepare(self) -> dict:
        """Compute the longest prefix once; its first ctx tokens are every shorter prefix.
        Seal it into page objects in the bucket, and keep it in pinned host memory."""
        a, g, longest = self.a, self.g, max(self.a.contexts)
        n = longest // a.page
        dense = torch.arange(longest, device=self.dev)
        self.model.forward(self.ids[:longest], 0, dense[:0], dense)
        payload = kernels.gather_all_layers(self.model.pools(), dense, g)  # [n, payload] on GPU
        host = torch.empty((g.num_layers, n, g.layer_bytes), dtype=torch.uint8,
                           pin_memory=self.dev.type == "cuda")
        for l in range(g.num_layers):
            host[l].copy_(payload[:, l * g.layer_bytes:(l + 1) * g.layer_bytes])
        self.dram = host
        t0, written = time.perf_counter(), 0
        for k in range(0, n, 32):
            rows = payload[k:k + 32].cpu()
            items = [(self.names[k + j], objformat.sealed(g, self.keys.content_digest(self.hashes[k + j]), row.numpy()))
                     for j, row in enumerate(rows)]
            res = self.store.put_many(items, if_absent=False)
            assert all(r is True for r in res), res
            written += len(items) * g.object_bytes
        put_s = time.perf_counter() - t0
        del payload
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        return {"objects": n, "object_bytes": g.object_bytes, "put_s": put_s,
                "put_gbps": written / put_s / 1e9}

    def ceilings(self, ctx: int) -> dict:
        """The store's raw read rate for this prefix and the pinned H2D rate, same bytes."""
        n, g = ctx // self.a.page, self.g
        t0 = time.perf_counter()
        res = self.store.get_ranges([(name, 0, g.object_bytes) for name in self.names[:n]])
        store_s = time.perf_counter() - t0
        assert all(r is not None and not isinstance(r, Exception) for r in res)
        dev = torch.empty((n, g.layer_bytes), dtype=torch.uint8, device=self.dev)
        sync(self.dev)
        t0 = time.perf_counter()
        for l in range(g.num_layers):
            dev.copy_(self.dram[l, :n], non_blocking=True)
        sync(self.dev)
        h2d_s = time.perf_counter() - t0
        nbytes = n * g.object_bytes
        return {"store_read_s": store_s, "store_gbps": nbytes / store_s / 1e9,
                "h2d_s": h2d_s, "h2d_gbps": n * g.payload_bytes / h2d_s / 1e9, "bytes": nbytes}

    # ---- one request per mode; returns (seconds, logits) ---------------------------------

    def run(self, mode: str, ctx: int, loaders: dict):
        a = self.a
        n = ctx // a.page
        ids = self.ids[:ctx + a.suffix]
        if mode == "recompute":
            dense = torch.arange(ctx + a.suffix, device=self.dev)
            sync(self.dev)
            t0 = time.perf_counter()
            logits = self.model.forward(ids, 0, dense[:0], dense)
            logits.argmax().item()
            return time.perf_counter() - t0, logits
        prefix = self.slots(self.hit_pages[:n])
        new = self.slots(self.hit_pages[n:n + -(-a.suffix // a.page)])[:a.suffix]
        sync(self.dev)
        t0 = time.perf_counter()
        if mode == "dram":
            logits = self.load_dram(ids[ctx:], ctx, prefix, new, self.dram[:, :n])
        elif mode == "page":
            logits = self.load_pages(ids[ctx:], ctx, prefix, new, n)
        else:
            loader, counter, _ = loaders[mode]
            idx = counter.update_producer()
            self.last_index = idx
            loader.load(idx, ["r"], self.hashes[:n], self.names[:n], prefix)
            counter.set_consumer(idx)
            logits = self.model.forward(ids[ctx:], ctx, prefix, new, wait=counter.wait_until)
            ok = counter.finish(idx)
            counter.set_consumer(-1)
            if not ok:
                raise RuntimeError(f"{mode} load failed at ctx {ctx}")
        logits.argmax().item()
        return time.perf_counter() - t0, logits

    def load_dram(self, ids, ctx, prefix, new, host_layers):
        """Layer l: pinned host -> device staging -> scatter on the copy stream, event l."""
        stream, events = self.copy_stream, []
        with on_stream(stream):
            for l in range(self.g.num_layers):
                dev = host_layers[l].to(self.dev, non_blocking=True)
                kernels.scatter_layer(dev, self.model.pools()[l], prefix, self.g)
                if stream is not None:
                    events.append(torch.cuda.Event())
                    events[-1].record(stream)
        wait = (lambda l: torch.cuda.current_stream().wait_event(events[l])) if events else None
        return self.model.forward(ids, ctx, prefix, new, wait=wait)

    def load_pages(self, ids, ctx, prefix, new, n):
        g = self.g
        buf = self.page_buf[:n]

        def land(i, r):  # on the transport's thread, as each page lands
            if r is None or isinstance(r, Exception):
                raise RuntimeError(f"page mode: {self.names[i]}: {r!r}")
            objformat.decode(r, g, self.keys.content_digest(self.hashes[i]))  # every checksum
            buf[i].numpy()[:] = memoryview(r).cast("B")

        self.store.get_each(self.names[:n], land)
        with on_stream(self.copy_stream):
            dev = buf.to(self.dev, non_blocking=True)
            kernels.scatter_all_layers(dev[:, g.header_bytes:], self.model.pools(), prefix, g)
        if self.copy_stream is not None:
            torch.cuda.current_stream().wait_stream(self.copy_stream)
        return self.model.forward(ids, ctx, prefix, new)


def make_loader(bench, store, cfg, *, per_get: int, host_mb: int, stats, fetch: str = "process"):
    timeline = Timeline(max_batches=64)
    counter = LayerReadyCounter(bench.g.num_layers, 30.0, on_finish=lambda i: loader.stop(i),
                                on_wait=timeline.wait)
    a = bench.a
    parts = LoaderParts(store=store, content_digest=bench.keys.content_digest, counter=counter,
                        scheduler=TransferScheduler(SchedulerConfig()), tier=HostTier(host_mb << 20),
                        timeline=timeline, stats=stats,
                        fetch=ProcessFetch(cfg, bench.g, a.io_threads, pinned=bench.dev.type == "cuda")
                        if fetch == "process" else None)
    settings = LoaderSettings(window_layers=a.window, layers_per_get=per_get, io_threads=a.io_threads)
    loader = LayerwiseLoader(bench.g, bench.model.pools(), parts, settings)
    return loader, counter, timeline


def waits(batch: dict) -> dict:
    """How long the forward waited for layers, and for which ones the fetch overlapped compute."""
    recs = [r for r in batch["layers"] if r.get("wait_end") is not None]
    return {"wait_s": sum(r["wait_end"] - r["wait_start"] for r in recs),
            "first_layer_wait_s": recs[0]["wait_end"] - recs[0]["wait_start"] if recs else None,
            "overlapped_layers": len(overlapped_layers(batch)), "layers": len(batch["layers"])}


def measure(a, b: "Bench", store, cfg, out: dict) -> None:
    """Every mode at every context, `--reps` times after a warm-up; rows into `out`."""
    stats = Stats()
    host_mb = (max(a.contexts) // a.page) * b.g.object_bytes // (1 << 20) + 64
    kinds = {"layerwise": dict(per_get=1, host_mb=0, stats=stats),
             "layerwise_thread": dict(per_get=1, host_mb=0, stats=Stats(), fetch="thread"),
             "layerwise_g4": dict(per_get=4, host_mb=0, stats=Stats()),
             "layerwise_gall": dict(per_get=b.g.num_layers, host_mb=0, stats=Stats()),
             "layerwise_host": dict(per_get=1, host_mb=host_mb, stats=Stats()),
             "layerwise_host_thread": dict(per_get=1, host_mb=host_mb, stats=Stats(), fetch="thread")}
    loaders = {m: make_loader(b, store, cfg, **kw) for m, kw in kinds.items() if m in a.modes}
    for ctx in a.contexts:
        out["ceilings"][str(ctx)] = c = b.ceilings(ctx)
        print(f"ctx {ctx}: store {c['store_gbps']:.2f} GB/s, H2D {c['h2d_gbps']:.1f} GB/s", flush=True)
        ref = None
        for mode in a.modes:
            b.run(mode, ctx, loaders)  # warm-up (and fills the host tier)
            times = []
            for _ in range(a.reps):
                dt, logits = b.run(mode, ctx, loaders)
                times.append(dt)
            if mode == "dram":
                ref = logits
            elif mode != "recompute" and ref is not None:
                out["parity"][f"{mode}@{ctx}"] = bool(torch.equal(logits, ref))
            row = {"mode": mode, "ctx": ctx, "ttft_s": statistics.median(times), "all_s": times}
            if mode in loaders:  # the last rep's per-layer timeline
                row.update(waits(loaders[mode][2].batch(b.last_index)))
            out["results"].append(row)
            print(f"  {mode:15s} {row['ttft_s'] * 1e3:9.1f} ms", flush=True)
    out["stats"] = stats.snapshot()
    out["ratios"] = ratios(out["results"])
    for lo, _, _ in loaders.values():
        lo.close()
    trace = Path(a.out).with_name(Path(a.out).stem + "_trace.json")
    if "layerwise" in loaders:
        trace.write_text(json.dumps(loaders["layerwise"][2].chrome_trace()))


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks.ttft_gpu needs a CUDA GPU (the CPU benchmark is benchmarks.ttft)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    data = a.data_dir or tempfile.mkdtemp(prefix="ttft-gpu-")
    try:
        with s3_server(Path(data) / "sw", ("ttftgpu",)) as srv:
            cfg = ObjectCacheConfig.from_dict(srv.config("ttftgpu", transport="obstore"))
            store = open_store(cfg)
            out = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
                   "model": a.model, "shape": SHAPES[a.model].__dict__,
                   "page": a.page, "suffix": a.suffix, "reps": a.reps, "io_threads": a.io_threads,
                   "window_layers": a.window, "transport": store.name, "results": [], "ceilings": {},
                   "parity": {}}
            try:
                b = Bench(a, store, cfg, dev)
                b.copy_stream = torch.cuda.Stream() if dev.type == "cuda" else None
                b.page_buf = torch.empty((max(a.contexts) // a.page, b.g.object_bytes), dtype=torch.uint8,
                                         pin_memory=dev.type == "cuda")
                out["kv_bytes_per_token"] = b.g.payload_bytes // a.page
                out["prepare"] = prep = b.prepare()
                print(f"prepared {prep['objects']} objects of {prep['object_bytes'] >> 10} KiB in "
                      f"{prep['put_s']:.1f}s", flush=True)
                measure(a, b, store, cfg, out)
            finally:
                store.close()
    finally:
        if not a.data_dir:
            shutil.rmtree(data, ignore_errors=True)
    medians = {r["mode"] + "@" + str(r["ctx"]): r["ttft_s"] for r in out["results"]}
    write_result(a.out, runs=a.reps, medians=medians, extra=out, plot=plot_spec(out))
    for r in out["ratios"]:
        print(json.dumps(r))
    print("parity with dram (bit-equal logits):", out["parity"])


def ratios(results) -> list[dict]:
    by = {(r["mode"], r["ctx"]): r["ttft_s"] for r in results}
    rows = []
    for ctx in sorted({r["ctx"] for r in results}):
        row = {"ctx": ctx}
        for mode in MODES:
            if (mode, ctx) in by and ("dram", ctx) in by and mode != "dram":
                row[f"{mode}/dram"] = round(by[(mode, ctx)] / by[("dram", ctx)], 3)
            if (mode, ctx) in by and ("recompute", ctx) in by and mode != "recompute":
                row[f"{mode}/recompute"] = round(by[(mode, ctx)] / by[("recompute", ctx)], 3)
        rows.append(row)
    return rows


def plot_spec(out: dict) -> dict:
    """The result's `plot` field: median TTFT per mode against the context length."""
    lines = []
    for mode in MODES:
        pts = sorted((r["ctx"], r["ttft_s"] * 1e3) for r in out["results"] if r["mode"] == mode)
        if pts:
            lines.append((mode, *zip(*pts), "o"))
    return plot.loglog(lines, "context tokens (prefix; + %d new)" % out["suffix"], "TTFT (ms)",
                       f"{out['device']}, {out['model']}-shaped random model, SeaweedFS on the same host", dpi=110)


if __name__ == "__main__":
    main()
