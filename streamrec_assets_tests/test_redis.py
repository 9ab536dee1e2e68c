"""Feast with a real Redis online store: the skew property holds as with SQLite.

A throwaway ``redis-server`` (no persistence, 127.0.0.1, a free port, its own
directory) is started per module; the tests skip when the binary is absent
(``make setup`` installs it where it can).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from streamrec_assets.assets.feature_store import feature_day_bounds
from streamrec_assets.resources import FeastResource
from streamrec_assets_tests.conftest import END, assert_online_equals_offline

pytestmark = pytest.mark.slow
NO_REDIS = (
    "redis-server not installed: `make redis` (run by `make test`) installs it with apt-get as root"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A real redis-server on 127.0.0.1:<free port>, stopped at teardown."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(NO_REDIS)
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {(workdir / 'redis.log').read_text()}")
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# Checked before the (session-scoped, minutes-long) graph fixture is built.
@pytest.mark.skipif(shutil.which("redis-server") is None, reason=NO_REDIS)
def test_redis_online_features_equal_offline_features(graph_32, redis_port, tmp_path):
    import redis

    settings, _, _ = graph_32
    resource = FeastResource(
        storage_uri=settings.storage_uri,
        repo_dir=str(tmp_path / "feast"),
        online_store="redis",
        redis_url=f"127.0.0.1:{redis_port}",
    )
    store = resource.store()
    assert store.config.online_store.type == "redis"
    store.apply(resource.objects())
    start, end = feature_day_bounds(END)
    store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime())

    client = redis.Redis(host="127.0.0.1", port=redis_port)
    try:
        assert client.dbsize() > 0, "materialize wrote nothing to Redis"
    finally:
        client.close()

    assert assert_online_equals_offline(store, settings, END) > 30


def test_settings_select_redis(monkeypatch, tmp_path):
    """Configuration only: needs no running server."""
    from streamrec_assets.feature_repo import repo_config
    from streamrec_assets.resources import feast_settings
    from streamrec_assets.settings import Settings

    monkeypatch.setenv("STREAMREC_FEAST_ONLINE_STORE", "redis")
    redis_port = _free_port()
    monkeypatch.setenv("STREAMREC_REDIS_URL", f"127.0.0.1:{redis_port}")
    fs = feast_settings(Settings(home=str(tmp_path)))
    assert fs.online_store == "redis"
    assert fs.redis_url == f"127.0.0.1:{redis_port}"
    config = repo_config(fs)
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == f"127.0.0.1:{redis_port}"
