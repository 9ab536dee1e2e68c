"""Co-visitation from daily aggregates (pure; numpy/pandas only).

:func:`streamrec_assets.core.retrieval.train_covisitation` trains on the raw plays of a
whole window. This module splits the same computation in two, so that the model of day
D reads the small daily aggregates of its window instead of 28 days of raw events:

1. :func:`daily_coplay` reduces the plays of *one* day to three tables:

   * ``pairs``: ``item_lo, item_hi, d1..dL`` (``item_lo < item_hi``): how often the two
     items were played ``d`` plays apart (``d = 1..L``, ``L`` = :data:`LOOKAHEAD`) in one
     user's play sequence *of that day*;
   * ``history``: ``user_id, item_id, last_played, plays``: one row per (user, item)
     played that day;
   * ``edges``: ``user_id, item_id, pos, rpos``: the first and the last ``L`` plays of
     each user's day (``pos`` counted from the day's first play, ``rpos`` from its last).

2. :func:`train_from_daily` combines the aggregates of the window's days:

   * popularity = the sum of the daily (user, item) plays per item;
   * history = for each user the ``max_history`` most recently played items, found by
     walking the days newest first (a day's items can only fill the slots the newer
     days left free), with their plays summed over the window;
   * pair counts = the daily within-day counts summed per distance, plus the pairs that
     *span* a day boundary. Those are rebuilt exactly by walking the days oldest first
     with a **carry-over**: each user's last ``L`` plays before the day (from however
     many earlier days of the window). A carried play at age ``a`` (0 = the user's
     latest) and a play at position ``p`` of the day are ``a + p + 1`` plays apart; the
     carry then advances by the day's tail. The carry starts empty at the window's first
     day, so a pair never reaches outside the window, as in the reference.

   Scores are ``Σ_d count_d / d`` summed in the reference's order (``d = 1..L``) from
   integer counts, so they are bit-identical to :func:`train_covisitation`'s, and the
   neighbour, popularity and history orders (ties included) are the same.

The carry-over needs each day's plays to come after the previous day's in time, which
the raw events contract guarantees (``timestamp_in_partition``) and the history
table's contract re-checks (``last_played`` inside the partition day).

Memory of :func:`train_from_daily` grows with the aggregates of its window (distinct
item pairs, users × ``max_history``, users × ``L`` carried plays) plus one day's tables
at a time, never with the raw events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from streamrec_assets.core.retrieval import (
    RetrievalModel,
    _argsort_rows,
    _coerce,
    _position_in_group,
    _ts_int,
)

#: The longest distance kept in the daily tables; retrieval may use any lookahead up to it.
LOOKAHEAD = 5
MAX_NEIGHBORS = 50
MAX_HISTORY = 20
DISTANCES = tuple(f"d{d}" for d in range(1, LOOKAHEAD + 1))
COUNT_DTYPE = "int32"

PAIRS_COLUMNS = ("date", "item_lo", "item_hi", *DISTANCES)
HISTORY_COLUMNS = ("date", "user_id", "item_id", "last_played", "plays")
EDGES_COLUMNS = ("date", "user_id", "item_id", "pos", "rpos")
#: Columns the combiner reads (never the repeated ``date``).
PAIRS_READ = ("item_lo", "item_hi", *DISTANCES)
HISTORY_READ = ("user_id", "item_id", "last_played", "plays")
EDGES_READ = ("user_id", "item_id", "pos", "rpos")

#: Below this many pending pair rows the accumulator does not bother to compact.
_COMPACT_MIN_ROWS = 1 << 20


# ----------------------------------------------------------------------------------- one day


def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in columns.items()})


def _plays_sorted(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user, item, t_us)`` of the plays, ordered like the reference: user, time, item."""
    if "event_type" in events.columns:
        events = events.loc[events["event_type"] == "play"]
    user = events["user_id"].to_numpy().astype("int64", copy=False)
    item = events["item_id"].to_numpy().astype("int64", copy=False)
    if len(events) == 0:
        return user, item, np.zeros(0, "int64")
    t = _ts_int(pd.to_datetime(events["event_timestamp"], utc=True))
    order = _argsort_rows(user, t, item)
    return user[order], item[order], t[order]


def daily_coplay(events: pd.DataFrame, day: str, lookahead: int = LOOKAHEAD) -> dict[str, pd.DataFrame]:
    """The co-visitation aggregates of one day's events: ``{"pairs", "history", "edges"}``.

    ``events``: ``user_id, item_id, event_timestamp`` and, optionally, ``event_type``
    (only ``'play'`` rows count). All three tables carry ``date = day``.
    """
    user, item, t = _plays_sorted(events)
    n = len(user)
    return {
        "pairs": _day_pairs(user, item, lookahead).assign(date=day)[list(PAIRS_COLUMNS[: 3 + lookahead])],
        "history": _day_history(user, item, t).assign(date=day)[list(HISTORY_COLUMNS)],
        "edges": _day_edges(user, item, n, lookahead).assign(date=day)[list(EDGES_COLUMNS)],
    }


def _day_pairs(user: np.ndarray, item: np.ndarray, lookahead: int) -> pd.DataFrame:
    """Per unordered item pair, the count of plays ``d`` apart within a user's day, ``d = 1..lookahead``."""
    columns = {"item_lo": "int64", "item_hi": "int64", **{f"d{d}": COUNT_DTYPE for d in range(1, lookahead + 1)}}
    if len(item) < 2:
        return _empty(columns)
    universe, codes = np.unique(item, return_inverse=True)
    codes = codes.astype("int64")
    n_items = np.int64(len(universe))
    per_distance = []
    for d in range(1, lookahead + 1):
        if d >= len(codes):
            per_distance.append((np.zeros(0, "int64"), np.zeros(0, "int64")))
            continue
        a, b = codes[:-d], codes[d:]
        keep = (user[:-d] == user[d:]) & (a != b)
        a, b = a[keep], b[keep]
        per_distance.append(np.unique(np.minimum(a, b) * n_items + np.maximum(a, b), return_counts=True))
    keys = np.unique(np.concatenate([k for k, _ in per_distance]))
    out = {"item_lo": universe[keys // n_items], "item_hi": universe[keys % n_items]}
    for d, (k, c) in enumerate(per_distance, start=1):
        counts = np.zeros(len(keys), COUNT_DTYPE)
        counts[np.searchsorted(keys, k)] = c
        out[f"d{d}"] = counts
    return pd.DataFrame(out)


def _day_history(user: np.ndarray, item: np.ndarray, t: np.ndarray) -> pd.DataFrame:
    """One row per (user, item): the latest play and the number of plays (sorted user, item)."""
    by = _argsort_rows(user, item)  # stable: time order kept inside a pair, its last row is the latest
    h_user, h_item, h_t = user[by], item[by], t[by]
    last = np.ones(len(by), dtype=bool)
    last[:-1] = (h_user[1:] != h_user[:-1]) | (h_item[1:] != h_item[:-1])
    ends = np.flatnonzero(last)
    plays = np.diff(ends, prepend=-1).astype("int64")
    return pd.DataFrame(
        {
            "user_id": h_user[ends],
            "item_id": h_item[ends],
            "last_played": pd.Series(h_t[ends].astype("datetime64[us]")).dt.tz_localize("UTC"),
            "plays": plays,
        }
    )


def _day_edges(user: np.ndarray, item: np.ndarray, n: int, lookahead: int) -> pd.DataFrame:
    """The first and last ``lookahead`` plays of each user's day, in play order."""
    pos = _position_in_group(user)
    ends = np.r_[user[1:] != user[:-1], True] if n else np.zeros(0, bool)
    per_user = np.diff(np.flatnonzero(ends), prepend=-1)
    rpos = np.repeat(per_user, per_user) - 1 - pos
    keep = (pos < lookahead) | (rpos < lookahead)
    return pd.DataFrame(
        {
            "user_id": user[keep],
            "item_id": item[keep],
            "pos": pos[keep].astype(COUNT_DTYPE),
            "rpos": rpos[keep].astype(COUNT_DTYPE),
        }
    )


# -------------------------------------------------------------------------------- the window


class _PairCounts:
    """Integer pair counts per distance, keyed by ``lo_code * n + hi_code``.

    ``keys`` is sorted and unique; a day's counts of known pairs are added in place, new
    pairs wait in ``pending`` and are merged in when they outgrow the known ones, so the
    work per day grows with the day's pairs and the memory with the window's.
    """

    def __init__(self, n_items: int, lookahead: int):
        self.n = np.int64(max(n_items, 1))
        self.lookahead = lookahead
        self.keys = np.zeros(0, "int64")
        self.counts = np.zeros((0, lookahead), COUNT_DTYPE)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.peak_rows = 0

    def add(self, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray) -> None:
        """Add counts (rows of ``lookahead`` columns) of the code pairs ``lo < hi``, each pair once."""
        counts = counts.astype(COUNT_DTYPE, copy=False)
        nonzero = counts.any(axis=1)  # a shorter lookahead than the tables': drop pairs seen only farther apart
        if not nonzero.all():
            lo, hi, counts = lo[nonzero], hi[nonzero], counts[nonzero]
        if len(lo) == 0:
            return
        keys = lo.astype("int64") * self.n + hi.astype("int64")
        if len(self.keys):
            at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            known = self.keys[at] == keys
            self.counts[at[known]] += counts[known]  # unique keys: no index repeats
            keys, counts = keys[~known], counts[~known]
        if len(keys):
            self.pending.append((keys, counts))
            self.pending_rows += len(keys)
            self.peak_rows = max(self.peak_rows, len(self.keys) + self.pending_rows)
            if self.pending_rows > max(len(self.keys), _COMPACT_MIN_ROWS):
                self.compact()

    def add_at_distances(self, lo: np.ndarray, hi: np.ndarray, distance: np.ndarray) -> None:
        """Add one count for each ``(lo, hi)`` code pair at its ``distance`` (repeats allowed)."""
        if len(lo) == 0:
            return
        L = np.int64(self.lookahead)
        cell, n = np.unique((lo.astype("int64") * self.n + hi.astype("int64")) * L + (distance - 1),
                            return_counts=True)
        keys, inverse = np.unique(cell // L, return_inverse=True)
        counts = np.zeros((len(keys), self.lookahead), COUNT_DTYPE)
        counts[inverse, cell % L] = n
        self.add(keys // self.n, keys % self.n, counts)

    def compact(self) -> None:
        """Merge the pending new pairs (disjoint from the known ones) into ``keys``."""
        if not self.pending:
            return
        keys = np.concatenate([k for k, _ in self.pending])
        counts = np.concatenate([c for _, c in self.pending])
        self.pending, self.pending_rows = [], 0
        keys, inverse = np.unique(keys, return_inverse=True)
        summed = np.zeros((len(keys), self.lookahead), COUNT_DTYPE)
        for j in range(self.lookahead):
            # bincount sums in float64: exact for counts below 2**53
            summed[:, j] = np.bincount(inverse, weights=counts[:, j], minlength=len(keys)).astype(COUNT_DTYPE)
        keys = np.concatenate([self.keys, keys])
        order = np.argsort(keys, kind="stable")  # two sorted runs: a merge
        self.keys, self.counts = keys[order], np.concatenate([self.counts, summed])[order]

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lo_code, hi_code, score)`` with ``score = Σ_d count_d / d`` summed in the reference's order."""
        self.compact()
        score = np.zeros(len(self.keys), "float64")
        for j in range(self.lookahead):
            score = score + self.counts[:, j].astype("int64") / (j + 1)
        return self.keys // self.n, self.keys % self.n, score


class _Carry:
    """Each user's last ``lookahead`` plays so far (item codes by age, 0 = latest; -1: none)."""

    def __init__(self, lookahead: int):
        self.lookahead = lookahead
        self.users = np.zeros(0, "int64")
        self.items = np.zeros((0, lookahead), "int64")

    def advance(self, user: np.ndarray, code: np.ndarray, pos: np.ndarray, rpos: np.ndarray,
                pairs: _PairCounts) -> None:
        """Count the pairs between the carried plays and the day's first plays, then carry the day's last."""
        L = self.lookahead
        if len(user) == 0:
            return
        if np.all(user[1:] >= user[:-1]):  # the daily table is sorted by user: no sort needed
            starts = np.r_[True, user[1:] != user[:-1]]
            day_users, inverse = user[starts], np.cumsum(starts) - 1
        else:
            day_users, inverse = np.unique(user, return_inverse=True)
        n_today = np.zeros(len(day_users), "int64")
        n_today[inverse] = pos.astype("int64") + rpos.astype("int64") + 1
        head = np.full((len(day_users), L), -1, "int64")
        m = pos < L
        head[inverse[m], pos[m]] = code[m]
        tail = np.full((len(day_users), L), -1, "int64")
        m = rpos < L
        tail[inverse[m], rpos[m]] = code[m]

        at = np.searchsorted(self.users, day_users)
        found = at < len(self.users)
        found[found] = self.users[at[found]] == day_users[found]
        carried = np.full((len(day_users), L), -1, "int64")
        carried[found] = self.items[at[found]]

        # Pairs across the boundary: carried age a, today's position p, distance a + p + 1.
        lo, hi, dist = [], [], []
        for a in range(L):
            x = carried[:, a]
            for p in range(L - a):
                y = head[:, p]
                ok = (x >= 0) & (y >= 0) & (x != y)
                lo.append(np.minimum(x[ok], y[ok]))
                hi.append(np.maximum(x[ok], y[ok]))
                dist.append(np.full(int(ok.sum()), a + p + 1, "int64"))
        pairs.add_at_distances(np.concatenate(lo), np.concatenate(hi), np.concatenate(dist))

        # New carry of today's users: the day's last plays, then older carried ones if the day was short.
        new = tail
        for r in range(L):
            short = (n_today <= r) & found
            if short.any():
                new[short, r] = carried[short, r - n_today[short]]
        keep = ~np.isin(self.users, day_users)
        users = np.concatenate([self.users[keep], day_users])
        items = np.concatenate([self.items[keep], new])
        order = np.argsort(users, kind="stable")
        self.users, self.items = users[order], items[order]


class _RecentHistory:
    """The ``max_history`` most recent items of each user, fed the days newest first."""

    def __init__(self, max_history: int):
        self.max_history = max_history
        self.state = pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64"),
                                   "t": pd.Series(dtype="int64"), "plays": pd.Series(dtype="int64")})

    def add_day(self, user: np.ndarray, item: np.ndarray, t: np.ndarray, plays: np.ndarray) -> None:
        state = self.state
        index = pd.MultiIndex.from_arrays([state["user_id"].to_numpy(), state["item_id"].to_numpy()])
        at = index.get_indexer(pd.MultiIndex.from_arrays([user, item])) if len(state) else np.full(len(user), -1)
        old = at >= 0
        if old.any():  # known items: newer days set last_played, this day adds plays
            summed = state["plays"].to_numpy().copy()
            np.add.at(summed, at[old], plays[old])
            state = state.assign(plays=summed)
        new = ~old
        if new.any():  # unknown items are older than every known one: they fill free slots, latest first
            n_user, n_item, n_t, n_plays = user[new], item[new], t[new], plays[new]
            taken = pd.Series(state["user_id"].to_numpy()).value_counts()
            free = self.max_history - taken.reindex(n_user, fill_value=0).to_numpy()
            by = _argsort_rows(n_user, -n_t, n_item)
            pos = _position_in_group(n_user[by])
            by = by[pos < free[by]]
            add = pd.DataFrame({"user_id": n_user[by], "item_id": n_item[by], "t": n_t[by], "plays": n_plays[by]})
            state = pd.concat([state, add], ignore_index=True) if len(state) else add
        self.state = state

    def frame(self) -> pd.DataFrame:
        s = self.state
        user, item, t = s["user_id"].to_numpy(), s["item_id"].to_numpy(), s["t"].to_numpy()
        by = _argsort_rows(user, -t, item) if len(s) else np.zeros(0, "int64")
        by = by[_position_in_group(user[by]) < self.max_history]
        return pd.DataFrame(
            {
                "user_id": user[by],
                "item_id": item[by],
                "last_played": pd.Series(t[by].astype("datetime64[us]")).dt.tz_localize("UTC"),
                "plays": s["plays"].to_numpy()[by].astype("int64"),
            }
        )


def train_from_daily(
    days: Sequence[str],
    read_history: Callable[[str], pd.DataFrame],
    read_pairs: Callable[[str], pd.DataFrame],
    read_edges: Callable[[str], pd.DataFrame],
    trained_through: str,
    window_days: int,
    lookahead: int = LOOKAHEAD,
    max_neighbors: int = MAX_NEIGHBORS,
    max_history: int = MAX_HISTORY,
    stats: dict | None = None,
) -> RetrievalModel:
    """The co-visitation model of the window ``days`` from their daily aggregates.

    Same result as :func:`~streamrec_assets.core.retrieval.train_covisitation` on the raw
    plays of ``days`` (see the module doc). ``read_*(day)`` return one day's
    :func:`daily_coplay` table (only the ``*_READ`` columns are used) and are called
    once per day: history newest day first, then pairs and edges oldest day first.
    ``stats`` (optional) receives the figures of the combination.
    """
    if not 1 <= lookahead <= LOOKAHEAD:
        raise ValueError(f"lookahead must be within 1..{LOOKAHEAD} (the distances the daily tables keep)")
    days = sorted(days)

    # 1. History (newest day first) and popularity.
    recent = _RecentHistory(max_history)
    item_parts: list[pd.Series] = []
    popularity = pd.Series(dtype="int64")
    plays_total = 0
    for day in reversed(days):
        h = read_history(day)
        if not len(h):
            continue
        plays = h["plays"].to_numpy().astype("int64", copy=False)
        plays_total += int(plays.sum())
        recent.add_day(
            h["user_id"].to_numpy().astype("int64", copy=False),
            h["item_id"].to_numpy().astype("int64", copy=False),
            _ts_int(_utc(h["last_played"])),
            plays,
        )
        day_pop = pd.Series(plays).groupby(h["item_id"].to_numpy().astype("int64", copy=False)).sum()
        item_parts.append(day_pop)
        if len(item_parts) > 1 and sum(len(p) for p in item_parts) > 4 * len(popularity) + 100_000:
            popularity = pd.concat([popularity, *item_parts]).groupby(level=0).sum()
            item_parts = []
    if item_parts:
        popularity = pd.concat([popularity, *item_parts]).groupby(level=0).sum()
    universe = popularity.index.to_numpy().astype("int64")  # sorted (groupby sorts)
    pop_plays = popularity.to_numpy().astype("int64")

    # 2. Pair counts: the days' own pairs, and pairs across day boundaries (oldest day first).
    pairs = _PairCounts(len(universe), lookahead)
    carry = _Carry(lookahead)
    for day in days:
        p = read_pairs(day)
        if len(p):
            pairs.add(
                _codes(universe, p["item_lo"].to_numpy(), day, "pairs"),
                _codes(universe, p["item_hi"].to_numpy(), day, "pairs"),
                p[[f"d{d}" for d in range(1, lookahead + 1)]].to_numpy(),
            )
        e = read_edges(day)
        if len(e):
            carry.advance(
                e["user_id"].to_numpy().astype("int64", copy=False),
                _codes(universe, e["item_id"].to_numpy(), day, "edges"),
                e["pos"].to_numpy().astype("int64", copy=False),
                e["rpos"].to_numpy().astype("int64", copy=False),
                pairs,
            )
    lo, hi, score = pairs.scores()

    # 3. The model tables, ordered exactly as train_covisitation orders them.
    src, dst = universe[np.concatenate([lo, hi])], universe[np.concatenate([hi, lo])]
    score = np.concatenate([score, score])
    by = _argsort_rows(src, -score, dst) if len(src) else np.zeros(0, "int64")
    src, dst, score = src[by], dst[by], score[by]
    keep = _position_in_group(src) < max_neighbors
    neighbors = pd.DataFrame({"item_id": src[keep], "neighbor_id": dst[keep], "score": score[keep]})
    by = _argsort_rows(-pop_plays, universe) if len(universe) else np.zeros(0, "int64")
    popularity_frame = pd.DataFrame({"item_id": universe[by], "plays": pop_plays[by]})
    if stats is not None:
        stats.update(
            plays_in_window=plays_total,
            window_pairs=int(len(lo)),
            pair_rows_peak=int(pairs.peak_rows),
            carried_users=int(len(carry.users)),
        )
    return RetrievalModel(
        neighbors=_coerce(neighbors, "neighbors"),
        popularity=_coerce(popularity_frame, "popularity"),
        history=_coerce(recent.frame(), "history"),
        trained_through=str(pd.Timestamp(trained_through).date()),
        window_days=int(window_days),
    )


def _utc(ts: pd.Series) -> pd.Series:
    return ts if isinstance(ts.dtype, pd.DatetimeTZDtype) else pd.to_datetime(ts, utc=True)


def _codes(universe: np.ndarray, ids: np.ndarray, day: str, table: str) -> np.ndarray:
    ids = ids.astype("int64", copy=False)
    at = np.searchsorted(universe, ids).clip(max=max(len(universe) - 1, 0))
    if len(ids) and (len(universe) == 0 or not np.array_equal(universe[at], ids)):
        from streamrec_assets.errors import PersistentDataError

        raise PersistentDataError(
            f"daily_coplay_{table} [{day}] names items that daily_coplay_history has no plays of in the "
            "window: the daily aggregates disagree; re-materialise daily_coplay for that day.",
            asset=f"daily_coplay_{table}",
            partition=day,
        )
    return at.astype("int64")

