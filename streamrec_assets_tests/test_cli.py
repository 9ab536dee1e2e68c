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
ALL_PARTITIONED = (
    "raw_events raw_events_dlq user_daily_activity item_daily_activity daily_coplay_pairs daily_coplay_history "
    "daily_coplay_edges user_features item_features feast_feature_views "
    "training_examples retrieval_model ranking_model model_evaluation registered_model batch_recommendations"
).split()


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli_env(tmp_path):
    home = tmp_path / "streamrec"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(STREAMREC_HOME=str(home), DAGSTER_HOME=str(dagster_home), PYTHONWARNINGS="ignore")
    return env


def test_generate_then_materialize_the_whole_graph_over_a_range(cli_env):
    gen = run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-04",
               "--events-per-day", "500"], cli_env)
    assert gen.returncode == 0, gen.stderr
    mat = run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
               "--select", "*", "--partition-range", "2026-01-01...2026-01-04"], cli_env)
    assert mat.returncode == 0, mat.stdout[-3000:] + mat.stderr[-3000:]
    assert "RUN_SUCCESS" in mat.stdout + mat.stderr

    # One run covered the whole range; the instance records every partition.
    os.environ["DAGSTER_HOME"], saved = cli_env["DAGSTER_HOME"], os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1
            for asset in ALL_PARTITIONED:
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

    # The run registered a champion in the default MLflow store under STREAMREC_HOME.
    from mlflow import MlflowClient

    uri = f"sqlite:///{cli_env['STREAMREC_HOME']}/mlflow/mlflow.db"
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("streamrec-ranker", "champion")
    assert champion.tags["partition"] in {"2026-01-03", "2026-01-04"}

    # The same Feast objects through the feast CLI.
    conf = run([str(BIN / "streamrec"), "feast-config"], cli_env)
    assert conf.returncode == 0, conf.stderr
    yaml_path = conf.stdout.splitlines()[0]
    views = run([str(BIN / "feast"), "-c", str(REPO / "streamrec_assets" / "feature_repo"), "-f", yaml_path,
                 "feature-views", "list"], cli_env)
    assert views.returncode == 0, views.stderr[-2000:]
    assert "user_features" in views.stdout and "item_features" in views.stdout

    # Either ingest table can be selected alone: the step writes the day's two tables together and
    # records both (the unselected one as a runtime materialisation), so the UI stays in sync.
    for selected, day in (("raw_events", "2026-01-02"), ("raw_events_dlq", "2026-01-03")):
        alone = run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
                     "--select", selected, "--partition", day], cli_env)
        assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    with _instance(cli_env) as instance:
        last = instance.get_runs(limit=1)[0]
        for asset in ("raw_events", "raw_events_dlq"):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=["2026-01-03"]), limit=1
            ).records[0]
            assert record.run_id == last.run_id, asset


def _instance(env):
    """The CLI's Dagster instance, opened in this process."""
    import contextlib

    @contextlib.contextmanager
    def opened():
        saved = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
        try:
            with dg.DagsterInstance.get() as instance:
                yield instance
        finally:
            if saved is None:
                os.environ.pop("DAGSTER_HOME")
            else:
                os.environ["DAGSTER_HOME"] = saved

    return opened()


def test_parallel_backfill_of_the_whole_graph(cli_env):
    """`streamrec backfill --chunks 3`: three sub-range runs per layer at once, on one instance
    (Feast registry, MLflow registry and storage shared), every partition materialised once."""
    gen = run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-03",
               "--events-per-day", "300"], cli_env)
    assert gen.returncode == 0, gen.stderr
    # Each of the ~25 small runs executes in its own process (STREAMREC_EXECUTOR=in_process): a step
    # process per run would only add start-up time here; the default executor is covered above.
    backfill = subprocess.run([str(BIN / "streamrec"), "backfill", "--start", "2026-01-01", "--end", "2026-01-03",
                               "--chunks", "3"], env={**cli_env, "STREAMREC_EXECUTOR": "in_process"}, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
    assert backfill.returncode == 0, backfill.stdout[-4000:] + backfill.stderr[-3000:]
    assert "backfill complete" in backfill.stdout
    with _instance(cli_env) as instance:
        runs = instance.get_runs()
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for asset in ALL_PARTITIONED:
            keys = instance.get_materialized_partitions(dg.AssetKey(asset))
            assert keys == {"2026-01-01", "2026-01-02", "2026-01-03"}, asset


def test_materialize_fails_clearly_when_landing_day_missing(cli_env):
    gen = run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-01",
               "--events-per-day", "300"], cli_env)
    assert gen.returncode == 0, gen.stderr
    mat = run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
               "--select", ASSETS, "--partition-range", "2026-01-01...2026-01-02"], cli_env)
    assert mat.returncode != 0
    assert "Landing day 2026-01-02 has not been delivered" in mat.stdout + mat.stderr
