"""Daily aggregates and rolling-window features (pure; no Dagster).

Rolling windows are computed from *daily aggregates* only: feature day D reads
the aggregates of [D-27, D] (28 small tables), never 28 days of raw events.
A window that reaches before the first day of history is clipped there and
the row says how many days it covers (``history_days``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd

#: A play counts as completed when at least this share of the item was watched.
COMPLETION_THRESHOLD = 0.9
WINDOWS: tuple[int, ...] = (1, 7, 28)
RATE_WINDOWS: tuple[int, ...] = (7, 28)
SUMMED = ("impressions", "plays", "completions", "watch_seconds")
GENRE_PREFIX = "plays_genre__"
GENRE_SHARE_PREFIX = "genre_share_28d__"


def genre_slug(genre: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(genre).lower()).strip("_")


def genre_codes(items: pd.DataFrame) -> dict[str, int]:
    """Each catalogue genre's code: its index among the sorted genres (the ranker's ``item_genre_code``
    and the taste model's ``genre_code`` must agree)."""
    return {g: i for i, g in enumerate(sorted(items["genre"].unique()))}


def _annotate(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Add play/completion flags and the item genre to the events of one or more days."""
    cat = items[["item_id", "genre", "duration_seconds"]]
    ev = events[["date", "user_id", "item_id", "event_type", "watch_seconds"]].merge(
        cat, on="item_id", how="left", validate="many_to_one"
    )
    is_play = (ev["event_type"] == "play").to_numpy()
    ev["impressions"] = (~is_play).astype("int64")
    ev["plays"] = is_play.astype("int64")
    duration = ev["duration_seconds"].to_numpy(dtype="float64")
    ev["completions"] = (is_play & (ev["watch_seconds"].to_numpy() >= COMPLETION_THRESHOLD * duration)).astype(
        "int64"
    )
    return ev


def user_daily_activity(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per (date, user) with activity: counts, watch time, distinct items, plays per genre."""
    ev = _annotate(events, items)
    keys = ["date", "user_id"]
    out = ev.groupby(keys, sort=True)[list(SUMMED)].sum()
    plays = ev[ev["plays"] == 1]
    out["distinct_items_played"] = plays.groupby(keys)["item_id"].nunique()
    genres = sorted({genre_slug(g) for g in items["genre"].unique()})
    by_genre = plays.assign(genre=plays["genre"].map(genre_slug)).pivot_table(
        index=keys, columns="genre", values="plays", aggfunc="sum", fill_value=0
    )
    by_genre = by_genre.reindex(columns=genres, fill_value=0).add_prefix(GENRE_PREFIX)
    out = out.join(by_genre, how="left")
    out = out.fillna(0).reset_index()
    return _finish_daily(out)


def item_daily_activity(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per (date, item) with activity: counts, watch time, distinct users who played it."""
    ev = _annotate(events, items)
    keys = ["date", "item_id"]
    out = ev.groupby(keys, sort=True)[list(SUMMED)].sum()
    out["distinct_users_played"] = ev[ev["plays"] == 1].groupby(keys)["user_id"].nunique()
    return _finish_daily(out.fillna(0).reset_index())


def _finish_daily(out: pd.DataFrame) -> pd.DataFrame:
    ints = [c for c in out.columns if c not in ("date", "watch_seconds")]
    out[ints] = out[ints].astype("int64")
    out["watch_seconds"] = out["watch_seconds"].astype("float64")
    out["date"] = out["date"].astype(object)
    return out


def history_days(day: str, first_day: str, window: int = max(WINDOWS)) -> int:
    """Days of the ``window`` ending with ``day`` that lie inside the data's history."""
    span = (date.fromisoformat(day) - date.fromisoformat(first_day)).days + 1
    if span < 1:
        raise ValueError(f"feature day {day} is before the first day of history {first_day}")
    return min(window, span)


def rolling_features(
    daily: pd.DataFrame,
    as_of_days: Sequence[str],
    entity: str,
    first_day: str,
    windows: Sequence[int] = WINDOWS,
) -> pd.DataFrame:
    """Rolling-window sums as of the end of each day in ``as_of_days``.

    ``daily`` holds daily aggregates (``date``, ``entity``, summed columns) for
    at least the longest window ending with each requested day, clipped at
    ``first_day``. Returns one row per (day, entity) active in the longest
    window, with ``<col>_<w>d`` for every summed column and window, rates,
    ``active_days_28d``, ``history_days`` and ``feature_timestamp`` (the end
    of the day, when the values become known).
    """
    longest = max(windows)
    sum_cols = [c for c in daily.columns if c in SUMMED or c.startswith(GENRE_PREFIX)]
    ordinal = pd.to_datetime(daily["date"]).to_numpy().astype("datetime64[D]").astype("int64")
    values = daily[sum_cols].to_numpy(dtype="float64")
    ids = daily[entity].to_numpy()
    frames = []
    for day in as_of_days:
        d = int(np.datetime64(day, "D").astype("int64"))
        in_window = (ordinal > d - longest) & (ordinal <= d)
        age = d - ordinal[in_window]
        sub_ids = ids[in_window]
        sub_vals = values[in_window]
        entities, inverse = np.unique(sub_ids, return_inverse=True)
        out = pd.DataFrame({"date": day, entity: entities.astype("int64")})
        for w in windows:
            weight = (age < w).astype("float64")
            for j, col in enumerate(sum_cols):
                if col.startswith(GENRE_PREFIX) and w != longest:
                    continue  # genre mix only over the longest window
                out[f"{col}_{w}d"] = np.bincount(inverse, weights=sub_vals[:, j] * weight, minlength=len(entities))
        out["active_days_28d"] = np.bincount(inverse, minlength=len(entities)).astype("int64")
        out["history_days"] = history_days(day, first_day, longest)
        frames.append(out)
    feats = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["date", entity])
    return _finish_features(feats, entity)


def _finish_features(feats: pd.DataFrame, entity: str) -> pd.DataFrame:
    for col in list(feats.columns):
        if re.match(r"^(impressions|plays|completions)_\d+d$", col):
            feats[col] = np.rint(feats[col]).astype("int64")
        elif col.startswith(("watch_seconds_", GENRE_PREFIX)):
            feats[col] = feats[col].astype("float64")  # np.bincount of nothing is int64
    for w in RATE_WINDOWS:
        if f"plays_{w}d" in feats:
            plays = feats[f"plays_{w}d"].astype("float64")
            feats[f"completion_rate_{w}d"] = (feats[f"completions_{w}d"] / plays.where(plays > 0)).astype("float64")
    genre_cols = [c for c in feats.columns if c.startswith(GENRE_PREFIX)]
    if genre_cols:
        plays_28 = feats["plays_28d"].astype("float64").where(feats["plays_28d"] > 0)
        for col in genre_cols:
            slug = col[len(GENRE_PREFIX) :].rsplit("_", 1)[0]
            feats[f"{GENRE_SHARE_PREFIX}{slug}"] = (feats[col] / plays_28).astype("float64")
        feats = feats.drop(columns=genre_cols)
    if entity == "item_id" and "plays_7d" in feats:
        imps = feats["impressions_7d"].astype("float64")
        # A play always follows an impression, so plays / impressions is a rate in [0, 1].
        feats["play_rate_7d"] = (feats["plays_7d"] / imps.where(imps > 0)).clip(upper=1.0).astype("float64")
    feats["feature_timestamp"] = (
        pd.to_datetime(feats["date"], utc=True) + pd.Timedelta(days=1)
    ).astype("datetime64[us, UTC]")
    feats["date"] = feats["date"].astype(object)
    feats["history_days"] = feats["history_days"].astype("int64")
    front = ["date", entity, "feature_timestamp", "history_days", "active_days_28d"]
    return feats[front + [c for c in feats.columns if c not in front]]
