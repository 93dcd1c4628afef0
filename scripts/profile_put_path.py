"""Where `batch_set_v1`'s client CPU goes per page, beside the raw PUT lane on the same bodies.

bench_storage reports objectcache's PUTs at 0.23-0.28 ms of client CPU per 256 KiB page
against the raw lane's 0.17 ms. This splits that difference. Each round, in a random order,
one SeaweedFS, `--batch` fresh pages per lane, this process's CPU per page:
- `seal`: `_encode_pages` alone (copy out of the host pool, one xxh3 per layer, header);
- `batch_set_v1_no_store`: `batch_set_v1` with the store's `put_iter` replaced by one that
  only draws the items, i.e. everything objectcache does around its PUTs;
- `put_iter`: the store's `put_iter` of already sealed bodies (the hand-off to the
  transport's loop, the semaphore, `HttpPut`);
- `raw_http`: bench_storage's raw lane (`HttpPut` under a plain gather, 64 in flight) on
  the same bodies;
- `batch_set_v1`: as shipped.

    .venv/bin/python scripts/profile_put_path.py --out benchmarks/results/put_path
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import numpy as np  # noqa: E402

import bench_storage as bs  # noqa: E402
from benchutil import command_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2, help="2: 256 KiB pages with the default shape")
    p.add_argument("--layout", default="page_first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--settle-s", type=float, default=0.3)
    p.add_argument("--out", default="benchmarks/results/put_path")
    args = p.parse_args()
    P, B = args.page_tokens, args.batch
    host = bs.make_host(bs.Shape(), P, 2 * B, args.layout)
    with tempfile.TemporaryDirectory(prefix="put-path-") as tmp, \
            bs.SeaweedFS(os.path.join(tmp, "s3"), buckets=bs.BUCKETS) as srv:
        systems = bs.make_systems(srv, host, P, os.path.join(tmp, "file"))
        oc = systems["objectcache"]
        st = oc.storage
        if st.store._http_put is None:
            raise SystemExit("objectcache's PUT client does not apply to this store")
        src = bs.host_indices(0, B, P)
        slots = src[::P].tolist()
        g = st.pages.geometry
        staging = np.empty((B, g.object_bytes), np.uint8)
        bodies = [bytes(m) for m in st._encode_pages(st.pages, [f"b{i}" for i in range(B)], slots, staging)]
        raw = bs.RawHttp(srv, "bench-raw", 64)
        real_put_iter = st.store.put_iter

        def fresh() -> list[str]:
            return [uuid.uuid4().hex for _ in range(B)]

        def no_store() -> int:
            st.store.put_iter = lambda items, if_absent=True: [True for _ in items]
            try:
                return oc.set(fresh(), src)
            finally:
                st.store.put_iter = real_put_iter

        lanes = {
            "seal": lambda: len(list(st._encode_pages(st.pages, fresh(), slots, staging))),
            "batch_set_v1_no_store": no_store,
            "put_iter": lambda: sum(r is True for r in real_put_iter(
                zip([f"p/{k}" for k in fresh()], bodies), if_absent=True)),
            "raw_http": lambda: raw.put([(f"r/{k}", b) for k, b in zip(fresh(), bodies)]),
            "batch_set_v1": lambda: oc.set(fresh(), src),
        }
        rows: dict = {name: [] for name in lanes}
        rng = random.Random(0)
        for rep in range(args.reps + 1):
            for name in rng.sample(list(lanes), len(lanes)):
                time.sleep(args.settle_s)
                c0 = time.process_time()
                n = lanes[name]()
                cpu = time.process_time() - c0
                if n != B:
                    raise RuntimeError(f"{name}: {n} of {B} pages")
                if rep:  # the first round warms up
                    rows[name].append(1e3 * cpu / B)
        raw.close()
    out = {"command": command_line(), "object_bytes": g.object_bytes, "layout": args.layout, "batch": B,
           "reps": args.reps, "loadavg_after": os.getloadavg(),
           "client_ms_per_page": {k: statistics.median(v) for k, v in rows.items()}, "rounds": rows}
    m = out["client_ms_per_page"]
    out["split"] = {"around_puts": m["batch_set_v1_no_store"], "put_iter_over_raw": m["put_iter"] - m["raw_http"],
                    "batch_set_v1_over_raw": m["batch_set_v1"] - m["raw_http"]}
    for k, v in m.items():
        print(f"{k:24s} {v:.4f} ms/page  (rounds {min(rows[k]):.4f}-{max(rows[k]):.4f})")
    for k, v in out["split"].items():
        print(f"{k:24s} {v:+.4f} ms/page")
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    plot(out, args.out + ".png")


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["client_ms_per_page"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([out["rounds"][n] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("client CPU ms per page (rounds)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.set_title(f"batch_set_v1 and its parts, {out['batch']} x {out['object_bytes'] / 1024:.0f} KiB pages, "
                 f"{out['layout']}, {out['reps']} rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
