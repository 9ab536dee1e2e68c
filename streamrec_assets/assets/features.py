"""Group ``features``: daily aggregates and rolling 1/7/28-day window features.

The window assets read the *daily aggregates* of the 28 days ending with
their partition through ``TimeWindowPartitionMapping(start_offset=-27)``,
never the raw events of those days.
"""


import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import contract_check_spec, table_result
from streamrec_assets.automation import EAGER_GATED, FEATURES_FRESHNESS
from streamrec_assets.partitions import daily_partitions, feature_window_mapping, single_run

GROUP = "features"


def _first_day() -> str:
    return daily_partitions.start.strftime("%Y-%m-%d")


def _daily_asset(name: str, entity: str, description: str):
    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"parquet"},
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        check_specs=[contract_check_spec(name)],
        automation_condition=EAGER_GATED,
        description=description,
    )
    def _asset(raw_events: pd.DataFrame, item_catalog: pd.DataFrame):
        from streamrec_assets.core import features

        daily = getattr(features, name)(raw_events, item_catalog)
        return table_result(name, daily, {f"{entity}s": int(daily[entity].nunique()) if len(daily) else 0})

    return _asset


user_daily_activity = _daily_asset(
    "user_daily_activity",
    "user_id",
    "Per user and day: impressions, plays, watch seconds, completions, distinct items played, plays per genre.",
)
item_daily_activity = _daily_asset(
    "item_daily_activity",
    "item_id",
    "Per item and day: impressions, plays, watch seconds, completions, distinct users who played it.",
)


def _window_asset(name: str, upstream: str, entity: str, description: str):
    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"parquet"},
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        ins={"daily": dg.AssetIn(upstream, partition_mapping=feature_window_mapping)},
        check_specs=[contract_check_spec(name)],
        automation_condition=EAGER_GATED,
        freshness_policy=FEATURES_FRESHNESS,
        description=description,
    )
    def _asset(context: dg.AssetExecutionContext, daily: pd.DataFrame):
        from streamrec_assets.core.features import rolling_features

        days = list(context.partition_keys)
        feats = rolling_features(daily, days, entity, first_day=_first_day())
        history = feats.groupby("date")["history_days"].first() if len(feats) else pd.Series(dtype="int64")
        clipped = {d: int(h) for d, h in history.items() if h < 28}
        metadata = {
            "feature_columns": dg.MetadataValue.json(
                [c for c in feats.columns if c not in ("date", entity, "feature_timestamp")]
            ),
            "daily_aggregate_rows_read": len(daily),
            f"{entity}s_per_day": dg.MetadataValue.json(feats.groupby("date").size().to_dict()),
            "windows_clipped_at_start_of_history": dg.MetadataValue.json(clipped),
        }
        return table_result(name, feats, metadata)

    return _asset


user_features = _window_asset(
    "user_features",
    "user_daily_activity",
    "user_id",
    "One row per user active in the 28 days ending with the partition day: rolling 1/7/28-day counts, "
    "watch time, completion rates and genre shares, as of the end of the day (feature_timestamp).",
)
item_features = _window_asset(
    "item_features",
    "item_daily_activity",
    "item_id",
    "One row per item with activity in the 28 days ending with the partition day: rolling 1/7/28-day "
    "counts, watch time, completion and play rates, as of the end of the day (feature_timestamp).",
)
