"""Window math checked against a brute-force recomputation from raw events."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.contracts import (
    item_daily_activity_schema,
    item_features_schema,
    user_daily_activity_schema,
    user_features_schema,
    validate,
)
from streamrec_assets.core.features import (
    COMPLETION_THRESHOLD,
    genre_slug,
    history_days,
    item_daily_activity,
    rolling_features,
    user_daily_activity,
)
from streamrec_assets.core.ingest import ingest_day
from streamrec_assets.landing import decompress

FIRST = "2026-01-01"
N_DAYS = 12


def _days(n: int, start: str = FIRST) -> list[str]:
    d0 = date.fromisoformat(start)
    return [(d0 + timedelta(days=i)).isoformat() for i in range(n)]


@pytest.fixture(scope="module")
def events(tiny_world) -> pd.DataFrame:
    frames = []
    for day in _days(N_DAYS):
        data = decompress(datagen.generate_day(tiny_world, day, 800, seed=5))
        frames.append(ingest_day(data, day, tiny_world.users["user_id"], tiny_world.items["item_id"]).valid)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def items(tiny_world) -> pd.DataFrame:
    return tiny_world.items.astype({"duration_seconds": "float64"})


def brute_force(events: pd.DataFrame, items: pd.DataFrame, entity: str, day: str, window: int) -> pd.DataFrame:
    """Sums over the raw events of the window, one Python loop, no shared code."""
    dur = dict(zip(items["item_id"], items["duration_seconds"], strict=True))
    lo = (date.fromisoformat(day) - timedelta(days=window - 1)).isoformat()
    rows: dict[int, dict[str, float]] = {}
    for ev in events[(events["date"] >= lo) & (events["date"] <= day)].itertuples():
        r = rows.setdefault(getattr(ev, entity), {"impressions": 0, "plays": 0, "completions": 0, "watch_seconds": 0.0})
        if ev.event_type == "play":
            r["plays"] += 1
            r["watch_seconds"] += ev.watch_seconds
            r["completions"] += int(ev.watch_seconds >= COMPLETION_THRESHOLD * dur[ev.item_id])
        else:
            r["impressions"] += 1
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(entity).sort_index()


@pytest.mark.parametrize("entity", ["user_id", "item_id"])
def test_rolling_windows_match_brute_force(events, items, entity):
    daily_fn = user_daily_activity if entity == "user_id" else item_daily_activity
    daily = daily_fn(events, items)
    as_of = _days(N_DAYS)[-3:]
    feats = rolling_features(daily, as_of, entity, first_day=FIRST, windows=(1, 7, 28))
    for day in as_of:
        got = feats[feats["date"] == day].set_index(entity).sort_index()
        expected_28 = brute_force(events, items, entity, day, 28)
        assert list(got.index) == list(expected_28.index), "rows = entities active in the 28-day window"
        for window in (1, 7, 28):
            expected = brute_force(events, items, entity, day, window).reindex(got.index, fill_value=0)
            for col in ("impressions", "plays", "completions"):
                np.testing.assert_array_equal(got[f"{col}_{window}d"], expected[col].astype("int64"))
            np.testing.assert_allclose(got[f"watch_seconds_{window}d"], expected["watch_seconds"], rtol=1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = expected_28["completions"] / expected_28["plays"].where(expected_28["plays"] > 0)
        np.testing.assert_allclose(got["completion_rate_28d"], rate, equal_nan=True)
        assert (got["history_days"] == min(28, _days(N_DAYS).index(day) + 1)).all()
        assert (got["feature_timestamp"] == pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)).all()


def test_genre_shares_match_brute_force(events, items):
    daily = user_daily_activity(events, items)
    day = _days(N_DAYS)[-1]
    feats = rolling_features(daily, [day], "user_id", first_day=FIRST).set_index("user_id")
    plays = events[(events["event_type"] == "play") & (events["date"] <= day)].merge(items, on="item_id")
    share = pd.crosstab(plays["user_id"], plays["genre"].map(genre_slug), normalize="index")
    for slug in share.columns:
        got = feats.loc[share.index, f"genre_share_28d__{slug}"]
        np.testing.assert_allclose(got, share[slug], rtol=1e-12)
    no_plays = feats[feats["plays_28d"] == 0]
    assert no_plays.filter(like="genre_share_28d__").isna().all().all()


def test_start_of_history_is_clipped_not_failed(events, items):
    daily = user_daily_activity(events, items)
    first_days = _days(3)
    feats = rolling_features(daily[daily["date"].isin(first_days)], first_days, "user_id", first_day=FIRST)
    assert feats.groupby("date")["history_days"].first().tolist() == [1, 2, 3]
    assert (feats["active_days_28d"] <= feats["history_days"]).all()
    assert history_days("2026-03-01", FIRST) == 28
    with pytest.raises(ValueError, match="before the first day"):
        history_days("2025-12-31", FIRST)


def test_day_without_activity_yields_no_rows(events, items):
    daily = user_daily_activity(events, items)
    far = "2026-03-30"  # more than 28 days after the data: nobody is active in the window
    feats = rolling_features(daily, [far], "user_id", first_day=FIRST)
    assert feats.empty
    assert validate(feats, user_features_schema).passed


def test_outputs_satisfy_contracts(events, items):
    udaily, idaily = user_daily_activity(events, items), item_daily_activity(events, items)
    assert validate(udaily, user_daily_activity_schema).passed
    assert validate(idaily, item_daily_activity_schema).passed
    days = _days(N_DAYS)
    assert validate(rolling_features(udaily, days, "user_id", first_day=FIRST), user_features_schema).passed
    assert validate(rolling_features(idaily, days, "item_id", first_day=FIRST), item_features_schema).passed
    # Conservation: daily aggregates add up to the raw events.
    assert udaily["plays"].sum() == idaily["plays"].sum() == (events["event_type"] == "play").sum()
    assert udaily["impressions"].sum() == (events["event_type"] == "impression").sum()
