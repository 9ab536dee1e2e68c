"""Group ``training``: MLflow registry entries with a promotion gate and a full lineage record.

For each day D with a trained ranker, ``registered_model`` logs an MLflow run
(parameters, the metrics of ``model_evaluation``, the model in XGBoost's
format, the lineage record as JSON), registers a version of
``streamrec-ranker`` and points alias ``challenger`` at it. Alias ``champion``
moves only when the challenger's NDCG@20 on day D's evaluation set is at least
the current champion's NDCG@20 *on the same set* minus ``promotion_tolerance``;
the first model becomes champion. A version whose inputs are identical to an
existing one (same input fingerprint) is reused, not registered twice.
"""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import table_metadata
from streamrec_assets.assets.models import EVALUATION_SET, OK, metric_values
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import ArtifactStore, FeastResource, MLflowResource
from streamrec_assets.settings import get_settings

CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_UPSTREAM = ("raw_events", "training_examples", "ranking_model", "retrieval_model", "model_evaluation")


class RegistryConfig(dg.Config):
    promotion_tolerance: float = Field(
        default_factory=lambda: get_settings().promotion_tolerance,
        ge=0.0,
        description="The challenger is promoted when its NDCG@20 >= the champion's on the same day minus this "
        "(default STREAMREC_PROMOTION_TOLERANCE or 0.005).",
    )


def _ndcg_of(scores, evaluation_set: pd.DataFrame) -> float:
    from streamrec_assets.core.evaluation import NDCG_K
    from streamrec_assets.core.metrics import ndcg_at_k, rank_by_score

    ranked = rank_by_score(evaluation_set[["user_id", "item_id"]].assign(score=scores), 100)
    return float(ndcg_at_k(ranked, evaluation_set[["user_id", "item_id", "relevance"]], NDCG_K).mean())


@dg.asset(
    group_name="training",
    kinds={"mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["feast_feature_views"],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    code_version="1",
    description="A registered MLflow version of streamrec-ranker per trained day (alias challenger), promoted "
    "to champion by the NDCG@20 gate; one row per day: version, run, promotion decision and reason.",
)
def registered_model(
    context: dg.AssetExecutionContext,
    config: RegistryConfig,
    mlflow: MLflowResource,
    artifacts: ArtifactStore,
    feast: FeastResource,
    model_evaluation: pd.DataFrame,
    ranking_model: pd.DataFrame,
):
    import mlflow as mlflow_lib
    from mlflow import xgboost as mlflow_xgboost
    from mlflow.exceptions import MlflowException

    from streamrec_assets import lineage
    from streamrec_assets.core.evaluation import promotion_decision
    from streamrec_assets.core.ranking import load_booster, score
    from streamrec_assets.feature_repo import FEATURE_VIEWS, view_version

    client = mlflow.client()
    experiment_id = mlflow.experiment_id(client)
    name = mlflow.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="StreamRec XGBoost ranker (rank:ndcg).")

    store = feast.store()
    feature_views = {view: view_version(store, view) for view in FEATURE_VIEWS}
    code_versions = _code_versions(context, LINEAGE_UPSTREAM + ("registered_model",))
    config_hash = lineage.stable_hash({"tolerance": config.promotion_tolerance, "settings": _settings_for_hash()})
    cards = ranking_model.set_index("date")
    rows = []
    for day in context.partition_keys:
        card = cards.loc[day]
        table = model_evaluation[model_evaluation["date"] == day]
        if card["status"] != OK or table.empty:
            rows.append(_row(day, status="skipped", reason=f"no trained ranker for {day} ({card['status']})"))
            continue
        metrics = metric_values(table)
        fingerprint = lineage.input_fingerprint(
            card["model_sha256"], day, metrics, code_versions.get("registered_model"), config_hash
        )
        found = client.search_model_versions(f"name='{name}' and tags.input_fingerprint='{fingerprint}'")
        if found:
            version, reused = found[0], True
        else:
            record = {
                "git_sha": lineage.git_sha(),
                "code_versions": code_versions,
                "config_hash": config_hash,
                "partition": day,
                "upstream_partitions": _upstream_partitions(day, card),
                "data_versions": lineage.data_versions(context.instance, _upstream_partitions(day, card)),
                "feast_project": store.project,
                "feature_views": feature_views,
                "model_sha256": card["model_sha256"],
                "input_fingerprint": fingerprint,
                "dagster_run_id": context.run.run_id,
                "packages": lineage.package_versions(),
            }
            booster = load_booster(artifacts.read_bytes("ranking_model", day, "model.ubj"))
            with mlflow_lib.start_run(experiment_id=experiment_id, run_name=f"ranker-{day}") as run:
                mlflow_lib.log_params(
                    {
                        "partition": day,
                        "best_iteration": int(card["best_iteration"]),
                        "train_rows": int(card["train_rows"]),
                        "validation_day": card["validation_day"],
                        **{f"xgb_{k}": v for k, v in json.loads(card["params"]).items()},
                    }
                )
                mlflow_lib.log_metrics({**metrics, "validation_ndcg_at_20": float(card["validation_ndcg_at_20"])})
                info = mlflow_xgboost.log_model(
                    booster, name="model", model_format="ubj", registered_model_name=name
                )
                record["mlflow_run_id"] = run.info.run_id
                mlflow_lib.log_dict(record, "lineage.json")
                mlflow_lib.set_tags({"partition": day, "input_fingerprint": fingerprint})
            version = client.get_model_version(name, str(info.registered_model_version))
            tags = {"partition": day, "input_fingerprint": fingerprint, **lineage.as_tags(record)}
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
            client.update_model_version(
                name, version.version, description=f"Ranker trained through {card['validation_day']}, evaluated on {day}."
            )
            version = client.get_model_version(name, version.version)
            reused = False
        client.set_registered_model_alias(name, CHALLENGER, version.version)

        evaluation_set = artifacts.read_table("model_evaluation", day, EVALUATION_SET)
        challenger_ndcg = _ndcg_of(evaluation_set["score"].to_numpy(), evaluation_set)
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champion = None
        champion_ndcg = float("nan")
        if champion is not None and champion.version == version.version:
            promote, reason = False, f"version {version.version} is already the champion"
            champion_ndcg = challenger_ndcg
        else:
            if champion is not None:
                champion_booster = mlflow_xgboost.load_model(f"models:/{name}/{champion.version}")
                champion_scores = score(bytes(champion_booster.save_raw(raw_format="ubj")), evaluation_set)
                champion_ndcg = _ndcg_of(champion_scores, evaluation_set)
            promote, reason = promotion_decision(
                challenger_ndcg,
                None if champion is None else champion_ndcg,
                config.promotion_tolerance,
                day,
                None if champion is None else champion.version,
                None if champion is None else champion.tags.get("partition"),
            )
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        context.log.info(f"{day}: version {version.version} ({'reused' if reused else 'new'}); {reason}")
        rows.append(
            _row(
                day,
                status="promoted" if promote else ("champion" if "already" in reason else "challenger"),
                reason=reason,
                version=int(version.version),
                run_id=version.run_id,
                fingerprint=fingerprint,
                reused=reused,
                challenger_ndcg=challenger_ndcg,
                champion_ndcg=champion_ndcg,
                champion_version=int(version.version) if promote else int(champion.version),
                ndcg_at_20=metrics["ndcg_at_20"],
                popularity_ndcg_at_20=metrics.get("popularity_ndcg_at_20", float("nan")),
            )
        )
    record = pd.DataFrame(rows)
    last = rows[-1]
    metadata = table_metadata(record)
    metadata.update(
        {
            "registered_model": name,
            "tracking_uri": mlflow.tracking_uri,
            "decision": last["reason"],
            "version": int(last["version"]),
            "champion_version": int(last["champion_version"]),
            "promoted": bool(last["status"] == "promoted"),
            "challenger_ndcg_at_20": dg.MetadataValue.float(float(last["challenger_ndcg"])),
            "champion_ndcg_at_20": dg.MetadataValue.float(float(last["champion_ndcg"])),
        }
    )
    return dg.MaterializeResult(value=record, metadata=metadata)


def _code_versions(context: dg.AssetExecutionContext, assets: tuple[str, ...]) -> dict[str, str | None]:
    """Code versions from the whole repository (the job of a subset run only knows its own assets)."""
    try:
        graph = context.repository_def.asset_graph
    except Exception:  # in-process materialize() without a repository
        graph = context.job_def.asset_layer.asset_graph
    return {
        key: graph.get(dg.AssetKey(key)).code_version if graph.has(dg.AssetKey(key)) else None for key in assets
    }


def _row(day: str, **values) -> dict:
    row = {
        "date": day,
        "status": "",
        "reason": "",
        "version": -1,
        "run_id": "",
        "fingerprint": "",
        "reused": False,
        "challenger_ndcg": float("nan"),
        "champion_ndcg": float("nan"),
        "champion_version": -1,
        "ndcg_at_20": float("nan"),
        "popularity_ndcg_at_20": float("nan"),
    }
    row.update(values)
    return row


def _upstream_partitions(day: str, card: pd.Series) -> dict[str, list[str]]:
    from streamrec_assets.assets.models import RANKER_WINDOW_DAYS, day_offset

    train_days = [day_offset(day, -k) for k in range(RANKER_WINDOW_DAYS, 0, -1)]
    return {
        "training_examples": train_days,
        "ranking_model": [day],
        "retrieval_model": [day],
        "model_evaluation": [day],
        "raw_events": [day],
    }


def _settings_for_hash() -> dict:
    settings = get_settings()
    return {"start_date": settings.start_date, "feast_online_store": settings.feast_online_store}
