"""deploy/: the production configuration stays valid and in step with the code.

No cluster, database, Redis or Helm is needed: each file is checked against the schema of the
component that reads it, as far as that is possible offline.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PG_ENV = {
    "DAGSTER_PG_HOST": "postgres.invalid",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "dummy",
    "DAGSTER_PG_DB": "dagster",
}


@pytest.fixture
def pg_env(monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)


def test_instance_config_is_valid(tmp_path, pg_env):
    """deploy/dagster.yaml passes Dagster's instance schema and each class's own config schema.

    `dagster instance info` is not usable here: it builds the instance, and the Postgres
    storages connect at construction (it retries, then fails with "too many retries for DB
    connection"), as would K8sRunLauncher, which loads the in-cluster kube config in __init__.
    So this does what `DagsterInstance` does up to, but not including, instantiation:
    `InstanceRef.from_dir` runs `dagster_instance_config` (instance schema, env var sources,
    cross-field checks such as run-queue vs `concurrency` limits), then every configurable class
    is imported and its config processed against `config_type()` (env vars resolved).
    """
    from dagster._config import process_config
    from dagster._core.instance.ref import InstanceRef

    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    ref = InstanceRef.from_dir(str(tmp_path))

    expected = {
        "run_storage": "PostgresRunStorage",
        "event_storage": "PostgresEventLogStorage",
        "schedule_storage": "PostgresScheduleStorage",
        "run_launcher": "K8sRunLauncher",
        "run_coordinator": "QueuedRunCoordinator",
    }
    resolved = {}
    for field, class_name in expected.items():
        data = getattr(ref, f"{field}_data")
        assert data is not None, field
        assert data.class_name == class_name, (field, data.class_name)
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(klass.config_type(), yaml.safe_load(data.config_yaml) or {})
        assert result.success, (field, [e.message for e in result.errors])
        resolved[field] = result.value

    pg = resolved["run_storage"]["postgres_db"]
    assert (pg["hostname"], pg["port"], pg["username"], pg["password"], pg["db_name"]) == (
        "postgres.invalid", 5432, "dagster", "dummy", "dagster"
    )
    launcher = resolved["run_launcher"]
    assert launcher["service_account_name"]
    assert launcher["env_config_maps"] and launcher["env_secrets"]
    assert ref.run_launcher_data.module_name == "dagster_k8s"

    settings = ref.settings
    assert settings["telemetry"] == {"enabled": False}
    # Run retries only for infrastructure failures: persistent data errors must fail once.
    assert settings["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    # Run monitoring fails dead runs and frees their pool slots (see deploy/README.md, crash recovery).
    monitoring = settings["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["free_slots_after_run_end_seconds"] > 0
    assert settings["concurrency"]["pools"]["default_limit"] >= 1
    assert settings["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    assert settings["concurrency"]["runs"]["tag_concurrency_limits"]
    # Pool limits are set with `dagster instance concurrency set`; the file says so.
    text = (DEPLOY / "dagster.yaml").read_text()
    assert "concurrency set training 1" in text and "concurrency set feature_store 1" in text
    assert "k8s_job_executor" in text


def test_instance_config_needs_the_pg_env(tmp_path, monkeypatch):
    """The Postgres credentials come from the environment only: without them the config fails."""
    from dagster._config import process_config
    from dagster._core.instance.ref import InstanceRef

    for name in PG_ENV:
        monkeypatch.delenv(name, raising=False)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    try:
        data = InstanceRef.from_dir(str(tmp_path)).run_storage_data
    except Exception as exc:  # some versions resolve env sources already here
        assert "DAGSTER_PG_" in str(exc)
        return
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(klass.config_type(), yaml.safe_load(data.config_yaml))
    assert not result.success
    assert "DAGSTER_PG_" in " ".join(e.message for e in result.errors)


def test_helm_values_use_the_chart_keys():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())

    user = values["dagster-user-deployments"]
    assert user["enabled"] is True
    deployment = user["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "streamrec_assets.definitions"]
    assert deployment["port"] == 3030
    assert deployment["image"]["repository"] and deployment["image"]["tag"] not in ("", "latest", None)
    assert deployment["envSecrets"] and deployment["envConfigMaps"]
    assert all(set(item) == {"name"} for item in deployment["envSecrets"] + deployment["envConfigMaps"])

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert "k8sRunLauncher" in values["runLauncher"]["config"]

    pg = values["postgresql"]
    assert pg["enabled"] is False
    assert pg["postgresqlHost"] and pg["postgresqlDatabase"] and pg["postgresqlUsername"]
    assert pg["service"]["port"] == 5432

    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["enabled"] is True
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert "queuedRunCoordinator" in daemon["runCoordinator"]["config"]
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": 2}

    # Run limits under `concurrency` (the chart then leaves them out of the run coordinator;
    # Dagster refuses both at once, see test_instance_config_is_valid).
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert "maxConcurrentRuns" not in queued and "tagConcurrencyLimits" not in queued
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] >= 1
    assert values["concurrency"]["pools"]["defaultLimit"] >= 1
    assert values["telemetry"]["enabled"] is False


def test_feature_store_yaml_is_redis_and_duckdb(monkeypatch):
    raw = (DEPLOY / "feature_store.yaml").read_text()
    config = yaml.safe_load(raw)
    assert config["project"] == "streamrec"
    assert config["online_store"]["type"] == "redis"
    assert config["online_store"]["connection_string"]
    assert config["offline_store"]["type"] == "duckdb"

    # Feast itself accepts it once ${VAR}s are expanded (as feast does when loading the file).
    from feast.repo_config import RepoConfig

    from streamrec_assets.feature_repo import PROJECT

    assert config["project"] == PROJECT
    monkeypatch.setenv("STREAMREC_STORAGE_URI", "s3://bucket/storage")
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis.invalid:6379,ssl=true")
    expanded = yaml.safe_load(os.path.expandvars(raw))
    assert expanded["registry"] == "s3://bucket/storage/_feast/registry.pb"
    repo_config = RepoConfig(**expanded)
    assert repo_config.online_store.connection_string == "redis.invalid:6379,ssl=true"
    assert type(repo_config.offline_store).__name__ == "DuckDBOfflineStoreConfig"


def _env_example() -> dict[str, str]:
    entries = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            entries[name] = value
    return entries


def test_env_example_lists_every_setting():
    source = (REPO / "streamrec_assets" / "settings.py").read_text()
    read = set(re.findall(r'_(?:env|float|date|int)\(\s*"([A-Z][A-Z0-9_]*)"', source))
    assert {"STREAMREC_HOME", "STREAMREC_STORAGE_URI", "MLFLOW_TRACKING_URI"} <= read  # the regex works
    entries = _env_example()
    missing = sorted(read - set(entries))
    assert not missing, f"deploy/env.example lacks {missing}"

    required = {
        "STREAMREC_STORAGE_URI", "STREAMREC_LANDING_URI", "STREAMREC_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STREAMREC_FEAST_ONLINE_STORE",
        "STREAMREC_REDIS_URL", "MLFLOW_TRACKING_URI", "STREAMREC_ALERT_WEBHOOK_URL", *PG_ENV,
    }
    assert required <= set(entries), sorted(required - set(entries))
    assert entries["STREAMREC_STORAGE_URI"].startswith("s3://")
    assert entries["STREAMREC_FEAST_ONLINE_STORE"] == "redis"

    # Every ${VAR} / $(VAR) / {env: VAR} used by the other deploy files is documented.
    used = set()
    for path in DEPLOY.rglob("*.yaml"):
        text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
        used |= set(re.findall(r"\$[{(]([A-Z][A-Z0-9_]*)[})]", text))
        used |= set(re.findall(r"env:\s*([A-Z][A-Z0-9_]*)\s*$", text, flags=re.M))
        # a pod's own facts (Kubernetes downward API), defined in the same file
        used -= set(re.findall(r"-\s*name:\s*([A-Z][A-Z0-9_]*)\s*\n\s*valueFrom:\s*\n\s*fieldRef:", text))
    assert not sorted(used - set(entries)), sorted(used - set(entries))


def test_env_example_has_no_real_secrets():
    for name, value in _env_example().items():
        if any(word in name for word in ("PASSWORD", "SECRET", "KEY_ID", "WEBHOOK")):
            assert re.search(r"change-me|placeholder", value), f"{name} looks like a real secret"


def test_mlflow_server_uses_postgres_and_s3():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "mlflow.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["command"] + container["args"])
    assert args.startswith("mlflow server")
    assert "--backend-store-uri=postgresql://" in args
    assert "--artifacts-destination=" in args and "--serve-artifacts" in args
    assert _env_example()["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert any(d["kind"] == "Service" for d in docs)
