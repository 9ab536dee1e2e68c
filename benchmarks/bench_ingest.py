"""Benchmark: ``ingest_day`` vs. a plain DuckDB ``read_json`` + SQL validation of the same day.

Run with ``.venv/bin/python benchmarks/bench_ingest.py`` (``--events 20000`` for a smoke run).

1. Generates one landing day (2026-01-01, seed 7, 1,000,000 events by default, the default
   catalogue for that volume, the generator's default share of malformed lines and
   duplicates) into ``<out>/landing`` with ``datagen.generate``, which skips a day whose
   marker parameters match: reruns reuse the file (``bench_features.py`` shares it).
   The decompressed copy ``<out>/ingest/events-<day>-<events>.jsonl`` is cached as well.
2. Measures, each in a fresh interpreter so that peak memory is per measurement, and
   ``--repeat`` times in alternation (the median is reported, every run is printed):

   ``reference``        DuckDB ``read_json`` of the ``.jsonl.gz`` file, typed columns,
                        ``ignore_errors``, then one SQL query with the record contract's checks
                        (known ids, event types, the day, watch time, impressions unwatched,
                        non-empty strings) and one row per ``event_id``, fetched as a pandas
                        DataFrame, as ``ingest_day`` returns it. The baseline; it lives only here.
   ``reference_arrow``  the same query fetched as an Arrow table (no Python objects: stricter).
   ``reference_plain``  the same query on the decompressed file (no gzip to inflate).
   ``ingest_day``       ``streamrec_assets.core.ingest.ingest_day`` on the decompressed bytes
                        (what the ``raw_events`` asset calls after ``Landing.read_delivery``).

   Time is ``time.perf_counter`` around the measured work only: imports, reading the file into
   memory and decompressing it for ``ingest_day`` happen before the clock starts. Peak memory is
   the child's ``VmHWM`` (peak resident set, ``/proc/self/status``), else
   ``getrusage(RUSAGE_SELF).ru_maxrss``; it includes the interpreter, the libraries and the
   input bytes, so the resident size just before the clock started is printed too.
3. Checks that the reference and ``ingest_day`` agree on the number of valid rows, prints the
   ratios ours / reference (time and peak memory, both measured in this run), and writes the
   figures to ``<out>/ingest/results.json``.

The reference is not a drop-in replacement: it drops what it cannot read without saying why,
keeps no line numbers nor raw bytes, and reads DuckDB's lenient JSON (NaN, trailing commas).
It is the speed a columnar engine gets on the file, which is the target (within 2x).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import peak_mb, resident_mb

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-01-01"
SEED = 7
DEFAULT_EVENTS = 1_000_000
MEASUREMENTS = ("reference", "reference_arrow", "reference_plain", "ingest_day")
LABELS = {
    "reference": "reference: read_json(.gz) + SQL -> pandas",
    "reference_arrow": "reference: read_json(.gz) + SQL -> Arrow",
    "reference_plain": "reference: read_json(plain) + SQL -> pandas",
    "ingest_day": "ingest_day (decompressed bytes) -> pandas",
}
BASELINE = "reference"

REFERENCE_SQL = """
WITH raw AS (
    SELECT * FROM read_json(
        $path, format = 'newline_delimited', ignore_errors = true,
        columns = {{event_id: 'VARCHAR', user_id: 'BIGINT', item_id: 'BIGINT', event_type: 'VARCHAR',
                   event_timestamp: 'TIMESTAMPTZ', watch_seconds: 'DOUBLE', device: 'VARCHAR',
                   session_id: 'VARCHAR'}})
), checked AS (
    SELECT * FROM raw
    WHERE event_id <> '' AND device <> '' AND session_id <> ''
      AND event_type IN ('impression', 'play')
      AND user_id IN (SELECT user_id FROM users)
      AND item_id IN (SELECT item_id FROM items)
      AND event_timestamp >= TIMESTAMPTZ '{day} 00:00:00+00'
      AND event_timestamp < TIMESTAMPTZ '{day} 00:00:00+00' + INTERVAL 1 DAY
      AND watch_seconds >= 0
      AND (event_type <> 'impression' OR watch_seconds = 0)
)
SELECT DISTINCT ON (event_id) '{day}' AS date, event_id, user_id, item_id, event_type, event_timestamp,
       watch_seconds, device, session_id
FROM checked
"""


# --------------------------------------------------------------------------- helpers


def landing_dir(out: Path) -> str:
    return str(out / "landing")


def plain_path(out: Path, events: int) -> Path:
    return out / "ingest" / f"events-{DAY}-{events}.jsonl"


def landing(out: Path):
    from streamrec_assets.landing import Landing

    return Landing(landing_dir(out))


def catalogue_ids(out: Path):
    zone = landing(out)
    return zone.read_catalog("users")["user_id"].to_numpy(), zone.read_catalog("items")["item_id"].to_numpy()


# --------------------------------------------------------------------------- child steps


def step_generate(out: Path, events: int) -> dict:
    from streamrec_assets import datagen

    t0 = time.perf_counter()
    summary = datagen.generate(landing_dir(out), DAY, DAY, events, SEED)[0]
    plain = plain_path(out, events)
    stamp = plain.with_suffix(".sha256")
    if not (plain.exists() and stamp.exists() and stamp.read_text() == summary["sha256"]):
        plain.parent.mkdir(parents=True, exist_ok=True)
        tmp = plain.with_name(f".{plain.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress(Path(summary["path"]).read_bytes()))
        os.replace(tmp, plain)
        stamp.write_text(summary["sha256"])
    return {
        "seconds": time.perf_counter() - t0,
        "skipped": bool(summary["skipped"]),
        "records": int(summary["records"]),
        "users": datagen.default_users(events),
        "items": datagen.default_items(events),
        "gz_bytes": os.path.getsize(summary["path"]),
        "plain_bytes": plain.stat().st_size,
    }


def _reference(out: Path, events: int, path: str, arrow: bool = False) -> dict:
    import duckdb
    import pyarrow as pa

    users, items = catalogue_ids(out)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("users", pa.table({"user_id": users}))
    con.register("items", pa.table({"item_id": items}))
    sql = REFERENCE_SQL.format(day=DAY)
    before = resident_mb()
    t0 = time.perf_counter()
    relation = con.sql(sql, params={"path": path})
    valid = relation.to_arrow_table() if arrow else relation.df()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": peak_mb(), "rss_before_mb": before, "valid": len(valid)}


def measure_reference(out: Path, events: int) -> dict:
    return _reference(out, events, str(landing(out).events_path(DAY)))


def measure_reference_arrow(out: Path, events: int) -> dict:
    return _reference(out, events, str(landing(out).events_path(DAY)), arrow=True)


def measure_reference_plain(out: Path, events: int) -> dict:
    return _reference(out, events, str(plain_path(out, events)))


def measure_ingest_day(out: Path, events: int) -> dict:
    from streamrec_assets.core.ingest import ingest_day
    from streamrec_assets.landing import count_records

    users, items = catalogue_ids(out)
    text = landing(out).read_delivery(DAY).text  # sha256 and record count checked, decompressed
    before = resident_mb()
    t0 = time.perf_counter()
    result = ingest_day(text, DAY, users, items)
    seconds = time.perf_counter() - t0
    assert result.total_records == count_records(text)
    return {
        "seconds": seconds,
        "peak_mb": peak_mb(),
        "rss_before_mb": before,
        "valid": len(result.valid),
        "rejected": len(result.rejected),
        "records": result.total_records,
        "reasons": dict(result.reasons),
    }


def _preload() -> None:
    """Import what the measured code imports lazily, so that no import is timed."""
    import duckdb  # noqa: F401
    import orjson  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401

    import streamrec_assets.core.ingest  # noqa: F401
    import streamrec_assets.landing  # noqa: F401


STEPS = {
    "generate": step_generate,
    "reference": measure_reference,
    "reference_arrow": measure_reference_arrow,
    "reference_plain": measure_reference_plain,
    "ingest_day": measure_ingest_day,
}


def child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    _preload()
    result = STEPS[args.child](Path(args.out), args.events)
    Path(args.result_file).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def run_child(step: str, args: argparse.Namespace, result_dir: Path, tag: str = "") -> dict:
    """Run one step in a fresh interpreter and return its JSON result."""
    result_file = result_dir / f"{step}{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--events", str(args.events),
           "--out", str(args.out), "--result-file", str(result_file)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return json.loads(result_file.read_text())


def summarise(runs: list[dict]) -> dict:
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "seconds_min": min(r["seconds"] for r in runs),
        "peak_mb": statistics.median(r["peak_mb"] for r in runs),
        "rss_before_mb": statistics.median(r["rss_before_mb"] for r in runs),
        "valid": runs[0]["valid"],
        "runs": runs,
    }


def print_table(results: dict, params: dict, gen: dict) -> None:
    print()
    print(
        f"StreamRec ingest benchmark: 1 day x {params['events']:,} events (seed {SEED}, {gen['users']:,} users, "
        f"{gen['items']:,} items; {gen['gz_bytes'] / 2**20:.1f} MB gzip, {gen['plain_bytes'] / 2**20:.1f} MB plain), "
        f"python {params['python']}, duckdb {params['duckdb']}, {params['cpus']} CPUs, median of {params['repeat']}"
    )
    width = max(len(v) for v in LABELS.values())
    header = (
        f"{'measurement':<{width}}  {'seconds':>8}  {'(min)':>7}  {'peak MB':>8}  {'RSS at start':>12}  "
        f"{'time / ref':>10}  {'mem / ref':>9}"
    )
    print(header)
    print("-" * len(header))
    base = results[BASELINE]
    for name in MEASUREMENTS:
        r = results[name]
        print(
            f"{LABELS[name]:<{width}}  {r['seconds']:>8.2f}  {r['seconds_min']:>7.2f}  {r['peak_mb']:>8.0f}  "
            f"{r['rss_before_mb']:>12.0f}  {r['seconds'] / base['seconds']:>9.2f}x  "
            f"{r['peak_mb'] / base['peak_mb']:>8.2f}x"
        )
    print("-" * len(header))
    ours = results["ingest_day"]
    for name in MEASUREMENTS[:-1]:
        ref = results[name]
        print(
            f"ingest_day / {LABELS[name].split(': ', 1)[1]}: time {ours['seconds'] / ref['seconds']:.2f}x, "
            f"peak memory {ours['peak_mb'] / ref['peak_mb']:.2f}x"
        )
    run = ours["runs"][0]
    print(
        f"ingest_day: {run['records']:,} records, {run['valid']:,} valid, {run['rejected']:,} rejected "
        f"({', '.join(f'{k} {v}' for k, v in sorted(run['reasons'].items(), key=lambda kv: -kv[1])[:4])}, ...) "
        f"= {run['records'] / ours['seconds']:,.0f} records/s"
    )
    agree = len({results[name]["valid"] for name in MEASUREMENTS}) == 1
    print(f"valid rows agree: {'yes' if agree else 'NO'} (reference {base['valid']:,}, ingest_day {ours['valid']:,})")


def parent_main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"landing zone: {landing_dir(out)} ({DAY}, {args.events:,} events)")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=out) as tmp:
        result_dir = Path(tmp)
        gen = run_child("generate", args, result_dir)
        print(f"generate: {'cached' if gen['skipped'] else 'generated'}, {gen['records']:,} records, "
              f"{gen['seconds']:.1f} s")
        runs: dict[str, list[dict]] = {name: [] for name in MEASUREMENTS}
        for k in range(args.repeat):
            for name in MEASUREMENTS:
                r = run_child(name, args, result_dir, tag=f"-{k}")
                runs[name].append(r)
                print(f"run {k + 1}/{args.repeat} {name}: {r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB")
    results = {name: summarise(rs) for name, rs in runs.items()}
    import importlib.metadata as md

    params = {
        "day": DAY,
        "events": args.events,
        "seed": SEED,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "duckdb": md.version("duckdb"),
        "pyarrow": md.version("pyarrow"),
        "pandas": md.version("pandas"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    print_table(results, params, gen)
    ours = results["ingest_day"]
    agree = len({results[name]["valid"] for name in MEASUREMENTS}) == 1
    payload = {
        "params": params,
        "generate": gen,
        "measurements": results,
        "ratios": {
            "baseline": BASELINE,
            **{
                f"ingest_day/{name}": {
                    "time": ours["seconds"] / results[name]["seconds"],
                    "peak_memory": ours["peak_mb"] / results[name]["peak_mb"],
                }
                for name in MEASUREMENTS[:-1]
            },
        },
        "valid_rows_agree": agree,
        "peak_memory_source": "VmHWM of the measuring subprocess (falls back to ru_maxrss)",
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target = out / "ingest" / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"figures written to {target}")
    return 0 if agree else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events of the day (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--out", default=str(REPO / ".bench"), help="benchmark directory (default <repo>/.bench)")
    parser.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be positive")
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
