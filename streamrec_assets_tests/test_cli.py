"""The real command line: `streamrec generate` and `dagster asset materialize --partition-range`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ASSETS = "user_catalog,item_catalog,raw_events,raw_events_dlq,user_daily_activity,item_daily_activity,user_features,item_features"


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli_env(tmp_path):
    home = tmp_path / "streamrec"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(STREAMREC_HOME=str(home), DAGSTER_HOME=str(dagster_home), PYTHONWARNINGS="ignore")
    return env


def test_generate_then_materialize_a_partition_range(cli_env):
    gen = run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-04",
               "--events-per-day", "500"], cli_env)
    assert gen.returncode == 0, gen.stderr
    mat = run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
               "--select", ASSETS, "--partition-range", "2026-01-01...2026-01-04"], cli_env)
    assert mat.returncode == 0, mat.stdout[-3000:] + mat.stderr[-3000:]
    assert "RUN_SUCCESS" in mat.stdout + mat.stderr

    # One run covered the whole range; the instance records every partition.
    os.environ["DAGSTER_HOME"], saved = cli_env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1
            for asset in ASSETS.split(",")[2:]:
                keys = instance.get_materialized_partitions(dg.AssetKey(asset))
                assert keys == {"2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"}, asset
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = saved
    storage = Path(cli_env["STREAMREC_HOME"]) / "storage"
    assert sorted(p.name for p in (storage / "user_features").iterdir()) == [
        f"date=2026-01-0{i}" for i in range(1, 5)
    ]


def test_materialize_fails_clearly_when_landing_day_missing(cli_env):
    gen = run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-01",
               "--events-per-day", "300"], cli_env)
    assert gen.returncode == 0, gen.stderr
    mat = run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
               "--select", ASSETS, "--partition-range", "2026-01-01...2026-01-02"], cli_env)
    assert mat.returncode != 0
    assert "Landing day 2026-01-02 has not been delivered" in mat.stdout + mat.stderr
