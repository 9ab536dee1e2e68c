"""Integration: materialise ingest + features for 32 days of tiny data in a temporary DAGSTER_HOME."""

from __future__ import annotations

import gzip
import shutil
from datetime import date, timedelta

import dagster as dg
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.landing import Landing
from streamrec_assets.storage import TableStore, read_parquet, storage_path
from streamrec_assets_tests.conftest import END, START, TINY_EVENTS, run_range, tiny_settings

pytestmark = pytest.mark.slow
PARTITIONED = ["raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity", "user_features",
               "item_features"]


def days(start: str, end: str) -> list[str]:
    a, b = date.fromisoformat(start), date.fromisoformat(end)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


@pytest.fixture(scope="module")
def pipeline(graph_32):
    return graph_32


def store(settings) -> TableStore:
    return TableStore(settings.storage_uri)


def read(settings, asset: str, keys: list[str]) -> pd.DataFrame:
    frames = [read_parquet(store(settings).partition_path(asset, k)) for k in keys]
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


def test_every_partition_materialised_and_checks_pass(pipeline):
    settings, instance, result = pipeline
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert evaluations, "contract checks ran"
    failed = [(e.asset_key.to_user_string(), e.check_name, e.metadata) for e in evaluations if not e.passed]
    assert failed == []
    checked = {e.asset_key.to_user_string() for e in evaluations}
    assert set(PARTITIONED) | {"user_catalog", "item_catalog"} <= checked
    for asset in PARTITIONED:
        status = instance.get_status_by_partition(
            dg.AssetKey(asset), days(START, END), partitions_def=dg.DailyPartitionsDefinition("2026-01-01")
        )
        assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}, asset
        for day in days(START, END):
            assert store(settings).partition_path(asset, day).exists(), (asset, day)


def test_landing_records_reconcile(pipeline):
    settings, _, _ = pipeline
    keys = days(START, END)
    landing = Landing(settings.landing_uri)
    records = sum(landing.read_marker(d).records for d in keys)
    valid, rejected = read(settings, "raw_events", keys), read(settings, "raw_events_dlq", keys)
    assert records == TINY_EVENTS * len(keys)
    assert len(valid) + len(rejected) == records
    assert valid["event_id"].is_unique
    per_day = valid.groupby("date").size()
    assert list(per_day.index) == keys


def test_features_equal_recomputation_from_raw_events(pipeline):
    """user_features of the last day == the window recomputed from 28 days of stored raw events."""
    from streamrec_assets.core.features import rolling_features, user_daily_activity
    settings, _, _ = pipeline
    window = days("2026-01-05", END)
    raw = read(settings, "raw_events", window)
    items = read_parquet(store(settings).unpartitioned_path("item_catalog"))
    expected = rolling_features(user_daily_activity(raw, items), [END], "user_id", first_day=START)
    got = read(settings, "user_features", [END])
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    early = read(settings, "user_features", ["2026-01-01", "2026-01-10"]).groupby("date")["history_days"].first()
    assert early.to_dict() == {"2026-01-01": 1, "2026-01-10": 10}


def test_asset_metadata_tells_the_story(pipeline):
    settings, instance, _ = pipeline
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_events"), asset_partitions=[END]), limit=1
    ).records
    meta = records[0].asset_materialization.metadata
    for key in ("dagster/row_count", "landing_records", "rejected", "duplicates", "failure_rate",
                "landing_sha256", "preview", "dagster/column_schema"):
        assert key in meta, key
    assert meta["rejected"].value + meta["valid"].value == meta["landing_records"].value
    # each partition of the single-run range carries its own figures, equal to what storage holds
    for day in ("2026-01-01", "2026-01-09", END):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_events"), asset_partitions=[day]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["dagster/row_count"].value == len(read(settings, "raw_events", [day]))
    feats = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("user_features"), asset_partitions=["2026-01-01"]), limit=1
    ).records[0].asset_materialization.metadata
    assert feats["feature_columns"].value >= 30
    assert feats["history_days"].value == 1
    # checks are evaluated per partition, against that partition's materialisation
    check = dg.AssetCheckKey(dg.AssetKey("raw_events"), "contract")
    infos = {i.partition_key: i for i in instance.event_log_storage.get_asset_check_partition_info([check])}
    assert {"2026-01-01", "2026-01-09", END} <= set(infos)
    assert all(i.latest_execution_status.value == "SUCCEEDED" for k, i in infos.items() if k)
    assert all(i.latest_target_materialization_storage_id == i.latest_materialization_storage_id
               for k, i in infos.items() if k)


def test_rematerialising_a_partition_replaces_it(pipeline):
    settings, instance, _ = pipeline
    before = read(settings, "raw_events", ["2026-01-15"])
    selection = dg.AssetSelection.assets("raw_events", "raw_events_dlq").downstream()
    result = run_range(settings, instance, "2026-01-15", "2026-01-15", selection=selection)
    assert result.success
    pd.testing.assert_frame_equal(read(settings, "raw_events", ["2026-01-15"]), before)


def test_failure_budget_stops_the_run_and_downstream(landing_32, tmp_path):
    settings = tiny_settings(tmp_path)
    shutil.copytree(landing_32 / "landing", tmp_path / "landing")
    bad_day = "2026-01-02"
    world = datagen.World.build(11, datagen.default_users(TINY_EVENTS), datagen.default_items(TINY_EVENTS))
    data = datagen.generate_day(world, bad_day, TINY_EVENTS, seed=11, malformed_rate=0.05)
    landing = Landing(settings.landing_uri)
    landing.write_day(bad_day, data, len(gzip.decompress(data).splitlines()))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = run_range(settings, instance, "2026-01-01", "2026-01-03", raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        text = str(failure.event_specific_data.error) + str(failure.event_specific_data.user_failure_data)
        assert f"events-{bad_day}.jsonl.gz" in text and "5.00%" in text and "Top reasons" in text
        # The day before the bad one was published (complete and audited) and is recorded as such;
        # the bad day and the days after it are neither published nor recorded.
        for asset in ("raw_events", "raw_events_dlq"):
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {"2026-01-01"}, asset
        for downstream in ("user_daily_activity", "user_features", "item_features"):
            assert instance.get_latest_materialization_event(dg.AssetKey(downstream)) is None
        # Neither table of the bad day is published; both are kept in quarantine for inspection.
        assert not store(settings).partition_path("raw_events", bad_day).exists()
        assert not store(settings).partition_path("raw_events_dlq", bad_day).exists()
        where = failure.event_specific_data.user_failure_data.metadata["location"].value
        dlq = read_parquet(storage_path(f"{where}/raw_events_dlq/date={bad_day}/data.parquet"))
        assert len(dlq) >= 0.05 * TINY_EVENTS


def test_missing_upstream_partition_is_reported_by_name(pipeline, tmp_path):
    settings, _, _ = pipeline
    isolated = tiny_settings(tmp_path)
    shutil.copytree(settings.storage_uri, isolated.storage_uri)
    shutil.rmtree(f"{isolated.storage_uri}/user_daily_activity/date=2026-01-20")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = run_range(isolated, instance, "2026-01-25", "2026-01-25", selection="user_features",
                           raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "user_daily_activity" in message and "2026-01-20" in message and "Materialise them first" in message


def test_ranker_rows_carry_the_taste_model_of_the_day_before(pipeline):
    """Training examples and evaluation slates of day X carry taste_model[X-1]'s scores (as of X 00:00);
    the first day has no model before it; the outcomes reconcile with the labelled examples."""
    from streamrec_assets.assets.models import EVALUATION_SET
    from streamrec_assets.assets.taste import load_taste
    from streamrec_assets.core.taste import TASTE_FEATURES
    from streamrec_assets.resources import Storage

    settings, _, _ = pipeline
    storage = Storage(base_uri=settings.storage_uri)
    first = read(settings, "training_examples", [START])
    assert first[TASTE_FEATURES].isna().all().all()
    for day, before in (("2026-01-20", "2026-01-19"), (END, days(START, END)[-2])):
        examples = read(settings, "training_examples", [day])
        taste = load_taste(storage, before)
        expected = taste.scores(examples["user_id"].to_numpy(), examples["item_id"].to_numpy(),
                                examples["item_genre_code"].to_numpy())
        pd.testing.assert_frame_equal(examples[TASTE_FEATURES].reset_index(drop=True), expected,
                                      check_dtype=False)
        assert examples["taste_score"].notna().mean() > 0.5, day
        outcomes = read(settings, "user_item_daily_outcomes", [day])
        assert int(outcomes["impressions"].sum()) == len(examples)
        assert int(outcomes["positives"].sum()) == int((examples["label"] > 0).sum())
    # the promotion gate's slates of END are those of END-1, with the taste of END-2
    slates = storage.read_table("model_evaluation", END, EVALUATION_SET)
    assert set(slates["date"]) == {days(START, END)[-2]}
    taste = load_taste(storage, days(START, END)[-3])
    expected = taste.scores(slates["user_id"].to_numpy(), slates["item_id"].to_numpy(),
                            slates["item_genre_code"].to_numpy())
    pd.testing.assert_frame_equal(slates[TASTE_FEATURES].reset_index(drop=True), expected, check_dtype=False)
    card = read(settings, "taste_model", [END]).iloc[0]
    assert card["status"] == "ok" and card["window_days"] == 28 and card["trained_through"] == END


def test_the_promotion_gate_is_decided_on_the_day_before_the_hold_out(pipeline):
    """Train [D-15, D-3], early-stop D-2, gate D-1, report D: every judged decision names D-1."""
    from datetime import date as _date

    settings, _, _ = pipeline
    cards = read(settings, "ranking_model", days(START, END)).set_index("date")
    trained = cards[cards["status"] == "ok"]
    assert len(trained)
    for day, card in trained.iterrows():
        assert (_date.fromisoformat(day) - _date.fromisoformat(card["validation_day"])).days == 2
    rows = read(settings, "registered_model", days(START, END))
    judged = rows[rows["decision"].isin(["promoted", "champion_kept"]) & (rows["champion_version"] >= 1)
                  & rows["reason"].str.contains("challenger NDCG@20")]
    assert len(judged)
    for _, row in judged.iterrows():
        gate = (_date.fromisoformat(row["date"]) - timedelta(days=1)).isoformat()
        assert row["reason"].endswith(f"on {gate}"), row["reason"]
