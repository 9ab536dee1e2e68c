"""Alerts: severity by error class (never by message text), once per failure, titled by asset.

The sensors are evaluated directly against real runs in a test instance configured like
``dagster.yaml`` (run retries on, ``retry_on_asset_or_op_failure: false``); a local HTTP
receiver stands in for the Slack webhook.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from streamrec_assets.alerts import (
    Alert,
    RunRetry,
    Severity,
    StepFailure,
    classify_run_failure,
    failure_alert,
    repeats,
    send,
)
from streamrec_assets.automation import model_promotion_alerts, run_failure_alerts
from streamrec_assets.errors import DeliveryError, TransientError, persistent_failure

DAY = "2026-01-03"
LANDING_FILE = f"/landing/events/date={DAY}/events.jsonl"
daily = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-02-01")
#: Like dagster.yaml: a run is retried once, but never because a step failed.
RETRIES = {"run_retries": {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}}


class Receiver:
    """A local HTTP receiver standing in for a Slack webhook."""

    def __init__(self):
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    r = Receiver()
    monkeypatch.setenv("STREAMREC_ALERT_WEBHOOK_URL", r.url)
    yield r
    r.close()


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides=RETRIES) as inst:
        yield inst


# -------------------------------------------------------------------------------- failing assets


@dg.asset(name="raw_events", partitions_def=daily, retry_policy=dg.RetryPolicy(max_retries=2))
def bad_delivery(context):
    """A persistent data error, with a message that matches none of the old text markers."""
    err = DeliveryError("sha256 differs from the marker", asset="raw_events", partition=context.partition_key,
                        location=LANDING_FILE)
    raise persistent_failure(err) from err


@dg.asset(name="ranking_model", partitions_def=daily, retry_policy=dg.RetryPolicy(max_retries=1))
def storage_down(context):
    """Transient, still failing after its step retry: the message even says 'contract'."""
    raise TransientError("S3 503 while reading the contract manifest", asset="ranking_model")


@dg.asset(
    name="user_features",
    partitions_def=daily,
    check_specs=[dg.AssetCheckSpec("contract", asset="user_features", blocking=True)],
)
def bad_contract(context):
    yield dg.MaterializeResult(
        check_results=[dg.AssetCheckResult(check_name="contract", passed=False, metadata={"failures": 3})]
    )


def _materialize_and_alert(instance, asset, tags=None):
    """Materialise ``asset`` for DAY (it fails), then evaluate the failure sensor on that run."""
    result = dg.materialize([asset], instance=instance, partition_key=DAY, raise_on_error=False, tags=tags)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    run_failure_alerts(_failure_context(instance, run, failure))
    return run


def _failure_context(instance, run, failure_event):
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts", dagster_instance=instance, dagster_run=run, dagster_event=failure_event
    ).for_run_failure()


# -------------------------------------------------------------------------------------- tests


def test_persistent_failure_pages_p1_exactly_once_naming_asset_partition_and_file(receiver, instance):
    run = _materialize_and_alert(instance, bad_delivery)
    assert instance.get_run_by_id(run.run_id).tags.get("dagster/will_retry") == "false", "no run retry"
    steps = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert not steps, "a persistent error is not retried as a step either"

    assert [b["severity"] for b in receiver.bodies] == ["P1"], "exactly one alert"
    body = receiver.bodies[0]
    assert body["title"] == f"raw_events failed for {DAY}: DeliveryError"
    assert "__ASSET_JOB" not in body["text"] and "__ephemeral" not in body["text"]
    assert LANDING_FILE in body["text"] and body["asset"] == "raw_events" and body["partition"] == DAY
    assert body["labels"]["error_kind"] == "persistent"


def test_a_run_retry_of_a_persistent_failure_does_not_page_again(receiver, instance):
    first = _materialize_and_alert(instance, bad_delivery)
    _materialize_and_alert(instance, bad_delivery,
                           tags={"dagster/parent_run_id": first.run_id, "dagster/retry_number": "1"})
    assert [b["severity"] for b in receiver.bodies] == ["P1"], "one page per failure, not per attempt"


def test_transient_failure_after_its_retries_is_p0_whatever_its_message(receiver, instance):
    run = _materialize_and_alert(instance, storage_down)
    retried = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retried) == 1, "the step retry policy ran first"
    assert [b["severity"] for b in receiver.bodies] == ["P0"], "'contract' in a message is not a data error"
    assert receiver.bodies[0]["title"].startswith(f"ranking_model failed for {DAY}: TransientError")


def test_failed_blocking_check_is_p1(receiver, instance):
    _materialize_and_alert(instance, bad_contract)
    assert [b["severity"] for b in receiver.bodies] == ["P1"]
    assert receiver.bodies[0]["title"].startswith(f"user_features failed for {DAY}")
    assert "user_features:contract" in receiver.bodies[0]["text"]


def _infrastructure_failure(instance, retry_of=None):
    """A run of ranking_model that died without any step failure (a lost run worker)."""
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    tags = {"dagster/partition": DAY}
    if retry_of is not None:
        tags.update({"dagster/retry_number": "1", "dagster/parent_run_id": retry_of.run_id,
                     "dagster/root_run_id": retry_of.run_id})  # as the run retry daemon tags it
    run = DagsterRun(
        job_name="__ASSET_JOB",
        run_id=str(uuid.uuid4()),
        status=DagsterRunStatus.STARTED,
        asset_selection=frozenset({dg.AssetKey("ranking_model")}),
        tags=tags,
        root_run_id=None if retry_of is None else retry_of.run_id,
        parent_run_id=None if retry_of is None else retry_of.run_id,
    )
    instance.add_run(run)
    instance.report_run_failed(run, "the run worker was lost")
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    run = instance.get_run_by_id(run.run_id)
    run_failure_alerts(_failure_context(instance, run, failure))
    return run


def test_infrastructure_failure_is_p0_only_after_the_last_run_retry(receiver, instance):
    first = _infrastructure_failure(instance)
    assert first.tags.get("dagster/will_retry") == "true"
    assert receiver.bodies == [], "a run retry follows: no page yet"
    _infrastructure_failure(instance, retry_of=first)
    assert [b["severity"] for b in receiver.bodies] == ["P0"]
    title = receiver.bodies[0]["title"]
    assert title.startswith(f"ranking_model failed for {DAY}") and "infrastructure" in title
    assert "__ASSET_JOB" not in receiver.bodies[0]["text"]


def test_classification_is_by_type_not_text():
    persistent = StepFailure("raw_events", ("raw_events",), "DeliveryError", "persistent", DAY, LANDING_FILE)
    unknown = StepFailure("ranking_model", ("ranking_model",), "ValueError", "", DAY, message="contract violated")
    assert classify_run_failure([persistent], [], RunRetry(0, 1, None)) == Severity.P1
    assert classify_run_failure([], ["raw_events:contract"], RunRetry(0, 1, None)) == Severity.P1
    assert classify_run_failure([unknown], [], RunRetry(0, 1, None)) is None, "a run retry will follow"
    assert classify_run_failure([unknown], [], RunRetry(1, 1, None)) == Severity.P0
    assert classify_run_failure([unknown], [], RunRetry(0, 1, will_retry=False)) == Severity.P0, "instance knows"
    # An error class of the chain that is one of ours is typed, even without the labels.
    typed = StepFailure.from_labels("raw_events", {}, ["raw_events"], ["Failure", "BudgetExceededError"])
    assert typed.persistent and typed.error_class == "BudgetExceededError"
    assert not StepFailure.from_labels("x", {}, ["x"], ["Failure", "ConnectionError"]).persistent
    alert = failure_alert("r1", [persistent], [], RunRetry(0, 1, None), ["raw_events", "raw_events_dlq"], DAY)
    assert alert.title == f"raw_events failed for {DAY}: DeliveryError" and LANDING_FILE in alert.details
    assert repeats([persistent], [persistent]) and not repeats([persistent], [unknown])
    many = failure_alert("r2", [], [], RunRetry(1, 1, False), ["a", "b", "c", "d", "e"], f"{DAY}..2026-01-09")
    assert many.severity == Severity.P0
    assert many.title.startswith(f"a, b, c and 2 more failed for {DAY}..2026-01-09") and "a, b, c, d, e" in many.details


def test_webhook_delivery_is_slack_compatible(receiver):
    assert send(Alert(Severity.P2, "not promoted", "reason"), receiver.url) == ["log", "webhook"]
    body = receiver.bodies[0]
    assert body["text"].startswith("[P2] not promoted") and body["severity"] == "P2"
    assert send(Alert(Severity.P0, "down"), "http://127.0.0.1:9/nothing") == ["log"], "delivery failure never raises"


def _registry_event(instance, metadata, cursor=None) -> str | None:
    """One registered_model materialisation, then a sensor tick from ``cursor``; returns the new cursor."""
    @dg.asset(name="registered_model", partitions_def=daily)
    def fake_registry():
        return dg.MaterializeResult(metadata=metadata)

    dg.materialize([fake_registry], instance=instance, partition_key=DAY)
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    model_promotion_alerts(context)
    return context.cursor


def test_model_not_promoted_is_p2_once_per_decision(receiver, instance):
    cursor = _registry_event(instance, {"status": "champion_kept", "promoted": False,
                                        "decision": "challenger 0.70 < champion 0.72"})
    assert [b["severity"] for b in receiver.bodies] == ["P2"]
    assert "0.70 < champion 0.72" in receiver.bodies[0]["text"] and DAY in receiver.bodies[0]["title"]
    cursor = _registry_event(instance, {"status": "reused", "promoted": False, "decision": "decided by run x: ..."},
                             cursor)
    _registry_event(instance, {"status": "skipped", "promoted": False, "decision": "no trained ranker"}, cursor)
    assert len(receiver.bodies) == 1, "a reused decision or a skipped day does not alert again"


def test_freshness_failure_is_p1_once(receiver):
    from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange

    from streamrec_assets.automation import freshness_alerts

    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            FreshnessStateChange(key=dg.AssetKey("registered_model"), new_state=FreshnessState.FAIL,
                                 previous_state=FreshnessState.PASS, state_change_timestamp=time.time())
        )
        first = dg.build_sensor_context(instance=instance)
        freshness_alerts(first)
        freshness_alerts(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert [b["severity"] for b in receiver.bodies] == ["P1"], "alerted once per transition to FAIL"
    assert "registered_model is stale" in receiver.bodies[0]["text"]
