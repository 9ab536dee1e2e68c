"""Recommendations a product would ship: fallbacks from day one, the exclusion policy, the as-of champion.

Unit tests run on plain DataFrames (core.serving, core.retrieval, core.evaluation); the
integration tests read the 32-day tiny graph (``graph_32``): day one serves every active user
20 items, every day is scored by the champion as of that day, and re-materialising a day gives
the same bytes. ``test_exclusion_policy_effect_on_recall_at_100`` prints the policy's effect on
Recall@100 over the last days of the graph.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.evaluation import (
    apply_exclusion,
    deepest_exclusion,
    exclusion_effect,
    recall_lists,
)
from streamrec_assets.core.retrieval import RetrievalModel, candidates, train_covisitation
from streamrec_assets.core.serving import (
    CANDIDATE_SOURCES,
    PromotionRecord,
    champion_as_of,
    consumption,
    consumption_days,
    consumption_of_day,
    empty_consumption,
    excluded_pairs,
    label_sources,
    popularity_scores,
    promotion_records,
    recommend,
    recommendation_table,
    serving_candidates,
    serving_popularity,
)

DAY = "2026-01-10"
T0 = pd.Timestamp(f"{DAY} 08:00", tz="UTC")


def _items(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": np.arange(1, n + 1, dtype="int64"),
            "duration_seconds": np.full(n, 1000.0),
            "release_date": ["2025-01-01"] * (n - 2) + ["2026-01-10", "2026-02-01"],  # last one not yet released
            "genre": "drama",
        }
    )


def _plays(rows) -> pd.DataFrame:
    """``(user, item, minute, watch_seconds)`` -> play events."""
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], dtype="int64"),
            "item_id": np.array([r[1] for r in rows], dtype="int64"),
            "event_type": "play",
            "event_timestamp": [T0 + pd.Timedelta(minutes=r[2]) for r in rows],
            "watch_seconds": np.array([float(r[3]) for r in rows]),
        }
    )


def _model(seed: int = 0, users: int = 30, n_items: int = 38, plays: int = 600) -> RetrievalModel:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, plays),
            "item_id": rng.zipf(1.6, plays).clip(1, n_items),
            "event_timestamp": T0 - pd.to_timedelta(rng.integers(1, 20 * 24 * 60, plays), unit="min"),
        }
    )
    return train_covisitation(frame, "2026-01-09", 28)


# ------------------------------------------------------------------------- exclusion policy


def test_consumption_marks_completed_plays_and_combines_days():
    items = _items()
    day1 = consumption_of_day(_plays([(1, 5, 0, 899.9), (1, 5, 9, 900.0), (1, 6, 1, 10), (2, 5, 3, 100)]), items)
    assert day1.to_dict("records") == [
        {"user_id": 1, "item_id": 5, "completed": True},  # one play of >= 90 % of the item is enough
        {"user_id": 1, "item_id": 6, "completed": False},
        {"user_id": 2, "item_id": 5, "completed": False},
    ]
    impressions = _plays([(3, 7, 0, 0)]).assign(event_type="impression")
    assert consumption_of_day(impressions, items).empty, "impressions are not consumption"
    day2 = consumption_of_day(_plays([(2, 5, 0, 1000), (1, 6, 0, 5)]), items)
    both = consumption([day1, day2])
    assert both.set_index(["user_id", "item_id"])["completed"].to_dict() == {
        (1, 5): True, (1, 6): False, (2, 5): True,  # completed on any day of the window
    }
    assert consumption([day1, day2], users=np.array([2])).to_dict("records") == [
        {"user_id": 2, "item_id": 5, "completed": True}
    ]
    assert consumption([]).empty and list(consumption([]).columns) == ["user_id", "item_id", "completed"]
    assert consumption_days("2026-02-01") == [d.strftime("%Y-%m-%d") for d in pd.date_range("2026-01-04", "2026-02-01")]
    assert len(consumption_days(DAY)) == 29  # [D-28, D]


def test_excluded_pairs_by_policy():
    consumed = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "completed": [True, False, False]})
    pairs = lambda policy: list(map(tuple, excluded_pairs(consumed, policy).to_numpy()))  # noqa: E731
    assert pairs("completed") == [(1, 5)]
    assert pairs("played") == [(1, 5), (1, 6), (2, 5)]
    assert pairs("none") == []
    assert pairs("completed") == list(map(tuple, excluded_pairs(consumed).to_numpy())), "completed is the default"
    with pytest.raises(ValueError, match="unknown exclusion policy"):
        excluded_pairs(consumed, "watched")


def _brute_force(model, users, n, excluded, deep):
    """Exclusion by filtering a deeper unexcluded list, per user: what candidates(exclude_pairs=) must equal."""
    out = candidates(model, users, n=deep)
    hit = out.merge(excluded.assign(x=1), on=["user_id", "item_id"], how="left")["x"].notna().to_numpy()
    return out.loc[~hit].groupby("user_id").head(n).reset_index(drop=True)


@pytest.mark.parametrize("n", [5, 20, 37])
def test_candidates_exclusion_equals_filtering_a_deeper_list(n):
    model = _model()
    users = np.arange(1, 35)  # 31..34 are cold
    rng = np.random.default_rng(1)
    excluded = pd.DataFrame({"user_id": rng.integers(1, 35, 300), "item_id": rng.integers(1, 45, 300)})
    excluded = excluded.drop_duplicates().reset_index(drop=True)
    got = candidates(model, users, n=n, exclude_pairs=excluded)
    expected = _brute_force(model, users, n, excluded, deep=len(model.popularity))
    pd.testing.assert_frame_equal(got, expected)
    # every user still gets min(n, pool - own exclusions) candidates
    pool = set(model.popularity["item_id"])
    own = excluded[excluded["item_id"].isin(pool)].groupby("user_id").size()
    sizes = got.groupby("user_id").size()
    for user in users:
        assert sizes.get(user, 0) == min(n, len(pool) - int(own.get(user, 0))), user
    # without exclusions, exactly the previous behaviour
    pd.testing.assert_frame_equal(
        candidates(model, users, n=n, exclude_pairs=excluded.iloc[0:0]), candidates(model, users, n=n)
    )


def test_label_sources():
    cands = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2],
            "item_id": [10, 11, 12, 10, 13],
            "retrieval_score": [2.0, 0.0, 0.0, 0.0, 0.0],
            "source": ["covis", "popular", "popular", "popular", "popular"],
        }
    )
    consumed = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 12], "completed": [False, True]})
    got = label_sources(cands, users_with_history=np.array([1]), consumed=consumed)
    assert got["source"].tolist() == ["continue_watching", "popularity", "popularity", "cold_start", "cold_start"]
    assert set(got["source"]) <= set(CANDIDATE_SOURCES)
    assert label_sources(cands, np.array([1, 2]), empty_consumption())["source"].tolist() == [
        "retrieval", "popularity", "popularity", "popularity", "popularity"
    ]


def test_serving_popularity_adds_the_day_and_the_unplayed_catalogue():
    items = _items(6)
    window = pd.DataFrame({"item_id": [2, 1], "plays": [5, 4]})
    today = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 1, 3]})
    got = serving_popularity(window, today, items, DAY)
    # 1: 4+2, 2: 5, 3: 1; then unplayed released items, newest first (5 released on DAY), then by id;
    # item 6 (released 2026-02-01) is not in the pool yet.
    assert list(zip(got["item_id"], got["plays"], strict=True)) == [(1, 6), (2, 5), (3, 1), (5, 0), (4, 0)]
    empty = serving_popularity(window.iloc[0:0], today.iloc[0:0], items, DAY)
    assert empty["item_id"].tolist() == [5, 1, 2, 3, 4] and (empty["plays"] == 0).all()


def _empty_model() -> RetrievalModel:
    return train_covisitation(_plays([]), "2025-12-31", 28)


def test_day_one_serves_every_active_user_from_popularity():
    """No retrieval history yet (the first day of history): every active user still gets n items."""
    items = _items()
    events = pd.concat(
        [_plays([(1, 3, 0, 1000), (1, 4, 5, 10), (2, 3, 1, 50), (2, 7, 2, 999)]),
         _plays([(9, 3, 4, 0)]).assign(event_type="impression")],  # user 9 only browsed: no history at all
        ignore_index=True,
    )
    consumed = consumption_of_day(events, items)
    cands, users, as_of = serving_candidates(_empty_model(), events, items, DAY, 20, consumed, "completed")
    assert sorted(users) == [1, 2, 9] and as_of == pd.Timestamp("2026-01-11", tz="UTC")
    sizes = cands.groupby("user_id").size()
    assert sizes.to_dict() == {1: 20, 2: 20, 9: 20}
    by_user = {u: g.set_index("item_id")["source"].to_dict() for u, g in cands.groupby("user_id")}
    assert 3 not in by_user[1] and by_user[1][4] == "continue_watching", "completed excluded, partial kept"
    assert 3 in by_user[2] and by_user[2][3] == "continue_watching" and 7 not in by_user[2]
    assert set(by_user[9].values()) == {"cold_start"}
    assert set(by_user[1].values()) <= {"popularity", "continue_watching"}
    assert 40 not in cands["item_id"].to_numpy(), "not released yet"
    # popularity fallback ranking, 20 per user
    popularity = serving_popularity(_empty_model().popularity, events[events["event_type"] == "play"], items, DAY)
    top = recommend(cands, None, items, None, as_of, None, k=20, popularity=popularity)
    table = recommendation_table(top, DAY, None, "none")
    assert table.groupby("user_id").size().to_dict() == {1: 20, 2: 20, 9: 20}
    assert table.loc[table["user_id"] == 9, "item_id"].iloc[0] == 3, "the day's most played item first"
    from streamrec_assets.contracts import batch_recommendations_schema

    batch_recommendations_schema.validate(table)


def test_popularity_scores_are_the_items_plays():
    cands = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [7, 8, 9]})
    popularity = pd.DataFrame({"item_id": [9, 7], "plays": [3, 1]})
    assert popularity_scores(cands, popularity)["score"].tolist() == [1.0, 0.0, 3.0]


def test_the_same_policy_filters_evaluation_lists():
    model = _model()
    users = np.arange(1, 35)
    allowed = np.arange(1, 40)
    consumed = pd.DataFrame({"user_id": [1, 1, 2, 33], "item_id": [1, 2, 1, 1], "completed": [True, False, True, True]})
    excluded = excluded_pairs(consumed, "completed")
    assert deepest_exclusion(excluded) == 1 and deepest_exclusion(None) == 0
    lists = recall_lists(model, users, allowed, excluded, k=10)
    assert set(lists) == {"ours", "popularity"}
    for name, ranked in lists.items():
        merged = ranked.merge(excluded, on=["user_id", "item_id"])
        assert merged.empty, name
        assert (ranked.groupby("user_id")["rank"].agg(["min", "max", "size"]).eval("min == 1 and max == size")).all()
        assert (ranked.groupby("user_id").size() == 10).all(), name
    # ours is exactly the serving candidates under the same exclusions
    serving = candidates(model, users, n=10, allowed_items=allowed, exclude_pairs=excluded)
    assert lists["ours"][["user_id", "item_id"]].equals(serving[["user_id", "item_id"]])
    none = recall_lists(model, users, allowed, None, k=10)
    assert none["popularity"]["item_id"].iloc[0] == 1 and lists["popularity"].query("user_id == 1")["item_id"].iloc[0] != 1
    plays = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 3, 1], "relevance": [2, 1, 1]})
    effect = exclusion_effect(lists, none, plays, "completed", excluded, k=10)
    assert effect["exclude"] == "completed" and effect["excluded_pairs"] == 3 and effect["users_with_exclusions"] == 3
    assert effect["popularity_recall_at_10"] < effect["popularity_recall_at_10_no_exclusion"]
    ranking = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 1], "rank": [1, 2, 3, 1]})
    assert apply_exclusion(ranking, excluded, 2).values.tolist() == [[1, 2, 1], [1, 3, 2]]


# --------------------------------------------------------------------- champion as of a day


def _record(version, partition, status, decided_at="2026-03-01T00:00:00+00:00"):
    return PromotionRecord(version, partition, status, decided_at)


def test_champion_as_of_follows_recorded_promotions_by_partition():
    records = [
        _record(1, "2026-01-03", "promoted"),
        _record(2, "2026-01-04", "champion_kept"),
        _record(3, "2026-01-05", "promoted"),
        _record(4, "2026-01-06", None),  # undecided
        _record(5, None, "promoted"),  # registered by hand, no partition: never a champion by this rule
        _record(6, "2026-01-08", "already_champion"),
    ]
    version = lambda day: getattr(champion_as_of(records, day), "version", None)  # noqa: E731
    assert version("2026-01-02") is None, "before the first promotion: the popularity fallback"
    assert version("2026-01-03") == 1
    assert version("2026-01-04") == 1, "a champion_kept day keeps the earlier champion"
    assert version("2026-01-05") == version("2026-01-07") == 3
    assert version("2026-01-08") == version("2026-02-01") == 6
    assert champion_as_of([], "2026-01-05") is None
    # wall-clock order of the decisions does not matter, the partitions do (a backfill decided late)
    late = [_record(1, "2026-01-03", "promoted", "2026-03-02"), _record(3, "2026-01-05", "promoted", "2026-03-01")]
    assert champion_as_of(late, "2026-01-04").version == 1 and champion_as_of(late, "2026-01-05").version == 3
    # the same partition promoted twice (re-registered with new inputs): the later decision wins
    twice = [_record(3, "2026-01-05", "promoted", "2026-03-01"), _record(7, "2026-01-05", "promoted", "2026-03-09")]
    assert champion_as_of(twice, "2026-01-05").version == 7


def test_promotion_records_read_the_registry_tags():
    from streamrec_assets.core.registry import DECISION_TAG, Decision, Status

    def decision(version, status):
        return Decision(status, "r", str(version), None, 0.5, float("nan"), 0.005, "run", "2026-03-01T00:00:00+00:00")

    versions = [
        SimpleNamespace(version="2", tags={"partition": "2026-01-04",
                                           DECISION_TAG: decision(2, Status.CHAMPION_KEPT).to_tag()}),
        SimpleNamespace(version="1", tags={"partition": "2026-01-03",
                                           DECISION_TAG: decision(1, Status.PROMOTED).to_tag()}),
        SimpleNamespace(version="3", tags={"partition": "2026-01-05"}),
    ]
    queries = []

    class Client:
        def search_model_versions(self, filter_string):
            queries.append(filter_string)
            return versions

    records = promotion_records(Client(), "streamrec-ranker")
    assert queries == ["name='streamrec-ranker'"]
    assert records == [
        PromotionRecord(1, "2026-01-03", "promoted", "2026-03-01T00:00:00+00:00"),
        PromotionRecord(2, "2026-01-04", "champion_kept", "2026-03-01T00:00:00+00:00"),
        PromotionRecord(3, "2026-01-05", None, ""),
    ]
    assert champion_as_of(records, "2026-01-05").version == 1


# ------------------------------------------------------------------------------ integration


def _read(settings, asset: str, day: str) -> pd.DataFrame:
    from streamrec_assets.storage import TableStore, read_parquet

    return read_parquet(TableStore(settings.storage_uri).partition_path(asset, day))


def _days(start: str, end: str) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end, freq="D")]


@pytest.mark.slow
def test_every_active_user_gets_20_items_from_day_one(graph_32):
    from streamrec_assets_tests.conftest import END, START

    settings, _, _ = graph_32
    first = _read(settings, "batch_recommendations", START)
    active = set(_read(settings, "raw_events", START)["user_id"])
    assert set(first["user_id"]) == active and len(active) > 10
    assert (first.groupby("user_id").size() == 20).all(), "day one: no retrieval history, still 20 items each"
    assert set(first["ranker"]) == {"popularity"} and first["model_version"].isna().all()
    assert set(first["candidate_source"]) <= {"popularity", "cold_start", "continue_watching"}
    assert set(first["feature_source"]) == {"none"}
    for day in _days(START, END):
        recs = _read(settings, "batch_recommendations", day)
        assert set(recs["user_id"]) == set(_read(settings, "raw_events", day)["user_id"]), day
        assert (recs.groupby("user_id").size() == 20).all(), day
    last = _read(settings, "batch_recommendations", END)
    assert {"retrieval", "popularity"} <= set(last["candidate_source"])
    assert set(last["ranker"]) == {"champion"}


def _mlflow_client(settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def _published_bytes(settings, day: str) -> bytes:
    from streamrec_assets.storage import TableStore

    with open(TableStore(settings.storage_uri).partition_path("batch_recommendations", day), "rb") as fh:
        return fh.read()


@pytest.mark.slow
def test_each_day_is_scored_by_the_champion_as_of_that_day_reproducibly(graph_32):
    from streamrec_assets_tests.conftest import END, START, run_range

    settings, instance, _ = graph_32
    client = _mlflow_client(settings)
    records = promotion_records(client, "streamrec-ranker")
    promoted = [r for r in records if r.status == "promoted"]
    assert len(promoted) >= 2, "the graph promotes more than one version"
    today = int(client.get_model_version_by_alias("streamrec-ranker", "champion").version)
    older = None
    for day in _days(START, END):
        recs = _read(settings, "batch_recommendations", day)
        expected = champion_as_of(records, day)
        if expected is None:
            assert recs["model_version"].isna().all() and set(recs["ranker"]) == {"popularity"}, day
            continue
        assert set(recs["model_version"]) == {expected.version} and set(recs["ranker"]) == {"champion"}, day
        if expected.version != today and older is None:
            older = day
    assert champion_as_of(records, END).version == today, "the newest day is scored by today's champion"
    assert older is not None, "some older day had another champion than today's"
    # ... and re-materialising that older day gives the same bytes (same version, same features), twice;
    # then END again (the newest day, online features), so the latest materialisation stays END's.
    for day in (older, older, END):
        before = _published_bytes(settings, day)
        result = run_range(settings, instance, day, day, selection="batch_recommendations")
        assert result.success
        assert _published_bytes(settings, day) == before, day
    recs = _read(settings, "batch_recommendations", older)
    assert set(recs["model_version"]) == {champion_as_of(records, older).version} != {today}
    import dagster as dg

    meta = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("batch_recommendations"), asset_partitions=[older]), limit=1
    ).records[0].asset_materialization.metadata
    assert meta["champion_version"].value == champion_as_of(records, older).version
    assert meta["alias_champion_version"].value == today and meta["exclude"].value == "completed"


@pytest.mark.slow
def test_exclusion_policy_effect_on_recall_at_100(graph_32):
    """Recall@100 (the evaluation's users and lists) with and without the exclusion policy, per day."""
    from streamrec_assets.assets.retrieval import N_CANDIDATES, load_retrieval
    from streamrec_assets.assets.serving import ConsumptionWindow
    from streamrec_assets.core.dates import day_offset
    from streamrec_assets.core.evaluation import impression_slates, relevance_of_day, sample_users
    from streamrec_assets.core.training import label_impressions
    from streamrec_assets.resources import Storage
    from streamrec_assets_tests.conftest import END, START

    settings, _, _ = graph_32
    storage = Storage(base_uri=settings.storage_uri)
    tables = storage.tables()
    items = tables.read_table("item_catalog")
    eval_days = _days("2026-01-26", END)
    raw = tables.reader("raw_events", _days(START, END))
    window = ConsumptionWindow(raw, items)
    rows = []
    for day in eval_days:
        events = raw.read(day)
        slates = impression_slates(label_impressions(events, items))
        users = sample_users(slates["user_id"].to_numpy(), 2000)
        plays = relevance_of_day(events, items)
        plays = plays[plays["user_id"].isin(users)]
        retrieval = load_retrieval(storage, day)
        allowed = items.loc[items["release_date"] <= day, "item_id"].to_numpy()
        consumed = window.window([d for d in consumption_days(day_offset(day, -1)) if d >= START], users)
        baseline = recall_lists(retrieval, users, allowed, None, N_CANDIDATES)
        for policy in ("completed", "played"):
            excluded = excluded_pairs(consumed, policy)
            lists = recall_lists(retrieval, users, allowed, excluded, N_CANDIDATES)
            for name, ranked in lists.items():
                assert ranked.merge(excluded, on=["user_id", "item_id"]).empty, (day, policy, name)
            effect = exclusion_effect(lists, baseline, plays, policy, excluded, N_CANDIDATES)
            replayed = plays.merge(excluded, on=["user_id", "item_id"])
            rows.append({"day": day, "policy": policy, **effect, "plays_of_excluded_items": len(replayed),
                         "plays": len(plays)})
    table = pd.DataFrame(rows)
    summary = table.groupby("policy")[
        ["recall_at_100", "recall_at_100_no_exclusion", "popularity_recall_at_100",
         "popularity_recall_at_100_no_exclusion", "excluded_pairs", "plays_of_excluded_items", "plays"]
    ].mean()
    print("\nRecall@100 with / without the exclusion policy, per day:\n" + table.to_string(index=False))
    print("\nmean over " + f"{len(eval_days)} days:\n" + summary.to_string())
    completed = table[table["policy"] == "completed"]
    assert (completed["excluded_pairs"] > 0).all()
    assert (completed["recall_at_100"].between(0, 1)).all()
