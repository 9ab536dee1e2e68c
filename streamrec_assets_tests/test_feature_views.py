"""Feast feature views declared in code from the contracts; stored partitions checked against them;
``oracle_lift_captured``; lineage windows clipped at the start of history. Fast: no Dagster run."""

from __future__ import annotations

import re

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from streamrec_assets import contracts, datagen
from streamrec_assets.contracts import stored_features, stored_partition_problems
from streamrec_assets.core.features import (
    genre_slug,
    item_daily_activity,
    rolling_features,
    user_daily_activity,
)
from streamrec_assets.core.ingest import ingest_day
from streamrec_assets.feature_repo import (
    FEATURE_VIEWS,
    NON_FEATURES,
    FeastSettings,
    declared_fields,
    feature_objects,
)
from streamrec_assets.landing import decompress
from streamrec_assets.storage import storage_path, write_parquet

FIRST = "2026-01-01"
DAYS = [f"2026-01-{d:02d}" for d in range(1, 5)]
KEYS = {"user_features": "user_id", "item_features": "item_id"}


@pytest.fixture(scope="module")
def items(tiny_world) -> pd.DataFrame:
    return tiny_world.items.astype({"duration_seconds": "float64"})


@pytest.fixture(scope="module")
def events(tiny_world) -> pd.DataFrame:
    frames = []
    for day in DAYS:
        data = decompress(datagen.generate_day(tiny_world, day, 400, seed=3))
        frames.append(ingest_day(data, day, tiny_world.users["user_id"], tiny_world.items["item_id"]).valid)
    return pd.concat(frames, ignore_index=True)


def feature_tables(events: pd.DataFrame, items: pd.DataFrame, day: str) -> dict[str, pd.DataFrame]:
    """The day's user_features / item_features as the feature assets compute them."""
    return {
        "user_features": rolling_features(user_daily_activity(events, items), [day], "user_id", FIRST),
        "item_features": rolling_features(item_daily_activity(events, items), [day], "item_id", FIRST),
    }


def contract_features(view: str, genres) -> list[str]:
    """The contract's columns but keys / date / timestamp, its pattern written out per genre (no shared code)."""
    out = []
    for name, column in contracts.FEATURE_TABLE_SCHEMAS[view].columns.items():
        if name in ("date", "feature_timestamp", KEYS[view]):
            continue
        if column.regex:
            slugs = sorted({re.sub(r"[^a-z0-9]+", "_", g.lower()).strip("_") for g in genres})
            out += [name.replace(".+", s) for s in slugs]
        else:
            out.append(name)
    return out


def write_world(root, tables_by_day: dict[str, dict[str, pd.DataFrame]], items: pd.DataFrame) -> FeastSettings:
    storage = root / "storage"
    write_parquet(items, storage_path(str(storage / "item_catalog.parquet")))
    for day, tables in tables_by_day.items():
        for view, table in tables.items():
            write_parquet(table, storage_path(str(storage / view / f"date={day}" / "data.parquet")))
    return FeastSettings(storage_uri=str(storage), repo_dir=str(root / "feast"))


# ------------------------------------------------------------------------------ declared views


def test_views_are_declared_from_the_contracts_and_the_catalogue_genres(tmp_path, items):
    fs = write_world(tmp_path, {}, items)
    genres = sorted(items["genre"].unique())
    objects = {type(o).__name__ + ":" + o.name: o for o in feature_objects(fs)}  # genres read from storage
    for view in FEATURE_VIEWS:
        fv = objects[f"FeatureView:{view}"]
        assert [f.name for f in fv.features] == contract_features(view, genres)
        assert "date" not in {f.name for f in fv.features} and "feature_timestamp" not in {f.name for f in fv.features}
        assert fv.ttl == pd.Timedelta(days=7)
    user = {f.name: str(f.dtype) for f in objects["FeatureView:user_features"].features}
    assert user["plays_7d"].startswith("Int64") and user["watch_seconds_7d"].startswith("Float64")
    assert sum(name.startswith("genre_share_28d__") for name in user) == len({genre_slug(g) for g in genres}) == 15
    assert "play_rate_7d" in {f.name for f in objects["FeatureView:item_features"].features}


def test_declared_views_equal_what_the_feature_assets_write(events, items):
    """The columns (and Feast types) of computed feature tables are exactly the declared features."""
    declared = declared_fields(genres=items["genre"])
    for view, table in feature_tables(events, items, DAYS[-1]).items():
        assert stored_features(pa.Schema.from_pandas(table, preserve_index=False), NON_FEATURES) == declared[view]


def test_a_new_catalogue_genre_reaches_the_views_without_code_change(events, items):
    renamed = items.assign(genre=np.where(items["item_id"] % 7 == 0, "Space Western", items["genre"]))
    declared = declared_fields(genres=renamed["genre"])
    assert "genre_share_28d__space_western" in declared["user_features"]
    table = feature_tables(events, renamed, DAYS[-1])["user_features"]
    assert stored_features(pa.Schema.from_pandas(table, preserve_index=False), NON_FEATURES) == declared["user_features"]


def test_a_contract_pattern_without_concrete_columns_is_an_error():
    with pytest.raises(ValueError, match="has no concrete columns"):
        contracts._expand_pattern("user_features", "mystery__.+", ["Drama"])


def test_the_catalogue_names_the_genres(tmp_path, caplog):
    from streamrec_assets.errors import NeverMaterializedError

    fs = FeastSettings(storage_uri=str(tmp_path / "storage"), repo_dir=str(tmp_path / "feast"))
    with pytest.raises(NeverMaterializedError, match="item_catalog"):
        declared_fields(fs)  # as feast_feature_views asks
    # The feast CLI / FeastResource.objects() before any catalogue: the views without per-genre features.
    views = {o.name: o for o in feature_objects(fs) if type(o).__name__ == "FeatureView"}
    assert not [f for f in views["user_features"].features if f.name.startswith("genre_share_28d__")]
    assert "no per-genre feature" in caplog.text


# ---------------------------------------------------------------- stored partitions against them


def test_stored_partition_problems_name_missing_extra_and_mistyped_columns():
    declared = {"user_features": {"plays_7d": "Int64", "completion_rate_7d": "Float64", "genre_share_28d__drama": "Float64"}}
    good = dict(declared["user_features"])
    stored = {
        "user_features": {
            "2026-01-01": good,
            "2026-01-02": {"plays_7d": "Float64", "completion_rate_7d": "Float64", "surprise": "Int64"},
        }
    }
    assert stored_partition_problems(declared, {"user_features": {"2026-01-01": good}}) == []
    assert stored_partition_problems(declared, stored) == [
        "user_features date=2026-01-02: missing columns genre_share_28d__drama; extra columns surprise; "
        "mistyped columns plays_7d (Float64, declared Int64)"
    ]


def test_feast_feature_views_refuses_a_partition_that_disagrees(tmp_path, events, items):
    """Before anything is applied: an extra or a missing column in a stored partition fails the step,
    naming the partition and the columns; matching partitions pass."""
    from streamrec_assets.assets.feature_store import require_stored_match_declared, stored_partitions
    from streamrec_assets.resources import Storage

    tables = {day: feature_tables(events, items, day) for day in DAYS[:3]}
    tables[DAYS[1]]["user_features"] = tables[DAYS[1]]["user_features"].assign(plays_3d=1)
    tables[DAYS[2]]["item_features"] = tables[DAYS[2]]["item_features"].drop(columns=["play_rate_7d"])
    fs = write_world(tmp_path, tables, items)
    storage = Storage(base_uri=fs.storage_uri)
    declared = declared_fields(fs)

    require_stored_match_declared(storage, declared, stored_partitions(storage, DAYS[:1], FEATURE_VIEWS))
    with pytest.raises(dg.Failure) as failure:
        require_stored_match_declared(storage, declared, stored_partitions(storage, DAYS, FEATURE_VIEWS))
    message = failure.value.description
    assert "2 stored feature partition(s) disagree" in message
    assert f"- user_features date={DAYS[1]}: extra columns plays_3d" in message
    assert f"- item_features date={DAYS[2]}: missing columns play_rate_7d" in message
    assert not failure.value.allow_retries
    assert failure.value.metadata["partition"].value == DAYS[1]

    # ... and a partition with the old `date` feature's column typed otherwise is still fine: `date` is no feature
    assert "date" not in declared["user_features"] and "date" in NON_FEATURES


# ------------------------------------------------------------------------- oracle_lift_captured


def test_oracle_lift_captured():
    from streamrec_assets.core.evaluation import oracle_lift_captured

    assert oracle_lift_captured(0.5, 0.4, 0.8) == pytest.approx(0.25)
    assert oracle_lift_captured(0.8, 0.4, 0.8) == pytest.approx(1.0)
    assert oracle_lift_captured(0.3, 0.4, 0.6) == pytest.approx(-0.5)  # worse than popularity
    assert oracle_lift_captured(0.5, 0.4, None) is None  # no oracle rows
    assert oracle_lift_captured(0.5, 0.4, 0.4) is None  # no headroom
    assert oracle_lift_captured(0.5, 0.4, 0.3) is None
    assert oracle_lift_captured(float("nan"), 0.4, 0.8) is None


def test_metric_values_carry_oracle_lift_captured_only_with_an_oracle():
    from streamrec_assets.assets.models import metric_values

    table = pd.DataFrame({"method": ["ours", "popularity", "oracle"], "users": [30, 30, 30],
                          "ndcg_at_20": [0.6, 0.5, 0.9], "recall_at_100": [0.7, 0.6, 0.95]})
    values = metric_values(table)
    assert values["oracle_lift_captured"] == pytest.approx(0.25)
    assert isinstance(values["oracle_lift_captured"], float)
    assert metric_values(table) == values  # deterministic: the registry fingerprints these
    assert "oracle_lift_captured" not in metric_values(table[table["method"] != "oracle"])
    flat = table.assign(ndcg_at_20=[0.6, 0.5, 0.5])
    assert "oracle_lift_captured" not in metric_values(flat)


# -------------------------------------------------------------------------------------- lineage


def test_lineage_windows_are_clipped_at_the_start_of_history():
    from streamrec_assets.assets.registry import upstream_partitions
    from streamrec_assets.lineage import clip_to_history

    assert clip_to_history({"a": ["2025-12-31", "2026-01-01", "2026-01-02"], "b": ["2025-12-30"]}, "2026-01-01") == {
        "a": ["2026-01-01", "2026-01-02"],
        "b": [],
    }
    early = upstream_partitions("2026-01-04", first_day="2026-01-01")
    assert early["training_examples"] == ["2026-01-01", "2026-01-02"]
    assert early["raw_events"] == ["2026-01-03", "2026-01-04"] and early["ranking_model"] == ["2026-01-04"]
    assert early["taste_model"] == ["2026-01-02", "2026-01-03"]
    late = upstream_partitions("2026-01-20", first_day="2026-01-01")
    assert late["training_examples"] == [f"2026-01-{d:02d}" for d in range(5, 19)]  # [D-15, D-2], unclipped
    # default: the first partition of daily_partitions (STREAMREC_START_DATE, pinned by conftest)
    assert upstream_partitions("2026-01-03")["training_examples"] == ["2026-01-01"]
    assert upstream_partitions("2026-01-02")["taste_model"] == ["2026-01-01"]
