"""Soak: 64 clients against a SeaweedFS cluster (master, 3 volume servers keeping 2 copies,
filer, S3 gateway: separate processes), one volume server killed in the middle.

Phases, each sent by 64 concurrent clients, every prompt once (more prompts than clients,
so loads keep starting all through a phase):
  1. cold: `--prompts` prompts computed and written back;
  2. flushed (device and host tiers dropped), the same prompts from the store, and a volume
     server killed (SIGKILL) once a third of them have finished;
  3. new prompts, computed and written back with that volume server still dead;
  4. flushed, every prompt of phases 1 and 3 from the store again, the server still dead.
Every answer is compared with a no-cache server's (greedy, top-2 logprobs, near-ties allowed
as in the e2e suite). The server's RSS (whole process tree) is sampled each second.

    .venv/bin/python -m benchmarks.soak_cluster --out benchmarks/results/soak_cluster

Writes `--out`.json and its plot beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.rig import pct
from benchmarks.schema import write_result
from objectcache_dev.harness.compare import same_answer
from objectcache_dev.harness.server import ServerPool, cpu_args, nocache_args, objectcache_args
from objectcache_dev.harness.workloads import prompts
from objectcache_dev.s3cluster import SeaweedCluster
from objectcache_dev.tinymodel import make_tiny_model

CLIENTS = 64
MAX_NEW = 16  # greedy tokens compared with the reference, as in the e2e suite
PAGE = 64  # cpu_args()' page size


class Sampler(threading.Thread):
    """RSS of the server's process tree, once a second, until stopped."""

    def __init__(self, server, t0: float):
        super().__init__(daemon=True)
        self.server, self.t0, self.samples, self.done = server, t0, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append((round(time.monotonic() - self.t0, 1), self.server.rss_bytes()))
            self.done.wait(1.0)


def phase(name, server, texts, reference, t0, during=None):
    """Every text once per round, from CLIENTS threads; `during(finished)` is called as
    requests finish (it decides when to kill). Returns the phase's record."""
    finished, lock, out = [0], threading.Lock(), []

    def one(text):
        start = time.monotonic()
        try:
            c = server.client.generate(text, max_new_tokens=MAX_NEW, top_logprobs=2)
            row = (text, c, "", time.monotonic() - start)
        except Exception as e:  # noqa: BLE001 - counted
            row = (text, None, f"{type(e).__name__}: {e}", time.monotonic() - start)
        with lock:
            finished[0] += 1
            n = finished[0]
        if during:
            during(n)
        return row

    began = time.monotonic() - t0
    with ThreadPoolExecutor(CLIENTS) as pool:
        out = list(pool.map(one, texts))
    ok = [(t, c) for t, c, e, _ in out if c is not None]
    return {
        "phase": name, "start_s": round(began, 1), "end_s": round(time.monotonic() - t0, 1),
        "sent": len(texts), "completed": len(ok), "errors": [e for _, c, e, _ in out if c is None][:5],
        "error_count": sum(1 for _, c, _, _ in out if c is None),
        "wrong_answers": sum(1 for t, c in ok if not same_answer(c, reference[t])),
        "storage_tokens": sum(c.storage or 0 for _, c in ok),
        "cacheable_tokens": sum((c.prompt_tokens - 1) // PAGE * PAGE for _, c in ok),
        "latency_p50_s": round(pct([s for *_, s in out], 0.5), 3),
        "latency_p99_s": round(pct([s for *_, s in out], 0.99), 3),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=192, help="prompts of phase 1 (phase 3 adds a third more)")
    p.add_argument("--out", default="benchmarks/results/soak_cluster")
    return p


def soak(server, cluster, first, later, reference) -> tuple[list[dict], dict, list]:
    """The four phases on `server`: (their records, when the volume server died, RSS samples)."""
    t0 = time.monotonic()
    sampler = Sampler(server, t0)
    sampler.start()
    killed = {}

    def kill_at_a_third(n):
        if n >= len(first) // 3 and not killed:
            killed.update(at_s=round(time.monotonic() - t0, 1), after_requests=n)
            cluster.kill_volume(0)

    def flushed():
        time.sleep(3)  # the last write-backs
        server.client.flush_cache()

    phases = [phase("1 cold", server, first, reference, t0)]
    flushed()
    phases.append(phase("2 from storage, volume server killed", server, first, reference, t0,
                        during=kill_at_a_third))
    phases.append(phase("3 new prompts, a volume server dead", server, later, reference, t0))
    flushed()
    phases.append(phase("4 all from storage, a volume server dead", server, first + later, reference, t0))
    sampler.done.set()
    sampler.join()
    return phases, killed, sampler.samples


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    first, later = prompts(a.prompts, "soak"), prompts(a.prompts // 3, "soak-later")
    model = str(make_tiny_model(work / "model"))
    pool = ServerPool(model, str(work / "logs"))
    with SeaweedCluster(str(work / "cluster")) as cluster:
        cluster.create_bucket("soak")
        try:
            ref_server = pool.launch(cpu_args() + nocache_args(), name="reference")
            reference = {t: ref_server.client.generate(t, max_new_tokens=MAX_NEW, top_logprobs=2)
                         for t in first + later}
            ref_server.stop()
            server = pool.launch(cpu_args(max_total_tokens=32768) + objectcache_args(cluster.config("soak")),
                                 name="soak")
            phases, killed, rss = soak(server, cluster, first, later, reference)
            alive = server.alive() and server.client.healthy()
        finally:
            pool.close()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": CLIENTS, "prompts": [len(first), len(later)], "model": "tiny random-weight Llama (CPU)",
        "store": "SeaweedFS 4.48 cluster: master, 3 volume servers (replication 001), filer, S3 gateway",
        "killed": killed, "server_alive_at_end": alive, "phases": phases,
        "rss_mib": {"first": round(rss[0][1] / 2**20), "peak": round(max(r for _, r in rss) / 2**20),
                    "last": round(rss[-1][1] / 2**20),
                    "peak_after_first_phase": round(max(r for t, r in rss if t >= phases[0]["end_s"]) / 2**20)},
        "rss_samples": [(t, round(r / 2**20)) for t, r in rss],
    }
    medians = {ph["phase"]: ph["latency_p50_s"] for ph in phases}
    write_result(a.out, runs=len(phases), medians={"latency_p50_s": medians}, extra=result,
                 plot={"kind": "soak_cluster", "size": [8, 4.5], "dpi": 120})
    for ph in phases:
        print({k: v for k, v in ph.items() if k != "errors"})
    print("killed", killed, "rss", result["rss_mib"], "alive", alive)


def draw(fig, result: dict) -> None:
    """The `soak_cluster` plot kind (drawn by benchmarks.plot): RSS over the four phases."""
    ax = fig.subplots()
    ts, mib = zip(*result["rss_samples"])
    ax.plot(ts, mib, label="server RSS (process tree), MiB")
    for ph in result["phases"]:
        ax.axvspan(ph["start_s"], ph["end_s"], alpha=0.08)
        ax.text(ph["start_s"] + 0.5, max(mib) * 1.02, f"phase {ph['phase'].split()[0]}\n{ph['completed']}/"
                f"{ph['sent']} ok\n{ph['wrong_answers']} wrong", fontsize=7, va="bottom")
    if result["killed"]:
        ax.axvline(result["killed"]["at_s"], color="red", linestyle="--", label="volume server killed")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, max(mib) * 1.25)
    ax.set_title(f"{result['clients']} clients, SeaweedFS cluster, one volume server killed", fontsize=10)
    ax.legend(loc="lower right")
    fig.supxlabel("; ".join(ph["phase"] for ph in result["phases"]), x=0.01, ha="left", fontsize=7)


if __name__ == "__main__":
    main()
