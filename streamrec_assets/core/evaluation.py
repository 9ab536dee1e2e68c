"""Offline evaluation of a day: relevance, rankings of each method, NDCG@20 / Recall@100 (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamrec_assets.core.features import COMPLETION_THRESHOLD
from streamrec_assets.core.metrics import ndcg_at_k, recall_at_k

NDCG_K = 20
RECALL_K = 100
METHODS = ("ours", "popularity", "oracle")


def relevance_of_day(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Graded relevance per (user, item) played on the day: 2 completed, 1 played."""
    plays = events[events["event_type"] == "play"][["user_id", "item_id", "watch_seconds"]]
    duration = plays["item_id"].map(items.set_index("item_id")["duration_seconds"])
    plays = plays.assign(relevance=np.where(plays["watch_seconds"] >= COMPLETION_THRESHOLD * duration, 2, 1))
    rel = plays.groupby(["user_id", "item_id"], as_index=False)["relevance"].max()
    return rel.astype({"relevance": "int64"})


def sample_users(user_ids: np.ndarray, max_users: int, seed: int = 0) -> np.ndarray:
    """A deterministic sample (sorted) of at most ``max_users`` users."""
    users = np.unique(np.asarray(user_ids, dtype="int64"))
    if len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def popularity_ranking(popularity: pd.DataFrame, users: np.ndarray, allowed: np.ndarray, k: int) -> pd.DataFrame:
    """The same top-k popular (allowed) items for every user."""
    top = popularity[popularity["item_id"].isin(allowed)].head(k)["item_id"].to_numpy()
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, len(top)),
            "item_id": np.tile(top, len(users)),
            "rank": np.tile(np.arange(1, len(top) + 1), len(users)),
        }
    )


# ---------------------------------------------------------------- exclusion policy (Recall@100)


def apply_exclusion(ranking: pd.DataFrame, excluded: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """``ranking`` (``user_id, item_id, rank``) without the ``excluded`` (user, item) pairs, the
    rest moved up (ranks 1..k again) and cut at ``k``. Give it a list deep enough (``k`` plus the
    user's exclusions, :func:`deepest_exclusion`) for every user to keep ``k`` items."""
    if excluded is not None and len(excluded) and len(ranking):
        index = pd.MultiIndex.from_frame(excluded[["user_id", "item_id"]].astype("int64"))
        hit = index.get_indexer(pd.MultiIndex.from_frame(ranking[["user_id", "item_id"]].astype("int64"))) >= 0
        ranking = ranking.loc[~hit]
    ranking = ranking.sort_values(["user_id", "rank"], kind="stable")
    ranking = ranking.assign(rank=ranking.groupby("user_id").cumcount() + 1)
    return ranking.loc[ranking["rank"] <= k, ["user_id", "item_id", "rank"]].reset_index(drop=True)


def deepest_exclusion(excluded: pd.DataFrame | None) -> int:
    """The most (user, item) pairs any one user has excluded."""
    if excluded is None or excluded.empty:
        return 0
    return int(excluded.groupby("user_id").size().max())


def recall_lists(
    retrieval,
    users: np.ndarray,
    allowed: np.ndarray,
    excluded: pd.DataFrame | None = None,
    k: int = RECALL_K,
    reference: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Each method's top-``k`` list per user, for Recall@k, under an exclusion policy: ``excluded``
    (:func:`streamrec_assets.core.serving.excluded_pairs` of the users' consumption in
    :func:`~streamrec_assets.core.serving.consumption_days` of the day before) never appears.

    ``ours`` are the retrieval candidates exactly as serving makes them (the same
    :func:`~streamrec_assets.core.retrieval.candidates` with the same exclusions); ``popularity``
    is filtered the same way (:func:`apply_exclusion`), and so is ``oracle`` when the data source
    supplies a ``reference`` ranking (:func:`streamrec_assets.core.reference.reference_ranking`)."""
    from streamrec_assets.core.reference import reference_ranking
    from streamrec_assets.core.retrieval import candidates

    cands = candidates(retrieval, users, n=k, allowed_items=allowed, exclude_pairs=excluded)
    deep = k + deepest_exclusion(excluded)
    lists = {
        "ours": cands.assign(rank=cands.groupby("user_id").cumcount() + 1)[["user_id", "item_id", "rank"]],
        "popularity": apply_exclusion(popularity_ranking(retrieval.popularity, users, allowed, deep), excluded, k),
    }
    if reference is not None:
        lists["oracle"] = reference_ranking(reference, users, k, allowed, exclude=excluded)
    return lists


def exclusion_effect(
    with_policy: dict[str, pd.DataFrame],
    without_policy: dict[str, pd.DataFrame],
    plays: pd.DataFrame,
    policy: str,
    excluded: pd.DataFrame | None,
    k: int = RECALL_K,
) -> dict[str, float | int | str]:
    """Metadata on the policy's effect on Recall@k: ``<prefix>recall_at_100`` under the policy and
    ``<prefix>recall_at_100_no_exclusion`` without it (prefix ``''`` for ours, ``popularity_``,
    ``oracle_``), plus the policy and the pairs it excluded."""
    out: dict[str, float | int | str] = {
        "exclude": policy,
        "excluded_pairs": 0 if excluded is None else int(len(excluded)),
        "users_with_exclusions": 0 if excluded is None or excluded.empty else int(excluded["user_id"].nunique()),
    }
    for method, prefix in (("ours", ""), ("popularity", "popularity_"), ("oracle", "oracle_")):
        for lists, suffix in ((with_policy, ""), (without_policy, "_no_exclusion")):
            if method in lists:
                recall = recall_at_k(lists[method], plays, k)
                out[f"{prefix}recall_at_{k}{suffix}"] = float(recall.mean()) if len(recall) else float("nan")
    return out


def impression_slates(examples: pd.DataFrame) -> pd.DataFrame:
    """Each user's logged slate of a day: one row per (user, item) impressed, best label as relevance.

    Only users whose slate can be ranked (two items or more, at least one played) are kept.
    """
    slate = examples.groupby(["user_id", "item_id"], as_index=False)["label"].max()
    g = slate.groupby("user_id")["label"]
    slate = slate[(g.transform("size") > 1) & (g.transform("max") > 0)]
    return slate.rename(columns={"label": "relevance"}).reset_index(drop=True)


def evaluation_table(
    ranking: dict[str, pd.DataFrame],
    slates: pd.DataFrame,
    retrieval: dict[str, pd.DataFrame],
    plays: pd.DataFrame,
) -> pd.DataFrame:
    """One row per method: NDCG@20 of its ordering of the logged slates, Recall@100 of its
    top-100 list against the day's plays, and the users each was measured on."""
    rows = []
    for method in ranking:
        ndcg = ndcg_at_k(ranking[method], slates, NDCG_K)
        recall = recall_at_k(retrieval[method], plays, RECALL_K) if method in retrieval else pd.Series(dtype=float)
        rows.append(
            {
                "method": method,
                "users": int(len(ndcg)),
                "ndcg_at_20": float(ndcg.mean()) if len(ndcg) else float("nan"),
                "recall_at_100": float(recall.mean()) if len(recall) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def oracle_lift_captured(ndcg: float, popularity_ndcg: float, oracle_ndcg: float | None) -> float | None:
    """Share of the oracle's NDCG@20 lift over popularity that the ranker captures:
    ``(ours - popularity) / (oracle - popularity)``. None (the metric is left out) without an
    oracle, when a value is not a finite number, or when the oracle does not beat popularity
    (denominator <= 0). 1 = as good as the oracle, 0 = no better than popularity; negative when
    the ranker is worse than popularity."""
    values = (ndcg, popularity_ndcg, oracle_ndcg)
    if oracle_ndcg is None or not all(np.isfinite(float(v)) for v in values):
        return None
    headroom = float(oracle_ndcg) - float(popularity_ndcg)
    if headroom <= 0:
        return None
    return (float(ndcg) - float(popularity_ndcg)) / headroom


def promotion_decision(
    challenger_ndcg: float,
    champion_ndcg: float | None,
    tolerance: float,
    day: str,
    champion_version: str | None,
    champion_day: str | None = None,
    gate_day: str | None = None,
) -> tuple[bool, str]:
    """The registry's gate: promote when there is no champion, or when the challenger's NDCG@20
    on the gate day (``gate_day``, the model day's D-1; ``day`` when not given) is at least the
    champion's on the same slates minus ``tolerance``.
    A challenger trained on older data than the champion (a history backfill running newest
    first) is never promoted."""
    if champion_ndcg is None:
        return True, "first registered model becomes champion"
    if champion_day is not None and day < champion_day:
        return False, (
            f"challenger of {day} is older than champion v{champion_version} of {champion_day}; "
            "a backfilled model never replaces a newer champion"
        )
    promote = challenger_ndcg >= champion_ndcg - tolerance
    verdict = ">=" if promote else "<"
    return promote, (
        f"challenger NDCG@20 {challenger_ndcg:.4f} {verdict} champion v{champion_version} "
        f"{champion_ndcg:.4f} - tolerance {tolerance} on {gate_day or day}"
    )


#: Below this many users measured by both the ranker and popularity, a day's lift is noise: not judged.
MIN_USERS_FOR_LIFT = 20


@dataclass(frozen=True)
class LiftVerdict:
    """Whether the ranker's NDCG@20 beats the popularity baseline's on a day's hold-out."""

    passed: bool
    judged: bool
    note: str
    lift: float = float("nan")  #: ranker NDCG@20 - popularity NDCG@20 (same users, same slates)
    ndcg_at_20: float = float("nan")
    popularity_ndcg_at_20: float = float("nan")
    users: int = 0


def beats_popularity(
    table: pd.DataFrame,
    train_days: int | None = None,
    min_train_days: int = 0,
    min_lift: float = 0.0,
    min_users: int = MIN_USERS_FOR_LIFT,
) -> LiftVerdict:
    """The ranker's NDCG@20 lift over popularity is at least ``min_lift`` (``table``: a day's
    evaluation table, one row per method). Passes unjudged, with a note, a day without a ranker
    evaluation, a ranker trained on fewer than ``min_train_days`` days (its window is not full
    yet: insufficient history) and a day with fewer than ``min_users`` users measured."""
    by = table.set_index("method") if len(table) else pd.DataFrame()
    if not {"ours", "popularity"} <= set(by.index):
        return LiftVerdict(True, False, "no ranking model evaluated on this day: nothing to compare")
    ours, pop = by.loc["ours"], by.loc["popularity"]
    users = int(min(ours["users"], pop["users"]))
    ndcg, baseline = float(ours["ndcg_at_20"]), float(pop["ndcg_at_20"])
    lift = ndcg - baseline
    figures = {"lift": lift, "ndcg_at_20": ndcg, "popularity_ndcg_at_20": baseline, "users": users}
    if np.isnan(lift):
        return LiftVerdict(True, False, "NDCG@20 not measured for the ranker or popularity: nothing to compare",
                           **figures)
    if train_days is not None and train_days < min_train_days:
        return LiftVerdict(
            True, False, f"insufficient history: ranker trained on {train_days} of {min_train_days} days", **figures
        )
    if users < min_users:
        return LiftVerdict(True, False, f"{users} users measured (< {min_users}): too few to judge", **figures)
    verdict = ">=" if lift >= min_lift else "<"
    note = f"NDCG@20 {ndcg:.4f} - popularity {baseline:.4f} = {lift:+.4f} {verdict} {min_lift} on {users} users"
    return LiftVerdict(bool(lift >= min_lift), True, note, **figures)
