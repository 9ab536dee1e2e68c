"""The taste model: what each user plays when shown an item (:mod:`streamrec_assets.core.taste`).

* ``user_item_daily_outcomes`` (group ``features``): one day's labelled impressions per
  (user, item): impressions, played and completed ones, the item's genre code. A daily
  aggregate like ``user_daily_activity``: the taste model never reads raw events.
* ``taste_model`` (group ``training``): partition D is a logistic matrix factorisation of the
  outcomes of [D-27, D] (the 28 days ending with D, like the rolling features: *as of the end
  of D*). Its scores are ranker features: the training examples and the evaluation of day X
  use the model of X-1, serving on D (for D+1) the model of D, so every ranked day sees the
  taste of the days before it, exactly as it sees the Feast features.
"""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from streamrec_assets.assets.common import DayResult, contract_check_spec, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.core.dates import day_offset, window_days
from streamrec_assets.partitions import daily_partitions, feature_window_mapping, single_run
from streamrec_assets.resources import Storage
from streamrec_assets.storage import PartitionReader

OUTCOMES = "user_item_daily_outcomes"
ASSET = "taste_model"
TASTE_WINDOW_DAYS = 28
OK = "ok"
INSUFFICIENT = "insufficient_history"
OUTCOME_EVENT_COLUMNS = ["date", "user_id", "item_id", "session_id", "event_type", "event_timestamp", "watch_seconds"]
OUTCOME_READ = ["user_id", "item_id", "genre_code", "impressions", "positives"]
#: The fit's budget (TasteConfig.max_impressions): about 3 minutes of L-BFGS on 2 cores.
MAX_IMPRESSIONS = 4_000_000


@dg.asset(
    name=OUTCOMES,
    group_name="features",
    kinds={"parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    check_specs=[contract_check_spec(OUTCOMES)],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    description="Per user, item and day: impressions, impressions that led to a play (positives) and to a "
    "completed play (completions), with the item's genre code. The labels are training_examples' (a play "
    "counts for the latest impression of the same user, item and session before it).",
)
def user_item_daily_outcomes(
    context: dg.AssetExecutionContext, storage: Storage, raw_events: PartitionReader, item_catalog: pd.DataFrame
):
    from streamrec_assets.core.taste import outcomes_of_day
    from streamrec_assets.core.training import label_impressions

    def compute(day: str) -> DayResult:
        outcomes = outcomes_of_day(label_impressions(raw_events.read(day, OUTCOME_EVENT_COLUMNS), item_catalog),
                                   item_catalog)
        meta = day_metadata(
            outcomes,
            impressions=int(outcomes["impressions"].sum()),
            positives=int(outcomes["positives"].sum()),
            users=int(outcomes["user_id"].nunique()),
            items=int(outcomes["item_id"].nunique()),
        )
        return DayResult(tables={OUTCOMES: outcomes}, metadata={OUTCOMES: meta})

    yield from run_days(context, storage, [OUTCOMES], compute)


class TasteConfig(dg.Config):
    factors: int = Field(default=8, ge=1, le=128, description="Latent dimensions of the user and item vectors.")
    l2: float = Field(default=1.0, gt=0, description="L2 penalty on the summed squared parameters.")
    max_iter: int = Field(default=200, ge=1, description="L-BFGS iterations (the fit stops earlier once converged).")
    max_impressions: int = Field(
        default=MAX_IMPRESSIONS, ge=1,
        description="Impressions fitted at most: the newest days of the 28-day window up to this many (always at "
        "least day D). Bounds the fit's time and memory at any volume; at demo scale the whole window fits.",
    )


@dg.asset(
    name=ASSET,
    group_name="training",
    kinds={"parquet", "scipy"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={"outcomes": dg.AssetIn(OUTCOMES, partition_mapping=feature_window_mapping)},
    check_specs=[
        contract_check_spec(
            ASSET,
            "The model card satisfies contracts.taste_model_schema: trained through D itself, status ok iff "
            "it knows users and items, fitted on the window's impressions.",
        )
    ],
    retry_policy=STORAGE_RETRY,
    automation_condition=EAGER_GATED,
    description="Logistic matrix factorisation of P(play | impression) over the user_item_daily_outcomes of "
    "the 28 days ending with D (the newest of them up to max_impressions): item appeal, the user's taste per genre and 8 latent factors each. The "
    "ranker's taste_* features: training examples and evaluation of day X use the model of X-1, serving on "
    "D uses the model of D. The value is the model card; the parameters are Parquet files next to it.",
)
def taste_model(context: dg.AssetExecutionContext, config: TasteConfig, storage: Storage,
                outcomes: PartitionReader, item_catalog: pd.DataFrame):
    from streamrec_assets.core.taste import fit_taste

    genres = int(item_catalog["genre"].nunique())

    def compute(day: str) -> DayResult:
        # The newest days first, until the impression budget is spent (memory holds only what is fitted).
        window, parts, impressions = [], [], 0
        for d in reversed([d for d in window_days(day, TASTE_WINDOW_DAYS) if d in outcomes.present]):
            if window and impressions >= config.max_impressions:
                break
            part = outcomes.read(d, OUTCOME_READ)
            window.insert(0, d)
            parts.append(part)
            impressions += int(part["impressions"].sum())
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=OUTCOME_READ)
        model = fit_taste(frame, genres, factors=config.factors, l2=config.l2, max_iter=config.max_iter)
        status = INSUFFICIENT if model.empty else OK
        card = pd.DataFrame([{
            "date": day,
            "status": status,
            "trained_through": day,
            "window_days": len(window),
            "users": int(len(model.users)),
            "items": int(len(model.items)),
            "pairs": int(model.pairs),
            "impressions": int(model.impressions),
            "factors": int(model.factors),
            "iterations": int(model.iterations),
            "mean_log_likelihood": model.log_likelihood / model.impressions if model.impressions else float("nan"),
        }])
        manifest = {
            "status": status, "trained_through": day, "global_bias": model.global_bias, "factors": model.factors,
            "genres": model.genres, "l2": config.l2, "window": window,
        }
        return DayResult(
            tables={ASSET: card},
            frames={(ASSET, "users.parquet"): model.users, (ASSET, "items.parquet"): model.items},
            files={(ASSET, "manifest.json"): json.dumps(manifest, indent=2, sort_keys=True).encode()},
            metadata={ASSET: day_metadata(
                card, status=status, users=int(len(model.users)), items=int(len(model.items)),
                impressions=int(model.impressions), iterations=int(model.iterations),
                mean_log_likelihood=float(card["mean_log_likelihood"].iloc[0]),
            )},
        )

    yield from run_days(context, storage, [ASSET], compute)


def load_taste(storage: Storage, day: str):
    """The taste model of ``day`` (:class:`~streamrec_assets.core.taste.TasteModel`); None for a day
    before the first partition (no history: the taste features are missing values)."""
    from streamrec_assets.core.taste import TasteModel
    from streamrec_assets.errors import NeverMaterializedError

    if day < daily_partitions.start.strftime("%Y-%m-%d"):
        return None
    manifest = storage.read_manifest(ASSET, day)
    if manifest is None:
        raise NeverMaterializedError(f"{ASSET}[{day}]", str(storage.path(ASSET, day, "manifest.json")))
    return TasteModel(
        users=storage.read_table(ASSET, day, "users.parquet"),
        items=storage.read_table(ASSET, day, "items.parquet"),
        global_bias=float(manifest["global_bias"]),
        factors=int(manifest["factors"]),
        genres=int(manifest["genres"]),
        log_likelihood=float("nan"),
        pairs=0,
        impressions=0,
        iterations=0,
    )


def taste_before(storage: Storage, day: str):
    """The taste model a ranked day ``day`` sees: the one of the day before (as of ``day`` 00:00)."""
    return load_taste(storage, day_offset(day, -1))
