"""Would a GET client that receives straight into a reused buffer beat obstore? A probe for
issue 8's large-page target, not a transport: SigV4 over plain HTTP/1.1 keep-alive, no TLS,
no retries, no redirects. Any answer but `200` with a Content-Length is an error.

Lanes, taking turns batch by batch against one SeaweedFS (the same objects, `--batch` per
batch, `--conc` in flight):
  obstore     bench_storage's raw lane: one ranged GET per object, body in obstore's buffer
  buffered    asyncio `BufferedProtocol` on one event loop: each response's body is read
              with `recv_into` straight into its connection's reused buffer (the kernel's copy
              is the only one)
With `--checked`, both lanes also check each body's xxh3 and copy it into a host-sized sink,
as bench_storage's `checked` lane does.

    .venv/bin/python scripts/probe_http_get.py --page-tokens 64      # 8 MiB objects
    .venv/bin/python scripts/probe_http_get.py --page-tokens 2       # 256 KiB objects
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import numpy as np  # noqa: E402

import bench_storage as bs  # noqa: E402
from sglang_objectcache import objformat  # noqa: E402
from sglang_objectcache.s3server import SeaweedFS  # noqa: E402

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Signer:
    """AWS SigV4 for a GET with no body and no query (path-style)."""

    def __init__(self, host: str, access: str, secret: str, region: str = "us-east-1"):
        self.host, self.access, self.secret, self.region = host, access, secret, region
        self._day, self._key = "", b""

    def headers(self, path: str) -> bytes:
        now = dt.datetime.now(dt.timezone.utc)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        if day != self._day:  # the derived key changes once a day
            k = hmac.digest(("AWS4" + self.secret).encode(), day.encode(), "sha256")
            for part in (self.region, "s3", "aws4_request"):
                k = hmac.digest(k, part.encode(), "sha256")
            self._day, self._key = day, k
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (f"GET\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{EMPTY_SHA256}\n"
                     f"x-amz-date:{amz}\n\n{signed}\n{EMPTY_SHA256}")
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._key, to_sign.encode(), "sha256").hexdigest()
        return (f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nx-amz-date: {amz}\r\n"
                f"x-amz-content-sha256: {EMPTY_SHA256}\r\nAuthorization: AWS4-HMAC-SHA256 "
                f"Credential={self.access}/{scope}, SignedHeaders={signed}, Signature={sig}\r\n\r\n").encode()


class Conn(asyncio.BufferedProtocol):
    """One keep-alive connection; one GET at a time; the body lands in `self.body`."""

    def __init__(self, size: int):
        self.body = np.empty(size, np.uint8)
        self._mv = memoryview(self.body)
        self._head = bytearray(64 << 10)
        self._head_mv = memoryview(self._head)
        self._hlen, self._pos, self._want = 0, 0, -1
        self.transport = None
        self.done: asyncio.Future | None = None

    def connection_made(self, transport):
        self.transport = transport

    def get(self, request: bytes) -> asyncio.Future:
        self._hlen, self._pos, self._want = 0, 0, -1
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done

    def get_buffer(self, sizehint):
        if self._want >= 0 and self._pos < self._want:
            return self._mv[self._pos:self._want]
        if self._want < 0 and self._hlen < len(self._head):
            return self._head_mv[self._hlen:]
        return self._head_mv  # bytes no GET asked for (a close): buffer_updated drops them

    def buffer_updated(self, n):
        if self.done is None or self.done.done():
            return  # nothing was asked: the next GET resets the state
        if self._want >= 0:
            self._pos += n
        else:
            self._hlen += n
            end = self._head.find(b"\r\n\r\n", 0, self._hlen)
            if end < 0:
                if self._hlen == len(self._head):
                    self.done.set_exception(RuntimeError("response headers over 64 KiB"))
                return
            lines = bytes(self._head[:end]).split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next((int(v) for k, _, v in (x.partition(b":") for x in lines[1:])
                           if k.strip().lower() == b"content-length"), -1)
            if status != 200 or not 0 <= length <= len(self.body):
                self.done.set_exception(RuntimeError(f"HTTP {status}, length {length}"))
                return
            self._want = length
            extra = self._hlen - end - 4
            self._mv[:extra] = self._head_mv[end + 4:self._hlen]
            self._pos = extra
        if self._pos == self._want and not self.done.done():
            self.done.set_result(self._want)

    def connection_lost(self, exc):
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed"))


class Buffered:
    def __init__(self, srv: SeaweedFS, bucket: str, conc: int, size: int, checked: bool, digests, sink):
        self.bucket, self.conc, self.size = bucket, conc, size
        self.checked, self.digests, self.sink = checked, digests, sink
        self.signer = Signer(f"127.0.0.1:{srv.s3_port}", srv.access_key, srv.secret_key)
        self.port = srv.s3_port
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.conns = asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result()

    async def _connect(self):
        out = []
        for _ in range(self.conc):
            _, c = await self.loop.create_connection(lambda: Conn(self.size + 1), "127.0.0.1", self.port)
            out.append(c)
        return out

    def get(self, keys) -> list[int]:
        async def run():
            q: asyncio.Queue = asyncio.Queue()
            for c in self.conns:
                q.put_nowait(c)

            async def one(i, k):
                c = await q.get()
                try:
                    n = await c.get(self.signer.headers(f"/{self.bucket}/{quote(k, safe='/-_.~')}"))
                    if self.checked:
                        body = c.body[:n]
                        if objformat.checksum(body) != self.digests[k]:
                            return 0
                        np.copyto(self.sink[i % len(self.sink)], body)
                    return n
                finally:
                    q.put_nowait(c)

            return await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--conc", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    B, P = args.batch, args.page_tokens
    size = P * bs.Shape().token_bytes + 1024  # bench_storage's object size (header + payload)
    rng = np.random.default_rng(0)
    bodies = [rng.integers(0, 255, size, dtype=np.uint8).tobytes() for _ in range(B)]
    keys = [f"probe/{i:04d}" for i in range(B)]
    digests = {k: objformat.checksum(b) for k, b in zip(keys, bodies)}
    sink = np.empty((min(B, 16), size), np.uint8)
    with tempfile.TemporaryDirectory(prefix="probe-get-") as tmp, \
            SeaweedFS(os.path.join(tmp, "s3"), buckets=bs.BUCKETS) as srv:
        lanes = {}
        for checked in (False, True):
            tag = "_checked" if checked else ""
            lanes["obstore" + tag] = (bs.RawObstore(srv, "bench-raw", args.conc, checked, digests, sink),)
            lanes["buffered" + tag] = (Buffered(srv, "bench-raw", args.conc, size, checked, digests, sink),)
        lanes["obstore"][0].put(list(zip(keys, bodies)))
        del bodies
        run = {name: (lambda l=lane[0]: l.get(keys, size) if isinstance(l, bs.RawObstore) else l.get(keys))
               for name, lane in lanes.items()}
        rows = {name: [] for name in run}
        for rep in range(args.reps + 1):  # the first round warms up and is not kept
            for name in random.sample(list(run), len(run)):
                time.sleep(0.05)
                c0, t0 = time.process_time(), time.perf_counter()
                got = run[name]()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert got == [size] * B, (name, got[:3])
                if rep:
                    rows[name].append({"wall_s": wall, "cpu_s": cpu})
        for lane in lanes.values():
            if isinstance(lane[0], bs.RawObstore):
                lane[0].close()
    summary = {n: {"wall_ms": statistics.median(r["wall_s"] for r in rs) * 1e3,
                   "client_cpu_us_per_page": statistics.median(r["cpu_s"] for r in rs) / B * 1e6,
                   "pages_s": B / statistics.median(r["wall_s"] for r in rs)} for n, rs in rows.items()}
    for n, s in summary.items():
        print(f"{n:18s} " + "  ".join(f"{k} {v:9.1f}" for k, v in s.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "object_bytes": size, "batch": B, "conc": args.conc,
                       "summary": summary, "batches": rows}, f, indent=1)
        plot(summary, args.out.removesuffix(".json") + ".png", size)


def plot(summary: dict, path: str, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "pages_s", "pages/s (median batch)"),
                           (axes[1], "client_cpu_us_per_page", "client CPU per page (us)")):
        ax.bar(names, [summary[n][key] for n in names], color=["0.55", "C0", "0.3", "C1"][: len(names)])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"GET of {size / 1024:.0f} KiB objects: obstore vs a BufferedProtocol client (one SeaweedFS, loopback)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
