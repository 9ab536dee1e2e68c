"""The XGBoost ranker (``rank:ndcg``), grouped per user and day (pure; no Dagster).

Models travel as XGBoost's own UBJSON bytes (never pickle), with the ordered
feature list stored inside the booster, so scoring uses exactly the training
columns.
"""

from __future__ import annotations

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


@dataclass
class TrainedRanker:
    model_bytes: bytes
    features: list[str]
    best_iteration: int
    validation_ndcg: float
    train_rows: int
    validation_rows: int
    params: dict = field(default_factory=dict)


def _groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by query (user, day); XGBoost needs each query's rows contiguous."""
    return frame.sort_values(["date", "user_id", "example_id"], kind="stable").reset_index(drop=True)


def _qid(frame: pd.DataFrame) -> np.ndarray:
    return frame.groupby(["date", "user_id"], sort=False).ngroup().to_numpy()


def _dmatrix(frame: pd.DataFrame, features: list[str], with_label: bool):
    import xgboost as xgb

    x = frame.reindex(columns=features).to_numpy(dtype="float32")
    matrix = xgb.DMatrix(x, label=frame["label"].to_numpy() if with_label else None, feature_names=features,
                         missing=np.nan, nthread=DEFAULT_PARAMS["nthread"])
    if with_label:
        matrix.set_group(np.bincount(_qid(frame)))
    return matrix


def useful_queries(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the (user, day) groups that can teach a ranker: more than one row and some positive."""
    g = frame.groupby(["date", "user_id"])["label"]
    keep = (g.transform("size") > 1) & (g.transform("max") > 0)
    return frame[keep]


def train_ranker(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    features: list[str],
    params: dict | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> TrainedRanker:
    """Train on ``train``, early-stop on ``validation`` (both: example rows with ``label``)."""
    import xgboost as xgb

    params = {**DEFAULT_PARAMS, **(params or {})}
    train = _groups(useful_queries(train))
    validation = _groups(useful_queries(validation))
    if train.empty or validation.empty:
        raise ValueError(
            f"not enough labelled queries to train a ranker (train: {len(train)} rows, validation: {len(validation)})"
        )
    dtrain = _dmatrix(train, features, True)
    dvalid = _dmatrix(validation, features, True)
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
        features=list(features),
        best_iteration=best,
        validation_ndcg=float(scores[best]),
        train_rows=len(train),
        validation_rows=len(validation),
        params=params,
    )


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
