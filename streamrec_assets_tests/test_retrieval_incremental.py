"""Incremental retrieval: co-visitation trained from daily aggregates equals the raw-event reference.

``core.retrieval.train_covisitation`` (28 days of raw plays) is the reference;
``core.coplay.daily_coplay`` + ``train_from_daily`` must give the same three model
tables (bit for bit, ties included) and therefore the same candidates, on generated
StreamRec days and on adversarial random plays (timestamp ties, users idle for days,
pairs spanning several day boundaries, repeated items). The Dagster assets are then
materialised over a range on seeded ``raw_events`` partitions.
"""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from streamrec_assets import contracts, datagen
from streamrec_assets.core.coplay import (
    EDGES_READ,
    HISTORY_READ,
    LOOKAHEAD,
    PAIRS_READ,
    daily_coplay,
    train_from_daily,
)
from streamrec_assets.core.dates import day_offset, day_range, window_days
from streamrec_assets.core.ingest import ingest_day
from streamrec_assets.core.retrieval import RetrievalModel, candidates, train_covisitation
from streamrec_assets.landing import decompress

START = "2026-01-01"
WINDOW = 28
TABLES = ("pairs", "history", "edges")


# ------------------------------------------------------------------------------------ helpers


def _generated_events(days: list[str], events_per_day: int = 600, seed: int = 11) -> pd.DataFrame:
    """Valid raw events of ``days`` from the synthetic generator, through the real ingest parser."""
    world = datagen.World.build(seed, datagen.default_users(events_per_day), datagen.default_items(events_per_day))
    users, items = world.users["user_id"].to_numpy(), world.items["item_id"].to_numpy()
    frames = []
    for day in days:
        data = decompress(datagen.generate_day(world, day, events_per_day, seed))
        frames.append(ingest_day(data, day, users, items).valid)
    return pd.concat(frames, ignore_index=True)


def _random_plays(seed: int, days: list[str], n_users: int, n_items: int, per_day: int) -> pd.DataFrame:
    """Plays with many equal timestamps, idle users and repeated items."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in days:
        n = int(rng.integers(0, per_day + 1))
        seconds = rng.integers(0, 4, n) * 3600  # four instants a day: many ties on time
        frames.append(
            pd.DataFrame(
                {
                    "date": day,
                    "user_id": rng.integers(1, n_users + 1, n),
                    "item_id": rng.integers(1, n_items + 1, n),
                    "event_type": "play",
                    "event_timestamp": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(seconds, unit="s"),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[us, UTC]")
    return out


def _reference(events: pd.DataFrame, day: str, **kw) -> RetrievalModel:
    """Today's algorithm: train_covisitation on the raw plays of [D-28, D-1]."""
    days = window_days(day, WINDOW, end_offset=-1)
    plays = events[(events["event_type"] == "play") & events["date"].isin(days)]
    return train_covisitation(plays[["user_id", "item_id", "event_timestamp"]], days[-1], WINDOW, **kw)


def _daily(events: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    return {day: daily_coplay(group, day) for day, group in events.groupby("date")}


def _incremental(daily: dict[str, dict[str, pd.DataFrame]], day: str, **kw) -> RetrievalModel:
    """The new path: the daily aggregates of [D-28, D-1] that exist, each read once (checked)."""
    days = [d for d in window_days(day, WINDOW, end_offset=-1) if d >= START]
    reads: dict[str, list[str]] = {t: [] for t in TABLES}

    def reader(table: str, columns):
        def read(d: str) -> pd.DataFrame:
            reads[table].append(d)
            if d in daily:
                return daily[d][table][list(columns)]
            return daily_coplay(_plays([]), d)[table][list(columns)]  # a day without plays

        return read

    model = train_from_daily(
        days,
        reader("history", HISTORY_READ),
        reader("pairs", PAIRS_READ),
        reader("edges", EDGES_READ),
        days[-1] if days else day_offset(day, -1),
        WINDOW,
        **kw,
    )
    for table, seen in reads.items():
        assert sorted(seen) == days, f"{table}: every day of the window read exactly once"
    return model


def _assert_same_model(reference: RetrievalModel, new: RetrievalModel) -> None:
    for name in ("neighbors", "popularity", "history"):
        pd.testing.assert_frame_equal(getattr(reference, name), getattr(new, name), check_exact=True, obj=name)
    assert (reference.trained_through, reference.window_days) == (new.trained_through, new.window_days)


def _assert_same_candidates(reference: RetrievalModel, new: RetrievalModel, users) -> None:
    pd.testing.assert_frame_equal(candidates(reference, users, n=100), candidates(new, users, n=100), check_exact=True)


# -------------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def generated():
    days = day_range(START, "2026-02-05")
    events = _generated_events(days)
    return days, events, _daily(events)


def test_daily_tables_satisfy_their_contracts(generated):
    _, events, daily = generated
    for day, tables in list(daily.items())[:5]:
        for table in TABLES:
            schema = getattr(contracts, f"daily_coplay_{table}_schema")
            result = contracts.validate(tables[table], schema)
            assert result.passed, (day, table, result.failure_counts)
        plays = events[(events["date"] == day) & (events["event_type"] == "play")]
        assert tables["history"]["plays"].sum() == len(plays)
        # The edges are every user's first and last LOOKAHEAD plays: never more than 2 * LOOKAHEAD a user.
        assert tables["edges"].groupby("user_id").size().max() <= 2 * LOOKAHEAD


@pytest.mark.parametrize("day", ["2026-01-01", "2026-01-02", "2026-01-09", "2026-01-29", "2026-02-01", "2026-02-05"])
def test_same_model_and_candidates_as_raw_events_on_generated_days(generated, day):
    _, events, daily = generated
    reference, new = _reference(events, day), _incremental(daily, day)
    _assert_same_model(reference, new)
    today = events[(events["date"] == day) & (events["event_type"] == "play")]["user_id"].unique()
    users = np.union1d(today, np.arange(1, 40))  # active users, plus some cold ones
    _assert_same_candidates(reference, new, users)
    if day > "2026-01-02":
        assert len(new.neighbors) and len(new.history)


def test_pairs_do_span_day_boundaries_in_the_reference(generated):
    """Why the carry-over exists: without it the scores would differ on generated data."""
    _, events, daily = generated
    day = "2026-02-01"
    no_carry = {d: {**t, "edges": t["edges"].iloc[0:0]} for d, t in daily.items()}
    reference, without = _reference(events, day), _incremental(no_carry, day)
    merged = reference.neighbors.merge(without.neighbors, on=["item_id", "neighbor_id"], how="outer")
    assert not np.allclose(merged["score_x"].fillna(0), merged["score_y"].fillna(0))


@pytest.mark.parametrize("seed", range(8))
def test_same_model_on_adversarial_random_plays(seed):
    days = day_range(START, "2026-02-10")
    events = _random_plays(seed, days, n_users=1 + seed % 5, n_items=2 + seed % 7, per_day=3 + 4 * seed)
    daily = _daily(events)
    for day in ("2026-01-02", "2026-01-20", "2026-02-03", "2026-02-11"):
        for kw in ({}, {"lookahead": 2}, {"lookahead": 1, "max_neighbors": 2}, {"max_history": 2}):
            reference, new = _reference(events, day, **kw), _incremental(daily, day, **kw)
            _assert_same_model(reference, new)
            _assert_same_candidates(reference, new, np.arange(1, 8))


def _plays(rows: list[tuple[str, int, int, int]]) -> pd.DataFrame:
    """(day, user, item, second of the day) -> play events."""
    return pd.DataFrame(
        {
            "date": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "item_id": [r[2] for r in rows],
            "event_type": "play",
            "event_timestamp": pd.to_datetime([f"{r[0]}T00:00:{r[3]:02d}Z" for r in rows], utc=True).astype(
                "datetime64[us, UTC]"
            ),
        }
    )


def test_carry_over_crosses_idle_days_and_stops_at_the_window_start():
    # User 1: item 10 on Jan 1, nothing for 9 days, then 20 and 30 on Jan 11; user 2 plays 10, 20 on Jan 12.
    events = _plays(
        [("2026-01-01", 1, 10, 1), ("2026-01-11", 1, 20, 1), ("2026-01-11", 1, 30, 2),
         ("2026-01-12", 2, 10, 1), ("2026-01-12", 2, 20, 2)]
    )
    daily = _daily(events)
    model = _incremental(daily, "2026-01-13")
    _assert_same_model(_reference(events, "2026-01-13"), model)
    scores = {(a, b): s for a, b, s in model.neighbors.itertuples(index=False)}
    assert scores[(10, 20)] == 2.0  # 1 across ten days (user 1) + 1 within Jan 12 (user 2)
    assert scores[(10, 30)] == 0.5  # two plays apart, across the boundary
    # Jan 30's window starts on Jan 2: user 1's Jan 1 play is outside it, so only user 2's pair counts.
    later = _incremental(daily, "2026-01-30")
    _assert_same_model(_reference(events, "2026-01-30"), later)
    scores = {(a, b): s for a, b, s in later.neighbors.itertuples(index=False)}
    assert scores[(10, 20)] == 1.0 and (10, 30) not in scores


def test_empty_window_gives_an_empty_model():
    model = train_from_daily([], *(lambda d: None,) * 3, "2025-12-31", WINDOW)
    assert model.neighbors.empty and model.popularity.empty and model.history.empty
    assert list(model.history.columns) == ["user_id", "item_id", "last_played", "plays"]


def test_lookahead_longer_than_the_tables_is_refused():
    with pytest.raises(ValueError, match="lookahead"):
        train_from_daily([], *(lambda d: None,) * 3, "2025-12-31", WINDOW, lookahead=LOOKAHEAD + 1)


def test_aggregates_that_disagree_fail_as_a_data_error():
    from streamrec_assets.errors import PersistentDataError

    daily = _daily(_plays([("2026-01-01", 1, 10, 1), ("2026-01-01", 1, 20, 2)]))
    pairs = daily["2026-01-01"]["pairs"].assign(item_hi=99)  # an item nobody played
    with pytest.raises(PersistentDataError, match="daily_coplay_pairs"):
        train_from_daily(["2026-01-01"], lambda d: daily[d]["history"], lambda d: pairs,
                         lambda d: daily[d]["edges"], "2026-01-01", WINDOW)


def test_window_cache_reads_each_day_once_within_its_budget():
    from streamrec_assets.assets.retrieval import _WindowCache

    class Reader:
        reads: list[str] = []

        def read(self, day, columns):
            self.reads.append(day)
            return pd.DataFrame({"x": np.zeros(100, "int64")})  # 800 bytes

    reader = Reader()
    cache = _WindowCache(reader, ["x"], budget=3 * 800)
    for day in ("01", "02", "03", "02", "03", "04", "02"):
        cache(day)
    assert reader.reads == ["01", "02", "03", "04"]  # 04 pushed out 01, the oldest day
    assert cache.bytes <= 3 * 800 and sorted(cache.frames) == ["02", "03", "04"]
    assert len(cache("01")) == 100 and reader.reads[-1] == "01"  # older than all kept: read, not kept
    assert sorted(cache.frames) == ["02", "03", "04"]
    cache.forget_before("04")
    assert sorted(cache.frames) == ["04"] and cache.bytes == 800
    nothing = _WindowCache(reader, ["x"], budget=0)
    assert len(nothing("05")) == 100 and not nothing.frames


# ------------------------------------------------------------------------------------ Dagster


def test_retrieval_model_reads_only_the_daily_aggregates():
    from streamrec_assets.assets.retrieval import COPLAY_ASSETS, daily_coplay, retrieval_model

    assert {k.to_user_string() for k in retrieval_model.dependency_keys} == set(COPLAY_ASSETS)
    assert {k.to_user_string() for k in daily_coplay.dependency_keys} == {"raw_events"}
    specs = {(s.asset_key.to_user_string(), s.name, s.blocking) for s in daily_coplay.check_specs}
    assert specs == {(name, "contract", True) for name in COPLAY_ASSETS}
    assert daily_coplay.backfill_policy == dg.BackfillPolicy.single_run()
    for key in daily_coplay.keys:
        assert daily_coplay.automation_conditions_by_key[key] is not None


def _seed_raw_events(storage_uri: str, events: pd.DataFrame) -> None:
    from streamrec_assets.storage import TableStore

    store = TableStore(storage_uri)
    for day, frame in events.groupby("date"):
        with store.transaction("seed raw_events") as txn:
            txn.stage_table("raw_events", day, frame.reset_index(drop=True))
            txn.commit()


def test_assets_over_a_range_match_the_reference(tmp_path, generated):
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from streamrec_assets.assets.retrieval import COPLAY_ASSETS, daily_coplay, load_retrieval, retrieval_model
    from streamrec_assets.io_managers import PartitionedParquetIOManager
    from streamrec_assets.partitions import daily_partitions
    from streamrec_assets.resources import Storage

    days, events, _ = generated
    days = [d for d in days if d <= "2026-01-10"]  # partial windows; full ones are covered above
    storage = Storage(base_uri=str(tmp_path / "storage"))
    _seed_raw_events(storage.base_uri, events[events["date"].isin(days)])
    raw_events = dg.AssetSpec("raw_events", partitions_def=daily_partitions)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [raw_events, daily_coplay, retrieval_model],
            selection=[*COPLAY_ASSETS, "retrieval_model"],
            resources={"storage": storage, "io_manager": PartitionedParquetIOManager(storage=storage)},
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]},
        )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {c.asset_key.to_user_string() for c in checks} == {*COPLAY_ASSETS, "retrieval_model"}
    assert all(c.passed for c in checks)
    for day in (days[0], "2026-01-02", "2026-01-06", days[-1]):
        _assert_same_model(_reference(events, day), load_retrieval(storage, day))
        manifest = json.loads(storage.read_bytes("retrieval_model", day, "manifest.json"))
        assert manifest["aggregate_days_read"] == len([d for d in window_days(day, WINDOW, end_offset=-1)
                                                       if d >= START])
    first = json.loads(storage.read_bytes("retrieval_model", days[0], "manifest.json"))
    assert first["status"] == "insufficient_history" and first["plays_in_window"] == 0
    last = json.loads(storage.read_bytes("retrieval_model", days[-1], "manifest.json"))
    assert last["status"] == "ok" and 0 < last["recall_at_100_next_day"] <= 1
    # Recall on day D's plays, as the raw-event version measured it.
    from streamrec_assets.assets.retrieval import N_CANDIDATES, ranked_candidates
    from streamrec_assets.core.metrics import recall_at_k

    today = events[(events["date"] == days[-1]) & (events["event_type"] == "play")]
    today = today.drop_duplicates(["user_id", "item_id"]).assign(relevance=1)
    reference = _reference(events, days[-1])
    cands = candidates(reference, today["user_id"].unique(), n=N_CANDIDATES)
    expected = float(recall_at_k(ranked_candidates(cands), today, N_CANDIDATES).mean())
    assert last["recall_at_100_next_day"] == pytest.approx(expected, abs=1e-12)
