"""Batch serving: vectorised entity lookups + sliced scoring give exactly what per-pair lookups give.

Unit tests run on plain DataFrames (core.serving); the integration tests compare, on the
32-day tiny graph, the vectorised feature frame (distinct users and items looked up once,
joined) against one Feast row per (user, item) pair, online and offline, and the published
recommendations against the per-pair implementation's scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.metrics import rank_by_score
from streamrec_assets.core.serving import (
    feature_source,
    join_entity_features,
    lookup_entities,
    recommend,
    recommendation_table,
    refs_by_key,
    retrieval_order_scores,
    serving_candidates,
    user_slices,
)
from streamrec_assets.core.training import add_context_features

AS_OF = pd.Timestamp("2026-01-11", tz="UTC")


# ----------------------------------------------------------------------------------- unit tests


def _catalogs(n_users: int = 30, n_items: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(
        {
            "item_id": np.arange(100, 100 + n_items, dtype="int64"),
            "genre": np.array(["drama", "comedy", "sci-fi"])[np.arange(n_items) % 3],
            "release_date": "2025-06-01",
            "duration_seconds": np.linspace(600, 7200, n_items).round(),
        }
    )
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1, dtype="int64"), "signup_date": "2025-01-01"})
    return items, users


def _entity_features(items: pd.DataFrame, users: pd.DataFrame) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(3)
    user_ids = users["user_id"].to_numpy()[::2]  # every other user has no feature row (cold)
    item_ids = items["item_id"].to_numpy()[1:]  # the first item has none (new)
    user = pd.DataFrame({"user_id": user_ids})
    user["user_features__plays_7d"] = rng.integers(0, 9, len(user_ids)).astype("int64")
    for genre in ("comedy", "drama", "sci_fi"):
        user[f"user_features__genre_share_28d_{genre}"] = rng.random(len(user_ids))
    user["user_features__date"] = "2026-01-10"
    item = pd.DataFrame({"item_id": item_ids[::-1]})  # any row order
    item["item_features__plays_7d"] = rng.random(len(item_ids)) * 50
    item["item_features__date"] = "2026-01-10"
    item["event_timestamp"] = AS_OF  # extra columns of a lookup are ignored
    return {"user_id": user, "item_id": item}


def _candidates(users: pd.DataFrame, items: pd.DataFrame, per_user: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for u in users["user_id"]:
        picked = rng.choice(items["item_id"].to_numpy(), size=per_user, replace=False)
        rows += [(u, i, float(per_user - r), "retrieval" if r < 3 else "popularity") for r, i in enumerate(picked)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "retrieval_score", "source"])


def _model_bytes(features: list[str]) -> bytes:
    import xgboost as xgb

    rng = np.random.default_rng(7)
    x = rng.random((400, len(features)))
    x[rng.random(x.shape) < 0.2] = np.nan
    y = np.nan_to_num(x[:, 0]) * 2 + np.nan_to_num(x[:, -1]) + rng.normal(0, 0.1, 400)
    booster = xgb.train({"max_depth": 3, "nthread": 1, "seed": 0},
                        xgb.DMatrix(x, label=y, feature_names=features, missing=np.nan), num_boost_round=20)
    return bytes(booster.save_raw(raw_format="ubj"))


MODEL_FEATURES = [
    "item_features__plays_7d",
    "user_features__genre_share_28d_comedy",
    "user_features__plays_7d",
    "user_genre_share_for_item",
    "item_age_days",
    "item_duration_seconds",
]


def _per_pair_recommend(feats: pd.DataFrame, cands: pd.DataFrame, model_bytes: bytes, items, users, k: int):
    """The previous implementation: one feature row per pair, scored at once, then ranked."""
    from streamrec_assets.core.ranking import score

    feats = add_context_features(feats, items, users, AS_OF)
    feats["score"] = score(model_bytes, feats)
    top = rank_by_score(feats[["user_id", "item_id", "score"]], k)
    top = top.merge(feats[["user_id", "item_id", "score"]], on=["user_id", "item_id"], how="left")
    top = top.merge(cands[["user_id", "item_id", "source"]], on=["user_id", "item_id"], how="left")
    return top.rename(columns={"source": "candidate_source"})


def test_join_entity_features_equals_one_row_per_pair():
    items, users = _catalogs()
    features = _entity_features(items, users)
    pairs = _candidates(users, items)[["user_id", "item_id"]].sample(frac=1.0, random_state=1)
    joined = join_entity_features(pairs, features)
    expected = pairs.reset_index(drop=True).merge(features["user_id"], on="user_id", how="left").merge(
        features["item_id"], on="item_id", how="left"
    )
    # The numeric features, as float64; the '__date' audit strings are never model features.
    expected = expected.drop(columns=["event_timestamp", "user_features__date", "item_features__date"])
    pd.testing.assert_frame_equal(joined, expected.astype({c: "float64" for c in expected.columns if "__" in c}))
    assert joined["user_features__plays_7d"].isna().any() and joined["item_features__plays_7d"].isna().any()
    assert join_entity_features(pairs, {}).equals(pairs.reset_index(drop=True))


def test_lookup_entities_asks_each_distinct_id_once():
    items, users = _catalogs()
    pairs = _candidates(users, items)
    calls = []

    def lookup(key, ids, refs):
        calls.append((key, list(ids), refs))
        return pd.DataFrame({key: ids})

    refs = ["user_features:plays_7d", "item_features:plays_7d", "user_features:date"]
    lookup_entities(pairs, refs, lookup)
    assert [(k, r) for k, _, r in calls] == [
        ("user_id", ["user_features:plays_7d", "user_features:date"]),
        ("item_id", ["item_features:plays_7d"]),
    ]
    assert calls[0][1] == sorted(pairs["user_id"].unique()) and calls[1][1] == sorted(pairs["item_id"].unique())
    assert refs_by_key(["item_features:x"]) == {"user_id": [], "item_id": ["item_features:x"]}
    with pytest.raises(ValueError, match="not of a view"):
        refs_by_key(["other_view:x"])


def test_user_slices_never_split_a_user():
    items, users = _catalogs()
    cands = _candidates(users, items)
    slices = list(user_slices(cands, 20))
    assert len(slices) > 3
    pd.testing.assert_frame_equal(pd.concat(slices), cands)
    seen = [set(s["user_id"]) for s in slices]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert list(user_slices(cands.iloc[0:0], 20)) == []


@pytest.mark.parametrize("slice_rows", [1, 20, 10_000])
def test_sliced_vectorised_scoring_equals_per_pair_scoring(slice_rows):
    items, users = _catalogs()
    features = _entity_features(items, users)
    cands = _candidates(users, items)
    model = _model_bytes(MODEL_FEATURES)
    pairs = cands[["user_id", "item_id"]]
    per_pair_features = pairs.merge(features["user_id"], on="user_id", how="left").merge(
        features["item_id"].drop(columns="event_timestamp"), on="item_id", how="left"
    )  # one row per pair, the lookup's own dtypes (int64, strings)
    per_pair = _per_pair_recommend(per_pair_features, cands, model, items, users, k=5)
    got = recommend(cands, model, items, users, AS_OF, features, k=5, slice_rows=slice_rows)
    pd.testing.assert_frame_equal(got, per_pair)
    table = recommendation_table(got, "2026-01-10", 3, "online")
    from streamrec_assets.contracts import batch_recommendations_schema

    batch_recommendations_schema.validate(table)
    assert (table.groupby("user_id")["rank"].max() == 5).all()
    assert set(table["ranker"]) == {"champion"} and set(table["model_version"]) == {3}


def test_without_a_model_recommendations_rank_by_popularity():
    """Changed on purpose (issue "Recommendations a product would ship"): without a champion the
    documented fallback ranks the candidates by popularity (it used to keep the retrieval order)."""
    items, users = _catalogs()
    cands = _candidates(users, items)
    popularity = pd.DataFrame({"item_id": items["item_id"][::-1].to_numpy(), "plays": np.arange(len(items))[::-1]})
    got = recommend(cands, None, items, users, AS_OF, None, k=3, popularity=popularity)
    plays = popularity.set_index("item_id")["plays"]
    expected = (
        cands.assign(plays=cands["item_id"].map(plays))
        .sort_values(["user_id", "plays", "item_id"], ascending=[True, False, True], kind="stable")
        .groupby("user_id")
        .head(3)
    )
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    assert got["candidate_source"].tolist() == expected["source"].tolist()
    assert got["score"].tolist() == expected["plays"].astype(float).tolist()
    with pytest.raises(ValueError, match="popularity"):
        recommend(cands, None, items, users, AS_OF, None, k=3)
    table = recommendation_table(got, "2026-01-10", None, "none")
    assert set(table["ranker"]) == {"popularity"} and table["model_version"].isna().all()
    from streamrec_assets.contracts import batch_recommendations_schema

    batch_recommendations_schema.validate(table)
    order = retrieval_order_scores(cands)
    assert (order.groupby("user_id")["score"].first() == 0).all()


def test_feature_source_online_for_the_newest_feature_day_offline_for_backfills():
    assert feature_source(True, "2026-01-10", "2026-01-10") == "online"
    assert feature_source(True, "2026-01-09", "2026-01-10") == "offline"
    assert feature_source(True, "2026-01-09", None) == "offline"
    assert feature_source(False, "2026-01-10", "2026-01-10") == "none"


# ------------------------------------------------------------------------------ integration


def _tables(settings):
    from streamrec_assets.resources import Storage

    return Storage(base_uri=settings.storage_uri)


def _day_candidates(settings, day: str):
    """The day's candidates as the asset makes them (default exclusion policy, consumption of [D-28, D])."""
    from streamrec_assets.assets.retrieval import N_CANDIDATES, load_retrieval
    from streamrec_assets.assets.serving import ConsumptionWindow
    from streamrec_assets.core.serving import consumption_days
    from streamrec_assets_tests.conftest import START

    storage = _tables(settings)
    tables = storage.tables()
    window = [d for d in consumption_days(day) if d >= START]
    raw = tables.reader("raw_events", window)
    events = raw.read(day)
    items = tables.read_table("item_catalog")
    users = tables.read_table("user_catalog")
    consumed = ConsumptionWindow(raw, items).window(window, pd.unique(events["user_id"]))
    cands, _, as_of = serving_candidates(load_retrieval(storage, day), events, items, day, N_CANDIDATES, consumed)
    return cands, items, users, as_of


def _assert_same_features(vectorised: pd.DataFrame, per_pair: pd.DataFrame) -> int:
    """Every feature the scorer can see is equal, pair for pair, to the per-pair lookup's."""
    columns = [c for c in vectorised.columns if "__" in c]
    left_out = [c for c in per_pair.columns if "__" in c and c not in columns]
    for col in left_out:  # only non-numeric columns: the '__date' strings, or features null everywhere
        assert col.endswith("__date") or per_pair[col].isna().all(), col
    assert len(vectorised) == len(per_pair)
    pd.testing.assert_frame_equal(
        vectorised[["user_id", "item_id", *columns]],
        per_pair[["user_id", "item_id", *columns]].reset_index(drop=True).astype({c: "float64" for c in columns}),
        check_exact=True,
    )
    return len(columns)


@pytest.mark.slow
def test_vectorised_online_features_equal_per_pair_lookup(graph_32):
    from streamrec_assets.assets.serving import _online_lookup
    from streamrec_assets.definitions import build_resources
    from streamrec_assets.feature_repo import feature_refs, online_features
    from streamrec_assets_tests.conftest import END

    settings, _, _ = graph_32
    store = build_resources(settings)["feast"].store()
    refs = feature_refs(store)
    cands, *_ = _day_candidates(settings, END)
    assert len(cands) > 1000
    pairs = cands[["user_id", "item_id"]]
    per_pair = online_features(store, pairs["user_id"], pairs["item_id"], refs)
    lookup = _online_lookup(store, batch_rows=37)  # several bulk requests per entity
    vectorised = join_entity_features(pairs, lookup_entities(pairs, refs, lookup))
    assert _assert_same_features(vectorised, per_pair) > 25
    assert vectorised[[c for c in vectorised.columns if c.startswith("user_features__")]].notna().any(axis=None)


@pytest.mark.slow
def test_vectorised_offline_features_equal_per_pair_lookup(graph_32):
    from streamrec_assets.assets.serving import _offline_lookup
    from streamrec_assets.definitions import build_resources
    from streamrec_assets.feature_repo import feature_refs, historical_features

    settings, _, _ = graph_32
    store = build_resources(settings)["feast"].store()
    refs = feature_refs(store)
    cands, _, _, as_of = _day_candidates(settings, "2026-01-20")
    pairs = cands[["user_id", "item_id"]]
    per_pair = historical_features(store, pairs.assign(event_timestamp=as_of), refs)
    vectorised = join_entity_features(pairs, lookup_entities(pairs, refs, _offline_lookup(store, as_of)))
    assert _assert_same_features(vectorised, per_pair) > 25


@pytest.mark.slow
def test_published_recommendations_equal_per_pair_implementation(graph_32):
    """The asset's table on the online day equals the previous per-pair pipeline's, score for score."""
    import dagster as dg
    from mlflow import xgboost as mlflow_xgboost

    from streamrec_assets.definitions import build_resources
    from streamrec_assets.feature_repo import feature_refs, online_features
    from streamrec_assets_tests.conftest import END

    settings, instance, _ = graph_32
    resources = build_resources(settings)
    published = _tables(settings).read_table("batch_recommendations", END, "data.parquet")
    version = int(published["model_version"].iloc[0])
    assert version > 0 and set(published["feature_source"]) == {"online"}
    resources["mlflow"].client()
    booster = mlflow_xgboost.load_model(f"models:/{resources['mlflow'].registered_model}/{version}")
    model = bytes(booster.save_raw(raw_format="ubj"))

    store = resources["feast"].store()
    cands, items, users, as_of = _day_candidates(settings, END)
    per_pair = online_features(store, cands["user_id"], cands["item_id"], feature_refs(store))
    from streamrec_assets.assets.taste import load_taste
    from streamrec_assets.core.ranking import score
    from streamrec_assets.resources import Storage

    feats = add_context_features(per_pair, items, users, as_of, load_taste(Storage(base_uri=settings.storage_uri), END))

    feats["score"] = score(model, feats)
    top = rank_by_score(feats[["user_id", "item_id", "score"]], 20)
    top = top.merge(feats[["user_id", "item_id", "score"]], on=["user_id", "item_id"], how="left")
    top = top.merge(cands[["user_id", "item_id", "source"]], on=["user_id", "item_id"], how="left")
    expected = recommendation_table(top.rename(columns={"source": "candidate_source"}), END, version, "online")
    pd.testing.assert_frame_equal(published, expected, check_exact=True)

    # END's own materialisation (other tests re-materialise older, backfilled days meanwhile).
    meta = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("batch_recommendations"), asset_partitions=[END]), limit=1
    ).records[0].asset_materialization.metadata
    assert meta["online_lookup_requests"].value == min(200, published["user_id"].nunique())
    assert 0 < meta["online_lookup_p50_ms"].value <= meta["online_lookup_p99_ms"].value
    assert meta["candidate_pairs"].value == len(cands)
