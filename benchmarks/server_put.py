"""A profile: where SeaweedFS spends its CPU on a PUT, and how much of it any client could save.

PUTs on this box are bound by the server's CPU (benchmarks.storage: ~2.5-3.5 ms per 256 KiB
page). This profile measures that cost apart from any client: a raw obstore client (64 in
flight, unsigned payload) writes random pages of several sizes to one SeaweedFS, and for
each size it records
- the server's CPU per PUT (user and system, from /proc), over `--seconds` of PUTs;
- a fit of that cost to `fixed + per_byte * size`: the fixed part is all that packing
  several pages into one object could save;
- for the sizes in `--profile`, a Go CPU profile of the server over the same PUTs (weed's
  pprof endpoint), reduced to the share of each top function and of each caller of MD5.

    .venv/bin/python -m benchmarks.server_put --out benchmarks/results/server_put
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import tempfile
import threading
import time
import urllib.request

from benchmarks.clients import RawObstore
from benchmarks.rig import s3_server
from benchmarks.schema import write_result
from objectcache_dev.s3server import SeaweedFS, free_port

KiB, MiB = 1 << 10, 1 << 20


def cpu_ticks(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / hz, int(f[12]) / hz


# ---- pprof: a gzipped protobuf (github.com/google/pprof, proto/profile.proto) -------------


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        kind = key & 7
        if kind == 0:
            v, i = _varint(b, i)
        elif kind == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        else:  # fixed64 / fixed32: not used by the fields read here
            n = 8 if kind == 1 else 4
            v, i = b[i:i + n], i + n
        yield key >> 3, kind, v


def _ints(v, kind: int) -> list[int]:
    if kind == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


def read_pprof(raw: bytes) -> list[tuple[list[str], int]]:
    """Each sample as (its stack of function names, innermost first; CPU nanoseconds)."""
    b = gzip.decompress(raw)
    samples, locations, functions, strings = [], {}, {}, []
    for field, kind, v in _fields(b):
        if field == 2:  # Sample: location_id (1), value (2)
            locs, vals = [], []
            for f2, k2, v2 in _fields(v):
                if f2 == 1:
                    locs += _ints(v2, k2)
                elif f2 == 2:
                    vals += _ints(v2, k2)
            samples.append((locs, vals[-1]))
        elif field == 4:  # Location: id (1), line (4) -> function_id (1)
            lid, funcs = 0, []
            for f2, _, v2 in _fields(v):
                if f2 == 1:
                    lid = v2
                elif f2 == 4:
                    funcs += [v3 for f3, _, v3 in _fields(v2) if f3 == 1]
            locations[lid] = funcs
        elif field == 5:  # Function: id (1), name (2, a string-table index)
            d = {f2: v2 for f2, _, v2 in _fields(v)}
            functions[d.get(1, 0)] = d.get(2, 0)
        elif field == 6:
            strings.append(v.decode())
    return [([strings[functions[fid]] for loc in locs for fid in locations[loc]], w) for locs, w in samples]


def reduce_profile(samples: list[tuple[list[str], int]], top: int = 12) -> dict:
    total = sum(w for _, w in samples)
    flat: collections.Counter = collections.Counter()
    md5_callers: collections.Counter = collections.Counter()
    syscalls = 0
    for stack, w in samples:
        if not stack:
            continue
        flat[stack[0]] += w
        if any(n.startswith("crypto/md5.") for n in stack[:3]):
            # The first frame outside crypto/md5 and io's readers names the pass; hashing
            # readers nest (io.TeeReader in io.TeeReader), so their depth tells them apart.
            caller = next((n for n in stack if not n.startswith(("crypto/md5.", "io."))), "?")
            tees = sum(n == "io.(*teeReader).Read" for n in stack)
            md5_callers[caller + (f" (tee reader {tees})" if tees else "")] += w
        if any("syscall" in n for n in stack[:3]):
            syscalls += w
    share = lambda w: round(w / total, 4)  # noqa: E731
    return {"cpu_s": total / 1e9,
            "top": [{"function": n, "share": share(w)} for n, w in flat.most_common(top)],
            "md5_share": share(sum(md5_callers.values())),
            "md5_by_caller": [{"caller": n, "share": share(w)} for n, w in md5_callers.most_common()],
            "syscall_share": share(syscalls)}


# ---- the run ---------------------------------------------------------------------------


def put_for(client: RawObstore, payloads: list, seconds: float, tag: str) -> int:
    """PUT batches of fresh keys (the payloads reused) for `seconds`; returns the count."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.put([(f"{tag}/{n + i}", p) for i, p in enumerate(payloads)])
        n += len(payloads)
    return n


def measure(srv: SeaweedFS, client: RawObstore, size: int, seconds: float, profile: bool) -> dict:
    batch = max(16, min(128, (64 * MiB) // size))  # 16 in flight at least, as benchmarks.storage's 8 MiB PUTs
    payloads = [os.urandom(size) for _ in range(batch)]
    put_for(client, payloads, 0, f"warm{size}")  # one batch: connections and the volume
    got: dict = {}
    grab = None
    if profile:
        url = f"http://127.0.0.1:{srv.debug_port}/debug/pprof/profile?seconds={int(seconds)}"
        grab = threading.Thread(target=lambda: got.update(raw=urllib.request.urlopen(url, timeout=seconds + 60).read()))
        grab.start()
        time.sleep(0.2)  # the profiler starts when the request arrives
    (u0, s0), t0 = cpu_ticks(srv.proc.pid), time.perf_counter()
    n = put_for(client, payloads, seconds, f"m{size}")
    (u1, s1), wall = cpu_ticks(srv.proc.pid), time.perf_counter() - t0
    out = {"object_bytes": size, "puts": n, "puts_s": n / wall, "MiB_s": n * size / MiB / wall,
           "server_user_ms_per_put": 1e3 * (u1 - u0) / n, "server_sys_ms_per_put": 1e3 * (s1 - s0) / n}
    out["server_ms_per_put"] = out["server_user_ms_per_put"] + out["server_sys_ms_per_put"]
    out["server_ms_per_MiB"] = out["server_ms_per_put"] * MiB / size
    if grab:
        grab.join()
        out["profile"] = reduce_profile(read_pprof(got["raw"]))
    return out


def fit(rows: list[dict]) -> dict:
    """`fixed + per_MiB * size` fitted to server CPU per PUT, by least squares on relative
    error (plain least squares would let the 8 MiB point decide the fixed part alone)."""
    xs, ys = [r["object_bytes"] / MiB for r in rows], [r["server_ms_per_put"] for r in rows]
    # minimize sum(((a + b x - y) / y)^2): linear in (a, b) with weights 1 / y^2
    w = [1 / y ** 2 for y in ys]
    sw, sx, sy = sum(w), sum(wi * x for wi, x in zip(w, xs)), sum(wi * y for wi, y in zip(w, ys))
    sxx = sum(wi * x * x for wi, x in zip(w, xs))
    sxy = sum(wi * x * y for wi, x, y in zip(w, xs, ys))
    b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    return {"fixed_ms_per_put": (sy - b * sx) / sw, "ms_per_MiB": b}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-kib", nargs="+", type=int, default=[64, 257, 1024, 2049, 8193],
                   help="object sizes (257 and 8193 KiB: a 256 KiB and an 8 MiB page with its 1 KiB header)")
    p.add_argument("--profile", nargs="+", type=int, default=[257, 8193], help="sizes (KiB) to profile")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", default="benchmarks/results/server_put")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="server-put-", dir=os.environ.get("BENCH_TMP")) as tmp, \
            s3_server(os.path.join(tmp, "s3"), ("serverput",), debug_port=free_port()) as srv:
        srv.create_bucket("serverput")
        client = RawObstore(srv, "serverput", conc=64)
        try:
            rows = [measure(srv, client, kib * KiB, args.seconds, kib in args.profile) for kib in args.sizes_kib]
        finally:
            client.close()
    out = {"client": "raw obstore, 64 PUTs in flight, unsigned payload",
           "cpus": os.cpu_count(), "loadavg_after": os.getloadavg(), "sizes": rows, "fit": fit(rows)}
    for r in rows:
        prof = r.get("profile")
        extra = f"  md5 {100 * prof['md5_share']:.0f}%, syscalls {100 * prof['syscall_share']:.0f}%" if prof else ""
        print(f"{r['object_bytes'] / KiB:6.0f} KiB: {r['puts_s']:7.1f} PUT/s, server {r['server_ms_per_put']:.2f} ms/PUT "
              f"({r['server_ms_per_MiB']:.1f} ms/MiB){extra}")
        for c in (prof or {}).get("md5_by_caller", []):
            print(f"         md5 from {c['caller']}: {100 * c['share']:.1f}%")
    print(f"fit: {out['fit']['fixed_ms_per_put']:.2f} ms per PUT + {out['fit']['ms_per_MiB']:.2f} ms per MiB")
    medians = {str(r["object_bytes"]): r["server_ms_per_put"] for r in rows}
    write_result(args.out, len(rows), medians, extra=out, plot={"kind": "server_put", "dpi": 110})


def draw(fig, out: dict) -> None:
    """Plot kind "server_put": server CPU per PUT by size (with the fit), and MD5's share."""
    rows = out["sizes"]
    fig.set_size_inches(11, 4)
    a, b = fig.subplots(1, 2)
    xs = [r["object_bytes"] / MiB for r in rows]
    a.plot(xs, [r["server_ms_per_put"] for r in rows], "o-", label="measured")
    f = out["fit"]
    a.plot(xs, [f["fixed_ms_per_put"] + f["ms_per_MiB"] * x for x in xs], "--",
           label=f"{f['fixed_ms_per_put']:.2f} ms + {f['ms_per_MiB']:.1f} ms/MiB")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("object size, MiB")
    a.set_ylabel("SeaweedFS CPU per PUT, ms")
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    profiled = [r for r in rows if "profile" in r]
    labels = [f"{r['object_bytes'] / KiB:.0f} KiB" for r in profiled]
    bottom = [0.0] * len(profiled)
    callers = sorted({c["caller"] for r in profiled for c in r["profile"]["md5_by_caller"]})
    for caller in callers:
        vals = [100 * next((c["share"] for c in r["profile"]["md5_by_caller"] if c["caller"] == caller), 0.0)
                for r in profiled]
        b.bar(labels, vals, bottom=bottom, label="md5 in " + caller.rsplit("/", 1)[-1][:48])
        bottom = [x + y for x, y in zip(bottom, vals)]
    vals = [100 * r["profile"]["syscall_share"] for r in profiled]
    b.bar(labels, vals, bottom=bottom, label="system calls", color="grey")
    b.set_ylabel("% of the server's CPU during PUTs")
    b.legend(fontsize=6)
    fig.suptitle("SeaweedFS (weed server) CPU on PUTs: " + out["client"], fontsize=10)


if __name__ == "__main__":
    main()
