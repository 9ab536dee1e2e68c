"""The storage module: write-audit-publish transactions, roll-forward after a crash, quarantine,
stale temporary files, lazy readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from streamrec_assets import storage
from streamrec_assets.errors import MissingPartitionsError
from streamrec_assets.storage import JOURNAL, QUARANTINE, STAGING, TableStore


def table(day: str, n: int, tag: str = "new") -> pd.DataFrame:
    return pd.DataFrame({"date": [day] * n, "value": list(range(n)), "tag": [tag] * n})


def published(store: TableStore, asset: str, day: str) -> pd.DataFrame:
    return storage.read_parquet(store.partition_path(asset, day))


@pytest.fixture
def store(tmp_path):
    return TableStore(str(tmp_path / "storage"))


def test_commit_publishes_tables_together_and_readers_never_see_staging(store, tmp_path):
    day = "2026-01-03"
    with store.transaction("ingest") as txn:
        txn.stage_table("raw_events", day, table(day, 5))
        txn.stage_table("raw_events_dlq", day, table(day, 2))
        assert not store.partition_path("raw_events", day).exists(), "staged values are invisible"
        assert not store.reader("raw_events", [day], allow_missing=True).present
        txn.commit()
    assert len(published(store, "raw_events", day)) == 5 and len(published(store, "raw_events_dlq", day)) == 2
    assert not os.listdir(tmp_path / "storage" / STAGING), "nothing left in staging"
    assert [n for n in os.listdir(tmp_path / "storage" / JOURNAL) if n.endswith(".json")] == []


def test_quarantine_keeps_the_previous_version_and_the_rejected_one(store, tmp_path):
    day = "2026-01-03"
    with store.transaction() as txn:
        txn.stage_table("raw_events", day, table(day, 5, "good"))
        txn.commit()
    with store.transaction() as txn:
        txn.stage_table("raw_events", day, table(day, 9, "bad"))
        txn.stage_table("raw_events_dlq", day, table(day, 3, "bad"))
        where = txn.quarantine("failed blocking checks: raw_events:contract", {"partition": day})
    assert published(store, "raw_events", day)["tag"].unique().tolist() == ["good"]
    assert not store.partition_path("raw_events_dlq", day).exists(), "neither table of the day was published"
    reason = json.loads(open(os.path.join(where, "_reason.json")).read())
    assert reason["reason"].startswith("failed blocking checks") and reason["partition"] == day
    rejected = storage.read_parquet(storage.storage_path(f"{where}/raw_events/date={day}/data.parquet"))
    assert rejected["tag"].unique().tolist() == ["bad"] and len(rejected) == 9
    assert where.startswith(str(tmp_path / "storage" / QUARANTINE))


def test_exception_before_commit_discards_the_staged_values(store, tmp_path):
    day = "2026-01-04"
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as txn:
        txn.stage_table("raw_events", day, table(day, 5))
        raise RuntimeError("boom")
    assert not store.partition_path("raw_events", day).exists()
    assert not os.listdir(tmp_path / "storage" / STAGING)


CRASH_AFTER_FIRST_RENAME = """
import os, sys
import pandas as pd
from streamrec_assets import storage
from streamrec_assets.storage import TableStore

real = storage._move
calls = []
def move(src, dst):
    calls.append(dst)
    real(src, dst)
    if len(calls) == 1:
        os._exit(9)  # the process dies between the two renames of one commit
storage._move = move
store = TableStore(sys.argv[1])
day = "2026-01-05"
with store.transaction("ingest") as txn:
    txn.stage_table("raw_events", day, pd.DataFrame({"date": [day] * 7, "tag": ["second"] * 7}))
    txn.stage_table("raw_events_dlq", day, pd.DataFrame({"date": [day] * 4, "tag": ["second"] * 4}))
    txn.commit()
"""


def test_a_commit_interrupted_between_two_tables_is_rolled_forward(store, tmp_path):
    day = "2026-01-05"
    with store.transaction() as txn:
        txn.stage_table("raw_events", day, table(day, 3, "first"))
        txn.stage_table("raw_events_dlq", day, table(day, 1, "first"))
        txn.commit()
    proc = subprocess.run([sys.executable, "-c", CRASH_AFTER_FIRST_RENAME, store.uri], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    # The crash left one table new and one old on disk, and the journal that says what was meant.
    assert published(store, "raw_events", day)["tag"].unique().tolist() == ["second"]
    assert published(store, "raw_events_dlq", day)["tag"].unique().tolist() == ["first"]
    assert [n for n in os.listdir(tmp_path / "storage" / JOURNAL) if n.endswith(".json")]
    # The next reader rolls the commit forward before reading: both tables are the second delivery.
    fresh = TableStore(store.uri)
    reader = fresh.reader("raw_events_dlq", [day])
    assert reader.read(day)["tag"].unique().tolist() == ["second"]
    assert published(store, "raw_events", day)["tag"].unique().tolist() == ["second"]
    assert [n for n in os.listdir(tmp_path / "storage" / JOURNAL) if n.endswith(".json")] == []


def test_stale_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    directory = tmp_path / "asset" / "date=2026-01-01"
    directory.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = directory / f".data.parquet.20260101T000000-{storage._HOST}-{pid}-deadbeef.tmp"
    stale.write_bytes(b"PAR1 half a file")
    live = directory / f".data.parquet.{storage._writer_tag()}.tmp"  # this process: alive
    live.write_bytes(b"being written")
    foreign = directory / ".something-else.tmp"
    foreign.write_bytes(b"not ours")
    storage.write_bytes(b"complete", storage.storage_path(str(directory / "data.parquet")))
    names = sorted(os.listdir(directory))
    assert stale.name not in names, "a dead writer's temporary file is swept"
    assert live.name in names and foreign.name in names, "a live writer's and foreign files are left alone"
    assert (directory / "data.parquet").read_bytes() == b"complete"


def test_stale_staging_of_a_dead_transaction_is_swept(store, tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    orphan = tmp_path / "storage" / STAGING / f"20260101T000000-{storage._HOST}-{dead}-0badc0de" / "x"
    orphan.mkdir(parents=True)
    (orphan / "data.parquet").write_bytes(b"half")
    store.transaction().abort()
    assert not orphan.parent.exists()


def test_reader_names_missing_days_and_reads_empty_days_with_the_schema(store):
    with store.transaction() as txn:
        txn.stage_table("daily", "2026-01-01", table("2026-01-01", 2))
        txn.stage_table("daily", "2026-01-04", table("2026-01-04", 3))
        txn.commit()
    with pytest.raises(MissingPartitionsError) as err:
        store.reader("daily", ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"])
    assert "2026-01-02..2026-01-03" in str(err.value) and err.value.asset == "daily"
    reader = store.reader("daily", ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"], allow_missing=True)
    empty = reader.read("2026-01-02")
    assert empty.empty and list(empty.columns) == ["date", "value", "tag"]
    assert len(reader.read_days(["2026-01-01", "2026-01-02", "2026-01-04"])) == 5
    with pytest.raises(KeyError, match="outside the requested partitions"):
        reader.read("2026-01-09")


def test_a_commit_that_fails_part_way_keeps_its_journal_and_is_rolled_forward(store, monkeypatch):
    day = "2026-01-06"
    real = storage._move
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise ConnectionError("storage went away between the two tables")
        return real(src, dst)

    monkeypatch.setattr(storage, "_move", flaky)
    with pytest.raises(ConnectionError), store.transaction() as txn:
        txn.stage_table("raw_events", day, table(day, 7, "second"))
        txn.stage_table("raw_events_dlq", day, table(day, 4, "second"))
        txn.commit()
    monkeypatch.setattr(storage, "_move", real)
    assert not store.partition_path("raw_events_dlq", day).exists(), "half published so far"
    reader = TableStore(store.uri).reader("raw_events_dlq", [day])  # the next reader rolls forward
    assert reader.read(day)["tag"].unique().tolist() == ["second"]
    assert published(store, "raw_events", day)["tag"].unique().tolist() == ["second"]
