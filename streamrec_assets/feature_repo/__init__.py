"""Feast objects of StreamRec, defined in code and configured from the project's settings.

* entities ``user`` (``user_id``) and ``item`` (``item_id``);
* file sources over the ``user_features`` / ``item_features`` Parquet partitions
  (``<storage>/<asset>/date=*/data.parquet``), timestamped by ``feature_timestamp``
  (the end of the feature day, when the values become known);
* feature views ``user_features`` and ``item_features`` with a TTL, whose features are
  declared in code from the pandera contracts of their source tables
  (:func:`streamrec_assets.contracts.feature_view_fields`: the contract's columns but the
  entity key, ``date`` and ``feature_timestamp``; one ``genre_share_28d__<genre>`` per genre
  of the item catalogue, so a new catalogue genre needs no code change). The stored
  partitions are checked against them (``feast_feature_views``), never read to define them.

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
#: Columns of the feature tables that are keys, timestamps or the partition day, not features.
NON_FEATURES = frozenset({"user_id", "item_id", "feature_timestamp", "date"})
#: Unpartitioned table (``<storage>/item_catalog.parquet``) whose genres name the per-genre features.
ITEM_CATALOG = "item_catalog"
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


def catalogue_genres(fs: FeastSettings) -> list[str]:
    """The genres of the published item catalogue (``<storage>/item_catalog.parquet``), sorted."""
    from streamrec_assets.errors import NeverMaterializedError
    from streamrec_assets.storage import S3Options, path_exists, read_parquet, storage_path

    path = storage_path(f"{fs.storage_uri.rstrip('/')}/{ITEM_CATALOG}.parquet", S3Options(endpoint_url=fs.s3_endpoint_url))
    if not path_exists(path):
        raise NeverMaterializedError(ITEM_CATALOG, str(path))
    return sorted(read_parquet(path, columns=["genre"])["genre"].dropna().astype(str).unique())


def declared_fields(
    fs: FeastSettings | None = None, genres=None, *, require_catalogue: bool = True
) -> dict[str, dict[str, str]]:
    """Each view's features (name -> Feast type name), declared from its source table's contract
    (:func:`streamrec_assets.contracts.feature_view_fields`); the per-genre features come from
    ``genres``, by default the genres of the item catalogue in ``fs``'s storage. Without a
    published catalogue: an error, or with ``require_catalogue=False`` no per-genre feature (and
    a warning; ``feast_feature_views`` then refuses the stored partitions, which have them)."""
    from streamrec_assets.contracts import feature_view_fields
    from streamrec_assets.errors import NeverMaterializedError

    if genres is None:
        if fs is None:
            raise ValueError("declared_fields needs the Feast settings (to read the catalogue's genres) or genres.")
        try:
            genres = catalogue_genres(fs)
        except NeverMaterializedError as err:
            if require_catalogue:
                raise
            logging.getLogger(__name__).warning("%s The feature views declare no per-genre feature.", err)
            genres = []
    genres = list(genres)
    return {view: feature_view_fields(view, genres, NON_FEATURES) for view in FEATURE_VIEWS}


def feast_fields(fields: dict[str, str]) -> list:
    """Feast ``Field`` objects of ``name -> Feast type name`` (Int64, Float64, String, Bool)."""
    from feast import Field
    from feast.types import Bool, Float64, Int64, String

    types = {"Int64": Int64, "Float64": Float64, "String": String, "Bool": Bool}
    return [Field(name=name, dtype=types[dtype]) for name, dtype in fields.items()]


def feature_objects(fs: FeastSettings, fields: dict[str, dict[str, str]] | None = None) -> list:
    """Entities, sources and feature views; the views' features are ``fields`` (view -> name -> Feast
    type name), by default :func:`declared_fields` (the contracts, the catalogue's genres; none
    per genre while no catalogue is published)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Int64

    fields = declared_fields(fs, require_catalogue=False) if fields is None else fields
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
            schema=[Field(name=key, dtype=Int64), *feast_fields(fields[view])],
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
    con = ibis.get_backend().con
    if "s3" in con.list_filesystems():  # registered for another endpoint: DuckDB keeps one per protocol
        con.unregister_filesystem("s3")
    con.register_filesystem(s3fs.S3FileSystem(**options))
    _S3_READY.add(endpoint_url)


def online_through(store: FeatureStore, views=FEATURE_VIEWS) -> str | None:
    """The newest feature day that every view's online store holds, from Feast's own record of
    materialised intervals (``FeatureView.most_recent_end_time``); None before any materialisation.

    Feature rows of day D are stamped D+1 00:00 UTC and materialised over a window ending after
    that stamp (``feast_feature_views`` uses D+1 12:00), so the newest day is the last whole day
    before the interval's end, minus one.
    """
    import pandas as pd

    ends = []
    for view in views:
        try:
            fv = store.registry.get_feature_view(view, store.project, allow_cache=False)
        except Exception:  # noqa: BLE001 - no registry or no such view yet: nothing online
            return None
        if fv.most_recent_end_time is None:
            return None
        end = pd.Timestamp(fv.most_recent_end_time)
        ends.append(end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC"))
    if not ends:
        return None
    newest = min(ends) - pd.Timedelta(microseconds=1)
    return (newest.floor("D") - pd.Timedelta(days=1)).date().isoformat()


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
    comes back as ``datetime64[us, UTC]`` (and a ``<view>__date`` feature, should a view
    declare one, as 'YYYY-MM-DD' strings). :func:`feature_row_audit` says which feature
    row each entity row got (for leakage audits).

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
    """A ``<view>__date`` feature (none of the StreamRec views declares one) as 'YYYY-MM-DD'
    strings: DuckDB reads the ``date=`` directory of a partition as a DATE (hive
    partitioning), the online store returns what it stored."""
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


def feature_row_audit(store: FeatureStore, entity_df, views=FEATURE_VIEWS):
    """Which feature row the point-in-time join of :func:`historical_features` gives each entity row,
    per view: ``<view>__date`` (the row's partition day, read from the feature table's ``date``
    column: 'YYYY-MM-DD', None where the row gets none) and ``<view>__feature_timestamp`` (its
    stamp, ``datetime64[us, UTC]``). Same index and order as ``entity_df``.

    Neither is a feature (no model input, never served): this is the join's audit trail, for
    leakage checks (``core.training.leaked_rows`` reads ``<view>__date`` next to the example's
    ``date``); keep it out of the stored examples. Same semantics and partitions read as the
    DuckDB join of :mod:`streamrec_assets.feature_repo.offline`.
    """
    import dataclasses

    import pandas as pd
    import pyarrow as pa

    from streamrec_assets.feature_repo import offline

    names = list(views)
    frame = entity_df.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    feature_views = offline.fetch_feature_views(store, names)
    plans = [
        dataclasses.replace(
            plan,
            features=(("date", f"{plan.name}__date"), (plan.timestamp_field, f"{plan.name}__feature_timestamp")),
            types={f"{plan.name}__date": pa.string(), f"{plan.name}__feature_timestamp": pa.timestamp("us", tz="UTC")},
        )
        for plan in offline.plan_views(feature_views, [f"{v}:{feature_views[v].features[0].name}" for v in names])
    ]
    keys = list(dict.fromkeys(k for p in plans for k in p.join_keys.values()))
    joined = offline.point_in_time_join(frame[[*keys, "event_timestamp"]], plans).frame
    out = {}
    for view in names:
        days = joined[f"{view}__date"].astype(object)
        out[f"{view}__date"] = days.where(days.notna(), None).set_axis(entity_df.index)
        stamps = pd.to_datetime(joined[f"{view}__feature_timestamp"], utc=True).astype("datetime64[us, UTC]")
        out[f"{view}__feature_timestamp"] = stamps.set_axis(entity_df.index)
    return pd.DataFrame(out, index=entity_df.index)


def online_feature_days(store: FeatureStore, view: str, ids) -> list[str | None]:
    """For each entity id, the feature day whose row of ``view`` the online store holds (the day D of
    the row stamped D+1 00:00, from the online row's event timestamp); None when it holds none."""
    from datetime import UTC, datetime

    from feast.online_response import TIMESTAMP_POSTFIX

    from streamrec_assets.feature_repo.offline import STAMP_OFFSET

    key = ENTITY_OF[view][1]
    ids = [int(i) for i in ids]
    if not ids:
        return []
    feature = store.get_feature_view(view).features[0].name
    response = store.get_online_features(
        features=[f"{view}:{feature}"], entity_rows={key: ids}, full_feature_names=True
    ).to_dict(include_event_timestamps=True)
    stamps = response[f"{view}__{feature}{TIMESTAMP_POSTFIX}"]
    return [
        (datetime.fromtimestamp(int(ts), tz=UTC) - STAMP_OFFSET).date().isoformat() if ts else None
        for ts in stamps
    ]
