"""Batch serving helpers (pure; no Dagster)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def refresh_history(history: pd.DataFrame, plays: pd.DataFrame, max_history: int = 20) -> pd.DataFrame:
    """Add the plays of the serving day to a retrieval model's user histories.

    ``history``: ``user_id, item_id, last_played, plays``; ``plays``: ``user_id, item_id,
    event_timestamp``. Keeps the ``max_history`` most recent items per user.
    """
    if plays.empty:
        return history
    new = plays.groupby(["user_id", "item_id"], as_index=False).agg(
        last_played=("event_timestamp", "max"), plays=("event_timestamp", "size")
    )
    merged = pd.concat([history, new.astype(history.dtypes.to_dict())], ignore_index=True)
    merged = merged.groupby(["user_id", "item_id"], as_index=False).agg(
        last_played=("last_played", "max"), plays=("plays", "sum")
    )
    merged = merged.sort_values(["user_id", "last_played", "item_id"], ascending=[True, False, True], kind="stable")
    merged = merged[merged.groupby("user_id").cumcount() < max_history]
    return merged.astype(history.dtypes.to_dict()).reset_index(drop=True)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/max of request latencies, in milliseconds."""
    if not seconds:
        return {"requests": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(seconds) * 1000.0
    return {
        "requests": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }
