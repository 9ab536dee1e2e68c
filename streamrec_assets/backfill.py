"""`streamrec backfill`: the three backfill strategies over the Dagster instance.

* **Sequential** (``--chunks 1``): one single run over the whole range; window
  assets are computed chronologically inside it.
* **Parallel** (``--chunks K``): the range is cut into K disjoint sub-ranges and
  the graph into *layers*; the K sub-range runs of a layer run at once, and a
  layer starts only when the previous one is complete, so a window asset never
  runs before the daily aggregates (or examples) of its whole window exist. The
  registry layer runs its sub-ranges one at a time (the champion gate depends
  on order).
* **Prioritized** (``--order newest-first``): inside each layer the newest
  sub-ranges are submitted first, so the current model is trained and
  registered on the freshest data while history fills in; the registry never
  promotes a model trained on older data than the champion's.

Every run goes through ``dagster asset materialize --partition-range`` on the
instance at ``DAGSTER_HOME``, so runs, materialisations and their partitions
show in the UI like any other run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

#: Graph layers in dependency order; ``serial`` layers run their sub-ranges one at a time.
LAYERS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("ingest", ("raw_events", "raw_events_dlq", "user_daily_activity", "item_daily_activity",
                "daily_coplay_pairs", "daily_coplay_history", "daily_coplay_edges", "user_item_daily_outcomes"), False),
    ("features", ("user_features", "item_features", "taste_model"), False),
    ("feature_store", ("feast_feature_views",), True),
    ("training_data", ("training_examples", "retrieval_model"), False),
    ("ranking", ("ranking_model",), False),
    ("evaluation", ("model_evaluation",), False),
    ("registry", ("registered_model",), True),
    ("serving", ("batch_recommendations",), False),
)
CATALOGS = ("user_catalog", "item_catalog")


@dataclass(frozen=True)
class Step:
    layer: str
    assets: tuple[str, ...]
    start: str
    end: str

    def command(self) -> list[str]:
        cmd = [
            str(Path(sys.executable).with_name("dagster")),
            "asset",
            "materialize",
            "-m",
            "streamrec_assets.definitions",
            "--select",
            ",".join(self.assets),
        ]
        if self.layer != "catalogs":  # the catalogues are not partitioned
            cmd += ["--partition-range", f"{self.start}...{self.end}"]
        return cmd


def split_range(start: str, end: str, chunks: int) -> list[tuple[str, str]]:
    """``chunks`` disjoint, contiguous, near-equal sub-ranges covering [start, end]."""
    a, b = date.fromisoformat(start), date.fromisoformat(end)
    if b < a:
        raise ValueError(f"--end {end} is before --start {start}")
    n = (b - a).days + 1
    chunks = max(1, min(chunks, n))
    sizes = [n // chunks + (1 if i < n % chunks else 0) for i in range(chunks)]
    out, cursor = [], a
    for size in sizes:
        out.append((cursor.isoformat(), (cursor + timedelta(days=size - 1)).isoformat()))
        cursor += timedelta(days=size)
    return out


def plan(start: str, end: str, chunks: int = 1, order: str = "oldest-first") -> list[list[Step]]:
    """Waves of steps: the steps of one wave may run at once; a wave starts when the previous ends."""
    if order not in ("oldest-first", "newest-first"):
        raise ValueError(f"--order must be oldest-first or newest-first, not {order!r}")
    ranges = split_range(start, end, chunks)
    if len(ranges) == 1:
        return [[Step("all", ("*",), start, end)]]
    if order == "newest-first":
        ranges = ranges[::-1]
    waves: list[list[Step]] = [[Step("catalogs", CATALOGS, ranges[0][0], ranges[0][1])]]
    for layer, assets, serial in LAYERS:
        steps = [Step(layer, assets, a, b) for a, b in ranges]
        waves.extend([[s] for s in steps] if serial else [steps])
    return waves


def _subprocess_runner(step: Step) -> tuple[int, str]:
    proc = subprocess.run(step.command(), capture_output=True, text=True, env=os.environ.copy())
    return proc.returncode, (proc.stdout[-4000:] + proc.stderr[-4000:])


def run(
    waves: list[list[Step]],
    workers: int,
    runner: Callable[[Step], tuple[int, str]] = _subprocess_runner,
    echo: Callable[[str], None] = print,
) -> int:
    """Execute the waves; stops at the first failed wave (later waves depend on it)."""
    started = time.perf_counter()
    for i, wave in enumerate(waves, 1):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wave)))) as pool:
            results = list(pool.map(runner, wave))
        for step, (code, _) in zip(wave, results, strict=True):
            state = "ok" if code == 0 else f"FAILED (exit {code})"
            echo(f"wave {i}/{len(waves)} {step.layer:<13} {step.start}...{step.end} {state}")
        failed = [(s, out) for s, (code, out) in zip(wave, results, strict=True) if code != 0]
        if failed:
            step, out = failed[0]
            echo(f"stopping: {step.layer} {step.start}...{step.end} failed; last output:\n{out}")
            return 1
        echo(f"  wave {i} took {time.perf_counter() - t0:.1f}s")
    echo(f"backfill complete in {time.perf_counter() - started:.1f}s")
    return 0
