"""A SeaweedFS cluster on loopback: one master, several volume servers with replication, a
filer and the S3 gateway, each its own `weed` process, so a test can kill or restart one part
while the others serve (`kill_volume`, `restart_gateway`).

Every object is stored twice (replication "001": a second copy on another volume server of
the same rack), so one volume server may die without losing anything. Three volume servers
by default: with only two, a dead one leaves nowhere for the second copy of a new volume.

    with SeaweedCluster("/tmp/c") as c:
        c.create_bucket("b"); c.kill_volume(0); ...   # c.endpoint is the S3 gateway
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from objectcache_dev.s3server import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_SECRET_KEY,
    SeaweedFS,
    check_disk,
    free_port,
    weed_binary,
)

REPLICATION = "001"


@dataclass
class Part:
    """One `weed` process of the cluster: its role, name, arguments and log."""

    name: str
    args: list
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # Own process group, so a kill takes any child with it.
            self.proc = subprocess.Popen([weed_binary(), "-logtostderr", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown. Nothing is flushed, no goodbye to the master."""
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self, timeout_s: float = 3.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class SeaweedCluster:
    """A master, `volumes` volume servers, a filer and an S3 gateway as separate processes."""

    data_dir: str
    volumes: int = 3
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    min_free_mb: int = 256
    s3_port: int = 0
    parts: dict = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout_s: float = 60.0) -> "SeaweedCluster":
        data = Path(self.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        check_disk(data, self.min_free_mb << 20)
        self.s3_port = self.s3_port or free_port()
        ip = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        master = f"127.0.0.1:{free_port()}"
        mport, mgrpc = master.split(":")[1], free_port()
        master_addr = f"{master}.{mgrpc}"  # weed's "host:http.grpc" form: no guessing grpc as http+10000
        (data / "master").mkdir(exist_ok=True)
        self._add("master", ["master", *ip, f"-port={mport}", f"-port.grpc={mgrpc}", f"-mdir={data / 'master'}",
                             f"-defaultReplication={REPLICATION}", "-volumeSizeLimitMB=256", "-peers=none"])
        for i in range(self.volumes):
            d = data / f"volume{i}"
            d.mkdir(exist_ok=True)
            self._add(f"volume{i}", ["volume", *ip, f"-port={free_port()}", f"-port.grpc={free_port()}",
                                     f"-dir={d}", "-max=1000", f"-master={master_addr}",
                                     f"-minFreeSpace={self.min_free_mb}MiB", "-preStopSeconds=0",
                                     "-rack=r1", "-dataCenter=dc1"])
        filer_port, filer_grpc = free_port(), free_port()
        (data / "filer").mkdir(exist_ok=True)
        self._add("filer", ["filer", *ip, f"-port={filer_port}", f"-port.grpc={filer_grpc}",
                            f"-master={master_addr}", f"-defaultStoreDir={data / 'filer'}",
                            f"-defaultReplicaPlacement={REPLICATION}"])
        s3_json = data / "s3.json"
        s3_json.write_text(json.dumps({"identities": [{
            "name": "objectcache",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self._add("s3", ["s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={self.s3_port}",
                         f"-port.grpc={free_port()}", f"-filer=127.0.0.1:{filer_port}.{filer_grpc}",
                         f"-config={s3_json}", "-port.iceberg=0", "-port.lance=0"])
        self._master_http = f"http://{master}"
        try:
            for part in self.parts.values():
                part.start()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _add(self, name: str, args: list) -> None:
        self.parts[name] = Part(name, args, Path(self.data_dir) / f"{name}.log")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the gateway answers and every live volume server has joined the master."""
        deadline = time.monotonic() + timeout_s
        want = sum(1 for n, p in self.parts.items() if n.startswith("volume") and p.alive)
        while time.monotonic() < deadline:
            dead = [n for n, p in self.parts.items() if p.proc is not None and p.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"weed {dead} exited; see {self.data_dir}/{dead[0]}.log")
            try:
                urllib.request.urlopen(self.endpoint + "/healthz", timeout=1).read()
                if self.volume_servers() >= want:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS cluster on {self.endpoint} not ready after {timeout_s}s")

    def volume_servers(self) -> int:
        """Volume servers the master counts as alive now."""
        status = json.load(urllib.request.urlopen(self._master_http + "/dir/status", timeout=2))
        return sum(len(rack.get("DataNodes") or []) for dc in status["Topology"]["DataCenters"] or []
                   for rack in dc.get("Racks") or [])

    def kill_volume(self, i: int) -> None:
        self.parts[f"volume{i}"].kill()

    def start_volume(self, i: int) -> None:
        self.parts[f"volume{i}"].start()

    def restart_gateway(self, down_s: float = 0.0) -> None:
        """Stop the S3 gateway, wait `down_s`, start it again on the same port."""
        self.parts["s3"].stop()
        time.sleep(down_s)
        self.parts["s3"].start()
        self.wait_ready()

    def stop(self) -> None:
        # Gateway first, master last: each part's clients go before it.
        for part in reversed(list(self.parts.values())):
            part.stop()

    # The S3 side is the same as a single server's.
    client = SeaweedFS.client
    create_bucket = SeaweedFS.create_bucket
    delete_bucket = SeaweedFS.delete_bucket
    config = SeaweedFS.config

    def __enter__(self) -> "SeaweedCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
