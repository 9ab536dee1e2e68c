"""The Spark engine's ingest pieces, in this process: a day cut into line-aligned chunks, each
validated apart by ``ingest_day`` and merged, equals ``ingest_day`` of the whole day, for every
number of chunks (the cluster itself is exercised in test_spark_engine.py)."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.core.ingest import ingest_day, ingest_in_chunks, split_lines
from streamrec_assets.engine import parse_conf
from streamrec_assets.landing import decompressed_slice

DAY = "2026-01-05"


def _line(i: int, event_id: str | None = None, **overrides) -> bytes:
    record = {"event_id": event_id or f"e{i}", "user_id": 1, "item_id": 2, "event_type": "impression",
              "event_timestamp": f"{DAY}T10:00:00.000Z", "watch_seconds": 0.0, "device": "tv", "session_id": "s1"}
    record.update(overrides)
    return json.dumps(record).encode()


def assert_same(a, b) -> None:
    pd.testing.assert_frame_equal(a.valid, b.valid)
    pd.testing.assert_frame_equal(a.rejected, b.rejected)
    assert a.total_records == b.total_records
    assert a.reasons == b.reasons
    assert a.valid_lines.tolist() == b.valid_lines.tolist()


@pytest.mark.parametrize("pieces", [1, 2, 3, 5, 8])
def test_chunked_ingest_of_a_generated_day_equals_the_whole(tiny_world, pieces):
    text = gzip.decompress(datagen.generate_day(tiny_world, DAY, 6_000, seed=3, malformed_rate=0.02))
    users, items = tiny_world.users["user_id"], tiny_world.items["item_id"]
    whole = ingest_day(text, DAY, users, items)
    assert whole.duplicates > 10 and whole.invalid > 50
    assert_same(ingest_in_chunks(text, DAY, users, items, pieces), whole)


def test_chunk_edges_duplicates_blank_lines_and_carriage_returns():
    lines = [_line(1), b"", _line(2, "dup"), b"\r", _line(3, "dup") + b"\r", b"{", _line(4), _line(5, "e1"),
             b"", b"", _line(6, "dup"), b"\xff\xfe", _line(7)]
    for ending in (b"", b"\n", b"\n\n"):
        text = b"\n".join(lines) + ending
        whole = ingest_day(text, DAY, [1], [2])
        assert whole.duplicates == 3
        for pieces in (1, 2, 3, 4, 6, 9, len(lines), 3 * len(lines)):  # up to one chunk per line
            chunks = split_lines(text, pieces)
            assert b"".join(text[c.offset:c.offset + c.length] for c in chunks) == text
            assert all(c.length > 0 for c in chunks)
            assert_same(ingest_in_chunks(text, DAY, [1], [2], pieces), whole)


def test_empty_day_and_spark_conf():
    assert ingest_in_chunks(b"", DAY, [1], [2], 4).total_records == 0
    assert parse_conf("spark.executor.memory=2g, spark.executor.cores=1,") == {
        "spark.executor.memory": "2g", "spark.executor.cores": "1"}
    with pytest.raises(ValueError, match="key=value"):
        parse_conf("spark.executor.memory")


def test_a_chunk_is_read_from_the_compressed_file_alone(tiny_world):
    """What a Spark ingest task does: its chunk out of the gzip file (one or several members,
    block by block, nothing kept before or decompressed after it), or out of a plain file."""
    data = datagen.generate_day(tiny_world, DAY, 3_000, seed=5)
    text = gzip.decompress(data)
    multi = gzip.compress(text[:10_000]) + gzip.compress(text[10_000:])
    for chunk in split_lines(text, 7):
        expected = text[chunk.offset:chunk.offset + chunk.length]
        for payload in (data, multi, text):
            assert decompressed_slice(payload, chunk.offset, chunk.length, block=4096) == expected
