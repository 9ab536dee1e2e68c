"""What the operator sees: the real Dagster UI in a real browser (Debian's ``chromium`` driven by
Playwright), on a small materialised instance.

The module builds a temporary STREAMREC_HOME and DAGSTER_HOME, generates three days of tiny
landing data, materialises the catalogues and the first two days of ``raw_events`` in process,
and starts ``dagster-webserver`` on 127.0.0.1 and a free port. No daemon runs: the instance uses
the DefaultRunCoordinator, so a run launched from the UI starts at once (DefaultRunLauncher,
through the webserver's code server), and no sensor or automation launches anything else.

The tests open the global asset lineage, ``raw_events``' partitions and its metadata plots, check
that each page renders without Dagster's error surfaces, then launch the third day from the asset
page's "Materialize…" dialog and wait until that run succeeds (checked through GraphQL).

Screenshots (1400x900) and the browser console go to ``$STREAMREC_BROWSER_ARTIFACTS`` (default
``.streamrec/browser-artifacts``). ``docs/screenshots/`` holds copies of a good run's pages.

Under ``CI=true`` a missing ``chromium`` or ``playwright`` fails the test; elsewhere it skips
(``make chromium`` installs the browser; ``playwright`` is in the ``test`` extra).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from streamrec_assets import datagen
from streamrec_assets_tests.conftest import SEED, TINY_EVENTS, run_range, tiny_settings
from streamrec_assets_tests.servers import free_port, stop_group, wait_http

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "streamrec_assets"
VIEWPORT = {"width": 1400, "height": 900}
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
UI_TIMEOUT_MS = 60_000  # one element to appear; generous for a loaded 2-core machine
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

# Dagster's error surfaces: the GraphQL error toast, a region's error boundary ("Sorry, <region>
# can't be displayed."), a Python error from the server, and an unexpected-exception panel.
ERROR_MARKERS = (
    "Unexpected GraphQL error",
    "can't be displayed",
    "Something went wrong",
    "Please report this error to the Dagster team",
    "An unexpected exception was thrown",
    "PythonError",
)

RUNS_QUERY = """
query Runs($partition: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}
"""

MATERIALIZATIONS_QUERY = """
query Materializations($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } }
  }
}
"""

PARTITION_METADATA_QUERY = """
query PartitionMetadata($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""

FAILURES_QUERY = """
query Failures($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey error { message } }
        ... on RunFailureEvent { message }
      }
    }
  }
}
"""

LOCATION_QUERY = """
query Location {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    """A missing browser fails under CI (the UI must be tested there) and skips elsewhere."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: the browser test may not be skipped)")
    pytest.skip(reason)


def _chromium() -> str | None:
    explicit = os.environ.get("STREAMREC_CHROMIUM", "").strip()
    for candidate in ((explicit,) if explicit else CHROMIUM_CANDIDATES):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("STREAMREC_BROWSER_ARTIFACTS", "").strip() or REPO / ".streamrec" / "browser-artifacts")
    root.mkdir(parents=True, exist_ok=True)
    for pattern in ("[0-9][0-9]-*.png", "error-*.png", "console-*.log"):  # a previous run's
        for old in root.glob(pattern):
            old.unlink()
    return root


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    """Debian's chromium and PyPI's playwright, or a skip (a failure under CI) before anything is built."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        _unavailable("chromium is not installed (make chromium, or apt-get install chromium)")
    return executable


@pytest.fixture(scope="module")
def browser(chromium_executable, ui):
    """Chromium driven by Playwright; Playwright's own browser download is never used. Started
    after ``ui`` so that the in-process materialisation runs before Playwright's event loop."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_executable, args=["--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


class UI:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, days: list[str], storage: Path):
        self.url, self.proc, self.log = url, proc, log
        self.materialised_days, self.launch_day = days[:-1], days[-1]
        self.storage = storage

    def graphql(self, query: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30)
        assert response.status_code == 200, f"/graphql answered HTTP {response.status_code}: {response.text[:2000]}"
        payload = response.json()
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_until_loaded(ui: UI) -> None:
    wait_http(f"{ui.url}/server_info", ui.proc, ui.log, timeout=STARTUP_TIMEOUT_S)
    deadline, last = time.monotonic() + STARTUP_TIMEOUT_S, "no answer"
    while time.monotonic() < deadline:
        if ui.proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited ({ui.proc.returncode}):\n{ui.log_tail()}")
        entries = ui.graphql(LOCATION_QUERY)["workspaceOrError"].get("locationEntries") or []
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED":
            error = entry["locationOrLoadError"] or {}
            assert error.get("__typename") != "PythonError", f"{LOCATION} failed to load: {error.get('message')}"
            return
        last = entry["loadStatus"] if entry else f"locations: {[e['name'] for e in entries]}"
        time.sleep(0.5)
    pytest.fail(f"{LOCATION} not loaded after {STARTUP_TIMEOUT_S}s ({last}):\n{ui.log_tail()}")


@pytest.fixture(scope="module")
def ui(chromium_executable, tmp_path_factory):
    """A webserver on a tiny instance: catalogues and two days of raw_events materialised, and a
    third landing day (``launch_day``) delivered but not yet ingested."""
    import dagster as dg

    tmp = tmp_path_factory.mktemp("browser")
    home, dagster_home = tmp / "streamrec", tmp / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "# No daemon in this test: runs launched from the UI start at once.\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (4, 3, 2)]  # the latest partition, today-1, stays empty
    datagen.generate(str(home / "landing"), days[0], days[-1], TINY_EVENTS, SEED)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        STREAMREC_HOME=str(home),
        STREAMREC_START_DATE=days[0],
        MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow/mlflow.db",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
    )
    port = free_port()
    log = tmp / "webserver.log"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        # Create the instance's SQLite storages before a second process opens them.
        instance.get_runs(limit=1)
        instance.all_instigator_state()
        instance.get_asset_keys()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            # materialised here while the webserver loads the code location
            result = run_range(tiny_settings(home), instance, days[0], days[1],
                               selection=["user_catalog", "item_catalog", "raw_events", "raw_events_dlq"])
            assert result.success
            server = UI(f"http://127.0.0.1:{port}", proc, log, days, Path(tiny_settings(home).storage_uri))
            _wait_until_loaded(server)
            yield server
        finally:
            stop_group(proc)


def test_each_partition_of_a_range_carries_its_own_metadata(ui):
    """Through the webserver's GraphQL API (what the UI's partition plots read): the two days were
    materialised in ONE single-run range, yet each partition's figures are its own and equal what
    storage holds for that day."""
    import pyarrow.parquet as pq

    rows = {}
    for day in ui.materialised_days:
        found = ui.graphql(PARTITION_METADATA_QUERY, path=["raw_events"], partitions=[day])["assetOrError"]
        entries = {e["label"]: e for e in found["assetMaterializations"][0]["metadataEntries"]}
        stored = pq.read_metadata(ui.storage / "raw_events" / f"date={day}" / "data.parquet").num_rows
        rejected = pq.read_metadata(ui.storage / "raw_events_dlq" / f"date={day}" / "data.parquet").num_rows
        assert entries["dagster/row_count"]["intValue"] == stored, day
        assert entries["valid"]["intValue"] == stored and entries["rejected"]["intValue"] == rejected, day
        assert entries["landing_records"]["intValue"] == stored + rejected, day
        assert "partitions_written" not in entries, "no range-level figure is copied onto each partition"
        rows[day] = stored
    assert len(rows) == 2 and all(rows.values()), rows


class Page:
    """A browser tab that records console errors and uncaught exceptions, and saves screenshots."""

    def __init__(self, browser, ui: UI, artifacts: Path, name: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        # Dismiss the "Join the Dagster community" dialog before it opens (it covers every page).
        self.context.add_init_script("window.localStorage.setItem('communityNux', 'true');")
        self.context.set_default_timeout(UI_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.ui, self.artifacts, self.name = ui, artifacts, name
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))

    def goto(self, path: str) -> None:
        self.page.goto(f"{self.ui.url}{path}", wait_until="domcontentloaded")

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def assert_rendered(self, what: str) -> None:
        """No error surface on the page, and no GraphQL/network error or uncaught exception so far."""
        body = self.page.inner_text("body")
        shown = [marker for marker in ERROR_MARKERS if marker in body]
        broken = [line for line in self.console if line.startswith("[pageerror]")
                  or re.search(r"\[(graphql|network) error\]", line, re.IGNORECASE)]
        if shown or broken:
            self.shot(f"error-{self.name}")
        assert not shown, f"{what}: the page shows {shown}:\n{body[:3000]}"
        assert not broken, f"{what}: browser errors:\n" + "\n".join(broken)

    def close(self) -> None:
        (self.artifacts / f"console-{self.name}.log").write_text("\n".join(self.console) + "\n")
        self.context.close()


@pytest.fixture
def tab(request, ui, browser, artifacts):
    page = Page(browser, ui, artifacts, request.node.name)
    failed_before = request.session.testsfailed
    try:
        yield page
        if request.session.testsfailed > failed_before:
            page.shot(f"error-{request.node.name}")  # what the browser showed when the test failed
    finally:
        page.close()


def test_asset_graph_partitions_and_plots_render(tab, ui):
    from playwright.sync_api import expect

    page = tab.page
    # The global asset lineage, every group expanded (Alt+E, the graph's own shortcut).
    tab.goto("/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    for group in ("ingest", "features", "training", "serving"):
        expect(page.get_by_text(group, exact=True).first).to_be_visible()
    page.keyboard.press("Alt+KeyE")
    for asset in ("raw_events", "raw_events_dlq", "user_catalog", "model_evaluation"):  # short names: long ones are elided
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    page.wait_for_timeout(1000)  # the graph animates to fit
    tab.assert_rendered("asset graph")
    tab.shot("01-asset-graph")

    # raw_events' partitions: the two ingested days are materialised, the rest missing.
    tab.goto("/assets/raw_events?view=partitions")
    materialised = page.get_by_text(re.compile(r"^Materialized \(\d+\)$"))
    expect(materialised).to_be_visible()
    count = int(re.search(r"\((\d+)\)", materialised.inner_text()).group(1))
    assert count >= len(ui.materialised_days), materialised.inner_text()
    expect(page.get_by_text(re.compile(r"^Missing \([1-9]\d*\)$"))).to_be_visible()
    for day in ui.materialised_days + [ui.launch_day]:
        expect(page.get_by_text(day, exact=True).first).to_be_visible()
    tab.assert_rendered("raw_events partitions")
    tab.shot("02-raw-events-partitions")

    # Its metadata plots (Overview > Metadata > Plots): one chart per numeric figure, by partition.
    tab.goto("/assets/raw_events?view=overview")
    plots = page.get_by_role("button", name=re.compile(r"\bPlots$"))  # the name includes its icon's
    plots.scroll_into_view_if_needed()
    plots.click()
    for figure in ("landing_records", "failure_rate", "dagster/row_count"):
        expect(page.get_by_text(figure, exact=True).first).to_be_visible()
    expect(page.locator("canvas").first).to_be_visible()
    assert page.get_by_text("Asset plots are automatically generated by metadata").count() == 0, "no plots"
    page.get_by_text("Metadata", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    tab.assert_rendered("raw_events plots")
    tab.shot("03-raw-events-plots")


def _run_of(ui: UI, day: str) -> dict | None:
    runs = ui.graphql(RUNS_QUERY, partition=day)["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    ours = [r for r in runs["results"] if {"key": "dagster/from_ui", "value": "true"} in r["tags"]]
    return ours[0] if ours else None


def test_materialise_one_partition_from_the_asset_page(tab, ui):
    from playwright.sync_api import expect

    page, day = tab.page, ui.launch_day
    assert _run_of(ui, day) is None
    tab.goto("/assets/raw_events?view=partitions")
    page.get_by_role("button", name=re.compile(r"\bMaterialize…$")).click()  # "Materialize…" (icon name first)
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Launch runs to materialize raw_events")).to_be_visible()
    partitions = dialog.get_by_role("textbox")
    partitions.fill(day)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    tab.assert_rendered("launch dialog")
    tab.shot("04-launch-dialog")
    launch.click()
    expect(page.get_by_text("Launched run")).to_be_visible()

    deadline, run = time.monotonic() + RUN_TIMEOUT_S, None
    while time.monotonic() < deadline:
        run = _run_of(ui, day)
        if run and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert run is not None, f"no run for {day} was launched:\n{ui.log_tail()}"

    tab.goto(f"/runs/{run['runId']}")
    expect(page.get_by_text(run["runId"][:8], exact=True).first).to_be_visible()
    if run["status"] != "SUCCESS":
        page.wait_for_timeout(2000)
        tab.shot("05-run-not-succeeded")
        events = ui.graphql(FAILURES_QUERY, runId=run["runId"])["logsForRun"].get("events") or []
        failures = [e.get("error", {}).get("message") or e.get("message") for e in events if len(e) > 1]
        outcome = f"ended {run['status']}" if run["status"] in ("FAILURE", "CANCELED") else (
            f"is still {run['status']} after {RUN_TIMEOUT_S}s")
        pytest.fail(f"run {run['runId']} for {day} {outcome}:\n" + "\n".join(f for f in failures if f))
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()
    expect(page.get_by_text("Succeeded (1)")).to_be_visible()
    page.wait_for_timeout(2000)  # the step timeline draws last
    tab.assert_rendered("run page")
    tab.shot("05-run-succeeded")

    # Both tables of the day are recorded (raw_events_dlq as the step's runtime materialisation).
    for asset in ("raw_events", "raw_events_dlq"):
        found = ui.graphql(MATERIALIZATIONS_QUERY, path=[asset], partitions=[day])["assetOrError"]
        assert run["runId"] in {m["runId"] for m in found["assetMaterializations"]}, (asset, found)

    tab.goto("/assets/raw_events?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(ui.materialised_days) + 1})", exact=True)).to_be_visible()
    tab.assert_rendered("raw_events partitions after the run")
    tab.shot("06-raw-events-partitions-after-run")
