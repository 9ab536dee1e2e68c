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
