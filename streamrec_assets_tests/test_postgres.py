"""The production instance storage (deploy/dagster.yaml `storage:`) on a real PostgreSQL 15.

A private, throwaway cluster is created with `initdb` and started with `pg_ctl` on a free
port of 127.0.0.1 (trust auth, socket in the cluster's own directory); the real CLI then
materialises ingest and daily activity for three days into it, and the test reads the
run, the partitions and the raw `runs` table back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("STREAMREC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # OS user that owns the cluster when the tests run as root
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
SELECTION = "user_catalog,item_catalog,raw_events,raw_events_dlq,user_daily_activity,item_daily_activity"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` OS user when we are root."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as a non-root user")
    return [runuser, "-u", PG_USER, "--", *cmd]


def _pg(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def postgres():
    """A private PostgreSQL 15 cluster with a `dagster` database; yields its port."""
    needed = ["initdb", "pg_ctl", "createdb"]
    missing = [name for name in needed if not (PG_BIN / name).exists()]
    if missing:
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN} (missing {missing}); "
                    "install postgresql-15 or set STREAMREC_TEST_PG_BIN")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no `{PG_USER}` OS user to own the cluster")
    # Not pytest's tmp_path: its parents are mode 0700 root, which the postgres user cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="streamrec-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if os.geteuid() == 0:
        for path in (root, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    started = False
    try:
        _pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--no-locale", "--no-sync"])
        _pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        started = True
        _pg([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dagster"])
        yield port
    except AssertionError:
        if log.exists():
            print(log.read_text()[-4000:])
        raise
    finally:
        if started:
            subprocess.run(_as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dagster_home(postgres, tmp_path, monkeypatch):
    """A DAGSTER_HOME whose dagster.yaml is deploy/dagster.yaml's `storage:` section (+ telemetry off)."""
    deploy = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": deploy["storage"], "telemetry": {"enabled": False}}, sort_keys=False)
    )
    pg_env = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres),
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "unused-trust-auth",
        "DAGSTER_PG_DB": "dagster",
    }
    for name, value in pg_env.items():  # for the instance opened in this process
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_"))}
    env.update(pg_env, DAGSTER_HOME=str(home), STREAMREC_HOME=str(tmp_path / "streamrec"), PYTHONWARNINGS="ignore",
               STREAMREC_EXECUTOR="in_process")  # this test is about instance storage
    return home, env, postgres


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_cli_materialises_into_postgres(pg_dagster_home):
    import dagster as dg
    import psycopg2

    home, env, port = pg_dagster_home
    _run([str(BIN / "streamrec"), "generate", "--start", DAYS[0], "--end", DAYS[-1], "--events-per-day", "300"], env)
    _run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
          "--select", SELECTION, "--partition-range", f"{DAYS[0]}...{DAYS[-1]}"], env)

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        runs = instance.get_runs()
        assert len(runs) == 1, [(r.run_id, r.status) for r in runs]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].tags.get("dagster/asset_partition_range_start") == DAYS[0]
        assert runs[0].tags.get("dagster/asset_partition_range_end") == DAYS[-1]
        for asset in ("raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity"):
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(DAYS), asset
        for asset in ("user_catalog", "item_catalog"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
        run_id = runs[0].run_id

    # Straight from the database: the run is a row of Dagster's `runs` table in `dagster`.
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="dagster")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id, status FROM runs")
            rows = cur.fetchall()
            cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,))
            events = cur.fetchone()[0]
    finally:
        conn.close()
    assert rows == [(run_id, "SUCCESS")]
    assert events > 0
