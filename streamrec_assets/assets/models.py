"""Group ``training``: the XGBoost ranker and the offline evaluation of the models.

Model partition D is trained on days strictly before D and evaluated on day D,
a true hold-out. Three days, three jobs: the ranker trains on the training examples
of [D-15, D-3] and early-stops on D-2; the registry's promotion gate compares it with
the champion on the slates of D-1 (the *gate day*, seen by neither model); the
reported hold-out metrics are those of D, which no decision has looked at
(retrieval: :mod:`streamrec_assets.assets.retrieval`). Models are
files in their own formats (XGBoost UBJSON) published with the partition's model
card (``data.parquet``) in one write-audit-publish transaction.
"""

import hashlib
import json
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import DayResult, check_spec, contract_check_spec, day_metadata, run_days
from streamrec_assets.assets.retrieval import N_CANDIDATES, OK
from streamrec_assets.automation import EAGER_GATED, MODELS_FRESHNESS, STORAGE_RETRY
from streamrec_assets.core.dates import day_offset, window_days
from streamrec_assets.core.evaluation import METHODS, LiftVerdict, oracle_lift_captured
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import FeastResource, LandingZone, Storage
from streamrec_assets.storage import PartitionReader

GROUP = "training"
#: The days of examples a ranker learns from: [D-15, D-2] (13 training days, then the early-stopping day).
RANKER_WINDOW_DAYS = 14
#: Days a ranker trains on once its window is full ([D-15, D-3]); before that, ``beats_popularity`` does not judge.
FULL_TRAIN_DAYS = RANKER_WINDOW_DAYS - 1
#: The early-stopping day (D-2) and the promotion gate's day (D-1), as offsets from the model day D.
EARLY_STOPPING_OFFSET = -2
GATE_OFFSET = -1
#: The gate day's scored slates (``model_evaluation/date=D/gate_set.parquet``), re-scored by the registry with
#: the champion.
EVALUATION_SET = "gate_set.parquet"
INSUFFICIENT = "insufficient_history"
BEATS_POPULARITY_CHECK = "beats_popularity"


@dg.asset(
    group_name=GROUP,
    kinds={"xgboost"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "examples": dg.AssetIn(
            "training_examples",
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=EARLY_STOPPING_OFFSET - FULL_TRAIN_DAYS, end_offset=EARLY_STOPPING_OFFSET
            ),
        )
    },
    pool="training",
    check_specs=[
        contract_check_spec(
            "ranking_model",
            "The model card satisfies contracts.ranking_model_schema: a trained day names its UBJSON model, "
            "its sha256, best iteration, validation NDCG@20 and features; an untrained day names no model.",
        )
    ],
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    retry_policy=STORAGE_RETRY,
    description="XGBoost ranker (rank:ndcg, one query per user and day) trained on the training examples of "
    "[D-15, D-3], early-stopped on D-2 (D-1 is the promotion gate's day, D the hold-out); saved in XGBoost's UBJSON format. The value is the model card. "
    "Once registered_model has registered a day's ranker in MLflow, the partition carries an observation "
    "with its version, run id and links to both in the MLflow UI.",
)
def ranking_model(context: dg.AssetExecutionContext, storage: Storage, examples: PartitionReader):
    from streamrec_assets.core.ranking import ranker_features, train_ranker_batches
    from streamrec_assets.engine import spark_engine
    from streamrec_assets.storage import read_parquet_schema

    def footer(d: str) -> tuple[set[str], pd.DataFrame, int]:
        """A present day's column names, empty frame (dtypes) and row count, from its Parquet footer."""
        schema = read_parquet_schema(examples.path(d))
        return set(schema.names), schema.empty_table().to_pandas(), examples.read_arrow(d, columns=[]).num_rows

    def loader(d: str, names: set[str]):
        """Reads day ``d`` with the asked columns it has, on each XGBoost pass (nothing is held)."""
        return lambda columns: examples.read_arrow(d, [c for c in columns if c in names])

    engine = spark_engine()
    if engine is not None and engine.is_connect:  # xgboost.spark needs a SparkContext (no Spark Connect)
        context.log.warning(f"ranking_model trains in the step process: SparkXGBRanker cannot run over Spark "
                            f"Connect ({engine.master})")
        engine = None

    def compute(day: str) -> DayResult:
        # The window is streamed one day per XGBoost batch, reading only the keys, the label and
        # the features (core.ranking.train_ranker_batches): memory grows with one day, not 13.
        validation_day = day_offset(day, EARLY_STOPPING_OFFSET)
        window = [d for d in window_days(day, FULL_TRAIN_DAYS, end_offset=EARLY_STOPPING_OFFSET - 1)
                  if d in examples.present]
        heads = {d: head for d in window if (head := footer(d))[2]}
        valid_head = footer(validation_day) if validation_day in examples.present else (set(), pd.DataFrame(), 0)
        features = ranker_features(frame for _, frame, _ in heads.values())
        card = {
            "date": day,
            "status": INSUFFICIENT,
            "model_uri": "",
            "model_sha256": "",
            "train_days": len(heads),
            "validation_day": validation_day,
            "train_rows": int(sum(n for _, _, n in heads.values())),
            "validation_rows": int(valid_head[2]),
            "best_iteration": -1,
            "validation_ndcg_at_20": float("nan"),
            "features": "[]",
            "params": "{}",
        }
        files: dict[tuple[str, str], bytes] = {}
        try:
            if not heads:
                trained = None
            elif engine is not None and valid_head[2]:  # SparkXGBRanker on the cluster
                from streamrec_assets import spark_jobs

                trained = spark_jobs.train_ranker(engine, storage, list(heads), validation_day, features)
            else:
                trained = train_ranker_batches(
                    [loader(d, names) for d, (names, _, _) in heads.items()],
                    loader(validation_day, valid_head[0]) if valid_head[2] else lambda columns: None,
                    features,
                )
        except ValueError as exc:
            context.log.warning(f"{day}: {exc}")
            trained = None
        if trained is not None:
            card.update(
                status=OK,
                model_uri=str(storage.path("ranking_model", day, "model.ubj")),
                model_sha256=hashlib.sha256(trained.model_bytes).hexdigest(),
                train_rows=trained.train_rows,
                validation_rows=trained.validation_rows,
                best_iteration=trained.best_iteration,
                validation_ndcg_at_20=trained.validation_ndcg,
                features=json.dumps(trained.features),
                params=json.dumps(trained.params, sort_keys=True),
            )
            files[("ranking_model", "model.ubj")] = trained.model_bytes
            manifest = {**card, "features": trained.features}
            files[("ranking_model", "manifest.json")] = json.dumps(manifest, indent=2, sort_keys=True).encode()
        else:
            context.log.info(f"{day}: not enough history to train a ranker ({card['train_rows']} train rows)")
        frame = pd.DataFrame([card])
        meta = day_metadata(
            frame.drop(columns=["features", "params"]),
            status=card["status"],
            trained=int(card["status"] == OK),
            validation_ndcg_at_20=float(card["validation_ndcg_at_20"]),
            best_iteration=int(card["best_iteration"]),
            engine="embedded" if engine is None else f"spark ({engine.master})",
            train_days=int(card["train_days"]),
            train_rows=int(card["train_rows"]),
            validation_rows=int(card["validation_rows"]),
        )
        return DayResult(tables={"ranking_model": frame}, files=files, metadata={"ranking_model": meta})

    yield from run_days(context, storage, ["ranking_model"], compute)


#: Hold-out day D reads the raw events of [D-29, D]: D's plays, and the consumption window [D-29, D-1]
#: of the exclusion policy (the window serving uses on D-1).
EVALUATION_CONSUMPTION_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-29, end_offset=0)


class EvaluationConfig(dg.Config):
    max_users: int = Field(default=2000, ge=1, description="Users evaluated per day (deterministic sample).")
    exclude: Literal["completed", "played", "none"] = Field(
        default="completed",
        description="Exclusion policy of the Recall@100 lists, as batch_recommendations applies it: items the "
        "user completed ('completed'), played ('played') in [D-29, D-1], or nothing ('none').",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"feast", "xgboost"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    retry_policy=STORAGE_RETRY,
    ins={"raw_events": dg.AssetIn(partition_mapping=EVALUATION_CONSUMPTION_MAPPING)},
    # Taste as of the hold-out D (model of D-1) and of the gate day D-1 (model of D-2).
    deps=[dg.AssetDep("taste_model", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-2, end_offset=-1))],
    check_specs=[
        contract_check_spec("model_evaluation"),
        check_spec(
            BEATS_POPULARITY_CHECK,
            "model_evaluation",
            "The ranker's NDCG@20 on the day's hold-out is at least the popularity baseline's (warning, not "
            "blocking). Passes unjudged, with a note: a day without a trained ranker, a ranker whose 13-day "
            "training window is not full yet, fewer users measured than core.evaluation.MIN_USERS_FOR_LIFT.",
            blocking=False,
        ),
    ],
    automation_condition=EAGER_GATED,
    freshness_policy=MODELS_FRESHNESS,
    description="Hold-out evaluation on day D vs a popularity baseline and an oracle: the data source's "
    "reference ranking (the generator's hidden affinity), when the landing zone provides one for D; without "
    "it the oracle rows are left out. NDCG@20 of the ranking of each user's logged impressions of D (graded "
    "labels), Recall@100 of the retrieval candidates against D's plays. The value is the metrics table (one "
    "row per day and method). The ranker's scored slates of the gate day D-1 are kept next to it "
    "(gate_set.parquet) for the registry's promotion gate, so no decision ever looks at the hold-out D.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    storage: Storage,
    feast: FeastResource,
    landing: LandingZone,
    ranking_model: pd.DataFrame,
    retrieval_model: pd.DataFrame,
    raw_events: PartitionReader,
    item_catalog: pd.DataFrame,
    user_catalog: pd.DataFrame,
):
    from streamrec_assets.assets.retrieval import load_retrieval
    from streamrec_assets.assets.serving import ConsumptionWindow
    from streamrec_assets.core.evaluation import (
        beats_popularity,
        evaluation_table,
        exclusion_effect,
        recall_lists,
        relevance_of_day,
    )
    from streamrec_assets.core.metrics import rank_by_score
    from streamrec_assets.core.registry import ndcg_on
    from streamrec_assets.core.serving import consumption_days, excluded_pairs

    store = feast.store()
    cards = ranking_model.set_index("date")
    consumed_by = ConsumptionWindow(raw_events, item_catalog)
    slater = _Slates(store, storage, item_catalog, user_catalog, config.max_users)

    def compute(day: str) -> DayResult:
        card = cards.loc[day]
        if card["status"] != OK:
            context.log.info(f"{day}: no ranking model to evaluate ({card['status']}).")
            empty = _empty_metrics()
            return DayResult(tables={"model_evaluation": empty}, checks=[_lift_check(beats_popularity(empty))],
                             metadata={"model_evaluation": day_metadata(empty, evaluated=False)})
        events = raw_events.read(day)
        slates, users = slater.slates(events)
        plays = relevance_of_day(events, item_catalog)
        plays = plays[plays["user_id"].isin(users)]
        retrieval = load_retrieval(storage, day)
        allowed = item_catalog.loc[item_catalog["release_date"] <= day, "item_id"].to_numpy()
        model_bytes = storage.read_bytes("ranking_model", day, "model.ubj")

        # Ranking: re-order each user's logged impressions of day D (every feature as of the start of D).
        feats = slater.scored(day, slates, model_bytes)
        # The promotion gate's day D-1: the same measure on its slates (the registry re-scores them with the
        # champion), so the hold-out D stays untouched by any decision.
        gate_day = day_offset(day, GATE_OFFSET)
        gate = slater.gate_set(gate_day, raw_events, model_bytes, feats)
        gate_ndcg = ndcg_on(gate, gate["score"].to_numpy()) if len(gate) else float("nan")
        popularity = slates[["user_id", "item_id"]].merge(retrieval.popularity, on="item_id", how="left")
        ranking = {
            "ours": rank_by_score(feats[["user_id", "item_id", "score"]], N_CANDIDATES),
            "popularity": rank_by_score(
                popularity.assign(score=popularity["plays"].fillna(0))[["user_id", "item_id", "score"]], N_CANDIDATES
            ),
        }
        # Retrieval: the top-100 candidates of each user against the plays of day D, without the items the
        # exclusion policy removes from the user's consumption of [D-29, D-1] (as serving does on D-1).
        consumed = consumed_by.window(consumption_days(day_offset(day, -1)), users)
        excluded = excluded_pairs(consumed, config.exclude)
        reference = _reference(context, landing, day)
        retrieval_lists = recall_lists(retrieval, users, allowed, excluded, N_CANDIDATES, reference)
        unfiltered = recall_lists(retrieval, users, allowed, None, N_CANDIDATES, reference)
        if reference is not None:
            ranking["oracle"] = _oracle_slates(context, day, slates, reference)
        table = evaluation_table(ranking, slates, retrieval_lists, plays).assign(
            date=day, model_sha256=card["model_sha256"]
        )
        metrics = table[list(_empty_metrics().columns)]
        effect = exclusion_effect(retrieval_lists, unfiltered, plays, config.exclude, excluded, N_CANDIDATES)
        meta = day_metadata(
            metrics, preview_rows=len(METHODS), evaluated=True, oracle_reference=reference is not None,
            gate_day=gate_day, gate_ndcg_at_20=gate_ndcg, gate_users=int(gate["user_id"].nunique()) if len(gate) else 0,
            **{**effect, **_metric_metadata(table)},
        )
        meta["metrics"] = dg.MetadataValue.md(
            table.drop(columns=["model_sha256"]).to_markdown(index=False, floatfmt=".4f")
        )
        # The gate day's scored slates, for the registry's promotion gate to re-score with the champion.
        return DayResult(
            tables={"model_evaluation": metrics},
            frames={("model_evaluation", EVALUATION_SET): gate},
            checks=[_lift_check(beats_popularity(table, int(card["train_days"]), FULL_TRAIN_DAYS))],
            metadata={"model_evaluation": meta},
        )

    yield from run_days(context, storage, ["model_evaluation"], compute)


class _Slates:
    """Each user's logged slate of a day (a deterministic sample of users), scored by a ranker with
    every feature as of the start of that day (:func:`streamrec_assets.core.training.ranking_time`).

    A day's features do not depend on the model: the hold-out D of one model is the gate day of
    the next, so the features of the two newest days are kept and a range looks each day up once.
    """

    KEPT_DAYS = 2

    def __init__(self, store, storage: Storage, items: pd.DataFrame, users: pd.DataFrame, max_users: int) -> None:
        self.store, self.storage, self.items, self.users, self.max_users = store, storage, items, users, max_users
        self._features: dict[str, pd.DataFrame] = {}

    def slates(self, events: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        from streamrec_assets.core.evaluation import impression_slates, sample_users
        from streamrec_assets.core.training import label_impressions

        slates = impression_slates(label_impressions(events, self.items))
        users = sample_users(slates["user_id"].to_numpy(), self.max_users)
        return slates[slates["user_id"].isin(users)].reset_index(drop=True), users

    def _day_features(self, day: str, slates: pd.DataFrame) -> pd.DataFrame:
        """Every ranker feature of ``day``'s slates (the day's :meth:`slates`), looked up once per day."""
        from streamrec_assets.assets.taste import taste_before
        from streamrec_assets.core.training import add_context_features, ranking_time
        from streamrec_assets.feature_repo import historical_features

        if day not in self._features:
            as_of = ranking_time(day)
            feats = historical_features(self.store, slates.assign(event_timestamp=as_of))
            self._features[day] = add_context_features(feats, self.items, self.users, as_of,
                                                       taste_before(self.storage, day))
            for old in sorted(self._features)[: -self.KEPT_DAYS]:
                del self._features[old]
        return self._features[day]

    def scored(self, day: str, slates: pd.DataFrame, model_bytes: bytes) -> pd.DataFrame:
        from streamrec_assets.core.ranking import score

        feats = self._day_features(day, slates)
        return feats.assign(score=score(model_bytes, feats))

    def gate_set(self, day: str, raw_events: PartitionReader, model_bytes: bytes, like: pd.DataFrame) -> pd.DataFrame:
        """The gate day's scored slates (``date`` = the gate day); no rows (``like``'s columns) without its events."""
        if day not in raw_events.present:
            return like.iloc[0:0].assign(date=pd.Series(dtype=object))
        slates = None if day in self._features else self.slates(raw_events.read(day))[0]
        return self.scored(day, slates, model_bytes).assign(date=day)


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
    """Flat metric names (as logged to MLflow) from a metrics table; ``oracle_lift_captured``
    (:func:`streamrec_assets.core.evaluation.oracle_lift_captured`) only when it is defined."""
    by = table.set_index("method")
    out: dict[str, float] = {}
    for method, prefix in (("ours", ""), ("popularity", "popularity_"), ("oracle", "oracle_")):
        if method in by.index:
            out[f"{prefix}ndcg_at_20"] = float(by.loc[method, "ndcg_at_20"])
            out[f"{prefix}recall_at_100"] = float(by.loc[method, "recall_at_100"])
    if out.get("popularity_ndcg_at_20"):
        out["lift_ndcg_vs_popularity"] = out["ndcg_at_20"] / out["popularity_ndcg_at_20"]
    if "ndcg_at_20" in out and "popularity_ndcg_at_20" in out:
        captured = oracle_lift_captured(out["ndcg_at_20"], out["popularity_ndcg_at_20"], out.get("oracle_ndcg_at_20"))
        if captured is not None:
            out["oracle_lift_captured"] = captured
    return out


def _metric_metadata(table: pd.DataFrame) -> dict:
    """The day's metrics as plain numbers (Dagster plots them per partition)."""
    values = metric_values(table)
    meta: dict = dict(values)
    if "popularity_ndcg_at_20" in values:
        meta["ndcg_at_20_gain_vs_popularity"] = values["ndcg_at_20"] - values["popularity_ndcg_at_20"]
    meta["users_evaluated"] = int(table["users"].max())
    return meta


def _lift_check(verdict: LiftVerdict) -> dg.AssetCheckResult:
    """The ``beats_popularity`` result of a day (:func:`streamrec_assets.core.evaluation.beats_popularity`)."""
    return dg.AssetCheckResult(
        asset_key="model_evaluation",
        check_name=BEATS_POPULARITY_CHECK,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "judged": verdict.judged,
            "note": verdict.note,
            "ndcg_at_20_gain_vs_popularity": verdict.lift,
            "ndcg_at_20": verdict.ndcg_at_20,
            "popularity_ndcg_at_20": verdict.popularity_ndcg_at_20,
            "users": verdict.users,
        },
    )


def _reference(context: dg.AssetExecutionContext, landing: LandingZone, day: str) -> pd.DataFrame | None:
    """The data source's reference ranking of the day (:mod:`streamrec_assets.core.reference`); None when
    the landing zone has none (real data) or an unreadable one (it is optional: the evaluation goes on)."""
    from streamrec_assets.errors import DeliveryError

    try:
        return landing.read_reference(day)
    except DeliveryError as exc:
        context.log.warning(f"{day}: the oracle is left out: {exc}")
        return None


def _oracle_slates(context: dg.AssetExecutionContext, day: str, slates: pd.DataFrame, reference: pd.DataFrame):
    """The oracle's ordering of each user's slate, by reference score."""
    from streamrec_assets.core.metrics import rank_by_score
    from streamrec_assets.core.reference import slate_scores

    scores, missing = slate_scores(slates, reference)
    if missing:
        context.log.warning(f"{day}: the reference lacks {missing} of {len(scores)} slate pairs; ranked last")
    return rank_by_score(scores, N_CANDIDATES)
