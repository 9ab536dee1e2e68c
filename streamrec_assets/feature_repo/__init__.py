"""Feast objects of StreamRec, defined in code and configured from the project's settings.

* entities ``user`` (``user_id``) and ``item`` (``item_id``);
* file sources over the ``user_features`` / ``item_features`` Parquet partitions
  (``<storage>/<asset>/date=*/data.parquet``), timestamped by ``feature_timestamp``
  (the end of the feature day, when the values become known);
* feature views ``user_features`` and ``item_features`` whose features are
  read from the schema of the newest partition (so new columns, such as a new
  genre share, need no code change), with a TTL.

Offline store: DuckDB; online store: SQLite under ``$STREAMREC_HOME/feast`` (or
Redis by configuration); registry: a file under ``$STREAMREC_HOME/feast``.
:func:`repo_config` builds the ``RepoConfig``; :func:`write_feature_store_yaml`
writes the same configuration for the ``feast`` CLI (see README).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

PROJECT = "streamrec"
FEATURE_VIEWS = ("user_features", "item_features")
ENTITY_OF = {"user_features": ("user", "user_id"), "item_features": ("item", "item_id")}
#: Columns of the feature tables that are keys or timestamps, not features.
NON_FEATURES = {"user_id", "item_id", "feature_timestamp"}
TTL = timedelta(days=7)


@dataclass(frozen=True)
class FeastSettings:
    storage_uri: str
    repo_dir: str
    online_store: str = "sqlite"
    redis_url: str = ""
    s3_endpoint_url: str = ""

    @property
    def on_s3(self) -> bool:
        return self.storage_uri.startswith("s3://")

    @property
    def registry_path(self) -> str:
        """Next to the data on S3 (shared by every pod), else a local file."""
        if self.on_s3:
            return f"{self.storage_uri.rstrip('/')}/_feast/registry.pb"
        return f"{self.repo_dir}/registry.db"

    @property
    def online_path(self) -> str:
        return f"{self.repo_dir}/online_store.db"


def source_path(storage_uri: str, view: str) -> str:
    return f"{storage_uri.rstrip('/')}/{view}/date=*/data.parquet"


class _QuietServeWhileMaterializing(logging.Filter):
    """Feast warns that ``serve_features_while_materializing`` targets SQL registries; it works
    for ours too (test_pit_join proves it), so the warning on every store is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_QuietServeWhileMaterializing())


def registry_settings(fs: FeastSettings) -> dict:
    """The registry: written atomically when local (readers never see a partial file), and
    serving the last materialised values while another run materialises (Feast's
    ``serve_features_while_materializing``), so concurrent runs never fail on each other."""
    from streamrec_assets.feature_repo.registry_store import CLASS_PATH

    settings: dict = {"path": fs.registry_path, "serve_features_while_materializing": True}
    if not fs.on_s3:
        settings["registry_store_type"] = CLASS_PATH
    return settings


def repo_config(fs: FeastSettings) -> RepoConfig:
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.repo_config import RegistryConfig, RepoConfig

    if fs.online_store == "redis":
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig

        online = RedisOnlineStoreConfig(connection_string=fs.redis_url or "localhost:6379")
    elif fs.online_store == "sqlite":
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        online = SqliteOnlineStoreConfig(path=fs.online_path)
    else:
        raise ValueError(f"Unsupported online store {fs.online_store!r}: use 'sqlite' or 'redis'.")
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=RegistryConfig(**registry_settings(fs)),
        offline_store=DuckDBOfflineStoreConfig(),
        online_store=online,
        entity_key_serialization_version=3,
        repo_path=fs.repo_dir,
    )


def source_fields(fs: FeastSettings, view: str) -> list:
    """Feast fields of a feature table, read from the schema of its newest Parquet partition.

    (Feast's own inference cannot read a partition glob.) New columns, such as the
    share of a new genre, reach the feature view without a code change.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from feast import Field
    from feast.types import Bool, Float64, Int64, String

    from streamrec_assets.storage import S3Options, storage_path

    base = storage_path(f"{fs.storage_uri.rstrip('/')}/{view}", S3Options(endpoint_url=fs.s3_endpoint_url))
    parts = sorted(p for p in base.iterdir() if p.name.startswith("date=")) if base.exists() else []
    files = [p / "data.parquet" for p in reversed(parts) if (p / "data.parquet").exists()]
    if not files:
        raise FileNotFoundError(
            f"No materialised partition of {view} under {base}: materialise {view} before the Feast views."
        )
    with files[0].open("rb") as handle:
        schema = pq.read_schema(handle)
    fields = []
    for name, arrow_type in zip(schema.names, schema.types, strict=True):
        if name in NON_FEATURES:
            continue
        if pa.types.is_integer(arrow_type):
            dtype = Int64
        elif pa.types.is_floating(arrow_type):
            dtype = Float64
        elif pa.types.is_boolean(arrow_type):
            dtype = Bool
        elif pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
            dtype = String
        else:
            continue
        fields.append(Field(name=name, dtype=dtype))
    return fields


def feature_objects(fs: FeastSettings) -> list:
    """Entities, sources and feature views (features from the newest partition's schema)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Int64

    objects: list = []
    for view in FEATURE_VIEWS:
        entity_name, key = ENTITY_OF[view]
        entity = Entity(
            name=entity_name, join_keys=[key], value_type=ValueType.INT64, description=f"A StreamRec {entity_name}."
        )
        source = FileSource(
            name=f"{view}_source",
            path=source_path(fs.storage_uri, view),
            timestamp_field="feature_timestamp",
            s3_endpoint_override=fs.s3_endpoint_url or None,
            description=f"The {view} asset's daily Parquet partitions.",
        )
        feature_view = FeatureView(
            name=view,
            entities=[entity],
            ttl=TTL,
            schema=[Field(name=key, dtype=Int64), *source_fields(fs, view)],
            source=source,
            online=True,
            description=f"Rolling 1/7/28-day {entity_name} features as of the end of each day.",
            tags={"owner": "streamrec", "dagster_asset": view},
        )
        objects += [entity, source, feature_view]
    return objects


def get_store(fs: FeastSettings) -> FeatureStore:
    from pathlib import Path

    from feast import FeatureStore

    if "://" not in fs.repo_dir:
        Path(fs.repo_dir).mkdir(parents=True, exist_ok=True)
    if fs.on_s3:
        enable_s3(fs.s3_endpoint_url)
    return FeatureStore(config=repo_config(fs))


_S3_READY: set[str] = set()


def enable_s3(endpoint_url: str) -> None:
    """Let Feast's DuckDB offline store and S3 registry reach an S3-compatible store.

    DuckDB's httpfs extension is downloaded at run time, which this project never
    does; instead the ibis DuckDB connection reads ``s3://`` through fsspec (s3fs,
    endpoint and AWS credentials from the environment). Feast's S3 registry reads its
    endpoint from ``FEAST_S3_ENDPOINT_URL``.
    """
    if endpoint_url:
        os.environ.setdefault("FEAST_S3_ENDPOINT_URL", endpoint_url)
    if endpoint_url in _S3_READY:
        return
    import ibis
    import s3fs
    from ibis.backends.duckdb import Backend

    if not getattr(Backend._load_extensions, "_streamrec_fsspec", False):
        original = Backend._load_extensions

        def load_extensions(self, extensions, force_install=False):
            rest = [e for e in extensions if e != "httpfs"]  # s3:// goes through fsspec
            if rest:
                original(self, rest, force_install)

        load_extensions._streamrec_fsspec = True
        Backend._load_extensions = load_extensions
    options = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    ibis.get_backend().con.register_filesystem(s3fs.S3FileSystem(**options))
    _S3_READY.add(endpoint_url)


def feature_refs(store: FeatureStore) -> list[str]:
    """``view:feature`` references of every feature of the StreamRec views."""
    return [f"{view}:{f.name}" for view in FEATURE_VIEWS for f in store.get_feature_view(view).features]


def view_version(store: FeatureStore, view: str) -> str:
    """A stable version of a feature view: Feast's version number when set, else a hash of its spec."""
    fv = store.get_feature_view(view)
    spec = fv.to_proto().spec
    spec_hash = hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:12]
    number = getattr(fv, "current_version_number", None)
    return f"v{number}-{spec_hash}" if number is not None else spec_hash


def write_feature_store_yaml(fs: FeastSettings, path: str) -> str:
    """Write the equivalent feature_store.yaml for the ``feast`` CLI."""
    import yaml

    online = (
        {"type": "redis", "connection_string": fs.redis_url or "localhost:6379"}
        if fs.online_store == "redis"
        else {"type": "sqlite", "path": fs.online_path}
    )
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": registry_settings(fs),
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
    }
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return path


def historical_features(store: FeatureStore, entity_df, refs: list[str] | None = None, *, engine: str = "duckdb"):
    """Point-in-time join: for each row (``user_id``, ``item_id``, ``event_timestamp``), the
    latest feature rows with ``event_timestamp - TTL <= feature_timestamp <= event_timestamp``.

    Extra columns of ``entity_df`` pass through; the row order is kept; ``event_timestamp``
    comes back as ``datetime64[us, UTC]`` and ``<view>__date`` as 'YYYY-MM-DD' strings.

    ``engine="duckdb"`` (default): the views' definitions come from the Feast registry and
    DuckDB runs an ASOF JOIN over only the partitions the TTL can reach
    (:mod:`streamrec_assets.feature_repo.offline`), whatever the views' materialisation
    state. ``engine="feast"``: Feast's ``get_historical_features`` (reads every partition;
    fails while a view is being materialised); same values.
    """
    import pandas as pd

    if engine not in ("duckdb", "feast"):
        raise ValueError(f"Unknown engine {engine!r}: use 'duckdb' or 'feast'.")
    frame = entity_df.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    if frame.empty:
        return frame
    if engine == "duckdb":
        from streamrec_assets.feature_repo import offline

        return offline.historical_features(store, frame, refs or None, FEATURE_VIEWS).frame
    frame["_row"] = range(len(frame))
    # Timestamps are sent as microseconds (Feast's DuckDB store rejects nanoseconds).
    result = store.get_historical_features(
        entity_df=frame, features=refs or feature_refs(store), full_feature_names=True
    ).to_df()
    result = result.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    result["event_timestamp"] = pd.to_datetime(result["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    return _normalise_dates(result)


def _normalise_dates(frame):
    """``<view>__date`` as 'YYYY-MM-DD' strings: DuckDB reads the ``date=`` directory of a
    partition as a DATE (hive partitioning), the online store returns what it stored."""
    import pandas as pd

    for col in [c for c in frame.columns if c.endswith("__date")]:
        known = frame[col].notna()
        frame[col] = frame[col].astype(object)
        frame.loc[known, col] = pd.to_datetime(frame.loc[known, col].astype(str)).dt.strftime("%Y-%m-%d")
    return frame


def online_features(store: FeatureStore, user_ids, item_ids, refs: list[str] | None = None):
    """Online lookup of (user, item) pairs, columns named like :func:`historical_features`.

    With ``item_ids=None`` (or ``user_ids=None``) it looks up one entity set: one row per
    id, ``refs`` being features of that entity's view only. Batch serving looks up the
    distinct users and the distinct items once each and joins them, instead of one row
    per pair (user and item features are independent).
    """
    import pandas as pd

    if user_ids is None or item_ids is None:
        key, ids = ("item_id", item_ids) if user_ids is None else ("user_id", user_ids)
        ids = pd.Series(ids, dtype="int64")
        if ids.empty:
            return pd.DataFrame({key: ids})
        frame = store.get_online_features(
            features=refs or feature_refs(store), entity_rows={key: ids.tolist()}, full_feature_names=True
        )
        result = pd.DataFrame(frame.to_dict())
        result[key] = result[key].astype("int64")
        return _normalise_dates(result)
    rows = [{"user_id": int(u), "item_id": int(i)} for u, i in zip(user_ids, item_ids, strict=True)]
    frame = store.get_online_features(features=refs or feature_refs(store), entity_rows=rows, full_feature_names=True)
    return _normalise_dates(pd.DataFrame(frame.to_dict()))
