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
