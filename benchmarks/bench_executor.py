"""How a run's steps are executed: one whole-graph day at demo scale, per executor.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_executor.py``). In a fresh
DAGSTER_HOME: generates DAYS days at EVENTS events/day, materialises the days before D in one
in-process run (not measured), then materialises the whole graph for day D once per executor
(``STREAMREC_EXECUTOR``) through the real CLI, ``dagster asset materialize --select '*'
--partition D``, and reports, from the run's event log:

* wall: the CLI command, start to exit (interpreter start and code loading included);
* run: RUN_START to RUN_SUCCESS;
* idle: the part of the run during which no step was executing (process start-up, imports).

The baseline is the multiprocess executor with spawned step processes (Dagster's default);
ratios are against it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START, DAY = "2026-01-01", "2026-01-04"
EXECUTORS = ("multiprocess", "forkserver", "in_process")


def _run_stats(dagster_home: str) -> tuple[float, float]:
    """(run seconds, seconds with no step executing) of the newest run."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = dagster_home
    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        events = instance.all_logs(run.run_id)
    kinds = dg.DagsterEventType
    start = next(e.timestamp for e in events if e.dagster_event and e.dagster_event.event_type == kinds.RUN_START)
    end = next(e.timestamp for e in events if e.dagster_event and e.dagster_event.event_type == kinds.RUN_SUCCESS)
    intervals, open_steps = [], {}
    for e in events:
        kind = e.dagster_event.event_type if e.dagster_event else None
        if kind == kinds.STEP_START:
            open_steps[e.step_key] = e.timestamp
        elif kind in (kinds.STEP_SUCCESS, kinds.STEP_FAILURE) and e.step_key in open_steps:
            intervals.append((open_steps.pop(e.step_key), e.timestamp))
    busy, cursor = 0.0, start
    for a, b in sorted(intervals):
        a = max(a, cursor)
        if b > a:
            busy += b - a
            cursor = b
    return end - start, (end - start) - busy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events-per-day", type=int, default=10_000)
    parser.add_argument("--out", default=str(REPO / ".bench" / "executor"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=out))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_"))}
    env.update(STREAMREC_HOME=str(root / "home"), DAGSTER_HOME=str(root / "dagster_home"), PYTHONWARNINGS="ignore")
    Path(env["DAGSTER_HOME"]).mkdir(parents=True)
    (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def cli(*cmd: str, executor: str = "in_process") -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**env, "STREAMREC_EXECUTOR": executor}, cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{' '.join(cmd)} failed")
        return time.perf_counter() - t0

    before = "2026-01-03"
    cli(str(BIN / "streamrec"), "generate", "--start", START, "--end", DAY, "--events-per-day", str(args.events_per_day))
    cli(str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions", "--select", "*",
        "--partition-range", f"{START}...{before}")
    print(f"one whole-graph day ({DAY}, {args.events_per_day:,} events/day, history from {START}), "
          "dagster asset materialize --select '*'")
    results = {}
    for executor in EXECUTORS:
        wall = cli(str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions", "--select",
                   "*", "--partition", DAY, executor=executor)
        run, idle = _run_stats(env["DAGSTER_HOME"])
        results[executor] = (wall, run, idle)
    base = results["multiprocess"][0]
    print(f"{'executor':<13} {'wall s':>8} {'run s':>8} {'idle s':>8} {'vs spawn':>9}")
    for executor, (wall, run, idle) in results.items():
        print(f"{executor:<13} {wall:8.1f} {run:8.1f} {idle:8.1f} {wall / base:8.2f}x")


if __name__ == "__main__":
    main()
