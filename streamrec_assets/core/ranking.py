"""The XGBoost ranker (``rank:ndcg``), grouped per user and day (pure; no Dagster).

Models travel as XGBoost's own UBJSON bytes (never pickle), with the ordered
feature list stored inside the booster, so scoring uses exactly the training
columns.

**Bounded memory.** Training streams its window one batch (one day) at a time
(:func:`train_ranker_batches`): each day is read with only the columns training needs
(:func:`ranker_columns`), cut to its useful queries, ordered by query and turned into
float32, then handed to an :class:`xgboost.DataIter` feeding an
:class:`xgboost.QuantileDMatrix`. XGBoost keeps only the quantised matrix (one byte per
value at 256 bins), never the window as a frame; the validation matrix is quantised with
the training cuts (``ref=``), so its predictions equal those on the raw values. XGBoost
walks the batches several times (four in XGBoost 3.x); the first pass reads the days and
spills the prepared float32 batches to a temporary directory, the later ones read that
back. Memory grows with one day, never with the window. A query (date, user) must lie in
one batch; rows within a query are ordered by ``example_id``, so the same examples give
the same model bytes whatever their order in the files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa
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

#: Reads one batch (a day) of examples with the given columns (an Arrow table or a pandas frame);
#: columns it lacks may be left out (they read as missing values).
BatchLoader = Callable[[list[str]], "pa.Table | pd.DataFrame | None"]


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


def _dmatrix(frame: pd.DataFrame, features: list[str]):
    """The features of ``frame`` (any order) to score."""
    import xgboost as xgb

    x = frame.reindex(columns=features).to_numpy(dtype="float32")
    return xgb.DMatrix(x, feature_names=features, missing=np.nan, nthread=DEFAULT_PARAMS["nthread"])


def useful_queries(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the (user, day) groups that can teach a ranker: more than one row and some positive."""
    g = frame.groupby(QUERY_KEYS)[LABEL]
    keep = (g.transform("size") > 1) & (g.transform("max") > 0)
    return frame[keep]


def _as_arrow(batch: pd.DataFrame | pa.Table | None) -> pa.Table | None:
    import pyarrow as pa

    if batch is None or isinstance(batch, pa.Table):
        return batch
    return pa.Table.from_pandas(batch, preserve_index=False)


def _dense_rank(values) -> np.ndarray:
    """Integer codes with the order of ``values`` (ties share a code)."""
    import pyarrow.compute as pc

    return pc.rank(values, sort_keys="ascending", tiebreaker="dense").to_numpy()


def _useful_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows of useful queries in query order, and their query ids.

    The rule of :func:`useful_queries` and the order of a stable sort of its result by
    :data:`ORDER_KEYS`, computed on the keys alone: queries are found on integer codes,
    and only the rows kept are ordered by ``example_id``.
    """
    n = table.num_rows
    date, user = _dense_rank(table.column("date")), table.column("user_id").to_numpy()
    order = np.lexsort((user, date))  # stable: ties keep the batch order
    date, user = date[order], user[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (date[1:] != date[:-1]) | (user[1:] != user[:-1])
    first = np.flatnonzero(starts)
    sizes = np.diff(np.append(first, n))
    useful = (sizes > 1) & (np.maximum.reduceat(table.column(LABEL).to_numpy()[order], first) > 0)
    kept = order[np.repeat(useful, sizes)]
    qid = np.repeat(np.arange(int(useful.sum())), sizes[useful])
    if len(kept) == 0:
        return kept, qid
    within = np.lexsort((_dense_rank(table.column("example_id").take(kept)), qid))
    return kept[within], qid  # qid is non-decreasing: unchanged by the sort within queries


def _batch(batch: pd.DataFrame | pa.Table | None, features: list[str]) -> _Batch | None:
    """The useful queries of one batch as float32 features, labels and query ids (None when none).

    Only the keys are sorted and filtered; each feature column is then gathered into the
    float32 matrix in that order, so a batch costs its columns plus its matrix.
    """
    import pyarrow.compute as pc

    table = _as_arrow(batch)
    if table is None or table.num_rows == 0:
        return None
    rows, qid = _useful_rows(table)
    if len(rows) == 0:
        return None
    x = np.empty((len(rows), len(features)), dtype="float32")
    for j, col in enumerate(features):
        if col in table.column_names:
            x[:, j] = table.column(col).to_numpy()[rows]  # nulls read as NaN
        else:
            x[:, j] = np.nan
    return _Batch(
        x=x,
        label=table.column(LABEL).to_numpy()[rows].astype("float32"),
        qid=qid,
        dates=frozenset(pc.unique(table.column("date").take(rows)).to_pylist()),
    )


class _BatchFeed:
    """The loaders' useful queries, one prepared batch at a time, pass after pass.

    The first pass calls the loaders; with ``spill_dir`` it also writes each prepared batch
    there (``.npy``, float32) and the later passes read those back instead of calling the
    loaders again. Loaders without a useful query are not read again. The feed holds no
    batch itself.
    """

    def __init__(self, loaders: Sequence[BatchLoader], features: list[str], spill_dir: str | None) -> None:
        self.loaders = loaders
        self.features = features
        self.columns = ranker_columns(features)
        self.spill_dir = spill_dir
        self.position = 0
        self.passes = 0  # complete passes over the loaders
        self.rows = 0  # useful rows (set by the first complete pass)
        self._empty: set[int] = set()  # loaders without a useful query: not read again
        self._date_owner: dict = {}
        self._pass_rows = 0

    def reset(self) -> None:
        self.position = 0
        self._pass_rows = 0

    def _spilled(self, index: int, part: str) -> str:
        return os.path.join(self.spill_dir, f"batch{index:05d}.{part}.npy")

    def _load(self, index: int) -> _Batch | None:
        """Batch ``index`` from its loader (spilled on the first pass), checking that no day is
        split across batches."""
        batch = _batch(self.loaders[index](self.columns), self.features)
        if batch is None:
            return None
        for day in batch.dates:
            if self._date_owner.setdefault(day, index) != index:
                raise RuntimeError(f"day {day} is split across ranker batches: a query must lie in one batch")
        if self.spill_dir is not None and not self.passes:
            for part in ("x", "label", "qid"):
                np.save(self._spilled(index, part), getattr(batch, part))
        return batch

    def _get(self, index: int) -> _Batch | None:
        if self.passes and self.spill_dir is not None:
            x, label, qid = (np.load(self._spilled(index, part)) for part in ("x", "label", "qid"))
            return _Batch(x=x, label=label, qid=qid, dates=frozenset())
        return self._load(index)

    def next(self) -> _Batch | None:
        """The next batch with a useful query in this pass; None at the end of the pass."""
        while self.position < len(self.loaders):
            index = self.position
            self.position += 1
            if index in self._empty:
                continue
            batch = self._get(index)
            if batch is None:
                self._empty.add(index)
                continue
            self._pass_rows += len(batch.label)
            return batch
        if not self.passes:
            self.rows = self._pass_rows
        self.passes += 1
        return None


def _batch_iterator(loaders: Sequence[BatchLoader], features: list[str], spill_dir: str | None) -> xgb.DataIter:
    """An :class:`xgboost.DataIter` over the loaders' useful queries, one loader per batch.

    The first pass calls the loaders; with ``spill_dir`` it also writes each prepared batch
    there (``.npy``, float32) and the later passes read those back instead of calling the
    loaders again. Memory holds one batch either way (see :class:`_BatchFeed`).
    """
    import xgboost as xgb

    feed = _BatchFeed(loaders, features, spill_dir)

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            super().__init__(release_data=True)  # drop each batch once XGBoost has consumed it

        @property
        def passes(self) -> int:
            """Complete passes over the loaders."""
            return feed.passes

        @property
        def rows(self) -> int:
            """Useful rows (set by the first complete pass)."""
            return feed.rows

        def reset(self) -> None:
            feed.reset()

        def next(self, input_data: Callable) -> bool:
            batch = feed.next()
            if batch is None:
                return False
            input_data(data=batch.x, label=batch.label, qid=batch.qid, feature_names=features)
            return True

    return Batches()


def train_ranker_batches(
    train: Sequence[BatchLoader],
    validation: BatchLoader,
    features: Sequence[str],
    params: dict | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
    spill: bool = True,
) -> TrainedRanker:
    """Train on the batches of ``train`` (one loader per day), early-stop on ``validation``.

    Each loader is called with :func:`ranker_columns` and returns that batch's example rows
    (with ``label``), reading them rather than holding them. XGBoost passes over the batches
    several times: with ``spill`` (the default) the loaders are called once and the prepared
    float32 batches are kept in a temporary directory on local disk for the later passes;
    without it, every pass calls the loaders again. The model bytes are the same either way.
    """
    import xgboost as xgb

    params = {**DEFAULT_PARAMS, **(params or {})}
    features = list(features)
    max_bin = int(params.get("max_bin", DEFAULT_MAX_BIN))
    nthread = params.get("nthread")
    valid = _batch(validation(ranker_columns(features)), features)
    if valid is None:  # nothing to early-stop on: the window is not read at all
        raise ValueError("not enough labelled queries to train a ranker (validation: 0 rows)")
    with tempfile.TemporaryDirectory(prefix="ranker-batches-") if spill else contextlib.nullcontext() as spill_dir:
        batches = _batch_iterator(train, features, spill_dir)
        try:
            dtrain = xgb.QuantileDMatrix(batches, missing=np.nan, nthread=nthread, max_bin=max_bin)
        except xgb.core.XGBoostError:
            if not batches.passes or batches.rows:
                raise
            dtrain = None  # not one useful query in the window ("at least 1 batch")
    if dtrain is None:
        raise ValueError(
            f"not enough labelled queries to train a ranker (train: 0 rows, validation: {len(valid.label)})"
        )
    dvalid = xgb.QuantileDMatrix(valid.x, label=valid.label, qid=valid.qid, ref=dtrain, missing=np.nan,
                                 nthread=nthread, max_bin=max_bin, feature_names=features)
    validation_rows, valid = len(valid.label), None  # the quantised copy is all training needs
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
        validation_rows=validation_rows,
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
    return booster.predict(_dmatrix(frame, features))
