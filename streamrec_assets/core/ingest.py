"""Parse and validate one day of landing-zone events (pure; no Dagster).

Every line of the landing file ends up in exactly one of two tables:

* ``valid``: records that satisfy the record contract
  (:func:`streamrec_assets.contracts.raw_event_record_schema`), typed, one
  row per ``event_id``;
* ``rejected``: the dead-letter queue, with the line number, the raw line and
  the reason (broken JSON, wrong type, missing field, unknown id, negative
  watch time, timestamp outside the day, duplicate ``event_id`` …).

``len(valid) + len(rejected) == records in the file``, always. Duplicates of
an ``event_id`` already seen in the file (at-least-once delivery) are dropped
and counted separately: they are not contract violations, so they do not
count towards the failure budget.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

EVENT_FIELDS = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "event_timestamp",
    "watch_seconds",
    "device",
    "session_id",
)
RAW_EVENTS_COLUMNS = ("date", *EVENT_FIELDS)
DLQ_COLUMNS = ("date", "line_number", "reason", "raw_line", "event_id")
DUPLICATE = "duplicate_event_id"
MALFORMED_JSON = "malformed_json"
_STRING_FIELDS = ("event_id", "event_type", "device", "session_id")


@dataclass
class IngestResult:
    """Outcome of ingesting one landing file."""

    day: str
    valid: pd.DataFrame
    rejected: pd.DataFrame
    total_records: int
    reasons: Counter = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        return self.reasons.get(DUPLICATE, 0)

    @property
    def invalid(self) -> int:
        """Contract violations (everything rejected except duplicate deliveries)."""
        return len(self.rejected) - self.duplicates

    @property
    def failure_rate(self) -> float:
        return self.invalid / self.total_records if self.total_records else 0.0

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        return self.reasons.most_common(n)


def decompress(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def split_lines(data: bytes) -> list[bytes]:
    lines = decompress(data).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r") for line in lines]


def _coerce(frame: pd.DataFrame, day_reasons: list[str | None]) -> pd.DataFrame:
    """Type the parsed columns; values of the wrong type become null and get a reason."""
    out = pd.DataFrame(index=frame.index)

    def mark(mask: pd.Series, reason: str) -> None:
        for i in np.flatnonzero(mask.to_numpy()):
            if day_reasons[i] is None:
                day_reasons[i] = reason

    for col in _STRING_FIELDS:
        values = frame[col]
        ok = values.map(lambda v: isinstance(v, str) and v != "", na_action="ignore")
        bad = values.notna() & (ok != True)  # noqa: E712 (object Series of bools / NaN)
        mark(bad, f"invalid_type:{col}")
        out[col] = values.where(~bad, None)
    for col in ("user_id", "item_id"):
        values = frame[col]
        is_bool = values.map(lambda v: isinstance(v, bool), na_action="ignore") == True  # noqa: E712
        numbers = pd.to_numeric(values.where(~is_bool), errors="coerce")
        bad = values.notna() & (numbers.isna() | (numbers != np.floor(numbers)) | numbers.abs().ge(2**53))
        mark(bad, f"invalid_type:{col}")
        out[col] = numbers.where(~bad).astype("Int64")
    values = frame["watch_seconds"]
    is_bool = values.map(lambda v: isinstance(v, bool), na_action="ignore") == True  # noqa: E712
    watch = pd.to_numeric(values.where(~is_bool), errors="coerce").astype("float64")
    bad = values.notna() & (watch.isna() | ~np.isfinite(watch.fillna(0)))
    mark(bad, "invalid_type:watch_seconds")
    out["watch_seconds"] = watch.where(~bad)
    stamps = frame["event_timestamp"]
    text = stamps.where(stamps.map(lambda v: isinstance(v, str), na_action="ignore") == True)  # noqa: E712
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = stamps.notna() & parsed.isna()
    mark(bad, "invalid_type:event_timestamp")
    out["event_timestamp"] = parsed.astype("datetime64[us, UTC]")
    return out[list(EVENT_FIELDS)]


def ingest_day(
    data: bytes,
    day: str,
    user_ids: np.ndarray | pd.Series,
    item_ids: np.ndarray | pd.Series,
) -> IngestResult:
    """Parse the landing file ``data`` (JSON Lines, optionally gzip) of partition ``day``."""
    from streamrec_assets.contracts import REASONS, raw_event_record_schema

    lines = split_lines(data)
    n = len(lines)
    reasons: list[str | None] = [None] * n
    records: list[dict] = []
    parsed_idx: list[int] = []
    loads = orjson.loads
    for i, line in enumerate(lines):
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            reasons[i] = MALFORMED_JSON
            continue
        if not isinstance(obj, dict):
            reasons[i] = MALFORMED_JSON
            continue
        records.append(obj)
        parsed_idx.append(i)

    frame = pd.DataFrame.from_records(records, columns=list(EVENT_FIELDS)) if records else None
    if frame is None:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_FIELDS})
    frame.index = pd.Index(parsed_idx, dtype="int64")
    # Reasons found while coercing are indexed by position in ``frame``; map back to lines.
    local_reasons: list[str | None] = [None] * len(frame)
    typed = _coerce(frame, local_reasons)
    for pos, reason in enumerate(local_reasons):
        if reason is not None:
            reasons[parsed_idx[pos]] = reason

    schema = raw_event_record_schema(day, user_ids, item_ids)
    import pandera.pandas as pa

    try:
        schema.validate(typed, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna()]
        for col, check, idx in zip(cases["column"], cases["check"], cases["index"], strict=True):
            line = int(idx)
            if reasons[line] is None:
                column = None if col == typed.columns.name or col == schema.name else col
                reasons[line] = REASONS.get((column, str(check)), REASONS.get((None, str(check)), f"{col}:{check}"))

    reason_arr = np.array(reasons, dtype=object)
    ok_lines = np.flatnonzero(pd.isna(reason_arr))
    valid = typed.loc[typed.index.intersection(ok_lines)]
    dup = valid["event_id"].duplicated(keep="first").to_numpy()
    for line in valid.index[dup]:
        reason_arr[line] = DUPLICATE
    valid = valid[~dup]

    valid_out = pd.DataFrame({"date": pd.Series(day, index=valid.index, dtype=object)})
    for col in EVENT_FIELDS:
        valid_out[col] = valid[col]
    valid_out = valid_out.astype({"user_id": "int64", "item_id": "int64"}).reset_index(drop=True)

    bad_lines = np.flatnonzero(pd.notna(reason_arr))
    event_ids = typed["event_id"].reindex(bad_lines)
    rejected = pd.DataFrame(
        {
            "date": pd.Series([day] * len(bad_lines), dtype=object),
            "line_number": (bad_lines + 1).astype("int64"),
            "reason": pd.Series(reason_arr[bad_lines], dtype=object),
            "raw_line": pd.Series([lines[i].decode("utf-8", "replace") for i in bad_lines], dtype=object),
            "event_id": pd.Series(event_ids.to_numpy(), dtype=object),
        }
    )
    counts = Counter(rejected["reason"].tolist())
    assert len(valid_out) + len(rejected) == n, "every landing record is either valid or rejected"
    return IngestResult(day=day, valid=valid_out, rejected=rejected, total_records=n, reasons=counts)


def failure_budget_error(result: IngestResult, max_failure_rate: float, source: str) -> str | None:
    """A clear message when the day's contract violations exceed the budget, else None."""
    if result.failure_rate <= max_failure_rate:
        return None
    top = ", ".join(f"{reason} ({count})" for reason, count in result.top_reasons(5))
    return (
        f"{source}: {result.invalid} of {result.total_records} records "
        f"({result.failure_rate:.2%}) violate the raw-event contract, above the failure budget "
        f"max_failure_rate={max_failure_rate:.2%}. Top reasons: {top}."
    )
