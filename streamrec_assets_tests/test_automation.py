"""Triggers and backfill plans, evaluated directly (no daemon). Alerts: test_alerts.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import dagster as dg
import pytest

from streamrec_assets import datagen
from streamrec_assets.automation import build_daily_schedule, landing_zone_sensor
from streamrec_assets.backfill import Step, plan, run, split_range
from streamrec_assets.definitions import daily_pipeline_job, defs
from streamrec_assets.resources import LandingZone


@pytest.fixture
def landing(tmp_path):
    uri = str(tmp_path / "landing")
    datagen.generate(uri, "2026-01-03", "2026-01-04", 300, seed=1)
    return uri


def evaluate(uri: str, cursor: str | None, instance=None):
    context = dg.build_sensor_context(
        cursor=cursor, resources={"landing": LandingZone(uri=uri)}, instance=instance or dg.DagsterInstance.ephemeral()
    )
    return landing_zone_sensor(context)


def test_landing_sensor_new_duplicate_late_and_corrected_days(landing):
    first = evaluate(landing, None)
    keys = [r.partition_key for r in first.run_requests]
    assert keys == [None, "2026-01-03", "2026-01-04"], "catalogues, then each complete day"
    assert first.run_requests[1].run_key.startswith("2026-01-03:")
    assert {k.to_user_string() for k in first.run_requests[1].asset_selection} == {"raw_events", "raw_events_dlq"}

    again = evaluate(landing, first.cursor)
    assert not again.run_requests, "the same delivery never runs twice"

    datagen.generate(landing, "2026-01-01", "2026-01-01", 300, seed=1)  # a late, out-of-order day
    late = evaluate(landing, again.cursor)
    assert [r.partition_key for r in late.run_requests] == ["2026-01-01"]
    assert late.run_requests[0].tags["streamrec/trigger"] == "late day"

    old_key = first.run_requests[2].run_key
    datagen.generate(landing, "2026-01-04", "2026-01-04", 301, seed=1, force=True)
    corrected = evaluate(landing, late.cursor)
    assert [r.partition_key for r in corrected.run_requests] == ["2026-01-04"]
    assert corrected.run_requests[0].run_key != old_key
    assert corrected.run_requests[0].tags["streamrec/trigger"] == "corrected re-delivery"


def test_landing_sensor_skips_a_day_already_ingested_from_the_same_file(landing, tmp_path):
    from streamrec_assets.settings import Settings
    from streamrec_assets_tests.conftest import run_range

    settings = Settings(home=str(tmp_path), storage_uri=str(tmp_path / "storage"), landing_uri=landing)
    with dg.instance_for_test() as instance:
        selection = ["user_catalog", "item_catalog", "raw_events", "raw_events_dlq"]
        assert run_range(settings, instance, "2026-01-03", "2026-01-03", selection=selection).success
        result = evaluate(landing, None, instance)
    # neither the catalogues nor the day the CLI ingested from these very files run again
    assert [r.partition_key for r in result.run_requests] == ["2026-01-04"]
    assert "2026-01-03" in json.loads(result.cursor)["days"]


def test_landing_sensor_waits_for_the_completion_marker(landing, tmp_path):
    marker = tmp_path / "landing" / "events" / "date=2026-01-04" / "_SUCCESS"
    marker.unlink()
    result = evaluate(landing, None)
    assert [r.partition_key for r in result.run_requests] == [None, "2026-01-03"]
    days = json.loads(result.cursor)["days"]
    assert "2026-01-04" not in days


def test_schedule_runs_the_previous_day_only_when_it_has_landed(landing):
    schedule = build_daily_schedule(daily_pipeline_job)
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    ok = schedule(dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 5, 2, tzinfo=UTC),
                                             resources={"landing": LandingZone(uri=landing)}))
    assert ok.partition_key == "2026-01-04"
    late = schedule(dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 7, 2, tzinfo=UTC),
                                               resources={"landing": LandingZone(uri=landing)}))
    assert isinstance(late, dg.SkipReason) and "2026-01-06" in late.skip_message


def test_definitions_wire_automation():
    names = {s.name for s in defs.sensors}
    assert {"landing_zone_sensor", "streamrec_automation", "run_failure_alerts", "recovery_alerts",
            "model_promotion_alerts", "freshness_alerts"} <= names
    graph = defs.resolve_asset_graph()
    for key in ("user_features", "training_examples", "ranking_model", "registered_model", "batch_recommendations"):
        assert graph.get(dg.AssetKey(key)).automation_condition is not None, key
    models = graph.get(dg.AssetKey("registered_model")).freshness_policy
    features = graph.get(dg.AssetKey("user_features")).freshness_policy
    assert models.fail_window.to_timedelta().total_seconds() == 26 * 3600
    assert features.fail_window.to_timedelta() < models.fail_window.to_timedelta()
    assert graph.get(dg.AssetKey("ranking_model")).pools == {"training"}
    assert graph.get(dg.AssetKey("feast_feature_views")).pools == {"feature_store"}


def test_backfill_plans():
    assert split_range("2026-01-01", "2026-01-10", 3) == [
        ("2026-01-01", "2026-01-04"), ("2026-01-05", "2026-01-07"), ("2026-01-08", "2026-01-10")]
    assert plan("2026-01-01", "2026-01-10", 1) == [[Step("all", ("*",), "2026-01-01", "2026-01-10")]]
    waves = plan("2026-01-01", "2026-01-10", 2)
    layers = [w[0].layer for w in waves]
    assert layers.index("ingest") < layers.index("features") < layers.index("training_data") < layers.index("ranking")
    ingest = next(w for w in waves if w[0].layer == "ingest")
    assert [(s.start, s.end) for s in ingest] == [("2026-01-01", "2026-01-05"), ("2026-01-06", "2026-01-10")]
    registry = [w for w in waves if w[0].layer == "registry"]
    assert all(len(w) == 1 for w in registry), "the champion gate runs its sub-ranges one at a time"
    newest = plan("2026-01-01", "2026-01-10", 2, "newest-first")
    assert next(w for w in newest if w[0].layer == "ingest")[0].start == "2026-01-06"
    with pytest.raises(ValueError):
        plan("2026-01-01", "2026-01-10", 2, "random")


def test_backfill_waits_for_each_wave_and_stops_on_failure():
    calls, active, peak = [], [0], [0]
    lock = threading.Lock()

    def runner(step):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            calls.append(step.layer)
        import time

        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return (1, "boom") if step.layer == "ranking" else (0, "")

    waves = plan("2026-01-01", "2026-01-10", 3)
    assert run(waves, workers=3, runner=runner, echo=lambda _: None) == 1
    assert peak[0] == 3, "a layer's sub-ranges run at once"
    assert calls[-3:] == ["ranking"] * 3 and "evaluation" not in calls, "nothing after a failed wave"
    first = {layer: calls.index(layer) for layer in ("ingest", "features", "training_data")}
    assert first["ingest"] < first["features"] < first["training_data"]
