"""Batch serving (pure; no Dagster, no Feast): candidates → features → champion scores → top-k.

Scoring is vectorised over every active user of a day. User and item features are
independent (one feature view per entity), so they are looked up **once per distinct
entity** and joined onto the (user, candidate item) pairs, instead of one feature row
per pair: :func:`entity_ids` says what to look up, :func:`join_entity_features` joins
the answers. The pairs are then scored in slices of whole users
(:func:`user_slices`) so that memory grows with the slice, not with the day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

TOP_K = 20
#: The join key of each feature view (one view per entity).
VIEW_KEYS = {"user_features": "user_id", "item_features": "item_id"}
RECOMMENDATION_COLUMNS = [
    "date", "user_id", "rank", "item_id", "score", "candidate_source", "model_version", "feature_source",
]
ONLINE, OFFLINE, NONE = "online", "offline", "none"

#: ``lookup(key, ids, refs)`` → one row per id: ``key`` plus the ``<view>__<feature>`` columns of ``refs``.
EntityLookup = Callable[[str, np.ndarray, list[str]], pd.DataFrame]


def refresh_history(history: pd.DataFrame, plays: pd.DataFrame, max_history: int = 20) -> pd.DataFrame:
    """Add the plays of the serving day to a retrieval model's user histories.

    ``history``: ``user_id, item_id, last_played, plays``; ``plays``: ``user_id, item_id,
    event_timestamp``. Keeps the ``max_history`` most recent items per user.
    """
    if plays.empty:
        return history
    new = plays.groupby(["user_id", "item_id"], as_index=False).agg(
        last_played=("event_timestamp", "max"), plays=("event_timestamp", "size")
    )
    merged = pd.concat([history, new.astype(history.dtypes.to_dict())], ignore_index=True)
    merged = merged.groupby(["user_id", "item_id"], as_index=False).agg(
        last_played=("last_played", "max"), plays=("plays", "sum")
    )
    merged = merged.sort_values(["user_id", "last_played", "item_id"], ascending=[True, False, True], kind="stable")
    merged = merged[merged.groupby("user_id").cumcount() < max_history]
    return merged.astype(history.dtypes.to_dict()).reset_index(drop=True)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/max of request latencies, in milliseconds."""
    if not seconds:
        return {"requests": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(seconds) * 1000.0
    return {
        "requests": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def serving_candidates(
    retrieval, events: pd.DataFrame, items: pd.DataFrame, day: str, n: int
) -> tuple[pd.DataFrame, np.ndarray, pd.Timestamp]:
    """Candidates of every user active on ``day``: ``(cands, active users, as_of)``.

    The retrieval model's histories are refreshed with the day's plays; items released by
    ``as_of`` (the end of ``day``, when the recommendations are served) are allowed.
    ``cands`` is sorted by user, then retrieval rank (:func:`core.retrieval.candidates`).
    """
    from streamrec_assets.core.retrieval import candidates

    users = pd.unique(events["user_id"])
    plays = events.loc[events["event_type"] == "play", ["user_id", "item_id", "event_timestamp"]]
    retrieval.history = refresh_history(retrieval.history, plays)
    as_of = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    allowed = items.loc[items["release_date"] <= as_of.strftime("%Y-%m-%d"), "item_id"].to_numpy()
    return candidates(retrieval, users, n=n, allowed_items=allowed), users, as_of


def feature_source(has_model: bool, day: str, online_day: str | None) -> str:
    """Where a day's features come from: the online store for the newest feature day; for a
    backfilled day, whose online values are newer than the day, the offline store as of its end
    (identical values, see the skew test); ``none`` without a model (retrieval order)."""
    if not has_model:
        return NONE
    return ONLINE if day == online_day else OFFLINE


# ---------------------------------------------------------------------------- entity features


def refs_by_key(refs: Sequence[str]) -> dict[str, list[str]]:
    """Feature references (``view:feature``) grouped by the join key of their view."""
    out: dict[str, list[str]] = {key: [] for key in VIEW_KEYS.values()}
    for ref in refs:
        view = ref.split(":", 1)[0]
        if view not in VIEW_KEYS:
            raise ValueError(f"feature reference {ref!r} is not of a view of {sorted(VIEW_KEYS)}")
        out[VIEW_KEYS[view]].append(ref)
    return out


def entity_ids(pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The distinct ids (sorted, int64) of each entity key in ``pairs``."""
    return {key: np.unique(pairs[key].to_numpy().astype("int64", copy=False)) for key in VIEW_KEYS.values()}


def lookup_entities(pairs: pd.DataFrame, refs: Sequence[str], lookup: EntityLookup) -> dict[str, pd.DataFrame]:
    """One ``lookup`` per entity key, of the distinct ids of ``pairs`` (keys without refs are skipped)."""
    ids = entity_ids(pairs)
    return {key: lookup(key, ids[key], key_refs) for key, key_refs in refs_by_key(refs).items() if key_refs}


def in_batches(ids: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """``ids`` in consecutive slices of at most ``batch``."""
    for start in range(0, len(ids), max(1, int(batch))):
        yield ids[start : start + batch]


# ------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class FeatureMatrix:
    """The numeric features of one entity as a matrix, for fast joins onto many pairs.

    Row ``i`` holds the features of ``ids[i]``; a last row of nulls answers ids without
    features. Non-numeric columns (the ``__date`` audit strings) are left out: they are
    never model features (:func:`core.training.model_feature_columns`).
    """

    key: str
    ids: pd.Index
    columns: list[str]
    values: np.ndarray

    @classmethod
    def of(cls, key: str, frame: pd.DataFrame) -> FeatureMatrix:
        frame = frame.drop_duplicates(key)
        cols = [c for c in frame.columns if "__" in c and pd.api.types.is_numeric_dtype(frame[c])]
        values = np.vstack([frame[cols].to_numpy(dtype="float64", na_value=np.nan), np.full((1, len(cols)), np.nan)])
        return cls(key, pd.Index(frame[key].to_numpy()), cols, values)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The feature rows of ``ids`` (an unknown id, -1 for the indexer, picks the last row: nulls)."""
        return self.values[self.ids.get_indexer(ids)]


def feature_matrices(features: Mapping[str, pd.DataFrame]) -> list[FeatureMatrix]:
    """One :class:`FeatureMatrix` per entity key of a :func:`lookup_entities` answer."""
    return [FeatureMatrix.of(key, frame) for key, frame in features.items()]


def join_entity_features(
    pairs: pd.DataFrame, features: Mapping[str, pd.DataFrame] | Sequence[FeatureMatrix]
) -> pd.DataFrame:
    """``pairs`` (row order kept, fresh index) with the numeric features of each entity joined on its key.

    Ids without a feature row get nulls, as a per-pair lookup returns them: the result holds,
    for every pair, the values one Feast row per (user, item) pair would hold (as float64).
    """
    matrices = feature_matrices(features) if isinstance(features, Mapping) else list(features)
    base = pairs.reset_index(drop=True)
    if not matrices:
        return base
    # One float64 block for all features (pandas then never consolidates many blocks).
    values = np.hstack([m.take(base[m.key].to_numpy()) for m in matrices])
    joined = pd.DataFrame(values, columns=[c for m in matrices for c in m.columns])
    return pd.concat([base, joined], axis=1)


def with_timestamps(items: pd.DataFrame, users: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Catalogues whose dates are parsed once (UTC midnight), as :func:`add_context_features` parses
    them per row: the same values, without parsing one date string per candidate pair."""
    items = items.assign(release_date=pd.to_datetime(items["release_date"], utc=True))
    users = users.assign(signup_date=pd.to_datetime(users["signup_date"], utc=True))
    return items, users


def user_slices(pairs: pd.DataFrame, max_rows: int) -> Iterator[pd.DataFrame]:
    """Consecutive slices of ``pairs`` (sorted by ``user_id``) of about ``max_rows`` rows, never splitting a user."""
    if pairs.empty:
        return
    user = pairs["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    bounds = [0]
    for start in starts[1:]:
        if start - bounds[-1] >= max_rows:
            bounds.append(int(start))
    bounds.append(len(pairs))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        yield pairs.iloc[lo:hi]


def retrieval_order_scores(cands: pd.DataFrame) -> pd.DataFrame:
    """Scores that keep the retrieval order (for days without a champion model)."""
    return cands[["user_id", "item_id"]].assign(score=-cands.groupby("user_id").cumcount().astype("float64"))


def model_scores(
    pairs: pd.DataFrame,
    model_bytes: bytes,
    items: pd.DataFrame,
    users: pd.DataFrame,
    as_of: pd.Timestamp,
    matrices: Sequence[FeatureMatrix] = (),
) -> pd.DataFrame:
    """``user_id, item_id, score`` of candidate pairs: the entity features joined from ``matrices``
    (or the pairs' own feature columns), plus the context features of ``as_of``, scored by the model."""
    from streamrec_assets.core.ranking import score
    from streamrec_assets.core.training import add_context_features

    feats = add_context_features(join_entity_features(pairs, matrices), items, users, as_of)
    return feats[["user_id", "item_id"]].assign(score=score(model_bytes, feats))


def top_recommendations(scored: pd.DataFrame, cands: pd.DataFrame, k: int = TOP_K) -> pd.DataFrame:
    """Top ``k`` of each user by score (ties: smaller ``item_id``): ``user_id, item_id, rank, score, candidate_source``."""
    from streamrec_assets.core.metrics import rank_by_score

    top = rank_by_score(scored[["user_id", "item_id", "score"]], k)
    top = top.merge(scored[["user_id", "item_id", "score"]], on=["user_id", "item_id"], how="left")
    top = top.merge(cands[["user_id", "item_id", "source"]], on=["user_id", "item_id"], how="left")
    return top.rename(columns={"source": "candidate_source"})


def recommend(
    cands: pd.DataFrame,
    model_bytes: bytes | None,
    items: pd.DataFrame,
    users: pd.DataFrame,
    as_of: pd.Timestamp,
    entity_features: Mapping[str, pd.DataFrame] | None,
    k: int = TOP_K,
    slice_rows: int = 500_000,
) -> pd.DataFrame:
    """Top-``k`` recommendations of every user of ``cands`` (``user_id, item_id, source``, sorted by user).

    Without a model, the retrieval order. With one, every pair is scored in slices of
    whole users (``slice_rows`` pairs), the features of ``entity_features`` (one frame
    per entity key, from :func:`lookup_entities`) joined onto each slice. The result
    equals scoring one feature row per pair at once (streamrec_assets_tests/test_serving.py).
    """
    if model_bytes is None or cands.empty:
        return top_recommendations(retrieval_order_scores(cands), cands, k)
    matrices = feature_matrices(entity_features or {})
    items, users = with_timestamps(items, users)
    tops = [
        top_recommendations(model_scores(part[["user_id", "item_id"]], model_bytes, items, users, as_of, matrices),
                            part, k)
        for part in user_slices(cands, slice_rows)
    ]
    return pd.concat(tops, ignore_index=True)


def recommendation_table(
    top: pd.DataFrame, day: str, model_version: int, feature_source: str
) -> pd.DataFrame:
    """The published table of a day (:data:`RECOMMENDATION_COLUMNS`, contract dtypes)."""
    out = top.assign(date=day, model_version=int(model_version), feature_source=feature_source)
    out = out[RECOMMENDATION_COLUMNS].astype(
        {"user_id": "int64", "rank": "int64", "item_id": "int64", "score": "float64", "model_version": "int64"}
    )
    return out.reset_index(drop=True)
