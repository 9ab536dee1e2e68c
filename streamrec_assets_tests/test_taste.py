"""The taste model (core.taste) and the one time every ranker feature is as of (core.training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.taste import TASTE_FEATURES, fit_taste, outcomes_of_day
from streamrec_assets.core.training import CONTEXT_FEATURES, add_context_features, ranking_time


def _planted(seed: int = 0, users: int = 80, items: int = 60, genres: int = 3, k: int = 2, shows: int = 40):
    """Binomial outcomes drawn from a known logit: b + b_i + g_u[genre] + U_u . V_i."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, genres, items)
    b_i, g_u = rng.normal(0, 0.7, items), rng.normal(0, 0.7, (users, genres))
    U, V = rng.normal(0, 0.8, (users, k)), rng.normal(0, 0.8, (items, k))
    u, i = np.meshgrid(np.arange(users), np.arange(items), indexing="ij")
    u, i = u.ravel(), i.ravel()
    keep = rng.random(len(u)) < 0.5  # half the pairs were ever shown
    u, i = u[keep], i[keep]
    logit = -0.5 + b_i[i] + g_u[u, item_genre[i]] + np.einsum("ij,ij->i", U[u], V[i])
    positives = rng.binomial(shows, 1 / (1 + np.exp(-logit)))
    frame = pd.DataFrame({"user_id": u + 1, "item_id": i + 1, "genre_code": item_genre[i],
                          "impressions": shows, "positives": positives})
    return frame, logit, b_i, item_genre


def _spearman(a, b) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def test_fit_recovers_a_planted_taste():
    frame, logit, b_i, item_genre = _planted()
    model = fit_taste(frame, genres=3, factors=2, l2=0.1, max_iter=300)
    scores = model.scores(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["genre_code"].to_numpy())
    assert scores["taste_score"].notna().all()
    assert _spearman(scores["taste_score"], logit) > 0.9
    # the collaborative part alone still orders the pairs the planted way (with the biases removed)
    assert model.impressions == int(frame["impressions"].sum()) and model.pairs == len(frame)
    fitted_bias = model.items.set_index("item_id")["bias"]
    assert _spearman(fitted_bias.to_numpy(), b_i[fitted_bias.index.to_numpy() - 1]) > 0.6


def test_fit_is_deterministic_and_sums_a_pair_over_days():
    frame, *_ = _planted(seed=3, users=30, items=20)
    one = fit_taste(frame, genres=3, factors=2)
    split = pd.concat([frame.assign(impressions=20, positives=frame["positives"] // 2),
                       frame.assign(impressions=20, positives=frame["positives"] - frame["positives"] // 2)])
    two = fit_taste(split.sample(frac=1.0, random_state=1), genres=3, factors=2)
    pd.testing.assert_frame_equal(one.users, two.users)
    pd.testing.assert_frame_equal(one.items, two.items)
    again = fit_taste(frame, genres=3, factors=2)
    assert again.global_bias == one.global_bias
    pd.testing.assert_frame_equal(again.items, one.items)


def test_unseen_users_items_and_genres_score_missing():
    frame, *_ = _planted(users=10, items=10)
    model = fit_taste(frame, genres=3, factors=2, max_iter=20)
    known_u, known_i = int(frame["user_id"].iloc[0]), int(frame["item_id"].iloc[0])
    scores = model.scores(np.array([known_u, 999, known_u, known_u]), np.array([known_i, known_i, 999, known_i]),
                          np.array([0, 0, 0, -1]))
    assert scores["taste_score"].notna().tolist() == [True, False, False, False]
    assert scores["taste_item_bias"].notna().tolist() == [True, True, False, True]
    assert scores["taste_user_genre_bias"].notna().tolist() == [True, False, True, False]
    assert scores["taste_dot"].notna().tolist() == [True, False, False, True]


def test_an_empty_window_gives_an_empty_model_that_scores_missing():
    empty = pd.DataFrame({c: pd.Series(dtype="int64") for c in ["user_id", "item_id", "genre_code", "impressions",
                                                                  "positives"]})
    model = fit_taste(empty, genres=3)
    assert model.empty
    assert model.scores(np.array([1]), np.array([1]), np.array([0]))["taste_score"].isna().all()


def test_outcomes_reconcile_with_the_labelled_impressions():
    items = pd.DataFrame({"item_id": [1, 2, 3], "genre": ["drama", "action", "drama"]})
    examples = pd.DataFrame({
        "date": ["2026-01-05"] * 6,
        "user_id": [1, 1, 1, 2, 2, 2],
        "item_id": [1, 1, 2, 3, 3, 4],
        "label": [0, 2, 1, 0, 0, 1],
    })
    out = outcomes_of_day(examples, items)
    assert int(out["impressions"].sum()) == len(examples)
    assert int(out["positives"].sum()) == int((examples["label"] > 0).sum())
    assert int(out["completions"].sum()) == int((examples["label"] == 2).sum())
    row = out.set_index(["user_id", "item_id"]).loc[(1, 1)]
    assert (row["impressions"], row["positives"], row["completions"], row["genre_code"]) == (2, 1, 1, 1)
    assert out.set_index(["user_id", "item_id"]).loc[(2, 4), "genre_code"] == -1  # not in the catalogue
    from streamrec_assets.contracts import user_item_daily_outcomes_schema, validate

    assert validate(out, user_item_daily_outcomes_schema).passed


@pytest.fixture
def catalogues():
    items = pd.DataFrame({"item_id": [1, 2], "genre": ["drama", "action"], "duration_seconds": [3600, 5400],
                          "release_date": ["2025-12-01", "2026-01-01"]})
    users = pd.DataFrame({"user_id": [7], "signup_date": ["2025-06-01"]})
    return items, users


def test_context_features_are_as_of_the_start_of_the_ranked_day(catalogues):
    """A training example at 15:37 on D, an evaluation slate of D and a list served for D (made on D-1,
    as of D 00:00) see the same context and taste features."""
    items, users = catalogues
    frame, *_ = _planted(users=10, items=2, genres=2)
    taste = fit_taste(frame, genres=2, factors=2, max_iter=20)
    rows = pd.DataFrame({"user_id": [7, 7], "item_id": [1, 2], "date": ["2026-01-10"] * 2,
                         "event_timestamp": pd.to_datetime(["2026-01-10 15:37", "2026-01-10 23:59"], utc=True)})
    training = add_context_features(rows, items, users, ranking_time(rows["date"]), taste)
    evaluation = add_context_features(rows[["user_id", "item_id"]], items, users, ranking_time("2026-01-10"), taste)
    serving_as_of = pd.Timestamp("2026-01-09", tz="UTC") + pd.Timedelta(days=1)  # core.serving: made on D-1
    serving = add_context_features(rows[["user_id", "item_id"]], items, users, serving_as_of, taste)
    for other in (evaluation, serving):
        pd.testing.assert_frame_equal(training[CONTEXT_FEATURES].reset_index(drop=True),
                                      other[CONTEXT_FEATURES].reset_index(drop=True))
    assert training["item_age_days"].tolist() == [40.0, 9.0]  # whole days: 00:00 to 00:00
    assert set(TASTE_FEATURES) <= set(CONTEXT_FEATURES)
    without = add_context_features(rows, items, users, ranking_time(rows["date"]))
    assert without[TASTE_FEATURES].isna().all().all()
