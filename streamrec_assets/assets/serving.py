"""Group ``serving``: batch recommendations for every active user, from day one.

Every active user of a day gets :data:`~streamrec_assets.core.serving.TOP_K` items
(:mod:`streamrec_assets.core.serving`): retrieval candidates with a popularity fallback (a pool
exists on the first day of history too), minus what the exclusion policy removes from the
user's consumption of ``[D-28, D]`` (``ServingConfig.exclude``, default ``completed``), ranked
by the registry's champion *as of D* (the latest recorded promotion of a version registered on
or before D: a re-materialised day is scored by the same version) or, before any promotion, by
popularity (``ranker = popularity``, ``model_version`` null). The champion's features are read
once per distinct user and item (online store for the newest feature day, offline as-of
features for a backfilled day) and joined onto the candidate pairs; the per-user latency of the
online store is measured apart, on a sample of users, one request each.
"""

import time
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import (
    DayResult,
    contract_check_spec,
    day_metadata,
    run_days,
)
from streamrec_assets.assets.retrieval import N_CANDIDATES
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.serving import CONSUMPTION_WINDOW_DAYS, OFFLINE, ONLINE, TOP_K
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, MLflowResource, Storage
from streamrec_assets.storage import PartitionReader

ASSET = "batch_recommendations"
EVENT_COLUMNS = ["user_id", "item_id", "event_type", "event_timestamp"]
#: Day D reads the raw events of its consumption window [D-28, D] (the exclusion policy).
CONSUMPTION_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-CONSUMPTION_WINDOW_DAYS, end_offset=0)
CHAMPION_RULE = "latest recorded promotion (tag streamrec.promotion) of a version whose partition tag is <= D"


class ServingConfig(dg.Config):
    exclude: Literal["completed", "played", "none"] = Field(
        default="completed",
        description="Already-consumed items kept out of a user's list (consumption of [D-28, D]): 'completed' "
        "(default; partially watched items stay eligible, labelled continue_watching), 'played' (every item "
        "played) or 'none'. model_evaluation applies the same policy.",
    )
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
    ins={"raw_events": dg.AssetIn(partition_mapping=CONSUMPTION_MAPPING)},
    deps=["registered_model", "feast_feature_views", "retrieval_model", "taste_model"],
    check_specs=[
        contract_check_spec(
            ASSET,
            "The table satisfies its contract (streamrec_assets.contracts.batch_recommendations_schema): "
            "every active user's list ranked 1..n without repeats, a known "
            "candidate_source and ranker, a model_version exactly when the champion ranked.",
        )
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    description="Top-20 items for each user active on day D (to serve on D+1), from day one: retrieval "
    "candidates with a popularity fallback, minus the items the exclusion policy removes (default: completed "
    "in [D-28, D]), ranked by the registry's champion as of D (popularity before the first promotion), with "
    "features from the Feast online store (offline as-of features for a backfilled day).",
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
    from streamrec_assets.assets.taste import load_taste
    from streamrec_assets.core.serving import (
        CANDIDATE_SOURCES,
        consumption_days,
        feature_source,
        lookup_entities,
        recommend,
        recommendation_table,
        serving_candidates,
    )
    from streamrec_assets.feature_repo import feature_refs, online_through

    champions = ChampionAsOf(context, mlflow)
    consumed_by = ConsumptionWindow(raw_events, item_catalog)
    feast_store = feast.store()
    online_day = online_through(feast_store)  # the newest feature day online (Feast's record)
    refs: list[str] = []

    def store_and_refs():
        if not refs:  # only when the champion ranks: the popularity fallback never reads features
            refs.extend(feature_refs(feast_store))
        return feast_store, refs

    def compute(day: str) -> DayResult:
        t0 = time.perf_counter()
        version, model_bytes, champion = champions.as_of(day)
        events = raw_events.read(day, EVENT_COLUMNS)
        users_today = pd.unique(events["user_id"])
        window = consumption_days(day)
        consumed = consumed_by.window(window, users_today)
        retrieval = load_retrieval(storage, day)
        cands, users, as_of = serving_candidates(
            retrieval, events, item_catalog, day, N_CANDIDATES, consumed, config.exclude
        )
        t1 = time.perf_counter()
        source = feature_source(model_bytes is not None, day, online_day)
        entity_features = None
        if source in (ONLINE, OFFLINE):
            store, refs = store_and_refs()
            lookup = _online_lookup(store, config.batch_rows) if source == ONLINE else _offline_lookup(store, as_of)
            entity_features = lookup_entities(cands, refs, lookup)
        t2 = time.perf_counter()
        # Ranked as of D+1 00:00 (as_of): the Feast rows and the taste model of D.
        taste = load_taste(storage, day) if model_bytes is not None else None
        top = recommend(cands, model_bytes, item_catalog, user_catalog, as_of, entity_features, TOP_K,
                        config.score_rows, popularity=retrieval.popularity, taste=taste)
        recs = recommendation_table(top, day, version, source)
        t3 = time.perf_counter()
        per_user = recs.groupby("user_id").size()
        served = recs["candidate_source"].value_counts()
        extra = {
            "users_active": int(len(users)),
            "users_covered": int(recs["user_id"].nunique()),
            "users_with_top_k": int((per_user == TOP_K).sum()),
            "candidate_pairs": int(len(cands)),
            "ranker": "champion" if version is not None else "popularity",
            "champion_version": int(version) if version is not None else -1,
            "champion_partition": champion.partition if champion is not None else "",
            "champion_rule": CHAMPION_RULE,
            "alias_champion_version": champions.alias_version,
            "exclude": config.exclude,
            "consumption_window": f"{window[0]}..{window[-1]}",
            "consumed_pairs": int(len(consumed)),
            "consumed_completed_pairs": int(consumed["completed"].sum()),
            **{f"served_{name}": int(served.get(name, 0)) for name in CANDIDATE_SOURCES},
            "feature_source": source,
            "seconds_candidates": round(t1 - t0, 3),
            "seconds_features": round(t2 - t1, 3),
            "seconds_scoring": round(t3 - t2, 3),
        }
        if source == ONLINE and config.latency_sample_users:
            store, refs = store_and_refs()
            extra.update(_latency_sample(store, refs, cands, config.latency_sample_users))
        return DayResult(
            tables={ASSET: recs},
            metadata={ASSET: day_metadata(recs, preview_rows=10, **extra)},
        )

    yield from run_days(context, storage, [ASSET], compute)


class ChampionAsOf:
    """The champion of each day by the as-of rule (:func:`~streamrec_assets.core.serving.champion_as_of`):
    the registry's recorded decisions are read once per step, each version's bytes once."""

    def __init__(self, context: dg.AssetExecutionContext, mlflow: MLflowResource) -> None:
        from mlflow.exceptions import MlflowException

        from streamrec_assets.core.serving import promotion_records

        self.context, self.mlflow = context, mlflow
        self.client = mlflow.client()
        try:
            self.records = promotion_records(self.client, mlflow.registered_model)
        except MlflowException:
            self.records = []  # no registered model yet: the start of history
        try:
            alias = self.client.get_model_version_by_alias(mlflow.registered_model, "champion")
            self.alias_version = int(alias.version)
        except MlflowException:
            self.alias_version = -1  # for information only; the rows follow the as-of rule
        self._bytes: dict[int, bytes] = {}

    def as_of(self, day: str):
        """``(version, model bytes, record)`` of the champion as of ``day``; ``(None, None, None)``
        before the first promotion (the popularity fallback ranks)."""
        from streamrec_assets.core.serving import champion_as_of

        record = champion_as_of(self.records, day)
        if record is None:
            self.context.log.info(f"{day}: no promotion recorded on or before this day: ranking by popularity.")
            return None, None, None
        if record.version not in self._bytes:
            from mlflow import xgboost as mlflow_xgboost

            booster = mlflow_xgboost.load_model(f"models:/{self.mlflow.registered_model}/{record.version}")
            self._bytes[record.version] = bytes(booster.save_raw(raw_format="ubj"))
        return record.version, self._bytes[record.version], record


class ConsumptionWindow:
    """Each user's consumption of a window of days (plays, completed or not), every day read once
    while a range walks forward; only the window's days are kept."""

    def __init__(self, raw_events: PartitionReader, item_catalog: pd.DataFrame) -> None:
        self.raw_events, self.items = raw_events, item_catalog
        self._days: dict[str, pd.DataFrame] = {}

    def window(self, days: list[str], users) -> pd.DataFrame:
        from streamrec_assets.core.serving import CONSUMPTION_EVENT_COLUMNS, consumption, consumption_of_day

        available = set(self.raw_events.present)
        present = [d for d in days if d in available]
        for day in present:
            if day not in self._days:
                events = self.raw_events.read(day, CONSUMPTION_EVENT_COLUMNS)
                self._days[day] = consumption_of_day(events, self.items)
        for day in list(self._days):
            if day not in present:
                del self._days[day]
        return consumption((self._days[d] for d in present), users)


def _online_lookup(store, batch_rows: int):
    """Entity lookups from the online store: the distinct ids of one entity, ``batch_rows`` per request."""
    from streamrec_assets.core.serving import in_batches
    from streamrec_assets.feature_repo import online_features

    def lookup(key: str, ids, refs: list[str]) -> pd.DataFrame:
        parts = [
            online_features(store, chunk if key == "user_id" else None, chunk if key == "item_id" else None, refs)
            for chunk in in_batches(ids, batch_rows)
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({key: ids})

    return lookup


def _offline_lookup(store, as_of: pd.Timestamp):
    """Entity lookups from the offline store: point-in-time features of the distinct ids as of ``as_of``."""
    from streamrec_assets.feature_repo import historical_features

    def lookup(key: str, ids, refs: list[str]) -> pd.DataFrame:
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
        "online_lookup_p50_ms": float(latency["p50_ms"]),
        "online_lookup_p99_ms": float(latency["p99_ms"]),
    }
