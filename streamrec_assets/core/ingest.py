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
Line boundaries, UTF-8 validation and all the reason logic are numpy over the whole payload.
DuckDB (all cores) parses an Arrow view of the payload (no copy, one element per line):
``json_valid`` + ``json_transform``, the text fields as VARCHAR, the numbers cast to DOUBLE, the
canonical timestamps (``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``) to epoch microseconds; pandas parses
the other timestamp strings, as before.

DuckDB's JSON reader is more lenient than orjson's (NaN/Infinity literals, trailing commas,
numbers overflowing a double, the first of repeated keys wins), so no line is taken from DuckDB
unless it provably reads the same:

* a line whose object holds the eight fields and nothing else has a known number of ``:`` and
  ``,``; totals over the payload prove it for all such lines at once;
* the other lines (extra or null members, repeated keys, ``\\u003a``/``\\u002c`` escapes) are
  checked in DuckDB: strict JSON token by token (a regular expression), no repeated key;
* what is left goes through orjson one line at a time, and its canonical re-serialisation
  through the same columnar typing: lines DuckDB cannot parse (rejects), lines where one of the
  eight fields holds a container, a string where a number belongs, NaN or an overflowing
  number, and lines failing the strict check.

A text value that may be the rendering of another JSON type (``true``, ``12``, ``[...]``) gets
its type from DuckDB's ``json_type``. Typical days never reach Python one record at a time; only
rejected lines and such rare shapes do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

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
_COUNT_IN_PYTHON = 10_000  # up to this many lines, separators are counted with bytes.count


@dataclass
class IngestResult:
    """Outcome of ingesting one landing file."""

    day: str
    valid: pd.DataFrame
    rejected: pd.DataFrame
    total_records: int
    reasons: Counter = field(default_factory=Counter)
    #: Line numbers (1-based) of the valid rows, in their order.
    valid_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

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
# What DuckDB renders a JSON number as, once read as VARCHAR (NaN, Infinity, raw big numbers).
_NUMBER_LOOK = r"^-?(?:[0-9][0-9.eE+-]*|[nN][aA][nN]|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)$"
_TEXT_FIELDS = (*STRING_FIELDS, "event_timestamp")  # read as VARCHAR
_NUMBER_FIELDS = (*ID_FIELDS, "watch_seconds")  # read as DOUBLE, the raw JSON when not a number


def _parse_sql() -> str:
    """DuckDB's share, one row per non-null line ``l`` with its index ``i``: ``ok`` (JSON as
    DuckDB reads it), the text fields as VARCHAR, the number fields as DOUBLE with
    ``<field>_raw`` (the raw JSON) when the value is no number, and the timestamp as epoch
    microseconds when in canonical form, else ``ts_text``. The rest is numpy, far cheaper per
    row than SQL expressions."""
    struct = "{" + ",".join(f'"{f}":"{"VARCHAR" if f in _TEXT_FIELDS else "JSON"}"' for f in EVENT_FIELDS) + "}"
    reads = [f"j.{f} AS {f}" for f in STRING_FIELDS] + ["hash(j.event_id) AS event_id_hash"]
    reads += [f"TRY_CAST(CAST(j.{f} AS VARCHAR) AS DOUBLE) AS {f}, j.{f} AS {f}_json" for f in _NUMBER_FIELDS]
    reads.append(
        f"CASE WHEN regexp_full_match(j.event_timestamp, '{_TIMESTAMP_FAST}') "
        "THEN epoch_us(TRY_CAST(left(j.event_timestamp, -1) AS TIMESTAMP)) END AS ts_us, j.event_timestamp AS ts_any"
    )
    out = [*STRING_FIELDS, "event_id_hash", *_NUMBER_FIELDS]
    out += [f"CASE WHEN {f} IS NULL THEN CAST({f}_json AS VARCHAR) END AS {f}_raw" for f in _NUMBER_FIELDS]
    out += ["ts_us", "CASE WHEN ts_us IS NULL THEN ts_any END AS ts_text"]
    return f"""
    SELECT i, ok, {", ".join(out)} FROM (
    SELECT i, ok, {", ".join(reads)} FROM (
    SELECT i, ok, CASE WHEN ok THEN json_transform(l, '{struct}') END AS j
    FROM (SELECT i, json_valid(l) AS ok, l FROM lines)))
    """


def _query(sql: str, lines: pa.Array, index: np.ndarray) -> pa.Table:
    """``sql`` over the table ``lines`` (``i``: ``index``, ``l``: ``lines``), rows sorted by ``i``."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.register("lines", pa.table({"i": index, "l": lines}))
        table = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    got = table["i"].to_numpy()
    if got.size > 1 and not (np.diff(got) > 0).all():  # DuckDB may hand batches back out of order
        table = table.take(pa.array(np.argsort(got, kind="stable")))
    return table


@dataclass
class _Strings:
    """An Arrow string column in numpy terms."""

    arr: pa.Array
    valid: np.ndarray
    offsets: np.ndarray
    data: np.ndarray
    lengths: np.ndarray
    first: np.ndarray  # first byte, -1 when null or empty

    @classmethod
    def of(cls, column) -> _Strings:
        import pyarrow as pa

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(arr)
        wide = pa.types.is_large_string(arr.type)
        buffers = arr.buffers()
        offsets = np.frombuffer(
            buffers[1], np.int64 if wide else np.int32, count=n + 1, offset=arr.offset * (8 if wide else 4)
        ).astype(np.int64)
        data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        lengths = np.where(valid, np.diff(offsets), 0)
        first = np.full(n, -1, np.int16)
        some = lengths > 0
        first[some] = data[offsets[:-1][some]]
        return cls(arr, valid, offsets, data, lengths, first)

    def count(self, byte: int) -> np.ndarray:
        """Occurrences of ``byte`` in each string."""
        out = np.zeros(self.valid.size, np.int64)
        lo, hi = (int(self.offsets[0]), int(self.offsets[-1])) if self.valid.size else (0, 0)
        if bytes((byte,)) not in self.data[lo:hi].tobytes():  # memchr: the usual case
            return out
        hits = np.flatnonzero(self.data[lo:hi] == byte) + lo
        if hits.size:
            rows = np.searchsorted(self.offsets, hits, side="right") - 1
            out += np.bincount(rows, minlength=out.size)
        return np.where(self.valid, out, 0)

    def ambiguous(self) -> np.ndarray:
        """Values that may be the VARCHAR rendering of a non-string (number, true, false, container)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        f, length = self.first, self.lengths
        maybe = self.valid & (
            ((f >= ord("0")) & (f <= ord("9")))
            | (f == ord("-"))
            | (f == ord("["))
            | (f == ord("{"))
            | ((f == ord("t")) & (length == 4))
            | ((f == ord("f")) & (length == 5))
            | (np.isin(f, [ord(c) for c in "INin"]) & (length <= 9))
        )
        out = np.zeros(f.size, bool)
        rows = np.flatnonzero(maybe)
        if rows.size:
            sub = self.arr.take(pa.array(rows))
            hit = pc.or_(pc.match_substring_regex(sub, _NUMBER_LOOK), pc.is_in(sub, value_set=pa.array(["true", "false"])))
            out[rows] = hit.to_numpy(zero_copy_only=False) | (f[rows] == ord("[")) | (f[rows] == ord("{"))
        return out


@dataclass
class _Batch:
    """What DuckDB and numpy made of some lines, one entry per line, in line order."""

    state: np.ndarray  # _OBJECT, _NOT_OBJECT, _UNPARSED, _SKIPPED
    lax: np.ndarray  # DuckDB may read the line differently from orjson: orjson decides
    etype: np.ndarray  # 1 impression, 2 play, 0 anything else
    k: dict[str, np.ndarray]  # per field: _NA, _OK, _BAD, _PANDAS
    values: dict[str, np.ndarray]  # typed values (strings: object arrays, None unless _OK)
    e_colon: np.ndarray  # the separators the line has if it holds its fields and nothing else
    e_comma: np.ndarray

    def assign(self, where: np.ndarray, other: _Batch) -> None:
        """Overwrite the lines ``where`` with ``other`` (one entry per line of ``where``)."""
        for name in ("state", "lax", "etype", "e_colon", "e_comma"):
            getattr(self, name)[where] = getattr(other, name)
        for group in ("k", "values"):
            for key, array in getattr(self, group).items():
                array[where] = getattr(other, group)[key]


def _line_states(ok: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per line, from DuckDB's ``json_valid`` (null for the skipped lines): the state
    (_OBJECT, _UNPARSED or _SKIPPED; _NOT_OBJECT is told later) and ``lax`` (the lines DuckDB
    could not parse: orjson decides)."""
    state = np.full(len(ok), _OBJECT, np.int8)
    state[~ok.fill_null(True).to_numpy(zero_copy_only=False)] = _UNPARSED
    state[~ok.is_valid().to_numpy(zero_copy_only=False)] = _SKIPPED
    return state, state == _UNPARSED


def _ambiguous_types(lines: pa.Array, texts: dict[str, _Strings]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per text field: the rows whose value may be the rendering of a non-string (see
    :meth:`_Strings.ambiguous`) and their JSON type as DuckDB's ``json_type`` reads it (rare:
    one parse per such line for all the paths)."""
    import pyarrow as pa

    ambiguous = {f: col.ambiguous() for f, col in texts.items()}
    asked = np.flatnonzero(np.logical_or.reduce(list(ambiguous.values())))
    if not asked.size:
        return {f: (np.zeros(0, np.int64), np.zeros(0, object)) for f in texts}
    paths = ", ".join(f"'$.{f}'" for f in texts)
    columns = ", ".join(f"t[{j + 1}] AS {f}" for j, f in enumerate(texts))
    sql = f"SELECT i, {columns} FROM (SELECT i, json_type(l, [{paths}]) AS t FROM lines)"
    types = _query(sql, lines.take(pa.array(asked)), asked)
    out = {}
    for f in texts:
        rows = np.flatnonzero(ambiguous[f])
        kinds = np.zeros(0, object)
        if rows.size:
            kinds = types[f].to_numpy(zero_copy_only=False)[np.searchsorted(asked, rows)]
        out[f] = (rows, kinds)
    return out


def _string_values(
    col: _Strings, strings: np.ndarray, rows: np.ndarray, kinds: np.ndarray, lax: np.ndarray
) -> np.ndarray:
    """Which values of the text column ``col`` are JSON strings, given the JSON types ``kinds`` of
    its ambiguous ``rows``. Marks ``lax`` the lines orjson must decide: a container, NaN/Infinity
    or an overflowing number."""
    is_string = col.valid.copy()
    if rows.size:
        is_string[rows] = kinds == "VARCHAR"
        for row, kind in zip(rows.tolist(), kinds.tolist(), strict=True):
            if kind in ("ARRAY", "OBJECT") or (kind == "DOUBLE" and not np.isfinite(float(strings[row]))):
                lax[row] = True
    return is_string


def _read_texts(table: pa.Table, lines: pa.Array, lax: np.ndarray, k: dict, values: dict):
    """Type the text fields of :func:`_parse_sql`'s ``table`` into ``k`` and ``values`` (marking
    ``lax`` the lines orjson must decide); returns the ``event_type`` column and, per line, how
    many of these fields are present and the ``:`` and ``,`` they account for."""
    n = len(lax)
    present, e_colon, e_comma = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    texts = {f: _Strings.of(table[f]) for f in STRING_FIELDS}
    texts["event_timestamp"] = _Strings.of(table["ts_text"])
    settled = _ambiguous_types(lines, texts)
    for f, col in texts.items():
        # low-cardinality columns: one Python string per distinct value
        strings = col.arr.to_pandas(deduplicate_objects=f in ("event_type", "device")).to_numpy()
        is_string = _string_values(col, strings, *settled[f], lax)
        if f == "event_timestamp":
            ts = table["ts_us"].combine_chunks()
            fast = ts.is_valid().to_numpy(zero_copy_only=False)
            values["ts_us"] = np.array(ts.fill_null(0).to_numpy())  # writable
            k[f] = np.select([fast, ~col.valid, is_string], [_OK, _NA, _PANDAS], _BAD).astype(np.int8)
            values["ts_text"] = np.where(is_string, strings, None)
            present += fast | col.valid
            e_colon += np.where(fast, 2, 0)
        else:
            k[f] = np.select([~col.valid, is_string & (col.lengths > 0)], [_NA, _OK], _BAD).astype(np.int8)
            values[f] = np.where(k[f] == _OK, strings, None)
            present += col.valid
        e_colon += np.where(is_string, col.count(ord(":")), 0)
        e_comma += np.where(is_string, col.count(ord(",")), 0)
    return texts["event_type"].arr, present, e_colon, e_comma


def _read_numbers(table: pa.Table, lax: np.ndarray, k: dict, values: dict) -> np.ndarray:
    """Type the number fields of :func:`_parse_sql`'s ``table`` into ``k`` and ``values``: DOUBLE
    when DuckDB could cast the raw JSON, else the raw JSON (marking ``lax`` the lines orjson must
    decide); returns, per line, how many of these fields are present."""
    present = np.zeros(len(lax), np.int64)
    with np.errstate(invalid="ignore"):
        for f in _NUMBER_FIELDS:
            column = table[f].combine_chunks()
            number = column.is_valid().to_numpy(zero_copy_only=False)
            x = column.fill_null(0.0).to_numpy()
            raw = _Strings.of(table[f"{f}_raw"])  # a string, true/false, a container
            finite = number & np.isfinite(x)
            lax |= (number & ~finite) | (raw.valid & (raw.first != ord("t")) & (raw.first != ord("f")))
            if f in ID_FIELDS:
                good = finite & (x == np.trunc(x)) & (np.abs(x) < _MAX_SAFE_INT)
                values[f] = np.where(good, x, 0).astype(np.int64)
            else:
                good = finite
                values[f] = np.where(good, x, 0.0)
            k[f] = np.select([good, number | raw.valid], [_OK, _BAD], _NA).astype(np.int8)
            present += number | raw.valid
    return present


def _event_type_codes(event_type: pa.Array, kind: np.ndarray) -> np.ndarray:
    """1 for an impression, 2 for a play, 0 for anything else (or no string at all)."""
    import pyarrow.compute as pc

    etype = np.where(pc.equal(event_type, "impression").fill_null(False).to_numpy(zero_copy_only=False), 1, 0)
    etype = np.where(pc.equal(event_type, "play").fill_null(False).to_numpy(zero_copy_only=False), 2, etype)
    return np.where(kind == _OK, etype, 0).astype(np.int8)


def _read(lines: pa.Array, first_byte) -> _Batch:
    """Parse ``lines`` (null: skip) with DuckDB and type every field of every line with numpy.

    ``first_byte(i)``: the first non-whitespace byte of line ``i``, asked only for the lines
    DuckDB read as JSON without any of the eight fields (``{}``, or not an object)."""
    table = _query(_parse_sql(), lines, np.arange(len(lines)))
    state, lax = _line_states(table["ok"].combine_chunks())
    k: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    # Text fields. A value that may be the rendering of a non-string gets its JSON type from DuckDB
    # (rare: only values starting like a number, true, false or a container).
    event_type, present, e_colon, e_comma = _read_texts(table, lines, lax, k, values)
    present += _read_numbers(table, lax, k, values)
    values["event_id_hash"] = np.array(table["event_id_hash"].fill_null(0).to_numpy())  # DuckDB's: deterministic
    for line in np.flatnonzero((state == _OBJECT) & (present == 0)):
        if first_byte(int(line)) != ord("{"):  # JSON, but not an object
            state[line] = _NOT_OBJECT
    e_colon += present
    e_comma += np.maximum(present - 1, 0)
    return _Batch(state, lax, _event_type_codes(event_type, k["event_type"]), k, values, e_colon, e_comma)


def _separator_counts(text: bytes, lines: _Lines, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``:`` and ``,`` in each of the lines ``which``."""
    if which.size <= _COUNT_IN_PYTHON:
        bounds = zip(lines.offsets[which].tolist(), lines.offsets[which + 1].tolist(), strict=True)
        counts = np.array([(text.count(b":", a, b), text.count(b",", a, b)) for a, b in bounds], np.int64)
        counts = counts.reshape(-1, 2)
        return counts[:, 0], counts[:, 1]
    buf = np.frombuffer(text, np.uint8)
    n = lines.starts.size
    colons, commas = np.zeros(n, np.int64), np.zeros(n, np.int64)
    step = 1 << 24
    for a in range(0, buf.size, step):
        chunk = buf[a : a + step]
        for byte, total in ((0x3A, colons), (0x2C, commas)):
            at = np.flatnonzero(chunk == byte) + a
            total += np.bincount(_line_of(at, lines.starts), minlength=n)
    return colons[which], commas[which]


# JSON as orjson reads it, token by token (DuckDB already checked the grammar): strings, true,
# false, null, punctuation, numbers right after ``:``, ``[`` or ``,`` with at most 150 digits and
# an exponent of at most two (no overflow; no number split in two), a comma always followed by
# a value or a key (no trailing comma). No NaN, no Infinity.
_WS = r"[ \t\r\n]"
_STRING = r'"(?:[^"\\]|\\.)*"'
_NUMBER = r"-?[0-9.]{1,150}(?:[eE][-+]?[0-9]{1,2})?"
_STRICT_JSON = (
    rf"(?:{_STRING}|true|false|null|{_WS}|[\]}}]|[:\[{{]{_WS}*{_NUMBER}|[:\[{{]"
    rf"|,{_WS}*(?:{_STRING}|true|false|null|{_NUMBER}|\[|\{{))*"
)


def _strict(view: pa.Array, rows: np.ndarray) -> np.ndarray:
    """For the lines ``rows`` of ``view`` (valid JSON objects to DuckDB): True where orjson reads
    them alike: strict JSON (_STRICT_JSON), a nesting depth far below orjson's 1024, and no
    repeated top-level key (DuckDB keeps the first, orjson the last)."""
    import pyarrow as pa

    checks = f"""regexp_full_match(l, '{_STRICT_JSON}')
        AND (strlen(l) < 2000 OR strlen(l) - strlen(replace(replace(l, '[', ''), '{{', '')) < 1000)
        AND len(keys) = list_unique(keys)"""
    if rows.size * 8 < len(view):  # a few lines: copy them
        sql = f"SELECT i, {checks} AS strict FROM (SELECT i, l, json_keys(l) AS keys FROM lines)"
        table = _query(sql, view.take(pa.array(rows)), rows)
        return table["strict"].fill_null(False).to_numpy(zero_copy_only=False)
    wanted = np.zeros(len(view), bool)
    wanted[rows] = True
    lines = pa.Array.from_buffers(  # the same view, with only the wanted lines non-null
        pa.large_string(), len(view), [pa.py_buffer(np.packbits(wanted, bitorder="little")), *view.buffers()[1:]]
    )
    sql = f"SELECT i, {checks} AS strict FROM (SELECT i, l, json_keys(l) AS keys FROM lines)"
    table = _query(sql, lines, np.arange(len(view)))
    return table["strict"].fill_null(False).to_numpy(zero_copy_only=False)[rows]


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
    """``date`` + EVENT_FIELDS; ids int64, watch_seconds float64, timestamps epoch microseconds."""
    n = len(columns["user_id"])
    ts = pd.Series(np.asarray(columns["event_timestamp"], np.int64).view("datetime64[us]"), copy=False)
    data = {
        "date": np.full(n, day, dtype=object),
        **{f: columns[f] for f in EVENT_FIELDS},
        "event_timestamp": ts.dt.tz_localize("UTC"),
    }
    return pd.DataFrame({c: data[c] for c in ("date", *EVENT_FIELDS)}, copy=False)


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


def _unreadable(text: bytes, buf: np.ndarray, lines: _Lines, max_line_bytes: int) -> np.ndarray:
    """The first reason codes, per line: ``line_too_long``, then ``invalid_utf8``; 0 elsewhere
    (valid so far; a code is 1 + the reason's index in REASON_ORDER)."""
    reason = np.zeros(lines.starts.size, np.int8)
    reason[(lines.ends - lines.starts) > max_line_bytes] = _CODE[LINE_TOO_LONG]
    bad_utf8 = _invalid_utf8_lines(text, buf, lines.starts)
    reason[bad_utf8[reason[bad_utf8] == 0]] = _CODE[INVALID_UTF8]
    return reason


def _payload_view(text: bytes, lines: _Lines, readable: np.ndarray) -> pa.Array:
    """An Arrow view of the payload (no copy), one element per line, newline included (JSON
    whitespace); the lines not ``readable`` are null, so DuckDB never reads them."""
    import pyarrow as pa

    validity = pa.py_buffer(np.packbits(readable, bitorder="little"))
    return pa.Array.from_buffers(
        pa.large_string(), lines.starts.size, [validity, pa.py_buffer(lines.offsets), pa.py_buffer(text)]
    )


def _first_byte_reader(text: bytes, lines: _Lines):
    """``first_byte(i)`` for :func:`_read`: the first non-whitespace byte of line ``i`` (-1 if none)."""
    starts, ends = lines.starts, lines.ends

    def first_byte(i: int) -> int:
        head = text[starts[i] : ends[i]].lstrip(b" \t\r\n")
        return head[0] if head else -1

    return first_byte


def _totals_match(text: bytes, lines: _Lines, batch: _Batch, counted: np.ndarray) -> bool:
    """True when the payload's totals of ``:`` and ``,``, less those of the lines not ``counted``
    (counted one by one, and only when they are few), equal what the ``counted`` lines have if
    each holds its fields and nothing else."""
    others = np.flatnonzero(~counted)
    if others.size > max(1000, lines.starts.size // 20):
        return False
    other_colons, other_commas = _separator_counts(text, lines, others)
    return (
        lines.colons - int(other_colons.sum()) == int(batch.e_colon[counted].sum())
        and lines.commas - int(other_commas.sum()) == int(batch.e_comma[counted].sum())
    )


def _separator_suspects(
    text: bytes, buf: np.ndarray, lines: _Lines, batch: _Batch, plain: np.ndarray
) -> np.ndarray:
    """The ``plain`` lines (objects DuckDB read, not yet left to orjson) that may hold more than
    the eight fields, each once and not null, without trailing comma.

    Such a line has exactly ``e_colon`` colons and ``e_comma`` commas (unless it escapes one as
    ``\\u003a`` or ``\\u002c``: a suspect); any other object has more. The totals are compared
    first, and the lines counted one by one only when they differ."""
    escaped = np.zeros(lines.starts.size, bool)
    escaped[_escaped_separators(text, buf, lines.starts)] = True
    counted = plain & ~escaped
    suspect = plain & escaped
    if not _totals_match(text, lines, batch, counted):
        which = np.flatnonzero(counted)
        colons, commas = _separator_counts(text, lines, which)
        suspect[which[(colons != batch.e_colon[which]) | (commas != batch.e_comma[which])]] = True
    return suspect


def _reparse_with_orjson(
    text: bytes, lines: _Lines, lax_lines: np.ndarray, batch: _Batch, reason: np.ndarray
) -> None:
    """orjson decides the lines ``lax_lines``: ``malformed_json`` in ``reason`` when it cannot
    read one, else its canonical re-serialisation goes through the same columnar typing and
    replaces the line's entries in ``batch``."""
    import pyarrow as pa

    if not lax_lines.size:
        return
    bounds = zip(lines.starts[lax_lines].tolist(), lines.ends[lax_lines].tolist(), strict=True)
    canonical = [_canonical(text[a:b]) for a, b in bounds]
    malformed = np.fromiter((c is None for c in canonical), bool, lax_lines.size)
    reason[lax_lines[malformed]] = _CODE[MALFORMED_JSON]
    redo = lax_lines[~malformed]
    if redo.size:
        again = pa.array([c.decode() for c in canonical if c is not None], pa.large_string())
        batch.assign(redo, _read(again, lambda i: ord("{")))


def _parse_other_timestamps(batch: _Batch, reason: np.ndarray) -> None:
    """Timestamps of the lines still valid that are not in the canonical form: pandas decides,
    as it always did (``ts_us`` and the timestamp's kind in ``batch`` updated in place)."""
    k, values = batch.k, batch.values
    pending = np.flatnonzero((k["event_timestamp"] == _PANDAS) & (reason == 0))
    if not pending.size:
        return
    stamps = pd.to_datetime(
        pd.Series(values["ts_text"][pending], dtype=object), format="ISO8601", utc=True, errors="coerce"
    )
    good = stamps.notna().to_numpy()
    micros = np.asarray(stamps.dt.tz_localize(None), dtype="datetime64[us]").view(np.int64)
    values["ts_us"][pending[good]] = micros[good]
    k["event_timestamp"][pending] = np.where(good, _OK, _BAD)


def _parse(text: bytes, buf: np.ndarray, lines: _Lines, reason: np.ndarray) -> _Batch:
    """Parse stage: every line still valid in ``reason`` typed, field by field, as orjson reads
    it. DuckDB reads the payload; the lines it might read differently go through orjson. Lines
    that are not one JSON object get ``malformed_json`` in ``reason``."""
    view = _payload_view(text, lines, reason == 0)
    batch = _read(view, _first_byte_reader(text, lines))
    lax = batch.lax & (reason == 0)
    # The lines that differ (extra members, null members, repeated keys, trailing commas, NaN in an
    # extra member...) are checked by _strict.
    suspect = _separator_suspects(text, buf, lines, batch, (batch.state == _OBJECT) & ~lax)
    if suspect.any():
        rows = np.flatnonzero(suspect)
        lax[rows[~_strict(view, rows)]] = True
    _reparse_with_orjson(text, lines, np.flatnonzero(lax), batch, reason)
    reason[(reason == 0) & (batch.state != _OBJECT)] = _CODE[MALFORMED_JSON]
    _parse_other_timestamps(batch, reason)
    return batch


def _reject(reason: np.ndarray, mask: np.ndarray, why: str) -> None:
    """``why`` for the lines of ``mask`` that have no reason yet (the first reason wins)."""
    reason[(reason == 0) & mask] = _CODE[why]


def _validate(batch: _Batch, reason: np.ndarray, day: str, user_ids, item_ids) -> None:
    """Validate stage: the contract's reasons (wrong types, impressions with watch time, then the
    schema checks in column order) into ``reason``, for the lines that have none yet."""
    k, values = batch.k, batch.values
    user, item, watch, ts_us = values["user_id"], values["item_id"], values["watch_seconds"], values["ts_us"]
    for f in (*STRING_FIELDS, *ID_FIELDS, "watch_seconds", "event_timestamp"):
        _reject(reason, k[f] == _BAD, f"invalid_type:{f}")
    impression_watched = (batch.etype == 1) & (k["watch_seconds"] == _OK) & (watch != 0)
    _reject(reason, impression_watched, IMPRESSION_WITH_WATCH_TIME)
    start = pd.Timestamp(day, tz="UTC").value // 1000
    end = start + 86_400_000_000
    checks = {
        "event_id": None,
        "user_id": ("unknown_user_id", lambda: ~_known(user, _catalogue(user_ids))),
        "item_id": ("unknown_item_id", lambda: ~_known(item, _catalogue(item_ids))),
        "event_type": ("invalid_event_type", lambda: batch.etype == 0),
        "event_timestamp": ("timestamp_outside_day", lambda: (ts_us < start) | (ts_us >= end)),
        "watch_seconds": ("negative_watch_seconds", lambda: watch < 0),
        "device": None,
        "session_id": None,
    }
    for f, check in checks.items():
        _reject(reason, k[f] == _NA, f"missing_field:{f}")
        if check is not None:
            _reject(reason, (k[f] == _OK) & check[1](), check[0])


def _reject_duplicates(values: dict[str, np.ndarray], reason: np.ndarray) -> None:
    """Dedupe stage: ``duplicate_event_id`` for the valid lines whose event_id an earlier valid
    line has. Equal hashes first (integers, fast), then the strings themselves for those few lines."""
    accepted = np.flatnonzero(reason == 0)
    same_hash = pd.Series(values["event_id_hash"][accepted], copy=False).duplicated(keep=False).to_numpy()
    seen: set[str] = set()
    for line in accepted[same_hash].tolist():
        event_id = values["event_id"][line]
        if event_id in seen:
            reason[line] = _CODE[DUPLICATE]
        seen.add(event_id)


def _dead_letters(text: bytes, day: str, lines: _Lines, event_id: np.ndarray, reason: np.ndarray):
    """DLQ assembly: the rejected lines as a DLQ frame (exact bytes, reason, event_id when the line
    is a record), and the count per reason."""
    bad = np.flatnonzero(reason != 0)
    names = np.array(("", *REASON_ORDER), dtype=object)
    raw = [text[a:b] for a, b in zip(lines.starts[bad].tolist(), lines.ends[bad].tolist(), strict=True)]
    event_ids = event_id[bad]
    event_ids[reason[bad] <= _CODE[MALFORMED_JSON]] = None  # no record, no event_id
    rejected = _dlq(day, bad + 1, names[reason[bad]], raw, event_ids.tolist())
    tally = np.bincount(reason[bad], minlength=names.size)
    return rejected, Counter({names[code]: int(c) for code, c in enumerate(tally) if c})


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
    text = bytes(text)
    buf = np.frombuffer(text, dtype=np.uint8)
    lines = _scan(buf)
    n = lines.starts.size
    if n == 0:
        return _empty_result(day)
    reason = _unreadable(text, buf, lines, max_line_bytes)  # 0: valid so far, else 1 + index in REASON_ORDER
    batch = _parse(text, buf, lines, reason)
    _validate(batch, reason, day, user_ids, item_ids)
    _reject_duplicates(batch.values, reason)
    values = batch.values
    keep = np.flatnonzero(reason == 0)
    valid = _valid_frame(day, {f: values["ts_us" if f == "event_timestamp" else f][keep] for f in EVENT_FIELDS})
    rejected, counts = _dead_letters(text, day, lines, values["event_id"], reason)
    assert len(valid) + len(rejected) == n, "every landing record is either valid or rejected"
    return IngestResult(day=day, valid=valid, rejected=rejected, total_records=n, reasons=counts,
                        valid_lines=(keep + 1).astype(np.int64))


# ----------------------------------------------------------------------------- chunked ingestion


@dataclass(frozen=True)
class Chunk:
    """Whole lines of a payload: bytes ``[offset, offset + length)``, the first being line ``first_line + 1``."""

    offset: int
    length: int
    first_line: int


def split_lines(text: bytes, pieces: int) -> list[Chunk]:
    """Cut ``text`` into at most ``pieces`` chunks of about equal size, each ending after a newline
    (or at the end). Ingesting the chunks apart and :func:`merge_chunks` gives :func:`ingest_day`."""
    size, chunks, start, lines = len(text), [], 0, 0
    for k in range(1, max(1, pieces) + 1):
        if start >= size:
            break
        cut = size if k == pieces else text.find(b"\n", max(start, size * k // pieces - 1))
        end = size if cut < 0 or k == pieces else cut + 1
        chunks.append(Chunk(start, end - start, lines))
        lines += text.count(b"\n", start, end)
        start = end
    return chunks


def merge_chunks(text: bytes, day: str, chunks: Sequence[Chunk], results: Sequence[IngestResult]) -> IngestResult:
    """One day's result from its chunks' (in order): line numbers made global, and the valid
    rows whose event_id a valid row of an earlier chunk has become ``duplicate_event_id``
    (their exact bytes taken from ``text``), exactly as :func:`ingest_day` of the whole."""
    if not results:
        return _empty_result(day)
    valid_parts = [r.valid for r in results if len(r.valid)] or [results[0].valid]
    valid = pd.concat(valid_parts, ignore_index=True) if len(valid_parts) > 1 else valid_parts[0]
    lines = np.concatenate([r.valid_lines + c.first_line for c, r in zip(chunks, results, strict=True)])
    rejected = [r.rejected.assign(line_number=r.rejected["line_number"] + c.first_line)
                for c, r in zip(chunks, results, strict=True) if len(r.rejected)]
    counts: Counter = sum((r.reasons for r in results), Counter())
    duplicate = valid["event_id"].duplicated(keep="first").to_numpy()
    if duplicate.any():
        at = _scan(np.frombuffer(text, dtype=np.uint8))
        dup_lines = lines[duplicate]
        raw = [text[a:b] for a, b in zip(at.starts[dup_lines - 1].tolist(), at.ends[dup_lines - 1].tolist(),
                                          strict=True)]
        ids = valid["event_id"].to_numpy()[duplicate].tolist()
        rejected.append(_dlq(day, dup_lines, [DUPLICATE] * len(raw), raw, ids))
        counts[DUPLICATE] += len(raw)
        valid = valid[~duplicate].reset_index(drop=True)
        lines = lines[~duplicate]
    dlq = (pd.concat(rejected, ignore_index=True).sort_values("line_number", kind="stable").reset_index(drop=True)
           if rejected else results[0].rejected)
    total = sum(r.total_records for r in results)
    assert len(valid) + len(dlq) == total, "every landing record is either valid or rejected"
    return IngestResult(day=day, valid=valid, rejected=dlq, total_records=total, reasons=counts, valid_lines=lines)


def ingest_in_chunks(
    text: bytes,
    day: str,
    user_ids: Iterable[int] | np.ndarray | pd.Series,
    item_ids: Iterable[int] | np.ndarray | pd.Series,
    pieces: int,
    max_line_bytes: int = 1 << 20,
) -> IngestResult:
    """:func:`ingest_day` as the Spark engine runs it (each chunk apart, then merged), in this process."""
    text = bytes(text)
    chunks = split_lines(text, pieces)
    results = [ingest_day(text[c.offset : c.offset + c.length], day, user_ids, item_ids, max_line_bytes)
               for c in chunks]
    return merge_chunks(text, day, chunks, results)


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
