"""The XGBoost ranker (``rank:ndcg``), grouped per user and day (pure; no Dagster).

Models travel as XGBoost's own UBJSON bytes (never pickle), with the ordered
feature list stored inside the booster, so scoring uses exactly the training
columns.

**Bounded memory.** Training streams its window one batch (one day) at a time: each
batch is read with only the columns training needs (:func:`ranker_columns`), cut to
its useful queries, grouped by query and turned into float32, then handed to an
:class:`xgboost.DataIter` that feeds an :class:`xgboost.QuantileDMatrix`. XGBoost
keeps only the quantised matrix (one byte per value at the default 256 bins), never
the window as a frame; the validation matrix is quantised with the training cuts
(``ref=``), so its predictions equal those on the raw values. XGBoost walks the
iterator several times (sketch, sizes, index), re-reading each day: memory grows with
one day, time with the number of passes. A query (date, user) must lie in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import xgboost as xgb

DEFAULT_PARAMS: dict = {
    "objective": "rank:ndcg",
    "eval_metric": "ndcg@20",
    "learning_rate": 0.1,
    "max_depth": 6,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "lambdarank_pair_method": "topk",
    "lambdarank_num_pair_per_sample": 8,
    "tree_method": "hist",
    "seed": 0,
    "nthread": 2,
}
NUM_BOOST_ROUND = 300
EARLY_STOPPING_ROUNDS = 25
#: Histogram bins per feature (XGBoost's default for ``hist``), shared by the train and validation matrices.
DEFAULT_MAX_BIN = 256
#: A query is one user on one day; rows of a query are ordered by example id.
QUERY_KEYS = ["date", "user_id"]
ORDER_KEYS = [*QUERY_KEYS, "example_id"]
LABEL = "label"

#: Reads one batch (a day) of examples with the given columns; columns it lacks may be left out.
BatchLoader = Callable[[list[str]], pd.DataFrame]


@dataclass
class TrainedRanker:
    model_bytes: bytes
    features: list[str]
    best_iteration: int
    validation_ndcg: float
    train_rows: int
    validation_rows: int
    params: dict = field(default_factory=dict)


@dataclass
class _Batch:
    x: np.ndarray  # float32, rows grouped by query
    label: np.ndarray
    qid: np.ndarray  # non-decreasing within the batch
    dates: frozenset


def ranker_columns(features: Sequence[str]) -> list[str]:
    """The columns training reads: the query keys, the label and the features (nothing else)."""
    return list(dict.fromkeys([*ORDER_KEYS, LABEL, *features]))


def ranker_features(frames: Iterable[pd.DataFrame]) -> list[str]:
    """The model features of a window from its days' frames (empty frames with the schema will do).

    :func:`~streamrec_assets.core.training.model_feature_columns` of each day, united; a
    column that some day holds but not as a numeric feature is left out everywhere.
    """
    from streamrec_assets.core.training import model_feature_columns

    chosen: set[str] = set()
    refused: set[str] = set()
    for frame in frames:
        features = model_feature_columns(frame)
        chosen.update(features)
        refused.update(set(frame.columns) - set(features))
    kept = sorted(chosen - refused)
    return model_feature_columns(pd.DataFrame({c: pd.Series(dtype="float64") for c in kept}))


def _qid(frame: pd.DataFrame) -> np.ndarray:
    return frame.groupby(QUERY_KEYS, sort=False).ngroup().to_numpy()


def _dmatrix(frame: pd.DataFrame, features: list[str], with_label: bool):
    import xgboost as xgb

    x = frame.reindex(columns=features).to_numpy(dtype="float32")
    matrix = xgb.DMatrix(x, label=frame[LABEL].to_numpy() if with_label else None, feature_names=features,
                         missing=np.nan, nthread=DEFAULT_PARAMS["nthread"])
    if with_label:
        matrix.set_group(np.bincount(_qid(frame)))
    return matrix


def useful_queries(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the (user, day) groups that can teach a ranker: more than one row and some positive."""
    g = frame.groupby(QUERY_KEYS)[LABEL]
    keep = (g.transform("size") > 1) & (g.transform("max") > 0)
    return frame[keep]


def _batch(frame: pd.DataFrame, features: list[str]) -> _Batch | None:
    """The useful queries of one batch as float32 features, labels and query ids (None when none).

    Only the keys are filtered and sorted; each feature column is then gathered into the
    float32 matrix in that order, so the batch's peak is its frame plus its matrix.
    """
    if frame is None or len(frame) == 0:
        return None
    keys = frame[[*ORDER_KEYS, LABEL]].reset_index(drop=True)
    kept = useful_queries(keys).sort_values(ORDER_KEYS, kind="stable")
    if kept.empty:
        return None
    rows = kept.index.to_numpy()
    x = np.empty((len(rows), len(features)), dtype="float32")
    for j, col in enumerate(features):
        if col in frame.columns:
            x[:, j] = frame[col].to_numpy(dtype="float32", na_value=np.nan)[rows]
        else:
            x[:, j] = np.nan
    return _Batch(
        x=x,
        label=kept[LABEL].to_numpy(dtype="float32"),
        qid=kept.groupby(QUERY_KEYS, sort=False).ngroup().to_numpy(),
        dates=frozenset(kept["date"].unique().tolist()),
    )


def _batch_iterator(loaders: Sequence[BatchLoader], features: list[str]) -> xgb.DataIter:
    """An :class:`xgboost.DataIter` over the loaders' useful queries, one loader per batch."""
    import xgboost as xgb

    columns = ranker_columns(features)

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            super().__init__(release_data=True)  # drop each batch once XGBoost has consumed it
            self.position = 0
            self.rows = 0  # useful rows of the first full pass
            self.batches = 0
            self.passes = 0
            self._empty: set[int] = set()  # loaders without a useful query: not read again
            self._date_owner: dict = {}
            self._pass_rows = 0
            self._pass_batches = 0

        def reset(self) -> None:
            self.position = 0
            self._pass_rows = 0
            self._pass_batches = 0

        def next(self, input_data: Callable) -> bool:
            while self.position < len(loaders):
                index = self.position
                self.position += 1
                if index in self._empty:
                    continue
                batch = _batch(loaders[index](columns), features)
                if batch is None:
                    self._empty.add(index)
                    continue
                for day in batch.dates:
                    if self._date_owner.setdefault(day, index) != index:
                        raise RuntimeError(f"day {day} is split across ranker batches: a query must lie in one batch")
                self._pass_rows += len(batch.label)
                self._pass_batches += 1
                input_data(data=batch.x, label=batch.label, qid=batch.qid, feature_names=features)
                return True
            if self.passes == 0:
                self.rows, self.batches = self._pass_rows, self._pass_batches
            self.passes += 1
            return False

    return Batches()


def train_ranker_batches(
    train: Sequence[BatchLoader],
    validation: BatchLoader,
    features: Sequence[str],
    params: dict | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> TrainedRanker:
    """Train on the batches of ``train`` (one loader per day), early-stop on ``validation``.

    Each loader is called with :func:`ranker_columns` and returns that batch's example rows
    (with ``label``); it is called once per XGBoost pass, so it should read, not hold.
    """
    import xgboost as xgb

    params = {**DEFAULT_PARAMS, **(params or {})}
    features = list(features)
    max_bin = int(params.get("max_bin", DEFAULT_MAX_BIN))
    nthread = params.get("nthread")
    valid = _batch(validation(ranker_columns(features)), features)
    batches = _batch_iterator(train, features)
    dtrain = None
    if valid is not None:  # nothing to early-stop on: the window is not read at all
        try:
            dtrain = xgb.QuantileDMatrix(batches, missing=np.nan, nthread=nthread, max_bin=max_bin)
        except xgb.core.XGBoostError:
            if batches.passes == 0 or batches.rows:
                raise
            dtrain = None  # no useful query in any batch ("at least 1 batch")
    if dtrain is None or valid is None:
        train_rows = f"{batches.rows} rows" if batches.passes else "not read"
        raise ValueError(
            f"not enough labelled queries to train a ranker (train: {train_rows}, "
            f"validation: {0 if valid is None else len(valid.label)})"
        )
    dvalid = xgb.QuantileDMatrix(valid.x, label=valid.label, qid=valid.qid, ref=dtrain, missing=np.nan,
                                 nthread=nthread, max_bin=max_bin, feature_names=features)
    history: dict = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=num_boost_round,
        evals=[(dvalid, "validation")],
        evals_result=history,
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )
    best = int(booster.best_iteration)
    scores = history["validation"][params["eval_metric"]]
    raw = booster[: best + 1].save_raw(raw_format="ubj")
    return TrainedRanker(
        model_bytes=bytes(raw),
        features=features,
        best_iteration=best,
        validation_ndcg=float(scores[best]),
        train_rows=int(batches.rows),
        validation_rows=len(valid.label),
        params=params,
    )


def frame_loader(frame: pd.DataFrame) -> BatchLoader:
    """A loader over an in-memory frame (the columns it has among those asked)."""
    return lambda columns: frame[[c for c in columns if c in frame.columns]]


def frame_batches(frame: pd.DataFrame) -> list[BatchLoader]:
    """One loader per day of an in-memory frame, in date order."""
    if frame.empty:
        return []
    return [frame_loader(part) for _, part in frame.groupby("date", sort=True)]


def train_ranker(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    features: list[str],
    params: dict | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> TrainedRanker:
    """Train on in-memory ``train``, early-stop on ``validation`` (both: example rows with ``label``).

    The same batches (one per day) as :func:`train_ranker_batches` over a day reader, so
    the same examples give the same model bytes either way.
    """
    return train_ranker_batches(frame_batches(train), frame_loader(validation), features, params, num_boost_round)


def load_booster(model_bytes: bytes) -> xgb.Booster:
    import xgboost as xgb

    booster = xgb.Booster(params={"nthread": DEFAULT_PARAMS["nthread"]})
    booster.load_model(bytearray(model_bytes))
    return booster


def score(model_bytes: bytes, frame: pd.DataFrame) -> np.ndarray:
    """Scores of ``frame``'s rows (any order) with the model's own feature list."""
    if frame.empty:
        return np.zeros(0, dtype="float32")
    booster = load_booster(model_bytes)
    features = list(booster.feature_names or [])
    return booster.predict(_dmatrix(frame, features, False))
