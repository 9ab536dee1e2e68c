"""Batch serving (pure; no Dagster, no Feast): candidates → features → champion scores → top-k.

Scoring is vectorised over every active user of a day. User and item features are
independent (one feature view per entity), so they are looked up **once per distinct
entity** and joined onto the (user, candidate item) pairs, instead of one feature row
per pair: :func:`entity_ids` says what to look up, :func:`join_entity_features` joins
the answers. The pairs are then scored in slices of whole users
(:func:`user_slices`) so that memory grows with the slice, not with the day.

What a product ships, also on day one and before any model exists:

* **Candidates** (:func:`serving_candidates`): retrieval (co-visitation with the user's plays,
  refreshed with the serving day's) filled from popularity; popularity is the window's plays
  plus the serving day's, followed by the released items nobody played yet, so the first day
  of history (no retrieval model yet) still has a pool. Each row's ``candidate_source``
  (:data:`CANDIDATE_SOURCES`) says where it came from.
* **Exclusion policy** (:func:`excluded_pairs`, :data:`EXCLUDE_POLICIES`): what a user already
  consumed in the :func:`consumption_days` window ``[L-28, L]`` (``L`` the last day whose events
  are known: the serving day; the day before the hold-out day in evaluation) is removed before
  the top ``n`` candidates are taken (:func:`streamrec_assets.core.retrieval.candidates`); the
  same function serves evaluation. Default ``completed``: items the user completed (a play of at
  least :data:`~streamrec_assets.core.features.COMPLETION_THRESHOLD` of the item) are excluded,
  partially watched ones stay eligible and are labelled ``continue_watching``.
* **Rankers**: the registry's champion *as of the serving day* (:func:`champion_as_of`: the
  latest recorded promotion of a version whose partition is on or before the day), so a
  re-materialised day is scored by the same version, byte for byte; before any promotion, the
  documented fallback ranks the candidates by popularity (:func:`popularity_scores`,
  ``ranker = popularity``, ``model_version`` null).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow import MlflowClient

TOP_K = 20
#: The join key of each feature view (one view per entity).
VIEW_KEYS = {"user_features": "user_id", "item_features": "item_id"}
RECOMMENDATION_COLUMNS = [
    "date", "user_id", "rank", "item_id", "score", "candidate_source", "ranker", "model_version", "feature_source",
]
ONLINE, OFFLINE, NONE = "online", "offline", "none"

#: ``candidate_source`` values: co-visitation with the user's recent plays; popularity (fill, or
#: fallback when retrieval has nothing for the user); popularity for a user without any play in
#: the window (no history at all); an item the user started but did not complete.
RETRIEVAL, POPULARITY, COLD_START, CONTINUE_WATCHING = "retrieval", "popularity", "cold_start", "continue_watching"
CANDIDATE_SOURCES = (RETRIEVAL, POPULARITY, COLD_START, CONTINUE_WATCHING)
#: ``ranker`` values: the registry's champion as of the day, or the popularity fallback (no champion yet).
CHAMPION_RANKER, POPULARITY_RANKER = "champion", "popularity"
RANKERS = (CHAMPION_RANKER, POPULARITY_RANKER)

#: Exclusion policies for already-consumed items: ``completed`` (default) excludes the items the user
#: completed in the window, ``played`` every item the user played, ``none`` nothing.
ExcludePolicy = Literal["completed", "played", "none"]
EXCLUDE_POLICIES: tuple[str, ...] = ("completed", "played", "none")
DEFAULT_EXCLUDE: ExcludePolicy = "completed"
#: The consumption window of a list made with the events through day ``L``: ``[L-28, L]``.
CONSUMPTION_WINDOW_DAYS = 28
#: The raw_events columns the consumption of a day is computed from.
CONSUMPTION_EVENT_COLUMNS = ["user_id", "item_id", "event_type", "watch_seconds"]

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


def serving_popularity(popularity: pd.DataFrame, plays: pd.DataFrame, items: pd.DataFrame, as_of: str) -> pd.DataFrame:
    """The popularity a day is served with: ``item_id, plays``.

    The window's plays (``popularity``, the retrieval model's) plus the serving day's ``plays``
    (``user_id, item_id``), plays desc then item_id asc; then every item of the catalogue released
    by ``as_of`` that nobody played (plays 0), newest release first, then item_id. So the first day
    of history, whose retrieval model has no plays yet, still has a full popularity pool.
    """
    day = plays["item_id"].to_numpy().astype("int64", copy=False)
    counts = pd.concat(
        [
            pd.Series(popularity["plays"].to_numpy().astype("int64", copy=False),
                      index=popularity["item_id"].to_numpy().astype("int64", copy=False)),
            pd.Series(np.ones(len(day), "int64"), index=day),
        ]
    ).groupby(level=0).sum()
    played = pd.DataFrame({"item_id": counts.index.to_numpy(), "plays": counts.to_numpy().astype("int64")})
    played = played.sort_values(["plays", "item_id"], ascending=[False, True], kind="stable")
    released = items.loc[(items["release_date"] <= as_of) & ~items["item_id"].isin(played["item_id"]),
                         ["item_id", "release_date"]]
    unplayed = released.sort_values(["release_date", "item_id"], ascending=[False, True], kind="stable")
    out = pd.concat([played, unplayed[["item_id"]].assign(plays=0)], ignore_index=True)
    return out.astype({"item_id": "int64", "plays": "int64"})


def serving_candidates(
    retrieval,
    events: pd.DataFrame,
    items: pd.DataFrame,
    day: str,
    n: int,
    consumed: pd.DataFrame | None = None,
    policy: ExcludePolicy = DEFAULT_EXCLUDE,
) -> tuple[pd.DataFrame, np.ndarray, pd.Timestamp]:
    """Candidates of every user active on ``day``: ``(cands, active users, as_of)``.

    The retrieval model's histories and popularity are refreshed with the day's plays
    (:func:`refresh_history`, :func:`serving_popularity`); items released by ``as_of`` (the end
    of ``day``, when the recommendations are served) are allowed; the items ``policy`` excludes
    from ``consumed`` (:func:`consumption`, window :func:`consumption_days` of ``day``) are never
    candidates. ``cands`` is sorted by user, then retrieval rank (:func:`core.retrieval.candidates`),
    its ``source`` one of :data:`CANDIDATE_SOURCES` (:func:`label_sources`).
    """
    from streamrec_assets.core.retrieval import candidates

    users = pd.unique(events["user_id"])
    plays = events.loc[events["event_type"] == "play", ["user_id", "item_id", "event_timestamp"]]
    retrieval.history = refresh_history(retrieval.history, plays)
    as_of = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    released_by = as_of.strftime("%Y-%m-%d")
    retrieval.popularity = serving_popularity(retrieval.popularity, plays, items, released_by)
    allowed = items.loc[items["release_date"] <= released_by, "item_id"].to_numpy()
    consumed = empty_consumption() if consumed is None else consumed
    cands = candidates(retrieval, users, n=n, allowed_items=allowed, exclude_pairs=excluded_pairs(consumed, policy))
    return label_sources(cands, retrieval.history["user_id"].to_numpy(), consumed), users, as_of


# ------------------------------------------------------------------------- exclusion policy


def consumption_days(last_day: str, window: int = CONSUMPTION_WINDOW_DAYS) -> list[str]:
    """The days whose consumption a list made with the events through ``last_day`` looks at:
    ``[last_day - window, last_day]`` (serving day D: ``[D-28, D]``; evaluation of hold-out day D,
    whose knowledge ends the day before: ``[D-29, D-1]``)."""
    from streamrec_assets.core.dates import window_days

    return window_days(last_day, window + 1)


def empty_consumption() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64"),
                         "completed": pd.Series(dtype=bool)})


def consumption_of_day(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """What each user consumed on one day: ``user_id, item_id, completed``, one row per pair played.

    ``completed``: at least one play of the pair watched :data:`COMPLETION_THRESHOLD` of the item's
    duration (the definition of ``completions`` in the daily activity tables and of label 2)."""
    from streamrec_assets.core.features import COMPLETION_THRESHOLD

    plays = events.loc[events["event_type"] == "play"] if "event_type" in events.columns else events
    if plays.empty:
        return empty_consumption()
    duration = plays["item_id"].map(items.set_index("item_id")["duration_seconds"]).to_numpy(dtype="float64")
    done = plays["watch_seconds"].to_numpy(dtype="float64") >= COMPLETION_THRESHOLD * duration
    frame = pd.DataFrame({"user_id": plays["user_id"].to_numpy().astype("int64", copy=False),
                          "item_id": plays["item_id"].to_numpy().astype("int64", copy=False), "completed": done})
    return consumption([frame])


def consumption(days: Iterable[pd.DataFrame], users: np.ndarray | None = None) -> pd.DataFrame:
    """The consumption of several days combined (completed if completed on any day), for ``users`` only
    if given; sorted by user, then item."""
    frames = [f if users is None else f[f["user_id"].isin(users)] for f in days]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_consumption()
    out = pd.concat(frames, ignore_index=True).groupby(["user_id", "item_id"], as_index=False, sort=True)
    return out["completed"].max().astype({"user_id": "int64", "item_id": "int64", "completed": bool})


def excluded_pairs(consumed: pd.DataFrame, policy: ExcludePolicy = DEFAULT_EXCLUDE) -> pd.DataFrame:
    """The ``(user_id, item_id)`` pairs that ``policy`` keeps out of a user's candidates and lists:
    ``completed`` the completed items, ``played`` every consumed item, ``none`` nothing."""
    if policy not in EXCLUDE_POLICIES:
        raise ValueError(f"unknown exclusion policy {policy!r}; one of {EXCLUDE_POLICIES}")
    if policy == "none":
        keep = np.zeros(len(consumed), dtype=bool)
    elif policy == "played":
        keep = np.ones(len(consumed), dtype=bool)
    else:
        keep = consumed["completed"].to_numpy(dtype=bool)
    return consumed.loc[keep, ["user_id", "item_id"]].reset_index(drop=True)


def label_sources(cands: pd.DataFrame, users_with_history: np.ndarray, consumed: pd.DataFrame) -> pd.DataFrame:
    """``cands`` with ``source`` in :data:`CANDIDATE_SOURCES`: ``retrieval`` for co-visitation,
    ``popularity`` for the fill, ``cold_start`` for the popularity of a user with no play in the
    window (not in ``users_with_history``), and ``continue_watching`` for an item the user played
    without completing it in the consumption window (whatever found it)."""
    from streamrec_assets.core.retrieval import COVIS

    user = cands["user_id"].to_numpy()
    source = np.where(cands["source"].to_numpy() == COVIS, RETRIEVAL, POPULARITY).astype(object)
    source[(source == POPULARITY) & ~np.isin(user, users_with_history)] = COLD_START
    partial = consumed.loc[~consumed["completed"].to_numpy(dtype=bool), ["user_id", "item_id"]]
    if len(partial) and len(cands):
        index = pd.MultiIndex.from_frame(partial)
        started = index.get_indexer(pd.MultiIndex.from_arrays([user, cands["item_id"].to_numpy()])) >= 0
        source[started] = CONTINUE_WATCHING
    return cands.assign(source=source)


def feature_source(has_model: bool, day: str, online_day: str | None) -> str:
    """Where a day's features come from: the online store for the newest feature day; for a
    backfilled day, whose online values are newer than the day, the offline store as of its end
    (identical values, see the skew test); ``none`` without a model (popularity fallback)."""
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
    """Scores that keep the retrieval order."""
    return cands[["user_id", "item_id"]].assign(score=-cands.groupby("user_id").cumcount().astype("float64"))


def popularity_scores(cands: pd.DataFrame, popularity: pd.DataFrame) -> pd.DataFrame:
    """The fallback ranker (no champion yet): each candidate's plays in ``popularity`` (``item_id,
    plays``, :func:`serving_popularity`; 0 when absent) as its score; ties go to the smaller item_id."""
    plays = popularity.drop_duplicates("item_id").set_index("item_id")["plays"]
    score = cands["item_id"].map(plays).fillna(0).to_numpy(dtype="float64")
    return cands[["user_id", "item_id"]].assign(score=score)


def model_scores(
    pairs: pd.DataFrame,
    model_bytes: bytes,
    items: pd.DataFrame,
    users: pd.DataFrame,
    as_of: pd.Timestamp,
    matrices: Sequence[FeatureMatrix] = (),
    taste=None,
) -> pd.DataFrame:
    """``user_id, item_id, score`` of candidate pairs: the entity features joined from ``matrices``
    (or the pairs' own feature columns), plus the context features of ``as_of`` and the ``taste``
    model's scores, scored by the model."""
    from streamrec_assets.core.ranking import score
    from streamrec_assets.core.training import add_context_features

    feats = add_context_features(join_entity_features(pairs, matrices), items, users, as_of, taste)
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
    popularity: pd.DataFrame | None = None,
    taste=None,
) -> pd.DataFrame:
    """Top-``k`` recommendations of every user of ``cands`` (``user_id, item_id, source``, sorted by user).

    Without a model, the popularity fallback (:func:`popularity_scores` of ``popularity``, which is
    then required). With one, every pair is scored in slices of whole users (``slice_rows`` pairs),
    the features of ``entity_features`` (one frame per entity key, from :func:`lookup_entities`)
    joined onto each slice. The result equals scoring one feature row per pair at once
    (streamrec_assets_tests/test_serving.py).
    """
    if model_bytes is None:
        if popularity is None:
            raise ValueError("without a model, recommend() ranks by popularity: pass popularity")
        return top_recommendations(popularity_scores(cands, popularity), cands, k)
    if cands.empty:
        return top_recommendations(retrieval_order_scores(cands), cands, k)
    matrices = feature_matrices(entity_features or {})
    items, users = with_timestamps(items, users)
    tops = [
        top_recommendations(
            model_scores(part[["user_id", "item_id"]], model_bytes, items, users, as_of, matrices, taste), part, k
        )
        for part in user_slices(cands, slice_rows)
    ]
    return pd.concat(tops, ignore_index=True)


def recommendation_table(
    top: pd.DataFrame, day: str, model_version: int | None, feature_source: str
) -> pd.DataFrame:
    """The published table of a day (:data:`RECOMMENDATION_COLUMNS`, contract dtypes): ``ranker``
    ``champion`` with the champion's ``model_version``, or ``popularity`` with a null version."""
    ranker = POPULARITY_RANKER if model_version is None else CHAMPION_RANKER
    version = pd.array([model_version] * len(top), dtype="Int64")
    out = top.assign(date=day, ranker=ranker, model_version=version, feature_source=feature_source)
    out = out[RECOMMENDATION_COLUMNS].astype(
        {"user_id": "int64", "rank": "int64", "item_id": "int64", "score": "float64", "model_version": "Int64"}
    )
    return out.reset_index(drop=True)


# ------------------------------------------------------------------- the champion as of a day


@dataclass(frozen=True)
class PromotionRecord:
    """One registry version as the as-of rule sees it: its partition (the day it was registered
    for, tag ``partition``) and its recorded promotion decision (tag ``streamrec.promotion``)."""

    version: int
    partition: str | None
    status: str | None  #: the decision's status (``promoted``, ``champion_kept``, ...); None while undecided
    decided_at: str = ""


def champion_as_of(records: Iterable[PromotionRecord], day: str) -> PromotionRecord | None:
    """The champion as it stood at ``day``: of the versions whose recorded decision made them
    champion (``promoted`` or ``already_champion``) and whose partition is on or before ``day``,
    the one of the latest partition (then the latest decision, then the highest version).

    A pure function of the recorded decisions and the day, never of the current alias or of when
    the lookup runs: re-materialising a day picks the same version. Champions are only ever
    replaced by a promotion of a newer partition (the gate never promotes an older one), so this is
    the version that was champion at the end of ``day`` when the days ran in order. ``None`` before
    the first promotion: the popularity fallback ranks.
    """
    from streamrec_assets.core.registry import CHAMPION_DECISIONS

    statuses = {str(s) for s in CHAMPION_DECISIONS}
    eligible = [r for r in records if r.status in statuses and r.partition is not None and r.partition <= day]
    return max(eligible, key=lambda r: (r.partition, r.decided_at, r.version), default=None)


def promotion_records(client: MlflowClient, name: str) -> list[PromotionRecord]:
    """Every live version of registered model ``name`` with its partition and recorded decision
    (the tags :mod:`streamrec_assets.core.registry` writes), sorted by version."""
    from streamrec_assets.core.registry import PARTITION_TAG, Decision

    records = []
    for version in client.search_model_versions(f"name='{name}'"):
        tags = version.tags or {}
        decision = Decision.from_tags(tags)
        records.append(
            PromotionRecord(
                version=int(version.version),
                partition=tags.get(PARTITION_TAG),
                status=None if decision is None else decision.status.value,
                decided_at="" if decision is None else decision.decided_at,
            )
        )
    return sorted(records, key=lambda r: r.version)
