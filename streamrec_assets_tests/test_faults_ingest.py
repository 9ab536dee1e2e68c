"""Fault injection on the ingest path: nothing lost, nothing mixed, nothing duplicated.

Each test delivers something broken to a real landing zone, materialises through
the real assets, and asserts that the previous good version is intact, that every
landing line is in exactly one table, that the message names asset, day and file,
and that a persistent error is not retried.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import dagster as dg
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.landing import Landing, Marker
from streamrec_assets.storage import TableStore, read_parquet, storage_path
from streamrec_assets_tests.conftest import SEED, TINY_EVENTS, run_range, tiny_settings

pytestmark = pytest.mark.slow
DAY = "2026-01-02"
INGEST = ["user_catalog", "item_catalog", "raw_events", "raw_events_dlq"]


@pytest.fixture
def zone(tmp_path):
    """Two good days, ingested; returns (settings, instance, landing, store)."""
    datagen.generate(str(tmp_path / "landing"), "2026-01-01", DAY, TINY_EVENTS, SEED)
    settings = tiny_settings(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_range(settings, instance, "2026-01-01", DAY, selection=INGEST)
        assert result.success
        yield settings, instance, Landing(settings.landing_uri), TableStore(settings.storage_uri)


def ingest(settings, instance, day=DAY, selection=("raw_events", "raw_events_dlq")):
    return run_range(settings, instance, day, day, selection=list(selection), raise_on_error=False)


def failure_of(result) -> tuple[str, dict]:
    """The step failure's message and metadata; asserts it was not retried."""
    events = result.all_events
    assert not [e for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"], "a persistent error is not retried"
    failures = [e for e in events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    data = failures[0].event_specific_data
    metadata = {k: v.value for k, v in (data.user_failure_data.metadata if data.user_failure_data else {}).items()}
    message = data.user_failure_data.description if data.user_failure_data else data.error.message
    return message, metadata


def snapshot(store: TableStore, day: str = DAY) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_parquet(store.partition_path("raw_events", day)), read_parquet(store.partition_path("raw_events_dlq", day))


def lines_of(landing: Landing, day: str) -> list[bytes]:
    text = gzip.decompress(landing.events_path(day).read_bytes())
    return text.split(b"\n")[:-1]


def deliver(landing: Landing, day: str, data: bytes, marker: Marker) -> None:
    from streamrec_assets.storage import write_bytes

    write_bytes(data, landing.events_path(day))
    write_bytes(marker.to_bytes(), landing.marker_path(day))


def test_short_delivery_with_the_old_marker_is_refused(zone):
    settings, instance, landing, store = zone
    before = snapshot(store)
    marker = landing.read_marker(DAY)
    half = lines_of(landing, DAY)[: marker.records // 2]
    landing.events_path(DAY).write_bytes(gzip.compress(b"\n".join(half) + b"\n", mtime=0))  # marker untouched
    result = ingest(settings, instance)
    assert not result.success
    message, metadata = failure_of(result)
    assert f"events-{DAY}.jsonl.gz" in message and DAY in message
    assert "does not match its completion marker" in message and marker.sha256 in message
    assert metadata["error_class"] == "DeliveryError" and metadata["partition"] == DAY
    after = snapshot(store)
    pd.testing.assert_frame_equal(after[0], before[0])
    pd.testing.assert_frame_equal(after[1], before[1])


def test_short_delivery_with_a_new_hash_but_the_old_count_is_refused(zone):
    settings, instance, landing, store = zone
    marker = landing.read_marker(DAY)
    half = gzip.compress(b"\n".join(lines_of(landing, DAY)[: marker.records // 2]) + b"\n", mtime=0)
    deliver(landing, DAY, half, Marker(DAY, marker.records, hashlib.sha256(half).hexdigest(), marker.params))
    message, metadata = failure_of(ingest(settings, instance))
    assert f"holds {marker.records // 2} records, its completion marker says {marker.records}" in message
    assert metadata["location"].endswith(f"events-{DAY}.jsonl.gz")


def test_truncated_gzip_is_a_persistent_delivery_error(zone):
    settings, instance, landing, store = zone
    before = snapshot(store)
    data = landing.events_path(DAY).read_bytes()
    truncated = data[: len(data) // 2]
    marker = landing.read_marker(DAY)
    deliver(landing, DAY, truncated, Marker(DAY, marker.records, hashlib.sha256(truncated).hexdigest(), marker.params))
    message, metadata = failure_of(ingest(settings, instance))
    assert "corrupt or truncated" in message and DAY in message and f"events-{DAY}.jsonl.gz" in message
    assert metadata["error_class"] == "DeliveryError"
    pd.testing.assert_frame_equal(snapshot(store)[0], before[0])


@pytest.mark.parametrize("payload", [b"", gzip.compress(b"", mtime=0)], ids=["zero_bytes", "empty_gzip"])
def test_an_empty_day_is_accepted_only_when_its_marker_says_zero(zone, payload):
    settings, instance, landing, store = zone
    deliver(landing, DAY, payload, Marker(DAY, 600, hashlib.sha256(payload).hexdigest()))
    message, _ = failure_of(ingest(settings, instance))
    assert "holds 0 records, its completion marker says 600" in message
    deliver(landing, DAY, payload, Marker(DAY, 0, hashlib.sha256(payload).hexdigest()))
    result = ingest(settings, instance)
    assert result.success
    events, dlq = snapshot(store)
    assert len(events) == 0 and len(dlq) == 0


def test_bad_catalogue_never_replaces_the_good_one(zone):
    settings, instance, landing, store = zone
    good = store.read_table("item_catalog")
    items = landing.read_catalog("items")
    bad = pd.concat([items, items.head(19)], ignore_index=True)  # 19 duplicate item_ids
    landing.write_catalog("items", bad)
    result = run_range(settings, instance, DAY, DAY, selection=["item_catalog"], raise_on_error=False)
    assert not result.success
    message, metadata = failure_of(result)
    assert "item_catalog" in message and "contract" in message and "quarantine" in message
    assert metadata["error_class"] == "AuditFailedError"
    quarantined = metadata["location"]
    assert os.path.exists(os.path.join(quarantined, "item_catalog.parquet"))
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.to_user_string(), e.check_name) for e in failed] == [("item_catalog", "contract")]
    pd.testing.assert_frame_equal(store.read_table("item_catalog"), good)
    # The next day's aggregates still work on the good catalogue.
    downstream = run_range(settings, instance, DAY, DAY, selection=["user_daily_activity", "item_daily_activity"])
    assert downstream.success


def test_over_budget_redelivery_publishes_neither_table(zone):
    settings, instance, landing, store = zone
    events_before, dlq_before = snapshot(store)
    first = landing.read_marker(DAY)
    assert len(events_before) + len(dlq_before) == first.records
    # Re-deliver the day with 5 % malformed lines (over the 1 % budget).
    datagen.generate(settings.landing_uri, DAY, DAY, TINY_EVENTS, SEED, malformed_rate=0.05, force=True)
    assert landing.read_marker(DAY).sha256 != first.sha256
    result = ingest(settings, instance)
    message, metadata = failure_of(result)
    assert "within_failure_budget" in message and metadata["error_class"] == "AuditFailedError"
    events_after, dlq_after = snapshot(store)
    pd.testing.assert_frame_equal(events_after, events_before)
    pd.testing.assert_frame_equal(dlq_after, dlq_before)
    assert len(events_after) + len(dlq_after) == first.records, "the first delivery, whole: nothing mixed"
    # Both tables of the rejected delivery are kept for inspection.
    where = metadata["location"]
    for asset in ("raw_events", "raw_events_dlq"):
        assert os.path.exists(os.path.join(where, asset, f"date={DAY}", "data.parquet")), asset
    staged = read_parquet(storage_path(os.path.join(where, "raw_events_dlq", f"date={DAY}", "data.parquet")))
    assert len(staged) >= 0.05 * TINY_EVENTS
    reason = json.loads(open(os.path.join(where, "_reason.json")).read())
    assert reason["partition"] == DAY


def test_generate_regenerates_a_cached_day_whose_file_no_longer_matches(tmp_path, capsys):
    from streamrec_assets.cli import main

    landing = str(tmp_path / "landing")
    args = ["generate", "--landing", landing, "--start", DAY, "--end", DAY, "--events-per-day", "300"]
    assert main(args) == 0
    zone = Landing(landing)
    good = zone.events_path(DAY).read_bytes()
    zone.events_path(DAY).write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(cached)" not in out, "a truncated file is not reported as cached"
    assert zone.events_path(DAY).read_bytes() == good
    assert main(args) == 0 and "(cached)" in capsys.readouterr().out


def test_undecodable_and_oversized_lines_are_kept_byte_exact_in_the_dlq(zone):
    settings, instance, landing, store = zone
    lines = lines_of(landing, DAY)
    broken = b'{"event_id":"ev-x","user_id":1,"device":"t\xff\xfe"}'
    huge = b'{"event_id":"ev-huge","pad":"' + b"x" * (2 << 20) + b'"}'
    lines[5], lines[9] = broken, huge
    data = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    deliver(landing, DAY, data, Marker(DAY, len(lines), hashlib.sha256(data).hexdigest()))
    assert ingest(settings, instance).success
    events, dlq = snapshot(store)
    assert len(events) + len(dlq) == len(lines), "every landing line is in exactly one table"
    by_line = dlq.set_index("line_number")
    assert by_line.loc[6, "reason"] == "invalid_utf8" and bytes(by_line.loc[6, "raw_bytes"]) == broken
    assert by_line.loc[10, "reason"] == "line_too_long" and bytes(by_line.loc[10, "raw_bytes"]) == huge
    # Every rejected line can be replayed from the DLQ alone: its bytes are the landing line's bytes.
    for row in dlq.itertuples():
        assert bytes(row.raw_bytes) == lines[row.line_number - 1]
