"""Day arithmetic on ISO partition keys (``YYYY-MM-DD``), the one home for it."""

from __future__ import annotations

from datetime import date, timedelta


def day_offset(day: str, offset: int) -> str:
    """``day`` shifted by ``offset`` days."""
    return (date.fromisoformat(day) + timedelta(days=offset)).isoformat()


def day_range(start: str, end: str) -> list[str]:
    """Every day of [start, end], in order."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if last < first:
        raise ValueError(f"end {end} is before start {start}")
    return [(first + timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def window_days(day: str, length: int, end_offset: int = 0) -> list[str]:
    """The ``length`` days ending ``end_offset`` days from ``day`` (``end_offset=-1``: ending the day before)."""
    last = day_offset(day, end_offset)
    return day_range(day_offset(last, -(length - 1)), last)
