"""Where the heavy assets compute: in the step's own process, or as tasks on a Spark cluster.

``STREAMREC_ENGINE=embedded`` (default): every asset computes in its Dagster step process.

``STREAMREC_ENGINE=spark``: the heavy assets (ingest, daily aggregates, window features,
ranker training) cut their day into independent pieces (line-aligned chunks of the landing
file, entity buckets, training days) and run each piece as a Spark task on the cluster at
``STREAMREC_SPARK_MASTER`` (``local[*]``, ``spark://host:7077``, ``k8s://...``, or a Spark
Connect URL ``sc://host:15002``). A task runs the *same* pure function as the embedded engine
(``streamrec_assets.core``) on its piece: there is one definition of each computation, and the
equivalence of the two engines is tested on a real standalone cluster.

Executors read asset storage and the landing zone through :mod:`streamrec_assets.storage`
(pyarrow + fsspec), so local paths on a shared filesystem and ``s3://`` URIs of any
S3-compatible store both work without Hadoop's S3 connector. The pieces' results come back to
the Dagster step (the Spark driver), which audits and publishes them exactly as the embedded
engine does (write-audit-publish): asset keys, partitions, layout, contracts and lineage do not
depend on the engine.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from streamrec_assets.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: A Spark task's work: ``fn(spec, shared) -> {name: bytes}`` (a module-level function).
TaskFn = Callable[[dict, Any], dict[str, bytes]]

#: Spark settings of every session, before STREAMREC_SPARK_CONF (which wins).
BASE_CONF = {
    "spark.app.name": "streamrec",
    "spark.driver.maxResultSize": "0",  # results are the day's tables, sized by the data
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.task.maxFailures": "4",  # a lost executor's task runs again elsewhere
    "spark.python.worker.reuse": "true",
}

_LOCK = threading.Lock()
_SESSIONS: dict[tuple, SparkSession] = {}


class EngineError(RuntimeError):
    """The Spark cluster could not be reached or refused the job."""


def parse_conf(raw: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas (STREAMREC_SPARK_CONF) as a dict."""
    conf: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"STREAMREC_SPARK_CONF: {part!r} is not key=value (pairs are separated by commas)")
        conf[key.strip()] = value.strip()
    return conf


class SparkEngine:
    """A Spark session for this process and a way to run pure functions as tasks on it."""

    def __init__(self, master: str = "local[*]", conf: dict[str, str] | None = None, tasks: int = 0):
        self.master = master
        self.conf = {**BASE_CONF, "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
                     **(conf or {})}
        self._tasks = tasks

    def __repr__(self) -> str:
        return f"SparkEngine({self.master}, {self._tasks or 'default'} tasks per day)"  # no session needed

    @property
    def is_connect(self) -> bool:
        return self.master.startswith("sc://")

    def session(self) -> SparkSession:
        """This process's session with the cluster (made once, reused by every asset of the step)."""
        key = (self.master, tuple(sorted(self.conf.items())))
        with _LOCK:
            session = _SESSIONS.get(key)
            if session is not None:
                return session
            try:
                from pyspark.sql import SparkSession
            except ImportError as exc:  # pragma: no cover - pyspark is a dependency
                raise EngineError("STREAMREC_ENGINE=spark needs pyspark (pip install pyspark)") from exc
            # The executors' interpreter: PySpark takes it from the driver's PYSPARK_PYTHON (not from
            # spark.pyspark.python unless spark-submit started the driver).
            os.environ["PYSPARK_PYTHON"] = self.conf["spark.pyspark.python"]
            builder = SparkSession.builder
            builder = builder.remote(self.master) if self.is_connect else builder.master(self.master)
            for k, v in self.conf.items():
                if not (self.is_connect and k.startswith("spark.driver")):
                    builder = builder.config(k, v)
            try:
                session = builder.getOrCreate()
            except Exception as exc:
                raise EngineError(f"could not start a Spark session on {self.master}: {exc}") from exc
            if not self.is_connect:
                session.sparkContext.setLogLevel("WARN")
            _SESSIONS[key] = session
            return session

    def tasks(self) -> int:
        """Spark tasks per day and step: STREAMREC_SPARK_TASKS, else the cluster's parallelism."""
        if self._tasks:
            return self._tasks
        session = self.session()
        if self.is_connect:
            return int(session.conf.get("spark.default.parallelism", "2") or 2)
        return max(1, int(session.sparkContext.defaultParallelism))

    def map(self, fn: TaskFn, specs: Sequence[dict], shared: Any = None, label: str = "") -> list[dict[str, bytes]]:
        """``fn(spec, shared)`` for every spec, one Spark task each; the results in spec order.

        ``fn`` must be importable on the executors (a function of this package); ``shared``
        travels with the tasks (catalogue ids, the item catalogue). Each result maps names to
        bytes (Parquet tables, JSON); a task that fails is retried by Spark, and the job fails
        as a whole when one keeps failing: nothing is returned in part.
        """
        if not specs:
            return []
        session = self.session()
        n = len(specs)
        runner = _Runner(fn, list(specs), shared)
        if not self.is_connect and label:
            session.sparkContext.setJobDescription(label)
        frame = session.range(0, n, 1, n).mapInArrow(runner, "task long, name string, data binary")
        try:
            table = frame.toArrow()
        except Exception as exc:
            raise EngineError(f"Spark job {label or fn.__name__} failed on {self.master}: {_first_line(exc)}") from exc
        results: list[dict[str, bytes]] = [{} for _ in range(n)]
        for task, name, data in zip(
            table.column("task").to_pylist(), table.column("name").to_pylist(), table.column("data").to_pylist(),
            strict=True,
        ):
            results[task][name] = data
        return results


_RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")
_WRAPPERS = ("PythonException", "Py4JJavaError", "SparkException", "TaskSetManager")


def _first_line(exc: BaseException) -> str:
    """The error a task raised (the last ``SomeError: message`` of the Python traceback Spark
    wraps), else the first line of the message."""
    text = str(exc).strip()
    raised = [m.group(0).strip() for m in map(_RAISED.match, text.splitlines())
              if m and not m.group(1).endswith(_WRAPPERS)]
    if raised:
        return raised[-1]
    return text.splitlines()[0] if text else type(exc).__name__


class _Runner:
    """The function a Spark partition runs: its task ids in, one row per named result out."""

    def __init__(self, fn: TaskFn, specs: list[dict], shared: Any):
        self.fn, self.specs, self.shared = fn, specs, shared

    def __call__(self, batches):
        import pyarrow as pa

        for batch in batches:
            for task in batch.column(0).to_pylist():
                out = self.fn(self.specs[task], self.shared)
                names = sorted(out)
                yield pa.RecordBatch.from_pydict(
                    {
                        "task": pa.array([task] * len(names), pa.int64()),
                        "name": pa.array(names, pa.string()),
                        "data": pa.array([out[k] for k in names], pa.binary()),
                    }
                )


def spark_engine(settings: Settings | None = None) -> SparkEngine | None:
    """The Spark engine when STREAMREC_ENGINE=spark, else None (the embedded engine)."""
    settings = settings or get_settings()
    if settings.engine != "spark":
        return None
    return SparkEngine(settings.spark_master, parse_conf(settings.spark_conf), settings.spark_tasks)


def stop_sessions() -> None:
    """Stop this process's Spark sessions (tests; a step process stops its own at exit)."""
    with _LOCK:
        for session in _SESSIONS.values():
            try:
                session.stop()
            except Exception:  # noqa: BLE001 - already gone
                pass
        _SESSIONS.clear()
