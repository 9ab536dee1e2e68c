"""Unit tests of parsing and record validation (core.ingest)."""

from __future__ import annotations

import gzip

import orjson
import pytest

from streamrec_assets import datagen
from streamrec_assets.contracts import raw_events_dlq_schema, raw_events_schema, validate
from streamrec_assets.core.ingest import DUPLICATE, failure_budget_error, ingest_day

DAY = "2026-01-05"


def line(i: int, **overrides) -> bytes:
    record = {
        "event_id": f"e{i}",
        "user_id": 1,
        "item_id": 2,
        "event_type": "impression",
        "event_timestamp": f"{DAY}T10:00:00.000Z",
        "watch_seconds": 0.0,
        "device": "tv",
        "session_id": "s1",
    }
    record.update(overrides)
    for key in [k for k, v in overrides.items() if v is ...]:
        del record[key]
    return orjson.dumps(record)


CASES = [
    (line(2, event_type="play", watch_seconds=10.5), None),
    (b'{"event_id": "e3", "user', "malformed_json"),
    (b"[1, 2, 3]", "malformed_json"),
    (line(4, user_id=99), "unknown_user_id"),
    (line(5, item_id=99), "unknown_item_id"),
    (line(6, event_type="play", watch_seconds=-1), "negative_watch_seconds"),
    (line(7, event_timestamp="2026-01-06T00:00:00.000Z"), "timestamp_outside_day"),
    (line(8, event_timestamp="2026-01-04T23:59:59.999Z"), "timestamp_outside_day"),
    (line(9, user_id="abc"), "invalid_type:user_id"),
    (line(10, user_id=1.5), "invalid_type:user_id"),
    (line(11, event_timestamp="yesterday"), "invalid_type:event_timestamp"),
    (line(12, watch_seconds=...), "missing_field:watch_seconds"),
    (line(13, session_id=...), "missing_field:session_id"),
    (line(14, event_id=None), "missing_field:event_id"),
    (line(15, watch_seconds=3.0), "impression_with_watch_time"),
    (line(16, event_type="click"), "invalid_event_type"),
    (line(17, device=7), "invalid_type:device"),
]


@pytest.mark.parametrize(("raw", "reason"), CASES, ids=[c[1] or "valid" for c in CASES])
def test_each_record_gets_its_reason(raw, reason):
    result = ingest_day(line(1) + b"\n" + raw + b"\n", DAY, [1], [2])
    assert result.total_records == 2
    assert len(result.valid) + len(result.rejected) == 2
    if reason is None:
        assert len(result.rejected) == 0 and len(result.valid) == 2
    else:
        assert result.rejected["reason"].tolist() == [reason]
        assert result.rejected["line_number"].tolist() == [2]
        assert result.rejected["raw_line"].tolist() == [raw.decode()]


def test_duplicates_dropped_once_counted_and_not_a_contract_violation():
    data = b"\n".join([line(1), line(1), line(2), line(1)]) + b"\n"
    result = ingest_day(data, DAY, [1], [2])
    assert result.valid["event_id"].tolist() == ["e1", "e2"]
    assert result.rejected["reason"].tolist() == [DUPLICATE, DUPLICATE]
    assert result.rejected["line_number"].tolist() == [2, 4]
    assert result.duplicates == 2 and result.invalid == 0 and result.failure_rate == 0.0


def test_gzip_crlf_and_empty_file():
    data = gzip.compress(line(1) + b"\r\n" + line(2) + b"\r\n")
    result = ingest_day(data, DAY, [1], [2])
    assert len(result.valid) == 2
    empty = ingest_day(b"", DAY, [1], [2])
    assert empty.total_records == 0 and empty.valid.empty and empty.rejected.empty
    assert validate(empty.valid, raw_events_schema).passed
    assert validate(empty.rejected, raw_events_dlq_schema).passed


def test_generated_day_reconciles_and_meets_contracts(tiny_world):
    data = datagen.generate_day(tiny_world, DAY, 20_000, seed=3, malformed_rate=0.01)
    result = ingest_day(data, DAY, tiny_world.users["user_id"], tiny_world.items["item_id"])
    lines = gzip.decompress(data).splitlines()
    assert result.total_records == len(lines) == 20_000
    assert len(result.valid) + len(result.rejected) == 20_000
    # The generator injects exactly round(n * rate) malformed lines and rate/4 duplicates.
    assert result.invalid == 200
    assert result.duplicates == 50
    assert {"malformed_json", "unknown_user_id", "unknown_item_id", "negative_watch_seconds",
            "timestamp_outside_day"} <= set(result.reasons)
    assert any(r.startswith("missing_field:") for r in result.reasons)
    assert validate(result.valid, raw_events_schema).passed
    assert validate(result.rejected, raw_events_dlq_schema).passed
    assert result.valid["event_id"].is_unique
    assert str(result.valid["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_failure_budget_message_names_file_rate_and_reasons(tiny_world):
    data = datagen.generate_day(tiny_world, DAY, 5_000, seed=3, malformed_rate=0.05)
    result = ingest_day(data, DAY, tiny_world.users["user_id"], tiny_world.items["item_id"])
    assert failure_budget_error(result, 0.10, "landing/x.jsonl.gz") is None
    message = failure_budget_error(result, 0.01, "landing/x.jsonl.gz")
    assert message is not None
    assert "landing/x.jsonl.gz" in message and "5.00%" in message and "max_failure_rate=1.00%" in message
    assert result.top_reasons(1)[0][0] in message
