"""The landing zone: the contract between the upstream export and the pipeline.

The pipeline reads it (:class:`Landing`, wrapped by the ``landing`` resource); the
synthetic generator writes it through the same class. Layout::

    <landing>/catalog/users.parquet      user_id int64, signup_date str, country str
    <landing>/catalog/items.parquet      item_id int64, genre str, duration_seconds int64,
                                         release_date str
    <landing>/events/date=YYYY-MM-DD/events-YYYY-MM-DD.jsonl.gz   JSON Lines, gzip (or plain)
    <landing>/events/date=YYYY-MM-DD/_SUCCESS                     the completion marker
    <landing>/reference/date=YYYY-MM-DD/reference.parquet         optional: user_id int64,
                                                                  item_id int64, score float64

The completion marker is written *after* the data file and is JSON::

    {"date": "YYYY-MM-DD", "records": <lines in the file>, "sha256": <hex of the file's bytes>,
     "params": {...optional producer parameters...}}

A day is *delivered* when both files exist. Before parsing, ingest checks the file
against its marker (:meth:`Landing.read_delivery`): same sha256, same number of
records, a complete compressed stream. Any mismatch is a
:class:`~streamrec_assets.errors.DeliveryError` naming the file, the day, and the
expected and found figures; it is never retried (the same bytes give the same error).

The *reference* of a day is optional and not part of the delivery contract: a data source
that knows the true preferences behind its events (the synthetic generator: its hidden
user x item affinity) may leave one, real exports have none. It holds scores of (user, item)
pairs, higher = better: the generator writes every pair impressed on the day and, for each
user active on the day, the top items among those released by then. Ingest
(``raw_events``) never reads it and a day is delivered without it; only the offline
evaluation uses it, as the ``oracle`` method (:mod:`streamrec_assets.core.reference`), and
leaves the oracle out when the day has none. It is written atomically; a day's reference
may appear before or after its events.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamrec_assets.errors import DeliveryError, NotDeliveredError
from streamrec_assets.storage import (
    S3Options,
    parquet_bytes,
    path_exists,
    read_bytes,
    storage_path,
    write_bytes,
)

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath

MARKER_NAME = "_SUCCESS"
REFERENCE_NAME = "reference.parquet"
#: Columns (and dtypes) of a day's reference file.
REFERENCE_COLUMNS = {"user_id": "int64", "item_id": "int64", "score": "float64"}
CATALOGS = ("users", "items")
GZIP_MAGIC = b"\x1f\x8b"
#: Metadata key of the catalogue assets: the fingerprint of the catalogue files they were read
#: from (:meth:`Landing.catalog_fingerprint`); the landing_zone_sensor does not re-ingest
#: catalogues that a CLI run or the demo already read.
CATALOG_FINGERPRINT = "landing_catalog_fingerprint"


def events_relpath(day: str) -> str:
    return f"events/date={day}/events-{day}.jsonl.gz"


def marker_relpath(day: str) -> str:
    return f"events/date={day}/{MARKER_NAME}"


def reference_relpath(day: str) -> str:
    return f"reference/date={day}/{REFERENCE_NAME}"


def catalog_relpath(name: str) -> str:
    if name not in CATALOGS:
        raise ValueError(f"unknown catalogue {name!r}; expected one of {CATALOGS}")
    return f"catalog/{name}.parquet"


@dataclass(frozen=True)
class Marker:
    """The completion marker of one landing day."""

    date: str
    records: int
    sha256: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        body = {"date": self.date, "records": self.records, "sha256": self.sha256, "params": self.params}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Marker:
        try:
            body = json.loads(raw)
            return cls(
                date=str(body["date"]),
                records=int(body["records"]),
                sha256=str(body["sha256"]),
                params=dict(body.get("params") or {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DeliveryError(
                f"Completion marker {where} is not valid ({type(exc).__name__}: {exc}); it must be JSON with "
                "'date', 'records' and 'sha256'.",
                location=where,
            ) from exc


def decompress(data: bytes, where: str = "", day: str = "") -> bytes:
    """The JSON Lines bytes of a landing file (gzip or plain); a corrupt stream is a DeliveryError."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DeliveryError(
            f"Landing file {where} of day {day} is corrupt or truncated: {type(exc).__name__}: {exc}. "
            "Ask the upstream export to re-deliver the day (file and _SUCCESS marker).",
            partition=day,
            location=where,
        ) from exc


def _inflated(data: bytes, block: int):
    """The decompressed stream of gzip ``data`` (one or more members), piece by piece."""
    view, inflate = memoryview(data), zlib.decompressobj(wbits=31)
    for start in range(0, len(data), block):
        pending = bytes(view[start : start + block])
        while pending:
            yield inflate.decompress(pending)
            pending = b""
            if inflate.eof and inflate.unused_data:  # the next member of a concatenated file
                pending, inflate = inflate.unused_data, zlib.decompressobj(wbits=31)


def decompressed_slice(data: bytes, offset: int, length: int, block: int = 1 << 22) -> bytes:
    """Bytes ``[offset, offset + length)`` of the decompressed stream of ``data`` (gzip or plain),
    holding only that slice: the stream before it is decompressed block by block and dropped,
    the rest is never decompressed (a verified delivery: see :func:`decompress` for errors)."""
    if data[:2] != GZIP_MAGIC:
        return data[offset : offset + length]
    out, position, end = [], 0, offset + length
    for piece in _inflated(data, block):
        lo, hi = max(offset - position, 0), min(end - position, len(piece))
        if lo < hi:
            out.append(piece[lo:hi])
        position += len(piece)
        if position >= end:
            break
    return b"".join(out)


def count_records(text: bytes) -> int:
    """Lines of a JSON Lines payload (a final newline does not start a record)."""
    if not text:
        return 0
    return text.count(b"\n") + (0 if text.endswith(b"\n") else 1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """One verified landing day: the file's bytes, the decompressed JSON Lines and the marker."""

    day: str
    path: str
    data: bytes
    text: bytes
    marker: Marker

    @property
    def records(self) -> int:
        return self.marker.records

    @property
    def sha256(self) -> str:
        return self.marker.sha256


class Landing:
    """A landing zone at ``uri`` (local directory or ``s3://bucket/prefix``)."""

    def __init__(self, uri: str, s3: S3Options | None = None):
        self.uri = uri.rstrip("/")
        self.s3 = s3

    def path(self, relpath: str) -> UPath:
        return storage_path(f"{self.uri}/{relpath}", self.s3)

    def events_path(self, day: str) -> UPath:
        return self.path(events_relpath(day))

    def marker_path(self, day: str) -> UPath:
        return self.path(marker_relpath(day))

    def catalog_path(self, name: str) -> UPath:
        return self.path(catalog_relpath(name))

    def reference_path(self, day: str) -> UPath:
        return self.path(reference_relpath(day))

    # -- reading ------------------------------------------------------------------------------------
    def is_complete(self, day: str) -> bool:
        """True when the day's file and its completion marker are both present."""
        return path_exists(self.marker_path(day)) and path_exists(self.events_path(day))

    def read_marker(self, day: str) -> Marker | None:
        raw = read_bytes(self.marker_path(day))
        return None if raw is None else Marker.parse(raw, str(self.marker_path(day)))

    def read_delivery(self, day: str) -> Delivery:
        """The day's file, checked against its marker (sha256, record count, complete stream)."""
        events, marker_path = self.events_path(day), self.marker_path(day)
        raw_marker = read_bytes(marker_path)
        data = read_bytes(events)
        if raw_marker is None or data is None:
            state = "has no completion marker yet" if data is not None else "has not been delivered"
            raise NotDeliveredError(
                f"Landing day {day} {state}: expected {events} and its {MARKER_NAME} marker. "
                f"Generate it with `streamrec generate --start {day} --end {day}`, or wait for the export.",
                partition=day,
                location=str(events),
            )
        marker = Marker.parse(raw_marker, str(marker_path))
        where = str(events)
        if marker.date != day:
            raise DeliveryError(
                f"Landing file {where}: its marker is for {marker.date}, not {day}.", partition=day, location=where
            )
        found_sha = sha256(data)
        if found_sha != marker.sha256:
            raise DeliveryError(
                f"Landing file {where} of day {day} does not match its completion marker: sha256 expected "
                f"{marker.sha256}, found {found_sha} ({len(data)} bytes). The file is incomplete or was "
                "replaced without a new marker; ask the export to re-deliver the day.",
                partition=day,
                location=where,
            )
        text = decompress(data, where, day)
        found = count_records(text)
        if found != marker.records:
            raise DeliveryError(
                f"Landing file {where} of day {day} holds {found} records, its completion marker says "
                f"{marker.records}: a short or padded delivery; ask the export to re-deliver the day.",
                partition=day,
                location=where,
            )
        return Delivery(day=day, path=where, data=data, text=text, marker=marker)

    def delivered_days(self) -> dict[str, str]:
        """Days whose file and completion marker are present: ``{day: sha256 from the marker}``."""
        root = self.path("events")
        if not path_exists(root):
            return {}
        out = {}
        for folder in sorted(root.iterdir()):
            if not folder.name.startswith("date="):
                continue
            day = folder.name[len("date=") :]
            raw = read_bytes(folder / MARKER_NAME)
            if raw is not None and path_exists(self.events_path(day)):
                try:
                    out[day] = Marker.parse(raw, str(folder / MARKER_NAME)).sha256
                except DeliveryError:
                    out[day] = "invalid-marker"
        return out

    def catalog_fingerprint(self) -> str:
        """A hash of the catalogue files (changes when a new catalogue is delivered)."""
        digest = hashlib.sha256()
        for name in CATALOGS:
            digest.update(read_bytes(self.catalog_path(name)) or b"missing")
        return digest.hexdigest()

    def read_catalog(self, name: str) -> pd.DataFrame:
        """``name`` is ``users`` or ``items``."""
        import io

        import pyarrow.parquet as pq

        path = self.catalog_path(name)
        data = read_bytes(path)
        if data is None:
            raise NotDeliveredError(
                f"The {name} catalogue is missing from the landing zone ({path}); `streamrec generate` writes it.",
                location=str(path),
            )
        try:
            return pq.read_table(io.BytesIO(data)).to_pandas()
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a broken file
            raise DeliveryError(
                f"The {name} catalogue {path} is not a readable Parquet file: {type(exc).__name__}: {exc}",
                location=str(path),
            ) from exc

    def has_reference(self, day: str) -> bool:
        return path_exists(self.reference_path(day))

    def read_reference(self, day: str) -> pd.DataFrame | None:
        """The day's optional reference (``user_id, item_id, score``), or None when it has none."""
        import io

        import pyarrow.parquet as pq

        path = self.reference_path(day)
        data = read_bytes(path)
        if data is None:
            return None
        try:
            frame = pq.read_table(io.BytesIO(data), columns=list(REFERENCE_COLUMNS)).to_pandas()
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a broken file
            raise DeliveryError(
                f"The reference of day {day} ({path}) is not a readable Parquet file with columns "
                f"{list(REFERENCE_COLUMNS)}: {type(exc).__name__}: {exc}. Delete it (it is optional) or "
                "regenerate it.",
                partition=day,
                location=str(path),
            ) from exc
        return frame.astype(REFERENCE_COLUMNS)

    # -- writing (the upstream export; here the synthetic generator) ----------------------------------
    def write_day(self, day: str, data: bytes, records: int, params: dict | None = None) -> Marker:
        """Deliver one day: the data file first, then its marker (readers wait for the marker)."""
        marker = Marker(date=day, records=int(records), sha256=sha256(data), params=dict(params or {}))
        write_bytes(data, self.events_path(day))
        write_bytes(marker.to_bytes(), self.marker_path(day))
        return marker

    def verify_cached(self, day: str, params: dict) -> Marker | None:
        """The marker of a day already delivered with ``params`` whose file still matches it, else None."""
        try:
            marker = self.read_marker(day)
        except DeliveryError:
            return None
        if marker is None or marker.params != params:
            return None
        data = read_bytes(self.events_path(day))
        return marker if data is not None and sha256(data) == marker.sha256 else None

    def write_reference(self, day: str, frame: pd.DataFrame) -> int:
        """Write the day's optional reference (``user_id, item_id, score``) atomically; returns its size."""
        missing = set(REFERENCE_COLUMNS) - set(frame.columns)
        if missing:
            raise ValueError(f"a reference needs the columns {list(REFERENCE_COLUMNS)}; missing {sorted(missing)}")
        table = frame[list(REFERENCE_COLUMNS)].astype(REFERENCE_COLUMNS).reset_index(drop=True)
        return write_bytes(parquet_bytes(table), self.reference_path(day))

    def write_catalog(self, name: str, df: pd.DataFrame) -> bool:
        """Write a catalogue unless an identical file is there; True when written."""
        data = parquet_bytes(df)
        path = self.catalog_path(name)
        if read_bytes(path) == data:
            return False
        write_bytes(data, path)
        return True
