"""Offline ranking metrics (pure; numpy/pandas only).

Conventions shared by every metric:

* ``ranked``: ``user_id, item_id, rank`` (rank 1 = best). Only ranks ``<= k``
  count; a repeated ``(user_id, item_id)`` keeps its best rank.
* ``relevance``: ``user_id, item_id, relevance`` (graded, e.g. 2 = completed
  play, 1 = play, 0 = not relevant). A repeated ``(user_id, item_id)`` keeps
  its highest grade.
* Evaluated users are those with at least one item of relevance > 0; a user
  without a ranked list scores 0. Results are indexed by ``user_id`` (sorted).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["user_id", "item_id"]


def _relevant(relevance: pd.DataFrame) -> pd.DataFrame:
    """Items with relevance > 0, one row per (user, item) with its highest grade."""
    rel = relevance.loc[relevance["relevance"].to_numpy() > 0, [*KEYS, "relevance"]]
    return rel.groupby(KEYS, as_index=False, sort=True)["relevance"].max()


def _hits(ranked: pd.DataFrame, rel: pd.DataFrame, k: int) -> pd.DataFrame:
    """Relevant items ranked within the top ``k``: ``rel`` rows plus their best ``rank``."""
    top = ranked.loc[ranked["rank"].to_numpy() <= k, [*KEYS, "rank"]]
    hits = top.merge(rel, on=KEYS, how="inner")
    return hits.groupby(KEYS, as_index=False, sort=False).agg(rank=("rank", "min"), relevance=("relevance", "first"))


def _per_user(values: pd.Series, users: pd.Index, name: str) -> pd.Series:
    out = values.reindex(users, fill_value=0.0).astype("float64")
    out.index.name = "user_id"
    return out.rename(name)


def ndcg_at_k(ranked: pd.DataFrame, relevance: pd.DataFrame, k: int = 20) -> pd.Series:
    """NDCG@k per evaluated user: gain ``2**rel - 1``, discount ``1 / log2(rank + 1)``.

    IDCG uses the user's own relevance grades sorted descending, top ``k``.
    """
    rel = _relevant(relevance)
    users = pd.Index(rel["user_id"].unique(), name="user_id")
    if k <= 0 or users.empty:
        return pd.Series(np.zeros(len(users)), index=users, name="ndcg", dtype="float64")

    hits = _hits(ranked, rel, k)
    gain = np.exp2(hits["relevance"].to_numpy(dtype="float64")) - 1.0
    hits["dcg"] = gain / np.log2(hits["rank"].to_numpy(dtype="float64") + 1.0)
    dcg = hits.groupby("user_id")["dcg"].sum().reindex(users, fill_value=0.0)

    ideal = rel.sort_values(["user_id", "relevance"], ascending=[True, False], kind="mergesort")
    position = ideal.groupby("user_id", sort=False).cumcount().to_numpy() + 1
    ideal = ideal.loc[position <= k]
    position = position[position <= k]
    ideal_gain = np.exp2(ideal["relevance"].to_numpy(dtype="float64")) - 1.0
    idcg = (
        pd.Series(ideal_gain / np.log2(position + 1.0), index=ideal["user_id"].to_numpy())
        .groupby(level=0)
        .sum()
        .reindex(users)
    )
    return _per_user(dcg / idcg, users, "ndcg")


def recall_at_k(ranked: pd.DataFrame, relevance: pd.DataFrame, k: int = 100) -> pd.Series:
    """Share of the user's relevant items (relevance > 0) found in the top ``k`` of ``ranked``."""
    rel = _relevant(relevance)
    users = pd.Index(rel["user_id"].unique(), name="user_id")
    n_relevant = rel.groupby("user_id").size().reindex(users)
    if k <= 0 or users.empty:
        return pd.Series(np.zeros(len(users)), index=users, name="recall", dtype="float64")
    hits = _hits(ranked, rel, k)
    n_hits = hits.groupby("user_id").size().reindex(users, fill_value=0)
    return _per_user(n_hits / n_relevant, users, "recall")


def summarize(per_user: dict[str, pd.Series]) -> dict[str, float]:
    """Mean of each per-user metric, NaN-safe (NaNs skipped; an empty series gives NaN)."""
    return {name: float(pd.to_numeric(s, errors="coerce").mean()) for name, s in per_user.items()}


def rank_by_score(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """``(user_id, item_id, score)`` → ``(user_id, item_id, rank)``, top ``k`` per user.

    Higher score ranks first; ties go to the smaller ``item_id``; NaN scores rank last.
    Rows are sorted by ``user_id`` then ``rank``.
    """
    if k <= 0 or scores.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (*KEYS, "rank")})
    score = scores["score"].to_numpy(dtype="float64")
    # NaN -> -inf so that it sorts last under the descending order.
    neg = -np.where(np.isnan(score), -np.inf, score)
    order = np.lexsort((scores["item_id"].to_numpy(), neg, scores["user_id"].to_numpy()))
    user = scores["user_id"].to_numpy()[order]
    new_user = np.r_[True, user[1:] != user[:-1]]
    rank = np.arange(len(user)) - np.flatnonzero(new_user)[np.cumsum(new_user) - 1] + 1
    keep = rank <= k
    return pd.DataFrame(
        {"user_id": user[keep], "item_id": scores["item_id"].to_numpy()[order][keep], "rank": rank[keep]}
    )
