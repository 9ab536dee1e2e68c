"""Group ``training``: retrieval model, XGBoost ranker and their offline evaluation.

Model partition D is trained on days strictly before D and evaluated on day D,
a true hold-out: retrieval on the plays of [D-28, D-1], the ranker on the
training examples of [D-14, D-2] with early stopping on D-1. Models are files
in their own formats (Parquet tables, XGBoost UBJSON) written through the
``ArtifactStore``; the asset value is a typed one-row-per-day model card.
"""

import functools
import hashlib
import json
from datetime import date, timedelta

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import table_metadata
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.evaluation import METHODS
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import ArtifactStore, FeastResource, LandingZone

GROUP = "training"
RETRIEVAL_WINDOW_DAYS = 28
RANKER_WINDOW_DAYS = 14
N_CANDIDATES = 100
OK = "ok"
EVALUATION_SET = "evaluation_set.parquet"
INSUFFICIENT = "insufficient_history"


def day_offset(day: str, offset: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=offset)).isoformat()


def _plays(events: pd.DataFrame) -> pd.DataFrame:
    if events.empty:
        return pd.DataFrame(
            {"date": pd.Series(dtype=object), "user_id": pd.Series(dtype="int64"),
             "item_id": pd.Series(dtype="int64"), "event_timestamp": pd.Series(dtype="datetime64[us, UTC]")}
        )
    return events.loc[events["event_type"] == "play", ["date", "user_id", "item_id", "event_timestamp"]]


def ranked_candidates(cands: pd.DataFrame) -> pd.DataFrame:
    """Candidate order (covis score, then popularity fill) as a ranking."""
    return cands.assign(rank=cands.groupby("user_id").cumcount() + 1)[["user_id", "item_id", "rank"]]


def load_retrieval(artifacts: ArtifactStore, day: str):
    from streamrec_assets.core.retrieval import RetrievalModel

    manifest = artifacts.read_manifest("retrieval_model", day)
    if manifest is None:
        raise dg.Failure(f"retrieval_model {day} is incomplete (no manifest); re-materialise it.", allow_retries=False)
    frames = {name: artifacts.read_table("retrieval_model", day, f"{name}.parquet") for name in manifest["tables"]}
    return RetrievalModel.from_frames(frames, manifest["trained_through"], manifest["window_days"])


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "events": dg.AssetIn(
            "raw_events", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-RETRIEVAL_WINDOW_DAYS)
        )
    },
    code_version="1",
    automation_condition=EAGER_GATED,
    description="Candidate generation: item co-visitation over the plays of the 28 days before D, with a "
    "popularity fallback for cold users. Recall@100 on day D's plays in metadata.",
)
def retrieval_model(context: dg.AssetExecutionContext, artifacts: ArtifactStore, events: pd.DataFrame):
    from streamrec_assets.core.metrics import recall_at_k
    from streamrec_assets.core.retrieval import candidates, train_covisitation

    plays = _plays(events)
    cards = []
    for day in context.partition_keys:
        window = plays[(plays["date"] >= day_offset(day, -RETRIEVAL_WINDOW_DAYS)) & (plays["date"] < day)]
        model = train_covisitation(
            window[["user_id", "item_id", "event_timestamp"]], day_offset(day, -1), RETRIEVAL_WINDOW_DAYS
        )
        frames = model.to_frames()
        for name, frame in frames.items():
            artifacts.write_table("retrieval_model", day, f"{name}.parquet", frame)
        today = plays[plays["date"] == day].drop_duplicates(["user_id", "item_id"]).assign(relevance=1)
        recall = float("nan")
        if len(model.popularity) and len(today):
            cands = candidates(model, today["user_id"].unique(), n=N_CANDIDATES)
            recall = float(recall_at_k(ranked_candidates(cands), today, N_CANDIDATES).mean())
        status = OK if len(model.popularity) else INSUFFICIENT
        manifest = {
            "status": status,
            "tables": sorted(frames),
            "trained_through": model.trained_through,
            "window_days": model.window_days,
            "plays_in_window": int(len(window)),
            "recall_at_100_next_day": recall,
        }
        artifacts.write_manifest("retrieval_model", day, manifest)
        cards.append(
            {
                "date": day,
                "status": status,
                "uri": str(artifacts.path("retrieval_model", day, "")),
                "trained_through": model.trained_through,
                "plays_in_window": int(len(window)),
                "items": int(len(model.popularity)),
                "neighbor_pairs": int(len(model.neighbors)),
                "users_with_history": int(model.history["user_id"].nunique()),
                "recall_at_100_next_day": recall,
            }
        )
    card = pd.DataFrame(cards)
    last = cards[-1]
    metadata = table_metadata(card)
    metadata.update(
        {
            "recall_at_100": dg.MetadataValue.float(last["recall_at_100_next_day"]),
            "recall_at_100_per_day": dg.MetadataValue.json(
                {c["date"]: c["recall_at_100_next_day"] for c in cards if c["recall_at_100_next_day"] == c["recall_at_100_next_day"]}
            ),
            "status": last["status"],
        }
    )
    return dg.MaterializeResult(value=card, metadata=metadata)


@dg.asset(
    group_name=GROUP,
    kinds={"xgboost"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "examples": dg.AssetIn(
            "training_examples",
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-RANKER_WINDOW_DAYS, end_offset=-1),
        )
    },
    pool="training",
    code_version="1",
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    description="XGBoost ranker (rank:ndcg, one query per user and day) trained on the training examples of "
    "[D-14, D-2], early-stopped on D-1; saved in XGBoost's UBJSON format. The value is the model card.",
)
def ranking_model(context: dg.AssetExecutionContext, artifacts: ArtifactStore, examples: pd.DataFrame):
    from streamrec_assets.core.ranking import train_ranker
    from streamrec_assets.core.training import model_feature_columns

    cards = []
    for day in context.partition_keys:
        validation_day = day_offset(day, -1)
        first = day_offset(day, -RANKER_WINDOW_DAYS)
        dates = examples["date"] if "date" in examples else pd.Series(dtype=object)
        train = examples[(dates >= first) & (dates < validation_day)]
        validation = examples[dates == validation_day]
        card = {
            "date": day,
            "status": INSUFFICIENT,
            "model_uri": "",
            "model_sha256": "",
            "train_days": int(train["date"].nunique()) if len(train) else 0,
            "validation_day": validation_day,
            "train_rows": int(len(train)),
            "validation_rows": int(len(validation)),
            "best_iteration": -1,
            "validation_ndcg_at_20": float("nan"),
            "features": "[]",
            "params": "{}",
        }
        try:
            trained = train_ranker(train, validation, model_feature_columns(examples)) if len(train) else None
        except ValueError as exc:
            context.log.warning(f"{day}: {exc}")
            trained = None
        if trained is not None:
            path = artifacts.write_bytes("ranking_model", day, "model.ubj", trained.model_bytes)
            sha = hashlib.sha256(trained.model_bytes).hexdigest()
            card.update(
                status=OK,
                model_uri=str(path),
                model_sha256=sha,
                train_rows=trained.train_rows,
                validation_rows=trained.validation_rows,
                best_iteration=trained.best_iteration,
                validation_ndcg_at_20=trained.validation_ndcg,
                features=json.dumps(trained.features),
                params=json.dumps(trained.params, sort_keys=True),
            )
            artifacts.write_manifest("ranking_model", day, {**card, "features": trained.features})
        else:
            context.log.info(f"{day}: not enough history to train a ranker ({card['train_rows']} train rows)")
        cards.append(card)
    card = pd.DataFrame(cards)
    last = cards[-1]
    metadata = table_metadata(card.drop(columns=["features", "params"]))
    metadata.update(
        {
            "status": last["status"],
            "validation_ndcg_at_20": dg.MetadataValue.float(float(last["validation_ndcg_at_20"])),
            "best_iteration": int(last["best_iteration"]),
            "features": dg.MetadataValue.json(json.loads(last["features"])),
            "models_trained": int((card["status"] == OK).sum()),
        }
    )
    return dg.MaterializeResult(value=card, metadata=metadata)


class EvaluationConfig(dg.Config):
    max_users: int = Field(default=2000, ge=1, description="Users evaluated per day (deterministic sample).")


@dg.asset(
    group_name=GROUP,
    kinds={"feast", "xgboost"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    retry_policy=STORAGE_RETRY,
    code_version="1",
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    description="Hold-out evaluation on day D vs a popularity baseline and the generator's oracle (hidden "
    "affinity): NDCG@20 of the ranking of each user's logged impressions of D (graded labels), Recall@100 "
    "of the retrieval candidates against D's plays. The value is the metrics table (one row per day and "
    "method); the scored slates are kept next to it for the registry's promotion gate.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    artifacts: ArtifactStore,
    feast: FeastResource,
    landing: LandingZone,
    ranking_model: pd.DataFrame,
    retrieval_model: pd.DataFrame,
    raw_events: pd.DataFrame,
    item_catalog: pd.DataFrame,
    user_catalog: pd.DataFrame,
):
    from streamrec_assets.core.evaluation import (
        evaluation_table,
        impression_slates,
        oracle_ranking,
        popularity_ranking,
        relevance_of_day,
        sample_users,
    )
    from streamrec_assets.core.metrics import rank_by_score
    from streamrec_assets.core.ranking import score
    from streamrec_assets.core.retrieval import candidates
    from streamrec_assets.core.training import add_context_features, label_impressions
    from streamrec_assets.feature_repo import historical_features

    store = feast.store()
    cards = ranking_model.set_index("date")
    tables = {}
    for day in context.partition_keys:
        card = cards.loc[day]
        if card["status"] != OK:
            context.log.info(f"{day}: no ranking model to evaluate ({card['status']}).")
            continue
        events = raw_events[raw_events["date"] == day]
        slates = impression_slates(label_impressions(events, item_catalog))
        users = sample_users(slates["user_id"].to_numpy(), config.max_users)
        slates = slates[slates["user_id"].isin(users)].reset_index(drop=True)
        plays = relevance_of_day(events, item_catalog)
        plays = plays[plays["user_id"].isin(users)]
        retrieval = load_retrieval(artifacts, day)
        allowed = item_catalog.loc[item_catalog["release_date"] <= day, "item_id"].to_numpy()
        as_of = pd.Timestamp(day, tz="UTC")
        model_bytes = artifacts.read_bytes("ranking_model", day, "model.ubj")

        # Ranking: re-order each user's logged impressions of day D (features as of the start of D).
        feats = historical_features(store, slates.assign(event_timestamp=as_of))
        feats = add_context_features(feats, item_catalog, user_catalog, as_of)
        feats["score"] = score(model_bytes, feats)
        popularity = slates[["user_id", "item_id"]].merge(retrieval.popularity, on="item_id", how="left")
        ranking = {
            "ours": rank_by_score(feats[["user_id", "item_id", "score"]], N_CANDIDATES),
            "popularity": rank_by_score(popularity.assign(score=popularity["plays"].fillna(0))[["user_id", "item_id", "score"]], N_CANDIDATES),
        }
        # Retrieval: the top-100 candidates of each user against the plays of day D.
        cands = candidates(retrieval, users, n=N_CANDIDATES, allowed_items=allowed)
        retrieval_lists = {
            "ours": ranked_candidates(cands),
            "popularity": popularity_ranking(retrieval.popularity, users, allowed, N_CANDIDATES),
        }
        world = _oracle_world(landing, day)
        if world is not None:
            oracle = slates[["user_id", "item_id"]].assign(score=world.affinity(slates["user_id"], slates["item_id"]))
            ranking["oracle"] = rank_by_score(oracle, N_CANDIDATES)
            retrieval_lists["oracle"] = oracle_ranking(world.affinity, users, allowed, N_CANDIDATES)
        tables[day] = evaluation_table(ranking, slates, retrieval_lists, plays).assign(
            date=day, model_sha256=card["model_sha256"]
        )
        # The scored slates, for the registry's promotion gate to re-score with the champion.
        artifacts.write_table("model_evaluation", day, EVALUATION_SET, feats.assign(date=day))

    metrics = pd.concat(tables.values(), ignore_index=True) if tables else _empty_metrics()
    metrics = metrics[["date", "method", "users", "ndcg_at_20", "recall_at_100", "model_sha256"]]
    metadata = table_metadata(metrics, preview_rows=len(METHODS))
    if tables:
        last_day = max(tables)
        metadata.update(_metric_metadata(tables[last_day]))
        metadata["evaluation_day"] = last_day
        metadata["metrics"] = dg.MetadataValue.md(
            tables[last_day].drop(columns=["model_sha256"]).to_markdown(index=False, floatfmt=".4f")
        )
        metadata["ndcg_at_20_per_day"] = dg.MetadataValue.json(
            metrics.pivot(index="date", columns="method", values="ndcg_at_20").round(5).to_dict(orient="index")
        )
    else:
        metadata["evaluation_day"] = "none (no trained model in the range)"
    return dg.MaterializeResult(value=metrics, metadata=metadata)


def _empty_metrics() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.Series(dtype=object),
            "method": pd.Series(dtype=object),
            "users": pd.Series(dtype="int64"),
            "ndcg_at_20": pd.Series(dtype="float64"),
            "recall_at_100": pd.Series(dtype="float64"),
            "model_sha256": pd.Series(dtype=object),
        }
    )


def metric_values(table: pd.DataFrame) -> dict[str, float]:
    """Flat metric names (as logged to MLflow) from a metrics table."""
    by = table.set_index("method")
    out: dict[str, float] = {}
    for method, prefix in (("ours", ""), ("popularity", "popularity_"), ("oracle", "oracle_")):
        if method in by.index:
            out[f"{prefix}ndcg_at_20"] = float(by.loc[method, "ndcg_at_20"])
            out[f"{prefix}recall_at_100"] = float(by.loc[method, "recall_at_100"])
    if out.get("popularity_ndcg_at_20"):
        out["lift_ndcg_vs_popularity"] = out["ndcg_at_20"] / out["popularity_ndcg_at_20"]
    return out


def _metric_metadata(table: pd.DataFrame) -> dict:
    values = metric_values(table)
    meta = {name: dg.MetadataValue.float(value) for name, value in values.items()}
    meta["users_evaluated"] = int(table["users"].max())
    return meta


def _oracle_world(landing: LandingZone, day: str):
    """The generator's world for the day (None for real data without generator parameters)."""
    marker = landing.read_marker(day)
    params = (marker or {}).get("params") or {}
    if not {"seed", "users", "items"} <= set(params):
        return None
    return _world(int(params["seed"]), int(params["users"]), int(params["items"]))


@functools.lru_cache(maxsize=4)
def _world(seed: int, users: int, items: int):
    from streamrec_assets import datagen

    return datagen.World.build(seed, users, items)

