"""The heavy assets of one day on the embedded engine and on a local Spark standalone cluster, side by side.

Run with ``make bench-spark`` (or ``.venv/bin/python benchmarks/bench_spark.py --volumes 100000,1000000``).

Uses the data and history of ``make bench-scale`` (``.bench/scale/<volume>``, made if missing),
starts a Spark standalone master and one worker (2 cores, the machine's) on 127.0.0.1, and
materialises each heavy asset of D = 2026-01-29 in its own fresh process, once with
``STREAMREC_ENGINE=embedded`` and once with ``STREAMREC_ENGINE=spark``: wall time (the Spark
figure includes starting the session, about 5-8 s) and the step process's peak memory (with
Spark, the driver's; the executors are separate processes). Both engines write the same values
(the ranker within the tolerance of test_spark_engine.py), so the runs overwrite day D with the
same data. Writes ``results.json`` and ``results.md`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_scale import DAY, REPO, ensure_history, run_child

STEPS = [("raw_events", "raw_events_dlq"), ("user_daily_activity",), ("item_daily_activity",), ("user_features",),
         ("item_features",), ("training_examples",), ("ranking_model",)]


def spark_env(master: str, tasks: int) -> dict:
    return {"STREAMREC_ENGINE": "spark", "STREAMREC_SPARK_MASTER": master, "STREAMREC_SPARK_TASKS": str(tasks),
            "STREAMREC_SPARK_CONF": "spark.driver.host=127.0.0.1,spark.driver.bindAddress=127.0.0.1,"
                                    "spark.executor.memory=8g,spark.driver.memory=4g"}


def render(results: dict[int, dict[str, dict]]) -> str:
    volumes = sorted(results)
    head = "| asset | " + " | ".join(f"{v:,}/day: embedded s (MB) | spark s (driver MB) | spark/embedded"
                                      for v in volumes) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(volumes))]
    for (name, *_rest) in STEPS:
        cells = []
        for v in volumes:
            e, s = results[v].get(name, {}).get("embedded"), results[v].get(name, {}).get("spark")
            cells += [f"{e['seconds']:.1f} ({e['peak_mb']:.0f})" if e else "", f"{s['seconds']:.1f} ({s['peak_mb']:.0f})"
                      if s else "", f"x{s['seconds'] / e['seconds']:.2f}" if e and s else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", default="100000,1000000")
    parser.add_argument("--data", default=str(REPO / ".bench" / "scale"), help="bench-scale's cache")
    parser.add_argument("--out", default=str(REPO / ".bench" / "spark"))
    parser.add_argument("--tasks", type=int, default=2, help="Spark tasks per day (the worker's cores)")
    parser.add_argument("--steps", default="", help="comma-separated assets to measure (default: all heavy ones)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from streamrec_assets_tests.servers import spark_cluster

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    results: dict[int, dict] = {int(k): v for k, v in json.loads(saved.read_text()).items()} if saved.exists() else {}
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp, \
            spark_cluster(Path(tmp), cores=args.tasks, memory="12g") as master:
        for volume in [int(v) for v in args.volumes.split(",")]:
            data = Path(args.data) / str(volume)
            print(f"{volume:,} events/day", flush=True)
            ensure_history(data, volume, lambda line: print(line, flush=True))
            figures = results.setdefault(volume, {})
            wanted = set(args.steps.split(",")) if args.steps else None
            for selection in STEPS:
                name = selection[0]
                if wanted is not None and name not in wanted:
                    continue
                embedded = run_child(data, selection, DAY, DAY, {"STREAMREC_ENGINE": "embedded"})
                spark = run_child(data, selection, DAY, DAY, spark_env(master, args.tasks))
                figures[name] = {"embedded": embedded, "spark": spark}
                print(f"  {name:<22} embedded {embedded['seconds']:>7.1f} s {embedded['peak_mb']:>6.0f} MB   "
                      f"spark {spark['seconds']:>7.1f} s {spark['peak_mb']:>6.0f} MB (driver)", flush=True)
                saved.write_text(json.dumps(results, indent=2))
    table = render(results)
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
