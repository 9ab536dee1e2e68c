"""``streamrec`` console script.

Subcommands are registered by small ``_add_<name>`` functions that attach a handler
with ``set_defaults(func=...)``; a handler takes the parsed namespace and returns an
exit code: ``generate`` (the synthetic landing zone), ``feast-config`` (a feature_store.yaml for
the ``feast`` CLI), ``backfill`` (sequential, parallel or prioritized partition backfills) and
``pools`` (the instance's pool limits).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date


def _iso_date(raw: str) -> str:
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date in YYYY-MM-DD form") from exc


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a positive integer")
    return value


def _rate(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"{raw!r} must be within [0, 0.5)")
    return value


def _cmd_generate(args: argparse.Namespace) -> int:
    from streamrec_assets import datagen

    landing = args.landing
    if not landing:
        from streamrec_assets.settings import get_settings

        landing = get_settings().landing_uri
    users = args.users if args.users is not None else datagen.default_users(args.events_per_day)
    items = args.items if args.items is not None else datagen.default_items(args.events_per_day)
    print(
        f"generating {args.start}..{args.end} into {landing} "
        f"(events/day={args.events_per_day}, seed={args.seed}, users={users}, items={items}, "
        f"malformed_rate={args.malformed_rate})",
        flush=True,
    )
    summaries = datagen.generate(
        landing,
        args.start,
        args.end,
        args.events_per_day,
        args.seed,
        users=users,
        items=items,
        malformed_rate=args.malformed_rate,
        force=args.force,
        drift_from=args.drift_from,
    )
    total_records = 0
    total_seconds = 0.0
    for s in summaries:
        total_records += s["records"]
        total_seconds += s["seconds"]
        note = "  (cached)" if s["skipped"] else ""
        print(f"{s['date']}  {s['records']:>10d} records  {s['seconds']:7.2f}s{note}", flush=True)
    generated = sum(1 for s in summaries if not s["skipped"])
    print(
        f"total  {len(summaries)} days ({generated} generated, {len(summaries) - generated} cached)  "
        f"{total_records} records  {total_seconds:.2f}s",
        flush=True,
    )
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write synthetic catalogue and daily event files to the landing zone")
    p.add_argument("--start", required=True, type=_iso_date, help="first day (YYYY-MM-DD)")
    p.add_argument("--end", required=True, type=_iso_date, help="last day, inclusive (YYYY-MM-DD)")
    p.add_argument("--events-per-day", type=_positive_int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--users",
        type=_positive_int,
        default=None,
        help="default: max(500, events_per_day // 40), at most 200000",
    )
    p.add_argument(
        "--items",
        type=_positive_int,
        default=None,
        help="default: max(200, events_per_day // 200), at most 20000",
    )
    p.add_argument("--malformed-rate", type=_rate, default=0.002)
    p.add_argument("--landing", default=None, help="landing-zone path or URI (default: settings landing_uri)")
    p.add_argument("--force", action="store_true", help="regenerate days even if already present")
    p.add_argument("--drift-from", type=_iso_date, default=None,
                   help="drift scenario from this day on (binge sessions, trending genres); earlier days unchanged")
    p.set_defaults(func=_cmd_generate)


def _cmd_feast_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streamrec_assets.feature_repo import write_feature_store_yaml
    from streamrec_assets.resources import feast_settings
    from streamrec_assets.settings import get_settings

    fs = feast_settings(get_settings())
    Path(fs.repo_dir).mkdir(parents=True, exist_ok=True)
    path = write_feature_store_yaml(fs, args.output or f"{fs.repo_dir}/feature_store.yaml")
    repo = Path(__file__).resolve().parent / "feature_repo"
    print(path)
    print(f"use it with: feast -c {repo} -f {path} plan   (or apply, feature-views list, materialize ...)")
    return 0


def _add_feast_config(sub) -> None:
    p = sub.add_parser(
        "feast-config", help="write the Feast feature_store.yaml for the feast CLI from the project's settings"
    )
    p.add_argument("--output", default=None, help="default: $STREAMREC_HOME/feast/feature_store.yaml")
    p.set_defaults(func=_cmd_feast_config)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from streamrec_assets import backfill

    if not os.environ.get("DAGSTER_HOME"):
        print("streamrec: error: DAGSTER_HOME must point at the Dagster instance to backfill", file=sys.stderr)
        return 2
    waves = backfill.plan(args.start, args.end, args.chunks, args.order)
    steps = sum(len(w) for w in waves)
    print(f"backfill {args.start}...{args.end}: {len(waves)} wave(s), {steps} run(s), order {args.order}")
    if args.dry_run:
        for i, wave in enumerate(waves, 1):
            for step in wave:
                print(f"wave {i:>2} {step.layer:<13} {step.start}...{step.end}  {','.join(step.assets)}")
        return 0
    return backfill.run(waves, workers=args.chunks)


def _add_backfill(sub) -> None:
    p = sub.add_parser(
        "backfill",
        help="backfill a partition range: sequential (--chunks 1), parallel (--chunks K) or prioritized "
        "(--order newest-first)",
    )
    p.add_argument("--start", required=True, type=_iso_date)
    p.add_argument("--end", required=True, type=_iso_date)
    p.add_argument("--order", choices=["oldest-first", "newest-first"], default="oldest-first")
    p.add_argument("--chunks", type=_positive_int, default=1, help="disjoint sub-ranges run in parallel")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.set_defaults(func=_cmd_backfill)


def _cmd_pools(args: argparse.Namespace) -> int:
    import subprocess

    from streamrec_assets.automation import POOL_LIMITS, pool_limit_commands

    if not os.environ.get("DAGSTER_HOME"):
        print("streamrec: error: DAGSTER_HOME must point at the Dagster instance", file=sys.stderr)
        return 2
    for cmd in pool_limit_commands():
        subprocess.run(cmd, check=True, capture_output=True)
    print("pools: " + ", ".join(f"{pool}={limit}" for pool, limit in POOL_LIMITS.items()))
    return 0


def _add_pools(sub) -> None:
    p = sub.add_parser("pools", help="set the instance's pool limits (training, feature_store, registry)")
    p.set_defaults(func=_cmd_pools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description="StreamRec pipeline tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_generate(sub)
    _add_feast_config(sub)
    _add_backfill(sub)
    _add_pools(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start and end and start > end:
        parser.error(f"--end {args.end} is before --start {args.start}")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
