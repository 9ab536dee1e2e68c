"""Ranking metrics and co-visitation retrieval, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.metrics import ndcg_at_k, rank_by_score, recall_at_k, summarize
from streamrec_assets.core.retrieval import RetrievalModel, candidates, train_covisitation

T0 = pd.Timestamp("2026-01-10 08:00", tz="UTC")
LOG2_3 = math.log2(3)


def _ranked(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def _rel(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "relevance"])


# ---------------------------------------------------------------- metrics

REL = _rel([(1, 10, 2), (1, 20, 1), (1, 30, 0), (2, 10, 1), (3, 10, 0)])


def test_ndcg_perfect_reversed_missing_and_excluded():
    perfect = _ranked([(1, 10, 1), (1, 20, 2), (1, 30, 3)])
    out = ndcg_at_k(perfect, REL, k=20)
    # user 2 has relevance but no list -> 0; user 3 has only zero relevance -> not evaluated.
    assert list(out.index) == [1, 2] and out.index.name == "user_id" and out.name == "ndcg"
    assert out.loc[1] == pytest.approx(1.0)
    assert out.loc[2] == 0.0

    reversed_ = _ranked([(1, 30, 1), (1, 20, 2), (1, 10, 3)])
    dcg = 0 + 1 / LOG2_3 + 3 / 2  # gains 2^0-1, 2^1-1, 2^2-1 at ranks 1, 2, 3
    idcg = 3 + 1 / LOG2_3
    assert ndcg_at_k(reversed_, REL, k=20).loc[1] == pytest.approx(dcg / idcg)


def test_ndcg_cut_at_k_and_graded_gains():
    reversed_ = _ranked([(1, 30, 1), (1, 20, 2), (1, 10, 3)])
    # k=2: the rel-2 item at rank 3 no longer counts; IDCG@2 keeps both relevant items.
    assert ndcg_at_k(reversed_, REL, k=2).loc[1] == pytest.approx((1 / LOG2_3) / (3 + 1 / LOG2_3))
    assert ndcg_at_k(reversed_, REL, k=1).loc[1] == 0.0
    # Graded: a completed play (gain 3) at rank 1 beats a play (gain 1) at rank 1.
    top_completed = ndcg_at_k(_ranked([(1, 10, 1)]), REL, k=20).loc[1]
    top_played = ndcg_at_k(_ranked([(1, 20, 1)]), REL, k=20).loc[1]
    assert top_completed == pytest.approx(3 / (3 + 1 / LOG2_3))
    assert top_played == pytest.approx(1 / (3 + 1 / LOG2_3))


def test_ndcg_ideal_uses_top_k_of_own_relevance():
    rel = _rel([(5, 1, 1), (5, 2, 1), (5, 3, 1)])
    out = ndcg_at_k(_ranked([(5, 1, 1), (5, 9, 2)]), rel, k=2)
    assert out.loc[5] == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_recall_at_k():
    reversed_ = _ranked([(1, 30, 1), (1, 20, 2), (1, 10, 3)])
    assert recall_at_k(reversed_, REL, k=2).to_dict() == {1: 0.5, 2: 0.0}
    out = recall_at_k(reversed_, REL, k=3)
    assert out.name == "recall" and out.to_dict() == {1: 1.0, 2: 0.0}


def test_summarize_is_nan_safe():
    out = summarize({"ndcg": pd.Series([1.0, 0.0, np.nan]), "recall": pd.Series([], dtype="float64")})
    assert out["ndcg"] == 0.5 and math.isnan(out["recall"])


def test_rank_by_score_ties_by_item_id():
    scores = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2, 2],
            "item_id": [5, 3, 9, 1, 7, 4],
            "score": [0.5, 0.5, 0.9, np.nan, 1.0, 1.0],
        }
    )
    out = rank_by_score(scores, k=3)
    assert out.to_dict("list") == {
        "user_id": [1, 1, 1, 2, 2],
        "item_id": [9, 3, 5, 4, 7],
        "rank": [1, 2, 3, 1, 2],
    }
    assert rank_by_score(scores.iloc[::-1], k=3).equals(out)


# ---------------------------------------------------------------- retrieval

# user 1: 10, 20, 30, 10   user 2: 20, 30   user 3: 40, 40, 40 (self-pairs only)
SEQ = [(1, 10, 0), (1, 20, 1), (1, 30, 2), (1, 10, 3), (2, 20, 0.5), (2, 30, 1.5), (3, 40, 0), (3, 40, 1), (3, 40, 2)]


def _plays(rows=SEQ, shuffle_seed=None) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "event_timestamp": [T0 + pd.Timedelta(minutes=m) for _, _, m in rows],
        }
    )
    if shuffle_seed is not None:
        df = df.sample(frac=1, random_state=shuffle_seed).reset_index(drop=True)
    return df


def _pairs(model: RetrievalModel) -> dict[tuple[int, int], float]:
    nb = model.neighbors
    return {(int(a), int(b)): float(s) for a, b, s in zip(nb["item_id"], nb["neighbor_id"], nb["score"], strict=True)}


def test_covisitation_exact_weights_and_symmetry():
    model = train_covisitation(_plays(shuffle_seed=3), "2026-01-10", 28, lookahead=2)
    # user 1, d=1: 10-20, 20-30, 30-10; d=2: 10-30, 20-10 (x0.5). user 2, d=1: 20-30.
    expected = {(10, 20): 1.5, (10, 30): 1.5, (20, 30): 2.0}
    expected |= {(b, a): s for (a, b), s in expected.items()}
    assert _pairs(model) == pytest.approx(expected)
    assert model.neighbors[["item_id", "neighbor_id"]].values.tolist() == [
        [10, 20], [10, 30], [20, 30], [20, 10], [30, 20], [30, 10]
    ]
    # lookahead=1 drops the distance-2 pairs.
    short = train_covisitation(_plays(), "2026-01-10", 28, lookahead=1)
    assert _pairs(short) == pytest.approx({(10, 20): 1.0, (20, 10): 1.0, (10, 30): 1.0, (30, 10): 1.0,
                                           (20, 30): 2.0, (30, 20): 2.0})


def test_covisitation_skips_self_pairs_but_keeps_distance():
    # A A B: A-A skipped, A-B at distance 2 (0.5) and 1 (1.0).
    model = train_covisitation(_plays([(1, 7, 0), (1, 7, 1), (1, 8, 2)]), "2026-01-10", 28)
    assert _pairs(model) == pytest.approx({(7, 8): 1.5, (8, 7): 1.5})


def test_covisitation_does_not_cross_users():
    # Sorted by user then time, user 1's last play and user 2's first are adjacent.
    model = train_covisitation(_plays([(1, 1, 0), (1, 2, 1), (2, 3, 0), (2, 4, 1)]), "2026-01-10", 28)
    assert set(_pairs(model)) == {(1, 2), (2, 1), (3, 4), (4, 3)}


def test_max_neighbors_cut_ties_by_neighbor_id():
    model = train_covisitation(_plays(), "2026-01-10", 28, lookahead=2, max_neighbors=1)
    assert model.neighbors[["item_id", "neighbor_id"]].values.tolist() == [[10, 20], [20, 30], [30, 20]]


def test_popularity_and_history():
    model = train_covisitation(_plays(shuffle_seed=1), "2026-01-10", 28, max_history=2)
    assert model.popularity.to_dict("list") == {"item_id": [40, 10, 20, 30], "plays": [3, 2, 2, 2]}
    h = model.history
    assert h[["user_id", "item_id", "plays"]].values.tolist() == [
        [1, 10, 2], [1, 30, 1], [2, 30, 1], [2, 20, 1], [3, 40, 3]
    ]
    assert h["last_played"].iloc[0] == T0 + pd.Timedelta(minutes=3)
    assert str(h["last_played"].dtype) == "datetime64[us, UTC]"
    assert model.trained_through == "2026-01-10" and model.window_days == 28


def _model(**kw) -> RetrievalModel:
    return train_covisitation(_plays(), "2026-01-10", 28, lookahead=2, **kw)


def _lists(df: pd.DataFrame) -> dict[int, list[tuple[int, str]]]:
    return {int(u): list(zip(g["item_id"], g["source"], strict=True)) for u, g in df.groupby("user_id", sort=True)}


def test_candidates_covis_first_then_popularity():
    model = _model()
    out = candidates(model, [1, 2, 99], n=10)
    assert list(out.columns) == ["user_id", "item_id", "retrieval_score", "source"]
    assert out.groupby("user_id").size().to_dict() == {1: 4, 2: 4, 99: 4}  # min(n, 4 items)
    lists = _lists(out)
    # user 1: history 10 (2 plays), 20, 30 -> 20 and 30 tie at 1.5*(1+ln 2)+2, then 10 at 3.
    assert lists[1] == [(20, "covis"), (30, "covis"), (10, "covis"), (40, "popular")]
    u1 = out[out["user_id"] == 1]["retrieval_score"].tolist()
    assert u1 == pytest.approx([1.5 * (1 + math.log(2)) + 2, 1.5 * (1 + math.log(2)) + 2, 3.0, 0.0])
    assert lists[2] == [(10, "covis"), (20, "covis"), (30, "covis"), (40, "popular")]
    # Cold user: pure popularity order.
    assert lists[99] == [(40, "popular"), (10, "popular"), (20, "popular"), (30, "popular")]
    assert (out.loc[out["source"] == "popular", "retrieval_score"] == 0).all()


def test_candidates_exact_count_and_no_duplicates():
    model = _model()
    for n in (1, 2, 3, 4, 50):
        out = candidates(model, np.array([3, 1, 99, 1]), n=n)
        assert out.groupby("user_id").size().to_dict() == {1: min(n, 4), 3: min(n, 4), 99: min(n, 4)}
        assert not out.duplicated(["user_id", "item_id"]).any()
    assert _lists(candidates(model, [1], n=2))[1] == [(20, "covis"), (30, "covis")]
    # user 3 has history (40) but 40 has no neighbors -> popularity, 40 (already played) included.
    assert _lists(candidates(model, [3], n=2))[3] == [(40, "popular"), (10, "popular")]


def test_candidates_allowed_and_excluded_items():
    model = _model()
    out = candidates(model, [1, 99], n=10, allowed_items=np.array([10, 40, 12345]))
    assert _lists(out) == {1: [(10, "covis"), (40, "popular")], 99: [(40, "popular"), (10, "popular")]}
    out = candidates(model, [1, 99], n=10, exclude_unreleased={40})
    assert _lists(out) == {
        1: [(20, "covis"), (30, "covis"), (10, "covis")],
        99: [(10, "popular"), (20, "popular"), (30, "popular")],
    }
    assert candidates(model, [1], n=10, allowed_items=np.array([], dtype="int64")).empty


def test_empty_model():
    empty = pd.DataFrame({"user_id": [], "item_id": [], "event_timestamp": []})
    model = train_covisitation(empty, "2026-01-10", 28)
    for name, frame in model.to_frames().items():
        assert frame.empty, name
    assert str(model.history["last_played"].dtype) == "datetime64[us, UTC]"
    assert model.neighbors.dtypes.astype(str).tolist() == ["int64", "int64", "float64"]
    out = candidates(model, [1, 2], n=10)
    assert out.empty and list(out.columns) == ["user_id", "item_id", "retrieval_score", "source"]


def test_frames_round_trip_through_parquet(tmp_path):
    model = _model()
    frames = model.to_frames()
    assert set(frames) == {"neighbors", "popularity", "history"}
    loaded = {}
    for name, frame in frames.items():
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
        loaded[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    # A caller may hand back nanosecond timestamps; from_frames restores the canonical dtypes.
    loaded["history"]["last_played"] = loaded["history"]["last_played"].dt.as_unit("ns")
    back = RetrievalModel.from_frames(loaded, model.trained_through, model.window_days)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(back.to_frames()[name], frame, check_exact=True)
    assert (back.trained_through, back.window_days) == ("2026-01-10", 28)
    pd.testing.assert_frame_equal(candidates(back, [1, 2, 99]), candidates(model, [1, 2, 99]))


def test_deterministic_and_independent_of_row_order():
    rng = np.random.default_rng(5)
    n = 3000
    plays = pd.DataFrame(
        {
            "user_id": rng.integers(0, 80, n),
            "item_id": rng.integers(0, 60, n),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 3600, n), unit="s"),
        }
    )
    a = train_covisitation(plays, "2026-01-10", 28, max_neighbors=5, max_history=4)
    b = train_covisitation(plays.sample(frac=1, random_state=2), "2026-01-10", 28, max_neighbors=5, max_history=4)
    for name in ("neighbors", "popularity", "history"):
        pd.testing.assert_frame_equal(a.to_frames()[name], b.to_frames()[name], check_exact=True)
    assert (a.neighbors.groupby("item_id").size() <= 5).all()
    assert (a.history.groupby("user_id").size() <= 4).all()
    users = np.arange(-5, 90)
    ca, cb = candidates(a, users, n=30), candidates(b, users[::-1], n=30)
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    assert (ca.groupby("user_id").size() == 30).all() and ca["user_id"].nunique() == len(users)
    # Within a user: covis rows first, by score desc; popular rows after.
    for _, g in ca.groupby("user_id"):
        src = g["source"].tolist()
        assert src == sorted(src)  # 'covis' < 'popular'
        cov = g.loc[g["source"] == "covis", "retrieval_score"].to_numpy()
        assert (np.diff(cov) <= 0).all() and (cov > 0).all()
