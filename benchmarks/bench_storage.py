"""One day of the whole graph on local disk vs on S3 (SeaweedFS), measured in the same run.

    .venv/bin/python benchmarks/bench_storage.py [--days 6] [--events-per-day 2000]

History (all days but the last) is materialised first on each backend; the figure is
the wall time of `dagster asset materialize --select '*' --partition <last day>` on
each, and their ratio (S3 / local).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def materialize(env: dict, select_range: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "streamrec_assets.definitions",
                           "--select", "*", *select_range], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return time.perf_counter() - t0


def run_backend(name: str, env: dict, start: str, end: str, events: int) -> float:
    subprocess.run([str(BIN / "streamrec"), "generate", "--start", start, "--end", end, "--events-per-day",
                    str(events)], env=env, cwd=REPO, check=True, capture_output=True)
    history_end = (date.fromisoformat(end) - timedelta(days=1)).isoformat()
    materialize(env, ["--partition-range", f"{start}...{history_end}"])
    seconds = materialize(env, ["--partition", end])
    print(f"{name:<6} one day ({end}) of the whole graph: {seconds:6.1f} s")
    return seconds


def main() -> int:
    from streamrec_assets_tests.servers import seaweed

    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--events-per-day", type=int, default=2000)
    args = parser.parse_args()
    start = "2026-01-01"
    end = (date.fromisoformat(start) + timedelta(days=args.days - 1)).isoformat()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_", "AWS_"))}
    with tempfile.TemporaryDirectory() as tmp, seaweed(Path(tmp) / "weed") as (endpoint, key, secret, bucket):
        results = {}
        for name in ("local", "s3"):
            home = Path(tmp) / name
            (home / "dagster_home").mkdir(parents=True)
            (home / "dagster_home" / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
            env = {**base, "STREAMREC_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
                   "PYTHONWARNINGS": "ignore"}
            if name == "s3":
                env.update(STREAMREC_STORAGE_URI=f"s3://{bucket}/bench/storage",
                           STREAMREC_LANDING_URI=f"s3://{bucket}/bench/landing", STREAMREC_S3_ENDPOINT_URL=endpoint,
                           AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
            results[name] = run_backend(name, env, start, end, args.events_per_day)
    print(f"S3 / local: {results['s3'] / results['local']:.2f}x ({args.events_per_day} events/day, "
          f"{args.days - 1} days of history)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
