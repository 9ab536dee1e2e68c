"""Group ``features``: the Feast feature store over the feature tables.

``feast_feature_views`` applies the Feast definitions (entities, sources, views)
and materialises the partition's feature values into the online store. The
offline store reads the feature assets' Parquet partitions directly (DuckDB).
"""

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, Storage


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
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    code_version="1",
    description="Feast entities/sources/feature views applied, and the day's feature values materialised "
    "into the online store. One row per (day, feature view): version, rows, features.",
)
def feast_feature_views(context: dg.AssetExecutionContext, storage: Storage, feast: FeastResource):
    from streamrec_assets.feature_repo import FEATURE_VIEWS, view_version

    store = feast.store()
    store.apply(feast.objects())
    days = list(context.partition_keys)
    versions = {view: view_version(store, view) for view in FEATURE_VIEWS}
    n_features = {view: len(store.get_feature_view(view).features) for view in FEATURE_VIEWS}

    # The online store keeps the latest value per entity: one materialisation over the whole range
    # writes each entity's newest row. A backfill of days older than what is already online must not
    # overwrite newer values, so it only refreshes the offline side (the Parquet partitions themselves).
    newest_online = _newest_materialized_day(context)
    online = newest_online is None or days[-1] >= newest_online
    if online:
        start, _ = feature_day_bounds(days[0])
        _, end = feature_day_bounds(days[-1])
        store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=list(FEATURE_VIEWS))
    else:
        context.log.info(f"Online store already holds {newest_online}; not overwriting it with {days[-1]}.")

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
        return DayResult(tables={"feast_feature_views": record}, metadata={"feast_feature_views": meta})

    yield from run_days(context, storage, ["feast_feature_views"], compute)


def _newest_materialized_day(context: dg.AssetExecutionContext) -> str | None:
    done = context.instance.get_materialized_partitions(context.asset_key)
    return max(done) if done else None
