"""Resources: the landing zone the pipeline reads from (local directory or S3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath


class S3Access(dg.ConfigurableResource):
    """Where a resource's files live: local paths, or s3:// URIs on any S3-compatible endpoint."""

    s3_endpoint_url: str = Field(default="", description="Endpoint of an S3-compatible store.")
    aws_access_key_id: str = Field(default="", description="S3 key (pass dg.EnvVar('AWS_ACCESS_KEY_ID')).")
    aws_secret_access_key: str = Field(default="", description="S3 secret (pass dg.EnvVar(...)).")

    def _path(self, location: str) -> UPath:
        from streamrec_assets.io_managers import storage_path

        return storage_path(location, self.s3_endpoint_url, self.aws_access_key_id, self.aws_secret_access_key)


class LandingZone(S3Access):
    """The upstream export: one JSON Lines file per day plus a completion marker, and catalogues.

    Layout (written by ``streamrec generate`` or the real upstream export)::

        <uri>/events/date=YYYY-MM-DD/events-YYYY-MM-DD.jsonl.gz
        <uri>/events/date=YYYY-MM-DD/_SUCCESS
        <uri>/catalog/users.parquet, <uri>/catalog/items.parquet
    """

    uri: str = Field(description="Root of the landing zone: a local directory or s3://bucket/prefix.")

    def events_path(self, day: str) -> UPath:
        from streamrec_assets import datagen

        return self._path(datagen.events_path(self.uri, day))

    def marker_path(self, day: str) -> UPath:
        from streamrec_assets import datagen

        return self._path(datagen.marker_path(self.uri, day))

    def is_complete(self, day: str) -> bool:
        """True when the day's file and its completion marker are both present."""
        return self.marker_path(day).exists() and self.events_path(day).exists()

    def read_events(self, day: str) -> bytes:
        events = self.events_path(day)
        if not self.marker_path(day).exists():
            state = "has no completion marker yet" if events.exists() else "has not been delivered"
            raise FileNotFoundError(
                f"Landing day {day} {state}: expected {events} and its _SUCCESS marker under {self.uri}. "
                f"Generate it with `streamrec generate --start {day} --end {day}`."
            )
        return events.read_bytes()

    def read_marker(self, day: str) -> dict | None:
        """The day's completion marker (``{"date", "records", "sha256", "params"}``), or None."""
        import json

        marker = self.marker_path(day)
        return json.loads(marker.read_bytes()) if marker.exists() else None

    def delivered_days(self) -> dict[str, str]:
        """Days whose file and completion marker are present: ``{day: sha256 of the file}``."""
        import json

        root = self._path(f"{self.uri.rstrip('/')}/events")
        if not root.exists():
            return {}
        out = {}
        for folder in sorted(root.iterdir()):
            if not folder.name.startswith("date="):
                continue
            day = folder.name[len("date=") :]
            marker = folder / "_SUCCESS"
            if marker.exists() and self.events_path(day).exists():
                out[day] = str(json.loads(marker.read_bytes()).get("sha256", ""))
        return out

    def catalog_fingerprint(self) -> str:
        """A hash of the two catalogue files (changes when a new catalogue is delivered)."""
        import hashlib

        from streamrec_assets import datagen

        digest = hashlib.sha256()
        for location in (datagen.users_path(self.uri), datagen.items_path(self.uri)):
            path = self._path(location)
            digest.update(path.read_bytes() if path.exists() else b"missing")
        return digest.hexdigest()

    def read_catalog(self, name: str) -> pd.DataFrame:
        """``name`` is ``users`` or ``items``."""
        import pyarrow.parquet as pq

        from streamrec_assets import datagen

        location = {"users": datagen.users_path, "items": datagen.items_path}[name](self.uri)
        path = self._path(location)
        if not path.exists():
            raise FileNotFoundError(
                f"The {name} catalogue is missing from the landing zone ({path}); "
                f"`streamrec generate` writes it."
            )
        with path.open("rb") as handle:
            return pq.read_table(handle).to_pandas()


class ArtifactStore(S3Access):
    """Files that are not tables (models in their own formats, JSON records), next to the assets.

    ``<base_uri>/<asset>/date=YYYY-MM-DD/<name>``. A directory is complete when its
    ``manifest.json`` exists: writers put it last, readers look for it first.
    """

    base_uri: str = Field(description="Root of asset storage: a local directory or s3://bucket/prefix.")

    def _io(self):
        from streamrec_assets.io_managers import PartitionedParquetIOManager

        return PartitionedParquetIOManager(
            base_uri=self.base_uri,
            s3_endpoint_url=self.s3_endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )

    def path(self, asset: str, day: str, name: str) -> UPath:
        return self._io().partition_path(dg.AssetKey(asset), day).parent / name

    def write_bytes(self, asset: str, day: str, name: str, data: bytes) -> UPath:
        from streamrec_assets.io_managers import write_bytes

        path = self.path(asset, day, name)
        write_bytes(data, path)
        return path

    def read_bytes(self, asset: str, day: str, name: str) -> bytes:
        return self.path(asset, day, name).read_bytes()

    def write_table(self, asset: str, day: str, name: str, df: pd.DataFrame) -> UPath:
        from streamrec_assets.io_managers import write_parquet

        path = self.path(asset, day, name)
        write_parquet(df, path)
        return path

    def read_table(self, asset: str, day: str, name: str) -> pd.DataFrame:
        from streamrec_assets.io_managers import read_parquet

        return read_parquet(self.path(asset, day, name))

    def write_manifest(self, asset: str, day: str, manifest: dict) -> UPath:
        import json

        return self.write_bytes(asset, day, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())

    def read_manifest(self, asset: str, day: str) -> dict | None:
        """The manifest of a complete artifact directory, or None when absent."""
        import json

        from streamrec_assets.io_managers import path_exists

        path = self.path(asset, day, "manifest.json")
        return json.loads(path.read_bytes()) if path_exists(path) else None


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
