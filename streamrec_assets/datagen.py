"""Synthetic StreamRec data: a hidden "world" of users and items, and daily event files.

The world (catalogue plus hidden taste) is determined by ``(seed, n_users, n_items)``
only, so any date range generated from the same parameters sees the same users and
items.  Each day's event file is determined by ``(world, seed, day, events_per_day,
malformed_rate, duplicate_rate)`` and nothing else: days are independent of each other
and of the range they were generated in, and the gzip bytes are stable (``mtime=0``,
no file name in the header).

The files are written through :class:`streamrec_assets.landing.Landing` (the
landing zone's layout and completion marker are the pipeline's contract, see
that module).

Each generated day also gets the landing zone's optional *reference*
(``reference/date=D/reference.parquet``, :func:`reference_scores`): the hidden affinity of
every (user, item) pair impressed on the day and of each active user's
:data:`REFERENCE_TOP_K` best items released by then. The pipeline's evaluation takes its
``oracle`` from it and never rebuilds the world; the event files do not depend on it.

Event lines (one JSON object per line, sorted by ``event_timestamp``)::

    {"event_id":"ev-20260101-00000042","user_id":12,"item_id":7,"event_type":"play",
     "event_timestamp":"2026-01-01T19:45:12.123Z","watch_seconds":1234.5,
     "device":"tv","session_id":"se-20260101-0001234"}

Dirty data
----------
A share ``malformed_rate`` of the lines of a day (``round(records * malformed_rate)``
lines, exactly) is malformed.  Malformed lines *replace* valid events in place (they
keep their position in the file), and are spread evenly over six categories
(see :data:`MALFORMED_KINDS`):

``truncated_json``
    the line is cut short, so it is not valid JSON.
``missing_field``
    one of ``event_id, user_id, item_id, event_type, event_timestamp, watch_seconds``
    is absent.
``negative_watch``
    ``watch_seconds`` is negative.
``unknown_user`` / ``unknown_item``
    ``user_id`` / ``item_id`` is not in the catalogue (ids >= 900_000_000).
``timestamp_out_of_day``
    ``event_timestamp`` lies 1 minute to 36 hours before or after the file's day.

Malformed lines are never taken from an impression that led to a play, so every valid
play keeps its valid impression.

Duplicates are counted **separately** from the malformed share: a share
``duplicate_rate`` of lines (default ``malformed_rate / 4``, i.e. 0.05 % by default;
exactly ``round(records * duplicate_rate)`` lines) are exact byte-for-byte copies of a
valid line (same ``event_id``), written right after the original.  ``records`` counts
every line of the file: valid + malformed + duplicates.

Drift scenario
--------------
``generate(..., drift_from="YYYY-MM-DD")`` shifts behaviour from that day on (see
:class:`Drift`): viewers binge (longer sessions, more of each play watched) and what
they browse tilts towards a few trending genres.  The hidden world (taste, affinity,
the oracle) is unchanged, and so is every day before ``drift_from`` and every run
without the option: a drifted day's marker records ``drift_from`` among its parameters,
the other days' markers are the plain ones.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from streamrec_assets.core.ingest import EVENT_FIELDS

GENERATOR_VERSION = "streamrec-datagen/1"

GENRES = (
    "drama",
    "comedy",
    "action",
    "thriller",
    "documentary",
    "animation",
    "romance",
    "sci-fi",
    "horror",
    "crime",
    "family",
    "fantasy",
    "reality",
    "music",
    "sports",
)
# Typical length (minutes) per genre: films ~90-120, series episodes ~25-50.
_GENRE_MINUTES = np.array([95, 40, 110, 105, 60, 30, 100, 115, 95, 50, 85, 120, 35, 45, 70], float)
_GENRE_SHARE = np.array([14, 12, 10, 9, 6, 7, 7, 6, 5, 8, 5, 4, 3, 2, 2], float)

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "BR", "IN", "JP", "CA")
_COUNTRY_SHARE = np.array([30, 10, 9, 8, 6, 6, 10, 11, 5, 5], float)

DEVICES = ("tv", "mobile", "web", "tablet")
_DEVICE_SHARE = np.array([0.40, 0.35, 0.15, 0.10])

MALFORMED_KINDS = (
    "truncated_json",
    "missing_field",
    "negative_watch",
    "unknown_user",
    "unknown_item",
    "timestamp_out_of_day",
)
REQUIRED_FIELDS = EVENT_FIELDS  # the landing-record fields ingest requires
# Fields that a ``missing_field`` malformed line may lack.
_DROPPABLE_FIELDS = REQUIRED_FIELDS[:6]
UNKNOWN_ID_BASE = 900_000_000

LATENT_DIM = 8
_EPOCH = date(1970, 1, 1)
_DAY_MS = 86_400_000
# Session start-hour weights (UTC): quiet night, evening peak around 20:00.
_HOUR_WEIGHTS = np.array(
    [
        1.0,
        0.6,
        0.35,
        0.25,
        0.2,
        0.25,
        0.5,
        0.9,
        1.1,
        1.0,
        1.0,
        1.1,
        1.3,
        1.3,
        1.2,
        1.3,
        1.6,
        2.1,
        2.8,
        3.6,
        4.0,
        3.6,
        2.6,
        1.6,
    ]
)
_GZIP_LEVEL = 4
_GZIP_CHUNK = 8 << 20  # bytes of text per gzip member (members are compressed in threads)


@dataclass(frozen=True)
class Drift:
    """How behaviour changes from ``drift_from`` on (the drift scenario; the default run has none).

    ``session_impressions``: mean impressions per session (7 without drift);
    ``watch_logit_shift``: added to the logit of the share of an item watched;
    ``trend_weight``: share of the browsing genre mix taken from ``trend_genres`` (equally)
    instead of the user's taste; ``popularity_share``: impressions drawn from global
    popularity (0.4 without drift).  Affinity, play probability and the oracle are unchanged.
    """

    session_impressions: float = 16.0
    watch_logit_shift: float = 1.0
    trend_weight: float = 0.6
    trend_genres: tuple[str, ...] = ("documentary", "reality", "music", "sports")
    popularity_share: float = 0.2

    def browse_taste(self, taste: np.ndarray) -> np.ndarray:
        """The genre mix users browse under drift: their taste blended with the trend."""
        trend = np.zeros(len(GENRES))
        trend[[GENRES.index(g) for g in self.trend_genres]] = 1.0 / len(self.trend_genres)
        return (1.0 - self.trend_weight) * taste + self.trend_weight * trend


#: The drift scenario of ``generate(..., drift_from=...)``.
DRIFT = Drift()


def _ordinal(day: str | date) -> int:
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return (d - _EPOCH).days


def _ord_to_str(ords: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(np.asarray(ords, dtype="datetime64[D]"), unit="D").astype(object)


def default_users(events_per_day: int) -> int:
    return int(min(200_000, max(500, events_per_day // 40)))


def default_items(events_per_day: int) -> int:
    return int(min(20_000, max(200, events_per_day // 200)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """Users, items and the hidden preferences that drive behaviour.

    ``users`` / ``items`` hold exactly the public catalogue columns.  Ids are
    contiguous: ``user_id`` in ``1..n_users`` and ``item_id`` in ``1..n_items``.
    Everything prefixed with ``_`` is hidden (never written to the landing zone).
    """

    seed: int
    n_users: int
    n_items: int
    users: pd.DataFrame
    items: pd.DataFrame
    _signup_ord: np.ndarray = field(repr=False)
    _country: np.ndarray = field(repr=False)
    _activity: np.ndarray = field(repr=False)
    _taste: np.ndarray = field(repr=False)  # (n_users, n_genres), rows sum to 1
    _user_vec: np.ndarray = field(repr=False)  # (n_users, LATENT_DIM)
    _device_pref: np.ndarray = field(repr=False)
    _genre: np.ndarray = field(repr=False)  # genre index per item
    _duration: np.ndarray = field(repr=False)
    _release_ord: np.ndarray = field(repr=False)
    _quality: np.ndarray = field(repr=False)
    _item_vec: np.ndarray = field(repr=False)
    _popularity: np.ndarray = field(repr=False)  # Zipf-like exposure weight

    @classmethod
    def build(cls, seed: int, n_users: int, n_items: int) -> World:
        if n_users < 1 or n_items < 1:
            raise ValueError("n_users and n_items must be positive")
        rng = np.random.default_rng([int(seed), int(n_users), int(n_items), 0x57EA])
        n_genres = len(GENRES)

        # ---- items
        genre = rng.choice(n_genres, size=n_items, p=_GENRE_SHARE / _GENRE_SHARE.sum())
        minutes = _GENRE_MINUTES[genre] * rng.lognormal(0.0, 0.25, size=n_items)
        duration = np.clip(np.round(minutes * 60.0), 20 * 60, 180 * 60).astype(np.int64)
        old = rng.random(n_items) < 0.70
        release_ord = np.where(
            old,
            _ordinal("2025-01-01") + rng.integers(0, 365, size=n_items),
            _ordinal("2026-01-01") + rng.integers(0, 730, size=n_items),
        ).astype(np.int64)
        quality = rng.normal(0.0, 1.0, size=n_items)
        s = 0.53  # dot product of two such vectors has std ~0.8
        item_vec = rng.normal(0.0, s, size=(n_items, LATENT_DIM))
        # Popularity rank partly follows quality; exposure ~ 1 / rank.
        rank = np.empty(n_items, np.int64)
        rank[np.argsort(-(0.6 * quality + rng.normal(0.0, 1.0, size=n_items)), kind="stable")] = np.arange(
            n_items
        )
        popularity = 1.0 / (rank + 1.0) ** 1.05

        # ---- users
        p_year = rng.random(n_users)
        signup_ord = np.where(
            p_year < 0.45,
            _ordinal("2024-01-01") + rng.integers(0, 366, size=n_users),
            np.where(
                p_year < 0.85,
                _ordinal("2025-01-01") + rng.integers(0, 365, size=n_users),
                _ordinal("2026-01-01") + rng.integers(0, 365, size=n_users),
            ),
        ).astype(np.int64)
        country = rng.choice(len(COUNTRIES), size=n_users, p=_COUNTRY_SHARE / _COUNTRY_SHARE.sum())
        activity = rng.lognormal(0.0, 1.0, size=n_users)
        taste = rng.dirichlet(np.full(n_genres, 0.3), size=n_users)
        user_vec = rng.normal(0.0, s, size=(n_users, LATENT_DIM))
        device_pref = rng.choice(len(DEVICES), size=n_users, p=_DEVICE_SHARE)

        users = pd.DataFrame(
            {
                "user_id": np.arange(1, n_users + 1, dtype=np.int64),
                "signup_date": pd.Series(_ord_to_str(signup_ord), dtype=object),
                "country": pd.Series(np.array(COUNTRIES, dtype=object)[country], dtype=object),
            }
        )
        items = pd.DataFrame(
            {
                "item_id": np.arange(1, n_items + 1, dtype=np.int64),
                "genre": pd.Series(np.array(GENRES, dtype=object)[genre], dtype=object),
                "duration_seconds": duration,
                "release_date": pd.Series(_ord_to_str(release_ord), dtype=object),
            }
        )
        return cls(
            seed=int(seed),
            n_users=int(n_users),
            n_items=int(n_items),
            users=users,
            items=items,
            _signup_ord=signup_ord,
            _country=country,
            _activity=activity,
            _taste=taste,
            _user_vec=user_vec,
            _device_pref=device_pref,
            _genre=genre,
            _duration=duration,
            _release_ord=release_ord,
            _quality=quality,
            _item_vec=item_vec,
            _popularity=popularity,
        )

    # ---- oracle

    def _index(self, ids, n: int, what: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > n):
            raise ValueError(f"unknown {what} id(s) in input")
        return ids - 1

    def _affinity_idx(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        dot = np.einsum("ij,ij->i", self._user_vec[u], self._item_vec[i])
        genre_pref = np.log(len(GENRES) * self._taste[u, self._genre[i]] + 0.05)
        return 0.9 * dot + 0.5 * self._quality[i] + 0.6 * genre_pref

    def affinity(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Hidden affinity of element-wise ``(user_id, item_id)`` pairs (higher = better)."""
        u = self._index(user_ids, self.n_users, "user")
        i = self._index(item_ids, self.n_items, "item")
        u, i = np.broadcast_arrays(u, i)
        return self._affinity_idx(u.ravel(), i.ravel()).reshape(u.shape)

    def oracle_scores(self, user_id: int, item_ids) -> np.ndarray:
        """Hidden affinity of one user to each of ``item_ids`` (the ideal ranking scores)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        return self.affinity(np.full(item_ids.shape, int(user_id), dtype=np.int64), item_ids)


# --------------------------------------------------------------------------- one day


def _sample_items(
    world: World, rng, day_ord: int, users_idx: np.ndarray, drift: Drift | None = None
) -> np.ndarray:
    """Pick one item (index) per impression: mixture of global popularity and user taste."""
    n = users_idx.size
    released = np.flatnonzero(world._release_ord <= day_ord)
    if released.size == 0:
        raise ValueError("no item is released yet on this day")
    age = day_ord - world._release_ord[released]
    weight = world._popularity[released] * (1.0 + 4.0 * np.exp(-age / 10.0))
    out = np.empty(n, np.int64)

    # Global popularity for ~40 % of impressions.
    by_pop = rng.random(n) < (0.4 if drift is None else drift.popularity_share)
    cdf = np.cumsum(weight)
    r = rng.random(n)
    out[by_pop] = released[
        np.minimum(np.searchsorted(cdf, r[by_pop] * cdf[-1], side="right"), released.size - 1)
    ]

    # Genre drawn from the user's taste, then item by popularity within that genre.
    rest = np.flatnonzero(~by_pop)
    taste = world._taste[users_idx[rest]] if drift is None else drift.browse_taste(world._taste[users_idx[rest]])
    taste_cum = np.cumsum(taste.astype(np.float32), axis=1)
    g = (taste_cum < (rng.random(rest.size, dtype=np.float32) * taste_cum[:, -1])[:, None]).sum(axis=1)
    g = np.minimum(g, len(GENRES) - 1)
    r2 = rng.random(rest.size)
    rel_genre = world._genre[released]
    for k in range(len(GENRES)):
        sel = g == k
        if not sel.any():
            continue
        cand = np.flatnonzero(rel_genre == k)
        if cand.size == 0:  # nothing of that genre released yet: fall back to popularity
            out[rest[sel]] = released[
                np.minimum(np.searchsorted(cdf, r2[sel] * cdf[-1], side="right"), released.size - 1)
            ]
            continue
        c = np.cumsum(weight[cand])
        out[rest[sel]] = released[
            cand[np.minimum(np.searchsorted(c, r2[sel] * c[-1], side="right"), cand.size - 1)]
        ]
    return out


def _timestamps(rng, sess_len: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Impression and play times (ms of the day): evening-peaked session starts, impressions
    tens of seconds apart."""
    n_sess = sess_len.size
    hour = rng.choice(24, size=n_sess, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    start = hour * 3_600_000 + rng.integers(0, 3_600_000, size=n_sess)
    gaps = (2_000 + rng.exponential(30_000, size=keep)).astype(np.int64)
    first = np.zeros(keep, bool)
    first[np.cumsum(sess_len)[:-1]] = True
    first[0] = True
    gaps[first] = 0
    offs = np.cumsum(gaps)
    offs -= np.repeat(offs[first], sess_len)
    span = offs[np.cumsum(sess_len) - 1]
    start = np.minimum(start, _DAY_MS - 1 - 30_000 - span)
    start = np.maximum(start, 0)
    imp_ts = np.repeat(start, sess_len) + offs
    play_delay = rng.integers(500, 20_000, size=keep)
    play_ts = np.minimum(imp_ts + play_delay, _DAY_MS - 1)
    return imp_ts, play_ts


def _simulate(world: World, day: str, n_rows: int, rng, drift: Drift | None = None) -> dict[str, np.ndarray]:
    """Simulate sessions and return exactly ``n_rows`` valid events sorted by time."""
    day_ord = _ordinal(day)
    eligible = np.flatnonzero(world._signup_ord <= day_ord)
    if eligible.size == 0 or n_rows <= 0:
        return {}

    # Sessions: users drawn by activity with a per-day mood factor.
    mean_imps = 7.0 if drift is None else drift.session_impressions
    n_sess = int(np.ceil(n_rows / mean_imps * 1.05)) + 16
    w = world._activity[eligible] * rng.gamma(2.0, 0.5, size=eligible.size)
    sess_user = eligible[rng.choice(eligible.size, size=n_sess, p=w / w.sum())]
    sess_len = 1 + rng.poisson(mean_imps - 1.0, size=n_sess)
    while sess_len.sum() < n_rows:  # rare: top up with more sessions
        extra = n_rows // 4 + 16
        sess_user = np.concatenate(
            [sess_user, eligible[rng.choice(eligible.size, size=extra, p=w / w.sum())]]
        )
        sess_len = np.concatenate([sess_len, 1 + rng.poisson(mean_imps - 1.0, size=extra)])
        n_sess += extra
    # A pool of n_rows impressions always yields >= n_rows lines.
    cum = np.cumsum(sess_len)
    n_sess = int(np.searchsorted(cum, n_rows)) + 1
    sess_len = sess_len[:n_sess].copy()
    sess_len[-1] -= cum[n_sess - 1] - n_rows
    sess_user = sess_user[:n_sess]
    sess_idx = np.repeat(np.arange(n_sess), sess_len)
    u = sess_user[sess_idx]
    i = _sample_items(world, rng, day_ord, u, drift)

    # Play decision and watch time from the hidden affinity.
    aff = world._affinity_idx(u, i)
    played = rng.random(n_rows) < _sigmoid(1.3 * aff - 1.7)
    lines = np.cumsum(1 + played)
    keep = int(np.searchsorted(lines, n_rows, side="right"))  # impressions fully kept
    total = int(lines[keep - 1]) if keep else 0
    if total < n_rows:  # one line short: the next impression is kept, without its play
        played[keep] = False
        keep += 1
    sess_idx, u, i, aff, played = sess_idx[:keep], u[:keep], i[:keep], aff[:keep], played[:keep]
    n_sess = int(sess_idx[-1]) + 1
    sess_len = np.bincount(sess_idx, minlength=n_sess)

    imp_ts, play_ts = _timestamps(rng, sess_len, keep)

    dur = world._duration[i].astype(float)
    shift = 0.0 if drift is None else drift.watch_logit_shift  # + 0.0 leaves every float as it was
    frac = _sigmoid(1.5 * aff - 0.6 + rng.normal(0.0, 1.0, size=keep) + shift)
    watch = np.minimum(np.maximum(np.round(frac * dur, 1), 1.0), dur)

    sess_device = np.where(
        rng.random(n_sess) < 0.7,
        world._device_pref[sess_user[:n_sess]],
        rng.choice(len(DEVICES), size=n_sess, p=_DEVICE_SHARE),
    )

    p = np.flatnonzero(played)
    ts = np.concatenate([imp_ts, play_ts[p]])
    etype = np.concatenate([np.zeros(keep, np.int8), np.ones(p.size, np.int8)])
    order = np.lexsort((etype, ts))
    src = np.concatenate([np.arange(keep), p])[order]
    return {
        "ts": ts[order],
        "etype": etype[order],
        "user": u[src] + 1,
        "item": i[src] + 1,
        "watch": np.where(etype[order] == 1, watch[src], 0.0),
        "device": sess_device[sess_idx[src]],
        "session": sess_idx[src],
        # impression rows whose play follows later: never made malformed
        "led_to_play": (etype[order] == 0) & played[src],
    }


_LINE_FMT = (
    '{"event_id":"ev-%s-%08d","user_id":%d,"item_id":%d,"event_type":"%s",'
    '"event_timestamp":"%sT%02d:%02d:%02d.%03dZ","watch_seconds":%.1f,'
    '"device":"%s","session_id":"se-%s-%07d"}'
)


def _format_lines(day: str, ev: dict[str, np.ndarray]) -> list[str]:
    n = ev["ts"].size
    ymd = day.replace("-", "")
    ts = ev["ts"]
    hh, rem = np.divmod(ts, 3_600_000)
    mi, rem = np.divmod(rem, 60_000)
    ss, ms = np.divmod(rem, 1000)
    etype = np.array(["impression", "play"], dtype=object)[ev["etype"]]
    device = np.array(DEVICES, dtype=object)[ev["device"]]
    fmt = _LINE_FMT
    cols = (
        range(n),
        ev["user"].tolist(),
        ev["item"].tolist(),
        etype.tolist(),
        hh.tolist(),
        mi.tolist(),
        ss.tolist(),
        ms.tolist(),
        ev["watch"].tolist(),
        device.tolist(),
        ev["session"].tolist(),
    )
    return [
        fmt % (ymd, k, uu, ii, et, day, h, m, s, x, wt, dv, ymd, se)
        for k, uu, ii, et, h, m, s, x, wt, dv, se in zip(*cols, strict=True)
    ]


def _corrupt(line: str, kind: str, day: str, rng) -> str:
    if kind == "truncated_json":
        return line[: int(rng.integers(5, len(line) - 1))]
    rec = json.loads(line)
    if kind == "missing_field":
        del rec[_DROPPABLE_FIELDS[int(rng.integers(len(_DROPPABLE_FIELDS)))]]
    elif kind == "negative_watch":
        rec["watch_seconds"] = -round(float(rng.uniform(0.1, 3600.0)), 1)
    elif kind == "unknown_user":
        rec["user_id"] = UNKNOWN_ID_BASE + int(rng.integers(0, 1_000_000))
    elif kind == "unknown_item":
        rec["item_id"] = UNKNOWN_ID_BASE + int(rng.integers(0, 1_000_000))
    elif kind == "timestamp_out_of_day":
        base = datetime.fromisoformat(day).replace(tzinfo=UTC)
        off = int(rng.integers(60_000, 36 * 3_600_000))
        t = (
            base - timedelta(milliseconds=off)
            if rng.random() < 0.5
            else base + timedelta(milliseconds=_DAY_MS + off)
        )
        rec["event_timestamp"] = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    else:  # pragma: no cover
        raise ValueError(kind)
    return json.dumps(rec, separators=(",", ":"))


def _gzip(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0, no name); large inputs become several members
    compressed in parallel threads (a multi-member gzip file is standard gzip)."""
    if len(data) <= _GZIP_CHUNK:
        return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
    chunks = [data[k : k + _GZIP_CHUNK] for k in range(0, len(data), _GZIP_CHUNK)]
    workers = max(1, min(len(chunks), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(lambda c: gzip.compress(c, compresslevel=_GZIP_LEVEL, mtime=0), chunks))
    return b"".join(parts)


@dataclass
class DayStats:
    records: int = 0
    valid: int = 0
    impressions: int = 0
    plays: int = 0
    malformed: dict = field(default_factory=dict)
    duplicates: int = 0


@dataclass
class _SimulatedDay:
    """A day's valid events before they are written out, and the generator state that writes them."""

    day: str
    rng: np.random.Generator
    ev: dict[str, np.ndarray]
    n_dup: int
    n_mal: int


def _simulate_day(
    world: World,
    day: str,
    events_per_day: int,
    seed: int,
    malformed_rate: float = 0.002,
    duplicate_rate: float | None = None,
    drift: Drift | None = None,
) -> _SimulatedDay:
    if not 0.0 <= malformed_rate < 0.5:
        raise ValueError("malformed_rate must be within [0, 0.5)")
    if duplicate_rate is None:
        duplicate_rate = malformed_rate / 4.0
    if not 0.0 <= duplicate_rate < 0.5:
        raise ValueError("duplicate_rate must be within [0, 0.5)")
    day = date.fromisoformat(day).isoformat()
    rng = np.random.default_rng([int(seed), _ordinal(day) + 100_000, 0xDA7])
    total = int(events_per_day)
    n_dup = int(round(total * duplicate_rate))
    n_mal = int(round(total * malformed_rate))
    return _SimulatedDay(day, rng, _simulate(world, day, total - n_dup, rng, drift), n_dup, n_mal)


def _encode_day(sim: _SimulatedDay) -> tuple[bytes, DayStats]:
    """The gzip bytes of a simulated day: its lines, the malformed ones and the duplicates."""
    day, rng, ev, n_dup, n_mal = sim.day, sim.rng, sim.ev, sim.n_dup, sim.n_mal
    stats = DayStats()
    if not ev:
        return _gzip(b""), stats
    lines = _format_lines(day, ev)
    n = len(lines)

    # Malformed lines replace events in place (never an impression that leads to a play).
    cand = np.flatnonzero(~ev["led_to_play"])
    n_mal = min(n_mal, cand.size)
    mal_pos = np.sort(rng.choice(cand, size=n_mal, replace=False))
    kinds = rng.permutation(np.arange(n_mal) % len(MALFORMED_KINDS))
    for pos, k in zip(mal_pos.tolist(), kinds.tolist(), strict=True):
        lines[pos] = _corrupt(lines[pos], MALFORMED_KINDS[k], day, rng)
        stats.malformed[MALFORMED_KINDS[k]] = stats.malformed.get(MALFORMED_KINDS[k], 0) + 1

    # Exact duplicates of valid lines, written right after the original.
    if n_dup:
        ok = np.ones(n, bool)
        ok[mal_pos] = False
        dup_src = np.sort(rng.choice(np.flatnonzero(ok), size=min(n_dup, int(ok.sum())), replace=False))
        order = np.sort(np.concatenate([np.arange(n), dup_src]), kind="stable")
        lines = [lines[j] for j in order.tolist()]
        stats.duplicates = int(dup_src.size)

    stats.records = len(lines)
    stats.valid = n - n_mal
    stats.plays = int(ev["etype"].sum())
    stats.impressions = n - stats.plays
    lines.append("")
    return _gzip("\n".join(lines).encode()), stats


def _generate_day(
    world: World,
    day: str,
    events_per_day: int,
    seed: int,
    malformed_rate: float = 0.002,
    duplicate_rate: float | None = None,
    drift: Drift | None = None,
) -> tuple[bytes, DayStats]:
    return _encode_day(_simulate_day(world, day, events_per_day, seed, malformed_rate, duplicate_rate, drift))


def generate_day(
    world: World,
    day: str,
    events_per_day: int,
    seed: int,
    malformed_rate: float = 0.002,
    duplicate_rate: float | None = None,
    drift: Drift | None = None,
) -> bytes:
    """Gzip bytes of one day's JSON-lines event file (deterministic, see module doc; ``drift``: the
    behaviour of the drift scenario, e.g. :data:`DRIFT`)."""
    return _generate_day(world, day, events_per_day, seed, malformed_rate, duplicate_rate, drift)[0]


# --------------------------------------------------------------------------- reference (oracle)
# The landing zone's optional per-day reference (streamrec_assets.landing): the hidden affinity of
# the pairs the evaluation's oracle needs, so that the pipeline never rebuilds the world.

#: Items per active user in a day's reference (by hidden affinity, among items released by then):
#: the oracle's Recall@100 list needs 100, the rest leaves room for excluded items.
REFERENCE_TOP_K = 200
_REFERENCE_CELLS = 4_000_000  # (user, item) affinities scored at once: ~32 MB of float64


def _released_by_genre(world: World, day: str) -> tuple[np.ndarray, np.ndarray]:
    """Indexes of the items released on or before ``day``, grouped by genre, and each genre's bounds."""
    released = np.flatnonzero(world._release_ord <= _ordinal(day))
    released = released[np.argsort(world._genre[released], kind="stable")]
    return released, np.searchsorted(world._genre[released], np.arange(len(GENRES) + 1))


def _selection_scores(world: World, users_idx: np.ndarray, released: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Affinity of ``users_idx`` x ``released`` (grouped by genre) as one matrix product, to *select*
    the top items (rounding may differ from :meth:`World._affinity_idx` in the last bits)."""
    score = world._user_vec[users_idx] @ world._item_vec[released].T
    score *= 0.9
    score += 0.5 * world._quality[released]
    genre_pref = 0.6 * np.log(len(GENRES) * world._taste[users_idx] + 0.05)
    for g in range(len(GENRES)):
        score[:, bounds[g] : bounds[g + 1]] += genre_pref[:, g : g + 1]
    return score


def _chunk_pairs(
    score: np.ndarray, users_idx: np.ndarray, released: np.ndarray, k: int, pairs: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` items of each user (rows of ``score``, columns ``released``) plus the given
    ``pairs`` (user, item, column of the item in ``score`` or -1) of these users not among them."""
    top = np.argpartition(score, released.size - k, axis=1)[:, released.size - k :]
    in_top = np.zeros(score.shape, bool)
    np.put_along_axis(in_top, top, True, axis=1)
    pair_u, pair_i, col = pairs
    extra = col < 0
    extra[~extra] = ~in_top[np.searchsorted(users_idx, pair_u[~extra]), col[~extra]]
    u = np.concatenate([np.repeat(users_idx, k), pair_u[extra]])
    i = np.concatenate([released[top].ravel(), pair_i[extra]])
    order = np.argsort(u, kind="stable")
    return u[order], i[order]


def reference_scores(world: World, day: str, pair_users, pair_items, k: int = REFERENCE_TOP_K) -> pd.DataFrame:
    """A day's reference: ``user_id, item_id, score`` (the hidden affinity), one row per pair.

    The pairs are the given ones (the day's impressions) and, for every user among them, the
    ``k`` items of highest affinity among those released on or before ``day``. Users are
    scored against every released item in chunks (at most ``_REFERENCE_CELLS`` scores at once);
    rows are grouped by user (ascending)."""
    keys = np.sort(
        world._index(pair_users, world.n_users, "user") * world.n_items
        + world._index(pair_items, world.n_items, "item")
    )
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
    pair_u, pair_i = np.divmod(keys, world.n_items)
    released, bounds = _released_by_genre(world, day)
    k = min(int(k), released.size)
    u, i = pair_u, pair_i
    if k:
        col = np.full(world.n_items, -1, np.int64)
        col[released] = np.arange(released.size)
        users = pair_u[np.r_[True, pair_u[1:] != pair_u[:-1]]] if pair_u.size else pair_u
        step = max(1, _REFERENCE_CELLS // released.size)
        parts = []
        for start in range(0, users.size, step):
            chunk = users[start : start + step]
            lo, hi = np.searchsorted(pair_u, chunk[0]), np.searchsorted(pair_u, chunk[-1], side="right")
            score = _selection_scores(world, chunk, released, bounds)
            parts.append(_chunk_pairs(score, chunk, released, k, (pair_u[lo:hi], pair_i[lo:hi], col[pair_i[lo:hi]])))
        u = np.concatenate([pair_u[:0], *(p[0] for p in parts)])
        i = np.concatenate([pair_i[:0], *(p[1] for p in parts)])
    return pd.DataFrame({"user_id": u + 1, "item_id": i + 1, "score": world._affinity_idx(u, i)})


def _day_reference(world: World, sim: _SimulatedDay) -> pd.DataFrame:
    if not sim.ev:
        return reference_scores(world, sim.day, [], [])
    return reference_scores(world, sim.day, sim.ev["user"], sim.ev["item"])


# --------------------------------------------------------------------------- landing zone
# The layout and the completion marker belong to the pipeline's landing contract
# (streamrec_assets.landing); the generator writes through it like a real export would.


def write_catalog(landing: str, world: World) -> bool:
    """Write users/items parquet files unless identical ones exist; True when written."""
    from streamrec_assets.landing import Landing

    zone = Landing(landing)
    wrote_users = zone.write_catalog("users", world.users)
    wrote_items = zone.write_catalog("items", world.items)
    return wrote_users or wrote_items


def generation_params(
    events_per_day: int,
    seed: int,
    users: int,
    items: int,
    malformed_rate: float,
    duplicate_rate: float | None = None,
) -> dict:
    return {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "events_per_day": int(events_per_day),
        "users": int(users),
        "items": int(items),
        "malformed_rate": float(malformed_rate),
        "duplicate_rate": float(malformed_rate / 4.0 if duplicate_rate is None else duplicate_rate),
    }


def _day_summary(day: str, data_uri: str, t0: float, marker, stats: DayStats | None, reference: bool) -> dict:
    return {
        "date": day,
        "records": marker.records,
        "seconds": time.perf_counter() - t0,
        "skipped": stats is None,
        "path": data_uri,
        "sha256": marker.sha256,
        "malformed": None if stats is None else sum(stats.malformed.values()),
        "duplicates": None if stats is None else stats.duplicates,
        "reference": reference,
    }


def _deliver_day(zone, world: World, day: str, day_params: dict, drift: Drift | None, force: bool) -> dict:
    """Generate one day into the landing zone (reference, then events and marker), or skip it."""
    t0 = time.perf_counter()
    data_uri = str(zone.events_path(day))

    def simulate() -> _SimulatedDay:
        return _simulate_day(
            world, day, day_params["events_per_day"], day_params["seed"], day_params["malformed_rate"],
            day_params["duplicate_rate"], drift,
        )

    # A day is skipped only when its marker holds the same parameters *and* the file still
    # matches the marker's sha256: a truncated or replaced file is regenerated.
    cached = None if force else zone.verify_cached(day, day_params)
    if cached is not None:
        # A landing zone generated before references existed gains them without new events
        # (the simulation is deterministic; no line is formatted or compressed).
        missing = not zone.has_reference(day)
        if missing:
            zone.write_reference(day, _day_reference(world, simulate()))
        return _day_summary(day, data_uri, t0, cached, None, missing)
    sim = simulate()
    # The reference first: a day whose marker is visible has its reference.
    zone.write_reference(day, _day_reference(world, sim))
    data, stats = _encode_day(sim)
    marker = zone.write_day(day, data, stats.records, day_params)
    return _day_summary(day, data_uri, t0, marker, stats, True)


def generate(
    landing: str,
    start: str,
    end: str,
    events_per_day: int,
    seed: int,
    users: int | None = None,
    items: int | None = None,
    malformed_rate: float = 0.002,
    force: bool = False,
    duplicate_rate: float | None = None,
    drift_from: str | None = None,
) -> list[dict]:
    """Write the catalogue and, per day of ``[start, end]``, the reference, one event file and its
    ``_SUCCESS`` marker.

    ``drift_from``: the drift scenario (:data:`DRIFT`) from that day on; days before it, and
    every day of a run without it, are byte-identical to the default generation.

    A day is skipped when its data file exists and its marker holds identical
    generation parameters, unless ``force``; a skipped day without a reference gets one.
    The reference (:func:`reference_scores`, landing zone ``reference/``) is the oracle's input
    to the offline evaluation. Returns one summary per day: ``{"date", "records", "seconds",
    "skipped", "path", "sha256", "malformed", "duplicates", "reference"}`` (``malformed`` /
    ``duplicates`` are None for skipped days; ``reference``: whether it was written).
    """
    from streamrec_assets.core.dates import day_range
    from streamrec_assets.landing import Landing

    days = day_range(start, end)
    users = default_users(events_per_day) if users is None else int(users)
    items = default_items(events_per_day) if items is None else int(items)
    params = generation_params(events_per_day, seed, users, items, malformed_rate, duplicate_rate)
    if drift_from is not None:
        drift_from = date.fromisoformat(drift_from).isoformat()
    world = World.build(seed, users, items)
    write_catalog(landing, world)
    zone = Landing(landing)
    out = []
    for day in days:
        drifted = drift_from is not None and day >= drift_from
        day_params = {**params, "drift_from": drift_from} if drifted else params
        out.append(_deliver_day(zone, world, day, day_params, DRIFT if drifted else None, force))
    return out
