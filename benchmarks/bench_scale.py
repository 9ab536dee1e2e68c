"""Scaling benchmark: one day of the whole graph, with full history, at several volumes.

Run with ``make bench-scale`` (or ``.venv/bin/python benchmarks/bench_scale.py --volumes 100000,1000000``).

For each volume (events/day):

1. generates the landing zone (cached under ``.bench/scale/<volume>/landing``): 29 days,
   2026-01-01..2026-01-29; the measured day is D = 2026-01-29;
2. materialises the history it needs in ONE single-run range per layer (not measured):
   catalogues; ingest, daily aggregates, daily co-play, outcomes and features for [D-28, D-1];
   the taste models of [D-16, D-1] (the examples of [D-15, D-1] are ranked with the model of
   the day before); the Feast views; training examples for [D-15, D-1] (ranking_model of D
   trains on [D-15, D-3], early-stops on D-2; model_evaluation gates on D-1). The history is
   resumable: a layer materialises only the assets whose partitions storage lacks;
3. measures every step of day D in its own fresh process (``dagster.materialize`` of that
   asset for partition D, in topological order): wall time and peak resident memory (VmHWM).

Writes ``results.json``, ``results.md`` (the table) and ``scaling.png`` (time and peak
memory per asset against volume, log-log) under ``--out``, and prints the table with each
asset's growth factor between consecutive volumes and, from the largest measured growth,
an extrapolation of the volume at which the first asset would exceed 16 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchlib import peak_mb, run_in_fresh_process

REPO = Path(__file__).resolve().parents[1]
SEED = 7
START, DAY = "2026-01-01", "2026-01-29"
HISTORY = [
    (("user_catalog", "item_catalog"), None, None),
    (("raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity", "daily_coplay_pairs",
      "daily_coplay_history", "daily_coplay_edges", "user_item_daily_outcomes", "user_features", "item_features"),
     "2026-01-01", "2026-01-28"),
    (("taste_model",), "2026-01-13", "2026-01-28"),
    (("feast_feature_views",), "2026-01-28", "2026-01-28"),
    (("training_examples",), "2026-01-14", "2026-01-28"),
]
STEPS = [
    ("raw_events", "raw_events_dlq"),
    ("user_daily_activity",),
    ("item_daily_activity",),
    ("daily_coplay_pairs", "daily_coplay_history", "daily_coplay_edges"),
    ("user_item_daily_outcomes",),
    ("user_features",),
    ("item_features",),
    ("taste_model",),
    ("feast_feature_views",),
    ("training_examples",),
    ("retrieval_model",),
    ("ranking_model",),
    ("model_evaluation",),
    ("registered_model",),
    ("batch_recommendations",),
]
LIMIT_MB = 16 * 1024


def _settings(out: Path):
    from streamrec_assets.settings import Settings

    return Settings(home=str(out / "home"), storage_uri=str(out / "home" / "storage"),
                    landing_uri=str(out / "landing"), start_date=START)


def child(out: str, selection: list[str], start: str | None, end: str | None) -> dict:
    """Materialise ``selection`` (one day, a range, or unpartitioned) in this process."""
    out = Path(out)
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from streamrec_assets.definitions import all_assets, build_resources

    settings = _settings(out)
    home = Path(settings.home) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    t0 = time.perf_counter()
    instance = dg.DagsterInstance.get()  # one persistent instance: later steps see earlier materialisations
    tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end} if start and start != end else {}
    result = dg.materialize(
        all_assets, selection=selection, resources=build_resources(settings), instance=instance, tags=tags,
        partition_key=start if start and start == end else None, raise_on_error=False,
    )
    if not result.success:
        raise SystemExit(f"{selection} failed")
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb()}


def _missing(out: Path, selection, start: str | None, end: str | None) -> list[str]:
    """The assets of ``selection`` with a partition of [start, end] (or their table) not in storage."""
    from datetime import date, timedelta

    from streamrec_assets.storage import TableStore

    store = TableStore(_settings(out).storage_uri)
    if start is None:
        return [a for a in selection if not store.unpartitioned_path(a).exists()]
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    return [a for a in selection if not all(store.partition_path(a, d).exists() for d in days)]


def run_child(out: Path, selection, start, end, env: dict | None = None) -> dict:
    return run_in_fresh_process("bench_scale", "child", str(out), list(selection), start, end,
                                env={"STREAMREC_START_DATE": START, **(env or {})}, cwd=REPO)


def ensure_history(out: Path, events: int, log) -> None:
    """The landing zone and the history day D needs (generated / materialised once, then cached)."""
    from streamrec_assets import datagen

    t0 = time.perf_counter()
    datagen.generate(str(out / "landing"), START, DAY, events, SEED)
    log(f"  landing zone ready ({time.perf_counter() - t0:.0f} s)")
    marker = out / "home" / "_history_done"
    if not marker.exists():
        for selection, start, end in HISTORY:
            missing = _missing(out, selection, start, end)
            if not missing:
                log(f"  history {selection[0]}.. {start or ''}..{end or ''}: in storage")
                continue
            figures = run_child(out, missing, start, end)
            log(f"  history {missing[0]}.. {start or ''}..{end or ''}: {figures['seconds']:.0f} s")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok")


def measure_volume(out: Path, events: int, log) -> dict[str, dict]:
    ensure_history(out, events, log)
    results = {}
    for selection in STEPS:
        figures = run_child(out, selection, DAY, DAY)
        results[selection[0]] = figures
        log(f"  {selection[0]:<24}{figures['seconds']:>8.1f} s{figures['peak_mb']:>9.0f} MB")
    return results


def render(results: dict[int, dict[str, dict]], out: Path) -> str:
    volumes = sorted(results)
    head = "| asset | " + " | ".join(f"{v:,}/day: s, peak MB" for v in volumes) + " | growth (time, memory) |"
    lines = [head, "|" + "---|" * (len(volumes) + 2)]
    worst = (0.0, "", 0.0)
    for selection in STEPS:
        name = selection[0]
        cells = [f"{results[v][name]['seconds']:.1f}, {results[v][name]['peak_mb']:.0f}" if name in results[v]
                 else "not measured" for v in volumes]
        growth = ""
        if len(volumes) > 1 and all(name in results[v] for v in volumes[-2:]):
            a, b = results[volumes[-2]][name], results[volumes[-1]][name]
            factor = volumes[-1] / volumes[-2]
            growth = f"x{b['seconds'] / a['seconds']:.1f}, x{b['peak_mb'] / a['peak_mb']:.1f} for x{factor:.0f} volume"
            # memory(v) ~ m1 * (v / v1) ** k with k fitted on the last two volumes
            import math

            k = math.log(b["peak_mb"] / a["peak_mb"]) / math.log(factor) if b["peak_mb"] > a["peak_mb"] else 0.0
            if k > 0:
                limit = volumes[-1] * (LIMIT_MB / b["peak_mb"]) ** (1 / k)
                if worst[1] == "" or limit < worst[0]:
                    worst = (limit, name, k)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {growth} |")
    table = "\n".join(lines)
    if worst[1]:
        table += (f"\n\nFirst asset to exceed 16 GiB (extrapolated from the last two volumes, memory ~ volume^{worst[2]:.2f}): "
                  f"`{worst[1]}` at about {worst[0] / 1e6:.0f} M events/day.")
    (out / "results.md").write_text(table + "\n")
    _plot(results, out / "scaling.png")
    return table


def _plot(results: dict[int, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = sorted(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for selection in STEPS:
        name = selection[0]
        measured = [v for v in volumes if name in results[v]]
        left.plot(measured, [results[v][name]["seconds"] for v in measured], marker="o", label=name)
        right.plot(measured, [results[v][name]["peak_mb"] for v in measured], marker="o", label=name)
    for axis, label in ((left, "seconds (one day)"), (right, "peak resident MB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("events/day")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    right.axhline(LIMIT_MB, color="red", linestyle="--", linewidth=1)
    left.legend(fontsize=7)
    fig.suptitle("StreamRec: one day of the whole graph with full history, per asset")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", default="100000,1000000",
                        help="comma-separated events/day (10000000 takes hours on 2 cores)")
    parser.add_argument("--out", default=str(REPO / ".bench" / "scale"))
    parser.add_argument("--render-only", action="store_true", help="re-render results.json (nothing measured)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    results: dict[int, dict[str, dict]] = {int(k): v for k, v in json.loads(saved.read_text()).items()} if saved.exists() else {}
    for volume in [] if args.render_only else [int(v) for v in args.volumes.split(",")]:
        print(f"{volume:,} events/day", flush=True)
        results[volume] = measure_volume(out / str(volume), volume, lambda line: print(line, flush=True))
        saved.write_text(json.dumps(results, indent=2))
    print("\n" + render(results, out))
    print(f"\nwritten: {out / 'results.md'}, {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
