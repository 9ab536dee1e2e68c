"""Group ``features``: the Feast feature store over the feature tables.

``feast_feature_views`` applies the Feast definitions (entities, sources, views)
and materialises the partition's feature values into the online store. The
views' features are declared from the feature tables' contracts
(:func:`streamrec_assets.feature_repo.declared_fields`); before anything is applied,
every stored partition of the step must hold exactly those columns with those types,
else the step fails naming the missing, extra and mistyped columns. The offline
store reads the feature assets' Parquet partitions directly (DuckDB).
"""

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, check_spec, contract_check_spec, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, Storage

ASSET = "feast_feature_views"
SERVED_CHECK = "views_match_storage_and_online"
#: Entities of the day's partitions looked up online after the step's materialisation.
ONLINE_PROBE_ENTITIES = 20


def feature_day_bounds(day: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A window holding exactly the feature rows of ``day`` (stamped at the end of the day)."""
    end_of_day = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    return end_of_day - pd.Timedelta(hours=12), end_of_day + pd.Timedelta(hours=12)


@dg.asset(
    group_name="features",
    kinds={"feast", "duckdb", "sqlite"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["user_features", "item_features"],
    pool="feature_store",
    check_specs=[
        contract_check_spec(ASSET),
        check_spec(
            SERVED_CHECK,
            ASSET,
            "The Feast registry holds exactly the expected feature views, each with the features (names and "
            "types) declared from the contracts, which are those of the day's stored partition; the registry "
            "records an online materialisation covering the day; and, for the newest day materialised, entities of the day's partition have online values of "
            "that day. A backfill of days older than the online store passes with a note.",
            blocking=False,
        ),
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    description="Feast entities/sources/feature views applied, and the day's feature values materialised "
    "into the online store. One row per (day, feature view): version, rows, features.",
)
def feast_feature_views(context: dg.AssetExecutionContext, storage: Storage, feast: FeastResource):
    from streamrec_assets.feature_repo import (
        FEATURE_VIEWS,
        declared_fields,
        feature_objects,
        online_through,
        view_version,
    )

    days = list(context.partition_keys)
    settings = feast.settings()
    declared = declared_fields(settings)
    stored = stored_partitions(storage, days, FEATURE_VIEWS)
    require_stored_match_declared(storage, declared, stored)
    store = feast.store()
    store.apply(feature_objects(settings, declared))
    versions = {view: view_version(store, view) for view in FEATURE_VIEWS}
    n_features = {view: len(store.get_feature_view(view).features) for view in FEATURE_VIEWS}

    # The online store keeps the latest value per entity: one materialisation over the whole range
    # writes each entity's newest row. A backfill of days older than what is already online must not
    # overwrite newer values, so it only refreshes the offline side (the Parquet partitions themselves).
    newest_online = online_through(store)  # Feast's record of materialised intervals
    online = newest_online is None or days[-1] >= newest_online
    if online:
        start, _ = feature_day_bounds(days[0])
        _, end = feature_day_bounds(days[-1])
        store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=list(FEATURE_VIEWS))
    else:
        context.log.info(f"Online store already holds {newest_online}; not overwriting it with {days[-1]}.")
    # What the registry holds now, after apply and materialise (read once for the step).
    registered = {
        fv.name: {f.name: str(f.dtype) for f in fv.features} for fv in store.list_feature_views(allow_cache=False)
    }
    intervals = {
        view: [(pd.Timestamp(s), pd.Timestamp(e)) for s, e in store.get_feature_view(view).materialization_intervals]
        for view in FEATURE_VIEWS
    }

    def compute(day: str) -> DayResult:
        record = pd.DataFrame(
            [
                {
                    "date": day,
                    "feature_view": view,
                    "version": versions[view],
                    "features": n_features[view],
                    "online_materialized": bool(online),
                }
                for view in FEATURE_VIEWS
            ]
        )
        meta = day_metadata(
            record,
            preview_rows=4,
            feast_project=store.project,
            online_store=store.config.online_store.type,
            online_materialized_through=days[-1] if online else newest_online,
            **{f"features_{view}": n for view, n in n_features.items()},
        )
        probe = online and day == days[-1]
        check = served_check(
            day, registered, {v: by_day[day] for v, by_day in stored.items() if day in by_day}, intervals,
            _online_dates(storage, store, day, FEATURE_VIEWS) if probe else None,
            online=online, newest_online=newest_online, expected_views=FEATURE_VIEWS,
        )
        return DayResult(tables={ASSET: record}, checks=[check], metadata={ASSET: meta})

    yield from run_days(context, storage, [ASSET], compute)


def served_check(
    day: str,
    registered: dict[str, dict[str, str]],
    stored: dict[str, dict[str, str]],
    intervals: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]],
    online_dates: dict[str, list[str | None]] | None,
    *,
    online: bool,
    newest_online: str | None,
    expected_views,
) -> dg.AssetCheckResult:
    """The day's ``views_match_storage_and_online`` result (pure; the rules are in :mod:`streamrec_assets.contracts`)."""
    from streamrec_assets.contracts import (
        feature_view_problems,
        materialization_problems,
        online_probe_problems,
    )

    problems = feature_view_problems(registered, stored, expected_views)
    notes = []
    if online:
        problems += materialization_problems(intervals, *feature_day_bounds(day))
    else:
        notes.append(f"backfill: the online store holds the newer day {newest_online}; {day} is offline only")
    if online_dates is not None:
        problems += online_probe_problems(online_dates, day)
    else:
        notes.append("online values probed on the newest day of the step only")
    return dg.AssetCheckResult(
        asset_key=ASSET,
        check_name=SERVED_CHECK,
        passed=not problems,
        metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "_none_"),
            "note": "; ".join(notes) or "registry, storage and online store agree",
            "feature_views": len(registered),
            "entities_probed": sum(len(v) for v in (online_dates or {}).values()),
        },
    )


def stored_partitions(storage: Storage, days, views) -> dict[str, dict[str, dict[str, str]]]:
    """view -> day -> the features (name -> Feast type) of the view's stored partition of that day (from its
    Parquet footer); days without a stored partition are left out."""
    from streamrec_assets.contracts import stored_features
    from streamrec_assets.feature_repo import NON_FEATURES
    from streamrec_assets.storage import path_exists, read_parquet_schema

    out: dict[str, dict[str, dict[str, str]]] = {}
    for view in views:
        out[view] = {}
        for day in days:
            path = storage.path(view, day, "data.parquet")
            if path_exists(path):
                out[view][day] = stored_features(read_parquet_schema(path), NON_FEATURES)
    return out


def require_stored_match_declared(
    storage: Storage, declared: dict[str, dict[str, str]], stored: dict[str, dict[str, dict[str, str]]]
) -> None:
    """Fail the step (never retried: a data problem) when a stored partition disagrees with the
    declared views, naming each partition's missing, extra and mistyped columns."""
    from streamrec_assets.contracts import stored_partition_problems
    from streamrec_assets.errors import PersistentDataError, persistent_failure

    problems = stored_partition_problems(declared, stored)
    if not problems:
        return
    # The earliest partition that disagrees names the step's failure ("<view> date=<day>: ...").
    heads = [p.split(":", 1)[0] for p in problems]
    day, view = min((head.partition(" date=")[2], head.partition(" date=")[0]) for head in heads)
    err = PersistentDataError(
        f"{len(problems)} stored feature partition(s) disagree with the Feast feature views declared from "
        "contracts.py (user_features_schema / item_features_schema, one genre_share_28d__<genre> per genre of "
        "the item catalogue); nothing was applied to Feast:\n"
        + "\n".join(f"- {p}" for p in problems)
        + "\nRe-materialise these partitions of the feature tables with the current code and catalogue, or "
        "change the contract.",
        asset=ASSET,
        partition=day,
        location=str(storage.path(view, day, "data.parquet")) if day else "",
    )
    raise persistent_failure(err)


def _online_dates(storage: Storage, store, day: str, views) -> dict[str, list[str | None]]:
    """The online feature day of up to ONLINE_PROBE_ENTITIES entities of each view's partition of ``day``
    (from the online rows' event timestamps: a row of day D is stamped D+1 00:00)."""
    from streamrec_assets.feature_repo import ENTITY_OF, online_feature_days
    from streamrec_assets.storage import read_parquet

    out: dict[str, list[str | None]] = {}
    for view in views:
        key = ENTITY_OF[view][1]
        ids = read_parquet(storage.path(view, day, "data.parquet"), columns=[key])[key].head(ONLINE_PROBE_ENTITIES)
        out[view] = online_feature_days(store, view, ids)
    return out
