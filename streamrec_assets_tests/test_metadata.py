"""Metadata a newcomer reads: column descriptions, resource descriptions, MLflow links and signature."""

from __future__ import annotations

import hashlib
import os

import dagster as dg
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from streamrec_assets import contracts

NAME = "streamrec-ranker"
DAY = "2026-01-20"
FEATURES = ["f1", "f2"]


def _schemas() -> dict[str, pa.DataFrameSchema]:
    found = {name: value for name, value in vars(contracts).items() if isinstance(value, pa.DataFrameSchema)}
    found["raw_event_record_schema"] = contracts.raw_event_record_schema(DAY, [1], [2])
    return found


# ------------------------------------------------------------------------------ column descriptions


def test_every_contract_column_has_a_description():
    schemas = _schemas()
    assert len(schemas) >= 17
    missing = [
        f"{name}.{column}"
        for name, schema in schemas.items()
        for column, spec in schema.columns.items()
        if not (spec.description or "").strip()
    ]
    assert missing == []


def test_contract_column_schema_publishes_the_descriptions():
    from streamrec_assets.assets.common import column_schema, contract_column_schema

    table = contract_column_schema("user_features")
    described = {c.name: c.description for c in table.columns}
    assert "trailing 7 days" in described["plays_7d"]
    assert described["genre_share_28d__.+"].startswith("genre_share_28d__<genre>")

    # A materialisation's columns: a regex column of the contract describes every column it matches,
    # and the documentation-only columns describe what a contract does not check.
    df = pd.DataFrame({"date": [DAY], "user_id": [1], "plays_genre__drama": [2]})
    got = {c.name: c.description for c in column_schema(df, "user_daily_activity").columns}
    assert got["plays_genre__drama"].startswith("plays_genre__<genre>")
    assert all(got.values()), got


def test_documentation_only_columns_check_nothing():
    """The columns added for their descriptions alone accept any dtype, nulls, and absence."""
    schema = contracts.training_examples_schema
    for name in ("user_features__.+", "item_features__.+", "item_duration_seconds", "item_genre_code",
                 "user_tenure_days"):
        spec = schema.columns[name]
        assert spec.dtype is None and spec.nullable and not spec.required and not spec.checks, name
    spec = contracts.user_daily_activity_schema.columns["plays_genre__.+"]
    assert spec.dtype is None and spec.nullable and not spec.required and not spec.checks


# ---------------------------------------------------------------------------- resource descriptions


def test_every_resource_and_field_has_a_description(tmp_path):
    from streamrec_assets.definitions import build_resources
    from streamrec_assets_tests.conftest import tiny_settings

    resources = build_resources(tiny_settings(tmp_path))
    for key, resource in resources.items():
        definition = resource.get_resource_definition()
        assert (definition.description or "").strip(), key
        if key == "io_manager":
            continue  # its one field is the storage resource, described above
        fields = definition.config_schema.as_field().config_type.fields
        undescribed = [name for name, field in fields.items() if not (field.description or "").strip()]
        assert undescribed == [], key


# --------------------------------------------------------------------------------- MLflow UI links


def test_mlflow_ui_base_and_links():
    from streamrec_assets.core.registry import (
        DEFAULT_MLFLOW_UI,
        mlflow_model_version_url,
        mlflow_run_url,
        mlflow_ui_base,
    )

    assert mlflow_ui_base("sqlite:////tmp/mlflow/mlflow.db") == DEFAULT_MLFLOW_UI == "http://127.0.0.1:5000"
    assert mlflow_ui_base("") == DEFAULT_MLFLOW_UI
    assert mlflow_ui_base("databricks") == DEFAULT_MLFLOW_UI
    assert mlflow_ui_base("http://mlflow:5000/") == "http://mlflow:5000"
    assert mlflow_ui_base("https://user:secret@mlflow.example.com/prefix/?x=1") == "https://mlflow.example.com/prefix"
    assert mlflow_ui_base("http://[::1]:5000") == "http://[::1]:5000"
    base = "http://mlflow:5000"
    assert mlflow_run_url(base, "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"
    assert mlflow_model_version_url(base, NAME, 7) == "http://mlflow:5000/#/models/streamrec-ranker/versions/7"
    assert mlflow_model_version_url(base, "my model", 1).endswith("/#/models/my%20model/versions/1")


# ------------------------------------------------------------------------- the registered signature


def _examples(seed: int, users: int = 20, items: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = users * items
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame(
        {
            "date": DAY,
            "user_id": np.repeat(np.arange(users, dtype="int64"), items),
            "item_id": np.tile(np.arange(items, dtype="int64"), users),
            "example_id": np.arange(n, dtype="int64"),
            "f1": f1,
            "f2": f2,
            "label": np.clip(np.round(f1 + 0.5 * rng.normal(size=n)), 0, 3).astype("int64"),
        }
    )


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny ranker registered through the registry protocol in a fresh SQLite MLflow."""
    import mlflow
    from mlflow import MlflowClient

    from streamrec_assets.core.ranking import train_ranker
    from streamrec_assets.core.registry import Candidate, Registry

    root = tmp_path_factory.mktemp("metadata_mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    exported = {var: os.environ.get(var) for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)  # exported to the environment: restored below for the other tests
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("streamrec", artifact_location=str(root / "artifacts"))
    registry = Registry(client, NAME, experiment_id, decision_wait_s=0)
    registry.ensure_model()
    trained = train_ranker(_examples(1), _examples(2), FEATURES, num_boost_round=5)
    candidate = Candidate(
        day=DAY, fingerprint=hashlib.sha256(trained.model_bytes).hexdigest()[:32], params={"partition": DAY},
        metrics={"ndcg_at_20": 0.5}, description="test", load_model=lambda: trained.model_bytes,
        lineage=lambda: {"partition": DAY},
    )
    version, registration = registry.register(candidate, registrant="run-a")
    yield registry, candidate, version, registration, trained
    for var, value in exported.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def test_registered_version_has_the_rankers_signature(registered):
    import mlflow

    from streamrec_assets.core.registry import Registration

    registry, candidate, version, registration, trained = registered
    assert registration == Registration.REGISTERED
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version.version}")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == trained.features == FEATURES
    assert [c.type.name for c in info.signature.inputs.inputs] == ["double", "double"]
    assert info.signature.outputs.input_names() == ["score"]
    # The model still loads and scores as before.
    assert registry.model_bytes(str(version.version)) and info.flavors.get("xgboost")


def test_a_signed_version_is_still_reused_by_its_fingerprint(registered):
    from streamrec_assets.core.registry import Registration

    registry, candidate, version, _, _ = registered
    again, registration = registry.register(candidate, registrant="run-b")
    assert registration == Registration.REUSED and str(again.version) == str(version.version)
    assert len(registry.versions(candidate.fingerprint)) == 1


def test_day_metadata_links_the_run_and_the_version(registered):
    from streamrec_assets.assets.registry import mlflow_links, model_observation
    from streamrec_assets.core.registry import DayOutcome, Registration, Status

    registry, candidate, version, _, _ = registered
    outcome = DayOutcome(
        day=DAY, status=Status.PROMOTED, reason="first", registration=Registration.REGISTERED,
        version=int(version.version), run_id=version.run_id, fingerprint=candidate.fingerprint,
        champion_version=int(version.version),
    )
    links = mlflow_links(registry, outcome, "http://127.0.0.1:5000")
    assert links["mlflow_run_url"] == dg.MetadataValue.url(
        f"http://127.0.0.1:5000/#/experiments/{registry.experiment_id}/runs/{version.run_id}"
    )
    assert links["mlflow_model_version_url"] == dg.MetadataValue.url(
        f"http://127.0.0.1:5000/#/models/{NAME}/versions/{version.version}"
    )
    observation = model_observation(NAME, outcome, links)
    assert observation.asset_key == dg.AssetKey("ranking_model") and observation.partition == DAY
    assert observation.metadata["mlflow_run_id"].value == version.run_id
    assert observation.metadata["version"].value == int(version.version)
    assert "mlflow_run_url" in observation.metadata and "mlflow_model_version_url" in observation.metadata

    skipped = DayOutcome(day=DAY, status=Status.SKIPPED, reason="no ranker")
    assert mlflow_links(registry, skipped, "http://127.0.0.1:5000") == {}
