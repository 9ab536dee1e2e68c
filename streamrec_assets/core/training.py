"""Labels and model features for the ranking model (pure; no Dagster, no Feast).

* :func:`label_impressions`: one example per impression of a day, with a graded
  label — 2 if the impression led to a completed play, 1 to a play, 0 otherwise.
* :func:`add_context_features`: features that come from the catalogues, the
  user×item cross (the user's 28-day share of plays in the item's genre) and the
  taste model (:mod:`streamrec_assets.core.taste`), added to the Feast features of
  the same rows, identically for training, evaluation and serving.

**One time for every feature.** A row ranked on day X (a training example or an
evaluation slate of X, or a recommendation served on X) sees everything as of X
00:00 UTC (:func:`ranking_time`): the Feast rows of X-1 (a feature row of day D is
stamped D+1 00:00), the taste model of X-1, and item age and user tenure at X 00:00.
Serving on D ranks D+1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamrec_assets.core.features import COMPLETION_THRESHOLD, GENRE_SHARE_PREFIX, genre_codes, genre_slug
from streamrec_assets.core.taste import TASTE_FEATURES

EXAMPLE_KEYS = ["example_id", "date", "user_id", "item_id", "session_id", "event_timestamp"]
USER_PREFIX = "user_features__"
ITEM_PREFIX = "item_features__"
#: Feast columns that describe a feature row rather than the entity (kept for audits, not for models).
NOT_MODEL_FEATURES = ("date", "history_days")
CONTEXT_FEATURES = [
    "user_genre_share_for_item",
    "item_age_days",
    "item_duration_seconds",
    "item_genre_code",
    "user_tenure_days",
    *TASTE_FEATURES,
]


def ranking_time(day) -> pd.Series | pd.Timestamp:
    """The instant the features of a row ranked on ``day`` (a day or a Series of days) are as of: 00:00 UTC."""
    if isinstance(day, pd.Series):
        return pd.to_datetime(day.astype(str), utc=True)
    return pd.Timestamp(str(day), tz="UTC")


def label_impressions(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per impression with its graded label.

    A play is attributed to the latest impression of the same (user, item,
    session) at or before it; the label is the best outcome attributed.
    """
    imps = events[events["event_type"] == "impression"]
    imps = imps[["date", "user_id", "item_id", "session_id", "event_timestamp"]]
    imps = imps.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    imps.insert(0, "example_id", np.arange(len(imps), dtype="int64"))
    plays = events[events["event_type"] == "play"][["user_id", "item_id", "session_id", "event_timestamp", "watch_seconds"]]
    label = np.zeros(len(imps), dtype="int64")
    if len(plays) and len(imps):
        durations = items.set_index("item_id")["duration_seconds"]
        plays = plays.assign(
            outcome=np.where(
                plays["watch_seconds"].to_numpy() >= COMPLETION_THRESHOLD * plays["item_id"].map(durations).to_numpy(),
                2,
                1,
            )
        ).sort_values("event_timestamp", kind="stable")
        matched = pd.merge_asof(
            plays,
            imps[["example_id", "user_id", "item_id", "session_id", "event_timestamp"]],
            on="event_timestamp",
            by=["user_id", "item_id", "session_id"],
            direction="backward",
        ).dropna(subset=["example_id"])
        best = matched.groupby(matched["example_id"].astype("int64"))["outcome"].max()
        label[best.index.to_numpy()] = best.to_numpy()
    imps["label"] = label
    day_tag = imps["date"].astype(str).str.replace("-", "", regex=False)
    imps["example_id"] = day_tag + "-" + imps["example_id"].astype(str).str.zfill(8)
    return imps


def add_context_features(
    frame: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    as_of: pd.Series | pd.Timestamp,
    taste=None,
) -> pd.DataFrame:
    """Add :data:`CONTEXT_FEATURES` to rows holding ``user_id``, ``item_id`` and Feast user features.

    ``as_of`` (:func:`ranking_time` of the ranked day) dates the item's age and the user's
    tenure; ``taste`` (a :class:`~streamrec_assets.core.taste.TasteModel` as of the same
    instant, or None without one) gives the ``taste_*`` scores (missing values without it).
    """
    out = frame.copy()
    genres = sorted(items["genre"].unique())
    cat = items.set_index("item_id")
    genre = out["item_id"].map(cat["genre"])
    as_of_ts = pd.to_datetime(as_of, utc=True)
    release = pd.to_datetime(out["item_id"].map(cat["release_date"]), utc=True)
    signup = pd.to_datetime(out["user_id"].map(users.set_index("user_id")["signup_date"]), utc=True)
    out["item_age_days"] = ((as_of_ts - release).dt.total_seconds() / 86400.0).astype("float64")
    out["user_tenure_days"] = ((as_of_ts - signup).dt.total_seconds() / 86400.0).astype("float64")
    out["item_duration_seconds"] = out["item_id"].map(cat["duration_seconds"]).astype("float64")
    out["item_genre_code"] = genre.map(genre_codes(items)).astype("float64")
    share_cols = [f"{USER_PREFIX}{GENRE_SHARE_PREFIX}{genre_slug(g)}" for g in genres]
    present = [c for c in share_cols if c in out.columns]
    if present:
        matrix = out.reindex(columns=share_cols).to_numpy(dtype="float64")
        idx = out["item_genre_code"].fillna(-1).to_numpy().astype("int64")
        picked = np.full(len(out), np.nan)
        ok = idx >= 0
        picked[ok] = matrix[np.flatnonzero(ok), idx[ok]]
        out["user_genre_share_for_item"] = picked
    else:
        out["user_genre_share_for_item"] = np.nan
    if taste is None:
        for name in TASTE_FEATURES:
            out[name] = np.nan
    else:
        scores = taste.scores(out["user_id"].to_numpy(), out["item_id"].to_numpy(), out["item_genre_code"].to_numpy())
        for name in TASTE_FEATURES:
            out[name] = scores[name].to_numpy()
    return out


def model_feature_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric Feast features plus the context features, in a stable order."""
    cols = []
    for col in frame.columns:
        if col.startswith((USER_PREFIX, ITEM_PREFIX)):
            name = col.split("__", 1)[1]
            if name in NOT_MODEL_FEATURES or not pd.api.types.is_numeric_dtype(frame[col]):
                continue
            cols.append(col)
    return sorted(cols) + [c for c in CONTEXT_FEATURES if c in frame.columns]


def feature_coverage(frame: pd.DataFrame) -> dict[str, int]:
    """Rows whose user / item had no feature row yet (kept with nulls, counted)."""
    user_cols = [c for c in frame.columns if c.startswith(USER_PREFIX)]
    item_cols = [c for c in frame.columns if c.startswith(ITEM_PREFIX)]
    return {
        "rows": len(frame),
        "rows_without_user_features": int(frame[user_cols].isna().all(axis=1).sum()) if user_cols else len(frame),
        "rows_without_item_features": int(frame[item_cols].isna().all(axis=1).sum()) if item_cols else len(frame),
    }


def leaked_rows(frame: pd.DataFrame) -> int:
    """Rows whose user or item feature row is from the example's own day or later (must be 0)."""
    leaks = pd.Series(False, index=frame.index)
    for prefix in (USER_PREFIX, ITEM_PREFIX):
        col = f"{prefix}date"
        if col in frame.columns:
            feature_day = frame[col]
            leaks |= feature_day.notna() & (feature_day.astype(str) >= frame["date"].astype(str))
    return int(leaks.sum())
