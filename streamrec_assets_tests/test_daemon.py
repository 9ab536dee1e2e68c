"""The real `dagster-daemon`: a new landing day flows to a registered model with no manual step.

History (the days before yesterday) is materialised first through the CLI; then the
daemon runs with the code location's default-on sensors: `landing_zone_sensor`
requests the new day's raw_events, and declarative automation (`streamrec_automation`)
carries it through features, Feast, training, models, the registry and serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from streamrec_assets import datagen
from streamrec_assets_tests.servers import stop_group

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EVENTS = 500
TIMEOUT_S = 360


@pytest.fixture
def env(tmp_path):
    today = datetime.now(UTC).date()
    start = (today - timedelta(days=16)).isoformat()
    home = tmp_path / "streamrec"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_"))}
    env.update(
        STREAMREC_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        STREAMREC_START_DATE=start,
        STREAMREC_SENSOR_INTERVAL_SECONDS="5",
        # Sensor- and automation-launched runs execute their steps in the run's process: this test
        # is about triggers, and a step process per step would dominate its time.
        STREAMREC_EXECUTOR="in_process",
        PYTHONWARNINGS="ignore",
    )
    return env


def materialized(dagster_home: str, asset: str, day: str) -> bool:
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = dagster_home
    try:
        with dg.DagsterInstance.get() as instance:
            return day in instance.get_materialized_partitions(dg.AssetKey(asset))
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = saved


def runs(dagster_home: str) -> list:
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = dagster_home
    try:
        with dg.DagsterInstance.get() as instance:
            return list(instance.get_runs())
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = saved


def test_new_landing_day_flows_to_a_registered_model(env, tmp_path):
    start = env["STREAMREC_START_DATE"]
    today = datetime.now(UTC).date()
    history_end = (today - timedelta(days=2)).isoformat()
    new_day = (today - timedelta(days=1)).isoformat()  # the latest daily partition
    landing = f"{env['STREAMREC_HOME']}/landing"
    datagen.generate(landing, start, history_end, EVENTS, seed=5)
    history = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions", "--select", "*",
         "--partition-range", f"{start}...{history_end}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert history.returncode == 0, history.stdout[-3000:] + history.stderr[-3000:]
    assert not materialized(env["DAGSTER_HOME"], "registered_model", new_day)

    datagen.generate(landing, new_day, new_day, EVENTS, seed=5)  # the new delivery (file + marker)
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                pytest.fail(f"dagster-daemon exited ({daemon.returncode}):\n{(tmp_path / 'daemon.log').read_text()[-3000:]}")
            if materialized(env["DAGSTER_HOME"], "registered_model", new_day):
                break
            time.sleep(5)
        else:
            states = [(r.job_name, r.status.value, r.tags.get("dagster/partition")) for r in runs(env["DAGSTER_HOME"])][:10]
            pytest.fail(f"{new_day} did not reach registered_model in {TIMEOUT_S}s; runs: {states}\n"
                        f"{(tmp_path / 'daemon.log').read_text()[-3000:]}")
    finally:
        stop_group(daemon)
        log.close()

    launched = [r for r in runs(env["DAGSTER_HOME"]) if r.tags.get("dagster/partition") == new_day]
    sensors = {r.tags.get("dagster/sensor_name") for r in launched}
    assert "landing_zone_sensor" in sensors, sensors
    assert "streamrec_automation" in sensors, sensors
    for asset in ("user_features", "feast_feature_views", "training_examples", "ranking_model", "model_evaluation"):
        assert materialized(env["DAGSTER_HOME"], asset, new_day), asset
    # History was ingested by the CLI from the same files: the sensor did not ingest it again.
    ingest_runs = [r for r in runs(env["DAGSTER_HOME"]) if r.tags.get("dagster/sensor_name") == "landing_zone_sensor"
                   and r.tags.get("dagster/partition")]
    assert {r.tags["dagster/partition"] for r in ingest_runs} == {new_day}
