"""Benchmark: peak memory of a 30-day single-run range vs one day (bounded memory for ranges).

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_range_memory.py``).

1. Generates 31 days of synthetic events (default 200,000 events/day, cached under
   ``.bench/range/landing``) and ingests the catalogues (not measured).
2. Measures, each in a fresh process running ``dagster.materialize`` in-process on a
   fresh Dagster instance:

   ``range_30d``  ingest + daily aggregates + rolling features for the 30 days
                  2026-01-01..2026-01-30 as ONE single-run range;
   ``one_day``    the same assets for day 31 alone (its 28-day window read from the
                  aggregates the range wrote).

   Peak memory is the child's VmHWM (peak resident set); time is the run's wall time.
3. Prints both and the ratio range/one-day. Each asset walks a range day by day and
   publishes each partition as it goes, so the ratio stays near 1 (the target is <= 1.5).

Smoke run: ``.venv/bin/python benchmarks/bench_range_memory.py --events-per-day 5000 --out /tmp/rangesmoke``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchlib import peak_mb, run_in_fresh_process

REPO = Path(__file__).resolve().parents[1]
SEED = 7
START, RANGE_END, ONE_DAY = "2026-01-01", "2026-01-30", "2026-01-31"
SELECTION = ["raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity", "user_features",
             "item_features"]


def _settings(out: Path):
    from streamrec_assets.settings import Settings

    return Settings(home=str(out / "home"), storage_uri=str(out / "home" / "storage"),
                    landing_uri=str(out / "landing"), start_date=START)


def child(out: str, start: str, end: str, selection: list[str]) -> dict:
    """Materialise ``selection`` over [start, end] in this process; returns time and peak memory."""
    out = Path(out)
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from streamrec_assets.definitions import all_assets, build_resources

    settings = _settings(out)
    home = out / "home" / f"dagster_{start}_{end}_{len(selection)}"
    home.mkdir(parents=True, exist_ok=True)
    before = peak_mb()
    t0 = time.perf_counter()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        partitioned = not set(selection) <= {"user_catalog", "item_catalog"}
        tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end} if end != start else {}
        result = dg.materialize(
            all_assets, selection=selection, resources=build_resources(settings), instance=instance,
            tags=tags, partition_key=start if end == start and partitioned else None,
        )
        assert result.success
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb(), "peak_before_mb": before}


def run_child(out: Path, start: str, end: str, selection: list[str]) -> dict:
    return run_in_fresh_process("bench_range_memory", "child", str(out), start, end, selection,
                                env={"STREAMREC_START_DATE": START}, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-day", type=int, default=200_000)
    parser.add_argument("--out", default=str(REPO / ".bench" / "range"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    from streamrec_assets import datagen

    t0 = time.perf_counter()
    datagen.generate(str(out / "landing"), START, ONE_DAY, args.events_per_day, SEED)
    print(f"landing zone: 31 days x {args.events_per_day:,} events/day ({time.perf_counter() - t0:.1f} s)", flush=True)
    import shutil

    shutil.rmtree(out / "home", ignore_errors=True)  # every measurement starts from empty asset storage
    run_child(out, START, START, ["user_catalog", "item_catalog"])
    rng = run_child(out, START, RANGE_END, SELECTION)
    one = run_child(out, ONE_DAY, ONE_DAY, SELECTION)
    print(f"\n{'measurement':<46}{'seconds':>10}{'peak MB':>10}")
    print(f"{'one day (2026-01-31, 28-day window of history)':<46}{one['seconds']:>10.1f}{one['peak_mb']:>10.0f}")
    print(f"{'30-day single-run range (2026-01-01..30)':<46}{rng['seconds']:>10.1f}{rng['peak_mb']:>10.0f}")
    ratio = rng["peak_mb"] / one["peak_mb"]
    print(f"30-day range / one day: peak memory {ratio:.2f}x (target <= 1.5x), time {rng['seconds'] / one['seconds']:.1f}x")
    (out / "results.json").write_text(json.dumps({"events_per_day": args.events_per_day, "one_day": one,
                                                  "range_30d": rng, "memory_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
