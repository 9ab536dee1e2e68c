"""Group ``ingest``: catalogues, validated raw events and their dead-letter queue."""


import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import (
    DayResult,
    check_spec,
    contract_check_spec,
    day_metadata,
    publish_table,
    run_days,
)
from streamrec_assets.automation import STORAGE_RETRY
from streamrec_assets.errors import PersistentDataError, persistent_failure
from streamrec_assets.landing import CATALOG_FINGERPRINT
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import LandingZone, Storage
from streamrec_assets.settings import get_settings

GROUP = "ingest"


def _read_catalog(landing: LandingZone, name: str) -> pd.DataFrame:
    try:
        return landing.read_catalog(name)
    except PersistentDataError as err:
        raise persistent_failure(err) from err


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    backfill_policy=single_run,  # lets `--select '*' --partition-range` include the catalogues
    check_specs=[contract_check_spec("user_catalog", partitioned=False)],
    retry_policy=STORAGE_RETRY,
    description="The user dimension (signup date, country) from the landing zone's catalogue export. "
    "Published only when it passes its contract: a bad catalogue never replaces the good one.",
)
def user_catalog(context: dg.AssetExecutionContext, landing: LandingZone, storage: Storage):
    users = _read_catalog(landing, "users")
    yield from publish_table(context, storage, "user_catalog", users,
                             {CATALOG_FINGERPRINT: landing.catalog_fingerprint()})


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    backfill_policy=single_run,
    check_specs=[contract_check_spec("item_catalog", partitioned=False)],
    retry_policy=STORAGE_RETRY,
    description="The item dimension (genre, duration, release date) from the landing zone's catalogue export. "
    "Published only when it passes its contract: a bad catalogue never replaces the good one.",
)
def item_catalog(context: dg.AssetExecutionContext, landing: LandingZone, storage: Storage):
    items = _read_catalog(landing, "items")
    if "duration_seconds" in items:
        items["duration_seconds"] = items["duration_seconds"].astype("float64")
    genres = int(items["genre"].nunique()) if "genre" in items else 0
    yield from publish_table(context, storage, "item_catalog", items,
                             {"genres": genres, CATALOG_FINGERPRINT: landing.catalog_fingerprint()})


class RawEventsConfig(dg.Config):
    max_failure_rate: float = Field(
        default_factory=lambda: get_settings().max_failure_rate,
        ge=0.0,
        le=1.0,
        description=(
            "Largest share of a day's records that may violate the contract (duplicates excluded) "
            "before the day is rejected. Default: STREAMREC_MAX_FAILURE_RATE or 0.01."
        ),
    )
    max_line_bytes: int = Field(
        default_factory=lambda: get_settings().max_line_bytes,
        ge=64,
        description="Longest landing line accepted (bytes); longer lines go to the DLQ as line_too_long. "
        "Default: STREAMREC_MAX_LINE_BYTES or 1 MiB.",
    )


RECONCILE_CHECK = "reconciles_with_landing"
BUDGET_CHECK = "within_failure_budget"


@dg.multi_asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={"user_catalog": dg.AssetIn(), "item_catalog": dg.AssetIn()},
    outs={
        "raw_events": dg.AssetOut(
            kinds={"parquet"},
            is_required=False,  # subsettable: see can_subset below
            description="Valid viewing events of the day, typed, one row per event_id.",
        ),
        "raw_events_dlq": dg.AssetOut(
            kinds={"parquet"},
            is_required=False,
            description="Rejected landing records of the day: line number, reason and the exact raw bytes.",
        ),
    },
    check_specs=[
        contract_check_spec("raw_events"),
        contract_check_spec("raw_events_dlq"),
        check_spec(
            RECONCILE_CHECK,
            "raw_events",
            "valid + rejected records = records in the landing file = records in its marker.",
            blocking=True,
        ),
        check_spec(
            BUDGET_CHECK,
            "raw_events",
            "Contract violations (duplicates excluded) stay within max_failure_rate; otherwise "
            "neither table of the day is published and both are quarantined.",
            blocking=True,
        ),
    ],
    # Either table can be selected alone (CLI, UI): the step still writes both tables of a day
    # together and records the unselected one as a runtime materialisation (see run_days).
    can_subset=True,
    retry_policy=STORAGE_RETRY,
)
def raw_events(
    context: dg.AssetExecutionContext,
    config: RawEventsConfig,
    landing: LandingZone,
    storage: Storage,
    user_catalog: pd.DataFrame,
    item_catalog: pd.DataFrame,
):
    """Verify each day's delivery against its marker, parse and validate every record, then publish
    the valid events and the dead-letter queue of the day together (write-audit-publish)."""
    from streamrec_assets.core.ingest import failure_budget_error, ingest_day
    from streamrec_assets.engine import spark_engine

    user_ids, item_ids = user_catalog["user_id"].to_numpy(), item_catalog["item_id"].to_numpy()
    engine = spark_engine()

    def compute(day: str) -> DayResult:
        delivery = landing.read_delivery(day)  # sha256, record count and stream checked against the marker
        if engine is None:
            result = ingest_day(delivery.text, day, user_ids, item_ids, max_line_bytes=config.max_line_bytes)
            where = "embedded"
        else:  # the same validation, one line-aligned chunk of the file per Spark task
            from streamrec_assets import spark_jobs

            result = spark_jobs.ingest(engine, landing, delivery, user_ids, item_ids, config.max_line_bytes)
            where = spark_jobs.engine_label(engine)
        figures = {
            "engine": where,
            "landing_records": delivery.records,
            "valid": len(result.valid),
            "rejected": len(result.rejected),
            "duplicates": result.duplicates,
            "failure_rate": round(result.failure_rate, 6),
            "landing_sha256": delivery.sha256,
        }
        context.log.info(f"{day}: {figures}")
        reconciled = len(result.valid) + len(result.rejected) == result.total_records == delivery.records
        budget_error = failure_budget_error(result, config.max_failure_rate, delivery.path)
        reasons = dict(result.reasons)
        checks = [
            dg.AssetCheckResult(
                asset_key="raw_events", check_name=RECONCILE_CHECK, passed=reconciled, metadata=dict(figures)
            ),
            dg.AssetCheckResult(
                asset_key="raw_events",
                check_name=BUDGET_CHECK,
                passed=budget_error is None,
                metadata={"failure_rate": figures["failure_rate"], "max_failure_rate": config.max_failure_rate,
                          "reasons": dg.MetadataValue.json(reasons),
                          **({"error": budget_error} if budget_error else {})},
            ),
        ]
        if budget_error:
            context.log.error(budget_error)
        valid = result.valid
        return DayResult(
            tables={"raw_events": valid, "raw_events_dlq": result.rejected},
            checks=checks,
            metadata={
                "raw_events": day_metadata(
                    valid,
                    **figures,
                    plays=int((valid["event_type"] == "play").sum()) if len(valid) else 0,
                    users=int(valid["user_id"].nunique()) if len(valid) else 0,
                ),
                "raw_events_dlq": day_metadata(
                    result.rejected.drop(columns=["raw_bytes"], errors="ignore"),
                    reasons=dg.MetadataValue.json(reasons),
                    landing_sha256=delivery.sha256,
                ),
            },
        )

    yield from run_days(context, storage, ["raw_events", "raw_events_dlq"], compute)
