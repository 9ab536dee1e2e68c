"""The single Definitions object of the code location (it only assembles)."""

from __future__ import annotations

import dataclasses
import os
import warnings

import dagster as dg

from streamrec_assets import automation
from streamrec_assets.assets import (
    drift,
    feature_store,
    features,
    ingest,
    models,
    registry,
    retrieval,
    serving,
    taste,
    training,
)
from streamrec_assets.automation import build_daily_schedule
from streamrec_assets.code_versions import with_code_versions
from streamrec_assets.io_managers import PartitionedParquetIOManager
from streamrec_assets.resources import (
    FeastResource,
    LandingZone,
    MLflowResource,
    Storage,
    feast_settings,
)
from streamrec_assets.settings import Settings, get_settings


def _s3_credentials(settings: Settings) -> dict:
    """S3 credentials as dg.EnvVar (resolved at run time, shown by name only) when S3 is configured."""
    uses_s3 = any(uri.startswith("s3://") for uri in (settings.storage_uri, settings.landing_uri))
    if not uses_s3 or not os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}  # local storage, or an instance role / AWS profile chosen by the environment
    return {
        "aws_access_key_id": dg.EnvVar("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
    }


def build_resources(settings: Settings) -> dict:
    """Resources for one environment; storage is chosen by settings (local or s3://) only."""
    s3 = {"s3_endpoint_url": settings.s3_endpoint_url, **_s3_credentials(settings)}
    storage = Storage(base_uri=settings.storage_uri, **s3)
    return {
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "storage": storage,
        "landing": LandingZone(uri=settings.landing_uri, **s3),
        "feast": FeastResource(**dataclasses.asdict(feast_settings(settings))),
        "mlflow": MLflowResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_location=settings.mlflow_artifacts_uri
        ),
    }


#: Imported once by the forkserver, so each step process starts with them loaded (a spawned
#: step process spends seconds importing these before it computes anything).
PRELOAD_MODULES = [
    "streamrec_assets.definitions",
    "pandas", "pyarrow.parquet", "duckdb", "numpy",
    "xgboost", "mlflow", "feast", "pandera.pandas",
]


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The run's executor, chosen by STREAMREC_EXECUTOR (see settings.EXECUTORS)."""
    if settings.executor == "in_process":
        return dg.in_process_executor
    config: dict = {}
    if settings.max_concurrent_steps:
        config["max_concurrent"] = settings.max_concurrent_steps
    if settings.executor == "forkserver":
        config["start_method"] = {"forkserver": {"preload_modules": PRELOAD_MODULES}}
    return dg.multiprocess_executor.configured(config) if config else dg.multiprocess_executor


#: Who answers for each group (shown as owners in the UI), and the layer each group forms.
OWNERS = {
    "ingest": ["team:data-platform"],
    "features": ["team:data-platform"],
    "training": ["team:recsys"],
    "serving": ["team:recsys"],
}
LAYERS = {"ingest": "bronze", "features": "silver", "training": "gold", "serving": "gold"}


def _annotate(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Owners and tags by group; the contract's columns (types, descriptions) as definition metadata."""
    from streamrec_assets.assets.common import contract_column_schema

    group = spec.group_name or "default"
    columns = contract_column_schema(spec.key.to_user_string())
    return spec.replace_attributes(
        owners=spec.owners or OWNERS.get(group, []),
        tags={**spec.tags, "domain": "recommendations", "layer": LAYERS.get(group, "other")},
        metadata={**spec.metadata, **({"dagster/column_schema": columns} if columns else {})},
    )


with warnings.catch_warnings():  # code references are a beta feature of Dagster 1.13
    warnings.simplefilter("ignore", dg.BetaWarning)
    all_assets = dg.with_source_code_references(
        dg.map_asset_specs(
            _annotate,
            with_code_versions(
                dg.load_assets_from_modules(
                    [ingest, features, feature_store, training, retrieval, taste, models, registry, serving, drift]
                )
            ),
        )
    )

daily_pipeline_job = dg.define_asset_job(
    "daily_pipeline",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets("user_catalog", "item_catalog"),
    description="Every daily-partitioned asset of one day, from raw_events to batch_recommendations "
    "(partitioned daily, inferred from its assets).",
)

defs = dg.Definitions(
    assets=all_assets,
    jobs=[daily_pipeline_job],
    schedules=[build_daily_schedule(daily_pipeline_job)],
    sensors=automation.sensors,
    resources=build_resources(get_settings()),
    executor=build_executor(get_settings()),
)
