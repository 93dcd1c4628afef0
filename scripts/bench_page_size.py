"""What SGLang's page size costs on object storage: one prefix, read back at each page size.

One object per page, so the page size sets how many S3 requests a prefix costs. This loads
the same 4096-token prefix (KV of an 8-layer, 8-KV-head, head-dim-128, bf16 model: 32 KiB
per token) through objectcache's real `batch_set_v1`/`batch_get_v1` on SGLang's real host
pool, in SGLang's 128-page batches, against a local SeaweedFS, at page sizes 1 to 256.

    .venv/bin/python scripts/bench_page_size.py

Writes benchmarks/results/page_size.json (with the command) and page_size.png.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from objectcache_dev.s3server import SeaweedFS  # noqa: E402

TOKENS = 4096
BATCH = 128  # SGLang's STORAGE_BATCH_SIZE


def pools(page: int):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

    dev = MHATokenToKVPool(TOKENS + 2 * page, page, torch.bfloat16, 8, 128, 8, "cpu", False,
                           start_layer=0, end_layer=8)
    info = dev.get_device_pool_infos()[0].buffer_info
    return MHATokenToKVPoolHost(info, 1.0, 0, page, "layer_first", pin_memory=False,
                                device_capacity_tokens=dev.size, start_layer=0, end_layer=8)


def main() -> None:
    from test_backend import storage_config

    from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage

    rows = []
    with tempfile.TemporaryDirectory(prefix="page-size-") as tmp, SeaweedFS(tmp, buckets=("page-size",)) as s3:
        for page in (1, 4, 16, 64, 256):
            host = pools(page)
            host.kv_buffer.view(torch.uint8).copy_(
                torch.randint(0, 256, host.kv_buffer.view(torch.uint8).shape, dtype=torch.uint8))
            cfg = s3.config("page-size", model_id=f"bench-page-{page}")
            w = ObjectCacheStorage(storage_config(cfg), host)
            n = TOKENS // page
            keys = [f"p{page}-{i:060d}" for i in range(n)]
            slots = torch.arange(n * page, dtype=torch.int64)
            t0 = time.perf_counter()
            for k in range(0, n, BATCH):
                assert all(w.batch_set_v1(keys[k:k + BATCH], slots[k * page:(k + BATCH) * page]))
            write_s = time.perf_counter() - t0
            reads = []
            for _ in range(3):
                r = ObjectCacheStorage(storage_config(cfg), host)  # nothing cached in memory
                t0 = time.perf_counter()
                for k in range(0, n, BATCH):
                    assert r.batch_exists(keys[k:k + BATCH]) == len(keys[k:k + BATCH])
                    assert all(r.batch_get_v1(keys[k:k + BATCH], slots[k * page:(k + BATCH) * page]))
                reads.append(time.perf_counter() - t0)
                r.close()
            w.close()
            read_s = statistics.median(reads)
            obj_kib = w.pages.geometry.object_bytes / 1024
            row = {"page_size": page, "objects": n, "object_kib": obj_kib, "write_s": write_s, "read_s": read_s,
                   "read_tokens_per_s": TOKENS / read_s, "read_mib_per_s": n * obj_kib / 1024 / read_s,
                   "write_mib_per_s": n * obj_kib / 1024 / write_s}
            rows.append(row)
            print(f"page {page:4d}: {n:5d} objects of {obj_kib:8.1f} KiB  read {read_s:6.2f} s "
                  f"({row['read_mib_per_s']:6.1f} MiB/s)  write {write_s:6.2f} s", flush=True)
            del host
    out = {"command": " ".join(["python", *sys.argv]), "tokens": TOKENS, "kv_bytes_per_token": 32768,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows}
    path = ROOT / "benchmarks/results/page_size.json"
    path.write_text(json.dumps(out, indent=1))
    plot(out, str(path)[:-5] + ".png")


def plot(out: dict, path: str) -> None:
    from benchutil import loglog_plot

    rows = out["rows"]
    xs = [r["page_size"] for r in rows]
    loglog_plot(path, [("read (exists + get)", xs, [r["read_s"] for r in rows], "o"),
                       ("write", xs, [r["write_s"] for r in rows], "s")],
                "SGLang --page-size (tokens per object)", f"seconds for a {out['tokens']}-token prefix",
                "One object per page: the page size sets the request count", size=(6.5, 4))


if __name__ == "__main__":
    main()
