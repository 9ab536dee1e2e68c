"""Shared fixtures: tiny generated landing zones and isolated settings."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from streamrec_assets import datagen
from streamrec_assets.settings import Settings

# Tests must not inherit a developer's storage configuration.
for _var in ("STREAMREC_STORAGE_URI", "STREAMREC_LANDING_URI", "STREAMREC_S3_ENDPOINT_URL",
             "STREAMREC_FEAST_ONLINE_STORE", "STREAMREC_REDIS_URL", "MLFLOW_TRACKING_URI", "STREAMREC_MAX_FAILURE_RATE",
             "STREAMREC_PROMOTION_TOLERANCE"):
    os.environ.pop(_var, None)

START = "2026-01-01"
END = "2026-02-01"
# Pinned: otherwise the partitions would start where a local `make demo` started (<home>/start_date).
os.environ["STREAMREC_START_DATE"] = START
SEED = 11
TINY_EVENTS = 600


def tiny_settings(root) -> Settings:
    # The MLflow URI is explicit: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI into this
    # process's environment, which Settings would otherwise pick up from an earlier test's graph.
    return Settings(
        home=str(root),
        storage_uri=str(root / "storage"),
        landing_uri=str(root / "landing"),
        start_date=START,
        mlflow_tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db",
    )


@pytest.fixture(scope="session")
def tiny_world():
    return datagen.World.build(SEED, datagen.default_users(TINY_EVENTS), datagen.default_items(TINY_EVENTS))


@pytest.fixture(scope="session")
def landing_32(tmp_path_factory):
    """A landing zone with 32 generated days (2026-01-01..2026-02-01) of tiny data."""
    root = tmp_path_factory.mktemp("landing32")
    datagen.generate(str(root / "landing"), START, "2026-02-01", TINY_EVENTS, SEED)
    return root


def run_range(settings, instance, start, end, selection="*", raise_on_error=True, run_config=None):
    """Materialise ``selection`` over [start, end] as one single-run range, in process."""
    from streamrec_assets.definitions import all_assets, build_resources

    return dg.materialize(
        all_assets,
        selection=selection,
        resources=build_resources(settings),
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
        raise_on_error=raise_on_error,
        run_config=run_config,
    )


@pytest.fixture(scope="session")
def graph_32(landing_32, tmp_path_factory):
    """The whole graph materialised for 32 days of tiny data in a temporary DAGSTER_HOME,
    with real Feast (DuckDB + SQLite), XGBoost and MLflow (SQLite) under the same root."""
    settings = tiny_settings(landing_32)
    home = tmp_path_factory.mktemp("dagster_home")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_range(settings, instance, START, END)
        yield settings, instance, result


def assert_online_equals_offline(store, settings, day: str, n: int = 50) -> int:
    """Training/serving skew check: for (user, item) pairs with features on ``day``, the online
    store returns exactly the values the offline store gives as of the end of that day.
    Returns the number of feature columns compared."""
    import numpy as np
    import pandas as pd

    from streamrec_assets.feature_repo import feature_refs, historical_features, online_features
    from streamrec_assets.storage import TableStore, read_parquet

    io = TableStore(settings.storage_uri)
    users = read_parquet(io.partition_path("user_features", day))["user_id"].to_numpy()[:n]
    items = read_parquet(io.partition_path("item_features", day))["item_id"].to_numpy()[:n]
    k = min(len(users), len(items))
    assert k >= 10
    pairs = pd.DataFrame({"user_id": users[:k], "item_id": items[:k]})
    refs = feature_refs(store)
    as_of = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    offline = historical_features(store, pairs.assign(event_timestamp=as_of), refs)
    online = online_features(store, pairs["user_id"], pairs["item_id"], refs)
    columns = [r.replace(":", "__") for r in refs]
    assert online[columns].notna().to_numpy().mean() > 0.5, "the features have values online"
    for col in columns:
        a, b = offline[col].to_numpy(), online[col].to_numpy()
        if offline[col].dtype == object or online[col].dtype == object:
            assert list(map(str, a)) == list(map(str, b)), col
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=0, atol=0, equal_nan=True, err_msg=col)
    return len(columns)
