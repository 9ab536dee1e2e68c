"""The data source's reference ranking: landing layout, generator, pure functions and the oracle.

The evaluation's ``oracle`` is computed from the landing zone's optional reference; these tests
hold it to the world-based computation the pipeline used before (the world is rebuilt here,
in the tests, never in production code).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from streamrec_assets import datagen
from streamrec_assets.assets.models import _oracle_slates, _reference
from streamrec_assets.core.evaluation import (
    evaluation_table,
    impression_slates,
    relevance_of_day,
    sample_users,
)
from streamrec_assets.core.ingest import ingest_day
from streamrec_assets.core.metrics import rank_by_score
from streamrec_assets.core.reference import reference_ranking, slate_scores
from streamrec_assets.core.training import label_impressions
from streamrec_assets.errors import DeliveryError
from streamrec_assets.landing import Landing, reference_relpath
from streamrec_assets.resources import LandingZone
from streamrec_assets_tests.conftest import END, SEED, TINY_EVENTS

N = 100  # Recall@100 list length (models.N_CANDIDATES)
#: The demo's shape: 1,500 items, so that more items are released than the reference keeps per user.
DEMO = {"events_per_day": 8000, "seed": 7, "users": 400, "items": 1500}


def oracle_ranking(affinity, users: np.ndarray, allowed: np.ndarray, k: int) -> pd.DataFrame:
    """The former world-based oracle (top-k allowed items per user by the generator's hidden affinity):
    the reference implementation the reference file must reproduce."""
    frames = []
    for start in range(0, len(users), 256):
        chunk = users[start : start + 256]
        scores = affinity(np.repeat(chunk, len(allowed)), np.tile(allowed, len(chunk)))
        frames.append(pd.DataFrame({"user_id": np.repeat(chunk, len(allowed)),
                                    "item_id": np.tile(allowed, len(chunk)), "score": scores}))
    if not frames:
        return pd.DataFrame({"user_id": [], "item_id": [], "rank": []}, dtype="int64")
    return rank_by_score(pd.concat(frames, ignore_index=True), k)


def _oracle_lists(context, landing, day, slates, users, allowed):
    """What model_evaluation computes for the oracle: its slate ordering and its top-100 lists."""
    from streamrec_assets.core.reference import reference_ranking

    reference = _reference(context, landing, day)
    if reference is None:
        return None
    return _oracle_slates(context, day, slates, reference), reference_ranking(reference, users, N, allowed)


def _ref(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score"]).astype(
        {"user_id": "int64", "item_id": "int64", "score": "float64"}
    )


# --------------------------------------------------------------------------- pure functions


def test_slate_scores_keep_the_slate_order_and_count_missing_pairs():
    reference = _ref([(1, 10, 0.5), (1, 11, 0.9), (2, 10, -0.1), (3, 12, 4.0)])
    slates = pd.DataFrame({"user_id": [2, 1, 1, 2], "item_id": [10, 11, 10, 99], "relevance": [1, 0, 2, 0]})
    scores, missing = slate_scores(slates, reference)
    assert list(scores.columns) == ["user_id", "item_id", "score"]
    assert scores[["user_id", "item_id"]].values.tolist() == [[2, 10], [1, 11], [1, 10], [2, 99]]
    assert scores["score"].tolist()[:3] == [-0.1, 0.9, 0.5] and np.isnan(scores["score"].iloc[3])
    assert missing == 1
    ranked = rank_by_score(scores, 20)  # the missing pair ranks last in its user's slate
    assert ranked[ranked["user_id"] == 2]["item_id"].tolist() == [10, 99]
    # a repeated pair keeps its best score
    again, _ = slate_scores(slates.head(1), pd.concat([reference, _ref([(2, 10, 3.0)])]))
    assert again["score"].tolist() == [3.0]


def test_reference_ranking_top_n_allowed_excluded_and_ties():
    reference = _ref([(1, 1, 0.1), (1, 2, 0.9), (1, 3, 0.9), (1, 4, 0.5), (2, 1, 1.0), (2, 4, 2.0), (3, 1, 5.0)])
    got = reference_ranking(reference, np.array([1, 2, 9]), 2)
    assert got.to_dict("list") == {"user_id": [1, 1, 2, 2], "item_id": [2, 3, 4, 1], "rank": [1, 2, 1, 2]}
    assert got.dtypes.tolist() == [np.dtype("int64")] * 3
    assert reference_ranking(reference, np.array([1]), 3, allowed_items=np.array([1, 3, 4]))["item_id"].tolist() == [
        3, 4, 1
    ]
    exclude = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [2, 2, 1]})  # duplicates are fine
    got = reference_ranking(reference, np.array([1, 2]), 2, exclude=exclude)
    assert got.to_dict("list") == {"user_id": [1, 1, 2], "item_id": [3, 4, 4], "rank": [1, 2, 1]}
    empty = reference_ranking(reference, np.array([7]), 5)
    old_empty = oracle_ranking(lambda u, i: np.zeros(len(u)), np.array([], dtype="int64"), np.array([1]), 5)
    assert list(empty.columns) == list(old_empty.columns) and empty.empty
    assert empty.dtypes.tolist() == old_empty.dtypes.tolist()


def test_reference_ranking_equals_oracle_ranking_on_a_complete_reference():
    rng = np.random.default_rng(3)
    users, items = np.arange(1, 40), np.arange(1, 300)
    u, i = np.repeat(users, items.size), np.tile(items, users.size)
    table = _ref({"user_id": u, "item_id": i, "score": np.round(rng.normal(size=u.size), 1)})  # many ties
    lookup = table.set_index(["user_id", "item_id"])["score"]

    def affinity(uu, ii):
        return lookup.reindex(pd.MultiIndex.from_arrays([uu, ii])).to_numpy()

    allowed = items[items % 3 != 0]
    pd.testing.assert_frame_equal(
        reference_ranking(table, users, N, allowed_items=allowed), oracle_ranking(affinity, users, allowed, N)
    )


# --------------------------------------------------------------------------- landing zone


def test_landing_reference_round_trip_absent_and_broken(tmp_path):
    zone = Landing(str(tmp_path))
    day = "2026-01-05"
    assert zone.read_reference(day) is None and not zone.has_reference(day)
    frame = _ref([(2, 5, 0.25), (1, 7, -1.5)])
    zone.write_reference(day, frame.assign(extra="dropped"))
    assert os.path.exists(tmp_path / reference_relpath(day))
    assert reference_relpath(day) == f"reference/date={day}/reference.parquet"
    pd.testing.assert_frame_equal(zone.read_reference(day), frame)
    pd.testing.assert_frame_equal(LandingZone(uri=str(tmp_path)).read_reference(day), frame)
    # optional and outside the delivery contract: a reference alone does not deliver a day
    assert zone.delivered_days() == {} and not zone.is_complete(day)
    with pytest.raises(ValueError, match="score"):
        zone.write_reference(day, frame.drop(columns=["score"]))
    (tmp_path / reference_relpath(day)).write_bytes(b"not parquet")
    with pytest.raises(DeliveryError, match="reference"):
        zone.read_reference(day)


# --------------------------------------------------------------------------- generator


def _events(zone: Landing, world: datagen.World, day: str) -> pd.DataFrame:
    text = gzip.decompress(zone.read_delivery(day).data)
    return ingest_day(text, day, world.users["user_id"], world.items["item_id"]).valid


def _tiny_world() -> datagen.World:
    return datagen.World.build(SEED, datagen.default_users(TINY_EVENTS), datagen.default_items(TINY_EVENTS))


def _brute_top(world: datagen.World, users: np.ndarray, day: str, k: int) -> pd.DataFrame:
    allowed = world.items.loc[world.items["release_date"] <= day, "item_id"].to_numpy()
    u, i = np.repeat(users, allowed.size), np.tile(allowed, users.size)
    return rank_by_score(pd.DataFrame({"user_id": u, "item_id": i, "score": world.affinity(u, i)}), k)


def test_generator_writes_references_and_leaves_the_events_unchanged(tmp_path):
    # pinned: the default generator's text of these days (test_drift pins the same digests)
    pinned = {
        "2026-01-31": "01333b5db3e4012d716430398a6ed6df9f11fe25f6e65c54fd1f5cad33743f4c",
        "2026-02-01": "bc17832bcb3be01f2b398f4dd1c6455a15674e34b681e4ffba1677f73ac1eb14",
    }
    out = datagen.generate(str(tmp_path), "2026-01-31", "2026-02-01", TINY_EVENTS, SEED)
    assert [s["reference"] for s in out] == [True, True]
    zone, world = Landing(str(tmp_path)), _tiny_world()
    for day, digest in pinned.items():
        assert hashlib.sha256(gzip.decompress(zone.read_delivery(day).data)).hexdigest() == digest
        reference = zone.read_reference(day)
        assert not reference.duplicated(["user_id", "item_id"]).any()
        assert np.array_equal(
            reference["score"].to_numpy(), world.affinity(reference["user_id"], reference["item_id"])
        )
        events = _events(zone, world, day)
        pairs = events[["user_id", "item_id"]].drop_duplicates()
        assert len(pairs.merge(reference, on=["user_id", "item_id"])) == len(pairs), "every impressed pair"
        assert set(reference["user_id"]) == set(events["user_id"]), "the users active on the day"
        # few items released: every user's list holds all of them
        users = np.unique(events["user_id"])
        pd.testing.assert_frame_equal(
            reference_ranking(reference, users, datagen.REFERENCE_TOP_K),
            _brute_top(world, users, day, datagen.REFERENCE_TOP_K),
        )


def test_reference_holds_the_exact_top_k_when_more_items_are_released(tmp_path):
    day = "2026-03-01"
    datagen.generate(str(tmp_path), day, day, **DEMO)
    world = datagen.World.build(DEMO["seed"], DEMO["users"], DEMO["items"])
    reference = Landing(str(tmp_path)).read_reference(day)
    users = np.unique(reference["user_id"])
    assert (world.items["release_date"] <= day).sum() > 2 * datagen.REFERENCE_TOP_K
    assert reference.groupby("user_id").size().min() >= datagen.REFERENCE_TOP_K
    pd.testing.assert_frame_equal(
        reference_ranking(reference, users, datagen.REFERENCE_TOP_K),
        _brute_top(world, users, day, datagen.REFERENCE_TOP_K),
    )


def test_cached_days_gain_a_missing_reference_without_new_events(tmp_path):
    days = ["2026-01-10", "2026-01-11", "2026-01-12"]
    first = datagen.generate(str(tmp_path), days[0], days[-1], TINY_EVENTS, SEED)
    zone = Landing(str(tmp_path))
    before = {d: zone.read_reference(d) for d in days}
    events = {d: (zone.events_path(d).read_bytes(), os.stat(str(zone.events_path(d))).st_mtime_ns) for d in days}
    for d in (days[0], days[2]):
        os.unlink(str(zone.reference_path(d)))
    again = datagen.generate(str(tmp_path), days[0], days[-1], TINY_EVENTS, SEED)
    assert [s["skipped"] for s in again] == [True] * 3
    assert [s["reference"] for s in again] == [True, False, True]
    assert [s["sha256"] for s in again] == [s["sha256"] for s in first]
    for d in days:
        pd.testing.assert_frame_equal(zone.read_reference(d), before[d])
        assert (zone.events_path(d).read_bytes(), os.stat(str(zone.events_path(d))).st_mtime_ns) == events[d]
    assert not any(s["reference"] for s in datagen.generate(str(tmp_path), days[0], days[-1], TINY_EVENTS, SEED))


# --------------------------------------------------------------------------- evaluation (the oracle)


def _world_oracle(world: datagen.World, slates: pd.DataFrame, users: np.ndarray, allowed: np.ndarray):
    """The oracle as model_evaluation computed it before the reference: from the rebuilt world."""
    oracle = slates[["user_id", "item_id"]].assign(score=world.affinity(slates["user_id"], slates["item_id"]))
    return rank_by_score(oracle, N), oracle_ranking(world.affinity, users, allowed, N)


def _evaluation_inputs(zone: Landing, world: datagen.World, day: str, max_users: int = 2000):
    """Slates, users, plays and allowed items of a day, as model_evaluation makes them."""
    items = world.items.astype({"duration_seconds": "float64"})
    events = _events(zone, world, day)
    slates = impression_slates(label_impressions(events, items))
    users = sample_users(slates["user_id"].to_numpy(), max_users)
    slates = slates[slates["user_id"].isin(users)].reset_index(drop=True)
    plays = relevance_of_day(events, items)
    plays = plays[plays["user_id"].isin(users)]
    allowed = items.loc[items["release_date"] <= day, "item_id"].to_numpy()
    return slates, users, plays, allowed


@pytest.mark.parametrize(
    ("shape", "days", "cells"),
    [
        ({"events_per_day": TINY_EVENTS, "seed": SEED}, ["2026-01-15", END], None),  # the test graph's data
        (DEMO, ["2026-03-01"], None),
        ({**DEMO, "events_per_day": 20_000}, ["2026-02-10"], 30_000),  # users scored in many chunks
    ],
)
def test_oracle_from_the_reference_equals_the_world_based_oracle(tmp_path, monkeypatch, shape, days, cells):
    if cells is not None:
        monkeypatch.setattr(datagen, "_REFERENCE_CELLS", cells)
    datagen.generate(str(tmp_path), days[0], days[-1], **shape)
    zone, landing = Landing(str(tmp_path)), LandingZone(uri=str(tmp_path))
    users_n = shape.get("users", datagen.default_users(shape["events_per_day"]))
    items_n = shape.get("items", datagen.default_items(shape["events_per_day"]))
    world = datagen.World.build(shape["seed"], users_n, items_n)
    context = dg.build_asset_context()
    for day in sorted({days[0], days[-1]}):
        slates, users, plays, allowed = _evaluation_inputs(zone, world, day)
        assert len(users) >= 20
        ranking, retrieval = _oracle_lists(context, landing, day, slates, users, allowed)
        old_ranking, old_retrieval = _world_oracle(world, slates, users, allowed)
        pd.testing.assert_frame_equal(ranking, old_ranking)
        pd.testing.assert_frame_equal(retrieval, old_retrieval)
        new = evaluation_table({"oracle": ranking}, slates, {"oracle": retrieval}, plays)
        old = evaluation_table({"oracle": old_ranking}, slates, {"oracle": old_retrieval}, plays)
        pd.testing.assert_frame_equal(new, old, check_exact=True)
        assert new["ndcg_at_20"].iloc[0] > 0 and new["recall_at_100"].iloc[0] > 0


def test_evaluation_leaves_the_oracle_out_without_a_reference(tmp_path):
    day = "2026-01-20"
    datagen.generate(str(tmp_path), day, day, TINY_EVENTS, SEED)
    zone, landing, world = Landing(str(tmp_path)), LandingZone(uri=str(tmp_path)), _tiny_world()
    slates, users, _, allowed = _evaluation_inputs(zone, world, day)
    context = dg.build_asset_context()
    assert _oracle_lists(context, landing, day, slates, users, allowed) is not None
    path = str(zone.reference_path(day))
    with open(path, "r+b") as handle:
        handle.truncate(10)  # unreadable: optional, so left out with a warning
    assert _oracle_lists(context, landing, day, slates, users, allowed) is None
    os.unlink(path)  # real data: no reference at all
    assert _oracle_lists(context, landing, day, slates, users, allowed) is None


# --------------------------------------------------------------------------- the asset, on the test graph


@pytest.mark.slow
def test_model_evaluation_oracle_equals_the_world_based_one_and_is_optional(graph_32):
    from streamrec_assets.storage import TableStore, read_parquet
    from streamrec_assets_tests.conftest import run_range

    settings, instance, _ = graph_32
    store = TableStore(settings.storage_uri)
    world, zone = _tiny_world(), Landing(settings.landing_uri)
    items = store.read_table("item_catalog")

    def metrics(day: str) -> pd.DataFrame:
        return read_parquet(store.partition_path("model_evaluation", day)).set_index("method")

    day = "2026-01-25"
    for d in (day, END):
        events = read_parquet(store.partition_path("raw_events", d))
        slates = impression_slates(label_impressions(events, items))
        users = sample_users(slates["user_id"].to_numpy(), 2000)
        slates = slates[slates["user_id"].isin(users)].reset_index(drop=True)
        plays = relevance_of_day(events, items)
        plays = plays[plays["user_id"].isin(users)]
        allowed = items.loc[items["release_date"] <= d, "item_id"].to_numpy()
        ranking, retrieval = _world_oracle(world, slates, users, allowed)
        old = evaluation_table({"oracle": ranking}, slates, {"oracle": retrieval}, plays).set_index("method")
        got = metrics(d).loc[["oracle"], ["users", "ndcg_at_20"]]
        pd.testing.assert_frame_equal(got, old[["users", "ndcg_at_20"]], check_exact=True)
        # The stored Recall@100 applies the exclusion policy; without it, it is the world-based figure.
        meta = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("model_evaluation"), asset_partitions=[d]), limit=1
        ).records[0].asset_materialization.metadata
        assert meta["oracle_recall_at_100_no_exclusion"].value == old.loc["oracle", "recall_at_100"]

    # Without the day's reference (real data) the oracle rows are left out; the rest is unchanged.
    before = metrics(day)
    path = str(zone.reference_path(day))
    shutil.move(path, path + ".away")
    try:
        assert run_range(settings, instance, day, day, selection=["model_evaluation"]).success
        without = metrics(day)
        assert set(without.index) == {"ours", "popularity"}
        pd.testing.assert_frame_equal(without, before.drop(index="oracle"))
        event = instance.get_latest_materialization_event(dg.AssetKey("model_evaluation")).asset_materialization
        assert event.metadata["oracle_reference"].value is False and "oracle_ndcg_at_20" not in event.metadata
    finally:
        shutil.move(path + ".away", path)
        assert run_range(settings, instance, day, day, selection=["model_evaluation"]).success
    pd.testing.assert_frame_equal(metrics(day), before)
