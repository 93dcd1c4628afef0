"""What SGLang's page size costs on object storage: one prefix, read back at each page size.

One object per page, so the page size sets how many S3 requests a prefix costs. This loads
the same 4096-token prefix (KV of an 8-layer, 8-KV-head, head-dim-128, bf16 model: 32 KiB
per token) through objectcache's real `batch_set_v1`/`batch_get_v1` on SGLang's real host
pool, in SGLang's 128-page batches, against a local SeaweedFS, at page sizes 1 to 256.

    .venv/bin/python -m benchmarks.page_size

Writes benchmarks/results/page_size.json and its plot beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks import plot
from benchmarks.rig import Shape, make_host, s3_server, serve_model, storage_config
from benchmarks.schema import write_result

TOKENS = 4096
BATCH = 128  # SGLang's STORAGE_BATCH_SIZE
SHAPE = Shape(layers=8, kv_heads=8, head_dim=128, dtype="bfloat16")
PAGES = (1, 4, 16, 64, 256)


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__.splitlines()[0])


def one_page_size(s3, page: int) -> dict:
    """Write the prefix once at this page size, then read it back 3 times (fresh backends)."""
    from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage

    n = TOKENS // page
    host = make_host(SHAPE, page, n, "layer_first")
    cfg = s3.config("page-size", model_id=f"bench-page-{page}")
    w = ObjectCacheStorage(storage_config(cfg), host)
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
    return {"page_size": page, "objects": n, "object_kib": obj_kib, "write_s": write_s, "read_s": read_s,
            "read_tokens_per_s": TOKENS / read_s, "read_mib_per_s": n * obj_kib / 1024 / read_s,
            "write_mib_per_s": n * obj_kib / 1024 / write_s}


def plot_spec(rows: list[dict]) -> dict:
    """The result's `plot` field: read and write time of the prefix against the page size."""
    xs = [r["page_size"] for r in rows]
    return plot.loglog([("read (exists + get)", xs, [r["read_s"] for r in rows], "o"),
                        ("write", xs, [r["write_s"] for r in rows], "s")],
                       "SGLang --page-size (tokens per object)", f"seconds for a {TOKENS}-token prefix",
                       "One object per page: the page size sets the request count", size=(6.5, 4))


def main(argv: list[str] | None = None) -> None:
    parser().parse_args(argv)
    serve_model()  # the page-mode backend names pages by the served model; a benchmark has no server
    rows = []
    with tempfile.TemporaryDirectory(prefix="page-size-") as tmp, s3_server(tmp, ("page-size",)) as s3:
        for page in PAGES:
            rows.append(row := one_page_size(s3, page))
            print(f"page {page:4d}: {row['objects']:5d} objects of {row['object_kib']:8.1f} KiB  "
                  f"read {row['read_s']:6.2f} s ({row['read_mib_per_s']:6.1f} MiB/s)  "
                  f"write {row['write_s']:6.2f} s", flush=True)
    write_result("page_size", runs=3, medians={str(r["page_size"]): r["read_s"] for r in rows},
                 extra={"tokens": TOKENS, "kv_bytes_per_token": 32768, "rows": rows}, plot=plot_spec(rows))


if __name__ == "__main__":
    main()
