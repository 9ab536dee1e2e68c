"""A data source's reference ranking, as an optional input to the offline evaluation (pure).

A *reference* is a table ``user_id, item_id, score`` (higher = better) that the data source
may deliver with a day (landing zone ``reference/``, :mod:`streamrec_assets.landing`): the
synthetic generator writes its hidden affinity for every pair impressed on the day and each
active user's top items; real data has none. The evaluation's ``oracle`` method is computed
from it, and left out when a day has none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamrec_assets.core.metrics import KEYS, rank_by_score

SCORE = "score"


def _unique_pairs(reference: pd.DataFrame) -> pd.DataFrame:
    """``user_id, item_id, score`` with one row per pair (a repeated pair keeps its highest score)."""
    ref = reference[[*KEYS, SCORE]]
    if ref.duplicated(KEYS).any():
        ref = ref.groupby(KEYS, as_index=False, sort=False)[SCORE].max()
    return ref


def slate_scores(slates: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The reference score of each (user, item) pair of ``slates``: ``(user_id, item_id, score)``
    in the slates' order, and the number of pairs the reference does not hold (their score is
    NaN: :func:`~streamrec_assets.core.metrics.rank_by_score` ranks them last)."""
    pairs = slates[KEYS].astype("int64")
    ref = _unique_pairs(reference[reference["user_id"].isin(pairs["user_id"].unique())])
    scored = pairs.merge(ref.astype({"user_id": "int64", "item_id": "int64"}), on=KEYS, how="left")
    scored[SCORE] = scored[SCORE].astype("float64")
    return scored, int(scored[SCORE].isna().sum())


def reference_ranking(
    reference: pd.DataFrame,
    users: np.ndarray,
    n: int,
    allowed_items: np.ndarray | None = None,
    exclude: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The top ``n`` items per user of ``users`` by reference score: ``user_id, item_id, rank``
    (rank 1 = best, ties to the smaller ``item_id``; the format of
    :func:`~streamrec_assets.core.metrics.rank_by_score`).

    Only items of ``allowed_items`` (when given) count, and the (user, item) pairs of ``exclude``
    never appear. A user the reference does not cover gets no list; one it covers with fewer
    than ``n`` eligible items gets a shorter one. The list is the exact top ``n`` as long as the
    reference holds, for each user, every item scoring above its ``n``-th eligible one: the
    generator's holds each active user's top 200 released items, enough for ``n`` = 100 with up
    to 100 of them excluded or not allowed."""
    users = np.asarray(users, dtype="int64")
    ref = reference[reference["user_id"].isin(users)]
    if allowed_items is not None:
        ref = ref[ref["item_id"].isin(np.asarray(allowed_items, dtype="int64"))]
    if exclude is not None and len(exclude) and len(ref):
        excluded = pd.MultiIndex.from_frame(exclude[KEYS].astype("int64"))
        ref = ref[~pd.MultiIndex.from_frame(ref[KEYS].astype("int64")).isin(excluded)]
    ranked = rank_by_score(_unique_pairs(ref), n)
    return ranked.astype({"user_id": "int64", "item_id": "int64", "rank": "int64"})
