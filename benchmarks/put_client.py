"""objectcache's PUT client (`store/httpput.py`) against obstore's, side by side on one
SeaweedFS, with SGLang's in-tree `seaweedfs` backend and the raw lanes for scale.

Lanes, each writing `--batch` fresh pages per batch, taking turns in a random order for
`--reps` rounds (the first round warms up and is not kept), `--settle-s` idle before each:
- `objectcache`: `batch_set_v1` as shipped (`http_put` on where it applies);
- `objectcache_obstore_put`: the same with `http_put: false` (every PUT through obstore);
- `seaweedfs`: SGLang's in-tree backend (boto3, 16 threads);
- `raw_obstore` / `raw_http`: benchmarks.storage's raw lanes (64 in flight) on each client.
Per lane: pages/s (median batch), this process's and the server's CPU per page.

With `--parts`, three more lanes split `batch_set_v1`'s client CPU:
- `seal`: sealing alone (copy out of the host pool, one xxh3 per layer, the header);
- `objectcache_no_store`: `batch_set_v1` with the store's `put_iter` replaced by one that
  only draws the items: all objectcache does around its PUTs;
- `put_iter`: the store's `put_iter` of already sealed bodies (the hand-off to the
  transport's loop, the semaphore, `HttpPut`), to set beside `raw_http` on the same bodies.

    .venv/bin/python -m benchmarks.put_client --out benchmarks/results/put_client
    .venv/bin/python -m benchmarks.put_client --parts --out benchmarks/results/put_path
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid

import numpy as np

from benchmarks.clients import BUCKETS, Backend, RawHttp, RawObstore, make_systems, seal_into, sealed_pages
from benchmarks.rig import Shape, host_indices, make_host, s3_server, server_cpu_s, storage_config
from benchmarks.schema import write_result
from sglang_objectcache.sglang.hicache_backend import ObjectCacheStorage


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=2, help="2: 256 KiB pages with the default shape")
    p.add_argument("--layout", default="page_first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--settle-s", type=float, default=0.5)
    p.add_argument("--parts", action="store_true", help="add the lanes that split batch_set_v1's CPU")
    p.add_argument("--out", default="benchmarks/results/put_client")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    P, B = args.page_tokens, args.batch
    host = make_host(Shape(), P, 2 * B, args.layout)
    with tempfile.TemporaryDirectory(prefix="put-client-") as tmp, \
            s3_server(os.path.join(tmp, "s3"), BUCKETS) as srv:
        systems = make_systems(srv, host, P, os.path.join(tmp, "file"))
        oc = systems["objectcache"]
        plain = ObjectCacheStorage(storage_config(srv.config("bench-objectcache", read_timeout_s=60.0,
                                                                http_put=False)), host)
        plain.register_mem_pool_host(host)
        if oc.storage.store._http_put is None or plain.store._http_put is not None:
            raise SystemExit("the two objectcache lanes must differ in their PUT client")
        src = host_indices(0, B, P)
        bodies = sealed_pages(oc.storage, [f"raw{i}" for i in range(B)], [i * P for i in range(B)])
        raws = {"raw_obstore": RawObstore(srv, "bench-raw", 64), "raw_http": RawHttp(srv, "bench-raw", 64)}

        def fresh() -> list[str]:
            return [uuid.uuid4().hex for _ in range(B)]

        lanes = {"objectcache": lambda: oc.set(fresh(), src),
                 "objectcache_obstore_put": lambda: Backend("plain", plain, P).set(fresh(), src),
                 "seaweedfs": lambda: systems["seaweedfs"].set(fresh(), src),
                 **{name: (lambda r=r: r.put([(f"r/{k}", b) for k, b in zip(fresh(), bodies)]))
                    for name, r in raws.items()}}
        if args.parts:
            lanes.update(parts(oc, src, bodies, fresh))
        rows: dict = {name: [] for name in lanes}
        rng = random.Random(0)
        for rep in range(args.reps + 1):
            for name in rng.sample(list(lanes), len(lanes)):
                time.sleep(args.settle_s)
                c0, s0, t0 = time.process_time(), server_cpu_s(srv.proc.pid), time.perf_counter()
                n = lanes[name]()
                wall = time.perf_counter() - t0
                if n != B:
                    raise RuntimeError(f"{name}: stored {n} of {B} pages")
                if rep:
                    rows[name].append({"wall_s": wall, "client_ms_per_page": 1e3 * (time.process_time() - c0) / B,
                                       "server_ms_per_page": 1e3 * (server_cpu_s(srv.proc.pid) - s0) / B})
        for r in raws.values():
            r.close()
        g = oc.storage.pages.geometry
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    lanes_out = {name: {"pages_s": B / med(v, "wall_s"), "client_ms_per_page": med(v, "client_ms_per_page"),
                        "server_ms_per_page": med(v, "server_ms_per_page"), "batches": v} for name, v in rows.items()}
    base = lanes_out["seaweedfs"]["pages_s"]
    for name, c in lanes_out.items():
        if name in PARTS:  # these store nothing: their pages/s means nothing
            del c["pages_s"]
        else:
            c["vs_seaweedfs"] = c["pages_s"] / base
        print(f"{name:24s} {c.get('pages_s', 0):7.1f} pages/s  {c.get('vs_seaweedfs', 0):.2f}x in-tree  client "
              f"{c['client_ms_per_page']:.3f}  server {c['server_ms_per_page']:.3f} ms/page")
    out = {"object_bytes": g.object_bytes, "layout": args.layout, "batch": B,
           "reps": args.reps, "loadavg_after": os.getloadavg(), "lanes": lanes_out}
    if args.parts:
        cpu = {name: c["client_ms_per_page"] for name, c in lanes_out.items()}
        out["split_ms_per_page"] = {"around_puts": cpu["objectcache_no_store"],
                                    "put_iter_over_raw_http": cpu["put_iter"] - cpu["raw_http"],
                                    "objectcache_over_raw_http": cpu["objectcache"] - cpu["raw_http"]}
        print(out["split_ms_per_page"])
    medians = {name: {k: v for k, v in c.items() if k != "batches"} for name, c in lanes_out.items()}
    write_result(args.out, args.reps, medians, extra=out, plot={"kind": "put_client", "dpi": 110})


PARTS = ("seal", "objectcache_no_store")


def parts(oc, src, bodies: list[bytes], fresh) -> dict:
    st = oc.storage
    P = st.pages.page_size
    slots = src[::P].tolist()
    staging = np.empty((len(slots), st.pages.geometry.object_bytes), np.uint8)
    put_iter = st.store.put_iter

    def no_store() -> int:
        st.store.put_iter = lambda items, if_absent=True, stop=None: [True for _ in items]
        try:
            return oc.set(fresh(), src)
        finally:
            st.store.put_iter = put_iter

    def seal() -> int:
        digests = [st.keys.content_digest(k) for k in fresh()]
        return len(list(seal_into(st.pages, digests, slots, staging)))

    return {"seal": seal,
            "objectcache_no_store": no_store,
            "put_iter": lambda: sum(r is True for r in put_iter(zip([f"p/{k}" for k in fresh()], bodies)))}


def draw(fig, out: dict) -> None:
    """Plot kind "put_client": pages/s by lane, and client + server CPU per page."""
    names = list(out["lanes"])
    lanes = [out["lanes"][n] for n in names]
    fig.set_size_inches(11, 4)
    a, b = fig.subplots(1, 2)
    stored = [n for n in names if "pages_s" in out["lanes"][n]]
    a.bar(stored, [out["lanes"][n]["pages_s"] for n in stored], color=["C0", "C9", "C3", "0.55", "0.3", "C2"])
    a.set_ylabel("pages/s (median batch)")
    for x, n in enumerate(stored):
        c = out["lanes"][n]
        a.text(x, c["pages_s"], f"{c['vs_seaweedfs']:.2f}x", ha="center", va="bottom", fontsize=8)
    b.bar(names, [c["client_ms_per_page"] for c in lanes], label="client")
    b.bar(names, [c["server_ms_per_page"] for c in lanes], bottom=[c["client_ms_per_page"] for c in lanes],
          label="server", color="0.7")
    b.set_ylabel("CPU ms per page")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"batch_set of {out['batch']} x {out['object_bytes'] / 1024:.0f} KiB pages, one SeaweedFS, "
                 f"{out['reps']} batches per lane", fontsize=10)


if __name__ == "__main__":
    main()
