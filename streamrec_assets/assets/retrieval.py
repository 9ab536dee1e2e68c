"""Candidate generation: item co-visitation with a popularity fallback, trained from daily aggregates.

* ``daily_coplay`` (group ``features``) reduces one day of raw events to what
  co-visitation needs (:func:`streamrec_assets.core.coplay.daily_coplay`), three
  tables published together: ``daily_coplay_pairs`` (item pairs played 1..5 plays
  apart within a user's day), ``daily_coplay_history`` (per user and item: last play,
  plays) and ``daily_coplay_edges`` (each user's first and last 5 plays of the day,
  the carry-over that rebuilds pairs spanning day boundaries).
* ``retrieval_model`` (group ``training``): partition D is trained on the aggregates of
  [D-28, D-1] (never day D), read one day at a time, and measured by Recall@100 of its
  candidates against D's plays (from ``daily_coplay_history`` of D). Its result is the
  one :func:`streamrec_assets.core.retrieval.train_covisitation` gives on the raw plays
  of the window. The model is three small Parquet tables and a manifest next to the
  partition's model card (``data.parquet``), all published together.
"""

import json

import dagster as dg
import pandas as pd

from streamrec_assets.assets.common import DayResult, contract_check_spec, day_metadata, run_days
from streamrec_assets.automation import EAGER_GATED, STORAGE_RETRY
from streamrec_assets.core.dates import day_offset, window_days
from streamrec_assets.partitions import daily_partitions, single_run
from streamrec_assets.resources import Storage
from streamrec_assets.storage import PartitionReader

GROUP = "training"
ASSET = "retrieval_model"
COPLAY_GROUP = "features"
COPLAY_PAIRS = "daily_coplay_pairs"
COPLAY_HISTORY = "daily_coplay_history"
COPLAY_EDGES = "daily_coplay_edges"
COPLAY_ASSETS = (COPLAY_PAIRS, COPLAY_HISTORY, COPLAY_EDGES)
RETRIEVAL_WINDOW_DAYS = 28
N_CANDIDATES = 100
OK = "ok"
INSUFFICIENT = "insufficient_history"
COPLAY_EVENT_COLUMNS = ["user_id", "item_id", "event_type", "event_timestamp"]
#: Day D's model reads the daily aggregates of [D-28, D-1].
RETRIEVAL_WINDOW_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-RETRIEVAL_WINDOW_DAYS, end_offset=-1)
#: ... and day D's history too: its (user, item) plays are what Recall@100 is measured on.
RETRIEVAL_HISTORY_MAPPING = dg.TimeWindowPartitionMapping(start_offset=-RETRIEVAL_WINDOW_DAYS, end_offset=0)


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


#: The window's daily aggregates kept in memory while a range walks forward (at most this many bytes
#: for the three tables together); a single-day step keeps none.
AGGREGATE_CACHE_BYTES = 256 * 2**20


class _WindowCache:
    """Reads one day of an aggregate at a time, keeping the newest days read within a byte budget.

    Consecutive days of a range share 27 of their 28 window days: what fits in the budget is
    read once per range instead of once per day. Memory stays bounded by the window's
    aggregates and by ``budget`` (when the window does not fit, the newest days are kept).
    """

    def __init__(self, reader: PartitionReader, columns, budget: int = AGGREGATE_CACHE_BYTES):
        self.reader, self.columns, self.budget = reader, list(columns), budget
        self.frames: dict[str, pd.DataFrame] = {}
        self.bytes = 0

    def forget_before(self, day: str) -> None:
        for old in [d for d in self.frames if d < day]:
            self.bytes -= int(self.frames.pop(old).memory_usage(index=False).sum())

    def __call__(self, day: str) -> pd.DataFrame:
        frame = self.frames.get(day)
        if frame is None:
            frame = self.reader.read(day, self.columns)
            self.frames[day] = frame
            self.bytes += int(frame.memory_usage(index=False).sum())
            while self.bytes > self.budget and self.frames:
                oldest = min(self.frames)
                self.bytes -= int(self.frames.pop(oldest).memory_usage(index=False).sum())
        return frame


def _play_events(raw_events: PartitionReader, day: str):
    """The plays of one day (user_id, item_id, event_timestamp), filtered in Arrow before pandas."""
    import pyarrow.compute as pc

    table = raw_events.read_arrow(day, COPLAY_EVENT_COLUMNS)
    table = table.filter(pc.equal(table["event_type"], "play")).drop_columns(["event_type"])
    return table.to_pandas()


@dg.multi_asset(
    name="daily_coplay",
    group_name=COPLAY_GROUP,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={"raw_events": dg.AssetIn()},
    outs={
        COPLAY_PAIRS: dg.AssetOut(
            kinds={"parquet"},
            is_required=False,  # subsettable (can_subset): the step writes all three anyway
            automation_condition=EAGER_GATED,
            description="Per day and unordered item pair (item_lo < item_hi): d1..d5 = how often the two items "
            "were played 1..5 plays apart in one user's play sequence of the day (time order).",
        ),
        COPLAY_HISTORY: dg.AssetOut(
            kinds={"parquet"},
            is_required=False,  # subsettable (can_subset): the step writes all three anyway
            automation_condition=EAGER_GATED,
            description="Per day, user and item played: the latest play (last_played) and the number of plays.",
        ),
        COPLAY_EDGES: dg.AssetOut(
            kinds={"parquet"},
            is_required=False,  # subsettable (can_subset): the step writes all three anyway
            automation_condition=EAGER_GATED,
            description="The first and last 5 plays of each user's day (pos from the first play, rpos from the "
            "last): the carry-over that rebuilds co-visitation pairs spanning day boundaries.",
        ),
    },
    check_specs=[contract_check_spec(name) for name in COPLAY_ASSETS],
    can_subset=True,  # any of the three can be selected; the step still writes the day's three together
    retry_policy=STORAGE_RETRY,
)
def daily_coplay(context: dg.AssetExecutionContext, storage: Storage, raw_events: PartitionReader):
    """One day of plays reduced to what co-visitation retrieval needs; the three tables are
    audited by their contracts and published together, day by day."""
    from streamrec_assets.core.coplay import daily_coplay as reduce_day

    def compute(day: str) -> DayResult:
        plays = _play_events(raw_events, day)
        tables = reduce_day(plays, day)
        pairs, history, edges = tables["pairs"], tables["history"], tables["edges"]
        return DayResult(
            tables={COPLAY_PAIRS: pairs, COPLAY_HISTORY: history, COPLAY_EDGES: edges},
            metadata={
                COPLAY_PAIRS: day_metadata(pairs, plays=int(len(plays))),
                COPLAY_HISTORY: day_metadata(
                    history,
                    plays=int(len(plays)),
                    users=int(history["user_id"].nunique()),
                    items=int(history["item_id"].nunique()),
                ),
                COPLAY_EDGES: day_metadata(edges, users=int(edges["user_id"].nunique())),
            },
        )

    yield from run_days(context, storage, list(COPLAY_ASSETS), compute)


@dg.asset(
    name=ASSET,
    group_name=GROUP,
    kinds={"parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    ins={
        "pairs": dg.AssetIn(COPLAY_PAIRS, partition_mapping=RETRIEVAL_WINDOW_MAPPING),
        "edges": dg.AssetIn(COPLAY_EDGES, partition_mapping=RETRIEVAL_WINDOW_MAPPING),
        "history": dg.AssetIn(COPLAY_HISTORY, partition_mapping=RETRIEVAL_HISTORY_MAPPING),
    },
    retry_policy=STORAGE_RETRY,
    check_specs=[
        contract_check_spec(
            ASSET,
            "The model card satisfies contracts.retrieval_model_schema: trained through the day before, "
            "status ok iff the model has items (and plays in its window), no Recall@100 without a model.",
        )
    ],
    automation_condition=EAGER_GATED,
    description="Candidate generation: item co-visitation over the plays of the 28 days before D, with a "
    "popularity fallback for cold users, combined from the daily_coplay aggregates of [D-28, D-1] (never "
    "raw events). Recall@100 on day D's plays in metadata.",
)
def retrieval_model(
    context: dg.AssetExecutionContext,
    storage: Storage,
    pairs: PartitionReader,
    edges: PartitionReader,
    history: PartitionReader,
):
    from streamrec_assets.core.coplay import EDGES_READ, HISTORY_READ, PAIRS_READ, train_from_daily
    from streamrec_assets.core.metrics import recall_at_k
    from streamrec_assets.core.retrieval import candidates

    budget = AGGREGATE_CACHE_BYTES // 3 if len(context.partition_keys) > 1 else 0
    caches = {
        "history": _WindowCache(history, HISTORY_READ, budget),
        "pairs": _WindowCache(pairs, PAIRS_READ, budget),
        "edges": _WindowCache(edges, EDGES_READ, budget),
    }

    def compute(day: str) -> DayResult:
        window = [d for d in window_days(day, RETRIEVAL_WINDOW_DAYS, end_offset=-1) if d in history.days]
        for cache in caches.values():
            cache.forget_before(window[0] if window else day)
        stats: dict = {}
        model = train_from_daily(
            window,
            read_history=caches["history"],
            read_pairs=caches["pairs"],
            read_edges=caches["edges"],
            trained_through=day_offset(day, -1),
            window_days=RETRIEVAL_WINDOW_DAYS,
            stats=stats,
        )
        plays_in_window = int(stats["plays_in_window"])
        frames = model.to_frames()
        today = caches["history"](day)[["user_id", "item_id"]].assign(relevance=1)  # D's distinct plays
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
            "plays_in_window": plays_in_window,
            "recall_at_100_next_day": recall,
            "trained_from": COPLAY_ASSETS,
            "aggregate_days_read": len(window),
        }
        card = pd.DataFrame(
            [
                {
                    "date": day,
                    "status": status,
                    "uri": str(storage.path(ASSET, day, "")),
                    "trained_through": model.trained_through,
                    "plays_in_window": plays_in_window,
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
                    recall_at_100=float(recall),
                    plays_in_window=plays_in_window,
                    neighbor_pairs=int(len(model.neighbors)),
                    aggregate_days_read=len(window),
                    window_item_pairs=int(stats["window_pairs"]),
                    carried_users=int(stats["carried_users"]),
                )
            },
        )

    yield from run_days(context, storage, [ASSET], compute)
