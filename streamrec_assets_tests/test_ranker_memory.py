"""The ranker trains on its window one day at a time (bounded memory), with unchanged results.

``ranking_model`` no longer concatenates 13 days of every column: each day is read with
the keys, the label and the features only, cut to its useful queries and fed as one batch
of an ``xgboost.DataIter`` to a ``QuantileDMatrix`` (validation quantised with the training
cuts). These tests pin what must not change: which rows and in which order XGBoost sees,
the model bytes (deterministic, the same from a frame or from partitions, with or without
the spill), and the quality against the previous in-memory ``DMatrix`` path.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core import ranking
from streamrec_assets.core.ranking import (
    DEFAULT_PARAMS,
    EARLY_STOPPING_ROUNDS,
    NUM_BOOST_ROUND,
    frame_batches,
    frame_loader,
    ranker_columns,
    ranker_features,
    score,
    train_ranker,
    train_ranker_batches,
    useful_queries,
)
from streamrec_assets.core.registry import ndcg_on
from streamrec_assets.core.training import model_feature_columns
from streamrec_assets.storage import TableStore, read_parquet_schema, write_parquet

pytestmark = pytest.mark.slow  # trains XGBoost rankers on generated windows

DAYS = [f"2026-01-{d:02d}" for d in range(1, 15)]  # training_examples of ranking_model 2026-01-16
MODEL_DAY = "2026-01-16"  # trains on [01-01, 01-13], early-stops on 01-14 (D-2)
#: |validation NDCG@20 (streamed QuantileDMatrix) - validation NDCG@20 (in-memory DMatrix)| on the same data.
#: The two differ only by the quantile sketch (per-batch summaries merged vs one pass); on these
#: sizes the cuts and the models come out identical (difference 0.0), against a seed-to-seed
#: spread of ~0.02.
NDCG_TOLERANCE = 0.005


def examples(seed: int, days: list[str], users: int = 60, items: int = 8) -> pd.DataFrame:
    """Training-example-like rows with the pipeline's kinds of columns (keys, strings, int and float
    features with nulls), ~half of the users without a positive, some single-row queries, shuffled."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in days:
        n = users * items
        user = np.repeat(np.arange(users, dtype="int64"), items)
        f = rng.normal(size=(n, 4))
        f[rng.random(size=f.shape) < 0.1] = np.nan
        z = np.nan_to_num(f)
        signal = 1.2 * z[:, 0] - 0.6 * z[:, 1] + 0.4 * z[:, 2] * z[:, 3] + rng.normal(scale=0.7, size=n)
        label = (signal > 1.0).astype("int64") + (signal > 2.0)
        label[np.isin(user, np.flatnonzero(rng.random(users) < 0.5))] = 0
        plays = rng.integers(0, 40, n).astype("float64")
        plays[rng.random(n) < 0.05] = np.nan
        frame = pd.DataFrame(
            {
                "example_id": [f"{day.replace('-', '')}-{i:08d}" for i in rng.permutation(n)],
                "date": day,
                "user_id": user,
                "item_id": rng.integers(0, 500, n),
                "session_id": [f"s{u}" for u in user],
                "event_timestamp": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_399, n), "s"),
                "label": label,
                "user_features__date": "2025-12-31",
                "user_features__history_days": 30.0,
                "user_features__f0": f[:, 0],
                "user_features__f1": f[:, 1],
                "item_features__date": "2025-12-31",
                "item_features__history_days": np.full(n, 30, dtype="int64"),
                "item_features__f2": f[:, 2],
                "item_features__plays_7d": rng.integers(0, 100, n),
                "user_genre_share_for_item": f[:, 3],
                "item_age_days": plays,
            }
        )
        single = user == users - 1  # one user with a single impression: never a useful query
        frame = frame[~single | (np.arange(n) % items == 0)]
        frames.append(frame.sample(frac=1.0, random_state=seed))
    return pd.concat(frames, ignore_index=True)


def write_days(root, frame: pd.DataFrame) -> TableStore:
    store = TableStore(str(root))
    for day, part in frame.groupby("date"):
        write_parquet(part, store.partition_path("training_examples", day))
    return store


class Spy:
    """Day loaders over a store (as ranking_model builds them) that record every read."""

    def __init__(self, store: TableStore, days: list[str]):
        self.reader = store.reader("training_examples", days)
        self.calls: list[tuple[str, list[str]]] = []

    def loader(self, day: str):
        names = set(read_parquet_schema(self.reader.path(day)).names)

        def read(columns):
            self.calls.append((day, list(columns)))
            return self.reader.read_arrow(day, [c for c in columns if c in names])

        return read

    def features(self, days: list[str]) -> list[str]:
        return ranker_features(read_parquet_schema(self.reader.path(d)).empty_table().to_pandas() for d in days)


def stream_train(store: TableStore, spill: bool = True, **kwargs):
    spy = Spy(store, DAYS)
    features = spy.features(DAYS[:-1])
    trained = train_ranker_batches(
        [spy.loader(d) for d in DAYS[:-1]], spy.loader(DAYS[-1]), features, spill=spill, **kwargs
    )
    return trained, spy


def dmatrix_reference(train: pd.DataFrame, validation: pd.DataFrame, features: list[str]) -> tuple[bytes, float, int]:
    """The previous path, kept as the quality reference: the whole window in one frame -> DMatrix."""
    import xgboost as xgb

    def matrix(frame: pd.DataFrame):
        frame = useful_queries(frame).sort_values(["date", "user_id", "example_id"], kind="stable")
        out = xgb.DMatrix(frame.reindex(columns=features).to_numpy(dtype="float32"), label=frame["label"].to_numpy(),
                          feature_names=features, missing=np.nan, nthread=DEFAULT_PARAMS["nthread"])
        out.set_group(np.bincount(frame.groupby(["date", "user_id"], sort=False).ngroup().to_numpy()))
        return out

    history: dict = {}
    booster = xgb.train(dict(DEFAULT_PARAMS), matrix(train), num_boost_round=NUM_BOOST_ROUND,
                        evals=[(matrix(validation), "validation")], evals_result=history,
                        early_stopping_rounds=EARLY_STOPPING_ROUNDS, verbose_eval=False)
    best = int(booster.best_iteration)
    return bytes(booster[: best + 1].save_raw(raw_format="ubj")), history["validation"]["ndcg@20"][best], best


# ------------------------------------------------------------------------------------ the batches


def test_a_batch_is_the_useful_queries_in_query_order():
    frame = examples(0, DAYS[:2])
    features = model_feature_columns(frame)
    expected = useful_queries(frame).sort_values(["date", "user_id", "example_id"], kind="stable")
    batch = ranking._batch(frame, features)
    assert len(batch.label) == len(expected) < len(frame)
    np.testing.assert_array_equal(batch.x, expected.reindex(columns=features).to_numpy(dtype="float32"))
    np.testing.assert_array_equal(batch.label, expected["label"].to_numpy(dtype="float32"))
    np.testing.assert_array_equal(batch.qid, expected.groupby(["date", "user_id"], sort=False).ngroup().to_numpy())
    assert batch.x.dtype == np.float32 and np.isnan(batch.x).any(), "nulls travel as NaN (missing)"
    assert ranking._batch(frame.assign(label=0), features) is None
    assert ranking._batch(frame.iloc[:0], features) is None


def test_quantile_matrix_has_one_group_per_query_across_batches():
    import xgboost as xgb

    frame = examples(1, DAYS[:4])
    features = model_feature_columns(frame)
    iterator = ranking._batch_iterator(frame_batches(frame), features, None)
    matrix = xgb.QuantileDMatrix(iterator, missing=np.nan, nthread=2, max_bin=256)
    expected = useful_queries(frame).sort_values(["date", "user_id", "example_id"], kind="stable")
    sizes = expected.groupby(["date", "user_id"], sort=False).size().to_numpy()
    np.testing.assert_array_equal(matrix.get_uint_info("group_ptr"), np.concatenate([[0], np.cumsum(sizes)]))
    np.testing.assert_array_equal(matrix.get_label(), expected["label"].to_numpy(dtype="float32"))
    assert matrix.num_row() == iterator.rows == len(expected) and matrix.feature_names == features
    assert iterator.passes >= 2, "XGBoost walks the batches more than once (sketch, then index)"


def test_features_of_a_window_come_from_the_day_schemas():
    day1 = pd.DataFrame({"user_features__b": [1.0], "user_features__a": [1], "item_age_days": [2.0],
                         "user_features__odd": [3.0], "user_features__date": ["x"], "label": [0]})
    day2 = pd.DataFrame({"user_features__a": [1.0], "item_features__new": [1.0], "user_features__odd": ["text"]})
    got = ranker_features([day1.iloc[:0], day2.iloc[:0]])
    assert got == ["item_features__new", "user_features__a", "user_features__b", "item_age_days"]
    assert got == model_feature_columns(pd.concat([day1, day2]).drop(columns="user_features__odd"))
    assert ranker_columns(got) == ["date", "user_id", "example_id", "label", *got]


# ------------------------------------------------------------------------------------- the reads


def test_each_day_is_read_once_with_only_the_columns_training_needs(tmp_path):
    store = write_days(tmp_path, examples(2, DAYS))
    trained, spy = stream_train(store)
    features = spy.features(DAYS[:-1])
    wanted = ranker_columns(features)
    assert trained.features == features and set(wanted) < set(read_parquet_schema(spy.reader.path(DAYS[0])).names)
    assert {tuple(cols) for _, cols in spy.calls} == {tuple(wanted)}
    assert not {"session_id", "event_timestamp", "item_id", "user_features__date"} & set(wanted)
    assert sorted(day for day, _ in spy.calls) == sorted(DAYS), "one read per day, the later passes use the spill"

    again, spy_no_spill = stream_train(store, spill=False)
    assert again.model_bytes == trained.model_bytes, "the spill changes nothing but the reads"
    reads = pd.Series([day for day, _ in spy_no_spill.calls]).value_counts()
    assert reads[DAYS[-1]] == 1 and (reads[DAYS[:-1]] > 1).all(), "without the spill every pass reads again"


def test_nothing_to_learn_is_a_value_error_and_a_missing_validation_reads_no_window(tmp_path):
    data = examples(3, DAYS)
    in_window = data["date"] < DAYS[-1]
    store = write_days(tmp_path / "no_positive_in_window", data.assign(label=np.where(in_window, 0, data["label"])))
    with pytest.raises(ValueError, match=r"not enough labelled queries .*train: 0 rows"):
        stream_train(store)

    store = write_days(tmp_path / "no_positive_on_validation_day", data.assign(label=np.where(in_window, data["label"], 0)))
    spy = Spy(store, DAYS)
    with pytest.raises(ValueError, match=r"not enough labelled queries .*validation: 0 rows"):
        train_ranker_batches([spy.loader(d) for d in DAYS[:-1]], spy.loader(DAYS[-1]), spy.features(DAYS[:-1]))
    assert [day for day, _ in spy.calls] == [DAYS[-1]], "no early-stopping day: the window is not read"


def test_a_day_split_over_two_batches_is_refused():
    frame = examples(4, DAYS[:2])
    features = model_feature_columns(frame)
    first = frame[frame["date"] == DAYS[0]]
    halves = [frame_loader(first.iloc[: len(first) // 2]), frame_loader(first.iloc[len(first) // 2 :])]
    with pytest.raises(RuntimeError, match="split across ranker batches"):
        train_ranker_batches(halves, frame_loader(frame[frame["date"] == DAYS[1]]), features)


# --------------------------------------------------------------------- determinism and quality


def test_streamed_training_is_deterministic(tmp_path):
    data = examples(5, DAYS)
    first, _ = stream_train(write_days(tmp_path / "a", data))
    again, _ = stream_train(write_days(tmp_path / "a", data))
    shuffled, _ = stream_train(write_days(tmp_path / "b", data.sample(frac=1.0, random_state=9)))
    assert first.model_bytes == again.model_bytes == shuffled.model_bytes, "same examples -> same bytes"
    in_memory = train_ranker(data[data["date"] < DAYS[-1]], data[data["date"] == DAYS[-1]], first.features)
    assert in_memory.model_bytes == first.model_bytes, "a frame and its partitions give the same model"
    assert (first.train_rows, first.validation_rows) == (in_memory.train_rows, in_memory.validation_rows)
    assert first.model_bytes[:1] == b"{" and first.best_iteration >= 0


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_quality_matches_the_in_memory_dmatrix_path(seed):
    data = examples(seed, DAYS, users=120)
    train, validation = data[data["date"] < DAYS[-1]], data[data["date"] == DAYS[-1]]
    features = model_feature_columns(train)
    streamed = train_ranker(train, validation, features)
    ref_bytes, ref_ndcg, _ = dmatrix_reference(train, validation, features)
    assert streamed.validation_ndcg > 0.8, "it learns"
    assert abs(streamed.validation_ndcg - ref_ndcg) <= NDCG_TOLERANCE
    assert streamed.train_rows == len(useful_queries(train))
    holdout = examples(100 + seed, [MODEL_DAY], users=120)
    slates = holdout.rename(columns={"label": "relevance"})
    ours, reference = ndcg_on(slates, score(streamed.model_bytes, holdout)), ndcg_on(slates, score(ref_bytes, holdout))
    assert abs(ours - reference) <= NDCG_TOLERANCE


# ---------------------------------------------------------------------------------------- the asset


@pytest.mark.slow
def test_ranking_model_asset_streams_its_window(tmp_path):
    """The asset itself (materialised twice): streamed card and model == the in-memory frame path's."""
    from streamrec_assets_tests.conftest import run_range, tiny_settings

    settings = tiny_settings(tmp_path)
    data = examples(10, DAYS)
    write_days(settings.storage_uri, data)
    instance = dg.DagsterInstance.ephemeral()
    cards = []
    for _ in range(2):
        result = run_range(settings, instance, MODEL_DAY, MODEL_DAY, selection="ranking_model")
        assert result.success
        card = TableStore(settings.storage_uri).reader("ranking_model", [MODEL_DAY]).read(MODEL_DAY).iloc[0]
        cards.append(card)
    card = cards[0]
    train, validation = data[data["date"] < DAYS[-1]], data[data["date"] == DAYS[-1]]
    expected = train_ranker(train, validation, model_feature_columns(train))
    assert card["status"] == "ok" and card["train_days"] == 13
    assert card["train_rows"] == expected.train_rows and card["validation_rows"] == expected.validation_rows
    assert json.loads(card["features"]) == expected.features
    assert card["model_sha256"] == hashlib.sha256(expected.model_bytes).hexdigest() == cards[1]["model_sha256"]
    stored = TableStore(settings.storage_uri).partition_path("ranking_model", MODEL_DAY, "model.ubj")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == card["model_sha256"]
