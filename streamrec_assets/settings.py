"""One typed settings object, read from environment variables.

Every knob of the project lives here, with its embedded default for one
machine. Nothing else in the package reads ``os.environ`` for project
settings, so the README's table of variables is this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

DEFAULT_START_DATE = "2026-01-01"
START_DATE_FILE = "start_date"
#: How a run executes its steps (STREAMREC_EXECUTOR): a process per step forked from a server that
#: has the heavy modules imported already (default), a fresh spawned process per step, or all steps
#: in the run's own process.
EXECUTORS = ("forkserver", "multiprocess", "in_process")
#: Where the heavy assets compute (STREAMREC_ENGINE): in the step's own process, or as tasks of a
#: Spark cluster (streamrec_assets.engine).
ENGINES = ("embedded", "spark")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


def _date(name: str, default: str) -> str:
    raw = _env(name, default)
    try:
        date.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a date in YYYY-MM-DD form") from exc
    return raw


def demo_start_date(home: str) -> str:
    """The first day `make demo` generated under ``home`` (it records it in ``<home>/start_date``,
    so the UI's partitions start where the demo's data does), else :data:`DEFAULT_START_DATE`."""
    path = Path(home) / START_DATE_FILE
    try:
        recorded = path.read_text().strip()
        date.fromisoformat(recorded)
        return recorded
    except (OSError, ValueError):
        return DEFAULT_START_DATE


def _uri(raw: str) -> str:
    """Local paths become absolute; URIs with a scheme (s3://…) pass through."""
    if "://" in raw:
        return raw.rstrip("/")
    return str(Path(raw).expanduser().resolve())


@dataclass(frozen=True)
class Settings:
    """Project settings (see README, "Configuration")."""

    home: str = field(default_factory=lambda: _uri(_env("STREAMREC_HOME", ".streamrec")))
    storage_uri: str = ""
    landing_uri: str = ""
    start_date: str = ""
    max_failure_rate: float = field(default_factory=lambda: _float("STREAMREC_MAX_FAILURE_RATE", 0.01))
    max_line_bytes: int = field(default_factory=lambda: int(_float("STREAMREC_MAX_LINE_BYTES", 1 << 20)))
    s3_endpoint_url: str = field(default_factory=lambda: _env("STREAMREC_S3_ENDPOINT_URL", ""))
    feast_online_store: str = field(default_factory=lambda: _env("STREAMREC_FEAST_ONLINE_STORE", "sqlite"))
    redis_url: str = field(default_factory=lambda: _env("STREAMREC_REDIS_URL", ""))
    mlflow_tracking_uri: str = field(default_factory=lambda: _env("MLFLOW_TRACKING_URI", ""))
    promotion_tolerance: float = field(default_factory=lambda: _float("STREAMREC_PROMOTION_TOLERANCE", 0.005))
    alert_webhook_url: str = field(default_factory=lambda: _env("STREAMREC_ALERT_WEBHOOK_URL", ""))
    sensor_interval_seconds: int = field(
        default_factory=lambda: int(_float("STREAMREC_SENSOR_INTERVAL_SECONDS", 30))
    )
    drift_psi_threshold: float = field(default_factory=lambda: _float("STREAMREC_DRIFT_PSI_THRESHOLD", 0.2))
    executor: str = field(default_factory=lambda: _env("STREAMREC_EXECUTOR", "forkserver"))
    max_concurrent_steps: int = field(default_factory=lambda: int(_float("STREAMREC_MAX_CONCURRENT_STEPS", 0)))
    engine: str = field(default_factory=lambda: _env("STREAMREC_ENGINE", "embedded"))
    spark_master: str = field(default_factory=lambda: _env("STREAMREC_SPARK_MASTER", "local[*]"))
    spark_conf: str = field(default_factory=lambda: _env("STREAMREC_SPARK_CONF", ""))
    spark_tasks: int = field(default_factory=lambda: int(_float("STREAMREC_SPARK_TASKS", 0)))

    def __post_init__(self) -> None:
        # Derived defaults depend on ``home``; frozen dataclass, hence object.__setattr__.
        if not self.start_date:
            object.__setattr__(self, "start_date", _date("STREAMREC_START_DATE", demo_start_date(self.home)))
        if not self.storage_uri:
            object.__setattr__(
                self, "storage_uri", _uri(_env("STREAMREC_STORAGE_URI", f"{self.home}/storage"))
            )
        if not self.landing_uri:
            object.__setattr__(
                self, "landing_uri", _uri(_env("STREAMREC_LANDING_URI", f"{self.home}/landing"))
            )
        if not self.mlflow_tracking_uri:
            object.__setattr__(self, "mlflow_tracking_uri", f"sqlite:///{self.home}/mlflow/mlflow.db")
        if self.feast_online_store not in ("sqlite", "redis"):
            raise ValueError(
                f"STREAMREC_FEAST_ONLINE_STORE must be 'sqlite' or 'redis', got {self.feast_online_store!r}"
            )
        if self.executor not in EXECUTORS:
            raise ValueError(f"STREAMREC_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"STREAMREC_ENGINE must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.spark_tasks < 0:
            raise ValueError(f"STREAMREC_SPARK_TASKS must be 0 (the cluster's parallelism) or more, got {self.spark_tasks}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(
                f"STREAMREC_MAX_FAILURE_RATE must be within [0, 1], got {self.max_failure_rate}"
            )

    @property
    def feast_dir(self) -> str:
        """Feast registry and SQLite online store (local state, even when storage is on S3)."""
        return f"{self.home}/feast"

    @property
    def mlflow_artifacts_uri(self) -> str:
        """Artifact root of new experiments with a local backend; empty for an MLflow server,
        which decides its own (e.g. ``--artifacts-destination s3://...``)."""
        if self.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
            return ""
        return f"{self.home}/mlflow/artifacts"


def get_settings() -> Settings:
    """Read the settings from the environment now (never cached: tests change the env)."""
    return Settings()
