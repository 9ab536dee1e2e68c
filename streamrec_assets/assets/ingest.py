"""Group ``ingest``: catalogues, validated raw events and their dead-letter queue."""


import hashlib

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import contract_check_spec, table_result
from streamrec_assets.automation import STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import LandingZone
from streamrec_assets.settings import get_settings

GROUP = "ingest"


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    backfill_policy=single_run,
    check_specs=[contract_check_spec("user_catalog")],
    description="The user dimension (signup date, country) from the landing zone's catalogue export.",
)
def user_catalog(landing: LandingZone):
    return table_result("user_catalog", landing.read_catalog("users"))


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    backfill_policy=single_run,
    check_specs=[contract_check_spec("item_catalog")],
    description="The item dimension (genre, duration, release date) from the landing zone's catalogue export.",
)
def item_catalog(landing: LandingZone):
    items = landing.read_catalog("items")
    items["duration_seconds"] = items["duration_seconds"].astype("float64")
    return table_result("item_catalog", items, {"genres": int(items["genre"].nunique())})


class RawEventsConfig(dg.Config):
    max_failure_rate: float = Field(
        default_factory=lambda: get_settings().max_failure_rate,
        ge=0.0,
        le=1.0,
        description=(
            "Largest share of a day's records that may violate the contract (duplicates excluded) "
            "before the run fails. Default: STREAMREC_MAX_FAILURE_RATE or 0.01."
        ),
    )


RECONCILE_CHECK = "reconciles_with_landing"


@dg.multi_asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={"user_catalog": dg.AssetIn(), "item_catalog": dg.AssetIn()},
    outs={
        "raw_events": dg.AssetOut(
            kinds={"parquet"},
            description="Valid viewing events of the day, typed, one row per event_id.",
        ),
        "raw_events_dlq": dg.AssetOut(
            kinds={"parquet"},
            description="Rejected landing records of the day: line number, raw line and reason.",
        ),
    },
    check_specs=[
        contract_check_spec("raw_events"),
        contract_check_spec("raw_events_dlq"),
        dg.AssetCheckSpec(
            RECONCILE_CHECK,
            asset="raw_events",
            blocking=True,
            description="valid + rejected records = records in the landing file, for every day.",
        ),
    ],
    retry_policy=STORAGE_RETRY,
)
def raw_events(
    context: dg.AssetExecutionContext,
    config: RawEventsConfig,
    landing: LandingZone,
    user_catalog: pd.DataFrame,
    item_catalog: pd.DataFrame,
):
    """Parse each day's landing file and validate every record against the record contract."""
    from streamrec_assets.core.ingest import failure_budget_error, ingest_day

    user_ids, item_ids = user_catalog["user_id"].to_numpy(), item_catalog["item_id"].to_numpy()

    valid, rejected, per_day, errors = [], [], {}, []
    for day in context.partition_keys:
        try:
            data = landing.read_events(day)
        except FileNotFoundError as exc:
            # Not delivered (or not complete): retrying the step cannot make the file appear.
            raise dg.Failure(str(exc), allow_retries=False) from exc
        result = ingest_day(data, day, user_ids, item_ids)
        sha256 = hashlib.sha256(data).hexdigest()
        valid.append(result.valid)
        rejected.append(result.rejected)
        per_day[day] = {
            "records": result.total_records,
            "valid": len(result.valid),
            "rejected": len(result.rejected),
            "duplicates": result.duplicates,
            "failure_rate": round(result.failure_rate, 6),
            "sha256": sha256,
        }
        context.log.info(f"{day}: {per_day[day]}")
        error = failure_budget_error(result, config.max_failure_rate, str(landing.events_path(day)))
        if error:
            errors.append(error)

    events = _concat(valid)
    dlq = _concat(rejected)
    totals = {k: sum(d[k] for d in per_day.values()) for k in ("records", "valid", "rejected", "duplicates")}
    reasons = dlq["reason"].value_counts().to_dict() if len(dlq) else {}
    yield table_result("raw_events_dlq", dlq, {"reasons": dg.MetadataValue.json(reasons)})
    if errors:
        # Persistent data error: retrying cannot help, so fail without retry.
        raise dg.Failure(
            description="Landing data exceeds the failure budget; raw_events was not written.\n" + "\n".join(errors),
            metadata={"per_day": dg.MetadataValue.json(per_day), "reasons": dg.MetadataValue.json(reasons)},
            allow_retries=False,
        )
    reconciled = all(d["valid"] + d["rejected"] == d["records"] for d in per_day.values())
    metadata = {
        "landing_records": totals["records"],
        "rejected_records": totals["rejected"],
        "duplicates_dropped": totals["duplicates"],
        "failure_rate": float(
            (totals["rejected"] - totals["duplicates"]) / totals["records"] if totals["records"] else 0.0
        ),
        "per_day": dg.MetadataValue.json(per_day),
        "plays": int((events["event_type"] == "play").sum()) if len(events) else 0,
        "users": int(events["user_id"].nunique()) if len(events) else 0,
    }
    reconcile = dg.AssetCheckResult(
        asset_key="raw_events",
        check_name=RECONCILE_CHECK,
        passed=reconciled,
        metadata={"per_day": dg.MetadataValue.json(per_day)},
    )
    yield table_result("raw_events", events, metadata, extra_checks=[reconcile])


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0] if frames else pd.DataFrame()
    return pd.concat(non_empty, ignore_index=True) if len(non_empty) > 1 else non_empty[0]

