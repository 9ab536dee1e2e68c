"""Settings: where the partitions start, and the executor knob."""

from __future__ import annotations

import pytest

from streamrec_assets.settings import DEFAULT_START_DATE, START_DATE_FILE, Settings


def test_partitions_start_where_the_demo_started_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("STREAMREC_START_DATE", raising=False)
    assert Settings(home=str(tmp_path)).start_date == DEFAULT_START_DATE
    (tmp_path / START_DATE_FILE).write_text("2026-10-25\n")  # what `make demo` records
    assert Settings(home=str(tmp_path)).start_date == "2026-10-25"
    monkeypatch.setenv("STREAMREC_START_DATE", "2026-03-01")
    assert Settings(home=str(tmp_path)).start_date == "2026-03-01"
    assert Settings(home=str(tmp_path), start_date="2026-02-02").start_date == "2026-02-02"
    (tmp_path / START_DATE_FILE).write_text("not a date")
    monkeypatch.delenv("STREAMREC_START_DATE")
    assert Settings(home=str(tmp_path)).start_date == DEFAULT_START_DATE


def test_executor_choice(tmp_path, monkeypatch):
    import dagster as dg

    from streamrec_assets.definitions import build_executor

    monkeypatch.setenv("STREAMREC_EXECUTOR", "in_process")
    assert build_executor(Settings(home=str(tmp_path))) is dg.in_process_executor
    monkeypatch.setenv("STREAMREC_EXECUTOR", "forkserver")
    forkserver = build_executor(Settings(home=str(tmp_path)))
    assert forkserver.name == "multiprocess"
    monkeypatch.setenv("STREAMREC_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="STREAMREC_EXECUTOR"):
        Settings(home=str(tmp_path))


def test_engine_choice(monkeypatch):
    from streamrec_assets.engine import spark_engine

    monkeypatch.delenv("STREAMREC_ENGINE", raising=False)
    assert Settings().engine == "embedded" and spark_engine() is None
    monkeypatch.setenv("STREAMREC_ENGINE", "spark")
    monkeypatch.setenv("STREAMREC_SPARK_MASTER", "spark://10.0.0.5:7077")
    monkeypatch.setenv("STREAMREC_SPARK_CONF", "spark.executor.memory=8g, spark.executor.cores=4")
    monkeypatch.setenv("STREAMREC_SPARK_TASKS", "16")
    engine = spark_engine()
    assert engine.master == "spark://10.0.0.5:7077" and engine.tasks() == 16  # no session needed
    assert engine.conf["spark.executor.memory"] == "8g" and engine.conf["spark.executor.cores"] == "4"
    assert engine.conf["spark.driver.maxResultSize"] == "0"
    monkeypatch.setenv("STREAMREC_ENGINE", "dask")
    with pytest.raises(ValueError, match="STREAMREC_ENGINE must be one of embedded, spark"):
        Settings()
    monkeypatch.setenv("STREAMREC_ENGINE", "spark")
    monkeypatch.setenv("STREAMREC_SPARK_CONF", "spark.executor.memory")
    with pytest.raises(ValueError, match="key=value"):
        spark_engine()
