"""Resources: the landing zone, asset storage, Feast and MLflow (each configured, never hard-coded)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath

    from streamrec_assets.landing import Delivery, Landing, Marker
    from streamrec_assets.storage import S3Options, TableStore, Transaction


class S3Access(dg.ConfigurableResource):
    """Where a resource's files live: local paths, or s3:// URIs on any S3-compatible endpoint.

    The endpoint and the credentials are declared here once; the credentials are passed as
    ``dg.EnvVar`` (shown by name only) or left empty for the standard AWS environment.
    """

    s3_endpoint_url: str = Field(default="", description="Endpoint of an S3-compatible store.")
    aws_access_key_id: str = Field(default="", description="S3 key (pass dg.EnvVar('AWS_ACCESS_KEY_ID')).")
    aws_secret_access_key: str = Field(default="", description="S3 secret (pass dg.EnvVar(...)).")

    def s3_options(self) -> S3Options:
        from streamrec_assets.storage import S3Options

        return S3Options(self.s3_endpoint_url, self.aws_access_key_id, self.aws_secret_access_key)


class LandingZone(S3Access):
    """The upstream export (layout and completion marker: :mod:`streamrec_assets.landing`)."""

    uri: str = Field(description="Root of the landing zone: a local directory or s3://bucket/prefix.")

    def landing(self) -> Landing:
        from streamrec_assets.landing import Landing

        return Landing(self.uri, self.s3_options())

    def events_path(self, day: str) -> UPath:
        return self.landing().events_path(day)

    def is_complete(self, day: str) -> bool:
        """True when the day's file and its completion marker are both present."""
        return self.landing().is_complete(day)

    def read_delivery(self, day: str) -> Delivery:
        """The day's file verified against its marker (sha256, records, complete stream)."""
        return self.landing().read_delivery(day)

    def read_marker(self, day: str) -> Marker | None:
        return self.landing().read_marker(day)

    def delivered_days(self) -> dict[str, str]:
        """Days whose file and completion marker are present: ``{day: sha256 from the marker}``."""
        return self.landing().delivered_days()

    def catalog_fingerprint(self) -> str:
        return self.landing().catalog_fingerprint()

    def read_catalog(self, name: str) -> pd.DataFrame:
        """``name`` is ``users`` or ``items``."""
        return self.landing().read_catalog(name)


class Storage(S3Access):
    """Asset storage (:mod:`streamrec_assets.storage`): tables, files next to them, transactions.

    ``<base_uri>/<asset>/date=YYYY-MM-DD/<name>``. Assets stage what they write in a
    :class:`~streamrec_assets.storage.Transaction`, audit it, then publish it (write-audit-publish);
    the IO manager reads the published values.
    """

    base_uri: str = Field(description="Root of asset storage: a local directory or s3://bucket/prefix.")

    def tables(self) -> TableStore:
        from streamrec_assets.storage import TableStore

        return TableStore(self.base_uri, self.s3_options())

    def transaction(self, label: str = "") -> Transaction:
        return self.tables().transaction(label)

    def path(self, asset: str, day: str, name: str) -> UPath:
        return self.tables().partition_path(asset, day, name)

    def read_bytes(self, asset: str, day: str, name: str) -> bytes:
        from streamrec_assets.errors import NeverMaterializedError
        from streamrec_assets.storage import read_bytes

        path = self.path(asset, day, name)
        data = read_bytes(path)
        if data is None:
            raise NeverMaterializedError(f"{asset}[{day}]", str(path))
        return data

    def read_table(self, asset: str, day: str, name: str) -> pd.DataFrame:
        from streamrec_assets.storage import read_parquet

        return read_parquet(self.path(asset, day, name))

    def read_manifest(self, asset: str, day: str) -> dict | None:
        """The manifest of a published artifact directory, or None when absent."""
        import json

        from streamrec_assets.storage import read_bytes

        data = read_bytes(self.path(asset, day, "manifest.json"))
        return None if data is None else json.loads(data)


class FeastResource(dg.ConfigurableResource):
    """The Feast feature store (DuckDB offline store; SQLite or Redis online store)."""

    storage_uri: str = Field(description="Where the feature tables live (the sources of the feature views).")
    repo_dir: str = Field(description="Directory of the Feast registry and SQLite online store.")
    online_store: str = Field(default="sqlite", description="'sqlite' or 'redis'.")
    redis_url: str = Field(default="", description="Redis connection string, e.g. localhost:6379.")
    s3_endpoint_url: str = Field(default="", description="Endpoint of an S3-compatible store.")

    def settings(self):
        import dataclasses

        from streamrec_assets.feature_repo import FeastSettings

        return FeastSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FeastSettings)})

    def store(self):
        from streamrec_assets.feature_repo import get_store

        return get_store(self.settings())

    def objects(self) -> list:
        from streamrec_assets.feature_repo import feature_objects

        return feature_objects(self.settings())


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (SQLite backend by default; any server by URI)."""

    tracking_uri: str = Field(description="MLflow tracking URI (MLFLOW_TRACKING_URI).")
    artifact_location: str = Field(default="", description="Artifact root for a new experiment (local backends).")
    experiment: str = Field(default="streamrec", description="Experiment of the training runs.")
    registered_model: str = Field(default="streamrec-ranker", description="Registered model name.")

    def client(self):
        import mlflow
        from mlflow import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            from pathlib import Path

            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, client) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(self.experiment, artifact_location=self.artifact_location or None)


def feast_settings(settings):
    """FeastSettings from the project Settings (also used by the feast CLI entry point)."""
    from streamrec_assets.feature_repo import FeastSettings

    return FeastSettings(
        storage_uri=settings.storage_uri,
        repo_dir=settings.feast_dir,
        online_store=settings.feast_online_store,
        redis_url=settings.redis_url,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
