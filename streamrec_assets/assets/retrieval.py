"""Group ``training``: candidate generation (item co-visitation with a popularity fallback).

Partition D is trained on the plays of [D-28, D-1] (never day D) and measured by
Recall@100 of its candidates against D's plays. The model is three small Parquet
tables and a manifest next to the partition's model card (``data.parquet``), all
published together.
"""

import json

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.core.dates import day_offset, window_days
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import Storage
from streamrec_assets.storage import PartitionReader

GROUP = "training"
ASSET = "retrieval_model"
RETRIEVAL_WINDOW_DAYS = 28
N_CANDIDATES = 100
OK = "ok"
INSUFFICIENT = "insufficient_history"
PLAY_COLUMNS = ["date", "user_id", "item_id", "event_type", "event_timestamp"]


def plays_of(events: pd.DataFrame) -> pd.DataFrame:
    if events.empty:
        return pd.DataFrame(
            {"date": pd.Series(dtype=object), "user_id": pd.Series(dtype="int64"),
             "item_id": pd.Series(dtype="int64"), "event_timestamp": pd.Series(dtype="datetime64[us, UTC]")}
        )
    return events.loc[events["event_type"] == "play", ["date", "user_id", "item_id", "event_timestamp"]]


def ranked_candidates(cands: pd.DataFrame) -> pd.DataFrame:
    """Candidate order (covis score, then popularity fill) as a ranking."""
    return cands.assign(rank=cands.groupby("user_id").cumcount() + 1)[["user_id", "item_id", "rank"]]


def load_retrieval(storage: Storage, day: str):
    """The published retrieval model of ``day``."""
    from streamrec_assets.core.retrieval import RetrievalModel
    from streamrec_assets.errors import NeverMaterializedError

    manifest = storage.read_manifest(ASSET, day)
    if manifest is None:
        raise NeverMaterializedError(f"{ASSET}[{day}]", str(storage.path(ASSET, day, "manifest.json")))
    frames = {name: storage.read_table(ASSET, day, f"{name}.parquet") for name in manifest["tables"]}
    return RetrievalModel.from_frames(frames, manifest["trained_through"], manifest["window_days"])


@dg.asset(
    name=ASSET,
    group_name=GROUP,
    kinds={"parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "events": dg.AssetIn(
            "raw_events", partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-RETRIEVAL_WINDOW_DAYS)
        )
    },
    retry_policy=STORAGE_RETRY,
    code_version="1",
    automation_condition=EAGER_GATED,
    description="Candidate generation: item co-visitation over the plays of the 28 days before D, with a "
    "popularity fallback for cold users. Recall@100 on day D's plays in metadata.",
)
def retrieval_model(context: dg.AssetExecutionContext, storage: Storage, events: PartitionReader):
    from streamrec_assets.core.metrics import recall_at_k
    from streamrec_assets.core.retrieval import candidates, train_covisitation

    def compute(day: str) -> DayResult:
        window = plays_of(events.read_days(window_days(day, RETRIEVAL_WINDOW_DAYS, end_offset=-1), PLAY_COLUMNS))
        model = train_covisitation(
            window[["user_id", "item_id", "event_timestamp"]], day_offset(day, -1), RETRIEVAL_WINDOW_DAYS
        )
        frames = model.to_frames()
        today = plays_of(events.read(day, PLAY_COLUMNS)).drop_duplicates(["user_id", "item_id"]).assign(relevance=1)
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
        card = pd.DataFrame(
            [
                {
                    "date": day,
                    "status": status,
                    "uri": str(storage.path(ASSET, day, "")),
                    "trained_through": model.trained_through,
                    "plays_in_window": int(len(window)),
                    "items": int(len(model.popularity)),
                    "neighbor_pairs": int(len(model.neighbors)),
                    "users_with_history": int(model.history["user_id"].nunique()),
                    "recall_at_100_next_day": recall,
                }
            ]
        )
        return DayResult(
            tables={ASSET: card},
            frames={(ASSET, f"{name}.parquet"): frame for name, frame in frames.items()},
            files={(ASSET, "manifest.json"): json.dumps(manifest, indent=2, sort_keys=True).encode()},
            metadata={
                ASSET: day_metadata(
                    card,
                    status=status,
                    recall_at_100=dg.MetadataValue.float(recall),
                    plays_in_window=int(len(window)),
                    neighbor_pairs=int(len(model.neighbors)),
                )
            },
        )

    yield from run_days(context, storage, [ASSET], compute)
