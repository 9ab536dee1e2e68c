"""Offline point-in-time joins: Feast's semantics, executed by DuckDB over the TTL-reachable partitions only.

The feature views are *defined* by Feast: the source path, timestamp field, TTL,
entity join keys and feature list all come from the ``FeatureView`` objects,
fetched once per call from the registry. DuckDB executes it: per view it reads
(only the needed columns of) the files of only those daily partitions that the TTL
lets the entity rows reach, then one query ``ASOF LEFT JOIN``s the entity keys and
timestamps to each view and returns, per entity row, the position of its feature
row; the feature columns are gathered by position in Arrow. Its cost follows the
entity rows and the TTL, never the length of the feature history (Feast's own
DuckDB store reads every partition ever written, and carries every column of
the entity frame through its joins).

Semantics (those of Feast's ibis/DuckDB offline store, ``point_in_time_join``):
for each entity row and view, the latest feature row of the same entity with
``timestamp_field <= event_timestamp`` and ``timestamp_field + ttl >=
event_timestamp`` (both bounds inclusive), nulls when there is none; a view
without a TTL has no lower bound. Ties on the timestamp are broken by the
source's created timestamp column when it has one (Feast's ``deduplicate``).
Output: the entity frame's columns unchanged and in order, then
``<view>__<feature>`` for every requested feature (views in the order of the
references); integer features with a missing value read as float64 with NaN,
as from Feast's ``to_df()``. Unlike Feast, the registry's materialisation state
(``MATERIALIZING`` during another run's ``store.materialize``) is never looked
at: offline reads depend only on the Parquet files.

Partition layout: a source path ``<base>/<key>=*/<file>`` (the feature assets'
``<storage>/<view>/date=*/data.parquet``) holds in ``date=D`` the feature rows
stamped at the end of day D (``D + 1 day``, :mod:`streamrec_assets.core.features`).
A row stamped ``D + 1d`` is reachable from an entity timestamp ``ts`` when
``ts - ttl <= D + 1d <= ts``, so the partitions read for entity rows spanning
``[min_ts, max_ts]`` are the days ``ceil(min_ts - ttl - 1d) .. floor(max_ts - 1d)``,
each checked for existence by name (no listing of the whole history). Storage
is a local directory or ``s3://`` on an S3-compatible endpoint, which DuckDB
reads through an fsspec filesystem (never its httpfs extension, never an
extension download).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

#: A partitioned source: ``<base>/<key>=*/<file>``.
_PARTITIONED = re.compile(r"^(?P<base>.+)/(?P<key>[A-Za-z_][A-Za-z0-9_]*)=\*/(?P<name>[^/*?\[\]]+)$")
#: A partition ``date=D`` holds the feature rows stamped ``D + STAMP_OFFSET`` (the end of the day).
STAMP_OFFSET = timedelta(days=1)
_DAY = timedelta(days=1)
_ROW, _TS = "__pit_row", "__pit_ts"
_ISO_DAY = r"^\d{4}-\d{2}-\d{2}$"


@dataclass(frozen=True)
class ViewPlan:
    """What the join needs of one feature view, read from its Feast definition."""

    name: str
    source_path: str
    timestamp_field: str
    created_timestamp_column: str | None
    ttl: timedelta | None
    #: feature-table column -> entity frame column
    join_keys: dict[str, str]
    #: (column in the source files, output column ``<view>__<feature>``)
    features: tuple[tuple[str, str], ...]
    #: Arrow type of each output column, from the feature view's schema (for views with no rows to read)
    types: dict[str, pa.DataType]
    s3_endpoint: str = ""


@dataclass
class PitJoinResult:
    """The joined frame and what it took: the partitions and files read per view, timings."""

    frame: pd.DataFrame
    partitions: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------- feature views


def fetch_feature_views(store: FeatureStore, names: Sequence[str], attempts: int = 6) -> dict[str, FeatureView]:
    """The feature views ``names``, from one read of the registry (retried briefly).

    A file registry is rewritten in place by ``apply``/``materialize`` (state
    transitions included), so a read racing a writer can see a truncated file: an
    unparsable or empty registry is read again after a short pause. The views'
    materialisation state is not looked at.
    """
    from feast.errors import FeatureViewNotFoundException

    wanted = list(dict.fromkeys(names))
    for attempt in range(attempts):
        try:
            views = {fv.name: fv for fv in store.registry.list_feature_views(store.project, allow_cache=False)}
            missing = [n for n in wanted if n not in views]
            if not missing:
                return {n: views[n] for n in wanted}
            error: Exception = FeatureViewNotFoundException(", ".join(missing), store.project)
        except Exception as exc:  # noqa: BLE001 - a torn registry read: protobuf DecodeError, missing project...
            error = exc
        if attempt + 1 < attempts:
            log.info("Registry read %d/%d failed (%s); reading it again.", attempt + 1, attempts, error)
            time.sleep(0.05 * (attempt + 1))
    raise error


def _arrow_type(feast_type) -> pa.DataType:
    """The Arrow type of a Feast primitive type (for all-null columns of a view with nothing to read)."""
    import pyarrow as pa

    name = str(feast_type).lower()
    for key, arrow in (("int64", pa.int64()), ("int32", pa.int32()), ("float64", pa.float64()),
                       ("float32", pa.float32()), ("bool", pa.bool_()), ("string", pa.string()),
                       ("unixtimestamp", pa.timestamp("us", tz="UTC"))):
        if key in name:
            return arrow
    return pa.null()


def plan_views(feature_views: dict[str, FeatureView], refs: Sequence[str]) -> list[ViewPlan]:
    """One :class:`ViewPlan` per view named in ``refs`` (``view:feature``), in the order of first mention."""
    from feast.infra.offline_stores.file_source import FileSource

    requested: dict[str, list[str]] = {}
    for ref in refs:
        view, _, feature = ref.partition(":")
        if not feature:
            raise ValueError(f"Feature reference {ref!r} is not of the form 'view:feature'.")
        if view not in feature_views:
            raise ValueError(f"Feature reference {ref!r}: no feature view {view!r} in the registry.")
        requested.setdefault(view, [])
        if feature not in requested[view]:
            requested[view].append(feature)
    plans = []
    for view, features in requested.items():
        fv = feature_views[view]
        source = fv.batch_source
        if not isinstance(source, FileSource):
            raise TypeError(f"Feature view {view!r}: the DuckDB join reads FileSources, not {type(source).__name__}.")
        known = {f.name: f for f in fv.features}
        unknown = [f for f in features if f not in known]
        if unknown:
            raise ValueError(f"Feature view {view!r} has no feature(s) {unknown}.")
        # Feast renames source columns by field_mapping (source name -> feature name).
        to_source = {new: old for old, new in (source.field_mapping or {}).items()}
        prefix = fv.projection.name_alias or fv.name
        join_keys = dict(fv.projection.join_key_map) or {e.name: e.name for e in fv.entity_columns}
        plans.append(
            ViewPlan(
                name=fv.name,
                source_path=source.path,
                timestamp_field=to_source.get(source.timestamp_field, source.timestamp_field),
                created_timestamp_column=(
                    to_source.get(source.created_timestamp_column, source.created_timestamp_column)
                    if source.created_timestamp_column else None
                ),
                ttl=fv.ttl if fv.ttl else None,
                join_keys={to_source.get(k, k): v for k, v in join_keys.items()},
                features=tuple((to_source.get(f, f), f"{prefix}__{f}") for f in features),
                types={f"{prefix}__{f}": _arrow_type(known[f].dtype) for f in features},
                s3_endpoint=getattr(source, "s3_endpoint_override", None) or "",
            )
        )
    return plans


def all_feature_refs(feature_views: dict[str, FeatureView]) -> list[str]:
    return [f"{name}:{f.name}" for name, fv in feature_views.items() for f in fv.features]


# --------------------------------------------------------------------------------- partitions


def reachable_days(min_ts: datetime, max_ts: datetime, ttl: timedelta | None) -> tuple[date | None, date]:
    """First and last partition day whose rows (stamped day + 1d) some timestamp in [min_ts, max_ts] can
    reach within ``ttl`` (first is None without a TTL: every older day is reachable)."""
    last = (max_ts - STAMP_OFFSET).date()  # floor: the stamp day + 1d must be <= max_ts
    if ttl is None:
        return None, last
    lower = min_ts - ttl - STAMP_OFFSET
    first = lower.date() if lower.time() == datetime.min.time() else lower.date() + _DAY  # ceil
    return first, last


def _filesystem(uri: str, endpoint: str):
    """(UPath of ``uri``, its fsspec filesystem or None when local)."""
    from streamrec_assets.storage import S3Options, is_local, storage_path

    path = storage_path(uri, S3Options(endpoint_url=endpoint))
    return path, (None if is_local(path) else path.fs)


def partition_files(plan: ViewPlan, first: date | None, last: date) -> tuple[list[str], list[str], object]:
    """(days, files, fsspec filesystem or None) of the existing partitions of ``plan`` in [first, last].

    With a TTL each candidate day is checked by name (a bounded number of checks); without
    one the source directory is listed, as every older day can hold the latest row.
    """
    from streamrec_assets.storage import os_path, path_exists

    match = _PARTITIONED.match(plan.source_path)
    if match is None:  # not a day-partitioned layout: read the source as Feast does
        _, fs = _filesystem(plan.source_path, plan.s3_endpoint)
        return [], [plan.source_path], fs
    base_uri, key, name = match["base"], match["key"], match["name"]
    base, fs = _filesystem(base_uri, plan.s3_endpoint)
    if first is None:
        names = [p.name for p in base.iterdir()] if path_exists(base) else []
        candidates = sorted(n[len(key) + 1 :] for n in names if n.startswith(f"{key}="))
        candidates = [d for d in candidates if _is_day(d) and d <= last.isoformat()]
    else:
        span = (last - first).days + 1
        candidates = [(first + timedelta(days=k)).isoformat() for k in range(max(span, 0))]
    paths = [base.joinpath(f"{key}={d}", name) for d in candidates]
    if fs is not None and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            found = list(pool.map(path_exists, paths))
    else:
        found = [path_exists(p) for p in paths]
    days = [d for d, ok in zip(candidates, found, strict=True) if ok]
    files = [
        (os_path(p) if fs is None else f"{base_uri.split('://', 1)[0]}://{p.path}")
        for p, ok in zip(paths, found, strict=True) if ok
    ]
    return days, files, fs


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------- join


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view_query(plan: ViewPlan, files: list[str], lo_us: int | None, hi_us: int) -> str:
    """The feature rows of one view that any entity row can reach: keys, stamp (epoch µs), features."""
    stamp = f"epoch_us({_q(plan.timestamp_field)})"
    cols = [f"{_q(src)} AS __pit_k{i}" for i, src in enumerate(plan.join_keys)]
    cols.append(f"{stamp} AS {_TS}")
    cols += [f"{_q(src)} AS {_q(out)}" for src, out in plan.features]
    where = [f"{stamp} <= {hi_us}"] + ([] if lo_us is None else [f"{stamp} >= {lo_us}"])
    qualify = ""
    if plan.created_timestamp_column:  # among equal stamps Feast keeps the newest created row
        keys = ", ".join([f"__pit_k{i}" for i in range(len(plan.join_keys))] + [_TS])
        qualify = (f" QUALIFY row_number() OVER (PARTITION BY {keys} "
                   f"ORDER BY {_q(plan.created_timestamp_column)} DESC) = 1")
    listing = "[" + ", ".join(_lit(f) for f in files) + "]"
    return (
        f"SELECT {', '.join(cols)} FROM read_parquet({listing}, hive_partitioning = false, union_by_name = true) "
        f"WHERE {' AND '.join(where)}{qualify}"
    )


def _entity_arrow(frame: pd.DataFrame, key_columns: list[str], timestamp_column: str) -> pa.Table:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    ts = pd.to_datetime(frame[timestamp_column], utc=True).astype("datetime64[us, UTC]")
    columns = {_ROW: pa.array(np.arange(len(frame), dtype="int64")), _TS: pa.array(ts).cast(pa.int64())}
    for col in key_columns:
        columns[col] = pa.Array.from_pandas(frame[col])
    return pa.table(columns)


def _dates_need_formatting(column: pa.ChunkedArray) -> bool:
    """False when a ``<view>__date`` column already holds only 'YYYY-MM-DD' strings (or nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return True
    return pc.all(pc.match_substring_regex(column, _ISO_DAY)).as_py() is False


def _connect(filesystems: list):
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    seen = set()
    for fs in filesystems:
        if fs is not None and id(fs) not in seen:
            con.register_filesystem(fs)
            seen.add(id(fs))
    return con


def _key_columns(frame: pd.DataFrame, plans: Sequence[ViewPlan], timestamp_column: str) -> list[str]:
    """The entity frame's join key columns of ``plans`` (first mention first), checked present with
    ``timestamp_column``."""
    key_columns = list(dict.fromkeys(k for p in plans for k in p.join_keys.values()))
    absent = [k for k in [timestamp_column, *key_columns] if k not in frame.columns]
    if absent:
        raise ValueError(f"The entity frame lacks column(s) {absent} needed to join {[p.name for p in plans]}.")
    return key_columns


def _reachable_partitions(
    plans: Sequence[ViewPlan], min_us: int, max_us: int, result: PitJoinResult, rows: int
) -> list[tuple[ViewPlan, list[str], object]]:
    """Window selection: per plan, (plan, files, fsspec filesystem or None) of the existing partitions
    that entity timestamps in ``[min_us, max_us]`` (epoch µs) reach within the plan's TTL; the
    days and files go to ``result`` too."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    min_ts, max_ts = epoch + timedelta(microseconds=min_us), epoch + timedelta(microseconds=max_us)
    t0 = time.perf_counter()
    found = []
    for plan in plans:
        first, last = reachable_days(min_ts, max_ts, plan.ttl)
        days, files, fs = partition_files(plan, first, last)
        result.partitions[plan.name], result.files[plan.name] = days, files
        found.append((plan, files, fs))
    result.seconds["list"] = time.perf_counter() - t0
    log.info(
        "Point-in-time join of %d rows (%s .. %s) read %s",
        rows, min_ts.isoformat(), max_ts.isoformat(),
        "; ".join(f"{v}: {_spans(d)}" for v, d in result.partitions.items()),
    )
    return found


def _ttl_us(plan: ViewPlan) -> int | None:
    return None if plan.ttl is None else int(plan.ttl / timedelta(microseconds=1))


def _position_index(table: pa.Table, keys: int) -> pa.Table:
    """The keys and stamps of a view's feature rows, with each row's position (``__pit_i``)."""
    import numpy as np
    import pyarrow as pa

    columns = [*(f"__pit_k{j}" for j in range(keys)), _TS]
    return table.select(columns).append_column("__pit_i", pa.array(np.arange(len(table), dtype="int64")))


def _asof_join(i: int, plan: ViewPlan, ttl_us: int | None) -> tuple[str, str]:
    """The ``ASOF LEFT JOIN`` of view ``i`` (registered as ``__pit_f<i>``) to the entities ``e``, and
    the select expression of the position ``__pit_p<i>`` of each entity row's feature row (null
    when none, or when expired: inclusive, as Feast's ``feature_ts + ttl >= event_ts``)."""
    alias = f"f{i}"
    on = [f"e.{_q(ent)} = {alias}.__pit_k{j}" for j, ent in enumerate(plan.join_keys.values())]
    join = f"ASOF LEFT JOIN __pit_f{i} {alias} ON {' AND '.join(on)} AND e.{_TS} >= {alias}.{_TS}"
    position = f"{alias}.__pit_i"
    if ttl_us is not None:
        position = f"CASE WHEN {alias}.{_TS} >= e.{_TS} - {ttl_us} THEN {position} END"
    return join, f"{position} AS __pit_p{i}"


def _pick_positions(
    entities: pa.Table, found: list[tuple[ViewPlan, list[str], object]], min_us: int, max_us: int
) -> tuple[dict[int, pa.Table], pa.Table]:
    """In DuckDB: the reachable feature rows of each view with files (by index into ``found``), and
    per entity row, in the entity order, the position of its feature row in each (``__pit_p<i>``)."""
    con = _connect([fs for _, files, fs in found if files])
    try:
        con.register("__pit_entities", entities)
        tables, positions, joins = {}, [], []
        for i, (plan, files, _) in enumerate(found):
            if not files:
                continue  # nothing reachable: the view's columns stay null
            ttl_us = _ttl_us(plan)
            lo_us = None if ttl_us is None else min_us - ttl_us
            tables[i] = con.sql(_view_query(plan, files, lo_us, max_us)).to_arrow_table()
            con.register(f"__pit_f{i}", _position_index(tables[i], len(plan.join_keys)))
            join, position = _asof_join(i, plan, ttl_us)
            joins.append(join)
            positions.append(position)
        sql = f"SELECT {', '.join(positions)} FROM __pit_entities e {' '.join(joins)} ORDER BY e.{_ROW}"
        picked = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return tables, picked


def _gather(
    found: list[tuple[ViewPlan, list[str], object]], tables: dict[int, pa.Table], picked: pa.Table
) -> tuple[dict[str, pa.ChunkedArray], set[str]]:
    """Post-processing: each feature column gathered by position from its view's rows, and the
    ``<view>__date`` columns whose source rows need formatting as 'YYYY-MM-DD'."""
    columns, reformat = {}, set()
    for i, table in tables.items():
        where = picked[f"__pit_p{i}"]
        for _, out in found[i][0].features:
            columns[out] = table[out].take(where)
            if out.endswith("__date") and _dates_need_formatting(table[out]):  # checked on the source rows
                reformat.add(out)
    return columns, reformat


def _finish(
    result: PitJoinResult, frame: pd.DataFrame, plans: Sequence[ViewPlan], columns: dict, reformat: set[str],
    started: float,
) -> PitJoinResult:
    """``result`` with the entity frame and the feature columns of ``plans`` (all null where not in
    ``columns``), and the total time since ``started``."""
    import pyarrow as pa

    output = [out for p in plans for _, out in p.features]
    types = {out: t for p in plans for out, t in p.types.items()}
    gathered = {out: columns[out] if out in columns else pa.nulls(len(frame), types[out]) for out in output}
    result.frame = _assemble(frame, pa.table(gathered) if gathered else None, output, reformat)
    result.seconds["total"] = time.perf_counter() - started
    return result


def point_in_time_join(
    entity_df: pd.DataFrame,
    plans: Sequence[ViewPlan],
    timestamp_column: str = "event_timestamp",
) -> PitJoinResult:
    """Join the features of ``plans`` to ``entity_df`` as of each row's ``timestamp_column``.

    ``entity_df`` keeps its columns, order and values; the feature columns follow. Only the
    join keys and timestamps go to DuckDB (as Arrow), never the pass-through columns. Per view,
    the reachable feature rows are read once (only the needed columns), the ASOF JOIN yields for
    each entity row the *position* of its feature row (null when none or expired), sorted
    back to the entity order, and the feature columns are gathered by position in Arrow: no
    wide rows travel through the join or the sort.
    """
    import pyarrow.compute as pc

    started = time.perf_counter()
    result = PitJoinResult(frame=entity_df)
    frame = entity_df.reset_index(drop=True)
    entities = _entity_arrow(frame, _key_columns(frame, plans, timestamp_column), timestamp_column)
    stamps = entities[_TS].drop_null()
    if len(stamps) == 0 or not plans:
        return _finish(result, frame, plans, {}, set(), started)
    min_us, max_us = int(pc.min(stamps).as_py()), int(pc.max(stamps).as_py())
    found = _reachable_partitions(plans, min_us, max_us, result, len(frame))
    if not any(files for _, files, _ in found):
        return _finish(result, frame, plans, {}, set(), started)

    t0 = time.perf_counter()
    tables, picked = _pick_positions(entities, found, min_us, max_us)
    result.seconds["duckdb"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _finish(result, frame, plans, *_gather(found, tables, picked), started)
    result.seconds["pandas"] = time.perf_counter() - t0
    return result


def _assemble(frame: pd.DataFrame, features: pa.Table | None, output: list[str], reformat: set[str]) -> pd.DataFrame:
    """The entity frame, then the feature columns (converted in one go: per column is many times slower)."""
    import pandas as pd

    if features is None or not output:
        return frame
    features = features.select(output)
    feats = features.to_pandas()
    feats.index = frame.index
    for name in sorted(reformat):  # '<view>__date' as 'YYYY-MM-DD' strings (the files hold them so already)
        values = feats[name].astype(object)
        known = values.notna()
        values.loc[known] = pd.to_datetime(values.loc[known].astype(str)).dt.strftime("%Y-%m-%d")
        feats[name] = values
    # The entity columns go in front of the feature frame one by one: concat/join would copy
    # (consolidate) every feature block, several times slower on a day of rows.
    for position, column in enumerate(c for c in frame.columns if c not in set(output)):
        feats.insert(position, column, frame[column])
    return feats


def _spans(days: list[str]) -> str:
    from streamrec_assets.storage import format_key_spans

    return ", ".join(format_key_spans(days)) or "none"


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, refs: Sequence[str] | None,
                        views: Sequence[str], timestamp_column: str = "event_timestamp") -> PitJoinResult:
    """Feast-defined point-in-time join of ``refs`` (default: every feature of ``views``), DuckDB-executed."""
    names = list(views) if refs is None else list(dict.fromkeys(r.partition(":")[0] for r in refs))
    t0 = time.perf_counter()
    feature_views = fetch_feature_views(store, names)
    plans = plan_views(feature_views, all_feature_refs(feature_views) if refs is None else refs)
    registry_s = time.perf_counter() - t0
    result = point_in_time_join(entity_df, plans, timestamp_column)
    result.seconds["registry"] = registry_s
    return result
