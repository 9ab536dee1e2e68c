"""Group ``serving``: batch recommendations from the champion model and Feast features.

Every active user of a day is scored in vectorised batches (:mod:`streamrec_assets.core.serving`):
the features of the distinct users and of the distinct candidate items are read once
each (online store for the newest feature day, offline as-of features for a backfilled
day) and joined onto the candidate pairs. The per-user latency of the online store is
measured apart, on a sample of users, one request each.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import DayResult, contract_check_spec, day_metadata, run_days
from streamrec_assets.assets.retrieval import N_CANDIDATES
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.serving import OFFLINE, ONLINE, TOP_K
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, MLflowResource, Storage
from streamrec_assets.storage import PartitionReader

ASSET = "batch_recommendations"
EVENT_COLUMNS = ["user_id", "item_id", "event_type", "event_timestamp"]


class ServingConfig(dg.Config):
    latency_sample_users: int = Field(
        default=200, ge=0, description="Users whose online lookup is timed, one request per user (outside scoring)."
    )
    batch_rows: int = Field(
        default=20_000, ge=100, description="Entity ids per bulk feature lookup (SQLite allows 32,766 per query)."
    )
    score_rows: int = Field(
        default=500_000, ge=1_000, description="Candidate pairs scored per slice (whole users; bounds memory)."
    )


@dg.asset(
    name=ASSET,
    group_name="serving",
    kinds={"mlflow", "feast", "parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["registered_model", "feast_feature_views", "retrieval_model"],
    check_specs=[contract_check_spec(ASSET)],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    code_version="2",
    description="Top-20 items for each user active on day D (to serve on D+1): the registry's champion "
    "ranker over retrieval candidates, with features from the Feast online store (offline as-of features "
    "for a backfilled day), scored in vectorised batches.",
)
def batch_recommendations(
    context: dg.AssetExecutionContext,
    config: ServingConfig,
    storage: Storage,
    mlflow: MLflowResource,
    feast: FeastResource,
    raw_events: PartitionReader,
    item_catalog: pd.DataFrame,
    user_catalog: pd.DataFrame,
):
    from streamrec_assets.assets.retrieval import load_retrieval
    from streamrec_assets.core.serving import (
        feature_source,
        lookup_entities,
        recommend,
        recommendation_table,
        serving_candidates,
    )
    from streamrec_assets.feature_repo import feature_refs

    model_bytes, model_version = _champion(context, mlflow)
    store = feast.store() if model_bytes is not None else None
    refs = feature_refs(store) if store is not None else []
    online_day = _online_day(context)

    def compute(day: str) -> DayResult:
        t0 = time.perf_counter()
        events = raw_events.read(day, EVENT_COLUMNS)
        cands, users, as_of = serving_candidates(load_retrieval(storage, day), events, item_catalog, day, N_CANDIDATES)
        t1 = time.perf_counter()
        source = feature_source(model_bytes is not None, day, online_day)
        entity_features = None
        if source == ONLINE:
            entity_features = lookup_entities(cands, refs, _online_lookup(store, config.batch_rows))
        elif source == OFFLINE:
            entity_features = lookup_entities(cands, refs, _offline_lookup(store, as_of))
        t2 = time.perf_counter()
        top = recommend(cands, model_bytes, item_catalog, user_catalog, as_of, entity_features, TOP_K,
                        config.score_rows)
        recs = recommendation_table(top, day, model_version, source)
        t3 = time.perf_counter()
        extra = {
            "users_active": int(len(users)),
            "users_covered": int(recs["user_id"].nunique()),
            "candidate_pairs": int(len(cands)),
            "champion_version": int(model_version),
            "feature_source": source,
            "seconds_candidates": round(t1 - t0, 3),
            "seconds_features": round(t2 - t1, 3),
            "seconds_scoring": round(t3 - t2, 3),
        }
        if source == ONLINE and config.latency_sample_users:
            extra.update(_latency_sample(store, refs, cands, config.latency_sample_users))
        return DayResult(tables={ASSET: recs}, metadata={ASSET: day_metadata(recs, preview_rows=10, **extra)})

    yield from run_days(context, storage, [ASSET], compute)


def _champion(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> tuple[bytes | None, int]:
    """The champion's XGBoost bytes and version from the registry alias (``None, 0`` before the first)."""
    from mlflow import xgboost as mlflow_xgboost
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        champion = client.get_model_version_by_alias(mlflow.registered_model, "champion")
    except MlflowException:
        champion = None  # start of history: no model yet
    if champion is None:
        context.log.warning(
            f"No champion version of {mlflow.registered_model} yet: recommending in retrieval order "
            "(co-visitation, then popularity); model_version is 0."
        )
        return None, 0
    booster = mlflow_xgboost.load_model(f"models:/{mlflow.registered_model}/{champion.version}")
    return bytes(booster.save_raw(raw_format="ubj")), int(champion.version)


def _online_day(context: dg.AssetExecutionContext) -> str | None:
    """The newest feature day in the online store (feast_feature_views materialises the newest range)."""
    done = context.instance.get_materialized_partitions(dg.AssetKey("feast_feature_views"))
    return max(done) if done else None


def _online_lookup(store, batch_rows: int):
    """Entity lookups from the online store: the distinct ids of one entity, ``batch_rows`` per request."""
    from streamrec_assets.core.serving import in_batches
    from streamrec_assets.feature_repo import online_features

    def lookup(key: str, ids: np.ndarray, refs: list[str]) -> pd.DataFrame:
        parts = [
            online_features(store, chunk if key == "user_id" else None, chunk if key == "item_id" else None, refs)
            for chunk in in_batches(ids, batch_rows)
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({key: ids})

    return lookup


def _offline_lookup(store, as_of: pd.Timestamp):
    """Entity lookups from the offline store: point-in-time features of the distinct ids as of ``as_of``."""
    from streamrec_assets.feature_repo import historical_features

    def lookup(key: str, ids: np.ndarray, refs: list[str]) -> pd.DataFrame:
        return historical_features(store, pd.DataFrame({key: ids, "event_timestamp": as_of}), refs)

    return lookup


def _latency_sample(store, refs: list[str], cands: pd.DataFrame, n_users: int) -> dict:
    """p50/p99 of one online request per user (its candidate pairs), for a deterministic sample of users."""
    from streamrec_assets.core.evaluation import sample_users
    from streamrec_assets.core.serving import latency_summary
    from streamrec_assets.feature_repo import online_features

    sample = sample_users(cands["user_id"].to_numpy(), n_users)
    latencies = []
    for _user, group in cands[cands["user_id"].isin(sample)].groupby("user_id", sort=True):
        t0 = time.perf_counter()
        online_features(store, group["user_id"], group["item_id"], refs)
        latencies.append(time.perf_counter() - t0)
    latency = latency_summary(latencies)
    return {
        "online_lookup_requests": latency["requests"],
        "online_lookup_p50_ms": dg.MetadataValue.float(latency["p50_ms"]),
        "online_lookup_p99_ms": dg.MetadataValue.float(latency["p99_ms"]),
    }
