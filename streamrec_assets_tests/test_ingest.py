"""Unit tests of parsing and record validation (core.ingest).

``reference_ingest`` below is a deliberately slow, record-by-record statement of the rules
(orjson per line, isinstance checks, pandas for timestamps): the behaviour of the row-by-row
implementation that ``ingest_day`` replaced, with its two documented differences (numbers in
JSON strings are invalid types; ties between schema checks follow the schema order).
"""

from __future__ import annotations

import gzip
import json
import math
import re

import numpy as np
import orjson
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.contracts import (
    REASONS,
    raw_event_record_schema,
    raw_events_dlq_schema,
    raw_events_schema,
    validate,
)
from streamrec_assets.core import ingest
from streamrec_assets.core.ingest import (
    DUPLICATE,
    EVENT_FIELDS,
    REASON_ORDER,
    failure_budget_error,
    ingest_day,
)
from streamrec_assets.landing import count_records

DAY = "2026-01-05"
STRINGS = ("event_id", "event_type", "device", "session_id")


# --------------------------------------------------------------------------- the reference


def _parse_stamps(values: set[str]) -> dict[str, pd.Timestamp]:
    """pandas' reading of each timestamp string (ISO 8601, UTC; NaT when it cannot)."""
    texts = sorted(values)
    parsed = pd.to_datetime(pd.Series(texts, dtype=object), format="ISO8601", utc=True, errors="coerce")
    return dict(zip(texts, parsed.astype("datetime64[us, UTC]"), strict=True))


def _decoded(line: bytes, max_line_bytes: int) -> tuple[str | None, dict | None]:
    """(None, the line's JSON object), or (the reason it has none, None)."""
    if len(line) > max_line_bytes:
        return "line_too_long", None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "malformed_json", None
    if not isinstance(obj, dict):
        return "malformed_json", None
    return None, obj


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float)


def _wrong_type(rec: dict) -> str | None:
    """The first field (in REASON_ORDER) of ``rec`` present with a value of the wrong JSON type, but
    the timestamp (told by pandas)."""
    for f in STRINGS:
        if rec[f] is not None and not (isinstance(rec[f], str) and rec[f]):
            return f
    for f in ("user_id", "item_id"):
        v = rec[f]
        if v is not None and (not _is_number(v) or not float(v).is_integer() or abs(v) >= 2**53):
            return f
    v = rec["watch_seconds"]
    if v is not None and (not _is_number(v) or not math.isfinite(v)):
        return "watch_seconds"
    return None


def _stamp_of(value, stamps: dict):
    """pandas' reading of an event_timestamp value (NaT when it cannot, None when no string)."""
    if not isinstance(value, str):
        return None
    return stamps[value] if value in stamps else _parse_stamps({value})[value]


def _schema_reason(rec: dict, stamp, day: str, users: set, items: set) -> str | None:
    """The first schema check ``rec`` fails, in the order of the record schema's columns."""
    start = pd.Timestamp(day, tz="UTC")
    checks = {
        "event_id": None,
        "user_id": ("unknown_user_id", lambda v: int(v) in users),
        "item_id": ("unknown_item_id", lambda v: int(v) in items),
        "event_type": ("invalid_event_type", lambda v: v in ("impression", "play")),
        "event_timestamp": ("timestamp_outside_day", lambda v: start <= stamp < start + pd.Timedelta(days=1)),
        "watch_seconds": ("negative_watch_seconds", lambda v: v >= 0),
        "device": None,
        "session_id": None,
    }
    for f, check in checks.items():
        if rec[f] is None:
            return f"missing_field:{f}"
        if check is not None and not check[1](rec[f]):
            return check[0]
    return None


def _record_reason(rec: dict, day: str, users: set, items: set, stamps: dict):
    """(the first reason the record ``rec`` is rejected for or None, its timestamp as pandas reads it)."""
    wrong = _wrong_type(rec)
    if wrong is not None:
        return f"invalid_type:{wrong}", None
    stamp = _stamp_of(rec["event_timestamp"], stamps)
    if rec["event_timestamp"] is not None and (stamp is None or pd.isna(stamp)):
        return "invalid_type:event_timestamp", None
    if rec["event_type"] == "impression" and (rec["watch_seconds"] or 0) != 0:
        return "impression_with_watch_time", stamp
    return _schema_reason(rec, stamp, day, users, items), stamp


def _reason_of(line: bytes, day: str, users: set, items: set, max_line_bytes: int, stamps: dict):
    reason, obj = _decoded(line, max_line_bytes)
    if reason is not None:
        return reason, {}
    rec = {f: obj.get(f) for f in EVENT_FIELDS}
    event_id = rec["event_id"] if isinstance(rec["event_id"], str) and rec["event_id"] else None
    reason, stamp = _record_reason(rec, day, users, items, stamps)
    if reason is not None:
        return reason, {"event_id": event_id}
    typed = dict(rec, user_id=int(rec["user_id"]), item_id=int(rec["item_id"]), event_timestamp=stamp,
                 watch_seconds=float(rec["watch_seconds"]))
    return None, typed


def reference_ingest(text: bytes, day: str, user_ids, item_ids, max_line_bytes: int = 1 << 20):
    """(valid frame, [(line_number, reason, raw_bytes, event_id)]) one record at a time."""
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    users, items = {int(u) for u in user_ids}, {int(i) for i in item_ids}
    # parse the timestamps of the file at once (the same per value); the odd ones come one by one
    texts = set(re.findall(rb'"event_timestamp" *: *"([^"\\]*)"', text))
    stamps = _parse_stamps({t.decode("utf-8", "replace") for t in texts})
    rows, rejected, seen = [], [], set()
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r")
        reason, rec = _reason_of(line, day, users, items, max_line_bytes, stamps)
        if reason is None and rec["event_id"] in seen:
            reason = DUPLICATE
        if reason is None:
            seen.add(rec["event_id"])
            rows.append(rec)
        else:
            rejected.append((number, reason, line, rec.get("event_id")))
    valid = pd.DataFrame(rows, columns=list(EVENT_FIELDS))
    valid.insert(0, "date", pd.Series([day] * len(rows), dtype=object))
    valid = valid.astype({"user_id": "int64", "item_id": "int64", "watch_seconds": "float64"})
    valid["event_timestamp"] = pd.to_datetime(valid["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    for f in STRINGS:
        valid[f] = valid[f].astype(object)
    return valid, rejected


def assert_matches_reference(text: bytes, day: str, users, items, max_line_bytes: int = 1 << 20):
    result = ingest_day(text, day, users, items, max_line_bytes=max_line_bytes)
    valid, rejected = reference_ingest(text, day, users, items, max_line_bytes)
    pd.testing.assert_frame_equal(result.valid, valid)
    got = list(zip(result.rejected["line_number"], result.rejected["reason"], result.rejected["raw_bytes"],
                   result.rejected["event_id"], strict=True))
    assert got == rejected
    assert result.total_records == count_records(text) == len(valid) + len(rejected)
    assert result.reasons == pd.Series([r[1] for r in rejected], dtype=object).value_counts().to_dict()
    return result


# --------------------------------------------------------------------------- helpers


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


def ok(i: int) -> bytes:
    return line(i)


# --------------------------------------------------------------------------- one record, one reason

CASES = [
    (line(2, event_type="play", watch_seconds=10.5), None),
    (b'{"event_id": "e3", "user', "malformed_json"),
    (b"[1, 2, 3]", "malformed_json"),
    (b'"just a string"', "malformed_json"),
    (b"42", "malformed_json"),
    (b"null", "malformed_json"),
    (b"", "malformed_json"),
    (b"   ", "malformed_json"),
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
    # wrong types
    (line(20, user_id=True), "invalid_type:user_id"),
    (line(21, item_id=False), "invalid_type:item_id"),
    (line(22, item_id=2.5), "invalid_type:item_id"),
    (line(23, user_id=2**53), "invalid_type:user_id"),
    (line(24, user_id=[1]), "invalid_type:user_id"),
    (line(25, user_id={"id": 1}), "invalid_type:user_id"),
    (line(26, user_id="1"), "invalid_type:user_id"),  # no longer coerced from a string
    (line(27, watch_seconds=True, event_type="play"), "invalid_type:watch_seconds"),
    (line(28, watch_seconds="NaN", event_type="play"), "invalid_type:watch_seconds"),
    (line(29, watch_seconds="Infinity", event_type="play"), "invalid_type:watch_seconds"),
    (line(30, watch_seconds="12.5", event_type="play"), "invalid_type:watch_seconds"),
    (line(31, event_timestamp=1767607200), "invalid_type:event_timestamp"),
    (line(32, event_timestamp=True), "invalid_type:event_timestamp"),
    (line(33, event_timestamp=["2026-01-05T10:00:00Z"]), "invalid_type:event_timestamp"),
    (line(34, event_timestamp="2026-01-05T24:00:00Z"), "invalid_type:event_timestamp"),
    (line(35, event_timestamp="2026-02-30T10:00:00Z"), "invalid_type:event_timestamp"),
    (line(36, event_id=""), "invalid_type:event_id"),
    (line(37, event_id=12345), "invalid_type:event_id"),
    (line(38, event_type=True), "invalid_type:event_type"),
    (line(39, session_id=None), "missing_field:session_id"),
    (line(40, device=["tv"]), "invalid_type:device"),
    # non-finite numbers are not JSON: orjson refuses the line (DuckDB alone would not)
    (line(41).replace(b'"watch_seconds":0.0', b'"watch_seconds":NaN'), "malformed_json"),
    (line(42).replace(b'"watch_seconds":0.0', b'"watch_seconds":-Infinity'), "malformed_json"),
    (line(43).replace(b'"watch_seconds":0.0', b'"watch_seconds":1e400'), "malformed_json"),
    (line(44).replace(b'"user_id":1', b'"user_id":nan'), "malformed_json"),
    (line(45).replace(b'"device":"tv"', b'"device":Infinity'), "malformed_json"),
    (line(46)[:-1] + b',"extra":NaN}', "malformed_json"),
    (line(47)[:-1] + b',"extra":[1,2,],"more":1}', "malformed_json"),
    (line(48)[:-1] + b",}", "malformed_json"),
    (line(49)[:-1] + b',"extra":' + b"[" * 1100 + b"]" * 1100 + b"}", "malformed_json"),
    (b"\xef\xbb\xbf" + line(50), "malformed_json"),  # a byte order mark
    (line(51) + b" // comment", "malformed_json"),
    (line(52) + line(52), "malformed_json"),
    (line(53) + b"\x00", "malformed_json"),
    (line(54).replace(b'"tv"', b'"t\x00v"'), "malformed_json"),  # a raw control character in a string
    (line(55).replace(b'"tv"', b'"t\tv"'), "malformed_json"),
    (line(56).replace(b'"tv"', b'"\\ud800"'), "malformed_json"),  # a lone surrogate escape
    # valid JSON of other shapes is read as orjson reads it
    (line(60)[:-1] + b',"extra":{"a":[1,{"b":null}]},"n":1.5e300}', None),
    (line(61)[:-1] + b',"user_id":99}', "unknown_user_id"),  # the last duplicate key wins
    (line(62, user_id=99)[:-1] + b',"user_id":1}', None),
    (b'{"event_id":"e63","event_id":"e63b"' + line(63)[len(b'{"event_id":"e63"') :], None),
    (line(64, device=None)[:-1] + b',"device":"tv"}', None),
    (line(65).replace(b'"user_id"', b'"user\\u005fid"'), None),  # an escaped key is the same key
    (line(66).replace(b'"device":"tv"', b'"device":"a\\u002cb\\u003ac"'), None),
    (json.dumps(orjson.loads(line(67)), indent=1).replace("\n", "\r").encode(), None),
    (b"  " + line(68) + b"   ", None),
    (line(69, user_id=1.0, item_id=2e0), None),
    (line(70, watch_seconds=0), None),
    (line(71, event_type="play", watch_seconds=18446744073709551615), None),
    (line(72, event_type="play").replace(b'"watch_seconds":0.0', b'"watch_seconds":' + b"9" * 30), None),
    (line(72, user_id=2).replace(b'"user_id":2', b'"user_id":' + b"1" * 25), "invalid_type:user_id"),
    (line(73, event_type="play", watch_seconds=-0.0), None),
    (line(74, event_timestamp="2026-01-05 10:00:00"), None),
    (line(75, event_timestamp="2026-01-05T11:00:00+01:00"), None),
    (line(76, event_timestamp="2026-01-05T10:00:00.123456789Z"), None),
    (line(77, event_timestamp="2026-01-05"), None),
    (line(78, device="ünïcødé 📺", session_id="s\u0000\n\"x\""), None),
    (line(79, event_id="12345"), None),  # a string that looks like a number is a string
    (line(80, device="true", session_id="[1]"), None),
    (line(81, device="NaN", session_id="-Infinity"), None),
    (line(82, event_type="impression", device="inf"), None),
    (line(83).replace(b'"device":"tv"', b'"device":"\\u0074v"'), None),
    (line(84, event_type="play", watch_seconds=5e-324), None),
    (line(85).replace(b'"watch_seconds":0.0', b'"watch_seconds":1e-400'), None),
]


@pytest.mark.parametrize(("raw", "reason"), CASES, ids=[f"{i}-{c[1] or 'valid'}" for i, c in enumerate(CASES)])
def test_each_record_gets_its_reason(raw, reason):
    result = assert_matches_reference(ok(1) + b"\n" + raw + b"\n", DAY, [1], [2])
    assert result.total_records == 2
    if reason is None:
        assert len(result.rejected) == 0 and len(result.valid) == 2
    else:
        assert result.rejected["reason"].tolist() == [reason]
        assert result.rejected["line_number"].tolist() == [2]
        assert result.rejected["raw_bytes"].tolist() == [raw]
        assert result.rejected["raw_line"].tolist() == [raw.decode("utf-8", "replace")]


def test_all_cases_in_one_file_match_the_reference():
    """Every kind of line at once, many times over (DuckDB parallelises over vectors of lines)."""
    body = [raw for raw, _ in CASES] + [ok(i) for i in range(100, 130)]
    text = b"\n".join(body * 150) + b"\n"
    result = assert_matches_reference(text, DAY, [1], [2])
    assert result.total_records == len(body) * 150


def test_reasons_of_a_record_with_several_faults_follow_the_documented_order():
    cases = [
        (line(1, event_id=..., user_id=99), "missing_field:event_id"),
        (line(2, user_id=99, item_id=99), "unknown_user_id"),
        (line(3, watch_seconds=-1.0), "impression_with_watch_time"),
        (line(4, device=..., user_id=99), "unknown_user_id"),
        (line(5, device=..., event_id=...), "missing_field:event_id"),
        (line(6, watch_seconds=5.0, session_id=...), "impression_with_watch_time"),
        (line(7, event_timestamp="2026-01-07T00:00:00Z", watch_seconds=-1.0, event_type="play"),
         "timestamp_outside_day"),
        (line(8, user_id=True, event_id=5), "invalid_type:event_id"),
        (line(9, user_id="x", event_timestamp=5, item_id=99), "invalid_type:user_id"),
        (b"{}", "missing_field:event_id"),
        (b'{"event_type": "impression", "watch_seconds": 2}', "impression_with_watch_time"),
    ]
    result = assert_matches_reference(b"\n".join(c for c, _ in cases), DAY, [1], [2])
    assert result.rejected["reason"].tolist() == [r for _, r in cases]
    assert REASON_ORDER.index("impression_with_watch_time") < REASON_ORDER.index("missing_field:event_id")


# --------------------------------------------------------------------------- bytes


def test_invalid_utf8_is_kept_byte_exact():
    bad = [
        line(2, device="tv").replace(b'"tv"', b'"t\xffv"'),
        line(3).replace(b'"tv"', b'"\xc3"'),  # a sequence cut short
        line(4).replace(b'"tv"', b'"\xed\xa0\x80"'),  # an encoded surrogate
        line(5).replace(b'"tv"', b'"\xe0\x80\xaf"'),  # an overlong encoding
        line(6).replace(b'"tv"', b'"\x80"'),  # a lone continuation byte
        b"\xf5\x80\x80\x80",
        b"\x1f\x8b\x08\x00",  # gzip bytes are not a JSON line
    ]
    fine = line(7, device="t\u00e9l\u00e9 \u4e2d \U0001f4fa")
    text = b"\n".join([ok(1), *bad, fine, b"\xc3"]) + b"\r\n"
    result = assert_matches_reference(text, DAY, [1], [2])
    rejected = result.rejected
    assert rejected["reason"].tolist() == ["invalid_utf8"] * (len(bad) + 1)
    assert rejected["raw_bytes"].tolist() == [*bad, b"\xc3"]
    assert rejected["raw_line"].tolist() == [b.decode("utf-8", "replace") for b in [*bad, b"\xc3"]]
    assert rejected["line_number"].tolist() == [*range(2, 2 + len(bad)), len(bad) + 3]
    assert result.valid["device"].tolist() == ["tv", "t\u00e9l\u00e9 \u4e2d \U0001f4fa"]


def test_a_line_over_max_line_bytes_is_rejected_unread():
    long_valid = line(2, session_id="s" * 5000)
    garbage = b"{" * 20_000  # would be malformed_json, but too long wins
    text = b"\n".join([ok(1), long_valid, garbage, line(4, session_id="s" * 100)])
    result = assert_matches_reference(text, DAY, [1], [2], max_line_bytes=1000)
    assert result.rejected["reason"].tolist() == ["line_too_long", "line_too_long"]
    assert result.rejected["raw_bytes"].tolist() == [long_valid, garbage]
    assert result.valid["event_id"].tolist() == ["e1", "e4"]
    assert len(ingest_day(text, DAY, [1], [2]).rejected) == 1  # the default limit is 1 MiB


def test_empty_payload_has_no_records():
    for text in (b"",):
        result = ingest_day(text, DAY, [1], [2])
        assert result.total_records == 0 and result.valid.empty and result.rejected.empty
        assert result.failure_rate == 0.0
        assert list(result.rejected.columns) == ["date", "line_number", "reason", "raw_line", "raw_bytes", "event_id"]
        assert validate(result.valid, raw_events_schema).passed
        assert validate(result.rejected, raw_events_dlq_schema).passed
    only_newline = assert_matches_reference(b"\n", DAY, [1], [2])
    assert only_newline.total_records == 1 and only_newline.rejected["reason"].tolist() == ["malformed_json"]


def test_crlf_lines_and_a_last_line_without_newline():
    text = ok(1) + b"\r\n" + ok(2) + b"\r\r\n" + b"{bad\r\n" + ok(3)
    result = assert_matches_reference(text, DAY, [1], [2])
    assert result.total_records == 4 == count_records(text)
    assert result.valid["event_id"].tolist() == ["e1", "e2", "e3"]
    assert result.rejected["raw_bytes"].tolist() == [b"{bad"]


def test_dlq_alone_reruns_to_the_same_reasons():
    rejects = [raw for raw, reason in CASES if reason is not None]
    text = b"\n".join([ok(1), *rejects, b"\xff\xfe", ok(1)]) + b"\n"
    first = ingest_day(text, DAY, [1], [2])
    again = ingest_day(b"".join(raw + b"\n" for raw in first.rejected["raw_bytes"]), DAY, [1], [2])
    expected = first.rejected["reason"].where(first.rejected["reason"] != DUPLICATE, None).dropna().tolist()
    assert again.rejected["reason"].tolist() == expected
    assert again.valid["event_id"].tolist() == ["e1"]  # the duplicate, alone, is valid


# --------------------------------------------------------------------------- duplicates


def test_duplicates_dropped_once_counted_and_not_a_contract_violation():
    data = b"\n".join([line(1), line(1), line(2), line(1)]) + b"\n"
    result = assert_matches_reference(data, DAY, [1], [2])
    assert result.valid["event_id"].tolist() == ["e1", "e2"]
    assert result.rejected["reason"].tolist() == [DUPLICATE, DUPLICATE]
    assert result.rejected["line_number"].tolist() == [2, 4]
    assert result.rejected["event_id"].tolist() == ["e1", "e1"]
    assert result.duplicates == 2 and result.invalid == 0 and result.failure_rate == 0.0


def test_duplicates_only_of_accepted_records():
    data = b"\n".join([
        line(1, user_id=99),  # rejected: does not make the next one a duplicate
        line(1),
        line(1, device="web"),  # same event_id, other content: still a duplicate
        line(2).replace(b'"user_id":1', b'"user_id":nan'),
        line(2),
    ])
    result = assert_matches_reference(data, DAY, [1], [2])
    assert result.rejected["reason"].tolist() == ["unknown_user_id", DUPLICATE, "malformed_json"]
    assert result.valid["event_id"].tolist() == ["e1", "e2"]


# --------------------------------------------------------------------------- generated days


@pytest.mark.parametrize(("events", "rate", "seed"), [(20_000, 0.01, 3), (3_000, 0.2, 4), (2_000, 0.0, 5)])
def test_generated_days_match_the_reference(tiny_world, events, rate, seed):
    text = gzip.decompress(datagen.generate_day(tiny_world, DAY, events, seed=seed, malformed_rate=rate))
    assert_matches_reference(text, DAY, tiny_world.users["user_id"], tiny_world.items["item_id"])


def test_days_of_other_shapes_match_the_reference(tiny_world, monkeypatch):
    """Whole days whose lines DuckDB alone might read differently from orjson."""
    monkeypatch.setattr(ingest, "_COUNT_IN_PYTHON", 100)  # count separators with numpy here too
    users, items = tiny_world.users["user_id"], tiny_world.items["item_id"]
    head = gzip.decompress(datagen.generate_day(tiny_world, DAY, 3_000, seed=8, malformed_rate=0.02))
    variants = {
        "extra member everywhere": head.replace(b'"session_id"', b'"app":{"v":[4,2]},"session_id"'),
        "json.dumps spacing": head.replace(b'","', b'", "').replace(b'":', b'": '),
        "numbers in strings": re.sub(rb'"ev-(\d+)-(\d+)"', rb'"\1\2"', head),
        "null members": head.replace(b'"device":"tv"', b'"device":null'),
        "repeated keys": head.replace(b'"device":"web"', b'"device":"web","device":"tv"'),
        "NaN in an extra member": head.replace(b'"device":"mobile"', b'"device":"mobile","x":NaN'),
    }
    for name, variant in variants.items():
        result = assert_matches_reference(variant, DAY, users, items)
        if name in ("null members", "NaN in an extra member"):
            assert result.reasons[{"null members": "missing_field:device"}.get(name, "malformed_json")] > 200
        else:
            assert len(result.valid) > 0.9 * result.total_records, name


def test_generated_day_reconciles_and_meets_contracts(tiny_world):
    data = datagen.generate_day(tiny_world, DAY, 20_000, seed=3, malformed_rate=0.01)
    text = gzip.decompress(data)
    result = ingest_day(text, DAY, tiny_world.users["user_id"], tiny_world.items["item_id"])
    assert result.total_records == len(text.splitlines()) == 20_000
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
    assert result.valid.dtypes.astype(str).tolist() == [
        "object", "object", "int64", "int64", "object", "datetime64[us, UTC]", "float64", "object", "object"]
    lines = text.split(b"\n")
    for number, raw in zip(result.rejected["line_number"], result.rejected["raw_bytes"], strict=True):
        assert raw == lines[number - 1]


def test_valid_records_meet_the_record_schema_and_faults_fail_their_check(tiny_world):
    users, items = tiny_world.users["user_id"], tiny_world.items["item_id"]
    text = gzip.decompress(datagen.generate_day(tiny_world, DAY, 2_000, seed=9, malformed_rate=0.0))
    result = ingest_day(text, DAY, users, items)
    schema = raw_event_record_schema(DAY, users, items)
    typed = result.valid[list(EVENT_FIELDS)].astype({"user_id": "Int64", "item_id": "Int64"})
    assert validate(typed, schema).passed
    faults = {
        "unknown_user_id": {"user_id": 10**8},
        "unknown_item_id": {"item_id": 10**8},
        "invalid_event_type": {"event_type": "click"},
        "timestamp_outside_day": {"event_timestamp": pd.Timestamp("2026-01-07", tz="UTC")},
        "negative_watch_seconds": {"event_type": "play", "watch_seconds": -1.0},
        "impression_with_watch_time": {"event_type": "impression", "watch_seconds": 1.0},
        "missing_field:device": {"device": None},
    }
    by_reason = {reason: key for key, reason in REASONS.items()}
    for reason, change in faults.items():
        bad = typed.head(1).copy()
        for column, value in change.items():
            bad[column] = pd.Series([value], dtype=bad[column].dtype, index=bad.index)
        failures = validate(bad, schema).failure_counts
        column, check = by_reason[reason]
        assert any(key.endswith(f":{check}") for key in failures), (reason, failures)
        assert reason in REASON_ORDER


def test_failure_budget_message_names_file_rate_and_reasons(tiny_world):
    data = datagen.generate_day(tiny_world, DAY, 5_000, seed=3, malformed_rate=0.05)
    result = ingest_day(gzip.decompress(data), DAY, tiny_world.users["user_id"], tiny_world.items["item_id"])
    assert failure_budget_error(result, 0.10, "landing/x.jsonl.gz") is None
    message = failure_budget_error(result, 0.01, "landing/x.jsonl.gz")
    assert message is not None
    assert "landing/x.jsonl.gz" in message and "5.00%" in message and "max_failure_rate=1.00%" in message
    assert result.top_reasons(1)[0][0] in message


def test_catalogue_ids_of_any_iterable(tiny_world):
    text = b"\n".join([line(1, user_id=3, item_id=4), line(2, user_id=5, item_id=4)])
    for users, items in (([3], [4]), ({3}, {4}), (np.array([3]), pd.Series([4])), (iter([3]), range(4, 5))):
        result = ingest_day(text, DAY, users, items)
        assert result.valid["event_id"].tolist() == ["e1"]
        assert result.rejected["reason"].tolist() == ["unknown_user_id"]
