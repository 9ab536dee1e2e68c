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
    """Access to files that live on local paths or under s3:// URIs of any S3-compatible store.

    The base of the landing zone and asset storage resources: the endpoint and the credentials
    are declared here once. Credentials are passed as `dg.EnvVar` (the UI shows the variable's
    name, never its value) or left empty to use the standard AWS environment and config files.
    """

    s3_endpoint_url: str = Field(
        default="",
        description="Endpoint URL of an S3-compatible store (e.g. http://localhost:9000 for MinIO; "
        "STREAMREC_S3_ENDPOINT_URL). Empty: AWS S3, or nothing for local paths.",
    )
    aws_access_key_id: str = Field(
        default="",
        description="S3 access key id, passed as dg.EnvVar('AWS_ACCESS_KEY_ID'). Empty: the standard AWS "
        "credential chain.",
    )
    aws_secret_access_key: str = Field(
        default="",
        description="S3 secret access key, passed as dg.EnvVar('AWS_SECRET_ACCESS_KEY') (never a literal). "
        "Empty: the standard AWS credential chain.",
    )

    def s3_options(self) -> S3Options:
        from streamrec_assets.storage import S3Options

        return S3Options(self.s3_endpoint_url, self.aws_access_key_id, self.aws_secret_access_key)


class LandingZone(S3Access):
    """The landing zone: where the upstream export delivers each day's events and the catalogues.

    `events/date=YYYY-MM-DD/`: one JSON Lines file of events per day (gzip or plain) and its
    completion marker `_SUCCESS` (sha256 and record count); a day is ingested only once the
    marker is present and matches the file. `catalog/`: the users and items catalogues (Parquet).
    `reference/date=YYYY-MM-DD/reference.parquet`: optional, outside the delivery contract: the data
    source's reference scores of the day (the generator's hidden affinity; real data has none).
    Read-only for the pipeline (layout: streamrec_assets.landing).
    """

    uri: str = Field(
        description="Root of the landing zone: a local directory or s3://bucket/prefix (STREAMREC_LANDING_URI; "
        "default $STREAMREC_HOME/landing)."
    )

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

    def read_reference(self, day: str) -> pd.DataFrame | None:
        """The day's optional reference scores (``user_id, item_id, score``), None when the source has none."""
        return self.landing().read_reference(day)


class Storage(S3Access):
    """Asset storage: every asset's daily tables (Parquet) and the files next to them (models, manifests).

    Layout: `<base_uri>/<asset>/date=YYYY-MM-DD/<name>`, one `data.parquet` per partition. Assets
    stage what they write in a transaction, audit it (the pandera contract and the blocking
    checks), then publish it: write-audit-publish, so readers never see a half-written or failed
    day (quarantined instead). The IO manager reads the published partitions.
    """

    base_uri: str = Field(
        description="Root of asset storage: a local directory or s3://bucket/prefix (STREAMREC_STORAGE_URI; "
        "default $STREAMREC_HOME/storage)."
    )

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
    """The Feast feature store over the user_features and item_features tables.

    Offline store: DuckDB reading the feature partitions in asset storage (point-in-time joins
    for training and evaluation). Online store: SQLite (default) or Redis, loaded by
    feast_feature_views and read by batch serving. The registry is a local file in `repo_dir`.
    """

    storage_uri: str = Field(
        description="Root of asset storage, where the feature tables (the sources of the feature views) live: "
        "a local directory or s3://bucket/prefix."
    )
    repo_dir: str = Field(
        description="Local directory of the Feast registry and the SQLite online store "
        "($STREAMREC_HOME/feast)."
    )
    online_store: str = Field(
        default="sqlite", description="Online store: 'sqlite' or 'redis' (STREAMREC_FEAST_ONLINE_STORE)."
    )
    redis_url: str = Field(
        default="",
        description="Redis connection string (host:port, e.g. localhost:6379) when online_store is 'redis' "
        "(STREAMREC_REDIS_URL).",
    )
    s3_endpoint_url: str = Field(
        default="",
        description="Endpoint URL of an S3-compatible store holding the feature tables; empty for AWS S3 or "
        "local paths.",
    )

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
    """MLflow tracking server and model registry of the ranker.

    registered_model logs one run per trained day (parameters, metrics, the XGBoost model with
    its signature, the lineage record) and registers it as a version of `registered_model`;
    aliases `challenger` and `champion` mark the latest and the promoted version, and
    batch_recommendations serves the champion. SQLite backend under $STREAMREC_HOME/mlflow by
    default (its UI: `make mlflow-ui`, http://127.0.0.1:5000), or any MLflow server by URI.
    """

    tracking_uri: str = Field(
        description="MLflow tracking and registry URI (MLFLOW_TRACKING_URI): sqlite:///path/mlflow.db (default "
        "under $STREAMREC_HOME/mlflow) or http(s)://server. An http(s) URI is also the base of the MLflow UI "
        "links in the metadata."
    )
    artifact_location: str = Field(
        default="",
        description="Artifact root given to the experiment when this resource creates it (local backends); "
        "empty: the server's default.",
    )
    experiment: str = Field(
        default="streamrec", description="MLflow experiment of the training runs (created when missing)."
    )
    registered_model: str = Field(
        default="streamrec-ranker",
        description="Name of the registered model whose versions hold the daily rankers (aliases challenger and "
        "champion).",
    )

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
