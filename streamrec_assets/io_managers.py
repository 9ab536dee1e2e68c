"""A partition-aware Parquet IO manager over universal_pathlib (local disk or S3).

Layout (Hive style)::

    <storage>/<asset_key>/date=YYYY-MM-DD/data.parquet    partitioned assets
    <storage>/<asset_key>.parquet                         unpartitioned assets

* A single-run range output (one DataFrame covering several daily partitions)
  is split on its partition column (``date`` unless the asset's definition
  metadata says ``partition_column``) and every partition of the range is
  written, empty ones included, so that "materialised" always means "a file".
* Writes are atomic: locally a temporary file in the same directory is
  renamed over the target; on object stores a single PUT is all-or-nothing.
  Re-materialising a partition replaces its file.
* Loading a range of upstream partitions returns one DataFrame; partitions
  that were never materialised are reported by asset and date, not as a bare
  ``FileNotFoundError`` (unless the input sets ``allow_missing_partitions``).
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath

DATA_FILE = "data.parquet"
PARTITION_PREFIX = "date="
DEFAULT_PARTITION_COLUMN = "date"
_LOCAL_PROTOCOLS = ("", "file", "local")


class MissingPartitionsError(Exception):
    """Upstream partitions that a step needs were never materialised."""

    def __init__(self, asset: str, missing: Sequence[str], where: str):
        self.asset = asset
        self.missing = list(missing)
        spans = ", ".join(format_key_spans(missing))
        super().__init__(
            f"Asset '{asset}' has no materialised partition for {len(self.missing)} requested day(s): "
            f"{spans} (looked under {where}). Materialise them first, e.g. "
            f"`dagster asset materialize -m streamrec_assets.definitions --select {asset} "
            f"--partition-range {self.missing[0]}...{self.missing[-1]}`."
        )


def format_key_spans(keys: Iterable[str]) -> list[str]:
    """Collapse sorted ISO dates into ``A..B`` spans of consecutive days."""
    from datetime import date, timedelta

    spans: list[list[date]] = []
    for key in sorted(keys):
        day = date.fromisoformat(key)
        if spans and spans[-1][1] + timedelta(days=1) == day:
            spans[-1][1] = day
        else:
            spans.append([day, day])
    return [a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in spans]


def storage_path(uri: str, s3_endpoint_url: str | None = None, key: str = "", secret: str = "") -> UPath:
    """A UPath for a local path or an ``s3://`` URI on any S3-compatible endpoint.

    The endpoint defaults to ``STREAMREC_S3_ENDPOINT_URL``. Credentials are passed by
    resources that received them as ``dg.EnvVar`` s, else s3fs reads the standard AWS
    environment; they never appear in code, config files or logs.
    """
    from upath import UPath

    if uri.startswith("s3://"):
        endpoint = os.environ.get("STREAMREC_S3_ENDPOINT_URL", "") if s3_endpoint_url is None else s3_endpoint_url
        options: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
        if key and secret:
            options.update(key=key, secret=secret)
        return UPath(uri, **options)
    return UPath(uri)


def is_local(path: UPath) -> bool:
    return getattr(path, "protocol", "") in _LOCAL_PROTOCOLS


def os_path(path: UPath) -> str:
    """The operating-system path of a local UPath (``file://`` URIs included)."""
    return path.path if getattr(path, "protocol", "") in ("file", "local") else str(path)


def _atomic_write(path: UPath, write) -> int:
    """Call ``write(target)`` so that ``path`` appears complete or not at all; returns its size.

    Locally ``write`` fills a temporary file in the same directory, renamed over
    ``path``. On object stores one PUT (or a multipart upload completed at close)
    is atomic, so readers see the previous object or the new one, never a prefix.
    """
    if is_local(path):
        target = os_path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
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


def write_parquet(df: pd.DataFrame, path: UPath) -> int:
    """Write ``df`` to ``path`` atomically; returns the number of bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    options = dict(compression="zstd", coerce_timestamps="us", allow_truncated_timestamps=True)
    return _atomic_write(path, lambda target: pq.write_table(table, target, **options))


def write_bytes(data: bytes, path: UPath) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""

    def write(target) -> None:
        if isinstance(target, str):
            with open(target, "wb") as handle:
                handle.write(data)
        else:
            target.write(data)

    return _atomic_write(path, write)


def read_parquet(path: UPath) -> pd.DataFrame:
    import pyarrow.parquet as pq

    if is_local(path):
        return pq.read_table(os_path(path)).to_pandas()
    return pq.read_table(path.path, filesystem=path.fs).to_pandas()


def path_exists(path: UPath) -> bool:
    return os.path.exists(os_path(path)) if is_local(path) else path.exists()


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames as Parquet, one file per daily partition (see module docstring)."""

    base_uri: str = Field(description="Root of asset storage: a local directory or s3://bucket/prefix.")
    s3_endpoint_url: str = Field(default="", description="Endpoint of an S3-compatible store.")
    aws_access_key_id: str = Field(default="", description="S3 key (pass dg.EnvVar('AWS_ACCESS_KEY_ID')).")
    aws_secret_access_key: str = Field(default="", description="S3 secret (pass dg.EnvVar(...)).")

    # -- paths --------------------------------------------------------------------------------
    def root(self) -> UPath:
        return storage_path(self.base_uri, self.s3_endpoint_url, self.aws_access_key_id, self.aws_secret_access_key)

    def asset_dir(self, asset_key: dg.AssetKey) -> UPath:
        return self.root().joinpath(*asset_key.path)

    def partition_path(self, asset_key: dg.AssetKey, partition_key: str) -> UPath:
        return self.asset_dir(asset_key) / f"{PARTITION_PREFIX}{partition_key}" / DATA_FILE

    def unpartitioned_path(self, asset_key: dg.AssetKey) -> UPath:
        *parents, name = asset_key.path
        return self.root().joinpath(*parents, f"{name}.parquet")

    # -- output -------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        import pandas as pd

        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{type(self).__name__} stores pandas DataFrames; the output of "
                f"{context.asset_key.to_user_string()} is a {type(obj).__name__}."
            )
        asset_key = context.asset_key
        if not context.has_asset_partitions:
            path = self.unpartitioned_path(asset_key)
            size = write_parquet(obj, path)
            context.add_output_metadata(
                {"uri": dg.MetadataValue.path(str(path)), "rows": len(obj), "bytes": size}
            )
            return

        keys = list(context.asset_partition_keys)
        column = (context.definition_metadata or {}).get("partition_column", DEFAULT_PARTITION_COLUMN)
        if column not in obj.columns:
            raise ValueError(
                f"Partitioned output of {asset_key.to_user_string()} has no partition column "
                f"'{column}'; columns are {list(obj.columns)}."
            )
        values = obj[column].astype(str)
        unexpected = sorted(set(values.unique()) - set(keys))
        if unexpected:
            raise ValueError(
                f"Output of {asset_key.to_user_string()} for partitions "
                f"{', '.join(format_key_spans(keys))} holds rows for other days: "
                f"{', '.join(format_key_spans(unexpected))}."
            )
        groups = {key: frame for key, frame in obj.groupby(values, sort=False)} if len(keys) > 1 else {}
        rows: dict[str, int] = {}
        total_bytes = 0
        for key in keys:
            frame = obj if len(keys) == 1 else groups.get(key, obj.iloc[0:0])
            total_bytes += write_parquet(frame.reset_index(drop=True), self.partition_path(asset_key, key))
            rows[key] = len(frame)
        metadata: dict[str, Any] = {
            "uri": dg.MetadataValue.path(str(self.asset_dir(asset_key))),
            "partitions_written": len(keys),
            "rows": len(obj),
            "bytes": total_bytes,
        }
        if len(keys) > 1:
            empty = [k for k, n in rows.items() if n == 0]
            metadata["rows_per_partition"] = dg.MetadataValue.json(rows)
            if empty:
                metadata["empty_partitions"] = ", ".join(format_key_spans(empty))
        context.add_output_metadata(metadata)

    # -- input --------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        import pandas as pd

        asset_key = context.asset_key
        if not context.has_asset_partitions:
            path = self.unpartitioned_path(asset_key)
            if not path_exists(path):
                raise FileNotFoundError(
                    f"Asset '{asset_key.to_user_string()}' was never materialised (no {path}); "
                    f"materialise it first: dagster asset materialize -m streamrec_assets.definitions "
                    f"--select {asset_key.to_user_string()}"
                )
            return read_parquet(path)

        keys = sorted(context.asset_partition_keys)
        paths = {key: self.partition_path(asset_key, key) for key in keys}
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(keys)))) as pool:
            present = dict(zip(keys, pool.map(path_exists, paths.values()), strict=True))
            missing = [k for k in keys if not present[k]]
            allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
            if missing and not allow_missing:
                raise MissingPartitionsError(
                    asset_key.to_user_string(), missing, str(self.asset_dir(asset_key))
                )
            if missing:
                context.log.warning(
                    f"{asset_key.to_user_string()}: skipping missing partitions "
                    f"{', '.join(format_key_spans(missing))}"
                )
            frames = list(pool.map(read_parquet, [paths[k] for k in keys if present[k]]))
        if not frames:
            return pd.DataFrame()
        frames = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
