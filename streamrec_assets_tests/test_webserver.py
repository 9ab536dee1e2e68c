"""End-to-end: the real ``dagster-webserver`` serves the code location as ``defs`` defines it.

One webserver is started for the module (temporary DAGSTER_HOME and STREAMREC_HOME, free port,
output to a log file) and queried through its GraphQL API. Expectations are derived from
``streamrec_assets.definitions.defs``, so new assets are covered without editing this file;
only a few spot checks name assets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION_NAME = "streamrec_assets"
STARTUP_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 30.0
# Settings the webserver must not inherit from the caller's shell: they would change the
# partition start date or the storage the code location points at.
HERMETIC_UNSET = (
    "STREAMREC_START_DATE",
    "STREAMREC_STORAGE_URI",
    "STREAMREC_LANDING_URI",
    "STREAMREC_S3_ENDPOINT_URL",
    "STREAMREC_MAX_FAILURE_RATE",
)

WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSET_NODES_QUERY = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    isPartitioned
    partitionDefinition { type description fmt }
    partitionKeyConnection(limit: 2, ascending: true) { results hasMore }
    repository { name location { name } }
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name assetKey { path } blocking } }
      ... on Error { message }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, chars: int = 8000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<could not read {log_path}: {exc}>"


class Webserver:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.proc = proc
        self.log_path = log_path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert response.status_code == 200, (
            f"/graphql answered HTTP {response.status_code}: {response.text[:2000]}"
        )
        payload = response.json()
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the webserver, SIGKILL it if needed, then reap its process group (code server)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # The webserver was started in its own session: its group holds only processes it spawned.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until_loaded(server: Webserver) -> None:
    """Poll until /server_info answers and the code location is LOADED (or fail with the log)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(
                f"dagster-webserver exited with code {server.proc.returncode} during startup.\n"
                f"--- output ---\n{_log_tail(server.log_path)}"
            )
        try:
            info = requests.get(f"{server.url}/server_info", timeout=5)
            if info.status_code != 200:
                last_problem = f"/server_info answered HTTP {info.status_code}"
            else:
                workspace = server.graphql(WORKSPACE_QUERY)["workspaceOrError"]
                assert workspace["__typename"] == "Workspace", workspace
                entries = {e["name"]: e for e in workspace["locationEntries"]}
                assert LOCATION_NAME in entries, f"locations served: {sorted(entries)}"
                entry = entries[LOCATION_NAME]
                if entry["loadStatus"] == "LOADED":
                    loaded = entry["locationOrLoadError"] or {}
                    if loaded.get("__typename") == "PythonError":
                        pytest.fail(
                            f"code location {LOCATION_NAME} failed to load: {loaded['message']}\n"
                            f"{''.join(loaded.get('stack') or [])}"
                        )
                    return
                last_problem = f"location status {entry['loadStatus']}"
        except requests.RequestException as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    pytest.fail(
        f"dagster-webserver not ready after {STARTUP_TIMEOUT_S:.0f} s ({last_problem}).\n"
        f"--- output ---\n{_log_tail(server.log_path)}"
    )


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("webserver")
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    streamrec_home = tmp / "streamrec_home"  # read for storage paths only; need not exist

    binary = Path(sys.executable).with_name("dagster-webserver")
    assert binary.exists(), f"{binary} not found (is dagster-webserver installed in the venv?)"

    env = {k: v for k, v in os.environ.items() if k not in HERMETIC_UNSET}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        STREAMREC_HOME=str(streamrec_home),
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    log_path = tmp / "webserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait_until_loaded(server)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def served_nodes(webserver: Webserver) -> dict[str, dict]:
    """The location's asset nodes as served, by user-facing key string (e.g. ``raw_events``)."""
    nodes = webserver.graphql(ASSET_NODES_QUERY)["assetNodes"]
    ours = [n for n in nodes if n["repository"]["location"]["name"] == LOCATION_NAME]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in ours}
    assert len(by_key) == len(ours), "duplicate asset keys in assetNodes"
    return by_key


@pytest.fixture(scope="module")
def asset_graph():
    from streamrec_assets.definitions import defs

    return defs.resolve_asset_graph()


def _key(asset_key) -> str:
    return "/".join(asset_key.path)


def _paths(keys: list[dict]) -> set[str]:
    return {"/".join(k["path"]) for k in keys}


def test_asset_keys_and_dependencies_match_defs(served_nodes, asset_graph):
    expected_deps = {_key(n.key): {_key(p) for p in n.parent_keys} for n in asset_graph.asset_nodes}
    assert set(served_nodes) == set(expected_deps)
    served_deps = {key: _paths(node["dependencyKeys"]) for key, node in served_nodes.items()}
    assert served_deps == expected_deps

    # Spot checks of the intended wiring.
    assert "user_daily_activity" in served_deps["user_features"]
    assert {"user_catalog", "item_catalog"} <= served_deps["raw_events"]
    assert served_deps["user_catalog"] == served_deps["item_catalog"] == set()


def test_group_names_match_defs(served_nodes, asset_graph):
    expected = {_key(n.key): n.group_name for n in asset_graph.asset_nodes}
    served = {key: node["groupName"] for key, node in served_nodes.items()}
    assert served == expected
    assert served["raw_events"] == served["raw_events_dlq"] == served["user_catalog"] == "ingest"
    assert served["user_features"] == served["item_features"] == "features"


def test_partitions_are_daily_from_default_start(served_nodes, asset_graph):
    from streamrec_assets.settings import DEFAULT_START_DATE

    expected_partitioned = {_key(n.key) for n in asset_graph.asset_nodes if n.partitions_def is not None}
    served_partitioned = {key for key, node in served_nodes.items() if node["partitionDefinition"]}
    assert served_partitioned == expected_partitioned
    # Project invariant: only the two catalogue dimensions are unpartitioned.
    assert set(served_nodes) - served_partitioned == {"user_catalog", "item_catalog"}

    for key in served_partitioned:
        node = served_nodes[key]
        assert node["isPartitioned"], key
        definition = node["partitionDefinition"]
        assert definition["type"] == "TIME_WINDOW", (key, definition)
        assert definition["description"] == f"Daily, starting {DEFAULT_START_DATE} UTC.", (key, definition)
        assert definition["fmt"] == "%Y-%m-%d", (key, definition)
        first_keys = node["partitionKeyConnection"]["results"]
        assert first_keys[:1] == [DEFAULT_START_DATE], (key, first_keys)
        if len(first_keys) > 1:
            assert first_keys[1] == "2026-01-02", (key, first_keys)

    for key in ("user_catalog", "item_catalog"):
        assert not served_nodes[key]["isPartitioned"]
        assert served_nodes[key]["partitionKeyConnection"] is None


def test_asset_checks_match_defs(served_nodes, asset_graph):
    expected = {_key(n.key): {c.name for c in n.check_keys} for n in asset_graph.asset_nodes}
    served = {}
    for key, node in served_nodes.items():
        result = node["assetChecksOrError"]
        assert result["__typename"] == "AssetChecks", (key, result)
        served[key] = {c["name"] for c in result["checks"]}
        assert all(_paths([c["assetKey"]]) == {key} for c in result["checks"]), (key, result)
    assert served == expected
    assert {"contract", "reconciles_with_landing"} <= served["raw_events"]
    blocking = {c["name"]: c["blocking"] for c in served_nodes["raw_events"]["assetChecksOrError"]["checks"]}
    assert blocking["reconciles_with_landing"] is True
