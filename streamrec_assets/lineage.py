"""The lineage record attached to every registered model version.

Everything needed to say where a model came from: the code (git SHA, code
versions of the assets), the configuration (hash), the data (upstream
partitions and their Dagster data versions), the features (Feast project and
feature-view versions), the run (Dagster run id, MLflow run id) and the
environment (package versions). The *input fingerprint* identifies a model by
what determines it, so re-materialising the same partition with the same
inputs reuses the registered version instead of creating a twin.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("dagster", "feast", "mlflow", "xgboost", "pandas", "pyarrow", "numpy", "duckdb", "streamrec_assets")
DATA_VERSION_TAG = "dagster/data_version"


@lru_cache(maxsize=1)
def git_sha() -> str:
    """``STREAMREC_GIT_SHA`` (set by CI/images), else the checkout's HEAD (+``-dirty``), else ``unknown``."""
    if os.environ.get("STREAMREC_GIT_SHA"):
        return os.environ["STREAMREC_GIT_SHA"]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def input_fingerprint(
    model_sha256: str,
    evaluation_day: str,
    metrics: dict[str, float],
    registry_code_version: str | None,
    config_hash: str,
) -> str:
    """What determines a registered version, by content: the model bytes (deterministic given
    its training data and code), the evaluation day and its metrics (which change when the
    evaluation data or code change), the registry's own code version and the configuration."""
    rounded = {k: round(float(v), 10) for k, v in sorted(metrics.items())}
    return stable_hash(
        {"model": model_sha256, "day": evaluation_day, "metrics": rounded, "code": registry_code_version,
         "config": config_hash},
        32,
    )


def clip_to_history(partitions: dict[str, list[str]], first_day: str) -> dict[str, list[str]]:
    """Upstream partition windows (asset -> ISO days) without the days before ``first_day``, the first
    partition of history: a window such as [D-14, D-1] of an early day D lists only days that exist.
    An asset whose whole window is before history keeps an empty list."""
    return {asset: [d for d in days if d >= first_day] for asset, days in partitions.items()}


def data_versions(instance, partitions: dict[str, list[str]]) -> dict[str, dict[str, str | None]]:
    """Dagster data version of each upstream (asset, partition), from the instance's event log."""
    import dagster as dg

    out: dict[str, dict[str, str | None]] = {}
    for asset, keys in partitions.items():
        out[asset] = {}
        for key in keys:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
            )
            record = result.records[0] if result.records else None
            materialization = record.asset_materialization if record else None
            out[asset][key] = materialization.tags.get(DATA_VERSION_TAG) if materialization else None
    return out


def as_tags(record: dict[str, Any]) -> dict[str, str]:
    """Flatten the record into MLflow tags (strings, at most 5000 characters each)."""
    tags = {}
    for key, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        tags[f"lineage.{key}"] = text[:5000]
    return tags
