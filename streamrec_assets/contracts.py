"""Pandera schemas: the data contracts between the stages of the pipeline.

Every table an asset writes has a schema here. Assets validate their output
with :func:`validate` and report the result as a blocking asset check, so a
broken contract stops everything downstream. The record-level schema of the
landing zone (:func:`raw_event_record_schema`) states which typed records are
valid; ingest applies the same checks columnar (:mod:`streamrec_assets.core.ingest`,
whose ``REASON_ORDER`` says which reason wins), and the tests hold the two together.

Imported lazily (pandera is a heavy import); never at code-location load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa

EVENT_TYPES = ("impression", "play")
TIMESTAMP = pd.DatetimeTZDtype(unit="us", tz="UTC")
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

#: Row-level reasons a landing record is rejected, keyed by the (column, check name) of
#: :func:`raw_event_record_schema` that states them. The reasons found before typing
#: (line_too_long, invalid_utf8, malformed_json, invalid_type:<field>) and duplicates have
#: no check here; ``streamrec_assets.core.ingest.REASON_ORDER`` lists them all, in the
#: order in which the first one that applies wins.
REASONS: dict[tuple[str | None, str], str] = {
    ("event_id", "not_nullable"): "missing_field:event_id",
    ("user_id", "not_nullable"): "missing_field:user_id",
    ("item_id", "not_nullable"): "missing_field:item_id",
    ("event_type", "not_nullable"): "missing_field:event_type",
    ("event_timestamp", "not_nullable"): "missing_field:event_timestamp",
    ("watch_seconds", "not_nullable"): "missing_field:watch_seconds",
    ("device", "not_nullable"): "missing_field:device",
    ("session_id", "not_nullable"): "missing_field:session_id",
    ("user_id", "known_user_id"): "unknown_user_id",
    ("item_id", "known_item_id"): "unknown_item_id",
    ("event_type", "known_event_type"): "invalid_event_type",
    ("watch_seconds", "non_negative"): "negative_watch_seconds",
    ("event_timestamp", "inside_partition_day"): "timestamp_outside_day",
    (None, "impression_without_watch_time"): "impression_with_watch_time",
}


def _date_col(**kw) -> pa.Column:
    return pa.Column(str, pa.Check.str_matches(DATE_PATTERN), nullable=False, **kw)


def raw_event_record_schema(day: str, user_ids: Iterable[int], item_ids: Iterable[int]) -> pa.DataFrameSchema:
    """Contract of one landing record after typing (nullable dtypes), for partition ``day``.

    The declarative statement of the checks that :func:`streamrec_assets.core.ingest.ingest_day`
    applies columnar; a test validates ingest's output and single-fault records against it."""
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)
    users = pd.Index(pd.unique(pd.Series(list(user_ids), dtype="int64")))
    items = pd.Index(pd.unique(pd.Series(list(item_ids), dtype="int64")))
    return pa.DataFrameSchema(
        {
            "event_id": pa.Column(object, nullable=False),
            "user_id": pa.Column("Int64", pa.Check(lambda s: s.isin(users), name="known_user_id"), nullable=False),
            "item_id": pa.Column("Int64", pa.Check(lambda s: s.isin(items), name="known_item_id"), nullable=False),
            "event_type": pa.Column(
                object, pa.Check(lambda s: s.isin(EVENT_TYPES), name="known_event_type"), nullable=False
            ),
            "event_timestamp": pa.Column(
                TIMESTAMP,
                pa.Check(lambda s: (s >= start) & (s < end), name="inside_partition_day"),
                nullable=False,
            ),
            "watch_seconds": pa.Column(float, pa.Check(lambda s: s >= 0, name="non_negative"), nullable=False),
            "device": pa.Column(object, nullable=False),
            "session_id": pa.Column(object, nullable=False),
        },
        checks=[
            pa.Check(
                lambda df: (df["event_type"] != "impression") | (df["watch_seconds"].fillna(0) == 0),
                name="impression_without_watch_time",
            )
        ],
        strict=False,
        coerce=False,
    )


raw_events_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "event_id": pa.Column(str, unique=True, nullable=False),
        "user_id": pa.Column("int64", nullable=False),
        "item_id": pa.Column("int64", nullable=False),
        "event_type": pa.Column(str, pa.Check.isin(EVENT_TYPES), nullable=False),
        "event_timestamp": pa.Column(TIMESTAMP, nullable=False),
        "watch_seconds": pa.Column("float64", pa.Check.ge(0), nullable=False),
        "device": pa.Column(str, nullable=False),
        "session_id": pa.Column(str, nullable=False),
    },
    checks=[
        pa.Check(lambda df: (df["event_type"] == "play") | (df["watch_seconds"] == 0), name="impressions_unwatched"),
        pa.Check(
            lambda df: df["event_timestamp"].dt.strftime("%Y-%m-%d") == df["date"], name="timestamp_in_partition"
        ),
    ],
    strict=True,
    ordered=True,
    name="raw_events",
)


def _reasons() -> tuple[str, ...]:
    from streamrec_assets.core.ingest import REASON_ORDER

    return REASON_ORDER


raw_events_dlq_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "line_number": pa.Column("int64", pa.Check.ge(1), nullable=False, unique=True),
        "reason": pa.Column(str, pa.Check.isin(_reasons()), nullable=False),
        # for humans: the line decoded as UTF-8, invalid bytes replaced by U+FFFD
        "raw_line": pa.Column(str, nullable=False),
        # the exact bytes of the line, newline and trailing \r excluded: enough to re-run the record
        "raw_bytes": pa.Column(
            object, pa.Check(lambda v: isinstance(v, bytes), element_wise=True, name="is_bytes"), nullable=False
        ),
        "event_id": pa.Column(str, nullable=True),
    },
    strict=True,
    ordered=True,
    name="raw_events_dlq",
)

user_catalog_schema = pa.DataFrameSchema(
    {
        "user_id": pa.Column("int64", unique=True, nullable=False),
        "signup_date": _date_col(),
        "country": pa.Column(str, nullable=False),
    },
    strict=False,
    name="user_catalog",
)

item_catalog_schema = pa.DataFrameSchema(
    {
        "item_id": pa.Column("int64", unique=True, nullable=False),
        "genre": pa.Column(str, nullable=False),
        "duration_seconds": pa.Column(float, pa.Check.gt(0), nullable=False),
        "release_date": _date_col(),
    },
    strict=False,
    name="item_catalog",
)

_COUNTS = ("impressions", "plays", "completions")


def _activity_schema(entity: str, distinct: str, name: str) -> pa.DataFrameSchema:
    columns = {
        "date": _date_col(),
        entity: pa.Column("int64", nullable=False),
        **{c: pa.Column("int64", pa.Check.ge(0), nullable=False) for c in _COUNTS},
        "watch_seconds": pa.Column("float64", pa.Check.ge(0), nullable=False),
        distinct: pa.Column("int64", pa.Check.ge(0), nullable=False),
    }
    return pa.DataFrameSchema(
        columns,
        checks=[
            pa.Check(lambda df: df["completions"] <= df["plays"], name="completions_le_plays"),
            pa.Check(lambda df: (df["impressions"] + df["plays"]) > 0, name="has_activity"),
            pa.Check(lambda df: ~df.duplicated(["date", entity]), name=f"one_row_per_{entity}_and_day"),
        ],
        strict=False,
        name=name,
    )


user_daily_activity_schema = _activity_schema("user_id", "distinct_items_played", "user_daily_activity")
item_daily_activity_schema = _activity_schema("item_id", "distinct_users_played", "item_daily_activity")


def _features_schema(entity: str, name: str, extra: dict[str, pa.Column]) -> pa.DataFrameSchema:
    from streamrec_assets.partitions import FEATURE_WINDOWS_DAYS

    columns: dict[str, pa.Column] = {
        "date": _date_col(),
        entity: pa.Column("int64", nullable=False),
        "feature_timestamp": pa.Column(TIMESTAMP, nullable=False),
        "history_days": pa.Column("int64", pa.Check.in_range(1, max(FEATURE_WINDOWS_DAYS)), nullable=False),
        "active_days_28d": pa.Column("int64", pa.Check.in_range(1, 28), nullable=False),
    }
    for w in FEATURE_WINDOWS_DAYS:
        for c in _COUNTS:
            columns[f"{c}_{w}d"] = pa.Column("int64", pa.Check.ge(0), nullable=False)
        columns[f"watch_seconds_{w}d"] = pa.Column("float64", pa.Check.ge(0), nullable=False)
    for w in (7, 28):
        columns[f"completion_rate_{w}d"] = pa.Column("float64", pa.Check.in_range(0, 1), nullable=True)
    columns.update(extra)
    windows_nested = [
        pa.Check(
            lambda df, c=c, a=a, b=b: df[f"{c}_{a}d"] <= df[f"{c}_{b}d"],
            name=f"{c}_{a}d_le_{b}d",
        )
        for c in ("plays", "impressions")
        for a, b in zip(FEATURE_WINDOWS_DAYS, FEATURE_WINDOWS_DAYS[1:], strict=False)
    ]
    return pa.DataFrameSchema(
        columns,
        checks=[
            *windows_nested,
            pa.Check(lambda df: ~df.duplicated(["date", entity]), name=f"one_row_per_{entity}_and_day"),
            pa.Check(lambda df: df["active_days_28d"] <= df["history_days"], name="active_days_within_history"),
        ],
        strict=False,
        name=name,
    )


user_features_schema = _features_schema(
    "user_id",
    "user_features",
    {"genre_share_28d__.+": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True, regex=True)},
)
item_features_schema = _features_schema(
    "item_id",
    "item_features",
    {"play_rate_7d": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True)},
)


@dataclass
class ContractResult:
    """Outcome of validating one table against its schema."""

    schema: str
    rows: int
    passed: bool
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def failure_counts(self) -> dict[str, int]:
        if self.failures.empty:
            return {}
        keys = self.failures["column"].fillna("<table>").astype(str) + ":" + self.failures["check"].astype(str)
        return {k: int(v) for k, v in keys.value_counts().items()}


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema) -> ContractResult:
    """Validate lazily (all failures at once); never raises on data errors."""
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        return ContractResult(schema.name or "?", len(df), False, err.failure_cases)
    return ContractResult(schema.name or "?", len(df), True)


training_examples_schema = pa.DataFrameSchema(
    {
        "example_id": pa.Column(str, unique=True, nullable=False),
        "date": _date_col(),
        "user_id": pa.Column("int64", nullable=False),
        "item_id": pa.Column("int64", nullable=False),
        "session_id": pa.Column(str, nullable=False),
        "event_timestamp": pa.Column(TIMESTAMP, nullable=False),
        "label": pa.Column("int64", pa.Check.isin([0, 1, 2]), nullable=False),
        "user_features__plays_28d": pa.Column(float, pa.Check.ge(0), nullable=True, coerce=True),
        "item_features__plays_28d": pa.Column(float, pa.Check.ge(0), nullable=True, coerce=True),
        "user_genre_share_for_item": pa.Column(float, pa.Check.in_range(0, 1), nullable=True),
        "item_age_days": pa.Column(float, nullable=True),
    },
    checks=[
        pa.Check(
            lambda df: df["event_timestamp"].dt.strftime("%Y-%m-%d") == df["date"], name="impression_in_partition"
        ),
    ],
    strict=False,
    name="training_examples",
)


batch_recommendations_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "user_id": pa.Column("int64", nullable=False),
        "rank": pa.Column("int64", pa.Check.in_range(1, 20), nullable=False),
        "item_id": pa.Column("int64", nullable=False),
        "score": pa.Column("float64", nullable=False),
        "candidate_source": pa.Column(str, pa.Check.isin(["covis", "popular"]), nullable=False),
        "model_version": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "feature_source": pa.Column(str, pa.Check.isin(["online", "offline", "none"]), nullable=False),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "rank"]), name="one_item_per_rank"),
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "item_id"]), name="no_repeated_item"),
    ],
    strict=True,
    name="batch_recommendations",
)


# ---- daily co-visitation aggregates (streamrec_assets.core.coplay), read by retrieval_model


def _coplay_distances() -> list[str]:
    from streamrec_assets.core.coplay import DISTANCES

    return list(DISTANCES)


daily_coplay_pairs_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "item_lo": pa.Column("int64", nullable=False),
        "item_hi": pa.Column("int64", nullable=False),
        **{d: pa.Column("int32", pa.Check.ge(0), nullable=False) for d in _coplay_distances()},
    },
    checks=[
        pa.Check(lambda df: df["item_lo"] < df["item_hi"], name="unordered_pair_once"),
        pa.Check(lambda df: df[_coplay_distances()].sum(axis=1) > 0, name="pair_was_seen"),
        pa.Check(lambda df: ~df.duplicated(["date", "item_lo", "item_hi"]), name="one_row_per_pair_and_day"),
    ],
    strict=True,
    ordered=True,
    name="daily_coplay_pairs",
)

daily_coplay_history_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "user_id": pa.Column("int64", nullable=False),
        "item_id": pa.Column("int64", nullable=False),
        "last_played": pa.Column(TIMESTAMP, nullable=False),
        "plays": pa.Column("int64", pa.Check.ge(1), nullable=False),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "item_id"]), name="one_row_per_user_item_and_day"),
        # The carry-over of cross-day pairs needs each day's plays to follow the previous day's.
        pa.Check(
            lambda df: df["last_played"].dt.floor("D") == pd.to_datetime(df["date"], utc=True),
            name="played_in_partition",
        ),
    ],
    strict=True,
    ordered=True,
    name="daily_coplay_history",
)


def _edges_consistent(df: pd.DataFrame) -> pd.Series:
    """Every row of a user's day agrees on the day's length (pos + rpos + 1)."""
    length = df["pos"].astype("int64") + df["rpos"].astype("int64")
    groups = length.groupby([df["date"], df["user_id"]])
    return groups.transform("min") == groups.transform("max")


daily_coplay_edges_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "user_id": pa.Column("int64", nullable=False),
        "item_id": pa.Column("int64", nullable=False),
        "pos": pa.Column("int32", pa.Check.ge(0), nullable=False),
        "rpos": pa.Column("int32", pa.Check.ge(0), nullable=False),
    },
    checks=[
        pa.Check(
            lambda df: (df["pos"] < len(_coplay_distances())) | (df["rpos"] < len(_coplay_distances())),
            name="first_or_last_plays_only",
        ),
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "pos"]), name="one_play_per_position"),
        pa.Check(_edges_consistent, name="one_day_length_per_user"),
    ],
    strict=True,
    ordered=True,
    name="daily_coplay_edges",
)


# ---- models, evaluation, registry and the feature store (one small record per day)

MODEL_STATUSES = ("ok", "insufficient_history")
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def _day_before(df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` is the day before ``df['date']``."""
    return pd.to_datetime(df[column], errors="coerce") == pd.to_datetime(df["date"], errors="coerce") - pd.Timedelta(
        days=1
    )


def _nonempty_json_list(value: object) -> bool:
    import json

    try:
        parsed = json.loads(str(value))
    except ValueError:
        return False
    return isinstance(parsed, list) and len(parsed) > 0


def _trained_card_complete(df: pd.DataFrame) -> pd.Series:
    trained = df["status"] == "ok"
    complete = (
        df["model_uri"].astype(str).str.endswith("model.ubj")
        & df["model_sha256"].astype(str).str.fullmatch(SHA256_PATTERN)
        & (df["best_iteration"] >= 0)
        & df["validation_ndcg_at_20"].notna()
        & (df["train_rows"] > 0)
        & (df["validation_rows"] > 0)
        & df["features"].map(_nonempty_json_list)
    )
    return ~trained | complete


def _untrained_card_empty(df: pd.DataFrame) -> pd.Series:
    untrained = df["status"] != "ok"
    empty = (df["model_uri"] == "") & (df["model_sha256"] == "") & (df["best_iteration"] == -1)
    return ~untrained | empty


#: The ranker's model card (``ranking_model/date=D/data.parquet``): one row per day.
ranking_model_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "status": pa.Column(str, pa.Check.isin(MODEL_STATUSES), nullable=False),
        "model_uri": pa.Column(str, nullable=False),
        "model_sha256": pa.Column(str, nullable=False),
        "train_days": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "validation_day": _date_col(),
        "train_rows": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "validation_rows": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "best_iteration": pa.Column("int64", pa.Check.ge(-1), nullable=False),
        "validation_ndcg_at_20": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "features": pa.Column(str, nullable=False),
        "params": pa.Column(str, nullable=False),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date"]), name="one_card_per_day"),
        pa.Check(lambda df: _day_before(df, "validation_day"), name="validated_on_the_day_before"),
        pa.Check(_trained_card_complete, name="trained_card_complete"),
        pa.Check(_untrained_card_empty, name="untrained_card_has_no_model"),
    ],
    strict=True,
    ordered=True,
    name="ranking_model",
)

#: The retrieval model's card (``retrieval_model/date=D/data.parquet``): one row per day.
retrieval_model_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "status": pa.Column(str, pa.Check.isin(MODEL_STATUSES), nullable=False),
        "uri": pa.Column(str, nullable=False),
        "trained_through": _date_col(),
        "plays_in_window": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "items": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "neighbor_pairs": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "users_with_history": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "recall_at_100_next_day": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date"]), name="one_card_per_day"),
        pa.Check(lambda df: _day_before(df, "trained_through"), name="trained_through_the_day_before"),
        pa.Check(lambda df: (df["status"] == "ok") == (df["items"] > 0), name="ok_iff_items"),
        pa.Check(lambda df: (df["status"] != "ok") | (df["plays_in_window"] > 0), name="trained_on_plays"),
        pa.Check(lambda df: (df["status"] == "ok") | df["recall_at_100_next_day"].isna(), name="no_recall_without_model"),
    ],
    strict=False,
    name="retrieval_model",
)


def _evaluation_methods() -> list[str]:
    from streamrec_assets.core.evaluation import METHODS

    return list(METHODS)


def _baselines_present(df: pd.DataFrame) -> bool:
    """A day is either not evaluated (no rows) or measures the ranker against popularity."""
    return bool(all({"ours", "popularity"} <= set(g) for _, g in df.groupby("date")["method"]))


#: The hold-out metrics (``model_evaluation/date=D/data.parquet``): one row per day and method.
model_evaluation_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "method": pa.Column(str, pa.Check.isin(_evaluation_methods()), nullable=False),
        "users": pa.Column("int64", pa.Check.ge(0), nullable=False),
        "ndcg_at_20": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "recall_at_100": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "model_sha256": pa.Column(str, pa.Check.str_matches(SHA256_PATTERN), nullable=False),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "method"]), name="one_row_per_method_and_day"),
        pa.Check(_baselines_present, name="ranker_and_popularity_measured"),
        pa.Check(lambda df: df.groupby("date")["model_sha256"].transform("nunique") == 1, name="one_model_per_day"),
        pa.Check(lambda df: (df["users"] > 0) | df["ndcg_at_20"].isna(), name="no_metric_without_users"),
    ],
    strict=True,
    ordered=True,
    name="model_evaluation",
)


def _registry_values() -> tuple[list[str], list[str], list[str]]:
    """Statuses, decisions ('' when skipped) and registrations ('' when skipped) of a registry record."""
    from streamrec_assets.core.registry import Registration, Status

    return (
        [s.value for s in Status],
        ["", *(s.value for s in Status if s.is_decision)],
        ["", *(r.value for r in Registration)],
    )


_STATUSES, _DECISIONS, _REGISTRATIONS = _registry_values()


def _registered_iff_not_skipped(df: pd.DataFrame) -> pd.Series:
    skipped = df["status"] == "skipped"
    registered = (df["version"] >= 1) & (df["fingerprint"] != "") & (df["decision"] != "") & (df["registration"] != "")
    return skipped != registered


#: The registry's record of a day (``registered_model/date=D/data.parquet``, :meth:`DayOutcome.row`).
registered_model_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "status": pa.Column(str, pa.Check.isin(_STATUSES), nullable=False),
        "decision": pa.Column(str, pa.Check.isin(_DECISIONS), nullable=False),
        "registration": pa.Column(str, pa.Check.isin(_REGISTRATIONS), nullable=False),
        "reason": pa.Column(str, pa.Check.str_length(min_value=1), nullable=False),
        "version": pa.Column("int64", pa.Check.ge(-1), nullable=False),
        "run_id": pa.Column(str, nullable=False),
        "fingerprint": pa.Column(str, nullable=False),
        "reused": pa.Column(bool, nullable=False),
        "challenger_ndcg": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "champion_ndcg": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "champion_version": pa.Column("int64", pa.Check.ge(-1), nullable=False),
        "decided_by": pa.Column(str, nullable=False),
        "ndcg_at_20": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
        "popularity_ndcg_at_20": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date"]), name="one_record_per_day"),
        pa.Check(_registered_iff_not_skipped, name="registered_iff_not_skipped"),
        pa.Check(
            lambda df: (df["status"] != "promoted") | (df["champion_version"] >= 1), name="promotion_has_a_champion"
        ),
    ],
    strict=True,
    ordered=True,
    name="registered_model",
)


def _feature_views() -> list[str]:
    from streamrec_assets.feature_repo import FEATURE_VIEWS

    return list(FEATURE_VIEWS)


#: The feature store's record of a day (``feast_feature_views/date=D/data.parquet``): one row per view.
feast_feature_views_schema = pa.DataFrameSchema(
    {
        "date": _date_col(),
        "feature_view": pa.Column(str, pa.Check.isin(_feature_views()), nullable=False),
        "version": pa.Column(str, pa.Check.str_length(min_value=1), nullable=False),
        "features": pa.Column("int64", pa.Check.gt(0), nullable=False),
        "online_materialized": pa.Column(bool, nullable=False),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "feature_view"]), name="one_row_per_view_and_day"),
        pa.Check(
            lambda df: bool(all(set(g) == set(_feature_views()) for _, g in df.groupby("date")["feature_view"])),
            name="every_feature_view",
        ),
    ],
    strict=True,
    ordered=True,
    name="feast_feature_views",
)


# ---- the Feast registry and online store against the stored feature partitions (pure)

def feast_type_of(arrow_type) -> str | None:
    """Feast type of a feature column by Arrow type, as :func:`streamrec_assets.feature_repo.source_fields` maps it."""
    import pyarrow as pa_arrow

    if pa_arrow.types.is_integer(arrow_type):
        return "Int64"
    if pa_arrow.types.is_floating(arrow_type):
        return "Float64"
    if pa_arrow.types.is_boolean(arrow_type):
        return "Bool"
    if pa_arrow.types.is_string(arrow_type) or pa_arrow.types.is_large_string(arrow_type):
        return "String"
    return None


def stored_features(schema, non_features: Iterable[str]) -> dict[str, str]:
    """The features a stored partition (its Arrow schema) gives a feature view: name -> Feast type."""
    skip = set(non_features)
    out = {}
    for name, arrow_type in zip(schema.names, schema.types, strict=True):
        dtype = feast_type_of(arrow_type)
        if name not in skip and dtype is not None:
            out[name] = dtype
    return out


def feature_view_problems(
    registered: dict[str, dict[str, str]], stored: dict[str, dict[str, str]], expected_views: Iterable[str]
) -> list[str]:
    """Differences between the Feast registry's views (view -> feature -> type) and the stored partitions'."""
    expected = set(expected_views)
    problems = []
    if set(registered) != expected:
        problems.append(f"feature views {sorted(registered)} in the registry; expected {sorted(expected)}")
    for view in sorted(expected & set(registered)):
        have, want = registered[view], stored.get(view)
        if want is None:
            problems.append(f"{view}: no stored partition to compare with")
            continue
        if missing := sorted(set(want) - set(have)):
            problems.append(f"{view}: stored columns not in the view: {', '.join(missing)}")
        if extra := sorted(set(have) - set(want)):
            problems.append(f"{view}: view features not in the stored partition: {', '.join(extra)}")
        if retyped := sorted(n for n in set(want) & set(have) if want[n] != have[n]):
            problems.append(f"{view}: types differ: " + ", ".join(f"{n} {have[n]} != {want[n]}" for n in retyped))
    return problems


def materialization_problems(
    intervals: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]], start: pd.Timestamp, end: pd.Timestamp
) -> list[str]:
    """Views whose recorded online materialisations do not cover ``[start, end]``."""
    def utc(ts) -> pd.Timestamp:  # Feast gives naive UTC or aware datetimes
        ts = pd.Timestamp(ts)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    start, end = utc(start), utc(end)
    problems = []
    for view, spans in sorted(intervals.items()):
        covered = any(utc(s) <= start and utc(e) >= end for s, e in spans)
        if not covered:
            problems.append(f"{view}: no online materialisation covers {start} .. {end} ({len(spans)} recorded)")
    return problems


def online_probe_problems(dates: dict[str, list[str | None]], day: str) -> list[str]:
    """Views whose probed entities (active on ``day``) have no online value from ``day`` or later."""
    problems = []
    for view, values in sorted(dates.items()):
        stale = [v for v in values if v is None or pd.isna(v) or str(v) < day]
        if stale:
            problems.append(f"{view}: {len(stale)} of {len(values)} entities of {day} have no online value of {day}")
    return problems
