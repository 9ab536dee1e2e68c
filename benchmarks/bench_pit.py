"""Benchmark: point-in-time join of one day's training rows at 7 and 60 days of feature history.

Run with ``.venv/bin/python benchmarks/bench_pit.py`` (smoke: ``--rows 50000 --users 2000
--items 500 --repeats 1``).

1. Prepares (cached under ``.bench/pit/``, reused when the parameters match):

   * ``user_features`` / ``item_features`` daily Parquet partitions for the 60 days before the
     target day ``2026-03-02``, built by the pipeline's own pure function
     (:func:`streamrec_assets.core.features.rolling_features`, hence the real schema, dtypes and
     ``feature_timestamp`` = end of day) from synthetic daily aggregates at the scale of
     1,000,000 events/day (``datagen.default_users``/``default_items``: 25,000 users, 5,000
     items; each user active on a day with probability 0.6, each item 0.8), written with the
     pipeline's Parquet options;
   * two storage roots sharing those files by hard link: ``h7`` (the last 7 partitions) and
     ``h60`` (all 60), each with its own Feast registry (``feature_objects`` applied);
   * one day's entity rows: ``--rows`` impressions (default 733,192, the measured day at 1 M
     events/day) with the training frame's columns (example_id, date, user_id, item_id,
     session_id, event_timestamp, label): users skewed, items Zipf-like, timestamps over the day,
     1.5% of rows from new users and 0.5% from new items (no feature rows: nulls).

2. Measures, each run in a fresh Python process (imports, the Feast store object and reading
   the entity Parquet happen before the clock starts):

   ``raw``    hand-written DuckDB SQL: the entity frame registered as is, one ``ASOF LEFT JOIN``
              per view over ``read_parquet`` of the same TTL-reachable files as ours (listed
              before the clock), the TTL as ``CASE WHEN``, ``ORDER BY`` the row number, ``.df()``;
   ``ours``   ``historical_features(store, entity)`` (engine="duckdb"): registry read, partition
              checks, the ASOF join, pandas frame with the pass-through columns;
   ``feast``  ``historical_features(store, entity, engine="feast")``: Feast's
              ``get_historical_features(...).to_df()`` plus the row-order restore.

3. Prints the median time of ``--repeats`` runs per (method, history), ours/raw and ours/feast,
   how each grows from 7 to 60 days, and checks the values: ours == Feast exactly
   (``assert_frame_equal``, dtypes included), raw == ours value for value. Figures go to
   ``.bench/pit/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = "2026-03-02"
HISTORY_DAYS = 60
WINDOW = 28
SEED = 23
DEFAULT_ROWS = 733_192
COLD_USERS, COLD_ITEMS = 0.015, 0.005  # shares of entity rows without any feature row
HISTORIES = (7, 60)
METHODS = ("raw", "ours", "feast")
VIEWS = ("user_features", "item_features")
KEYS = {"user_features": "user_id", "item_features": "item_id"}


def day_range(first: str, n: int) -> list[str]:
    start = date.fromisoformat(first)
    return [(start + timedelta(days=k)).isoformat() for k in range(n)]


def feature_days() -> list[str]:
    first = date.fromisoformat(TARGET) - timedelta(days=HISTORY_DAYS)
    return day_range(first.isoformat(), HISTORY_DAYS)


# --------------------------------------------------------------------------------- data


def _daily_aggregates(rng, day: str, entity: str, n: int, p_active: float, genres: list[str]):
    import numpy as np
    import pandas as pd

    ids = np.flatnonzero(rng.random(n) < p_active).astype("int64")
    k = len(ids)
    impressions = rng.poisson(30 if entity == "user_id" else 120, k).astype("int64")
    plays = rng.binomial(impressions, 0.25).astype("int64")
    completions = rng.binomial(plays, 0.4).astype("int64")
    frame = pd.DataFrame({
        "date": pd.Series([day] * k, dtype=object),
        entity: ids,
        "impressions": impressions,
        "plays": plays,
        "completions": completions,
        "watch_seconds": (plays * rng.gamma(2.0, 1500.0, k)).astype("float64"),
    })
    if entity == "user_id":
        shares = rng.dirichlet(np.full(len(genres), 0.3), size=k)
        split = rng.multinomial(plays, shares) if k else np.zeros((0, len(genres)), "int64")
        for j, g in enumerate(genres):
            frame[f"plays_genre__{g}"] = split[:, j].astype("int64")
        frame["distinct_items_played"] = plays
    else:
        frame["distinct_users_played"] = plays
    return frame


def prepare_tables(out: Path, users: int, items: int) -> Path:
    """The 60 daily partitions of both feature views (cached by parameters)."""
    import numpy as np
    import pandas as pd

    from streamrec_assets import datagen
    from streamrec_assets.core.features import genre_slug, rolling_features
    from streamrec_assets.storage import write_parquet

    params = {"users": users, "items": items, "seed": SEED, "target": TARGET, "days": HISTORY_DAYS, "v": 1}
    tables = out / "tables"
    stamp = tables / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return tables
    genres = sorted({genre_slug(g) for g in datagen.GENRES})
    days = feature_days()
    agg_days = day_range((date.fromisoformat(days[0]) - timedelta(days=WINDOW - 1)).isoformat(),
                         HISTORY_DAYS + WINDOW - 1)
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    for entity, view, n, p in (("user_id", "user_features", users, 0.6), ("item_id", "item_features", items, 0.8)):
        daily = {d: _daily_aggregates(rng, d, entity, n, p, genres) for d in agg_days}
        for day in days:
            window = pd.concat([daily[d] for d in agg_days if day >= d > (
                date.fromisoformat(day) - timedelta(days=WINDOW)).isoformat()], ignore_index=True)
            feats = rolling_features(window, [day], entity, first_day=agg_days[0])
            from upath import UPath

            write_parquet(feats, UPath(str(tables / view / f"date={day}" / "data.parquet")))
        print(f"  {view}: {len(days)} partitions, ~{len(feats):,} rows each ({time.perf_counter() - t0:.0f}s)")
    stamp.write_text(json.dumps(params))
    return tables


def prepare_storage(out: Path, tables: Path, history: int) -> Path:
    """``h<history>/storage`` holding the last ``history`` partitions (hard links), with a Feast registry."""
    import shutil

    from streamrec_assets.feature_repo import FeastSettings, feature_objects, get_store

    root = out / f"h{history}"
    stamp = root / "source.json"
    source = {"tables": json.loads((tables / "params.json").read_text()), "history": history, "catalog": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == source:
        return root
    shutil.rmtree(root, ignore_errors=True)
    for view in VIEWS:
        for day in feature_days()[-history:]:
            target = root / "storage" / view / f"date={day}" / "data.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tables / view / f"date={day}" / "data.parquet"
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
    # The views declare one genre_share feature per genre of the published item catalogue.
    import pandas as pd

    from streamrec_assets import datagen

    pd.DataFrame({"item_id": range(1, len(datagen.GENRES) + 1), "genre": list(datagen.GENRES)}).to_parquet(
        root / "storage" / "item_catalog.parquet", index=False
    )
    fs = FeastSettings(storage_uri=str(root / "storage"), repo_dir=str(root / "feast"))
    get_store(fs).apply(feature_objects(fs))
    stamp.write_text(json.dumps(source))
    return root


def prepare_entities(out: Path, rows: int, users: int, items: int) -> Path:
    import numpy as np
    import pandas as pd

    from streamrec_assets.storage import write_parquet

    path = out / f"entities-v2-{rows}-{users}-{items}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(SEED + 1)
    weights = rng.gamma(0.7, 1.0, users)
    user = rng.choice(users, size=rows, p=weights / weights.sum()).astype("int64")
    ranks = np.arange(1, items + 1, dtype="float64") ** -0.9
    item = rng.permutation(items)[rng.choice(items, size=rows, p=ranks / ranks.sum())].astype("int64")
    # Cold starts: users who signed up today and items released today have no feature rows yet.
    new_users, new_items = rng.random(rows) < COLD_USERS, rng.random(rows) < COLD_ITEMS
    user[new_users] = users + rng.integers(0, max(1, users // 50), int(new_users.sum()))
    item[new_items] = items + rng.integers(0, max(1, items // 100), int(new_items.sum()))
    start = pd.Timestamp(TARGET, tz="UTC").value // 1000
    us = np.sort(rng.integers(start + 1, start + 86_400_000_000, rows))
    stamp = TARGET.replace("-", "")
    frame = pd.DataFrame({
        "example_id": [f"{stamp}-{k:08d}" for k in range(rows)],
        "date": pd.Series([TARGET] * rows, dtype=object),
        "user_id": user,
        "item_id": item,
        "session_id": [f"se-{stamp}-{u:07d}" for u in user],
        "event_timestamp": pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC"),
        "label": rng.choice(3, size=rows, p=[0.8, 0.15, 0.05]).astype("int64"),
    })
    from upath import UPath

    write_parquet(frame, UPath(str(path)))
    return path


# ------------------------------------------------------------------------------- children


def peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_join(entity, files: dict[str, list[str]], features: dict[str, list[str]], ttl_days: int):
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.register("e", entity)
    selects, joins = [], []
    for alias, view in (("u", "user_features"), ("i", "item_features")):
        key = KEYS[view]
        listing = "[" + ", ".join(f"'{f}'" for f in files[view]) + "]"
        joins.append(f"ASOF LEFT JOIN read_parquet({listing}, hive_partitioning = false) {alias} "
                     f"ON e.{key} = {alias}.{key} AND e.event_timestamp >= {alias}.feature_timestamp")
        selects += [f'CASE WHEN {alias}.feature_timestamp >= e.event_timestamp - INTERVAL {ttl_days} DAY '
                    f'THEN {alias}."{f}" END AS "{view}__{f}"' for f in features[view]]
    sql = f"SELECT e.* EXCLUDE (_row), {', '.join(selects)} FROM e {' '.join(joins)} ORDER BY e._row"
    return con.sql(sql).df()


def child(args) -> None:
    import pandas as pd

    from streamrec_assets.feature_repo import TTL, FeastSettings, get_store, historical_features, offline

    root = Path(args.root)
    store = get_store(FeastSettings(storage_uri=str(root / "storage"), repo_dir=str(root / "feast")))
    entity = pd.read_parquet(args.entities)

    def reachable() -> tuple[dict, dict]:
        """The TTL-reachable files and the feature names of each view."""
        views = offline.fetch_feature_views(store, VIEWS)
        ts = entity["event_timestamp"]
        files, features = {}, {}
        for plan in offline.plan_views(views, offline.all_feature_refs(views)):
            first, last = offline.reachable_days(ts.min().to_pydatetime(), ts.max().to_pydatetime(), plan.ttl)
            _, files[plan.name], _ = offline.partition_files(plan, first, last)
            features[plan.name] = [src for src, _ in plan.features]
        return files, features

    if args.method == "raw":  # hand-written SQL knows its files and columns up front: not measured
        files, features = reachable()
        entity = entity.assign(_row=range(len(entity)))
    rss_before = peak_mb()
    t0 = time.perf_counter()
    if args.method == "raw":
        result = raw_join(entity, files, features, TTL.days)
    elif args.method == "ours":
        result = historical_features(store, entity)
    else:
        result = historical_features(store, entity, engine="feast")
    seconds = time.perf_counter() - t0
    if args.method == "feast":  # Feast's FileSource glob reads every partition
        partitions = {v: len(list((root / "storage" / v).glob("date=*/data.parquet"))) for v in VIEWS}
    else:
        partitions = {v: len(f) for v, f in reachable()[0].items()}
    if args.save:
        result.to_parquet(args.save)
    print(json.dumps({"seconds": seconds, "rows": len(result), "columns": result.shape[1], "peak_mb": peak_mb(),
                      "rss_before_mb": rss_before, "partitions": partitions}))


def run_child(method: str, root: Path, entities: Path, save: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--root", str(root), "--entities", str(entities)]
    if save:
        cmd += ["--save", str(save)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {root.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------- compare


def compare(out: Path) -> list[str]:
    import numpy as np
    import pandas as pd

    notes = []
    for h in HISTORIES:
        ours = pd.read_parquet(out / "results" / f"ours-h{h}.parquet")
        feast = pd.read_parquet(out / "results" / f"feast-h{h}.parquet")
        raw = pd.read_parquet(out / "results" / f"raw-h{h}.parquet")
        pd.testing.assert_frame_equal(ours, feast, check_exact=True)
        assert list(raw.columns) == list(ours.columns), (list(raw.columns), list(ours.columns))
        for col in ours.columns:
            a, b = ours[col], raw[col]
            if col.endswith("__date"):
                b = b.map(lambda v: None if v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v))
                          else str(v)[:10])
                assert a.fillna("∅").tolist() == b.fillna("∅").tolist(), col
            elif a.dtype.kind in "fiub":
                np.testing.assert_array_equal(a.to_numpy("float64", na_value=np.nan),
                                              b.to_numpy("float64", na_value=np.nan), err_msg=col)
            else:
                assert a.astype(str).tolist() == b.astype(str).tolist(), col
        notes.append(f"h{h}: ours == Feast (assert_frame_equal, exact); raw == ours value for value "
                     f"({ours.shape[0]:,} rows x {ours.shape[1]} columns, "
                     f"{ours['user_features__plays_7d'].notna().mean():.1%} with user features)")
    return notes


# ----------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="entity rows (one day's impressions)")
    parser.add_argument("--users", type=int, default=25_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per (method, history)")
    parser.add_argument("--out", default=str(REPO / ".bench" / "pit"))
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--entities", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        child(args)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Preparing data under {out} (cached) ...")
    tables = prepare_tables(out, args.users, args.items)
    roots = {h: prepare_storage(out, tables, h) for h in HISTORIES}
    entities = prepare_entities(out, args.rows, args.users, args.items)
    (out / "results").mkdir(exist_ok=True)

    timings: dict[tuple[str, int], list[float]] = {}
    info: dict[tuple[str, int], dict] = {}
    for rep in range(args.repeats):
        for h in HISTORIES:
            for method in METHODS:
                save = out / "results" / f"{method}-h{h}.parquet" if rep == 0 else None
                res = run_child(method, roots[h], entities, save)
                timings.setdefault((method, h), []).append(res["seconds"])
                info[(method, h)] = res
                print(f"  run {rep + 1}/{args.repeats} {method:>5} h{h:<3} {res['seconds']:7.2f}s "
                      f"peak {res['peak_mb']:,.0f} MB")
    med = {k: statistics.median(v) for k, v in timings.items()}

    print()
    print(f"Point-in-time join of {args.rows:,} entity rows (one day), {args.users:,} users / {args.items:,} items, "
          f"TTL 7 days; median of {args.repeats} fresh-process runs; {os.cpu_count()} CPUs, "
          f"{platform.python_version()}")
    print(f"{'method':<34}{'7 days':>10}{'60 days':>10}{'60/7':>8}   partitions read (7 / 60)")
    labels = {"raw": "raw DuckDB ASOF JOIN (same files)", "ours": "ours (historical_features, duckdb)",
              "feast": "Feast get_historical_features"}
    for method in METHODS:
        parts = " / ".join(str(info[(method, h)]["partitions"]["user_features"]) for h in HISTORIES)
        print(f"{labels[method]:<34}{med[(method, 7)]:>9.2f}s{med[(method, 60)]:>9.2f}s"
              f"{med[(method, 60)] / med[(method, 7)]:>7.2f}x   {parts} per view")
    print()
    for h in HISTORIES:
        print(f"  {h:>2} days: ours/raw {med[('ours', h)] / med[('raw', h)]:.2f}x (target <= 1.5x), "
              f"Feast/ours {med[('feast', h)] / med[('ours', h)]:.2f}x, Feast/raw {med[('feast', h)] / med[('raw', h)]:.2f}x")
    notes = compare(out)
    for note in notes:
        print("  values:", note)
    (out / "results.json").write_text(json.dumps({
        "rows": args.rows, "users": args.users, "items": args.items, "repeats": args.repeats,
        "cpus": os.cpu_count(), "timings": {f"{m}-h{h}": v for (m, h), v in timings.items()},
        "median": {f"{m}-h{h}": v for (m, h), v in med.items()},
        "peak_mb": {f"{m}-h{h}": r["peak_mb"] for (m, h), r in info.items()}, "values": notes,
    }, indent=2))


if __name__ == "__main__":
    main()
