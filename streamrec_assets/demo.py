"""`make demo`: generate a landing zone, materialise the graph through the real CLI, print a summary.

Everything lives under ``STREAMREC_HOME`` (default ``./.streamrec``): the
landing zone, asset storage and the demo's ``DAGSTER_HOME``, so the Dagster
UI (`make dev`) shows the demo's runs and materialisations afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from streamrec_assets.settings import START_DATE_FILE, get_settings

PARTITIONED = (
    "raw_events",
    "raw_events_dlq",
    "user_daily_activity",
    "item_daily_activity",
    "daily_coplay_pairs",
    "daily_coplay_history",
    "daily_coplay_edges",
    "user_item_daily_outcomes",
    "user_features",
    "item_features",
    "feast_feature_views",
    "taste_model",
    "training_examples",
    "retrieval_model",
    "ranking_model",
    "model_evaluation",
    "registered_model",
    "batch_recommendations",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def dagster_home(home: str) -> str:
    """The demo's DAGSTER_HOME, seeded with the repository's dagster.yaml."""
    path = Path(os.environ.get("DAGSTER_HOME") or Path(home) / "dagster_home")
    path.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "deploy" / "local" / "dagster.yaml"
    if source.exists() and not (path / "dagster.yaml").exists():
        shutil.copyfile(source, path / "dagster.yaml")
    return str(path)


def materialize(select: str, start: str, end: str, env: dict[str, str]) -> None:
    from streamrec_assets.backfill import Step

    cmd = Step("demo", (select,), start, end).command()
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"dagster asset materialize failed (exit {proc.returncode})")


def summarize(storage_uri: str, start: str, end: str) -> list[dict]:
    """Rows per asset over the range, read from the Parquet footers (cheap)."""
    import pyarrow.parquet as pq

    from streamrec_assets.storage import TableStore, is_local

    store = TableStore(storage_uri)
    days = _days(start, end)
    rows = []
    for asset in PARTITIONED:
        total, columns = 0, []
        for day in days:
            path = store.partition_path(asset, day)
            meta = pq.ParquetFile(str(path) if is_local(path) else path.open("rb")).metadata
            total += meta.num_rows
            columns = meta.schema.names
        rows.append({"asset": asset, "partitions": len(days), "rows": total, "columns": columns})
    return rows


def _days(start: str, end: str) -> list[str]:
    from streamrec_assets.core.dates import day_range

    return day_range(start, end)


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="streamrec-demo", description=__doc__)
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    parser.add_argument("--end", default=yesterday, help="last day (default: yesterday, UTC: the newest partition)")
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--events-per-day", type=int, default=8000)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    end = args.end
    start = (date.fromisoformat(end) - timedelta(days=args.days - 1)).isoformat()
    # The partitions start where the demo's data does: recorded for `make dev` and later runs
    # (STREAMREC_START_DATE still overrides it).
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    (Path(settings.home) / START_DATE_FILE).write_text(start + "\n")

    from streamrec_assets import datagen

    t0 = time.perf_counter()
    print(f"Landing zone: {settings.landing_uri}\nAsset storage: {settings.storage_uri}")
    datagen.generate(
        settings.landing_uri, start, end, args.events_per_day, args.seed, users=args.users, items=args.items
    )
    print(f"Generated {args.days} days ({start}..{end}) in {time.perf_counter() - t0:.1f}s")

    env = {**os.environ, "DAGSTER_HOME": dagster_home(settings.home), "STREAMREC_HOME": settings.home,
           "STREAMREC_START_DATE": start}
    from streamrec_assets.automation import pool_limit_commands

    for cmd in pool_limit_commands():
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    t1 = time.perf_counter()
    materialize("*", start, end, env)
    print(f"Materialised the graph for {start}...{end} in {time.perf_counter() - t1:.1f}s\n")

    summary = summarize(settings.storage_uri, start, end)
    print(f"{'asset':<22}{'partitions':>11}{'rows':>12}")
    for row in summary:
        print(f"{row['asset']:<22}{row['partitions']:>11}{row['rows']:>12,}")
    by_asset = {r["asset"]: r for r in summary}
    valid, rejected = by_asset["raw_events"]["rows"], by_asset["raw_events_dlq"]["rows"]
    print(
        f"\nLanding records: {valid + rejected:,}  valid: {valid:,}  rejected to the DLQ: {rejected:,} "
        f"({rejected / max(1, valid + rejected):.2%})"
    )
    for asset in ("user_features", "item_features"):
        cols = [c for c in by_asset[asset]["columns"] if c not in ("date", "user_id", "item_id")]
        print(f"{asset} columns ({len(cols)}): {', '.join(cols)}")
    print_models(settings.storage_uri, end)
    print(f"\nDAGSTER_HOME={env['DAGSTER_HOME']}  (open the UI with `make dev`)")
    print(f"MLflow: {settings.mlflow_tracking_uri}  (open its UI with `make mlflow-ui`)")
    return 0


def print_models(storage_uri: str, day: str) -> None:
    """The evaluation of the last day and the registry's decision."""
    from streamrec_assets.storage import TableStore, read_parquet

    store = TableStore(storage_uri)
    metrics = read_parquet(store.partition_path("model_evaluation", day))
    registry = read_parquet(store.partition_path("registered_model", day)).iloc[0]
    recs = read_parquet(store.partition_path("batch_recommendations", day))
    print(f"\nHold-out evaluation on {day} (users with a rankable slate: {int(metrics['users'].max())})")
    print(f"{'method':<12}{'NDCG@20':>10}{'Recall@100':>12}")
    for row in metrics.itertuples():
        print(f"{row.method:<12}{row.ndcg_at_20:>10.4f}{row.recall_at_100:>12.4f}")
    by = metrics.set_index("method")["ndcg_at_20"]
    print(f"ranker NDCG@20 / popularity NDCG@20 = {by['ours'] / by['popularity']:.2f}x")
    print(
        f"\nRegistry: streamrec-ranker version {registry['version']} ({registry['status']}); "
        f"champion is version {registry['champion_version']}.\n  {registry['reason']}"
    )
    print(f"Batch recommendations for {day}: {recs['user_id'].nunique()} users x top-{recs['rank'].max()}")


if __name__ == "__main__":
    raise SystemExit(main())
