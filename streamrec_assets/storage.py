"""Where every byte the pipeline writes lives: URIs, atomic writes, write-audit-publish, lazy reads.

One module for the storage concerns of the IO manager, the resources and the
generator alike (local directory or any S3-compatible store, chosen by URI).

Layout under the storage root (Hive style, read by Dagster, Feast and DuckDB)::

    <root>/<asset>/date=YYYY-MM-DD/data.parquet   a partition of a table asset
    <root>/<asset>/date=YYYY-MM-DD/<name>         files next to it (models, manifests)
    <root>/<asset>.parquet                        an unpartitioned table
    <root>/_staging/<txn>/<path>                  staged values, invisible to readers
    <root>/_journal/<txn>.json                    commit journals (roll-forward log)
    <root>/_quarantine/<txn>/<path>               values that failed their audit, + _reason.json

**Write-audit-publish.** A :class:`Transaction` stages new values under
``_staging``; the caller audits them; :meth:`Transaction.commit` publishes every
staged file of the transaction together, :meth:`Transaction.quarantine` moves them
aside and leaves the published versions untouched. A commit first writes a journal
that lists its files, then renames (locally) or copies (S3, server side) each one
into place, then deletes the journal. A crash between two renames leaves the journal
behind; the next transaction or reader of the same root *rolls it forward* before it
does anything else, so tables written together (``raw_events`` and
``raw_events_dlq`` of a day) are seen together or not at all.

**Atomic single files.** Locally a hidden temporary file in the target directory is
renamed over the target; on S3 one PUT is all-or-nothing. Temporary files and staged
transactions of dead writers are never read (they are hidden or outside the asset
folders) and are removed by the next write that sees them.

**Bounded reads.** :class:`PartitionReader` is a lazy handle on many partitions of
one asset: it checks which exist up front (naming the missing ones) and reads one day
(or a window) at a time, so a step's memory grows with one day, not with its range.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streamrec_assets.errors import MissingPartitionsError, NeverMaterializedError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from upath import UPath

DATA_FILE = "data.parquet"
PARTITION_PREFIX = "date="
STAGING, JOURNAL, QUARANTINE = "_staging", "_journal", "_quarantine"
#: A staged transaction or temporary file older than this is abandoned, whoever wrote it.
STALE_AFTER = timedelta(hours=6)
_LOCAL_PROTOCOLS = ("", "file", "local")
_HOST = socket.gethostname().replace("-", "_")


# ------------------------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store; empty fields fall back to the standard AWS environment."""

    endpoint_url: str = ""
    key: str = ""
    secret: str = ""

    def fs_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"client_kwargs": {"endpoint_url": self.endpoint_url}} if self.endpoint_url else {}
        if self.key and self.secret:
            options.update(key=self.key, secret=self.secret)
        return options


def default_s3() -> S3Options:
    """S3 options from the project settings (the endpoint; credentials come from the AWS environment)."""
    from streamrec_assets.settings import get_settings

    return S3Options(endpoint_url=get_settings().s3_endpoint_url)


def storage_path(uri: str, s3: S3Options | None = None) -> UPath:
    """A UPath for a local path or an ``s3://`` URI (``s3`` defaults to the settings' endpoint)."""
    from upath import UPath

    if uri.startswith("s3://"):
        return UPath(uri, **(s3 or default_s3()).fs_options())
    return UPath(uri)


def is_local(path: UPath) -> bool:
    return getattr(path, "protocol", "") in _LOCAL_PROTOCOLS


def os_path(path: UPath) -> str:
    """The operating-system path of a local UPath (``file://`` URIs included)."""
    return path.path if getattr(path, "protocol", "") in ("file", "local") else str(path)


def path_exists(path: UPath) -> bool:
    return os.path.exists(os_path(path)) if is_local(path) else path.exists()


def read_bytes(path: UPath) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        if is_local(path):
            with open(os_path(path), "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError:
        return None


def format_key_spans(keys: Iterable[str]) -> list[str]:
    """Collapse sorted ISO dates into ``A..B`` spans of consecutive days."""
    spans: list[list[date]] = []
    for key in sorted(keys):
        day = date.fromisoformat(key)
        if spans and spans[-1][1] + timedelta(days=1) == day:
            spans[-1][1] = day
        else:
            spans.append([day, day])
    return [a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in spans]


# ---------------------------------------------------------------------------------- atomic files


def _writer_tag() -> str:
    """``<utc time>-<host>-<pid>-<random>``: who wrote a temporary file or transaction, and when."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _is_stale(tag: str, now: datetime | None = None) -> bool:
    """True when the writer named by ``tag`` is dead (same host, pid gone) or too old to be alive."""
    try:
        stamp, host, pid, _ = tag.rsplit("-", 3)
        written = datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return False  # not ours: leave it alone
    if (now or datetime.now(UTC)) - written > STALE_AFTER:
        return True
    if host == _HOST:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
    return False


def sweep_temp_files(directory: str) -> list[str]:
    """Remove the temporary files of dead writers in a local ``directory``; returns their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            tag = name[:-4].rsplit(".", 1)[-1]
            if _is_stale(tag):
                try:
                    os.unlink(os.path.join(directory, name))
                    removed.append(name)
                except FileNotFoundError:
                    pass
    return removed


def atomic_write(path: UPath, write: Callable[[Any], None]) -> int:
    """Call ``write(target)`` so that ``path`` appears complete or not at all; returns its size.

    Locally ``write`` fills a hidden temporary file in the same directory, renamed over
    ``path`` (``target`` is its path). On object stores ``write`` fills a buffer that is
    PUT once (``target`` is the buffer): readers see the previous object or the new one.
    """
    if is_local(path):
        target = os_path(path)
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        sweep_temp_files(directory)
        tmp = os.path.join(directory, f".{os.path.basename(target)}.{_writer_tag()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return os.path.getsize(target)
    # Serialise fully in memory first: a failure while writing must not leave a partial object
    # (a buffered S3 file uploads what it holds when closed, even on an exception).
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    return len(data)


def write_bytes(data: bytes, path: UPath) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""

    def write(target) -> None:
        if isinstance(target, str):
            with open(target, "wb") as handle:
                handle.write(data)
        else:
            target.write(data)

    return atomic_write(path, write)


PARQUET_OPTIONS = dict(compression="zstd", coerce_timestamps="us", allow_truncated_timestamps=True)


def to_arrow(df: pd.DataFrame | pa.Table) -> pa.Table:
    import pyarrow as pa

    return df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)


def write_parquet(df: pd.DataFrame | pa.Table, path: UPath) -> int:
    """Write a table to ``path`` atomically; returns the number of bytes written."""
    import pyarrow.parquet as pq

    table = to_arrow(df)
    return atomic_write(path, lambda target: pq.write_table(table, target, **PARQUET_OPTIONS))


def parquet_bytes(df: pd.DataFrame | pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(to_arrow(df), sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def read_arrow(path: UPath, columns: Sequence[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    cols = list(columns) if columns is not None else None
    if is_local(path):
        return pq.read_table(os_path(path), columns=cols)
    return pq.read_table(path.path, filesystem=path.fs, columns=cols)


def read_parquet(path: UPath, columns: Sequence[str] | None = None) -> pd.DataFrame:
    return read_arrow(path, columns).to_pandas()


def read_parquet_schema(path: UPath) -> pa.Schema:
    import pyarrow.parquet as pq

    if is_local(path):
        return pq.read_schema(os_path(path))
    with path.open("rb") as handle:
        return pq.read_schema(handle)


def _move(src: UPath, dst: UPath) -> bool:
    """Publish ``src`` at ``dst`` (rename locally, server-side copy on S3); False when ``src`` is gone."""
    if is_local(src):
        source, target = os_path(src), os_path(dst)
        if not os.path.exists(source):
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        return True
    if not src.exists():
        return False
    src.fs.copy(src.path, dst.path)  # one object, atomic for readers; the staged copy stays until cleanup
    return True


def _remove_tree(path: UPath) -> None:
    if is_local(path):
        import shutil

        shutil.rmtree(os_path(path), ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


@contextmanager
def _commit_lock(root: UPath):
    """Serialise commits and roll-forwards of one local root across processes (a file lock).

    On an object store there is no shared lock; commits of the same partition from two
    machines at once are prevented by Dagster (one run per partition key and asset).
    """
    if not is_local(root):
        yield
        return
    import fcntl

    directory = os.path.join(os_path(root), JOURNAL)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------ table store


class TableStore:
    """The storage root of the assets: paths, lazy partition readers and transactions."""

    def __init__(self, uri: str, s3: S3Options | None = None):
        self.uri = uri.rstrip("/")
        self.s3 = s3 or default_s3()
        self.root = storage_path(self.uri, self.s3)
        self._recovered_at = 0.0

    # -- paths (relative paths use '/' on every backend) ------------------------------------------
    @staticmethod
    def partition_relpath(asset: str, day: str, name: str = DATA_FILE) -> str:
        return f"{asset}/{PARTITION_PREFIX}{day}/{name}"

    @staticmethod
    def unpartitioned_relpath(asset: str) -> str:
        return f"{asset}.parquet"

    def path(self, relpath: str) -> UPath:
        return self.root.joinpath(*relpath.split("/"))

    def asset_dir(self, asset: str) -> UPath:
        return self.path(asset)

    def partition_path(self, asset: str, day: str, name: str = DATA_FILE) -> UPath:
        return self.path(self.partition_relpath(asset, day, name))

    def unpartitioned_path(self, asset: str) -> UPath:
        return self.path(self.unpartitioned_relpath(asset))

    # -- reads -----------------------------------------------------------------------------------
    def read_table(self, asset: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The published value of an unpartitioned table asset."""
        self.recover()
        path = self.unpartitioned_path(asset)
        if not path_exists(path):
            raise NeverMaterializedError(asset, str(path))
        return read_parquet(path, columns)

    def reader(self, asset: str, days: Sequence[str], allow_missing: bool = False) -> PartitionReader:
        self.recover()
        return PartitionReader(self, asset, days, allow_missing=allow_missing)

    def exists(self, relpath: str) -> bool:
        return path_exists(self.path(relpath))

    # -- writes ----------------------------------------------------------------------------------
    def transaction(self, label: str = "") -> Transaction:
        """A new write-audit-publish transaction (rolls forward interrupted commits first)."""
        self.recover(force=True)
        self.sweep()
        return Transaction(self, label)

    def recover(self, force: bool = False) -> list[str]:
        """Roll forward every commit whose journal is still present; returns their ids."""
        now = time.monotonic()
        if not force and now - self._recovered_at < 1.0:
            return []  # a step reading many inputs checks once, not once per input
        self._recovered_at = now
        journal_dir = self.path(JOURNAL)
        if not path_exists(journal_dir):
            return []
        journals = sorted(p for p in journal_dir.iterdir() if p.name.endswith(".json"))
        if not journals:
            return []
        done = []
        with _commit_lock(self.root):
            for journal in journals:
                raw = read_bytes(journal)
                if raw is None:
                    continue  # applied by someone else meanwhile
                entry = json.loads(raw)
                Transaction._apply(self, entry["txn"], entry["files"])
                _remove_tree(self.path(f"{STAGING}/{entry['txn']}"))
                _delete(journal)
                done.append(entry["txn"])
        return done

    def sweep(self) -> list[str]:
        """Remove staged transactions of dead writers (never committed: nothing to roll forward)."""
        staging = self.path(STAGING)
        if not path_exists(staging):
            return []
        removed = []
        for folder in staging.iterdir():
            if _is_stale(folder.name) and not path_exists(self.path(f"{JOURNAL}/{folder.name}.json")):
                _remove_tree(folder)
                removed.append(folder.name)
        return removed


def _delete(path: UPath) -> None:
    if is_local(path):
        try:
            os.unlink(os_path(path))
        except FileNotFoundError:
            pass
    elif path.exists():
        path.unlink()


class Transaction:
    """Stage several files, then publish them together (:meth:`commit`) or set them aside
    (:meth:`quarantine`). Used as a context manager, an exception before the commit
    discards what was staged; the published values are never touched until commit."""

    def __init__(self, store: TableStore, label: str = ""):
        self.store = store
        self.id = _writer_tag()
        self.label = label
        self.files: list[str] = []
        self.state = "open"

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state == "open":
            self.abort()

    # -- staging -----------------------------------------------------------------------------------
    def staged_path(self, relpath: str) -> UPath:
        return self.store.path(f"{STAGING}/{self.id}/{relpath}")

    def _stage(self, relpath: str, write: Callable[[UPath], int]) -> UPath:
        if self.state != "open":
            raise RuntimeError(f"transaction {self.id} is {self.state}")
        path = self.staged_path(relpath)
        write(path)
        if relpath not in self.files:
            self.files.append(relpath)
        return path

    def stage_table(self, asset: str, day: str | None, df: pd.DataFrame | pa.Table) -> UPath:
        rel = self.store.partition_relpath(asset, day) if day else self.store.unpartitioned_relpath(asset)
        return self._stage(rel, lambda path: write_parquet(df, path))

    def stage_file(self, asset: str, day: str, name: str, data: bytes) -> UPath:
        return self._stage(self.store.partition_relpath(asset, day, name), lambda path: write_bytes(data, path))

    def stage_frame_file(self, asset: str, day: str, name: str, df: pd.DataFrame | pa.Table) -> UPath:
        return self._stage(self.store.partition_relpath(asset, day, name), lambda path: write_parquet(df, path))

    def read_staged(self, relpath: str) -> pd.DataFrame:
        return read_parquet(self.staged_path(relpath))

    # -- publish / quarantine ----------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Publish every staged file together; returns their final URIs."""
        if self.state != "open":
            raise RuntimeError(f"transaction {self.id} is {self.state}")
        store = self.store
        journal = store.path(f"{JOURNAL}/{self.id}.json")
        if self.files:
            with _commit_lock(store.root):
                write_bytes(json.dumps({"txn": self.id, "label": self.label, "files": self.files}).encode(), journal)
                # From here the journal is the truth: if applying fails part-way, the staged files must
                # stay for the next reader or writer to roll forward (never abort a journaled commit).
                self.state = "committing"
                self._apply(store, self.id, self.files)
                _remove_tree(store.path(f"{STAGING}/{self.id}"))
                _delete(journal)
        self.state = "committed"
        return [str(store.path(rel)) for rel in self.files]

    @staticmethod
    def _apply(store: TableStore, txn: str, files: Sequence[str]) -> None:
        for rel in files:
            _move(store.path(f"{STAGING}/{txn}/{rel}"), store.path(rel))

    def quarantine(self, reason: str, details: dict | None = None) -> str:
        """Move the staged files to ``_quarantine/<txn>/`` with a ``_reason.json``; returns its URI."""
        store = self.store
        target = store.path(f"{QUARANTINE}/{self.id}")
        for rel in self.files:
            _move(self.staged_path(rel), store.path(f"{QUARANTINE}/{self.id}/{rel}"))
        record = {"txn": self.id, "label": self.label, "reason": reason, "files": self.files, **(details or {})}
        write_bytes(json.dumps(record, indent=2, default=str).encode(), store.path(f"{QUARANTINE}/{self.id}/_reason.json"))
        _remove_tree(store.path(f"{STAGING}/{self.id}"))
        self.state = "quarantined"
        return str(target)

    def abort(self) -> None:
        _remove_tree(self.store.path(f"{STAGING}/{self.id}"))
        self.state = "aborted"


# ------------------------------------------------------------------------------------ lazy reader


class PartitionReader:
    """Many daily partitions of one table asset, read one day (or one window) at a time.

    Which partitions exist is checked when the reader is made; missing ones raise
    :class:`~streamrec_assets.errors.MissingPartitionsError` unless ``allow_missing``,
    in which case they read as empty frames with the asset's schema.
    """

    def __init__(self, store: TableStore, asset: str, days: Sequence[str], allow_missing: bool = False):
        self.store = store
        self.asset = asset
        self.days = sorted(days)
        paths = [store.partition_path(asset, d) for d in self.days]
        if len(paths) > 1 and not is_local(store.root):
            with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
                found = list(pool.map(path_exists, paths))
        else:
            found = [path_exists(p) for p in paths]
        self.present = [d for d, ok in zip(self.days, found, strict=True) if ok]
        self.missing = [d for d, ok in zip(self.days, found, strict=True) if not ok]
        self.allow_missing = allow_missing
        if self.missing and not allow_missing:
            raise MissingPartitionsError(asset, self.missing, str(store.asset_dir(asset)))
        self._schema = None

    def __repr__(self) -> str:
        span = ", ".join(format_key_spans(self.days))
        return f"PartitionReader({self.asset}: {span}; {len(self.present)} present)"

    def __len__(self) -> int:
        return len(self.present)

    def path(self, day: str) -> UPath:
        return self.store.partition_path(self.asset, day)

    def files(self, days: Iterable[str] | None = None) -> list[str]:
        """URIs of the present partitions (of ``days``, default all), for DuckDB or Arrow datasets."""
        wanted = self.present if days is None else [d for d in self.present if d in set(days)]
        return [str(self.path(d)) if not is_local(self.store.root) else os_path(self.path(d)) for d in wanted]

    def schema(self) -> pa.Schema | None:
        if self._schema is None and self.present:
            self._schema = read_parquet_schema(self.path(self.present[-1]))
        return self._schema

    def empty(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        import pandas as pd

        schema = self.schema()
        if schema is None:
            return pd.DataFrame()
        table = schema.empty_table()
        if columns is not None:
            table = table.select(list(columns))
        return table.to_pandas()

    def read_arrow(self, day: str, columns: Sequence[str] | None = None) -> pa.Table:
        if day not in self.present:
            self._check_requested(day)
            return self.schema().empty_table() if self.schema() is not None else None
        return read_arrow(self.path(day), columns)

    def read(self, day: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One day's partition (an empty frame with the schema when it is allowed to be missing)."""
        if day not in self.present:
            self._check_requested(day)
            return self.empty(columns)
        return read_parquet(self.path(day), columns)

    def read_days(self, days: Iterable[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The present partitions among ``days`` as one frame (a window, never the whole range)."""
        import pandas as pd

        frames = [read_parquet(self.path(d), columns) for d in sorted(set(days)) if d in self.present]
        frames = [f for f in frames if len(f)] or frames[:1]
        if not frames:
            return self.empty(columns)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def read_all(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Every requested partition in one frame: only for small tables (cards, catalogues)."""
        return self.read_days(self.days, columns)

    def __iter__(self) -> Iterator[tuple[str, pd.DataFrame]]:
        for day in self.present:
            yield day, self.read(day)

    def _check_requested(self, day: str) -> None:
        if day not in self.days:
            raise KeyError(f"{self.asset}: day {day} is outside the requested partitions {format_key_spans(self.days)}")
        if not self.allow_missing:
            raise MissingPartitionsError(self.asset, [day], str(self.store.asset_dir(self.asset)))
