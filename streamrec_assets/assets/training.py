"""Group ``training``: point-in-time correct training examples from Feast."""

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, check_spec, contract_check_spec, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, previous_day_mapping, single_run
from streamrec_assets.resources import FeastResource, Storage
from streamrec_assets.storage import PartitionReader

GROUP = "training"
LEAKAGE_CHECK = "no_feature_leakage"


@dg.asset(
    group_name=GROUP,
    kinds={"feast", "parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=[
        dg.AssetDep("feast_feature_views", partition_mapping=previous_day_mapping),
        dg.AssetDep("taste_model", partition_mapping=previous_day_mapping),
    ],
    check_specs=[
        contract_check_spec("training_examples"),
        check_spec(
            LEAKAGE_CHECK,
            "training_examples",
            "No example carries a feature row from its own day or later.",
            blocking=True,
        ),
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    description="One row per impression of the day with a graded label (2 completed play, 1 play, 0 none), "
    "the user/item features fetched through Feast as of the impression time (the rows of the day before), "
    "and the context and taste_* features as of the start of the day (the taste model of the day before).",
)
def training_examples(
    context: dg.AssetExecutionContext,
    storage: Storage,
    feast: FeastResource,
    raw_events: PartitionReader,
    item_catalog: pd.DataFrame,
    user_catalog: pd.DataFrame,
):
    from streamrec_assets.assets.taste import taste_before
    from streamrec_assets.core.training import (
        add_context_features,
        feature_coverage,
        label_impressions,
        leaked_rows,
        ranking_time,
    )
    from streamrec_assets.engine import spark_engine
    from streamrec_assets.feature_repo import feature_row_audit, historical_features

    store = feast.store()
    engine = spark_engine()

    def compute(day: str) -> DayResult:
        joined, where = None, "embedded"
        if engine is not None and day in raw_events.present:  # one user bucket per Spark task
            from streamrec_assets import spark_jobs

            fields = {name: getattr(feast, name) for name in type(feast).model_fields}
            joined, leaks = spark_jobs.training_examples(engine, storage, fields, day, item_catalog, user_catalog)
            where = spark_jobs.engine_label(engine)
        if joined is None:
            examples = label_impressions(raw_events.read(day), item_catalog)
            joined = historical_features(store, examples)
            # Context and taste as of the start of the day, as evaluation and serving see them (core.training).
            joined = add_context_features(joined, item_catalog, user_catalog, ranking_time(joined["date"]),
                                          taste_before(storage, day))
            # Which feature row the join gave each example (its partition day): the audit of the blocking
            # no_feature_leakage check (feature tables' `date` is not a Feast feature).
            leaks = leaked_rows(feature_row_audit(store, examples).assign(date=examples["date"].to_numpy()))
        coverage = feature_coverage(joined)
        labels = joined["label"].value_counts().sort_index().to_dict() if len(joined) else {}
        meta = day_metadata(
            joined,
            **{k: v for k, v in coverage.items() if k != "rows"},
            engine=where,
            label_counts=dg.MetadataValue.json({str(k): int(v) for k, v in labels.items()}),
            positive_rate=float((joined["label"] > 0).mean()) if len(joined) else 0.0,
        )
        no_leak = dg.AssetCheckResult(
            asset_key="training_examples",
            check_name=LEAKAGE_CHECK,
            passed=leaks == 0,
            metadata={"leaked_rows": leaks, "rows_checked": len(joined)},
        )
        return DayResult(tables={"training_examples": joined}, checks=[no_leak], metadata={"training_examples": meta})

    yield from run_days(context, storage, ["training_examples"], compute)
