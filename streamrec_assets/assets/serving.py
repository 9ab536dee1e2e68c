"""Group ``serving``: batch recommendations from the champion model and online features."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import contract_check_spec, table_result
from streamrec_assets.assets.models import N_CANDIDATES, load_retrieval
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import ArtifactStore, FeastResource, MLflowResource

TOP_K = 20


class ServingConfig(dg.Config):
    latency_sample_users: int = Field(
        default=200, ge=1, description="Users whose online lookups are timed one request per user."
    )
    batch_rows: int = Field(default=20_000, ge=100, description="Entity rows per bulk online lookup.")


@dg.asset(
    group_name="serving",
    kinds={"mlflow", "feast", "parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["registered_model", "feast_feature_views"],
    check_specs=[contract_check_spec("batch_recommendations")],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    code_version="1",
    description="Top-20 items for each user active on day D (to serve on D+1): the registry's champion "
    "ranker over retrieval candidates, with features from the Feast online store.",
)
def batch_recommendations(
    context: dg.AssetExecutionContext,
    config: ServingConfig,
    mlflow: MLflowResource,
    artifacts: ArtifactStore,
    feast: FeastResource,
    raw_events: pd.DataFrame,
    item_catalog: pd.DataFrame,
    user_catalog: pd.DataFrame,
):
    from mlflow import xgboost as mlflow_xgboost
    from mlflow.exceptions import MlflowException

    from streamrec_assets.core.metrics import rank_by_score
    from streamrec_assets.core.ranking import score
    from streamrec_assets.core.retrieval import candidates
    from streamrec_assets.core.serving import latency_summary, refresh_history
    from streamrec_assets.core.training import add_context_features
    from streamrec_assets.feature_repo import feature_refs, historical_features

    client = mlflow.client()
    try:
        champion = client.get_model_version_by_alias(mlflow.registered_model, "champion")
    except MlflowException:
        champion = None  # start of history: no model yet
    if champion is not None:
        booster = mlflow_xgboost.load_model(f"models:/{mlflow.registered_model}/{champion.version}")
        model_bytes = bytes(booster.save_raw(raw_format="ubj"))
        model_version = int(champion.version)
    else:
        context.log.warning(
            f"No champion version of {mlflow.registered_model} yet: recommending in retrieval order "
            "(co-visitation, then popularity); model_version is 0."
        )
        model_bytes, model_version = None, 0

    store = feast.store()
    refs = feature_refs(store)
    online_day = _online_day(context)
    frames, per_day, latencies = [], {}, []
    for day in context.partition_keys:
        events = raw_events[raw_events["date"] == day]
        users = pd.unique(events["user_id"])
        retrieval = load_retrieval(artifacts, day)
        plays = events.loc[events["event_type"] == "play", ["user_id", "item_id", "event_timestamp"]]
        retrieval.history = refresh_history(retrieval.history, plays)
        as_of = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
        allowed = item_catalog.loc[item_catalog["release_date"] <= as_of.strftime("%Y-%m-%d"), "item_id"].to_numpy()
        cands = candidates(retrieval, users, n=N_CANDIDATES, allowed_items=allowed)
        if model_bytes is None:
            source = "none"
            feats = cands.assign(score=-cands.groupby("user_id").cumcount().astype("float64"))
        elif day == online_day:
            source = "online"
            feats, day_latencies = _online_lookup(store, refs, cands, config)
            latencies += day_latencies
        else:
            # A backfilled day: the online store holds newer values, so read the same features
            # as of the end of that day from the offline store (identical values, see the skew test).
            source = "offline"
            feats = historical_features(store, cands.assign(event_timestamp=as_of), refs)
        if model_bytes is not None:
            feats = add_context_features(feats, item_catalog, user_catalog, as_of)
            feats["score"] = score(model_bytes, feats)
        top = rank_by_score(feats[["user_id", "item_id", "score"]], TOP_K)
        top = top.merge(feats[["user_id", "item_id", "score"]], on=["user_id", "item_id"], how="left")
        top = top.merge(cands[["user_id", "item_id", "source"]], on=["user_id", "item_id"], how="left")
        top = top.rename(columns={"source": "candidate_source"})
        top["date"] = day
        top["model_version"] = model_version
        top["feature_source"] = source
        frames.append(top)
        per_day[day] = {"users_active": int(len(users)), "users_covered": int(top["user_id"].nunique()),
                        "feature_source": source}

    recs = pd.concat(frames, ignore_index=True)
    recs = recs[["date", "user_id", "rank", "item_id", "score", "candidate_source", "model_version", "feature_source"]]
    recs = recs.astype({"rank": "int64", "score": "float64"})
    latency = latency_summary(latencies)
    last = per_day[context.partition_keys[-1]]
    metadata = {
        "users_active": last["users_active"],
        "users_covered": last["users_covered"],
        "champion_version": model_version,
        "feature_source": last["feature_source"],
        "online_lookup_p50_ms": dg.MetadataValue.float(latency["p50_ms"]),
        "online_lookup_p99_ms": dg.MetadataValue.float(latency["p99_ms"]),
        "online_lookup_requests": latency["requests"],
        "per_day": dg.MetadataValue.json(per_day),
    }
    return table_result("batch_recommendations", recs, metadata, preview_rows=10)


def _online_day(context: dg.AssetExecutionContext) -> str | None:
    """The newest feature day in the online store (feast_feature_views materialises the newest range)."""
    done = context.instance.get_materialized_partitions(dg.AssetKey("feast_feature_views"))
    return max(done) if done else None


def _online_lookup(store, refs, cands: pd.DataFrame, config: ServingConfig) -> tuple[pd.DataFrame, list[float]]:
    """Features of every candidate from the online store; one timed request per user for a sample."""
    from streamrec_assets.feature_repo import online_features

    users = pd.unique(cands["user_id"])
    timed = set(users[: config.latency_sample_users].tolist())
    parts, latencies = [], []
    for _user, group in cands[cands["user_id"].isin(timed)].groupby("user_id", sort=False):
        t0 = time.perf_counter()
        parts.append(online_features(store, group["user_id"], group["item_id"], refs))
        latencies.append(time.perf_counter() - t0)
    rest = cands[~cands["user_id"].isin(timed)]
    for start in range(0, len(rest), config.batch_rows):
        chunk = rest.iloc[start : start + config.batch_rows]
        parts.append(online_features(store, chunk["user_id"], chunk["item_id"], refs))
    parts = [p for p in parts if len(p)]
    feats = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user_id", "item_id"])
    return feats, latencies
