"""The partition-aware Parquet IO manager: layout, ranges, atomic replace, missing partitions, lazy readers."""

from __future__ import annotations

import os

import dagster as dg
import pandas as pd
import pytest

from streamrec_assets.errors import MissingPartitionsError, NeverMaterializedError
from streamrec_assets.io_managers import PartitionedParquetIOManager, format_key_spans
from streamrec_assets.storage import PartitionReader

PARTS = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", fmt="%Y-%m-%d")
KEY = dg.AssetKey("user_daily_activity")


def frame(days: list[str], rows_per_day: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": [d for d in days for _ in range(rows_per_day)],
            "user_id": list(range(len(days) * rows_per_day)),
            "event_timestamp": pd.Timestamp("2026-01-01T12:00:00.123456789", tz="UTC"),
        }
    )


def write(manager, df, start, end):
    ctx = dg.build_output_context(
        asset_key=KEY, asset_partitions_def=PARTS, asset_partition_key_range=dg.PartitionKeyRange(start, end)
    )
    manager.handle_output(ctx, df)
    return ctx


def load(manager, start, end, metadata=None, dagster_type=None):
    ctx = dg.build_input_context(
        asset_key=KEY,
        asset_partitions_def=PARTS,
        asset_partition_key_range=dg.PartitionKeyRange(start, end),
        definition_metadata=metadata,
        dagster_type=dagster_type,
    )
    return manager.load_input(ctx)


@pytest.fixture
def manager(tmp_path):
    return PartitionedParquetIOManager.at(str(tmp_path / "storage"))


def test_range_output_writes_every_partition_hive_style(manager, tmp_path):
    df = frame(["2026-01-01", "2026-01-03"])
    write(manager, df, "2026-01-01", "2026-01-03")
    base = tmp_path / "storage" / "user_daily_activity"
    assert sorted(os.listdir(base)) == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        assert os.listdir(base / f"date={day}") == ["data.parquet"]
    empty = load(manager, "2026-01-02", "2026-01-02")
    assert empty.empty and list(empty.columns) == list(df.columns), "empty partitions keep the schema"
    back = load(manager, "2026-01-01", "2026-01-03")
    pd.testing.assert_frame_equal(back, df.assign(event_timestamp=df["event_timestamp"].dt.floor("us")),
                                  check_dtype=False)
    assert str(back["event_timestamp"].dtype) in ("datetime64[us, UTC]", "datetime64[ns, UTC]")


def test_single_partition_and_rematerialise_replaces(manager, tmp_path):
    write(manager, frame(["2026-01-05"], 3), "2026-01-05", "2026-01-05")
    write(manager, frame(["2026-01-05"], 1), "2026-01-05", "2026-01-05")
    assert len(load(manager, "2026-01-05", "2026-01-05")) == 1
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")]
    assert leftovers == []


def test_failed_write_leaves_previous_partition_intact(manager, tmp_path, monkeypatch):
    write(manager, frame(["2026-01-05"], 3), "2026-01-05", "2026-01-05")
    import pyarrow.parquet as pq

    def broken(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write(manager, frame(["2026-01-05"], 1), "2026-01-05", "2026-01-05")
    monkeypatch.undo()
    assert len(load(manager, "2026-01-05", "2026-01-05")) == 3
    assert [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")] == []


def test_rows_outside_the_range_are_refused(manager):
    with pytest.raises(ValueError, match="holds rows for other days: 2026-01-09"):
        write(manager, frame(["2026-01-01", "2026-01-09"]), "2026-01-01", "2026-01-02")
    with pytest.raises(ValueError, match="no partition column"):
        write(manager, frame(["2026-01-01"]).drop(columns="date"), "2026-01-01", "2026-01-02")


def test_missing_partitions_are_named(manager):
    write(manager, frame(["2026-01-01"]), "2026-01-01", "2026-01-01")
    write(manager, frame(["2026-01-05"]), "2026-01-05", "2026-01-05")
    with pytest.raises(dg.Failure) as failure:
        load(manager, "2026-01-01", "2026-01-05")
    assert not failure.value.allow_retries, "a missing partition is a persistent error: never retried"
    err = failure.value.__cause__
    assert isinstance(err, MissingPartitionsError)
    assert err.missing == ["2026-01-02", "2026-01-03", "2026-01-04"]
    assert "user_daily_activity" in str(err) and "2026-01-02..2026-01-04" in str(err)
    assert failure.value.metadata["error_class"].value == "MissingPartitionsError"
    allowed = load(manager, "2026-01-01", "2026-01-05", metadata={"allow_missing_partitions": True})
    assert sorted(allowed["date"].unique()) == ["2026-01-01", "2026-01-05"]


def test_unpartitioned_asset_is_one_file(manager, tmp_path):
    ctx = dg.build_output_context(asset_key=dg.AssetKey("item_catalog"))
    manager.handle_output(ctx, pd.DataFrame({"item_id": [1, 2]}))
    assert (tmp_path / "storage" / "item_catalog.parquet").is_file()
    back = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("item_catalog")))
    assert back["item_id"].tolist() == [1, 2]
    with pytest.raises(dg.Failure, match="was never materialised") as failure:
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("user_catalog")))
    assert isinstance(failure.value.__cause__, NeverMaterializedError)


def test_non_dataframe_output_is_refused(manager):
    with pytest.raises(TypeError, match="stores pandas DataFrames"):
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("x")), {"a": 1})


def test_format_key_spans():
    assert format_key_spans(["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-07"]) == [
        "2026-01-01..2026-01-03",
        "2026-01-07",
    ]


def test_reader_input_is_lazy_and_reads_one_day_at_a_time(manager, monkeypatch):
    write(manager, frame(["2026-01-01", "2026-01-02", "2026-01-03"], 2), "2026-01-01", "2026-01-03")
    reader_type = dg.DagsterType(lambda _, value: isinstance(value, PartitionReader), name="PartitionReader",
                                 typing_type=PartitionReader)
    import streamrec_assets.storage as storage

    reads = []
    real = storage.read_parquet
    monkeypatch.setattr(storage, "read_parquet", lambda path, columns=None: reads.append(str(path)) or real(path, columns))
    reader = load(manager, "2026-01-01", "2026-01-03", dagster_type=reader_type)
    assert isinstance(reader, PartitionReader) and reads == [], "nothing is read before a day is asked for"
    assert reader.present == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert reader.read("2026-01-02")["date"].unique().tolist() == ["2026-01-02"]
    assert len(reads) == 1
    assert sorted(reader.read_days(["2026-01-01", "2026-01-03"])["date"].unique()) == ["2026-01-01", "2026-01-03"]
