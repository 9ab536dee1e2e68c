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


#: The description of every table's ``date`` column (its partition key).
DATE_DESCRIPTION = "Partition day (YYYY-MM-DD, UTC) the row belongs to: the daily partition key."


def _date_col(description: str = DATE_DESCRIPTION, **kw) -> pa.Column:
    return pa.Column(str, pa.Check.str_matches(DATE_PATTERN), nullable=False, description=description, **kw)


def _doc_only(description: str, *, regex: bool = False) -> pa.Column:
    """A column that is documented, never checked: any dtype, nulls allowed, may be absent."""
    return pa.Column(None, nullable=True, required=False, regex=regex, description=description)


#: What the event columns mean, shared by the landing record and the raw_events table.
EVENT_DESCRIPTIONS = {
    "event_id": "Unique id of the event as delivered by the upstream export (e.g. ev-20260101-00000042).",
    "user_id": "Id of the user (user_catalog.user_id).",
    "item_id": "Id of the item shown or played (item_catalog.item_id).",
    "event_type": "'impression' (the item was shown to the user) or 'play' (the user started playing it).",
    "event_timestamp": "When the event happened (UTC, microseconds).",
    "watch_seconds": "Seconds of the item watched in this play; always 0 for an impression.",
    "device": "Device the event came from (tv, mobile, web, tablet).",
    "session_id": "Id of the user's viewing session; a play is attributed to an impression of the same session.",
}


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
            "event_id": pa.Column(object, nullable=False, description=EVENT_DESCRIPTIONS["event_id"]),
            "user_id": pa.Column(
                "Int64", pa.Check(lambda s: s.isin(users), name="known_user_id"), nullable=False,
                description=EVENT_DESCRIPTIONS["user_id"],
            ),
            "item_id": pa.Column(
                "Int64", pa.Check(lambda s: s.isin(items), name="known_item_id"), nullable=False,
                description=EVENT_DESCRIPTIONS["item_id"],
            ),
            "event_type": pa.Column(
                object, pa.Check(lambda s: s.isin(EVENT_TYPES), name="known_event_type"), nullable=False,
                description=EVENT_DESCRIPTIONS["event_type"],
            ),
            "event_timestamp": pa.Column(
                TIMESTAMP,
                pa.Check(lambda s: (s >= start) & (s < end), name="inside_partition_day"),
                nullable=False,
                description=EVENT_DESCRIPTIONS["event_timestamp"] + " Must fall inside the partition day.",
            ),
            "watch_seconds": pa.Column(
                float, pa.Check(lambda s: s >= 0, name="non_negative"), nullable=False,
                description=EVENT_DESCRIPTIONS["watch_seconds"],
            ),
            "device": pa.Column(object, nullable=False, description=EVENT_DESCRIPTIONS["device"]),
            "session_id": pa.Column(object, nullable=False, description=EVENT_DESCRIPTIONS["session_id"]),
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
        "date": _date_col("Partition day (YYYY-MM-DD, UTC): the landing file the event came from."),
        "event_id": pa.Column(
            str, unique=True, nullable=False,
            description=EVENT_DESCRIPTIONS["event_id"] + " Redelivered duplicates are dropped to the DLQ.",
        ),
        "user_id": pa.Column("int64", nullable=False, description=EVENT_DESCRIPTIONS["user_id"]),
        "item_id": pa.Column("int64", nullable=False, description=EVENT_DESCRIPTIONS["item_id"]),
        "event_type": pa.Column(
            str, pa.Check.isin(EVENT_TYPES), nullable=False, description=EVENT_DESCRIPTIONS["event_type"]
        ),
        "event_timestamp": pa.Column(TIMESTAMP, nullable=False, description=EVENT_DESCRIPTIONS["event_timestamp"]),
        "watch_seconds": pa.Column(
            "float64", pa.Check.ge(0), nullable=False, description=EVENT_DESCRIPTIONS["watch_seconds"]
        ),
        "device": pa.Column(str, nullable=False, description=EVENT_DESCRIPTIONS["device"]),
        "session_id": pa.Column(str, nullable=False, description=EVENT_DESCRIPTIONS["session_id"]),
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
        "date": _date_col("Partition day (YYYY-MM-DD, UTC): the landing file the rejected line came from."),
        "line_number": pa.Column(
            "int64", pa.Check.ge(1), nullable=False, unique=True,
            description="1-based line number of the rejected record in the day's landing file.",
        ),
        "reason": pa.Column(
            str, pa.Check.isin(_reasons()), nullable=False,
            description="Why the line was rejected: the first reason of core.ingest.REASON_ORDER that applies "
            "(e.g. malformed_json, unknown_user_id, duplicate_event_id).",
        ),
        # for humans: the line decoded as UTF-8, invalid bytes replaced by U+FFFD
        "raw_line": pa.Column(
            str, nullable=False,
            description="The line as text, for humans: decoded as UTF-8 with invalid bytes replaced by U+FFFD.",
        ),
        # the exact bytes of the line, newline and trailing \r excluded: enough to re-run the record
        "raw_bytes": pa.Column(
            object, pa.Check(lambda v: isinstance(v, bytes), element_wise=True, name="is_bytes"), nullable=False,
            description="The exact bytes of the line (newline and trailing \\r excluded): enough to replay it.",
        ),
        "event_id": pa.Column(
            str, nullable=True,
            description="The record's event_id when it could be read; null for lines that are not a JSON object.",
        ),
    },
    strict=True,
    ordered=True,
    name="raw_events_dlq",
)

user_catalog_schema = pa.DataFrameSchema(
    {
        "user_id": pa.Column("int64", unique=True, nullable=False, description="Id of the user."),
        "signup_date": _date_col("Day (YYYY-MM-DD) the user signed up; dates the user's tenure."),
        "country": pa.Column(str, nullable=False, description="The user's country (ISO 3166-1 alpha-2, e.g. US)."),
    },
    strict=False,
    name="user_catalog",
)

item_catalog_schema = pa.DataFrameSchema(
    {
        "item_id": pa.Column("int64", unique=True, nullable=False, description="Id of the item (a title)."),
        "genre": pa.Column(str, nullable=False, description="The item's genre (one per item)."),
        "duration_seconds": pa.Column(
            float, pa.Check.gt(0), nullable=False,
            description="Running time of the item in seconds; a play of at least 90% of it is a completion.",
        ),
        "release_date": _date_col("Day (YYYY-MM-DD) the item became available; never recommended before it."),
    },
    strict=False,
    name="item_catalog",
)

_COUNTS = ("impressions", "plays", "completions")
#: What each counted event is (the daily aggregates and the rolling-window features count the same).
_COUNTED = {
    "impressions": "impressions",
    "plays": "plays",
    "completions": "completed plays (watch_seconds >= 90% of the item's duration_seconds)",
}
_ENTITY = {"user_id": "the user", "item_id": "the item"}


def _activity_schema(entity: str, distinct: str, name: str, extra: dict[str, pa.Column]) -> pa.DataFrameSchema:
    who = _ENTITY[entity]
    columns = {
        "date": _date_col("Day (YYYY-MM-DD, UTC) of the activity: the daily partition key."),
        entity: pa.Column("int64", nullable=False, description=f"Id of {who}; one row per {entity} active that day."),
        **{
            c: pa.Column(
                "int64", pa.Check.ge(0), nullable=False, description=f"Number of {_COUNTED[c]} of {who} that day."
            )
            for c in _COUNTS
        },
        "watch_seconds": pa.Column(
            "float64", pa.Check.ge(0), nullable=False,
            description=f"Total seconds watched in the plays of {who} that day (sum of watch_seconds).",
        ),
        distinct: pa.Column(
            "int64", pa.Check.ge(0), nullable=False,
            description="Distinct items the user played that day." if entity == "user_id"
            else "Distinct users who played the item that day.",
        ),
        **extra,
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


user_daily_activity_schema = _activity_schema(
    "user_id",
    "distinct_items_played",
    "user_daily_activity",
    {
        "plays_genre__.+": _doc_only(
            "plays_genre__<genre>: the user's plays that day of items of <genre> (genre slug: lower case, "
            "non-alphanumerics as _); one column per catalogue genre.",
            regex=True,
        )
    },
)
item_daily_activity_schema = _activity_schema("item_id", "distinct_users_played", "item_daily_activity", {})


def _features_schema(entity: str, name: str, extra: dict[str, pa.Column]) -> pa.DataFrameSchema:
    from streamrec_assets.core.features import RATE_WINDOWS, WINDOWS

    who = _ENTITY[entity]
    longest = max(WINDOWS)

    def trailing(w: int) -> str:
        return "on the feature day" if w == 1 else f"in the trailing {w} days (the feature day and the {w - 1} before)"

    columns: dict[str, pa.Column] = {
        "date": _date_col("Feature day (YYYY-MM-DD, UTC): the windows end with this day."),
        entity: pa.Column(
            "int64", nullable=False,
            description=f"Id of {who}; one row per {entity} with activity in the trailing {longest} days.",
        ),
        "feature_timestamp": pa.Column(
            TIMESTAMP, nullable=False,
            description="End of the feature day (date + 1 day, 00:00 UTC), when the values become known; "
            "Feast's event timestamp for point-in-time joins.",
        ),
        "history_days": pa.Column(
            "int64", pa.Check.in_range(1, longest), nullable=False,
            description=f"Days of the {longest}-day window inside the data's history ({longest} once "
            f"{longest} days of history exist; fewer near the first day).",
        ),
        f"active_days_{longest}d": pa.Column(
            "int64", pa.Check.in_range(1, longest), nullable=False,
            description=f"Days of the trailing {longest} on which {who} had any impression or play.",
        ),
    }
    watched = "Seconds the user watched" if entity == "user_id" else "Seconds of the item watched (all users)"
    for w in WINDOWS:
        for c in _COUNTS:
            columns[f"{c}_{w}d"] = pa.Column(
                "int64", pa.Check.ge(0), nullable=False, description=f"Number of {_COUNTED[c]} of {who} {trailing(w)}."
            )
        columns[f"watch_seconds_{w}d"] = pa.Column(
            "float64", pa.Check.ge(0), nullable=False, description=f"{watched} {trailing(w)}."
        )
    for w in RATE_WINDOWS:
        columns[f"completion_rate_{w}d"] = pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description=f"completions_{w}d / plays_{w}d of {who}; null without plays in the window.",
        )
    columns.update(extra)
    windows_nested = [
        pa.Check(
            lambda df, c=c, a=a, b=b: df[f"{c}_{a}d"] <= df[f"{c}_{b}d"],
            name=f"{c}_{a}d_le_{b}d",
        )
        for c in ("plays", "impressions")
        for a, b in zip(WINDOWS, WINDOWS[1:], strict=False)
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
    {
        "genre_share_28d__.+": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True, regex=True,
            description="genre_share_28d__<genre>: share of the user's plays in the trailing 28 days that were of "
            "items of <genre> (genre slug); one column per catalogue genre; null without plays.",
        )
    },
)
item_features_schema = _features_schema(
    "item_id",
    "item_features",
    {
        "play_rate_7d": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="plays_7d / impressions_7d of the item (capped at 1); null without impressions in the window.",
        )
    },
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
        "example_id": pa.Column(
            str, unique=True, nullable=False,
            description="<YYYYMMDD>-<8-digit index>: the day and the impression's position in the day, ordered by "
            "time, user, item.",
        ),
        "date": _date_col("Day (YYYY-MM-DD, UTC) of the impression: the daily partition key."),
        "user_id": pa.Column("int64", nullable=False, description="The user the item was shown to."),
        "item_id": pa.Column("int64", nullable=False, description="The item shown (the impression)."),
        "session_id": pa.Column(str, nullable=False, description="Session of the impression."),
        "event_timestamp": pa.Column(
            TIMESTAMP, nullable=False,
            description="Time of the impression (UTC): the features are looked up as of this instant.",
        ),
        "label": pa.Column(
            "int64", pa.Check.isin([0, 1, 2]), nullable=False,
            description="Graded outcome: 2 the impression led to a completed play, 1 to a play, 0 to none "
            "(a play counts for the latest impression of the same user, item and session before it).",
        ),
        "user_features__plays_28d": pa.Column(
            float, pa.Check.ge(0), nullable=True, coerce=True,
            description="user_features.plays_28d as of the impression (Feast point-in-time join, 7-day TTL); "
            "null when the user has no feature row yet.",
        ),
        "item_features__plays_28d": pa.Column(
            float, pa.Check.ge(0), nullable=True, coerce=True,
            description="item_features.plays_28d as of the impression (Feast point-in-time join, 7-day TTL); "
            "null when the item has no feature row yet.",
        ),
        "user_features__.+": _doc_only(
            "user_features__<feature>: the user's <feature> of user_features as of the impression (the latest "
            "feature row at most 7 days old, from an earlier day); null without one.",
            regex=True,
        ),
        "item_features__.+": _doc_only(
            "item_features__<feature>: the item's <feature> of item_features as of the impression (the latest "
            "feature row at most 7 days old, from an earlier day); null without one.",
            regex=True,
        ),
        "user_genre_share_for_item": pa.Column(
            float, pa.Check.in_range(0, 1), nullable=True,
            description="The user's genre_share_28d__<genre> for the item's genre; null without user features.",
        ),
        "item_age_days": pa.Column(
            float, nullable=True,
            description="Days from the item's release_date to the start of the impression's day (00:00 UTC, the "
            "instant every feature of a ranked day is as of).",
        ),
        "item_duration_seconds": _doc_only("The item's duration_seconds from item_catalog."),
        "item_genre_code": _doc_only("The item's genre as a number: its index in the sorted catalogue genres."),
        "user_tenure_days": _doc_only("Days from the user's signup_date to the start of the impression's day."),
        "taste_score": pa.Column(
            float, nullable=True,
            description="The taste model of the day before: logit of P(play | impression) for the user and item "
            "(global + item + user-genre bias + latent dot); null for a user or item it has not seen.",
        ),
        "taste_dot": _doc_only("The taste model's latent part U_user · V_item (collaborative); null if unseen."),
        "taste_item_bias": _doc_only("The taste model's item appeal beyond exposure; null for an unseen item."),
        "taste_user_genre_bias": _doc_only("The taste model's user taste for the item's genre; null if unseen."),
    },
    checks=[
        pa.Check(
            lambda df: df["event_timestamp"].dt.strftime("%Y-%m-%d") == df["date"], name="impression_in_partition"
        ),
    ],
    strict=False,
    name="training_examples",
)


from streamrec_assets.core.serving import (  # noqa: E402 - the serving vocabulary lives with its logic
    CANDIDATE_SOURCES,
    CHAMPION_RANKER,
    RANKERS,
)
from streamrec_assets.core.serving import TOP_K as _SERVING_TOP_K  # noqa: E402

batch_recommendations_schema = pa.DataFrameSchema(
    {
        "date": pa.Column(str, pa.Check.str_matches(DATE_PATTERN), nullable=False,
                          description="Serving day (YYYY-MM-DD, UTC): recommendations as of the end of this day."),
        "user_id": pa.Column("int64", nullable=False, description="A user active on the serving day."),
        "rank": pa.Column(
            "int64", pa.Check.in_range(1, _SERVING_TOP_K), nullable=False,
            description="Position in the user's list, 1 = best (by score; ties: smaller item_id).",
        ),
        "item_id": pa.Column("int64", nullable=False,
                             description="The recommended item (released by the end of the day)."),
        "score": pa.Column(
            "float64", nullable=False,
            description="The ranker's score (higher is better; only the order matters): the champion's, or "
            "with the popularity fallback the item's plays in [D-28, D].",
        ),
        "candidate_source": pa.Column(
            str, pa.Check.isin(list(CANDIDATE_SOURCES)), nullable=False,
            description="Where the candidate came from: 'retrieval' (co-visitation with the user's recent "
            "plays), 'popularity' (fill or fallback), 'cold_start' (popularity for a user without plays in "
            "[D-28, D]), 'continue_watching' (an item the user started but did not complete).",
        ),
        "ranker": pa.Column(
            str, pa.Check.isin(list(RANKERS)), nullable=False,
            description="'champion' (the registry's champion as of D) or 'popularity' (no promotion yet).",
        ),
        "model_version": pa.Column(
            "Int64", pa.Check.ge(1), nullable=True,
            description="MLflow version of streamrec-ranker that was champion as of D (latest recorded "
            "promotion registered on or before D); null with the popularity fallback.",
        ),
        "feature_source": pa.Column(
            str, pa.Check.isin(["online", "offline", "none"]), nullable=False,
            description="Where the features came from: 'online' store (newest day), 'offline' store as of "
            "the day's end (backfilled day), 'none' (popularity fallback).",
        ),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "rank"]), name="one_item_per_rank"),
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "item_id"]), name="no_repeated_item"),
        pa.Check(
            lambda df: (df["ranker"] == CHAMPION_RANKER) == df["model_version"].notna(),
            name="model_version_iff_champion",
        ),
        pa.Check(
            lambda df: df.groupby("user_id")["rank"].transform("max") == df.groupby("user_id")["rank"]
            .transform("size"),
            name="ranks_are_dense",
        ),
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
        "date": _date_col("Day (YYYY-MM-DD, UTC) of the plays counted: the daily partition key."),
        "item_lo": pa.Column("int64", nullable=False, description="The smaller item id of the unordered pair."),
        "item_hi": pa.Column("int64", nullable=False, description="The larger item id of the unordered pair."),
        **{
            d: pa.Column(
                "int32", pa.Check.ge(0), nullable=False,
                description=f"Times the two items were played exactly {d[1:]} plays apart (1 = one right after "
                "the other) in one user's plays of the day.",
            )
            for d in _coplay_distances()
        },
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
        "date": _date_col("Day (YYYY-MM-DD, UTC) of the plays: the daily partition key."),
        "user_id": pa.Column("int64", nullable=False, description="The user who played the item that day."),
        "item_id": pa.Column("int64", nullable=False, description="The item played."),
        "last_played": pa.Column(
            TIMESTAMP, nullable=False, description="Time (UTC) of the user's latest play of the item that day."
        ),
        "plays": pa.Column(
            "int64", pa.Check.ge(1), nullable=False, description="Number of plays of the item by the user that day."
        ),
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
        "date": _date_col("Day (YYYY-MM-DD, UTC) of the plays: the daily partition key."),
        "user_id": pa.Column("int64", nullable=False, description="The user whose play it is."),
        "item_id": pa.Column("int64", nullable=False, description="The item played."),
        "pos": pa.Column(
            "int32", pa.Check.ge(0), nullable=False,
            description="Position of the play in the user's plays of the day, 0 = the first (only the first and "
            f"last {len(_coplay_distances())} plays are kept: they pair with the neighbouring days).",
        ),
        "rpos": pa.Column(
            "int32", pa.Check.ge(0), nullable=False,
            description="Position of the play counted from the user's last play of the day, 0 = the last.",
        ),
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


def _day_before(df: pd.DataFrame, column: str, days: int = 1) -> pd.Series:
    """``df[column]`` is ``days`` days before ``df['date']`` (the day before by default)."""
    return pd.to_datetime(df[column], errors="coerce") == pd.to_datetime(df["date"], errors="coerce") - pd.Timedelta(
        days=days
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
        "date": _date_col("Model day D (YYYY-MM-DD): trained on [D-15, D-3], early-stopped on D-2, gated on D-1, "
                          "evaluated on D."),
        "status": pa.Column(
            str, pa.Check.isin(MODEL_STATUSES), nullable=False,
            description="'ok' (a ranker was trained) or 'insufficient_history' (no model for the day).",
        ),
        "model_uri": pa.Column(
            str, nullable=False, description="Where the model (XGBoost UBJSON, model.ubj) is stored; '' without one."
        ),
        "model_sha256": pa.Column(
            str, nullable=False, description="SHA-256 (hex) of the model.ubj bytes; '' without a model."
        ),
        "train_days": pa.Column(
            "int64", pa.Check.ge(0), nullable=False,
            description="Days of the 13-day training window [D-15, D-3] that had training examples.",
        ),
        "validation_day": _date_col("The early-stopping day D-2 (YYYY-MM-DD)."),
        "train_rows": pa.Column(
            "int64", pa.Check.ge(0), nullable=False, description="Training examples read from the window's days."
        ),
        "validation_rows": pa.Column(
            "int64", pa.Check.ge(0), nullable=False, description="Training examples of the validation day."
        ),
        "best_iteration": pa.Column(
            "int64", pa.Check.ge(-1), nullable=False,
            description="Boosting round kept by early stopping (0-based); -1 without a model.",
        ),
        "validation_ndcg_at_20": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="NDCG@20 on the validation day at best_iteration (XGBoost's ndcg@20); null without a model.",
        ),
        "features": pa.Column(
            str, nullable=False, description="JSON list of the model's input features, in the model's order."
        ),
        "params": pa.Column(str, nullable=False, description="JSON object of the XGBoost training parameters."),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date"]), name="one_card_per_day"),
        pa.Check(lambda df: _day_before(df, "validation_day", days=2), name="early_stopped_two_days_before"),
        pa.Check(_trained_card_complete, name="trained_card_complete"),
        pa.Check(_untrained_card_empty, name="untrained_card_has_no_model"),
    ],
    strict=True,
    ordered=True,
    name="ranking_model",
)

#: A day's labelled impressions per (user, item) (``user_item_daily_outcomes/date=D/data.parquet``).
user_item_daily_outcomes_schema = pa.DataFrameSchema(
    {
        "date": _date_col("Day of the impressions (YYYY-MM-DD, UTC): the daily partition key."),
        "user_id": pa.Column("int64", nullable=False, description="The user shown the item."),
        "item_id": pa.Column("int64", nullable=False, description="The item shown."),
        "genre_code": pa.Column(
            "int64", pa.Check.ge(-1), nullable=False,
            description="The item's genre: its index among the catalogue's sorted genres (-1 unknown).",
        ),
        "impressions": pa.Column("int64", pa.Check.ge(1), nullable=False,
                                 description="Impressions of the item to the user on the day."),
        "positives": pa.Column("int64", pa.Check.ge(0), nullable=False,
                               description="Those impressions that led to a play (training_examples label > 0)."),
        "completions": pa.Column("int64", pa.Check.ge(0), nullable=False,
                                 description="Those that led to a completed play (label 2)."),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "user_id", "item_id"]), name="one_row_per_pair"),
        pa.Check(lambda df: df["positives"] <= df["impressions"], name="positives_within_impressions"),
        pa.Check(lambda df: df["completions"] <= df["positives"], name="completions_within_positives"),
    ],
    strict=True,
    ordered=True,
    name="user_item_daily_outcomes",
)

#: The taste model's card (``taste_model/date=D/data.parquet``): one row per day.
taste_model_schema = pa.DataFrameSchema(
    {
        "date": _date_col("Model day D (YYYY-MM-DD): fitted on the outcomes of [D-27, D]; ranks D+1."),
        "status": pa.Column(
            str, pa.Check.isin(MODEL_STATUSES), nullable=False,
            description="'ok' (the model knows users and items) or 'insufficient_history' (no impressions).",
        ),
        "trained_through": _date_col("Last day of outcomes the model saw: D itself (YYYY-MM-DD)."),
        "window_days": pa.Column("int64", pa.Check.in_range(0, 28), nullable=False,
                                 description="Days of the 28-day window that had outcomes."),
        "users": pa.Column("int64", pa.Check.ge(0), nullable=False, description="Users with parameters."),
        "items": pa.Column("int64", pa.Check.ge(0), nullable=False, description="Items with parameters."),
        "pairs": pa.Column("int64", pa.Check.ge(0), nullable=False, description="(user, item) pairs fitted."),
        "impressions": pa.Column("int64", pa.Check.ge(0), nullable=False, description="Impressions fitted."),
        "factors": pa.Column("int64", pa.Check.ge(1), nullable=False, description="Latent dimensions."),
        "iterations": pa.Column("int64", pa.Check.ge(0), nullable=False, description="L-BFGS iterations run."),
        "mean_log_likelihood": pa.Column(
            "float64", pa.Check.le(0), nullable=True,
            description="Penalised log-likelihood per impression at the optimum (higher is better); null untrained.",
        ),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date"]), name="one_card_per_day"),
        pa.Check(lambda df: df["trained_through"] == df["date"], name="trained_through_the_day"),
        pa.Check(lambda df: (df["status"] == "ok") == ((df["users"] > 0) & (df["items"] > 0)), name="ok_iff_fitted"),
    ],
    strict=True,
    ordered=True,
    name="taste_model",
)

#: The retrieval model's card (``retrieval_model/date=D/data.parquet``): one row per day.
retrieval_model_schema = pa.DataFrameSchema(
    {
        "date": _date_col("Model day D (YYYY-MM-DD): trained on the plays of [D-28, D-1], serves day D."),
        "status": pa.Column(
            str, pa.Check.isin(MODEL_STATUSES), nullable=False,
            description="'ok' (the model knows some items) or 'insufficient_history' (no plays in the window).",
        ),
        "uri": pa.Column(
            str, nullable=False, description="Directory of the model's tables (neighbors, popularity, history)."
        ),
        "trained_through": _date_col("Last day of plays the model saw: D-1 (YYYY-MM-DD)."),
        "plays_in_window": pa.Column(
            "int64", pa.Check.ge(0), nullable=False, description="Plays in the 28-day training window."
        ),
        "items": pa.Column(
            "int64", pa.Check.ge(0), nullable=False, description="Items with plays in the window (popularity list)."
        ),
        "neighbor_pairs": pa.Column(
            "int64", pa.Check.ge(0), nullable=False,
            description="(item, neighbour) rows kept: co-visitation neighbours, at most 50 per item.",
        ),
        "users_with_history": pa.Column(
            "int64", pa.Check.ge(0), nullable=False,
            description="Users with recent plays in the window (the histories retrieval starts from).",
        ),
        "recall_at_100_next_day": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="Mean Recall@100 of the top-100 candidates against each user's distinct plays of day D; "
            "null without a model or plays.",
        ),
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
        "date": _date_col("Hold-out day D (YYYY-MM-DD) the models are evaluated on."),
        "method": pa.Column(
            str, pa.Check.isin(_evaluation_methods()), nullable=False,
            description="'ours' (the ranker and retrieval model), 'popularity' (baseline) or 'oracle' (the "
            "generator's hidden affinity: an upper bound, synthetic data only).",
        ),
        "users": pa.Column(
            "int64", pa.Check.ge(0), nullable=False,
            description="Users measured: a sample (at most max_users) of those whose logged slate has 2+ items, "
            "1+ played.",
        ),
        "ndcg_at_20": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="Mean NDCG@20 of the method's ordering of each user's impressions of D (graded labels).",
        ),
        "recall_at_100": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="Mean Recall@100 of the method's top-100 items against each user's plays of D.",
        ),
        "model_sha256": pa.Column(
            str, pa.Check.str_matches(SHA256_PATTERN), nullable=False,
            description="SHA-256 of the evaluated ranker (ranking_model.model_sha256 of the day).",
        ),
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
        "date": _date_col("Model day D (YYYY-MM-DD) whose ranker was registered."),
        "status": pa.Column(
            str, pa.Check.isin(_STATUSES), nullable=False,
            description="What this run did: promoted / champion_kept / already_champion (decided here), reused "
            "(decided earlier) or skipped (no trained ranker).",
        ),
        "decision": pa.Column(
            str, pa.Check.isin(_DECISIONS), nullable=False,
            description="The version's recorded promotion decision (tag streamrec.promotion); '' when skipped.",
        ),
        "registration": pa.Column(
            str, pa.Check.isin(_REGISTRATIONS), nullable=False,
            description="How the version was obtained: registered here, reused (same inputs) or race_lost; '' "
            "when skipped.",
        ),
        "reason": pa.Column(
            str, pa.Check.str_length(min_value=1), nullable=False,
            description="The decision's reason in words (or why the day was skipped).",
        ),
        "version": pa.Column(
            "int64", pa.Check.ge(-1), nullable=False,
            description="MLflow model version of streamrec-ranker for the day; -1 when skipped.",
        ),
        "run_id": pa.Column(str, nullable=False, description="MLflow run that logged the version; '' when skipped."),
        "fingerprint": pa.Column(
            str, nullable=False,
            description="Input fingerprint (model sha256, day, metrics, code version, config): one version per "
            "fingerprint; '' when skipped.",
        ),
        "reused": pa.Column(
            bool, nullable=False, description="True when the version was not created by this run (reused, race_lost)."
        ),
        "challenger_ndcg": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="The day's model's NDCG@20 on day D's evaluation set (the promotion gate's input).",
        ),
        "champion_ndcg": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="The champion's NDCG@20 on the same evaluation set at decision time; null without one.",
        ),
        "champion_version": pa.Column(
            "int64", pa.Check.ge(-1), nullable=False,
            description="Version holding alias champion after this run; -1 when none.",
        ),
        "decided_by": pa.Column(
            str, nullable=False, description="Dagster run id that made the promotion decision; '' when skipped."
        ),
        "ndcg_at_20": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="The ranker's NDCG@20 on day D (model_evaluation, method 'ours').",
        ),
        "popularity_ndcg_at_20": pa.Column(
            "float64", pa.Check.in_range(0, 1), nullable=True,
            description="The popularity baseline's NDCG@20 on day D (model_evaluation).",
        ),
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
        "date": _date_col("Feature day (YYYY-MM-DD) the record is about."),
        "feature_view": pa.Column(
            str, pa.Check.isin(_feature_views()), nullable=False, description="Name of the Feast feature view."
        ),
        "version": pa.Column(
            str, pa.Check.str_length(min_value=1), nullable=False,
            description="The view's version: a hash of its spec, prefixed by Feast's version number when set.",
        ),
        "features": pa.Column(
            "int64", pa.Check.gt(0), nullable=False, description="Number of features the view serves."
        ),
        "online_materialized": pa.Column(
            bool, nullable=False,
            description="True when this run wrote the day into the online store; False for a backfill of days "
            "older than the online store (offline only).",
        ),
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


# ---- the Feast feature views, declared from the feature tables' contracts (pure)

#: The contract of each feature view's source table: the single source of truth of its features.
FEATURE_TABLE_SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "user_features": user_features_schema,
    "item_features": item_features_schema,
}
#: Feast type of a contract dtype (a feature column of a feature table).
_FEAST_TYPE_OF_DTYPE = {"int64": "Int64", "float64": "Float64", "str": "String", "bool": "Bool"}


def _per_genre_prefixes() -> tuple[str, ...]:
    """Prefixes of the contract's per-genre column families (``<prefix><genre slug>``)."""
    from streamrec_assets.core.features import GENRE_PREFIX, GENRE_SHARE_PREFIX

    return (GENRE_SHARE_PREFIX, GENRE_PREFIX)


def _expand_pattern(view: str, pattern: str, genres: Iterable[str]) -> list[str]:
    """The concrete columns of a regex column of a feature table's contract: a per-genre family
    ``<prefix>.+`` becomes one column per catalogue genre (slug, sorted), as the feature assets
    write it (:func:`streamrec_assets.core.features.user_daily_activity`)."""
    from streamrec_assets.core.features import genre_slug

    prefix = pattern.removesuffix(".+")
    if pattern.endswith(".+") and prefix in _per_genre_prefixes():
        return [f"{prefix}{slug}" for slug in sorted({genre_slug(g) for g in genres})]
    raise ValueError(
        f"{view}: the contract's column pattern {pattern!r} has no concrete columns for a feature view; "
        f"declare its columns in contracts.py (per-genre families: {', '.join(_per_genre_prefixes())})."
    )


def feature_view_fields(view: str, genres: Iterable[str], non_features: Iterable[str]) -> dict[str, str]:
    """The features of feature view ``view`` (name -> Feast type, in the contract's column order),
    declared from the contract of its source table (:data:`FEATURE_TABLE_SCHEMAS`): every column
    but ``non_features`` (entity keys, ``date``, ``feature_timestamp``); a per-genre pattern column
    becomes one column per genre of ``genres`` (the item catalogue's)."""
    schema = FEATURE_TABLE_SCHEMAS[view]
    skip = set(non_features)
    genres = list(genres)
    fields: dict[str, str] = {}
    for name, column in schema.columns.items():
        if name in skip:
            continue
        dtype = _FEAST_TYPE_OF_DTYPE.get(str(column.dtype))
        if dtype is None:
            raise ValueError(f"{view}: contract column {name!r} has dtype {column.dtype}, which no Feast feature has.")
        for concrete in _expand_pattern(view, name, genres) if column.regex else [name]:
            fields[concrete] = dtype
    return fields


def stored_partition_problems(
    declared: dict[str, dict[str, str]], stored: dict[str, dict[str, dict[str, str]]]
) -> list[str]:
    """How stored feature partitions disagree with the declared views: ``stored`` is view -> day ->
    the partition's features (:func:`stored_features`). One line per (view, day) that disagrees,
    naming the missing, extra and mistyped columns."""
    problems = []
    for view in sorted(stored):
        want = declared.get(view)
        if want is None:
            problems.append(f"{view}: no feature view is declared for it")
            continue
        for day, have in sorted(stored[view].items()):
            parts = []
            if missing := [n for n in want if n not in have]:
                parts.append(f"missing columns {', '.join(missing)}")
            if extra := [n for n in have if n not in want]:
                parts.append(f"extra columns {', '.join(extra)}")
            if retyped := [n for n in want if n in have and have[n] != want[n]]:
                parts.append("mistyped columns " + ", ".join(f"{n} ({have[n]}, declared {want[n]})" for n in retyped))
            if parts:
                problems.append(f"{view} date={day}: " + "; ".join(parts))
    return problems


# ---- the Feast registry and online store against the stored feature partitions (pure)

def feast_type_of(arrow_type) -> str | None:
    """Feast type of a stored feature column by Arrow type (the types :func:`feature_view_fields` declares)."""
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


# ---- drift monitoring (streamrec_assets.core.drift)


def _drift_values() -> tuple[list[str], list[str]]:
    """The tables compared and the row statuses of a drift table."""
    from streamrec_assets.core.drift import COMPARED, SCORE_TABLE, SKIPPED

    return ["user_features", "item_features", SCORE_TABLE], [COMPARED, SKIPPED]


_DRIFT_TABLES, _DRIFT_STATUSES = _drift_values()


#: The drift report of a day (``feature_drift/date=D/data.parquet``): one row per (table, feature).
feature_drift_schema = pa.DataFrameSchema(
    {
        "date": _date_col("Serving day (YYYY-MM-DD, UTC) whose distributions are compared with its reference window."),
        "table": pa.Column(
            str, pa.Check.isin(_DRIFT_TABLES), nullable=False,
            description="Table of the feature: user_features / item_features, or batch_recommendations for the "
            "champion's score.",
        ),
        "feature": pa.Column(str, pa.Check.str_length(min_value=1), nullable=False,
                             description="Column compared (a numeric feature, or 'score')."),
        "status": pa.Column(
            str, pa.Check.isin(_DRIFT_STATUSES), nullable=False,
            description="'compared', or 'skipped' (too little comparable reference, or no values; see note).",
        ),
        "psi": pa.Column(
            "float64", pa.Check.ge(0), nullable=True,
            description="Population stability index of the day against the reference (quantile bins of the "
            "reference); null when skipped.",
        ),
        "flagged": pa.Column(bool, nullable=False, description="PSI above the run's threshold (default 0.2)."),
        "reference_mean": pa.Column("float64", nullable=True, description="Mean over the reference window's rows."),
        "current_mean": pa.Column("float64", nullable=True, description="Mean over the day's rows."),
        "reference_rows": pa.Column("int64", pa.Check.ge(0), nullable=False,
                                    description="Values in the reference (rows of its comparable days)."),
        "current_rows": pa.Column("int64", pa.Check.ge(0), nullable=False, description="Values on the day."),
        "reference_days": pa.Column("int64", pa.Check.ge(0), nullable=False,
                                    description="Days of the reference window that were compared."),
        "bins": pa.Column("int64", pa.Check.ge(0), nullable=False,
                          description="Value bins of the PSI (a bin for missing values comes on top); 0 when skipped."),
        "note": pa.Column(str, nullable=False, description="Why a row was skipped, or what to keep in mind; may be empty."),
    },
    checks=[
        pa.Check(lambda df: ~df.duplicated(["date", "table", "feature"]), name="one_row_per_feature_and_day"),
        pa.Check(lambda df: (df["status"] == "compared") == df["psi"].notna(), name="psi_iff_compared"),
        pa.Check(lambda df: ~df["flagged"] | (df["status"] == "compared"), name="flagged_only_when_compared"),
    ],
    strict=True,
    ordered=True,
    name="feature_drift",
)
