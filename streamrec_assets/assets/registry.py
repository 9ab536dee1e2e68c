"""Group ``training``: MLflow registry entries with a promotion gate and a full lineage record.

For each day D with a trained ranker, ``registered_model`` logs an MLflow run
(parameters, the metrics of ``model_evaluation``, the model in XGBoost's
format, the lineage record as JSON), registers a version of
``streamrec-ranker`` and points alias ``challenger`` at it. Alias ``champion``
moves only when the challenger's NDCG@20 on day D's evaluation set is at least
the current champion's NDCG@20 *on the same set* minus ``promotion_tolerance``;
the first model becomes champion.

Exactly once, also when two runs of the same day race on different machines:
a version exists once per input fingerprint (the lowest version number wins, a
racing loser deletes its own), and its promotion is decided once and recorded on
the version (:mod:`streamrec_assets.core.registry`). The asset also runs in pool
``registry`` (limit 1, set by ``make dev`` / ``make demo``), so a configured
instance does not even start the race. The day's record (version, run, registration,
decision and reason) is the partition's ``data.parquet``, published by write-audit-publish.
"""

import json
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import DayResult, check_spec, contract_check_spec, day_metadata, run_days
from streamrec_assets.assets.models import EVALUATION_SET, OK, RANKER_WINDOW_DAYS, metric_values
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.dates import window_days
from streamrec_assets.core.registry import (
    DECISION_WAIT_S,
    Candidate,
    ChampionConsistency,
    DayOutcome,
    Registry,
    mlflow_model_version_url,
    mlflow_run_url,
    mlflow_ui_base,
    register_day,
    skipped,
)
from streamrec_assets.errors import NeverMaterializedError
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, MLflowResource, Storage
from streamrec_assets.settings import get_settings

ASSET = "registered_model"
POOL = "registry"
CHAMPION_CHECK = "champion_is_latest_promoted"
LINEAGE_UPSTREAM = ("raw_events", "training_examples", "ranking_model", "retrieval_model", "model_evaluation")


class RegistryConfig(dg.Config):
    promotion_tolerance: float = Field(
        default_factory=lambda: get_settings().promotion_tolerance,
        ge=0.0,
        description="The challenger is promoted when its NDCG@20 >= the champion's on the same day minus this "
        "(default STREAMREC_PROMOTION_TOLERANCE or 0.005).",
    )
    decision_wait_seconds: float = Field(
        default=DECISION_WAIT_S,
        ge=0.0,
        description="A run that finds a version registered by another run waits this long after the version's "
        "creation for that run's promotion decision before deciding itself (its registrant died).",
    )


@dg.asset(
    group_name="training",
    kinds={"mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["feast_feature_views"],
    pool=POOL,
    check_specs=[
        contract_check_spec(ASSET),
        check_spec(
            CHAMPION_CHECK,
            ASSET,
            "After the day's registration, MLflow alias 'champion' points at the version of the latest recorded "
            "promotion decision (version tag streamrec.promotion); no alias while nothing was promoted. Fails "
            "when the alias was moved outside the gate or a promotion was recorded but never applied.",
            blocking=False,
        ),
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    description="A registered MLflow version of streamrec-ranker per trained day (alias challenger), promoted "
    "to champion by the NDCG@20 gate; exactly one version per input fingerprint and one recorded decision, "
    "also under concurrent runs. One row per day: version, run, registration, decision and reason. Each "
    "day's metadata links the MLflow run and model version (the MLflow UI at the tracking server, or "
    "http://127.0.0.1:5000 from `make mlflow-ui` for a local store); the day's ranking_model partition gets "
    "the same links as an observation.",
)
def registered_model(
    context: dg.AssetExecutionContext,
    config: RegistryConfig,
    mlflow: MLflowResource,
    storage: Storage,
    feast: FeastResource,
    model_evaluation: pd.DataFrame,
    ranking_model: pd.DataFrame,
):
    registry = open_registry(mlflow, config.decision_wait_seconds)
    lineage_base = _lineage_base(context, feast, config.promotion_tolerance)
    cards = ranking_model.set_index("date")
    ui = mlflow_ui_base(mlflow.tracking_uri)

    def compute(day: str) -> DayResult:
        card = cards.loc[day]
        table = model_evaluation[model_evaluation["date"] == day]
        if card["status"] != OK or table.empty:
            outcome = skipped(day, f"no trained ranker for {day} ({card['status']})", registry)
        else:
            candidate = build_candidate(context, storage, day, card, metric_values(table), lineage_base)
            outcome = register_day(
                registry,
                candidate,
                context.run.run_id,
                lambda: _evaluation_set(storage, day),
                config.promotion_tolerance,
            )
        context.log.info(f"{day}: {outcome.status.value} (version {outcome.version}); {outcome.reason}")
        frame = pd.DataFrame([outcome.row()])
        links = mlflow_links(registry, outcome, ui)
        if outcome.version >= 1:  # the ranker of the day is in MLflow now, whatever this day's audit says
            context.log_event(model_observation(registry.name, outcome, links))
        return DayResult(
            tables={ASSET: frame},
            checks=[champion_check(registry.consistency())],
            metadata={ASSET: day_figures(frame, outcome, mlflow, links)},
        )

    yield from run_days(context, storage, [ASSET], compute)


# --------------------------------------------------------------------------------------- helpers


def open_registry(mlflow: MLflowResource, decision_wait_s: float = DECISION_WAIT_S) -> Registry:
    from mlflow.exceptions import MlflowException

    client = mlflow.client()
    try:
        experiment_id = mlflow.experiment_id(client)
    except MlflowException:  # a concurrent run created the experiment between our lookup and create
        experiment_id = mlflow.experiment_id(client)
    registry = Registry(client, mlflow.registered_model, experiment_id, decision_wait_s=decision_wait_s)
    registry.ensure_model("StreamRec XGBoost ranker (rank:ndcg).")
    return registry


def _lineage_base(context: dg.AssetExecutionContext, feast: FeastResource, tolerance: float) -> dict:
    """The parts of the lineage record shared by every day of the step."""
    from streamrec_assets import lineage
    from streamrec_assets.feature_repo import FEATURE_VIEWS, view_version

    store = feast.store()
    return {
        "code_versions": _code_versions(context, (*LINEAGE_UPSTREAM, ASSET)),
        "config_hash": lineage.stable_hash({"tolerance": tolerance, "settings": _settings_for_hash()}),
        "feast_project": store.project,
        "feature_views": {view: view_version(store, view) for view in FEATURE_VIEWS},
    }


def build_candidate(
    context: dg.AssetExecutionContext, storage: Storage, day: str, card: pd.Series, metrics: dict, base: dict
) -> Candidate:
    """The day's model as a registry candidate: fingerprint, MLflow params/metrics, lazy model and lineage."""
    from streamrec_assets import lineage

    fingerprint = lineage.input_fingerprint(
        card["model_sha256"], day, metrics, base["code_versions"].get(ASSET), base["config_hash"]
    )
    upstream = upstream_partitions(day)

    def record() -> dict:
        return {
            "git_sha": lineage.git_sha(),
            "code_versions": base["code_versions"],
            "config_hash": base["config_hash"],
            "partition": day,
            "upstream_partitions": upstream,
            "data_versions": lineage.data_versions(context.instance, upstream),
            "feast_project": base["feast_project"],
            "feature_views": base["feature_views"],
            "model_sha256": card["model_sha256"],
            "input_fingerprint": fingerprint,
            "dagster_run_id": context.run.run_id,
            "packages": lineage.package_versions(),
        }

    return Candidate(
        day=day,
        fingerprint=fingerprint,
        params={
            "partition": day,
            "best_iteration": int(card["best_iteration"]),
            "train_rows": int(card["train_rows"]),
            "validation_day": card["validation_day"],
            **{f"xgb_{k}": v for k, v in json.loads(card["params"]).items()},
        },
        metrics={**metrics, "validation_ndcg_at_20": float(card["validation_ndcg_at_20"])},
        description=f"Ranker trained through {card['validation_day']}, evaluated on {day}.",
        load_model=lambda: storage.read_bytes("ranking_model", day, "model.ubj"),
        lineage=record,
    )


def champion_check(consistency: ChampionConsistency) -> dg.AssetCheckResult:
    """The day's ``champion_is_latest_promoted`` result (:func:`streamrec_assets.core.registry.champion_consistency`)."""
    return dg.AssetCheckResult(
        asset_key=ASSET,
        check_name=CHAMPION_CHECK,
        passed=consistency.passed,
        metadata={
            "note": consistency.note,
            "champion_version": int(consistency.champion or -1),
            "latest_promoted_version": int(consistency.expected or -1),
            "versions": consistency.versions,
            "promotions": consistency.promotions,
            "undecided_versions": consistency.undecided,
        },
    )


def _evaluation_set(storage: Storage, day: str) -> pd.DataFrame:
    try:
        return storage.read_table("model_evaluation", day, EVALUATION_SET)
    except FileNotFoundError as exc:
        where = str(storage.path("model_evaluation", day, EVALUATION_SET))
        raise NeverMaterializedError(f"model_evaluation[{day}]", where) from exc


def day_figures(
    frame: pd.DataFrame, outcome: DayOutcome, mlflow: MLflowResource, links: dict[str, Any] | None = None
) -> dict:
    """The day's metadata: the record plus the figures the UI plots and the alert sensor reads,
    and the MLflow UI links of :func:`mlflow_links`."""
    row = frame.iloc[0]
    return day_metadata(
        frame,
        preview_rows=1,
        registered_model=mlflow.registered_model,
        tracking_uri=_redacted(mlflow.tracking_uri),
        status=outcome.status.value,
        registration=str(row["registration"]),
        decision=outcome.reason,
        version=int(row["version"]),
        mlflow_run_id=str(row["run_id"]) or None,  # None: left out (a skipped day has no run)
        champion_version=int(row["champion_version"]),
        promoted=int(outcome.promoted),
        challenger_ndcg_at_20=float(row["challenger_ndcg"]),
        champion_ndcg_at_20=float(row["champion_ndcg"]),
        ndcg_at_20=float(row["ndcg_at_20"]),
        popularity_ndcg_at_20=float(row["popularity_ndcg_at_20"]),
        **(links or {}),
    )


def mlflow_links(registry: Registry, outcome: DayOutcome, base: str) -> dict[str, Any]:
    """URL metadata into the MLflow UI at ``base``: the day's model version and the run that logged
    it, and the champion's version (none for what a skipped day lacks)."""
    links: dict[str, Any] = {}
    if outcome.version >= 1:
        links["mlflow_model_version_url"] = dg.MetadataValue.url(
            mlflow_model_version_url(base, registry.name, outcome.version)
        )
    if outcome.run_id:
        experiment_id = _experiment_of(registry, outcome.run_id)
        links["mlflow_run_url"] = dg.MetadataValue.url(mlflow_run_url(base, experiment_id, outcome.run_id))
    if outcome.champion_version >= 1:
        links["mlflow_champion_url"] = dg.MetadataValue.url(
            mlflow_model_version_url(base, registry.name, outcome.champion_version)
        )
    return links


def _experiment_of(registry: Registry, run_id: str) -> str:
    """The experiment of a run (a reused version's run may predate a change of experiment)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(registry.client.get_run(run_id).info.experiment_id)
    except MlflowException:
        return str(registry.experiment_id)


def model_observation(name: str, outcome: DayOutcome, links: dict[str, Any]) -> dg.AssetObservation:
    """Where the day's ranker (``ranking_model[D]``) lives in MLflow, recorded on that partition:
    ranking_model itself never talks to MLflow; its model is registered here."""
    return dg.AssetObservation(
        asset_key="ranking_model",
        partition=outcome.day,
        description=f"Registered in MLflow as {name} version {outcome.version} "
        f"({outcome.registration.value if outcome.registration else 'registered'}) by registered_model.",
        metadata={
            "registered_model": name,
            "version": int(outcome.version),
            "mlflow_run_id": outcome.run_id,
            "registration": outcome.registration.value if outcome.registration else "",
            **{k: v for k, v in links.items() if k != "mlflow_champion_url"},
        },
    )


def _redacted(uri: str) -> str:
    """A tracking URI without credentials (``postgresql://user:secret@host`` -> ``postgresql://***@host``)."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def _code_versions(context: dg.AssetExecutionContext, assets: tuple[str, ...]) -> dict[str, str | None]:
    """Code versions from the whole repository (the job of a subset run only knows its own assets)."""
    try:
        graph = context.repository_def.asset_graph
    except Exception:  # in-process materialize() without a repository
        graph = context.job_def.asset_layer.asset_graph
    return {
        key: graph.get(dg.AssetKey(key)).code_version if graph.has(dg.AssetKey(key)) else None for key in assets
    }


def upstream_partitions(day: str, first_day: str | None = None) -> dict[str, list[str]]:
    """The upstream partitions of day ``day``'s model, clipped at ``first_day`` (default: the first
    partition of ``daily_partitions``, the start of history)."""
    from streamrec_assets.lineage import clip_to_history

    if first_day is None:
        first_day = daily_partitions.get_first_partition_key() or day
    return clip_to_history(
        {
            "training_examples": window_days(day, RANKER_WINDOW_DAYS, end_offset=-2),  # train + early stopping
            "ranking_model": [day],
            "retrieval_model": [day],
            "model_evaluation": [day],
            "raw_events": window_days(day, 2),  # the gate day D-1 and the hold-out D
            "taste_model": window_days(day, 2, end_offset=-1),  # the taste the gate and hold-out slates see
        },
        first_day,
    )


def _settings_for_hash() -> dict:
    settings = get_settings()
    return {"start_date": settings.start_date, "feast_online_store": settings.feast_online_store}
