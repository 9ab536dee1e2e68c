"""Parse and validate one day of landing-zone events, columnar and byte-exact (pure; no Dagster).

Every record (line) of the day's JSON Lines payload ends up in exactly one of two tables:

* ``valid``: records that satisfy the record contract, typed, one row per ``event_id``;
* ``rejected``: the dead-letter queue, with the line number, the reason, the line for humans
  (``raw_line``, UTF-8 with replacement characters) and the exact bytes of the line
  (``raw_bytes``), so that a corrected re-run needs nothing but the DLQ.

``len(valid) + len(rejected) == total_records``, always, where records are counted as
:func:`streamrec_assets.landing.count_records` counts them (a final newline does not start a
record; trailing ``\\r`` before the newline are not part of the line). Duplicates of an
``event_id`` already accepted earlier in the file (at-least-once delivery) are rejected as
``duplicate_event_id``; they are not contract violations and do not count towards the failure
budget.

Reasons, first one wins (:data:`REASON_ORDER`)
----------------------------------------------
1. ``line_too_long``: the line has more than ``max_line_bytes`` bytes; it is not inspected further.
2. ``invalid_utf8``: the line is not valid UTF-8 (strict, as Python's ``bytes.decode``).
3. ``malformed_json``: not one RFC 8259 JSON value as orjson reads it (no NaN/Infinity literals,
   no trailing commas, no number overflowing a double, nesting depth <= 1024), or not an object.
   Duplicate keys: the last one wins, as in a Python dict.
4. ``invalid_type:<field>``, fields in the order event_id, event_type, device, session_id,
   user_id, item_id, watch_seconds, event_timestamp. A present, non-null value of the wrong JSON
   type: the string fields need a non-empty string; ids a JSON number with an integral value
   below 2**53 in magnitude (booleans are not numbers); watch_seconds a JSON number;
   event_timestamp a string that ``pandas.to_datetime(format="ISO8601", utc=True)`` parses.
5. ``impression_with_watch_time``: an impression whose watch_seconds is not 0.
6. In the order of the record schema's columns: ``missing_field:event_id``;
   ``missing_field:user_id``, ``unknown_user_id``; ``missing_field:item_id``, ``unknown_item_id``;
   ``missing_field:event_type``, ``invalid_event_type``; ``missing_field:event_timestamp``,
   ``timestamp_outside_day``; ``missing_field:watch_seconds``, ``negative_watch_seconds``;
   ``missing_field:device``; ``missing_field:session_id``. A JSON ``null`` counts as missing.
7. ``duplicate_event_id``.

Two deliberate differences from the row-by-row implementation this replaces: numbers written as
JSON strings (``"user_id": "12"``) are ``invalid_type`` (pandas used to coerce them), and ties
between checks of step 6 follow the schema order above (pandera's unstable sort of its failure
cases used to pick one depending on the rest of the file).

How it runs
-----------
Line boundaries, UTF-8 validation and the reason logic are numpy over the whole payload; JSON
is parsed by DuckDB (``json_transform``, all cores) over an Arrow view of the payload (no copy).
DuckDB's JSON reader is more lenient than RFC 8259 (NaN/Infinity, trailing commas, overflowing
numbers, first duplicate key wins), so every line whose reading could differ is re-read with
orjson, one line at a time: lines DuckDB cannot parse, lines where one of the eight fields holds
a container, a string where a number belongs, or a non-finite number, lines with ``\\u003a`` or
``\\u002c`` escapes, and lines with members beyond the eight fields (or null members or repeated
keys), detected by counting ``:`` and ``,``. Records of the usual shape never reach Python one
by one; only rejects and such unusual lines do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pyarrow as pa

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
EVENT_TYPES = ("impression", "play")
STRING_FIELDS = ("event_id", "event_type", "device", "session_id")
ID_FIELDS = ("user_id", "item_id")
DLQ_COLUMNS = ("date", "line_number", "reason", "raw_line", "raw_bytes", "event_id")

LINE_TOO_LONG = "line_too_long"
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
IMPRESSION_WITH_WATCH_TIME = "impression_with_watch_time"
DUPLICATE = "duplicate_event_id"

#: Rejection reasons in priority order: a record gets the first one that applies.
REASON_ORDER: tuple[str, ...] = (
    LINE_TOO_LONG,
    INVALID_UTF8,
    MALFORMED_JSON,
    *(f"invalid_type:{f}" for f in (*STRING_FIELDS, *ID_FIELDS, "watch_seconds", "event_timestamp")),
    IMPRESSION_WITH_WATCH_TIME,
    "missing_field:event_id",
    "missing_field:user_id",
    "unknown_user_id",
    "missing_field:item_id",
    "unknown_item_id",
    "missing_field:event_type",
    "invalid_event_type",
    "missing_field:event_timestamp",
    "timestamp_outside_day",
    "missing_field:watch_seconds",
    "negative_watch_seconds",
    "missing_field:device",
    "missing_field:session_id",
    DUPLICATE,
)
_CODE = {reason: code for code, reason in enumerate(REASON_ORDER, start=1)}

# Per-field state computed by the parser.
_NA, _OK, _BAD, _PANDAS = 0, 1, 2, 3  # missing/null, typed value, wrong type, timestamp left to pandas
# Per-line state.
_OBJECT, _NOT_OBJECT, _UNPARSED, _SKIPPED = 0, 1, 2, 3

_MAX_SAFE_INT = 2**53
_CHUNK = 1 << 20  # bytes per numpy pass (bounds temporary memory)


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


# --------------------------------------------------------------------------- bytes level


@dataclass
class _Lines:
    """Where the records of a payload are: ``starts``/``ends`` (exclusive, newline and trailing
    ``\\r`` removed) and Arrow ``offsets`` (element ``i`` spans ``offsets[i]:offsets[i+1]``,
    newline included), plus the payload's totals of ``:`` and ``,``."""

    starts: np.ndarray
    ends: np.ndarray
    offsets: np.ndarray
    colons: int
    commas: int


def _scan(buf: np.ndarray) -> _Lines:
    size = buf.size
    found, colons, commas = [], 0, 0
    for a in range(0, size, _CHUNK):  # chunks that stay in cache for the three comparisons
        chunk = buf[a : a + _CHUNK]
        found.append(np.flatnonzero(chunk == 0x0A) + a)
        colons += int(np.count_nonzero(chunk == 0x3A))
        commas += int(np.count_nonzero(chunk == 0x2C))
    newlines = np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)
    ends = newlines if size == 0 or buf[-1] == 0x0A else np.append(newlines, size)
    n = ends.size
    starts = np.zeros(n, np.int64)
    starts[1:] = newlines[: n - 1] + 1
    offsets = np.append(starts, size)
    ends = ends.copy()
    while n:  # strip every trailing \r, as bytes.rstrip(b"\r")
        cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 0x0D)
        if not cr.any():
            break
        ends[cr] -= 1
    return _Lines(starts, ends, offsets, colons, commas)


def _line_of(positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.searchsorted(starts, positions, side="right") - 1


def _invalid_utf8_lines(text: bytes, buf: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Indices of the lines that are not valid UTF-8 (vectorised over the non-ASCII bytes)."""
    if text.isascii():
        return np.zeros(0, np.int64)
    pos = np.concatenate([np.flatnonzero(buf[a : a + _CHUNK] >= 0x80) + a for a in range(0, buf.size, _CHUNK)])
    b = buf[pos]
    cont = b <= 0xBF
    need = np.where((b >= 0xC2) & (b <= 0xDF), 1, np.where((b >= 0xE0) & (b <= 0xEF), 2, 0))
    need = np.where((b >= 0xF0) & (b <= 0xF4), 3, need)
    bad = ~cont & (need == 0)  # 0xC0, 0xC1, 0xF5..0xFF never start a sequence
    claimed = np.zeros(pos.size, bool)
    m = pos.size
    for k in (1, 2, 3):
        lead = np.flatnonzero(need >= k)
        nxt = lead + k
        inside = nxt < m
        ok = np.zeros(lead.size, bool)
        j, nj = lead[inside], nxt[inside]
        ok[inside] = (pos[nj] == pos[j] + k) & cont[nj]
        if k == 1:  # the second byte's range depends on the lead byte (no overlongs, no surrogates)
            second = np.where(inside, b[np.minimum(nxt, m - 1)], 0)
            first = b[lead]
            ok &= ~((first == 0xE0) & (second < 0xA0))
            ok &= ~((first == 0xED) & (second > 0x9F))
            ok &= ~((first == 0xF0) & (second < 0x90))
            ok &= ~((first == 0xF4) & (second > 0x8F))
        bad[lead[~ok]] = True
        claimed[nj[(pos[nj] == pos[j] + k) & cont[nj]]] = True
    bad |= cont & ~claimed
    return np.unique(_line_of(pos[bad], starts))


def _escaped_separators(text: bytes, buf: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Lines with ``\\u003a`` or ``\\u002c`` (an escaped ``:`` or ``,``), which the separator
    count below cannot see."""
    if b"\\" not in text:
        return np.zeros(0, np.int64)
    pos = np.concatenate([np.flatnonzero(buf[a : a + _CHUNK] == 0x5C) + a for a in range(0, buf.size, _CHUNK)])
    pos = pos[pos + 5 < buf.size]
    hex3 = buf[pos + 4]
    last = buf[pos + 5] | 0x20  # lower case
    hit = (
        (buf[pos + 1] == ord("u"))
        & (buf[pos + 2] == ord("0"))
        & (buf[pos + 3] == ord("0"))
        & (((hex3 == ord("3")) & (last == ord("a"))) | ((hex3 == ord("2")) & (last == ord("c"))))
    )
    return np.unique(_line_of(pos[hit], starts))


# --------------------------------------------------------------------------- parsing (DuckDB)


_TIMESTAMP_FAST = (  # the canonical form; pandas and DuckDB read it alike
    r"(19|20|21)[0-9]{2}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?Z"
)
# what DuckDB renders a JSON number as (NaN, Infinity and raw big numbers included)
_NUMBER_LOOK = r"-?([0-9][0-9.eE+-]*|[nN][aA][nN]|[iI][nN][fF]([iI][nN][iI][tT][yY])?)"
_TEXT_FIELDS = (*STRING_FIELDS, "event_timestamp")  # read as VARCHAR
_NUMBER_FIELDS = (*ID_FIELDS, "watch_seconds")  # read as raw JSON


def _parse_sql() -> str:
    """One row per input line ``l`` (NULL: not to be parsed) with its index ``i``: a ``flags``
    word (line state, lax bit, event type, a 2-bit state per field), the expected separator
    counts and the typed values. DuckDB does not keep the input order here, hence ``i``.

    Text fields are read as VARCHAR: a value that could be the rendering of a non-string
    (true, false, a container, a number: NaN/Infinity and raw big numbers included) is checked
    with ``json_type``. Number fields are read as raw JSON, typed by their first character.
    Costly expressions sit behind CASE, which DuckDB evaluates only for the rows that need it.
    """

    def any_of(expr: str, *values: object) -> str:  # an IN list may be planned as a join
        return "(" + " OR ".join(f"{expr} = {v!r}" if isinstance(v, str) else f"{expr} = {v}" for v in values) + ")"

    def count(v: str, ch: str) -> str:
        return f"(CASE WHEN contains({v}, '{ch}') THEN strlen({v}) - strlen(replace({v}, '{ch}', '')) ELSE 0 END)"

    struct = "{" + ",".join(f'"{f}":"{"VARCHAR" if f in _TEXT_FIELDS else "JSON"}"' for f in EVENT_FIELDS) + "}"
    # Layers (one projection each, so that no expression is evaluated twice):
    # fields -> first characters -> json_type / casts -> states and values -> output.
    fields = [f"j.{f} AS {f}_{'v' if f in _TEXT_FIELDS else 'r'}" for f in EVENT_FIELDS]
    firsts = [f"ascii({f}_v) AS {f}_a" for f in _TEXT_FIELDS] + [f"ascii({f}_r) AS {f}_a" for f in _NUMBER_FIELDS]
    typed, middle, outer, e_colon, e_comma = [], [], [], [], []
    for f in _TEXT_FIELDS:
        v, a = f"{f}_v", f"{f}_a"
        ambiguous = (
            f"CASE WHEN {v} IS NULL THEN false WHEN {a} = 91 OR {a} = 123 THEN true "
            f"WHEN {a} = 116 THEN {v} = 'true' WHEN {a} = 102 THEN {v} = 'false' "
            f"WHEN {a} = 45 OR ({a} >= 48 AND {a} <= 57) OR ({any_of(a, 73, 78, 105, 110)} AND strlen({v}) <= 9) "
            f"THEN NOT contains({v}, ':') AND regexp_full_match({v}, '{_NUMBER_LOOK}') ELSE false END"
        )
        typed.append(f"CASE WHEN {ambiguous} THEN json_type(l, '$.{f}') END AS {f}_t")
        jt = f"{f}_t"
        middle.append(f"{v} IS NOT NULL AND coalesce({jt} = 'VARCHAR', true) AS {f}_s")
        middle.append(
            f"CASE WHEN {jt} IS NULL THEN false WHEN {jt} = 'ARRAY' OR {jt} = 'OBJECT' THEN true "
            f"WHEN {jt} = 'DOUBLE' THEN NOT coalesce(isfinite(TRY_CAST({v} AS DOUBLE)), false) ELSE false END AS {f}_lax"
        )
    for f in _NUMBER_FIELDS:
        r, a, d = f"{f}_r", f"{f}_a", f"{f}_d"
        typed.append(f"CASE WHEN NOT {any_of(a, 34, 116, 102, 91, 123)} THEN TRY_CAST({r} AS DOUBLE) END AS {d}")
        if f in ID_FIELDS:
            ok = f"(isfinite({d}) AND {d} = trunc({d}) AND abs({d}) < {float(_MAX_SAFE_INT)})"
            value = f"CAST({d} AS BIGINT)"
        else:
            ok, value = f"isfinite({d})", d
        middle.append(f"CASE WHEN {r} IS NULL THEN {_NA} WHEN coalesce({ok}, false) THEN {_OK} ELSE {_BAD} END AS {f}_k")
        # a string may hide separators; containers and NaN/Infinity/overflow: orjson decides
        middle.append(
            f"CASE WHEN {r} IS NULL THEN false WHEN {any_of(a, 34, 91, 123)} THEN true WHEN {any_of(a, 116, 102)} "
            f"THEN false ELSE NOT coalesce(isfinite({d}), false) END AS {f}_lax"
        )
        outer.append(f"CASE WHEN {f}_k = {_OK} THEN {value} ELSE 0 END AS {f}")
    for f in STRING_FIELDS:
        v = f"{f}_v"
        middle.append(f"CASE WHEN {v} IS NULL THEN {_NA} WHEN {f}_s AND {v} <> '' THEN {_OK} ELSE {_BAD} END AS {f}_k")
        outer.append(f"CASE WHEN {f}_k = {_OK} THEN {v} END AS {f}")
        e_colon.append(f"(CASE WHEN {f}_s THEN {count(v, ':')} ELSE 0 END)")
        e_comma.append(f"(CASE WHEN {f}_s THEN {count(v, ',')} ELSE 0 END)")
    ts = "event_timestamp_v"
    middle.append(
        f"CASE WHEN {ts} IS NOT NULL AND event_timestamp_t IS NULL AND regexp_full_match({ts}, '{_TIMESTAMP_FAST}') "
        f"THEN epoch_us(TRY_CAST(left({ts}, -1) AS TIMESTAMP)) END AS ts_fast"
    )
    outer.append("coalesce(ts_fast, 0) AS ts_us")
    outer.append(f"CASE WHEN event_timestamp_k = {_PANDAS} THEN {ts} END AS ts_text")
    e_colon.append(f"(CASE WHEN ts_fast IS NOT NULL THEN 2 WHEN event_timestamp_s THEN {count(ts, ':')} ELSE 0 END)")
    e_comma.append(f"(CASE WHEN event_timestamp_k = {_PANDAS} THEN {count(ts, ',')} ELSE 0 END)")
    k_ts = (
        f"CASE WHEN {ts} IS NULL THEN {_NA} WHEN NOT event_timestamp_s THEN {_BAD} "
        f"WHEN ts_fast IS NOT NULL THEN {_OK} ELSE {_PANDAS} END AS event_timestamp_k"
    )

    state = (
        f"CASE WHEN ok IS NULL THEN {_SKIPPED} WHEN NOT ok THEN {_UNPARSED} WHEN nn > 0 THEN {_OBJECT} "
        f"WHEN regexp_matches(l, '^[ \\t\\r\\n]*[{{]') THEN {_OBJECT} ELSE {_NOT_OBJECT} END"
    )
    lax = " OR ".join(f"{f}_lax" for f in (*_TEXT_FIELDS, *_NUMBER_FIELDS))
    etype = "CASE event_type_v WHEN 'impression' THEN 1 WHEN 'play' THEN 2 ELSE 0 END"
    flags = " + ".join(
        [state, f"4 * CAST({lax} AS INTEGER)", f"8 * ({etype})"]
        + [f"{32 * 4**j} * {f}_k" for j, f in enumerate(EVENT_FIELDS)]
    )
    present = " + ".join(
        f"CAST({f}_{'v' if f in _TEXT_FIELDS else 'r'} IS NOT NULL AS INTEGER)" for f in EVENT_FIELDS
    )
    return f"""
    SELECT i, CAST({flags} AS INTEGER) AS flags,
      CAST(nn + {" + ".join(e_colon)} AS INTEGER) AS e_colon,
      CAST(greatest(nn - 1, 0) + {" + ".join(e_comma)} AS INTEGER) AS e_comma,
      {", ".join(outer)}
    FROM (SELECT *, {k_ts} FROM (
    SELECT *, {", ".join(middle)} FROM (
    SELECT *, {present} AS nn, {", ".join(typed)} FROM (
    SELECT *, {", ".join(firsts)} FROM (
    SELECT i, l, ok, {", ".join(fields)} FROM (
    SELECT i, l, ok, CASE WHEN ok THEN json_transform(l, '{struct}') END AS j
    FROM (SELECT i, l, json_valid(l) AS ok FROM lines)))))))
    """


def _parse(lines: pa.Array) -> tuple[pa.Table, np.ndarray]:
    """The parsed fields of ``lines`` and, for each line, the row of the table that holds them."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.register("lines", pa.table({"i": np.arange(len(lines)), "l": lines}))
        table = con.sql(_parse_sql()).to_arrow_table()
    finally:
        con.close()
    row = np.empty(len(lines), np.int64)
    row[table["i"].to_numpy()] = np.arange(table.num_rows)
    return table, row


def _separator_counts(text: bytes, lines: _Lines, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``:`` and ``,`` in each of the lines ``which`` (whole lines, newline included)."""
    import duckdb
    import pyarrow as pa

    if which.size <= 10_000:
        bounds = zip(lines.offsets[which].tolist(), lines.offsets[which + 1].tolist(), strict=True)
        pairs = [(text.count(b":", a, b), text.count(b",", a, b)) for a, b in bounds]
        counts = np.array(pairs, np.int64).reshape(-1, 2)
        return counts[:, 0], counts[:, 1]
    offsets = lines.offsets
    view = pa.Array.from_buffers(pa.large_string(), offsets.size - 1, [None, pa.py_buffer(offsets), pa.py_buffer(text)])
    con = duckdb.connect()
    try:
        con.register("lines", pa.table({"i": np.arange(len(view)), "l": view}).take(which))
        out = con.sql(
            "SELECT i, strlen(l) - strlen(replace(l, ':', '')) AS c, strlen(l) - strlen(replace(l, ',', '')) AS k "
            "FROM lines"
        ).to_arrow_table()
    finally:
        con.close()
    order = np.argsort(out["i"].to_numpy(), kind="stable")
    return out["c"].to_numpy()[order], out["k"].to_numpy()[order]


def _canonical(line: bytes) -> bytes | None:
    """The record re-serialised by orjson (the eight fields only), or None if it is malformed."""
    import orjson

    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    # A container is the wrong type whatever it holds; keep only its kind (and no deep nesting).
    return orjson.dumps(
        {k: ([] if isinstance(v, list) else {} if isinstance(v, dict) else v) for k, v in obj.items() if k in EVENT_FIELDS}
    )


# --------------------------------------------------------------------------- the day


def _catalogue(ids) -> np.ndarray:
    if isinstance(ids, set | frozenset) or not hasattr(ids, "__len__"):
        ids = list(ids)
    return np.unique(np.asarray(ids).astype(np.int64, copy=False))


def _known(values: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """``values`` found in the sorted ``catalogue`` (a bitmap when the ids are small and dense)."""
    if catalogue.size == 0:
        return np.zeros(values.size, bool)
    low, high = int(catalogue[0]), int(catalogue[-1])
    if high - low < max(1 << 16, 64 * catalogue.size):
        table = np.zeros(high - low + 2, bool)
        table[catalogue - low] = True
        return table[np.clip(values - low, -1, high - low + 1)]  # -1: the extra False at the end
    at = np.minimum(np.searchsorted(catalogue, values), catalogue.size - 1)
    return catalogue[at] == values


def _valid_frame(day: str, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(columns["user_id"])
    ts = pd.Series(np.asarray(columns["event_timestamp"], np.int64).view("datetime64[us]"), copy=False)
    data = {
        "date": np.full(n, day, dtype=object),
        **{f: columns[f] for f in EVENT_FIELDS},
        "event_timestamp": ts.dt.tz_localize("UTC"),
    }
    frame = pd.DataFrame({c: data[c] for c in ("date", *EVENT_FIELDS)}, copy=False)
    return frame.astype({"user_id": "int64", "item_id": "int64", "watch_seconds": "float64"}, copy=False)


def _dlq(day: str, line_numbers, reasons, raw: list[bytes], event_ids: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.Series([day] * len(raw), dtype=object),
            "line_number": np.asarray(line_numbers, dtype=np.int64),
            "reason": pd.Series(reasons, dtype=object),
            "raw_line": pd.Series([b.decode("utf-8", "replace") for b in raw], dtype=object),
            "raw_bytes": pd.Series(raw, dtype=object),
            "event_id": pd.Series(event_ids, dtype=object),
        },
        columns=list(DLQ_COLUMNS),
    )


def _empty_result(day: str) -> IngestResult:
    columns = {f: np.zeros(0, object) for f in STRING_FIELDS}
    columns.update(user_id=np.zeros(0, np.int64), item_id=np.zeros(0, np.int64))
    columns.update(watch_seconds=np.zeros(0), event_timestamp=np.zeros(0, np.int64))
    return IngestResult(day=day, valid=_valid_frame(day, columns), rejected=_dlq(day, [], [], [], []), total_records=0)


def ingest_day(
    text: bytes,
    day: str,
    user_ids: Iterable[int] | np.ndarray | pd.Series,
    item_ids: Iterable[int] | np.ndarray | pd.Series,
    max_line_bytes: int = 1 << 20,
) -> IngestResult:
    """Parse and validate the decompressed JSON Lines payload ``text`` of partition ``day``.

    ``user_ids`` / ``item_ids`` are the catalogue ids; lines longer than ``max_line_bytes``
    bytes are rejected as ``line_too_long`` without being parsed.
    """
    import pyarrow as pa

    text = bytes(text)
    buf = np.frombuffer(text, dtype=np.uint8)
    lines = _scan(buf)
    starts, ends, offsets = lines.starts, lines.ends, lines.offsets
    n = starts.size
    if n == 0:
        return _empty_result(day)

    reason = np.zeros(n, np.int8)  # 0: valid so far, else a code of REASON_ORDER
    reason[(ends - starts) > max_line_bytes] = _CODE[LINE_TOO_LONG]
    bad_utf8 = _invalid_utf8_lines(text, buf, starts)
    reason[bad_utf8[reason[bad_utf8] == 0]] = _CODE[INVALID_UTF8]

    # An Arrow view of the payload, one element per line (newline included: JSON whitespace);
    # lines already rejected are null, so DuckDB never reads them.
    validity = pa.py_buffer(np.packbits(reason == 0, bitorder="little"))
    view = pa.Array.from_buffers(pa.large_string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(text)])
    table, source = _parse(view)  # line -> row of ``table``
    flags = table["flags"].to_numpy()[source]
    st = flags & 3
    lax = ((flags >> 2) & 1).astype(bool) | (st == _UNPARSED)
    lax[_escaped_separators(text, buf, starts)] = True
    lax &= reason == 0

    # A line DuckDB read as an object holding nothing but the eight fields, each once and not
    # null, without trailing comma, has exactly ``e_colon`` colons and ``e_comma`` commas; any
    # other object has more. Compare the totals, and count line by line only when they differ.
    plain = (st == _OBJECT) & ~lax
    e_colon = table["e_colon"].to_numpy()[source]
    e_comma = table["e_comma"].to_numpy()[source]
    others = np.flatnonzero(~plain)
    other_colons, other_commas = _separator_counts(text, lines, others)
    exact = (
        lines.colons - int(other_colons.sum()) == int(e_colon[plain].sum())
        and lines.commas - int(other_commas.sum()) == int(e_comma[plain].sum())
    )
    if not exact:
        which = np.flatnonzero(plain)
        colons_of, commas_of = _separator_counts(text, lines, which)
        lax[which[(colons_of != e_colon[which]) | (commas_of != e_comma[which])]] = True

    # Lines DuckDB might read differently from orjson: orjson decides, and its canonical
    # re-serialisation goes through the same columnar typing.
    lax_idx = np.flatnonzero(lax)
    if lax_idx.size:
        canonical = [_canonical(text[s:e]) for s, e in zip(starts[lax_idx].tolist(), ends[lax_idx].tolist(), strict=True)]
        malformed = np.fromiter((c is None for c in canonical), bool, lax_idx.size)
        reason[lax_idx[malformed]] = _CODE[MALFORMED_JSON]
        redo = lax_idx[~malformed]
        if redo.size:
            again, again_row = _parse(pa.array([c.decode() for c in canonical if c is not None], pa.large_string()))
            source[redo] = table.num_rows + again_row
            table = pa.concat_tables([table, again])
            flags = table["flags"].to_numpy()[source]
    reason[(reason == 0) & ((flags & 3) != _OBJECT)] = _CODE[MALFORMED_JSON]

    etype = (flags >> 3) & 3
    k = {f: (flags >> (5 + 2 * j)) & 3 for j, f in enumerate(EVENT_FIELDS)}
    user = table["user_id"].to_numpy()[source]
    item = table["item_id"].to_numpy()[source]
    watch = table["watch_seconds"].to_numpy()[source]
    ts_us = table["ts_us"].to_numpy()[source]

    ts_todo = np.flatnonzero((k["event_timestamp"] == _PANDAS) & (reason == 0))
    if ts_todo.size:  # timestamps not in the canonical form: pandas decides, as it always did
        raw_ts = table["ts_text"].take(pa.array(source[ts_todo])).to_pylist()
        stamps = pd.to_datetime(pd.Series(raw_ts, dtype=object), format="ISO8601", utc=True, errors="coerce")
        good = stamps.notna().to_numpy()
        micros = np.asarray(stamps.dt.tz_localize(None), dtype="datetime64[us]").view(np.int64)
        ts_us[ts_todo[good]] = micros[good]
        k["event_timestamp"][ts_todo] = np.where(good, _OK, _BAD)

    def reject(mask: np.ndarray, why: str) -> None:
        reason[(reason == 0) & mask] = _CODE[why]

    for f in (*STRING_FIELDS, *ID_FIELDS, "watch_seconds", "event_timestamp"):
        reject(k[f] == _BAD, f"invalid_type:{f}")
    reject((etype == 1) & (k["watch_seconds"] == _OK) & (watch != 0), IMPRESSION_WITH_WATCH_TIME)
    start = pd.Timestamp(day, tz="UTC").value // 1000
    end = start + 86_400_000_000
    checks = {
        "event_id": None,
        "user_id": ("unknown_user_id", lambda: ~_known(user, _catalogue(user_ids))),
        "item_id": ("unknown_item_id", lambda: ~_known(item, _catalogue(item_ids))),
        "event_type": ("invalid_event_type", lambda: etype == 0),
        "event_timestamp": ("timestamp_outside_day", lambda: (ts_us < start) | (ts_us >= end)),
        "watch_seconds": ("negative_watch_seconds", lambda: watch < 0),
        "device": None,
        "session_id": None,
    }
    for f, check in checks.items():
        reject(k[f] == _NA, f"missing_field:{f}")
        if check is not None:
            reject((k[f] == _OK) & check[1](), check[0])

    # Python strings for the rows that need them (the valid ones, and the DLQ's event_id).
    strings = {f: table[f].to_numpy(zero_copy_only=False) for f in STRING_FIELDS}
    ok_rows = np.flatnonzero(reason == 0)
    event_ids = strings["event_id"][source[ok_rows]]
    first = ~pd.Series(event_ids, dtype=object, copy=False).duplicated(keep="first").to_numpy()
    reason[ok_rows[~first]] = _CODE[DUPLICATE]
    keep = ok_rows[first]
    rows = source[keep]
    valid = _valid_frame(
        day,
        {
            **{f: strings[f][rows] for f in STRING_FIELDS},
            "user_id": user[keep],
            "item_id": item[keep],
            "watch_seconds": watch[keep],
            "event_timestamp": ts_us[keep],
        },
    )

    bad = np.flatnonzero(reason != 0)
    dlq_ids = np.where(k["event_id"][bad] == _OK, strings["event_id"][source[bad]], None)
    names = np.array(("", *REASON_ORDER), dtype=object)
    raw = [text[s:e] for s, e in zip(starts[bad].tolist(), ends[bad].tolist(), strict=True)]
    rejected = _dlq(day, bad + 1, names[reason[bad]], raw, dlq_ids.tolist())
    tally = np.bincount(reason[bad], minlength=names.size)
    counts = Counter({names[code]: int(c) for code, c in enumerate(tally) if c})
    assert len(valid) + len(rejected) == n, "every landing record is either valid or rejected"
    return IngestResult(day=day, valid=valid, rejected=rejected, total_records=n, reasons=counts)


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
