"""Group ``features``: daily aggregates and rolling 1/7/28-day window features.

The window assets read the *daily aggregates* of the 28 days ending with
their partition through ``TimeWindowPartitionMapping(start_offset=-27)``,
never the raw events of those days. Each day of a range is computed, audited and
published in turn; a window asset keeps only its window's 28 daily tables in
memory while it walks the range forward.
"""


from collections import OrderedDict

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, contract_check_spec, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, FEATURES_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.dates import window_days
from streamrec_assets.partitions import (
    LONGEST_WINDOW_DAYS,
    daily_partitions,
    feature_window_mapping,
    single_run,
)
from streamrec_assets.resources import Storage
from streamrec_assets.storage import PartitionReader

GROUP = "features"
EVENT_COLUMNS = ["date", "user_id", "item_id", "event_type", "watch_seconds"]


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
        retry_policy=STORAGE_RETRY,
        automation_condition=EAGER_GATED,
        description=description,
    )
    def _asset(context: dg.AssetExecutionContext, storage: Storage, raw_events: PartitionReader,
               item_catalog: pd.DataFrame):
        from streamrec_assets.core import features
        from streamrec_assets.engine import spark_engine

        aggregate = getattr(features, name)
        engine = spark_engine()

        def compute(day: str) -> DayResult:
            daily, where = None, "embedded"
            if engine is not None and day in raw_events.present:  # one entity bucket per Spark task
                from streamrec_assets import spark_jobs

                daily = spark_jobs.daily_aggregate(engine, storage, name, entity, day, EVENT_COLUMNS, item_catalog)
                where = spark_jobs.engine_label(engine)
            if daily is None:  # embedded, or a day without events (its empty table with the schema)
                daily = aggregate(raw_events.read(day, EVENT_COLUMNS), item_catalog)
            entities = int(daily[entity].nunique()) if len(daily) else 0
            meta = day_metadata(daily, **{f"{entity}s": entities}, engine=where)
            return DayResult(tables={name: daily}, metadata={name: meta})

        yield from run_days(context, storage, [name], compute)

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


class WindowState:
    """The daily aggregates of the last ``length`` days, read once each while a range walks forward."""

    def __init__(self, reader: PartitionReader, length: int = LONGEST_WINDOW_DAYS):
        self.reader = reader
        self.length = length
        self.days: OrderedDict[str, pd.DataFrame] = OrderedDict()

    def window(self, day: str) -> pd.DataFrame:
        wanted = [d for d in window_days(day, self.length) if d in self.reader.days]
        for old in [d for d in self.days if d not in wanted]:
            del self.days[old]
        for d in wanted:
            if d not in self.days:
                self.days[d] = self.reader.read(d)
        frames = [f for f in self.days.values() if len(f)]
        if not frames:
            return self.reader.empty()
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _window_asset(name: str, upstream: str, entity: str, description: str):
    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"parquet"},
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        ins={"daily": dg.AssetIn(upstream, partition_mapping=feature_window_mapping)},
        check_specs=[contract_check_spec(name)],
        retry_policy=STORAGE_RETRY,
        automation_condition=EAGER_GATED,
        freshness_policy=FEATURES_FRESHNESS,
        description=description,
    )
    def _asset(context: dg.AssetExecutionContext, storage: Storage, daily: PartitionReader):
        from streamrec_assets.core.features import rolling_features
        from streamrec_assets.engine import spark_engine

        state = WindowState(daily)
        engine = spark_engine()

        def compute(day: str) -> DayResult:
            feats, where = None, "embedded"
            if engine is not None:  # one entity bucket of the window per Spark task
                from streamrec_assets import spark_jobs

                days = [d for d in window_days(day, LONGEST_WINDOW_DAYS) if d in daily.present]
                feats, rows_read = spark_jobs.window_features(engine, storage, daily.asset, entity, day, days,
                                                              _first_day())
                where = spark_jobs.engine_label(engine)
            if feats is None:  # embedded, or an empty window
                window = state.window(day)
                feats = rolling_features(window, [day], entity, first_day=_first_day())
                rows_read = int(len(window))
            history = int(feats["history_days"].iloc[0]) if len(feats) else 0
            meta = day_metadata(
                feats,
                **{f"{entity}s": int(len(feats))},
                engine=where,
                daily_aggregate_rows_read=rows_read,
                history_days=history,
                feature_columns=int(len([c for c in feats.columns if c not in ("date", entity, "feature_timestamp")])),
            )
            return DayResult(tables={name: feats}, metadata={name: meta})

        yield from run_days(context, storage, [name], compute)

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
