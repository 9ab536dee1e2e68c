"""Group ``serving``: drift of the serving day's features and of the champion's scores.

``feature_drift`` partition D compares the distribution of every numeric feature of
``user_features`` / ``item_features`` on D with the ranker's training window (the
:data:`~streamrec_assets.assets.models.RANKER_WINDOW_DAYS` days before D), and the
champion's ``batch_recommendations`` scores of D with the
:data:`~streamrec_assets.core.drift.SCORE_WINDOW_DAYS` days before, by the population
stability index (:mod:`streamrec_assets.core.drift`). One row per (day, table, feature);
the non-blocking check ``feature_psi_below_threshold`` (WARN) fails when a feature's PSI
exceeds the threshold and names the features; the alert sensor turns that into a P2.
Each day of a range reads its window's partitions once each while the range walks forward.
"""

from collections import OrderedDict

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import DayResult, check_spec, contract_check_spec, day_metadata, run_days
from streamrec_assets.assets.models import RANKER_WINDOW_DAYS
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.core.dates import window_days
from streamrec_assets.core.drift import (
    ASSET,
    DEFAULT_PSI_THRESHOLD,
    MIN_REFERENCE_DAYS,
    PSI_BINS,
    PSI_CHECK,
    SCORE_WINDOW_DAYS,
)
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import Storage
from streamrec_assets.settings import get_settings
from streamrec_assets.storage import PartitionReader

GROUP = "serving"
FEATURE_TABLES = ("user_features", "item_features")
SCORE_TABLE = "batch_recommendations"
SCORE_COLUMNS = ["date", "score", "model_version"]

#: Day D reads the feature tables of [D-14, D]: the 14 days before D (the span of days the ranker learns from) and D.
reference_window_mapping = dg.TimeWindowPartitionMapping(start_offset=-RANKER_WINDOW_DAYS, end_offset=0)
#: ... and the recommendations of [D-7, D] (missing days are skipped, e.g. before the first serving day).
score_window_mapping = dg.TimeWindowPartitionMapping(start_offset=-SCORE_WINDOW_DAYS, end_offset=0)


class DriftConfig(dg.Config):
    psi_threshold: float = Field(
        default_factory=lambda: get_settings().drift_psi_threshold, gt=0,
        description="A feature drifts when its PSI exceeds this (0.1-0.2 moderate, > 0.2 significant).",
    )
    bins: int = Field(default=PSI_BINS, ge=2, le=100, description="Quantile bins of the reference (at most).")
    min_reference_days: int = Field(
        default=MIN_REFERENCE_DAYS, ge=1, le=RANKER_WINDOW_DAYS,
        description="Reference days with full 28-day history needed to compare a feature (else it is skipped).",
    )


class DayCache:
    """The partitions of a window, each read once while a range walks forward (the window's days only)."""

    def __init__(self, reader: PartitionReader, columns: list[str] | None = None):
        self.reader = reader
        self.columns = columns
        self.days: OrderedDict[str, pd.DataFrame] = OrderedDict()

    def frames(self, days: list[str]) -> dict[str, pd.DataFrame]:
        wanted = [d for d in days if d in self.reader.present]
        for old in [d for d in self.days if d not in wanted]:
            del self.days[old]
        for d in wanted:
            if d not in self.days:
                self.days[d] = self.reader.read(d, self.columns)
        return {d: self.days[d] for d in wanted}

    def concat(self, days: list[str]) -> pd.DataFrame:
        frames = [f for f in self.frames(days).values() if len(f)]
        if not frames:
            return self.reader.empty(self.columns)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _number(value: float) -> float | None:
    return None if pd.isna(value) else round(float(value), 6)


@dg.asset(
    name=ASSET,
    group_name=GROUP,
    kinds={"parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "user_features": dg.AssetIn(partition_mapping=reference_window_mapping),
        "item_features": dg.AssetIn(partition_mapping=reference_window_mapping),
        SCORE_TABLE: dg.AssetIn(partition_mapping=score_window_mapping, metadata={"allow_missing_partitions": True}),
    },
    check_specs=[
        contract_check_spec(ASSET),
        check_spec(
            PSI_CHECK,
            ASSET,
            f"No feature of user_features / item_features on the day has a PSI above the threshold (default "
            f"{DEFAULT_PSI_THRESHOLD}) against the {RANKER_WINDOW_DAYS} days before it. Warns, never "
            "blocks; the metadata names the offending features.",
        ),
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    description=f"Distribution drift of day D: PSI of every numeric feature of user_features and item_features "
    f"against the {RANKER_WINDOW_DAYS} days before D (as many days as the ranker learns from; reference days with full "
    f"28-day history only), and of the champion's batch_recommendations scores against the {SCORE_WINDOW_DAYS} "
    "days before. One row per (day, table, feature) with PSI, reference/current means and a flag.",
)
def feature_drift(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    storage: Storage,
    user_features: PartitionReader,
    item_features: PartitionReader,
    batch_recommendations: PartitionReader,
):
    from streamrec_assets.core.drift import drift_table, score_drift, summarize
    from streamrec_assets.core.drift import feature_drift as feature_rows

    threshold = config.psi_threshold
    caches = {"user_features": DayCache(user_features), "item_features": DayCache(item_features)}
    scores = DayCache(batch_recommendations, SCORE_COLUMNS)

    def compute(day: str) -> DayResult:
        reference_days = window_days(day, RANKER_WINDOW_DAYS, end_offset=-1)
        rows = []
        for table, cache in caches.items():
            frames = cache.frames([*reference_days, day])
            current = frames.pop(day, None)
            if current is None:
                current = cache.reader.empty()
            reference = pd.concat(frames.values(), ignore_index=True) if frames else cache.reader.empty()
            rows += feature_rows(
                day, table, reference, current, threshold, config.bins, min_reference_days=config.min_reference_days
            )
        score_days = window_days(day, SCORE_WINDOW_DAYS, end_offset=-1)
        score_frames = scores.frames([*score_days, day])
        current_scores = score_frames.pop(day, None)
        reference_scores = pd.concat(score_frames.values(), ignore_index=True) if score_frames else None
        score_row = score_drift(day, reference_scores, current_scores, threshold, config.bins)
        if current_scores is None:
            score_row["note"] = f"no {SCORE_TABLE} for the day"
        rows.append(score_row)
        table = drift_table(rows)
        summary = summarize(table, threshold)
        check_meta = {
            "threshold": float(threshold),
            "features_over_threshold": summary.features_over_threshold,
            "features_compared": summary.features_compared,
            "features_skipped": summary.features_skipped,
            "max_psi": _number(summary.max_psi),
            "max_psi_feature": summary.max_psi_feature or None,
            "mean_psi": _number(summary.mean_psi),
            "offending_features": dg.MetadataValue.json(summary.offending),
            "score_psi": _number(summary.score_psi),
        }
        if not summary.features_compared:
            check_meta["note"] = "no feature compared yet (reference days without full history): nothing judged"
        check = dg.AssetCheckResult(
            asset_key=ASSET,
            check_name=PSI_CHECK,
            passed=summary.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={k: v for k, v in check_meta.items() if v is not None},
        )
        shown = table.sort_values("psi", ascending=False, na_position="last", kind="stable")
        figures = {
            "max_psi": _number(summary.max_psi),
            "mean_psi": _number(summary.mean_psi),
            "features_over_threshold": summary.features_over_threshold,
            "features_compared": summary.features_compared,
            "features_skipped": summary.features_skipped,
            "score_psi": _number(summary.score_psi),
            "psi_threshold": float(threshold),
            "reference_days": int(table.loc[table["table"] != SCORE_TABLE, "reference_days"].max(skipna=True))
            if (table["table"] != SCORE_TABLE).any() else 0,
            "max_psi_feature": summary.max_psi_feature or None,
            "score_note": score_row["note"] or None,
        }
        meta = day_metadata(table, preview_rows=0, **figures)
        meta["preview"] = dg.MetadataValue.md(
            shown.head(12)[["table", "feature", "psi", "reference_mean", "current_mean", "flagged"]].to_markdown(
                index=False, floatfmt=".4g"
            )
        )
        return DayResult(tables={ASSET: table}, checks=[check], metadata={ASSET: meta})

    yield from run_days(context, storage, [ASSET], compute)
