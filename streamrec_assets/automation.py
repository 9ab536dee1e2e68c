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
#: errors with exponential backoff and jitter: waits of 2, 6, 14, 30 s (+-2 s; Dagster's
#: (2^n - 1) x delay), 44-60 s in all plus each failing attempt's own S3 client retries, so an S3
#: or MLflow outage of about a minute is ridden out. Persistent errors (streamrec_assets.errors.PersistentDataError:
#: delivery mismatch, failed audit, failure budget, missing partitions) raise
#: ``Failure(allow_retries=False)`` and are never retried.
STORAGE_RETRY = dg.RetryPolicy(max_retries=4, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


#: Pool limits kept in the instance (Dagster OSS stores a pool's own limit there, not in dagster.yaml):
#: one XGBoost training at a time; one Feast writer (apply + materialise rewrite the registry, so two
#: writers could lose each other's update; readers never take the pool and never wait for it: the
#: registry is replaced atomically and serves while materialising); one registry writer
#: (registered_model: its registration also converges without the pool, see streamrec_assets.core.registry).
POOL_LIMITS = {"training": 1, "feature_store": 1, "registry": 1}


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
    metadata = result.records[0].asset_materialization.metadata  # each partition carries its own figures
    sha = metadata.get("landing_sha256")
    return str(sha.value) if sha is not None else None


def catalogs_ingested_from(instance, fingerprint: str) -> bool:
    """Whether both catalogues' latest materialisations read these very catalogue files."""
    from streamrec_assets.landing import CATALOG_FINGERPRINT

    for asset in CATALOG_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        recorded = metadata.get(CATALOG_FINGERPRINT)
        if recorded is None or recorded.value != fingerprint:
            return False
    return True


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
    if catalog != cursor.get("catalog") and not catalogs_ingested_from(context.instance, catalog):
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


def _label_values(metadata) -> dict[str, str]:
    return {str(k): str(getattr(v, "value", v)) for k, v in (metadata or {}).items()}


def _error_chain(error) -> list:
    """An error and its causes, outermost first (the user's exception is usually the last)."""
    out = []
    while error is not None:
        out.append(error)
        error = error.cause or getattr(error, "context", None)
    return out


def _step_assets(instance, run) -> dict[str, list[str]]:
    """The assets each step of the run materialises (from its execution plan)."""
    snapshot_id = getattr(run, "execution_plan_snapshot_id", None)
    snapshot = instance.get_execution_plan_snapshot(snapshot_id) if snapshot_id else None
    if snapshot is None:
        return {}
    return {
        step.key: [o.properties.asset_key.to_user_string() for o in step.outputs if o.properties and o.properties.asset_key]
        for step in snapshot.steps
    }


def _run_assets(instance, run) -> list[str]:
    """The assets a run was launched for: its asset selection, else every asset of its plan."""
    if run.asset_selection:
        return sorted(k.to_user_string() for k in run.asset_selection)
    return sorted({a for assets in _step_assets(instance, run).values() for a in assets})


def _interrupted_assets(instance, run) -> list[str]:
    """The assets of steps that started and never finished (a run that died under them)."""
    started = {r.step_key for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)}
    finished = {
        r.step_key
        for r in instance.all_logs(
            run.run_id, of_type={dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
        )
    }
    assets = _step_assets(instance, run)
    return sorted({a for step in started - finished if step for a in assets.get(step, [])})


def _run_partition(run) -> str:
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    if run.tags.get("dagster/partition"):
        return run.tags["dagster/partition"]
    start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start:
        return start if start == end or not end else f"{start}..{end}"
    return ""


def step_failures(instance, run, events=None):
    """The run's failed steps as typed :class:`~streamrec_assets.alerts.StepFailure` s."""
    from streamrec_assets.alerts import StepFailure

    if events is None:
        events = [r.dagster_event for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    assets = _step_assets(instance, run)
    out = []
    for event in events:
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        chain = _error_chain(data.error)
        message = user.description if user and user.description else (chain[-1].message if chain else "")
        out.append(
            StepFailure.from_labels(
                event.step_key or "",
                _label_values(user.metadata if user else None),
                assets.get(event.step_key or "", []),
                [e.cls_name or "" for e in chain],
                message=(message or "").strip()[:600],
            )
        )
    return out


def _failed_blocking_checks(instance, run_id: str) -> list[str]:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    out = []
    for record in records:
        evaluation = record.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.blocking:
            out.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    return sorted(set(out))


def _run_retry(instance, run):
    """The run's place in its run retries, as the instance decided it (``dagster/will_retry``)."""
    from streamrec_assets.alerts import RunRetry

    will_retry = run.tags.get("dagster/will_retry")
    max_retries = instance.run_retries_max_retries if instance.run_retries_enabled else 0
    try:
        max_retries = int(run.tags.get("dagster/max_retries", max_retries))
    except ValueError:
        pass
    return RunRetry(
        retry_number=int(run.tags.get("dagster/retry_number", "0")),
        max_retries=max_retries,
        will_retry=None if will_retry is None else will_retry.lower() == "true",
    )


def _parent_run(instance, run):
    parent_id = run.parent_run_id or run.tags.get("dagster/parent_run_id")
    return instance.get_run_by_id(parent_id) if parent_id else None


@dg.run_failure_sensor(
    name="run_failure_alerts",
    monitor_all_code_locations=False,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="By error class: P1 at once for persistent data errors and failed blocking checks (never "
    "retried), P0 for any other failure once no run retry follows. Titles name asset, partition, error class.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext):
    from streamrec_assets.alerts import failure_alert, repeats

    instance = context.instance
    run = instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run  # with dagster/will_retry
    failures = step_failures(instance, run, context.get_step_failure_events())
    checks = _failed_blocking_checks(instance, run.run_id)
    retry = _run_retry(instance, run)
    parent = _parent_run(instance, run)
    if parent is not None and retry.retry_number > 0 and repeats(failures, step_failures(instance, parent)):
        context.log.info(f"run {run.run_id} repeats the persistent failure of run {parent.run_id}: already paged")
        return
    assets = (not failures and _interrupted_assets(instance, run)) or _run_assets(instance, run)
    alert = failure_alert(run.run_id, failures, checks, retry, assets, _run_partition(run))
    if alert is None:
        context.log.info(f"run {run.run_id} failed; run retry {retry.retry_number + 1} will follow")
        return
    _send(context, alert)


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
    assets = ", ".join(_run_assets(context.instance, run)) or "a run"
    partition = _run_partition(run)
    details = f"run retry {retry_number}" if retry_number else f"steps retried: {', '.join(steps)}"
    title = f"{assets}" + (f" for {partition}" if partition else "") + " recovered on retry"
    _send(context, Alert(Severity.P3, title, details, run_id=run.run_id, asset=assets, partition=partition))


def _not_promoted(metadata) -> str | None:
    """The decision text when this partition's run kept the champion (``status`` = champion_kept)."""
    status = metadata.get("status")
    decision = str(getattr(metadata.get("decision"), "value", ""))
    if status is not None:
        return decision if status.value == "champion_kept" else None
    promoted = metadata.get("promoted")  # a record from before typed statuses
    return None if promoted is None or promoted.value else decision


@dg.sensor(
    name="model_promotion_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="P2 when a run decided not to promote a new model version: one alert per run, naming every "
    "day it kept the champion (a run that reused a recorded decision does not alert again).",
)
def model_promotion_alerts(context: dg.SensorEvaluationContext):
    from streamrec_assets.alerts import Alert, Severity

    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("registered_model"), after_storage_id=after),
        limit=1000, ascending=True,
    ).records
    if not records:
        return dg.SkipReason("no new registered_model materialisation")
    kept_by_run: dict[str, list[tuple[str, str]]] = {}
    for record in records:  # each partition carries its own decision, also inside a range
        materialization = record.asset_materialization
        decision = _not_promoted(materialization.metadata if materialization else {})
        if decision is not None:
            kept_by_run.setdefault(record.run_id, []).append((record.partition_key or "", decision))
    context.update_cursor(str(records[-1].storage_id))
    for run_id, kept in kept_by_run.items():
        days = sorted(d for d, _ in kept)
        partition = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]} ({len(days)} days)"
        _send(
            context,
            Alert(
                Severity.P2,
                f"registered_model{f' for {partition}' if partition else ''}: new ranker not promoted; the champion stays",
                "\n".join(f"{d + ': ' if d else ''}{reason}" for d, reason in sorted(kept))[:1500],
                run_id=run_id,
                asset="registered_model",
                partition=partition,
            ),
        )
    if not kept_by_run:
        return dg.SkipReason("no promotion decided against (promoted, reused, or nothing registered)")
    return None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="feature_drift_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="P2 when a run's feature_drift check feature_psi_below_threshold failed (PSI above "
    "STREAMREC_DRIFT_PSI_THRESHOLD): one alert per run, naming the days and the drifted features.",
)
def feature_drift_alerts(context: dg.RunStatusSensorContext):
    from streamrec_assets.alerts import Alert, Severity
    from streamrec_assets.core.drift import ASSET, PSI_CHECK, drift_run_alert

    run = context.dagster_run
    records = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [r.dagster_event.event_specific_data for r in records]
    text = drift_run_alert(
        [(e.partition, e.passed, e.metadata) for e in evaluations
         if e.asset_key == dg.AssetKey(ASSET) and e.check_name == PSI_CHECK],
        _run_partition(run),
    )
    if text is not None:
        _send(context, Alert(Severity.P2, text.title, text.details, run_id=run.run_id, asset=ASSET,
                             partition=text.partition))


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
           feature_drift_alerts, freshness_alerts]
