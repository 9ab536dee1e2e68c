"""Candidate generation: item co-visitation with a popularity fallback (pure; numpy/pandas only).

Training reads the play events of a window and produces three small tables
(:class:`RetrievalModel`): item→neighbor co-visitation scores, item
popularity, and each user's recent play history. :func:`candidates` turns
them into a fixed-size candidate list per user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

TS_DTYPE = "datetime64[us, UTC]"
COVIS = "covis"
POPULAR = "popular"
FRAME_DTYPES: dict[str, dict[str, str]] = {
    "neighbors": {"item_id": "int64", "neighbor_id": "int64", "score": "float64"},
    "popularity": {"item_id": "int64", "plays": "int64"},
    "history": {"user_id": "int64", "item_id": "int64", "last_played": TS_DTYPE, "plays": "int64"},
}
CANDIDATE_COLUMNS = ("user_id", "item_id", "retrieval_score", "source")
_CHUNK_ROWS = 4_000_000


def _coerce(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Select and type the columns of one model table (ids int64, scores float64, timestamps us/UTC)."""
    out = {}
    for col, dtype in FRAME_DTYPES[name].items():
        if dtype == TS_DTYPE:
            out[col] = pd.to_datetime(frame[col], utc=True).dt.as_unit("us")
        else:
            out[col] = frame[col].to_numpy().astype(dtype, copy=False)
    return pd.DataFrame(out).reset_index(drop=True)


def _position_in_group(keys: np.ndarray) -> np.ndarray:
    """0-based position of each row within its run of equal ``keys`` (``keys`` sorted)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype="int64")
    starts = np.ones(n, dtype=bool)
    starts[1:] = keys[1:] != keys[:-1]
    first = np.flatnonzero(starts)
    return np.arange(n, dtype="int64") - first[np.cumsum(starts) - 1]


def _ts_int(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a tz-aware (UTC) timestamp series."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]").view("int64")


def _argsort_rows(*keys: np.ndarray) -> np.ndarray:
    """Stable row order by ``keys`` (primary key first, all ascending): ``np.lexsort(keys[::-1])``.

    Integer keys are packed into one int64 (dense-ranking whatever would overflow) so a
    single argsort does the work; this is several times faster than lexsort on millions of rows.
    """
    n = len(keys[0])
    packed, size = np.zeros(n, dtype="int64"), 1
    for key in keys:
        if n == 0:
            break
        if key.dtype.kind == "f":
            _, key = np.unique(key, return_inverse=True)
        key = key.astype("int64", copy=False)
        lo = int(key.min())
        span = int(key.max()) - lo + 1
        if size * span >= 2**62:
            _, packed = np.unique(packed, return_inverse=True)
            size = int(packed.max()) + 1
        if size * span >= 2**62:
            _, key = np.unique(key, return_inverse=True)
            lo, span = 0, int(key.max()) + 1
        packed = packed * span + (key - lo)
        size *= span
    return np.argsort(packed, kind="stable")


def _id_array(ids: Iterable[int] | np.ndarray | None) -> np.ndarray | None:
    if ids is None:
        return None
    if isinstance(ids, set | frozenset):
        ids = sorted(ids)
    return np.asarray(ids, dtype="int64").ravel()


@dataclass
class RetrievalModel:
    """Co-visitation retrieval model trained on ``window_days`` days ending ``trained_through``.

    * ``neighbors``: ``item_id, neighbor_id, score``; top ``max_neighbors`` per item
      (score desc, ties by ``neighbor_id`` asc), sorted that way within ``item_id`` asc.
    * ``popularity``: ``item_id, plays``; every item played in the window, plays desc then item_id asc.
    * ``history``: ``user_id, item_id, last_played, plays``; at most ``max_history`` most
      recently played items per user (sorted user asc, last_played desc, item_id asc).
    """

    neighbors: pd.DataFrame
    popularity: pd.DataFrame
    history: pd.DataFrame
    trained_through: str
    window_days: int

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """The three tables by name (``neighbors``, ``popularity``, ``history``), for Parquet."""
        return {"neighbors": self.neighbors, "popularity": self.popularity, "history": self.history}

    @classmethod
    def from_frames(
        cls, frames: dict[str, pd.DataFrame], trained_through: str, window_days: int
    ) -> RetrievalModel:
        """Inverse of :meth:`to_frames`; re-applies the canonical dtypes."""
        return cls(
            neighbors=_coerce(frames["neighbors"], "neighbors"),
            popularity=_coerce(frames["popularity"], "popularity"),
            history=_coerce(frames["history"], "history"),
            trained_through=str(trained_through),
            window_days=int(window_days),
        )


def _covisitation(users: np.ndarray, items: np.ndarray, lookahead: int) -> tuple[np.ndarray, ...]:
    """Symmetric pair scores from plays sorted by (user, time).

    Each play is paired with the same user's next ``lookahead`` plays, weight
    ``1 / distance``, self-pairs skipped. Returns ``(item, neighbor, score)`` arrays.
    """
    codes_items, codes = np.unique(items, return_inverse=True)
    n_items = np.int64(len(codes_items))
    codes = codes.astype("int64")
    keys, weights = [], []
    for d in range(1, lookahead + 1):
        if d >= len(items):
            break
        a, b = codes[:-d], codes[d:]
        keep = (users[:-d] == users[d:]) & (a != b)
        a, b = a[keep], b[keep]
        # Canonical unordered pair: (lo, hi) with lo < hi; the score is symmetric.
        key = np.minimum(a, b) * n_items + np.maximum(a, b)
        uniq, counts = np.unique(key, return_counts=True)
        keys.append(uniq)
        weights.append(counts / d)
    if not keys:
        return np.zeros(0, "int64"), np.zeros(0, "int64"), np.zeros(0, "float64")
    pair, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    score = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(pair))
    lo, hi = codes_items[pair // n_items], codes_items[pair % n_items]
    return np.concatenate([lo, hi]), np.concatenate([hi, lo]), np.concatenate([score, score])


def train_covisitation(
    plays: pd.DataFrame,
    trained_through: str,
    window_days: int,
    lookahead: int = 5,
    max_neighbors: int = 50,
    max_history: int = 20,
) -> RetrievalModel:
    """Train the co-visitation model from the play events of the window.

    ``plays``: ``user_id, item_id, event_timestamp`` (other columns ignored).
    Each user's plays are ordered by time (ties by item_id); every play is
    paired with the user's next ``lookahead`` plays in both directions with
    weight ``1 / distance``; pair weights are summed over all users.
    """
    user = plays["user_id"].to_numpy().astype("int64", copy=False)
    item = plays["item_id"].to_numpy().astype("int64", copy=False)
    t = _ts_int(pd.to_datetime(plays["event_timestamp"], utc=True))
    order = _argsort_rows(user, t, item)
    user, item, t = user[order], item[order], t[order]

    # Neighbors: score desc, neighbor asc within item, top max_neighbors.
    src, dst, score = _covisitation(user, item, lookahead)
    by = _argsort_rows(src, -score, dst)
    src, dst, score = src[by], dst[by], score[by]
    keep = _position_in_group(src) < max_neighbors
    neighbors = pd.DataFrame({"item_id": src[keep], "neighbor_id": dst[keep], "score": score[keep]})

    # Popularity: all items of the window, plays desc then item asc.
    pop_items, pop_plays = np.unique(item, return_counts=True)
    by = _argsort_rows(-pop_plays, pop_items)
    popularity = pd.DataFrame({"item_id": pop_items[by], "plays": pop_plays[by].astype("int64")})

    # History: per (user, item) last play and count (a stable sort keeps time order inside
    # each pair, so its last row is the latest play), then max_history most recent per user.
    by = _argsort_rows(user, item)
    h_user, h_item, h_t = user[by], item[by], t[by]
    last = np.ones(len(by), dtype=bool)
    last[:-1] = (h_user[1:] != h_user[:-1]) | (h_item[1:] != h_item[:-1])
    ends = np.flatnonzero(last)
    h_plays = np.diff(ends, prepend=-1)
    h_user, h_item, h_t = h_user[ends], h_item[ends], h_t[ends]
    by = _argsort_rows(h_user, -h_t, h_item)
    by = by[_position_in_group(h_user[by]) < max_history]
    history = pd.DataFrame(
        {
            "user_id": h_user[by],
            "item_id": h_item[by],
            "last_played": pd.Series(h_t[by].astype("datetime64[us]")).dt.tz_localize("UTC"),
            "plays": h_plays[by].astype("int64"),
        }
    )

    return RetrievalModel(
        neighbors=_coerce(neighbors, "neighbors"),
        popularity=_coerce(popularity, "popularity"),
        history=_coerce(history, "history"),
        trained_through=str(pd.Timestamp(trained_through).date()),
        window_days=int(window_days),
    )


def _covis_scores(
    model: RetrievalModel, users: np.ndarray, pool: np.ndarray, n: int, exclude_keys: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top ``n`` co-visitation candidates (restricted to ``pool``) of each user in ``users`` (sorted).

    history ⋈ neighbors is expanded with numpy (neighbors as CSR rows per item) and summed per
    (user, candidate), in chunks of about ``_CHUNK_ROWS`` joined rows. ``exclude_keys`` (sorted,
    unique ``user index * len(pool) + position in sorted pool``) are dropped before ranking.
    Returns, sorted by user then rank: user index into ``users``, item id, score, 0-based rank.
    """
    empty = (np.zeros(0, "int64"), np.zeros(0, "int64"), np.zeros(0, "float64"), np.zeros(0, "int64"))
    codes = np.sort(pool)
    n_codes = np.int64(len(codes))
    nb = model.neighbors
    nb_item = nb["item_id"].to_numpy().astype("int64", copy=False)
    nb_nbr = nb["neighbor_id"].to_numpy().astype("int64", copy=False)
    nb_score = nb["score"].to_numpy().astype("float64", copy=False)
    keep = np.isin(nb_nbr, codes)
    by = _argsort_rows(nb_item[keep], nb_nbr[keep])
    nb_item, nb_code, nb_score = nb_item[keep][by], np.searchsorted(codes, nb_nbr[keep][by]), nb_score[keep][by]
    rows_of, starts, counts = np.unique(nb_item, return_index=True, return_counts=True)

    hist = model.history
    h_user = hist["user_id"].to_numpy().astype("int64", copy=False)
    h_item = hist["item_id"].to_numpy().astype("int64", copy=False)
    h_w = 1.0 + np.log(hist["plays"].to_numpy(dtype="float64"))
    if len(rows_of) == 0:
        return empty
    at = np.searchsorted(rows_of, h_item).clip(max=len(rows_of) - 1)
    ok = np.isin(h_user, users) & (rows_of[at] == h_item)
    if not ok.any():
        return empty
    h_uidx = np.searchsorted(users, h_user[ok])
    h_item, h_w, at = h_item[ok], h_w[ok], at[ok]
    by = _argsort_rows(h_uidx, h_item)
    h_uidx, h_w, h_start, h_cnt = h_uidx[by], h_w[by], starts[at[by]], counts[at[by]]

    # Chunks of consecutive users, about _CHUNK_ROWS joined rows each (a user is never split).
    new_user = np.r_[True, h_uidx[1:] != h_uidx[:-1]]
    first_row = np.flatnonzero(new_user)[np.cumsum(new_user) - 1]
    chunk = ((np.cumsum(h_cnt) - h_cnt) // _CHUNK_ROWS)[first_row]
    bounds = np.r_[0, np.flatnonzero(np.diff(chunk)) + 1, len(h_uidx)]
    out: list[tuple[np.ndarray, ...]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        cnt = h_cnt[lo:hi]
        rep = np.repeat(np.arange(lo, hi), cnt)
        idx = h_start[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        key, inverse = np.unique(h_uidx[rep] * n_codes + nb_code[idx], return_inverse=True)
        score = np.bincount(inverse, weights=nb_score[idx] * h_w[rep], minlength=len(key))
        if exclude_keys is not None and len(exclude_keys):
            keep = ~np.isin(key, exclude_keys, assume_unique=True)
            key, score = key[keep], score[keep]
        uidx, code = key // n_codes, key % n_codes
        by = _argsort_rows(uidx, -score, code)
        pos = _position_in_group(uidx[by])
        by, pos = by[pos < n], pos[pos < n]
        out.append((uidx[by], codes[code[by]], score[by], pos))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _exclusions(
    exclude_pairs: pd.DataFrame | None, users: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(user index into users, item id)`` of ``exclude_pairs`` whose user and item are in play
    (``users`` and ``codes`` sorted unique), deduplicated, sorted by user then item."""
    if exclude_pairs is None or len(exclude_pairs) == 0 or len(codes) == 0:
        return np.zeros(0, "int64"), np.zeros(0, "int64")
    user = exclude_pairs["user_id"].to_numpy().astype("int64", copy=False)
    item = exclude_pairs["item_id"].to_numpy().astype("int64", copy=False)
    keep = np.isin(user, users) & np.isin(item, codes)
    key = np.unique(np.searchsorted(users, user[keep]) * np.int64(len(codes)) + np.searchsorted(codes, item[keep]))
    return key // len(codes), codes[key % len(codes)]


def candidates(
    model: RetrievalModel,
    user_ids: Iterable[int] | np.ndarray,
    n: int = 100,
    exclude_unreleased: set[int] | None = None,
    allowed_items: np.ndarray | None = None,
    exclude_pairs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Exactly ``min(n, available items)`` candidates per user: co-visitation first, then popularity.

    ``score(c) = Σ_h neighbors(h→c).score × (1 + ln plays(h))`` over the user's history
    items ``h``; top ``n`` by score (ties item_id asc), source ``'covis'``. The rest is
    filled from popularity order with items not already chosen (score 0, source
    ``'popular'``); cold users get pure popularity. Already-played items are allowed
    unless ``exclude_pairs`` (``user_id, item_id``: an exclusion policy's consumed items,
    :func:`streamrec_assets.core.serving.excluded_pairs`) names them for that user: they
    are removed from both sources *before* the top ``n`` is taken, so the user still gets
    ``n`` candidates when enough items remain.
    Available items are the popularity items in ``allowed_items`` (if given) and not in
    ``exclude_unreleased`` (if given); both restrictions apply to both sources.

    Returns ``user_id, item_id, retrieval_score, source`` sorted by user_id asc, then
    candidate rank (row order within a user is the retrieval rank). Users are deduplicated.
    """
    users = np.unique(_id_array(user_ids))
    pool = model.popularity["item_id"].to_numpy()
    allowed, excluded = _id_array(allowed_items), _id_array(exclude_unreleased)
    if allowed is not None:
        pool = pool[np.isin(pool, allowed)]
    if excluded is not None and len(excluded):
        pool = pool[~np.isin(pool, excluded)]
    n_eff = max(0, min(int(n), len(pool)))
    if n_eff == 0 or len(users) == 0:
        dtypes = ("int64", "int64", "float64", "object")
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in zip(CANDIDATE_COLUMNS, dtypes, strict=True)})

    codes = np.sort(pool)
    x_uidx, x_item = _exclusions(exclude_pairs, users, codes)
    x_count = np.bincount(x_uidx, minlength=len(users))
    x_keys = x_uidx * np.int64(len(codes)) + np.searchsorted(codes, x_item)  # sorted: (user, code) order
    c_uidx, c_item, c_score, c_pos = _covis_scores(model, users, pool, n_eff, x_keys)
    wanted = np.minimum(n_eff, len(pool) - x_count)  # per user

    # Popularity fill: users × the top pool items (enough to skip each user's exclusions), minus
    # the covis picks and the excluded items.
    top = pool[: min(len(pool), n_eff + int(x_count.max(initial=0)))]
    taken = np.zeros((len(users), len(top)), dtype=bool)
    top_index = pd.Index(top)
    p_idx = top_index.get_indexer(c_item)
    in_top = p_idx >= 0
    taken[c_uidx[in_top], p_idx[in_top]] = True
    x_idx = top_index.get_indexer(x_item)
    taken[x_uidx[x_idx >= 0], x_idx[x_idx >= 0]] = True
    n_covis = np.bincount(c_uidx, minlength=len(users))
    fill_rank = np.cumsum(~taken, axis=1)  # 1-based rank among the free items
    fill = ~taken & (fill_rank <= (wanted - n_covis)[:, None])
    f_uidx, f_col = np.nonzero(fill)
    f_pos = n_covis[f_uidx] + fill_rank[f_uidx, f_col] - 1

    uidx = np.concatenate([c_uidx, f_uidx])
    pos = np.concatenate([c_pos, f_pos])
    order = _argsort_rows(uidx, pos)
    out = pd.DataFrame(
        {
            "user_id": users[uidx[order]],
            "item_id": np.concatenate([c_item, top[f_col]])[order],
            "retrieval_score": np.concatenate([c_score, np.zeros(len(f_col))])[order],
            "source": np.concatenate(
                [np.full(len(c_item), COVIS, dtype=object), np.full(len(f_col), POPULAR, dtype=object)]
            )[order],
        }
    )
    return out
