"""The heavy assets' work as Spark tasks (``STREAMREC_ENGINE=spark``; see :mod:`streamrec_assets.engine`).

Each job cuts one day into independent pieces, runs the *same* pure function of
:mod:`streamrec_assets.core` as the embedded engine on every piece as a Spark task, and puts the
pieces back together on the driver (the Dagster step), which then audits and publishes the day
as always:

* ``raw_events``: the landing file in line-aligned chunks (:func:`core.ingest.split_lines`),
  each validated by ``ingest_day``; duplicates across chunks are resolved on the driver
  (:func:`core.ingest.merge_chunks`), so valid rows, DLQ and reasons equal the embedded ones.
* ``user_daily_activity`` / ``item_daily_activity``: the day's events bucketed by entity
  (``id % tasks``); every (date, entity) row depends on its entity's events only.
* ``user_features`` / ``item_features``: the 28 daily aggregates bucketed the same way.
* ``training_examples``: the examples of one user bucket (labels numbered over the whole day),
  their point-in-time join through Feast's offline store, context and taste features and the
  leakage audit, on the executor; ordered by example id on the driver.
* ``ranking_model``: the window's useful queries are prepared on the executors (one task per
  day, the embedded engine's own batch preparation) and stay there: ``SparkXGBRanker``
  (``rank:ndcg``, one qid per user and day) trains on them with ``num_workers`` workers and
  early-stops on the validation day.

Task functions are module level (importable on the executors); they read storage and the
landing zone through :mod:`streamrec_assets.storage`, local or S3, and return Parquet bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from streamrec_assets.core.ingest import IngestResult
    from streamrec_assets.core.ranking import TrainedRanker
    from streamrec_assets.engine import SparkEngine
    from streamrec_assets.landing import Delivery
    from streamrec_assets.resources import LandingZone, Storage


# ------------------------------------------------------------------------------------------ helpers


def _store_spec(storage: Storage) -> dict:
    return {"uri": storage.base_uri, "s3": asdict(storage.s3_options())}


def _store(spec: dict):
    from streamrec_assets.storage import S3Options, TableStore

    return TableStore(spec["uri"], S3Options(**spec["s3"]))


def _to_bytes(df: pd.DataFrame | pa.Table) -> bytes:
    from streamrec_assets.storage import parquet_bytes

    return parquet_bytes(df)


def _frame(data: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pandas()


def _bucket(table: pa.Table, column: str, bucket: int, buckets: int) -> pa.Table:
    """The rows of ``table`` whose ``column`` falls in ``bucket`` (``id % buckets``)."""
    import pyarrow as pa

    if buckets == 1:
        return table
    ids = table.column(column).to_numpy()
    return table.filter(pa.array(ids % buckets == bucket))


def _gather(results: list[dict[str, bytes]], keys: list[str]) -> pd.DataFrame | None:
    """The buckets' tables as one, in the embedded engine's row order (None when all are empty)."""
    import pandas as pd

    frames = [f for f in (_frame(r["table"]) for r in results if "table" in r) if len(f)]
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def engine_label(engine: SparkEngine) -> str:
    """Where a step computed, for its metadata."""
    return f"spark ({engine.master}, {engine.tasks()} tasks)"


# ------------------------------------------------------------------------------------------- ingest


def ingest_chunk_task(spec: dict, shared: dict) -> dict[str, bytes]:
    """Validate one chunk of a landing day (the file read and checked against its sha256 here)."""
    from streamrec_assets.core.ingest import ingest_day
    from streamrec_assets.errors import DeliveryError
    from streamrec_assets.landing import Landing, decompressed_slice, sha256
    from streamrec_assets.storage import S3Options, read_bytes

    landing = Landing(spec["landing"]["uri"], S3Options(**spec["landing"]["s3"]))
    path = landing.events_path(spec["day"])
    data = read_bytes(path)
    if data is None or sha256(data) != spec["sha256"]:
        raise DeliveryError(f"landing file {path} changed while day {spec['day']} was being ingested",
                            partition=spec["day"], location=str(path))
    piece = decompressed_slice(data, spec["offset"], spec["length"])  # holds its chunk, not the day
    result = ingest_day(piece, spec["day"], shared["users"], shared["items"], max_line_bytes=spec["max_line_bytes"])
    return {
        "valid": _to_bytes(result.valid),
        "rejected": _to_bytes(result.rejected),
        "lines": result.valid_lines.astype("<i8").tobytes(),
        "summary": json.dumps({"total": result.total_records, "reasons": dict(result.reasons)}).encode(),
    }


def ingest(
    engine: SparkEngine,
    landing: LandingZone,
    delivery: Delivery,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    max_line_bytes: int,
) -> IngestResult:
    """:func:`core.ingest.ingest_day` of a verified delivery, its chunks validated on the cluster."""
    from collections import Counter

    from streamrec_assets.core.ingest import IngestResult, merge_chunks, split_lines

    chunks = split_lines(delivery.text, engine.tasks())
    base = {"landing": {"uri": landing.uri, "s3": asdict(landing.s3_options())}, "day": delivery.day,
            "sha256": delivery.sha256, "max_line_bytes": max_line_bytes}
    specs = [{**base, "offset": c.offset, "length": c.length} for c in chunks]
    shared = {"users": np.asarray(user_ids), "items": np.asarray(item_ids)}
    outputs = engine.map(ingest_chunk_task, specs, shared, label=f"raw_events {delivery.day}")
    results = []
    for out in outputs:
        summary = json.loads(out["summary"])
        results.append(IngestResult(
            day=delivery.day, valid=_frame(out["valid"]), rejected=_frame(out["rejected"]),
            total_records=summary["total"], reasons=Counter(summary["reasons"]),
            valid_lines=np.frombuffer(out["lines"], dtype="<i8").astype(np.int64),
        ))
    return merge_chunks(delivery.text, delivery.day, chunks, results)


# ---------------------------------------------------------------------------------- daily aggregates


def daily_aggregate_task(spec: dict, items: pd.DataFrame) -> dict[str, bytes]:
    from streamrec_assets.core import features
    from streamrec_assets.storage import read_arrow

    store = _store(spec["store"])
    table = read_arrow(store.partition_path("raw_events", spec["day"]), spec["columns"])
    events = _bucket(table, spec["entity"], spec["bucket"], spec["buckets"]).to_pandas()
    return {"table": _to_bytes(getattr(features, spec["asset"])(events, items))}


def daily_aggregate(
    engine: SparkEngine, storage: Storage, asset: str, entity: str, day: str, columns: list[str],
    items: pd.DataFrame,
) -> pd.DataFrame | None:
    """``core.features.<asset>`` of the day's raw events, one entity bucket per task (None: no events)."""
    n = engine.tasks()
    base = {"store": _store_spec(storage), "asset": asset, "entity": entity, "day": day, "columns": columns,
            "buckets": n}
    results = engine.map(daily_aggregate_task, [{**base, "bucket": b} for b in range(n)], items,
                         label=f"{asset} {day}")
    return _gather(results, ["date", entity])


# ----------------------------------------------------------------------------------- window features


def window_features_task(spec: dict, _shared: Any = None) -> dict[str, bytes]:
    import pandas as pd

    from streamrec_assets.core.features import rolling_features
    from streamrec_assets.storage import read_arrow

    store = _store(spec["store"])
    tables = [_bucket(read_arrow(store.partition_path(spec["upstream"], d)), spec["entity"], spec["bucket"],
                      spec["buckets"]) for d in spec["days"]]
    frames = [t.to_pandas() for t in tables if t.num_rows]
    rows = str(sum(len(f) for f in frames)).encode()
    if not frames:
        return {"rows": rows}
    window = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    feats = rolling_features(window, [spec["day"]], spec["entity"], first_day=spec["first_day"])
    return {"table": _to_bytes(feats), "rows": rows}


def window_features(
    engine: SparkEngine, storage: Storage, upstream: str, entity: str, day: str, days: list[str], first_day: str,
) -> tuple[pd.DataFrame | None, int]:
    """``core.features.rolling_features`` of the day from the present daily aggregates ``days``, one
    entity bucket per task (None: the window is empty), and the aggregate rows the tasks read."""
    n = engine.tasks()
    base = {"store": _store_spec(storage), "upstream": upstream, "entity": entity, "day": day, "days": days,
            "first_day": first_day, "buckets": n}
    results = engine.map(window_features_task, [{**base, "bucket": b} for b in range(n)],
                         label=f"{upstream} window {day}")
    return _gather(results, [entity]), sum(int(r["rows"]) for r in results)


# -------------------------------------------------------------------------------------------- ranker

#: Columns of the ranker's training rows on the cluster, besides the features.
FEATURES, QID, VALIDATION = "features", "qid", "is_validation"
#: A day's queries get ids ``day_index * QID_STRIDE + q``: unique over the window, in day order, and
#: within XGBoost's 32-bit query ids for 16 days of up to 134 M queries (users) each.
QID_STRIDE = 1 << 27


def ranker_rows(spec: dict) -> pa.Table | None:
    """One day's useful queries as training rows (the embedded engine's batch preparation), in
    query order and, within a query, in example order (None: no useful query)."""
    import pyarrow as pa

    from streamrec_assets.core.ranking import LABEL, _batch, ranker_columns
    from streamrec_assets.storage import read_arrow, read_parquet_schema

    store = _store(spec["store"])
    path = store.partition_path("training_examples", spec["day"])
    names = set(read_parquet_schema(path).names)
    features = spec["features"]
    batch = _batch(read_arrow(path, [c for c in ranker_columns(features) if c in names]), features)
    if batch is None:
        return None
    if len(batch.qid) and int(batch.qid[-1]) >= QID_STRIDE:
        raise ValueError(f"{spec['day']}: {int(batch.qid[-1]) + 1} queries, more than the {QID_STRIDE} a day may have")
    n, k = batch.x.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))
    return pa.table({
        FEATURES: pa.ListArray.from_arrays(offsets, pa.array(batch.x.reshape(-1), pa.float32())),
        LABEL: pa.array(batch.label, pa.float32()),
        QID: pa.array(batch.qid.astype(np.int64) + spec["index"] * QID_STRIDE, pa.int64()),
        VALIDATION: pa.array(np.full(n, spec["validation"]), pa.bool_()),
    })


class _RowsOfShard:
    """mapInArrow function: task ``w`` of ``shards`` yields the queries ``q % shards == w`` of every
    day, in qid order. The rows are made on the executor and stay there (cached for XGBoost), and
    with no shuffle their order is deterministic, so the same window trains the same model."""

    def __init__(self, specs: list[dict], shards: int):
        self.specs, self.shards = specs, shards

    def __call__(self, batches):
        import pyarrow as pa

        for batch in batches:
            for shard in batch.column(0).to_pylist():
                for spec in self.specs:
                    rows = ranker_rows(spec)
                    if rows is not None and self.shards > 1:
                        rows = rows.filter(pa.array(rows.column(QID).to_numpy() % self.shards == shard))
                    if rows is not None and rows.num_rows:
                        yield from rows.to_batches()


def train_ranker(
    engine: SparkEngine, storage: Storage, train_days: list[str], validation_day: str, features: list[str],
    params: dict | None = None,
) -> TrainedRanker:
    """The ranker of :func:`core.ranking.train_ranker_batches`, trained by ``SparkXGBRanker`` on the cluster.

    The same parameters, the same useful queries (one qid per user and day, rows ordered as in the
    embedded engine), early stopping on ``validation_day`` after the same number of rounds; the
    histograms are built per worker, so the trees (and the metrics) differ slightly from the
    embedded engine's: the tests bound the difference.
    """
    from pyspark.sql.types import ArrayType, BooleanType, FloatType, LongType, StructField, StructType
    from xgboost.spark import SparkXGBRanker

    from streamrec_assets.core.ranking import (
        DEFAULT_MAX_BIN,
        DEFAULT_PARAMS,
        EARLY_STOPPING_ROUNDS,
        LABEL,
        NUM_BOOST_ROUND,
        TrainedRanker,
    )

    params = {**DEFAULT_PARAMS, **(params or {})}
    days = [*train_days, validation_day]
    specs = [{"store": _store_spec(storage), "day": d, "index": i, "features": features,
              "validation": d == validation_day} for i, d in enumerate(days)]
    schema = StructType([StructField(FEATURES, ArrayType(FloatType())), StructField(LABEL, FloatType()),
                         StructField(QID, LongType()), StructField(VALIDATION, BooleanType())])
    session = engine.session()
    workers = max(1, engine.tasks())
    # One partition per XGBoost worker, each with whole queries of every day (validation rows
    # included: a worker without them trips xgboost.spark's data preparation).
    rows = session.range(0, workers, 1, workers).mapInArrow(_RowsOfShard(specs, workers), schema).cache()
    try:
        counts = {bool(r[VALIDATION]): int(r["count"]) for r in rows.groupBy(VALIDATION).count().collect()}
        if not counts.get(True):
            raise ValueError("not enough labelled queries to train a ranker (validation: 0 rows)")
        if not counts.get(False):
            raise ValueError(
                f"not enough labelled queries to train a ranker (train: 0 rows, validation: {counts[True]})")
        booster_params = {k: v for k, v in params.items() if k not in ("nthread", "eval_metric", "objective", "max_bin")}
        ranker = SparkXGBRanker(
            features_col=FEATURES, label_col=LABEL, qid_col=QID, validation_indicator_col=VALIDATION,
            num_workers=workers, objective=params["objective"], eval_metric=params["eval_metric"],
            n_estimators=NUM_BOOST_ROUND, early_stopping_rounds=EARLY_STOPPING_ROUNDS, missing=np.nan,
            max_bin=int(params.get("max_bin", DEFAULT_MAX_BIN)), **booster_params,
        )
        model = ranker.fit(rows)
    finally:
        rows.unpersist()
    booster = model.get_booster()
    best = int(booster.best_iteration) if booster.attr("best_iteration") is not None else booster.num_boosted_rounds() - 1
    booster = booster[: best + 1]
    booster.feature_names = list(features)
    return TrainedRanker(
        model_bytes=bytes(booster.save_raw(raw_format="ubj")),
        features=list(features),
        best_iteration=best,
        validation_ndcg=_validation_ndcg(booster, specs[-1], params["eval_metric"]),
        train_rows=counts[False],
        validation_rows=counts[True],
        params={**params, "engine": "spark", "num_workers": workers},
    )


def _validation_ndcg(booster, spec: dict, metric: str) -> float:
    """The model's metric on the validation day, computed here as the embedded engine computes it
    (xgboost.spark's distributed evaluation averages the workers' values differently)."""
    import xgboost as xgb

    rows = ranker_rows(spec)
    if rows is None:
        return float("nan")
    x = np.stack(rows.column(FEATURES).to_numpy(zero_copy_only=False)).astype("float32")
    data = xgb.DMatrix(x, label=rows.column("label").to_numpy(), qid=rows.column(QID).to_numpy(),
                       feature_names=booster.feature_names, missing=np.nan)
    booster.set_param({"eval_metric": metric})
    return float(booster.eval(data, "validation").rsplit(":", 1)[1])


# ---------------------------------------------------------------------------- training examples


def training_examples_task(spec: dict, catalogs: dict) -> dict[str, bytes]:
    """The training examples of one user bucket of the day: labels (numbered over the whole day,
    as the embedded engine numbers them), the point-in-time join through Feast's offline store,
    context and taste features, and the leakage audit of those rows."""
    from streamrec_assets.assets.taste import taste_before
    from streamrec_assets.core.training import (
        add_context_features,
        label_impressions,
        leaked_rows,
        ranking_time,
    )
    from streamrec_assets.feature_repo import feature_row_audit, historical_features
    from streamrec_assets.resources import FeastResource, Storage
    from streamrec_assets.storage import read_parquet

    day, items, users = spec["day"], catalogs["items"], catalogs["users"]
    store = _store(spec["store"])
    examples = label_impressions(read_parquet(store.partition_path("raw_events", day)), items)
    ids = examples["user_id"].to_numpy()
    examples = examples[ids % spec["buckets"] == spec["bucket"]].reset_index(drop=True)
    if examples.empty:
        return {"summary": json.dumps({"leaks": 0}).encode()}
    _feast_credentials(spec)
    feast = FeastResource(**spec["feast"]).store()
    joined = historical_features(feast, examples)
    s3 = spec["store"]["s3"]
    storage = Storage(base_uri=spec["store"]["uri"], s3_endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
                      aws_secret_access_key=s3["secret"])
    joined = add_context_features(joined, items, users, ranking_time(joined["date"]), taste_before(storage, day))
    leaks = leaked_rows(feature_row_audit(feast, examples).assign(date=examples["date"].to_numpy()))
    return {"table": _to_bytes(joined), "summary": json.dumps({"leaks": int(leaks)}).encode()}


def _feast_credentials(spec: dict) -> None:
    """Feast's S3 registry reads its credentials from the AWS environment: the executor's process
    gets the storage's (the driver's region too)."""
    import os

    s3 = spec["store"]["s3"]
    if s3.get("key") and s3.get("secret"):
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = s3["key"], s3["secret"]
    if spec.get("region"):
        os.environ.setdefault("AWS_DEFAULT_REGION", spec["region"])


def training_examples(
    engine: SparkEngine, storage: Storage, feast_fields: dict, day: str, items: pd.DataFrame, users: pd.DataFrame,
) -> tuple[pd.DataFrame | None, int]:
    """The day's training examples, one user bucket per task, in the embedded engine's row order
    (example id), and the rows the leakage audit found (None: the day has no impression)."""
    import os

    n = engine.tasks()
    base = {"store": _store_spec(storage), "feast": feast_fields, "day": day, "buckets": n,
            "region": os.environ.get("AWS_DEFAULT_REGION", "")}
    results = engine.map(training_examples_task, [{**base, "bucket": b} for b in range(n)],
                         {"items": items, "users": users}, label=f"training_examples {day}")
    leaks = sum(json.loads(r["summary"])["leaks"] for r in results)
    return _gather(results, ["example_id"]), leaks
