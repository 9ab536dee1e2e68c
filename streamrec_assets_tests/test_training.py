"""Unit tests of labels, model features, the ranker, the promotion gate and serving helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.evaluation import impression_slates, promotion_decision, relevance_of_day
from streamrec_assets.core.ranking import score, train_ranker
from streamrec_assets.core.serving import latency_summary, refresh_history
from streamrec_assets.core.training import (
    add_context_features,
    label_impressions,
    leaked_rows,
    model_feature_columns,
)

DAY = "2026-01-10"
ITEMS = pd.DataFrame(
    {
        "item_id": [1, 2, 3],
        "genre": ["Drama", "Comedy", "Drama"],
        "duration_seconds": [1000.0, 2000.0, 3000.0],
        "release_date": ["2025-12-31", "2026-01-01", "2026-01-09"],
    }
)
USERS = pd.DataFrame({"user_id": [7, 8], "signup_date": ["2025-01-10", "2026-01-01"], "country": ["FR", "US"]})


def ev(user, item, kind, minute, watch=0.0, session="s1"):
    return {
        "date": DAY,
        "event_id": f"{user}-{item}-{kind}-{minute}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "event_timestamp": pd.Timestamp(f"{DAY}T10:00:00Z") + pd.Timedelta(minutes=minute),
        "watch_seconds": watch,
        "device": "tv",
        "session_id": session,
    }


def test_graded_labels_attach_plays_to_the_latest_impression():
    events = pd.DataFrame(
        [
            ev(7, 1, "impression", 0),
            ev(7, 1, "impression", 5),
            ev(7, 1, "play", 6, watch=950.0),  # completed (>= 90 % of 1000 s)
            ev(7, 2, "impression", 1),
            ev(7, 2, "play", 2, watch=100.0),  # played, not completed
            ev(7, 3, "impression", 3),  # never played
            ev(8, 3, "impression", 0, session="s2"),
            ev(8, 3, "play", 1, watch=10.0, session="other"),  # another session: not this impression's play
        ]
    )
    out = label_impressions(events, ITEMS).sort_values("event_timestamp")
    got = list(zip(out["user_id"], out["item_id"], out["label"], strict=True))
    assert sorted(got) == sorted([(7, 1, 0), (7, 1, 2), (7, 2, 1), (7, 3, 0), (8, 3, 0)])
    assert out["example_id"].is_unique and out["example_id"].str.startswith("20260110-").all()
    slates = impression_slates(out)
    assert set(slates["user_id"]) == {7}, "user 8 has nothing played: not rankable"
    assert slates.set_index("item_id")["relevance"].to_dict() == {1: 2, 2: 1, 3: 0}
    rel = relevance_of_day(events, ITEMS).set_index(["user_id", "item_id"])["relevance"].to_dict()
    assert rel == {(7, 1): 2, (7, 2): 1, (8, 3): 1}


def test_context_features_and_leakage_guard():
    frame = pd.DataFrame(
        {
            "date": [DAY, DAY],
            "user_id": [7, 8],
            "item_id": [1, 2],
            "user_features__date": ["2026-01-09", DAY],
            "user_features__genre_share_28d__drama": [0.75, 0.1],
            "user_features__genre_share_28d__comedy": [0.25, 0.6],
            "user_features__plays_28d": [4.0, np.nan],
            "item_features__plays_7d": [10.0, 3.0],
        }
    )
    out = add_context_features(frame, ITEMS, USERS, pd.Timestamp(DAY, tz="UTC"))
    assert out["user_genre_share_for_item"].tolist() == [0.75, 0.6]
    assert out["item_age_days"].tolist() == [10.0, 9.0]
    assert out["user_tenure_days"].tolist() == [365.0, 9.0]
    cols = model_feature_columns(out)
    assert "user_features__date" not in cols and "user_genre_share_for_item" in cols
    assert leaked_rows(out) == 1, "a feature row from the example's own day is a leak"


def synthetic_examples(seed: int, days: list[str], users: int = 60, items: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for day in days:
        for u in range(users):
            for i in rng.choice(items, size=6, replace=False):
                x = rng.normal(size=2)
                signal = 1.5 * x[0] - 0.5 * x[1] + rng.normal(scale=0.5)
                rows.append({"example_id": f"{day}-{u}-{i}", "date": day, "user_id": u, "item_id": int(i),
                             "user_features__a": x[0], "item_features__b": x[1],
                             "label": int(signal > 1.2) + int(signal > 2.0)})
    return pd.DataFrame(rows)


def test_ranker_learns_and_is_deterministic():
    days = [f"2026-01-{d:02d}" for d in range(1, 6)]
    data = synthetic_examples(0, days)
    train, valid = data[data["date"] < days[-1]], data[data["date"] == days[-1]]
    features = ["user_features__a", "item_features__b"]
    first = train_ranker(train, valid, features)
    again = train_ranker(train.sample(frac=1.0, random_state=3), valid, features)
    assert first.model_bytes == again.model_bytes, "same inputs (any row order) -> same model bytes"
    assert first.model_bytes[:1] == b"{", "XGBoost UBJSON, not pickle"
    test = synthetic_examples(1, ["2026-01-06"])
    s = score(first.model_bytes, test)
    assert np.corrcoef(s, 1.5 * test["user_features__a"] - 0.5 * test["item_features__b"])[0, 1] > 0.75
    with pytest.raises(ValueError, match="not enough labelled queries"):
        train_ranker(train.assign(label=0), valid, features)


def test_promotion_gate():
    assert promotion_decision(0.5, None, 0.0, DAY, None) == (True, "first registered model becomes champion")
    ok, why = promotion_decision(0.498, 0.5, 0.005, DAY, "3")
    assert ok and ">=" in why and "v3" in why
    ok, why = promotion_decision(0.49, 0.5, 0.005, DAY, "3")
    assert not ok and "<" in why and DAY in why
    # the reason names the day both models were scored on: the gate day (D-1), not the hold-out D
    ok, why = promotion_decision(0.6, 0.5, 0.0, DAY, "3", gate_day="2026-01-09")
    assert ok and why.endswith("on 2026-01-09")


def test_refresh_history_and_latency_summary():
    history = pd.DataFrame(
        {"user_id": [1, 1], "item_id": [10, 11],
         "last_played": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True).astype("datetime64[us, UTC]"),
         "plays": [1, 2]}
    )
    plays = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 12, 10],
                          "event_timestamp": pd.to_datetime(["2026-01-03"] * 3, utc=True)})
    out = refresh_history(history, plays, max_history=2)
    assert out[out["user_id"] == 1]["item_id"].tolist() == [10, 12]
    assert out[(out["user_id"] == 1) & (out["item_id"] == 10)]["plays"].item() == 2
    assert out[out["user_id"] == 2]["item_id"].tolist() == [10]
    summary = latency_summary([0.001] * 99 + [0.1])
    assert summary["requests"] == 100 and summary["p50_ms"] == pytest.approx(1.0)
    assert summary["p99_ms"] > 1.0
