"""Integration: Feast, training examples, models, MLflow registry and serving on the 32-day graph.

Everything is real: Feast with its DuckDB offline store and SQLite online store, XGBoost,
MLflow with a SQLite backend, all under the test's temporary root.
"""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

from streamrec_assets.core.training import leaked_rows
from streamrec_assets.definitions import build_resources
from streamrec_assets.storage import TableStore, read_parquet
from streamrec_assets_tests.conftest import END, START, assert_online_equals_offline, run_range

pytestmark = pytest.mark.slow
NAME = "streamrec-ranker"
LINEAGE_KEYS = ("git_sha", "code_versions", "config_hash", "upstream_partitions", "data_versions",
                "feast_project", "feature_views", "mlflow_run_id", "packages", "input_fingerprint")


def days(start: str, end: str) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end, freq="D")]


def read(settings, asset: str, keys: list[str]) -> pd.DataFrame:
    store = TableStore(settings.storage_uri)
    frames = [read_parquet(store.partition_path(asset, k)) for k in keys]
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


@pytest.fixture(scope="module")
def client(graph_32):
    from mlflow import MlflowClient

    settings, _, _ = graph_32
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def test_graph_succeeds_with_every_check(graph_32):
    _, _, result = graph_32
    assert result.success
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == []


def test_training_examples_are_point_in_time_correct(graph_32):
    """No feature newer than the example, and Feast's join equals a brute-force as-of join."""
    settings, _, _ = graph_32
    examples = read(settings, "training_examples", days("2026-01-20", "2026-01-23"))
    assert len(examples) > 500
    assert leaked_rows(examples) == 0
    assert not [c for c in examples.columns if c.endswith("__date")], "the partition day is no feature"

    features = {v: read(settings, v, days(START, END)) for v in ("user_features", "item_features")}
    sample = examples.sample(n=300, random_state=0)
    for view, key in (("user_features", "user_id"), ("item_features", "item_id")):
        table = features[view]
        for _, row in sample.iterrows():
            rows = table[(table[key] == row[key]) & (table["feature_timestamp"] <= row["event_timestamp"])
                         & (table["feature_timestamp"] >= row["event_timestamp"] - pd.Timedelta(days=7))]
            got = row[f"{view}__plays_7d"]
            if rows.empty:
                assert pd.isna(got), (view, row["example_id"])
            else:
                latest = rows.loc[rows["feature_timestamp"].idxmax()]
                assert latest["date"] < row["date"], "a feature row of an earlier day"
                for feature in ("plays_7d", "history_days", "active_days_28d", "watch_seconds_28d"):
                    assert row[f"{view}__{feature}"] == latest[feature], (view, feature, row["example_id"])


def test_evaluation_metrics_and_mlflow_run(graph_32, client):
    settings, instance, _ = graph_32
    metrics = read(settings, "model_evaluation", [END])
    assert set(metrics["method"]) == {"ours", "popularity", "oracle"}
    assert metrics[["ndcg_at_20", "recall_at_100"]].notna().all().all()
    assert ((metrics[["ndcg_at_20", "recall_at_100"]] >= 0) & (metrics[["ndcg_at_20", "recall_at_100"]] <= 1)).all().all()
    event = instance.get_latest_materialization_event(dg.AssetKey("model_evaluation")).asset_materialization
    assert {"ndcg_at_20", "popularity_ndcg_at_20", "oracle_ndcg_at_20", "metrics"} <= set(event.metadata)

    # The version registered for END (the challenger alias may have moved since: other tests re-run days).
    (version,) = client.search_model_versions(f"name='{NAME}' and tags.partition='{END}'")
    run = client.get_run(version.run_id)
    for name in ("ndcg_at_20", "recall_at_100", "popularity_ndcg_at_20", "popularity_recall_at_100",
                 "oracle_ndcg_at_20"):
        assert name in run.data.metrics, name
    ours = metrics.set_index("method").loc["ours"]
    assert run.data.metrics["ndcg_at_20"] == pytest.approx(ours["ndcg_at_20"])
    by = metrics.set_index("method")["ndcg_at_20"]
    captured = (by["ours"] - by["popularity"]) / (by["oracle"] - by["popularity"])
    assert run.data.metrics["oracle_lift_captured"] == pytest.approx(captured)
    assert event.metadata["oracle_lift_captured"].value == pytest.approx(captured)


def test_oracle_lift_captured_per_day(graph_32):
    """Each evaluated day with oracle rows (the generator writes them) carries oracle_lift_captured
    as a plain float: the share of the oracle's NDCG@20 headroom over popularity the ranker gets."""
    settings, instance, _ = graph_32
    seen = {}
    for day in days(START, END):
        metrics = read_parquet(TableStore(settings.storage_uri).partition_path("model_evaluation", day))
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("model_evaluation"), asset_partitions=[day]), limit=1
        ).records[0].asset_materialization
        if metrics.empty:
            assert "oracle_lift_captured" not in record.metadata
            continue
        by = metrics.set_index("method")["ndcg_at_20"]
        if not by["oracle"] > by["popularity"]:  # no headroom: the metric is left out
            assert "oracle_lift_captured" not in record.metadata
            continue
        value = record.metadata["oracle_lift_captured"].value
        assert isinstance(value, float)
        assert value == pytest.approx((by["ours"] - by["popularity"]) / (by["oracle"] - by["popularity"]))
        seen[day] = value
    print("oracle_lift_captured per day:", {d: round(v, 4) for d, v in seen.items()})
    assert len(seen) >= 25


def test_ranking_model_is_xgboost_ubjson(graph_32):
    settings, _, _ = graph_32
    card = read(settings, "ranking_model", [END]).iloc[0]
    assert card["status"] == "ok" and card["model_uri"].endswith("model.ubj")
    with open(card["model_uri"], "rb") as fh:
        head = fh.read(1)
    assert head == b"{"
    early = read(settings, "ranking_model", [START]).iloc[0]
    assert early["status"] == "insufficient_history", "day one has no history: handled, not failed"


def test_registry_champion_gate_and_lineage(graph_32, client):
    settings, _, _ = graph_32
    decisions = read(settings, "registered_model", days(START, END))
    assert (decisions.loc[decisions["date"] <= "2026-01-02", "status"] == "skipped").all()
    registered = decisions[decisions["status"] != "skipped"]
    assert len(registered) >= 25
    first = registered.iloc[0]
    assert first["status"] == "promoted" and "first registered model" in first["reason"]
    tol = 0.005
    for _, row in registered.iloc[1:].iterrows():
        if row["status"] == "promoted":
            assert row["challenger_ndcg"] >= row["champion_ndcg"] - tol
        elif row["status"] == "champion_kept":
            assert row["challenger_ndcg"] < row["champion_ndcg"] - tol
            assert "<" in row["reason"]

    champion = client.get_model_version_by_alias(NAME, "champion")
    assert int(champion.version) == int(decisions.iloc[-1]["champion_version"])
    for key in LINEAGE_KEYS:
        assert f"lineage.{key}" in champion.tags, key
    assert json.loads(champion.tags["lineage.feature_views"]).keys() == {"user_features", "item_features"}
    assert champion.tags["lineage.mlflow_run_id"] == champion.run_id
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    record = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/lineage.json")
    assert record["partition"] == champion.tags["partition"]
    assert record["upstream_partitions"]["ranking_model"] == [record["partition"]]

    # The first registered day's windows start with the history: no partition before START, no null version.
    (early,) = client.search_model_versions(f"name='{NAME}' and tags.partition='{first['date']}'")
    lineage = mlflow.artifacts.load_dict(f"runs:/{early.run_id}/lineage.json")
    window = lineage["upstream_partitions"]["training_examples"]
    assert window == days(START, (pd.Timestamp(first["date"]) - pd.Timedelta(days=2)).strftime("%Y-%m-%d"))
    assert all(v is not None for versions in lineage["data_versions"].values() for v in versions.values())


def test_rematerialising_does_not_register_a_twin(graph_32, client):
    settings, instance, _ = graph_32
    before = len(client.search_model_versions(f"name='{NAME}'"))
    result = run_range(settings, instance, END, END, selection="registered_model")
    assert result.success
    assert len(client.search_model_versions(f"name='{NAME}'")) == before
    assert bool(read(settings, "registered_model", [END]).iloc[0]["reused"])


def test_batch_recommendations_from_champion_and_online_features(graph_32, client):
    settings, instance, _ = graph_32
    recs = read(settings, "batch_recommendations", [END])
    events = read(settings, "raw_events", [END])
    assert set(recs["user_id"]) == set(events["user_id"]), "every user active on the day is covered"
    per_user = recs.groupby("user_id")["rank"].agg(["min", "max", "size"])
    assert (per_user["min"] == 1).all() and (per_user["size"] == per_user["max"]).all() and (per_user["size"] <= 20).all()
    assert (per_user["size"] == 20).mean() > 0.95
    assert set(recs["feature_source"]) == {"online"}
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert set(recs["model_version"]) == {int(champion.version)}
    earlier = read(settings, "batch_recommendations", ["2026-01-20"])
    assert set(earlier["feature_source"]) == {"offline"}, "backfilled days read as-of features offline"
    meta = instance.get_latest_materialization_event(dg.AssetKey("batch_recommendations")).asset_materialization.metadata
    assert meta["online_lookup_requests"].value > 0
    assert 0 < meta["online_lookup_p50_ms"].value <= meta["online_lookup_p99_ms"].value


def test_online_and_offline_features_are_identical(graph_32):
    """Training/serving skew: the same entities at the same time read the same values."""
    settings, _, _ = graph_32
    store = build_resources(settings)["feast"].store()
    assert assert_online_equals_offline(store, settings, END) > 30
