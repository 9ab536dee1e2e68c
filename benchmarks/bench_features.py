"""Benchmark: rolling user features from daily aggregates vs. recomputed from raw events.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_features.py``).

1. Generates 28 days (2026-01-01 .. 2026-01-28) of synthetic events at 1,000,000
   events/day (seed 7, default catalogue size for that volume) into
   ``<out>/landing``.  ``datagen.generate`` skips days whose marker parameters
   match, so reruns reuse the files.
2. Prepares (not measured) the per-day ``user_daily_activity`` aggregates as
   Parquet under ``<out>/daily/``, each with a sidecar naming the landing file
   (sha256) and generation parameters it came from; reruns reuse them.
3. Measures, each in a fresh subprocess so that peak memory is per measurement:

   ``raw_events``               read the last day's ``.jsonl.gz`` + ``ingest_day``
   ``user_features_incremental`` load 28 daily-aggregate Parquet files +
                                ``rolling_features`` for the last day (what the asset does)
   ``user_features_recompute``   read + ingest 28 raw days, ``user_daily_activity`` over
                                all of them, ``rolling_features`` for the last day

   Time is ``time.perf_counter`` around the measured work only (imports and the
   catalogue read happen before the clock starts).  Peak memory is the child's
   ``VmHWM`` (peak resident set of its own address space, from
   ``/proc/self/status``); where that is unavailable, ``getrusage(RUSAGE_SELF).ru_maxrss``.
   VmHWM is preferred because on Linux ``ru_maxrss`` can carry over the parent's
   resident size across fork/exec.  It includes the interpreter and the imported
   libraries; the table also shows the resident size just before the clock started.
4. Checks that the two ``user_features`` results are identical and prints a table
   with the recompute/incremental ratios (time and peak memory, both measured in
   this run), plus events/s for the one-day ingest.  Figures go to
   ``<out>/results.json``.

The recompute baseline keeps, per ingested day, only the five columns that
``user_daily_activity`` reads (date, user_id, item_id, event_type,
watch_seconds); keeping every column of 28 raw days would need several times
more memory, so the memory ratio reported is a conservative one.

Smoke run: ``.venv/bin/python benchmarks/bench_features.py --events-per-day 20000 --out /tmp/benchsmoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from benchlib import peak_mb, resident_mb

REPO = Path(__file__).resolve().parents[1]
START = "2026-01-01"
SEED = 7
DEFAULT_EVENTS_PER_DAY = 1_000_000
DEFAULT_DAYS = 28
# Only these columns of the raw events are read by ``user_daily_activity``.
ACTIVITY_COLUMNS = ["date", "user_id", "item_id", "event_type", "watch_seconds"]

MEASUREMENTS = ("raw_events", "user_features_incremental", "user_features_recompute")
LABELS = {
    "raw_events": "raw_events (1 day: read + ingest_day)",
    "user_features_incremental": "user_features incremental (28 daily aggregates)",
    "user_features_recompute": "user_features recomputed from raw (28 days)",
}


# --------------------------------------------------------------------------- helpers


def day_range(start: str, days: int) -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=k)).isoformat() for k in range(days)]


def landing_dir(out: Path) -> str:
    return str(out / "landing")


def daily_path(out: Path, day: str) -> Path:
    return out / "daily" / "user_daily_activity" / f"date={day}" / "data.parquet"


def read_catalogs(landing: str):

    from streamrec_assets.landing import Landing

    zone = Landing(landing)
    return zone.read_catalog("users"), zone.read_catalog("items")


def read_marker(landing: str, day: str) -> dict:
    from streamrec_assets.landing import Landing

    return json.loads(Landing(landing).marker_path(day).read_bytes())


def ingest_activity_columns(landing: str, day: str, user_ids, item_ids):
    """Read one raw day and ingest it; the valid rows' aggregation columns and the counts."""
    from streamrec_assets.core.ingest import ingest_day
    from streamrec_assets.landing import Landing

    delivery = Landing(landing).read_delivery(day)
    result = ingest_day(delivery.text, day, user_ids, item_ids)
    return result.valid[ACTIVITY_COLUMNS], result.total_records, len(result.valid), len(result.rejected)


def _preload() -> None:
    """Import everything the measured code imports lazily, so no import is timed."""
    import pandas  # noqa: F401
    import pandera.pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import streamrec_assets.contracts  # noqa: F401
    import streamrec_assets.core.features  # noqa: F401
    import streamrec_assets.core.ingest  # noqa: F401


# --------------------------------------------------------------------------- child steps


def step_generate(out: Path, days: list[str], events_per_day: int) -> dict:
    from streamrec_assets import datagen

    t0 = time.perf_counter()
    summary = datagen.generate(landing_dir(out), days[0], days[-1], events_per_day, SEED)
    return {
        "seconds": time.perf_counter() - t0,
        "users": datagen.default_users(events_per_day),
        "items": datagen.default_items(events_per_day),
        "generated": sum(1 for s in summary if not s["skipped"]),
        "skipped": sum(1 for s in summary if s["skipped"]),
        "records": sum(int(s["records"]) for s in summary),
    }


def _prepare_day(out: str, day: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from streamrec_assets.core.features import user_daily_activity

    landing = landing_dir(Path(out))
    users, items = read_catalogs(landing)
    valid, _, _, _ = ingest_activity_columns(
        landing, day, users["user_id"].to_numpy(), items["item_id"].to_numpy()
    )
    daily = user_daily_activity(valid, items)
    target = daily_path(Path(out), day)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pandas(daily, preserve_index=False), tmp, compression="zstd")
    os.replace(tmp, target)
    return day


def _daily_source(landing: str, day: str) -> dict:
    marker = read_marker(landing, day)
    return {"sha256": marker["sha256"], "params": marker["params"]}


def step_prepare(out: Path, days: list[str]) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    landing = landing_dir(out)
    todo = []
    for day in days:
        sidecar = daily_path(out, day).with_name("_SOURCE.json")
        try:
            fresh = daily_path(out, day).exists() and json.loads(sidecar.read_text()) == _daily_source(
                landing, day
            )
        except (OSError, ValueError):
            fresh = False
        if not fresh:
            todo.append(day)
    t0 = time.perf_counter()
    if todo:
        workers = max(1, min(len(todo), os.cpu_count() or 1, 4))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for day in pool.map(_prepare_day, [str(out)] * len(todo), todo):
                sidecar = daily_path(out, day).with_name("_SOURCE.json")
                sidecar.write_text(json.dumps(_daily_source(landing, day), sort_keys=True))
    return {"seconds": time.perf_counter() - t0, "computed": len(todo), "cached": len(days) - len(todo)}


def measure_raw_events(out: Path, days: list[str], result_dir: Path) -> dict:
    from streamrec_assets.core.ingest import ingest_day
    from streamrec_assets.landing import Landing

    landing = landing_dir(out)
    day = days[-1]
    users, items = read_catalogs(landing)
    user_ids, item_ids = users["user_id"].to_numpy(), items["item_id"].to_numpy()
    before = resident_mb()
    t0 = time.perf_counter()
    delivery = Landing(landing).read_delivery(day)  # sha256 + record count + gzip checked
    data = delivery.data
    result = ingest_day(delivery.text, day, user_ids, item_ids)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_mb": peak_mb(),
        "rss_before_mb": before,
        "day": day,
        "gz_bytes": len(data),
        "records": result.total_records,
        "valid": len(result.valid),
        "rejected": len(result.rejected),
        "events_per_s": result.total_records / seconds,
    }


def measure_incremental(out: Path, days: list[str], result_dir: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd
    import pyarrow.parquet as pq

    from streamrec_assets.core.features import rolling_features

    paths = [str(daily_path(out, day)) for day in days]
    before = resident_mb()
    t0 = time.perf_counter()
    # As the IO manager loads the asset's 28 upstream partitions: threaded reads, one concat.
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        frames = list(pool.map(lambda p: pq.read_table(p).to_pandas(), paths))
    daily = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    feats = rolling_features(daily, [days[-1]], "user_id", first_day=days[0])
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    feats.to_pickle(result_dir / "incremental.pkl")
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "rss_before_mb": before,
        "daily_rows": len(daily),
        "feature_rows": len(feats),
        "parquet_bytes": sum(os.path.getsize(p) for p in paths),
    }


def measure_recompute(out: Path, days: list[str], result_dir: Path) -> dict:
    import pandas as pd

    from streamrec_assets.core.features import rolling_features, user_daily_activity

    landing = landing_dir(out)
    users, items = read_catalogs(landing)
    user_ids, item_ids = users["user_id"].to_numpy(), items["item_id"].to_numpy()
    before = resident_mb()
    t0 = time.perf_counter()
    frames, records = [], 0
    for day in days:
        valid, total, _, _ = ingest_activity_columns(landing, day, user_ids, item_ids)
        frames.append(valid)
        records += total
    events = pd.concat(frames, ignore_index=True)
    del frames
    daily = user_daily_activity(events, items)
    feats = rolling_features(daily, [days[-1]], "user_id", first_day=days[0])
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    feats.to_pickle(result_dir / "recompute.pkl")
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "rss_before_mb": before,
        "records": records,
        "valid_events": len(events),
        "daily_rows": len(daily),
        "feature_rows": len(feats),
    }


def step_compare(out: Path, days: list[str], result_dir: Path) -> dict:
    import pandas as pd

    def load(name: str) -> pd.DataFrame:
        frame = pd.read_pickle(result_dir / f"{name}.pkl")
        return frame.sort_values("user_id", kind="stable").reset_index(drop=True)

    incremental, recompute = load("incremental"), load("recompute")
    try:
        pd.testing.assert_frame_equal(incremental, recompute, check_exact=True)
        return {"match": True, "rows": len(incremental), "columns": incremental.shape[1], "detail": ""}
    except AssertionError as err:
        return {
            "match": False,
            "rows": [len(incremental), len(recompute)],
            "columns": [incremental.shape[1], recompute.shape[1]],
            "detail": str(err)[:2000],
        }


STEPS = {
    "generate": lambda out, days, epd, rd: step_generate(out, days, epd),
    "prepare": lambda out, days, epd, rd: step_prepare(out, days),
    "raw_events": lambda out, days, epd, rd: measure_raw_events(out, days, rd),
    "user_features_incremental": lambda out, days, epd, rd: measure_incremental(out, days, rd),
    "user_features_recompute": lambda out, days, epd, rd: measure_recompute(out, days, rd),
    "compare": lambda out, days, epd, rd: step_compare(out, days, rd),
}


def child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    _preload()
    days = day_range(START, args.days)
    result = STEPS[args.child](Path(args.out), days, args.events_per_day, Path(args.result_dir))
    Path(args.result_file).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def run_child(step: str, args: argparse.Namespace, result_dir: Path) -> dict:
    """Run one step in a fresh interpreter and return its JSON result."""
    result_file = result_dir / f"{step}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        step,
        "--events-per-day",
        str(args.events_per_day),
        "--days",
        str(args.days),
        "--out",
        str(args.out),
        "--result-dir",
        str(result_dir),
        "--result-file",
        str(result_file),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return json.loads(result_file.read_text())


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def print_table(results: dict, ratios: dict, compare: dict, params: dict) -> None:
    print()
    print(
        f"StreamRec feature benchmark: {params['days']} days x {params['events_per_day']:,} events/day "
        f"(seed {params['seed']}, {params['users']:,} users, {params['items']:,} items), "
        f"python {params['python']}, pandas {params['pandas']}, {params['cpus']} CPUs"
    )
    width = max(len(v) for v in LABELS.values())
    header = f"{'measurement':<{width}}  {'seconds':>9}  {'peak MB':>9}  {'RSS at start MB':>15}"
    print(header)
    print("-" * len(header))
    for name in MEASUREMENTS:
        r = results[name]
        print(
            f"{LABELS[name]:<{width}}  {r['seconds']:>9.2f}  {r['peak_mb']:>9.1f}  {r['rss_before_mb']:>15.1f}"
        )
    print("-" * len(header))
    t, m = ratios["time"], ratios["peak_memory"]
    print(f"recompute / incremental: time {t:,.1f}x, peak memory {m:,.1f}x")
    raw = results["raw_events"]
    print(
        f"raw_events ingest ({raw['day']}): {raw['records']:,} records "
        f"({raw['valid']:,} valid, {raw['rejected']:,} rejected) in {raw['seconds']:.2f} s "
        f"= {raw['events_per_s']:,.0f} events/s"
    )
    inc, rec = results["user_features_incremental"], results["user_features_recompute"]
    print(
        f"incremental read {inc['daily_rows']:,} daily-aggregate rows "
        f"({inc['parquet_bytes'] / 2**20:.1f} MB Parquet); recompute ingested {rec['records']:,} raw records"
    )
    if compare["match"]:
        print(
            f"results identical: yes ({compare['rows']:,} feature rows x {compare['columns']} columns, "
            "assert_frame_equal after sorting by user_id)"
        )
    else:
        print(f"results identical: NO\n{compare['detail']}")


def parent_main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    days = day_range(START, args.days)
    print(f"landing zone: {landing_dir(out)} ({days[0]} .. {days[-1]}, {args.events_per_day:,} events/day)")
    with tempfile.TemporaryDirectory(prefix="bench-", dir=out) as tmp:
        result_dir = Path(tmp)
        gen = run_child("generate", args, result_dir)
        print(
            f"generate: {gen['generated']} day(s) generated, {gen['skipped']} cached, "
            f"{gen['records']:,} records, {gen['seconds']:.1f} s"
        )
        prep = run_child("prepare", args, result_dir)
        print(
            f"prepare daily aggregates: {prep['computed']} day(s) computed, {prep['cached']} cached, "
            f"{prep['seconds']:.1f} s (not measured)"
        )
        results = {}
        for name in MEASUREMENTS:
            results[name] = run_child(name, args, result_dir)
            print(
                f"measured {name}: {results[name]['seconds']:.2f} s, peak {results[name]['peak_mb']:.1f} MB"
            )
        compare = run_child("compare", args, result_dir)

    inc, rec = results["user_features_incremental"], results["user_features_recompute"]
    ratios = {
        "time": _ratio(rec["seconds"], inc["seconds"]),
        "peak_memory": _ratio(rec["peak_mb"], inc["peak_mb"]),
        "baseline": "user_features_incremental",
        "compared": "user_features_recompute",
    }
    import importlib.metadata as md

    params = {
        "start": days[0],
        "end": days[-1],
        "days": args.days,
        "events_per_day": args.events_per_day,
        "seed": SEED,
        "users": gen["users"],
        "items": gen["items"],
        "python": platform.python_version(),
        "pandas": md.version("pandas"),
        "pyarrow": md.version("pyarrow"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    print_table(results, ratios, compare, params)
    payload = {
        "params": params,
        "generate": gen,
        "prepare": prep,
        "measurements": results,
        "ratios": ratios,
        "results_identical": compare["match"],
        "compare": compare,
        "peak_memory_source": "VmHWM of the measuring subprocess (falls back to ru_maxrss)",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"figures written to {out / 'results.json'}")
    return 0 if compare["match"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-day", type=int, default=DEFAULT_EVENTS_PER_DAY)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument(
        "--out", default=str(REPO / ".bench"), help="benchmark directory (default <repo>/.bench)"
    )
    parser.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.days < 1 or args.events_per_day < 1:
        parser.error("--days and --events-per-day must be positive")
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
