"""Unattended operation: schedule, sensors, declarative automation, freshness, retries, alerts.

How a day flows without a person:

1. ``landing_zone_sensor`` sees a landing day whose file *and* completion marker
   are present and requests its ``raw_events`` partition, with a run key made
   from the file's sha256: the same delivery never runs twice, a corrected
   re-delivery (new hash) runs again; late and out-of-order days are found
   because the cursor remembers every day's last hash, not a high-water mark.
   New catalogue files are requested the same way.
2. Downstream assets carry ``AutomationCondition`` s (eager, gated on blocking
   checks), evaluated by ``streamrec_automation``: the new partition flows
   through features, Feast, training, models, registry and serving, with no
   clock dependency.
3. ``daily_pipeline_schedule`` (02:00 UTC, previous day) is a safety net for
   landing zones without completion markers; it *skips* a day whose landing
   file is not complete instead of starting downstream work on missing input
   (no schedule waterfall). Stopped by default when the sensor drives runs.

Alert sensors map failures to severities (see :mod:`streamrec_assets.alerts`).
"""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg

from streamrec_assets.resources import LandingZone
from streamrec_assets.settings import get_settings

INGEST_ASSETS = ("raw_events", "raw_events_dlq")
CATALOG_ASSETS = ("user_catalog", "item_catalog")

# ---------------------------------------------------------------- conditions, freshness, retries

#: On the automation sensor's first evaluation (a daemon or deployment starting), fill the latest
#: partition when it is missing and can run: ``eager`` alone treats that tick as already handled, so a
#: model partition whose inputs all predate the day (ranking_model) would wait for the next midnight.
CATCH_UP_ON_START = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.initial_evaluation()
    & dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("catch up on start")

#: Eager (or catching up on start), never on top of a failed blocking check of a dependency.
EAGER_GATED = (
    (dg.AutomationCondition.eager() | CATCH_UP_ON_START) & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, gated on blocking checks")

#: Features must be fresh by the morning: a new day is expected every 24 h.
FEATURES_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=25), warn_window=timedelta(hours=24))
#: Models and registry: fail window 26 h.
MODELS_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))

#: Every asset that reads or writes storage or a server (input loading included) retries transient
#: errors with exponential backoff and jitter: 2, 4, 8, 16 s (+-), about 30 s in all, so a short
#: S3 or MLflow outage is ridden out. Persistent errors (streamrec_assets.errors.PersistentDataError:
#: delivery mismatch, failed audit, failure budget, missing partitions) raise
#: ``Failure(allow_retries=False)`` and are never retried.
STORAGE_RETRY = dg.RetryPolicy(max_retries=4, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


#: Pool limits kept in the instance (Dagster OSS stores a pool's own limit there, not in dagster.yaml):
#: one XGBoost training at a time, two Feast materialisations.
POOL_LIMITS = {"training": 1, "feature_store": 2}


def pool_limit_commands() -> list[list[str]]:
    """``dagster instance concurrency set <pool> <limit>`` for each pool (run against DAGSTER_HOME)."""
    import sys
    from pathlib import Path

    dagster = str(Path(sys.executable).with_name("dagster"))
    return [[dagster, "instance", "concurrency", "set", pool, str(limit)] for pool, limit in POOL_LIMITS.items()]


# ---------------------------------------------------------------- schedule


def build_daily_schedule(job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="daily_pipeline_schedule",
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="02:00 UTC: the previous day's partition (its logical date), only once its landing file "
        "and marker are complete.",
    )
    def daily_pipeline_schedule(context: dg.ScheduleEvaluationContext, landing: LandingZone):
        day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
        if not landing.is_complete(day):
            return dg.SkipReason(
                f"Landing day {day} is not complete yet; landing_zone_sensor will start it when it arrives."
            )
        return dg.RunRequest(run_key=f"schedule:{day}", partition_key=day)

    return daily_pipeline_schedule


# ---------------------------------------------------------------- landing zone sensor


def landing_requests(delivered: dict[str, str], seen: dict[str, str], first_day: str, last_day: str) -> list[str]:
    """Days to (re)request: delivered inside the partitions and never seen with this content hash."""
    return sorted(day for day, sha in delivered.items() if first_day <= day <= last_day and seen.get(day) != sha)


def ingested_sha256(instance, day: str) -> str | None:
    """The landing file hash recorded by the latest raw_events materialisation of ``day``."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_events"), asset_partitions=[day]), limit=1
    )
    if not result.records:
        return None
    metadata = result.records[0].asset_materialization.metadata
    per_day = metadata.get("per_day")
    if per_day is not None and day in (per_day.value or {}):  # a range run: every day's figures
        return (per_day.value[day] or {}).get("landing_sha256")
    sha = metadata.get("landing_sha256")
    return str(sha.value) if sha is not None else None


@dg.sensor(
    name="landing_zone_sensor",
    target=dg.AssetSelection.assets(*CATALOG_ASSETS, *INGEST_ASSETS),
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests raw_events for each landing day whose file and completion marker are present "
    "(run key = day + file sha256), and the catalogues when their files change.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
    from streamrec_assets.partitions import daily_partitions

    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = cursor.get("days", {})
    requests: list[dg.RunRequest] = []
    catalog = landing.catalog_fingerprint()
    if catalog != cursor.get("catalog"):
        requests.append(dg.RunRequest(run_key=f"catalog:{catalog[:16]}", asset_selection=[dg.AssetKey(a) for a in CATALOG_ASSETS]))
    keys = daily_partitions.get_partition_keys()
    delivered = landing.delivered_days()
    todo = landing_requests(delivered, seen, keys[0], keys[-1]) if keys else []
    for day in todo:
        sha = delivered[day]
        if ingested_sha256(context.instance, day) == sha:
            seen[day] = sha  # already ingested from this very file (by a CLI run, a backfill, ...)
            continue
        reason = "corrected re-delivery" if day in seen else ("late day" if seen and day < max(seen) else "new day")
        context.log.info(f"{day}: {reason} (sha256 {sha[:12]})")
        requests.append(
            dg.RunRequest(
                run_key=f"{day}:{sha[:16]}",
                partition_key=day,
                asset_selection=[dg.AssetKey(a) for a in INGEST_ASSETS],
                tags={"streamrec/landing_sha256": sha, "streamrec/trigger": reason},
            )
        )
        seen[day] = sha
    ignored = sorted(d for d in delivered if keys and not keys[0] <= d <= keys[-1])
    new_cursor = json.dumps({"days": seen, "catalog": catalog}, sort_keys=True)
    if not requests:
        note = f"; {len(ignored)} day(s) outside the partitions ignored" if ignored else ""
        return dg.SensorResult(skip_reason=dg.SkipReason(f"No new or corrected landing day{note}."), cursor=new_cursor)
    return dg.SensorResult(run_requests=requests, cursor=new_cursor)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "streamrec_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="Evaluates the assets' AutomationConditions: a new raw partition flows downstream.",
)


# ---------------------------------------------------------------- alerts


def _send(context, alert) -> None:
    from streamrec_assets.alerts import send

    channels = send(alert, get_settings().alert_webhook_url)
    context.log.info(f"alert {alert.severity.value} '{alert.title}' -> {', '.join(channels)}")


def _error_text(error) -> str:
    """The messages of an error and its causes (the user's exception is usually the cause)."""
    parts = []
    while error is not None:
        parts.append(error.message.strip())
        error = error.cause
    return " <- ".join(parts)


def _failed_checks(instance, run_id: str) -> list[str]:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    out = []
    for record in records:
        evaluation = record.dagster_event.event_specific_data
        if not evaluation.passed:
            out.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    return out


@dg.run_failure_sensor(
    name="run_failure_alerts",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="P1 for contract failures, P0 for runs that failed after their last retry.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext):
    from streamrec_assets.alerts import Alert, classify_run_failure

    run = context.dagster_run
    retry_number = int(run.tags.get("dagster/retry_number", "0"))
    errors = " ".join(
        f"{event.step_key}: {_error_text(event.event_specific_data.error)} "
        + str(getattr(event.event_specific_data, "user_failure_data", None) or "")
        for event in context.get_step_failure_events()
    )
    checks = _failed_checks(context.instance, run.run_id)
    severity = classify_run_failure(errors, checks, retry_number, context.instance.run_retries_max_retries)
    if severity is None:
        context.log.info(f"run {run.run_id} failed; retry {retry_number + 1} will follow")
        return
    partition = run.tags.get("dagster/partition", run.tags.get("dagster/asset_partition_range_start", ""))
    title = f"{run.job_name} failed" + (f" for {partition}" if partition else "")
    details = (f"failed checks: {', '.join(checks)}. " if checks else "") + (errors or context.failure_event.message or "")
    _send(context, Alert(severity, title, details[:1500], run_id=run.run_id, partition=partition))


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="recovery_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="P3 when a run succeeded after a run retry or a step retry.",
)
def recovery_alerts(context: dg.RunStatusSensorContext):
    from streamrec_assets.alerts import Alert, Severity

    run = context.dagster_run
    retried_steps = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    retry_number = int(run.tags.get("dagster/retry_number", "0"))
    if retry_number == 0 and not retried_steps:
        return
    steps = sorted({r.step_key for r in retried_steps if r.step_key})
    details = f"run retry {retry_number}" if retry_number else f"steps retried: {', '.join(steps)}"
    _send(context, Alert(Severity.P3, f"{run.job_name} recovered on retry", details, run_id=run.run_id))


@dg.asset_sensor(
    asset_key=dg.AssetKey("registered_model"),
    name="model_promotion_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="P2 when a new model version was registered but not promoted to champion.",
)
def model_promotion_alerts(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    from streamrec_assets.alerts import Alert, Severity

    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    promoted = metadata.get("promoted")
    if promoted is None or promoted.value:
        return dg.SkipReason("model promoted (or nothing registered)")
    decision = metadata.get("decision")
    _send(
        context,
        Alert(
            Severity.P2,
            "new ranker not promoted; the champion stays",
            str(decision.value if decision else ""),
            run_id=asset_event.run_id,
            asset="registered_model",
            partition=materialization.partition or "",
        ),
    )


@dg.sensor(
    name="freshness_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=max(60, get_settings().sensor_interval_seconds),
    description="P1 when an asset's freshness policy fails (data older than its fail window).",
)
def freshness_alerts(context: dg.SensorEvaluationContext):
    from streamrec_assets.alerts import Alert, Severity

    keys = [dg.AssetKey(k) for k in FRESHNESS_WATCHED]
    states = {k.to_user_string(): r.freshness_state.value for k, r in context.instance.get_freshness_state_records(keys).items()}
    previous = json.loads(context.cursor) if context.cursor else {}
    for asset, state in sorted(states.items()):
        if state == "FAIL" and previous.get(asset) != "FAIL":
            _send(context, Alert(Severity.P1, f"{asset} is stale", "freshness policy failed", asset=asset))
    context.update_cursor(json.dumps(states, sort_keys=True))


FRESHNESS_WATCHED = (
    "user_features",
    "item_features",
    "ranking_model",
    "model_evaluation",
    "registered_model",
    "batch_recommendations",
)

sensors = [landing_zone_sensor, automation_sensor, run_failure_alerts, recovery_alerts, model_promotion_alerts,
           freshness_alerts]
