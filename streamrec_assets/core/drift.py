"""Distribution drift: the population stability index (PSI) of features and scores.

The serving day's feature distributions are compared with the ranker's training
window (:data:`streamrec_assets.assets.models.RANKER_WINDOW_DAYS` days before it);
the champion's score distribution with the :data:`SCORE_WINDOW_DAYS` days before.

PSI (per feature) = sum over bins of ``(cur - ref) * ln(cur / ref)``, where ``ref`` /
``cur`` are the shares of the reference / current values in each bin. The bins hold about
equal shares of the reference (edges at its quantiles; a value that alone holds a
bin's share, such as the zeros of a rolling count, is a bin of its own: see
:func:`quantile_edges`), open-ended at both sides so that every current value falls
into one; missing values (NaN) form a bin of their own.
An empty bin counts as ``epsilon`` instead of 0. Rule of thumb: < 0.1 stable, 0.1-0.2 a
moderate shift, > 0.2 a significant shift (the default threshold).

A rolling feature ``<name>_<w>d`` (or ``<name>_<w>d__<suffix>``) is only comparable
between days whose feature rows cover the same population and window, so reference
days with less than :data:`FULL_HISTORY_DAYS` days of history (``history_days``: the
feature tables hold entities active in the last 28 days, and the windows are clipped at
the start of history) are left out; a feature with fewer than ``min_reference_days``
comparable reference days is reported as skipped, never as drift.

Pure functions: no Dagster; the asset (:mod:`streamrec_assets.assets.drift`) and the
alert sensor call them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streamrec_assets.core.features import WINDOWS

#: The asset and its check (the alert sensor reads them from here, not from the asset module).
ASSET = "feature_drift"
PSI_CHECK = "feature_psi_below_threshold"
PSI_BINS = 10
PSI_EPSILON = 1e-4
DEFAULT_PSI_THRESHOLD = 0.2
#: Days of champion scores before the serving day that the score distribution is compared with.
SCORE_WINDOW_DAYS = 7
#: A feature day is comparable once the population window (entities active in 28 days) is full.
FULL_HISTORY_DAYS = max(WINDOWS)
MIN_REFERENCE_DAYS = 3
#: Fewer bins for a small day: each bin expects at least this many current rows (sampling noise
#: alone gives a PSI of about (bins - 1) / rows; with 137 rows and 10 bins, max over ~50 features > 0.2).
MIN_ROWS_PER_BIN = 25

#: Columns of the feature tables that are keys or bookkeeping, never features.
NON_FEATURES = frozenset({"date", "user_id", "item_id", "feature_timestamp", "history_days"})
_WINDOW = re.compile(r"_(\d+)d(?:__|$)")

#: The table whose ``score`` column is the champion's prediction (reported apart from the features).
SCORE_TABLE = "batch_recommendations"
#: Row statuses of the drift table.
COMPARED, SKIPPED = "compared", "skipped"

DRIFT_COLUMNS = [
    "date", "table", "feature", "status", "psi", "flagged", "reference_mean", "current_mean",
    "reference_rows", "current_rows", "reference_days", "bins", "note",
]


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Interior bin edges from the reference: about ``bins`` bins of equal reference mass.

    A value holding at least ``1/bins`` of the reference (a point mass: the zeros of a
    rolling count, a rate of exactly 1) gets a bin of its own, ``[v, next float above v)``;
    the other values are split at their own quantiles into the remaining bins. Plain
    deciles would merge a point mass with its neighbours and blur the rest of the
    distribution (e.g. 85 % zeros leave two bins for everything else).
    """
    values = np.asarray(reference, dtype="float64")
    values = values[np.isfinite(values)]
    if values.size == 0 or bins < 2:
        return np.empty(0)
    unique, counts = np.unique(values, return_counts=True)
    heavy = unique[counts * bins >= values.size]
    rest = values[~np.isin(values, heavy)]
    edges = [heavy, np.nextafter(heavy, np.inf)]
    remaining = bins - len(heavy)
    if rest.size and remaining >= 2:
        edges.append(np.quantile(rest, np.linspace(0.0, 1.0, remaining + 1)[1:-1]))
    return np.unique(np.concatenate(edges))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of ``values`` in the bins ``(-inf, e1), [e1, e2), .., [ek, inf)`` and, last, NaN."""
    values = np.asarray(values, dtype="float64")
    if values.size == 0:
        return np.zeros(len(edges) + 2)
    missing = ~np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=len(edges) + 1)
    return np.append(counts, missing.sum()) / values.size


def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``current`` against ``reference`` (NaN when either is empty)."""
    ref = np.asarray(reference, dtype="float64")
    cur = np.asarray(current, dtype="float64")
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = quantile_edges(ref, bins)
    r = np.maximum(bin_shares(ref, edges), epsilon)
    c = np.maximum(bin_shares(cur, edges), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def effective_bins(rows: int, bins: int = PSI_BINS, min_rows_per_bin: int = MIN_ROWS_PER_BIN) -> int:
    """``bins``, or fewer when ``rows`` current values would leave under ``min_rows_per_bin`` per bin (>= 2)."""
    return int(max(2, min(bins, rows // max(1, min_rows_per_bin))))


def feature_window(name: str) -> int | None:
    """The rolling window (days) of a feature named ``<x>_<w>d`` or ``<x>_<w>d__<suffix>``; None if none."""
    match = _WINDOW.search(name)
    return int(match.group(1)) if match else None


def numeric_features(frame: pd.DataFrame, exclude: Iterable[str] = NON_FEATURES) -> list[str]:
    """The numeric (non-boolean) feature columns of a feature table, in table order."""
    skip = set(exclude)
    return [
        str(c) for c in frame.columns
        if c not in skip and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _row(day: str, table: str, feature: str, **values: Any) -> dict[str, Any]:
    row = {
        "date": day, "table": table, "feature": feature, "status": SKIPPED, "psi": float("nan"), "flagged": False,
        "reference_mean": float("nan"), "current_mean": float("nan"), "reference_rows": 0, "current_rows": 0,
        "reference_days": 0, "bins": 0, "note": "",
    }
    row.update(values)
    return row


def compare(
    day: str,
    table: str,
    feature: str,
    reference: np.ndarray,
    current: np.ndarray,
    threshold: float,
    reference_days: int,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
    note: str = "",
) -> dict[str, Any]:
    """One row of the drift table: PSI and means of ``current`` against ``reference``."""
    reference = np.asarray(reference, dtype="float64")
    current = np.asarray(current, dtype="float64")
    common = dict(
        reference_mean=_mean(reference), current_mean=_mean(current), reference_rows=int(reference.size),
        current_rows=int(current.size), reference_days=int(reference_days),
    )
    if reference.size == 0 or current.size == 0:
        empty = "no reference values" if reference.size == 0 else "no current values"
        return _row(day, table, feature, note=f"{empty}{'; ' + note if note else ''}", **common)
    bins = effective_bins(current.size, bins)
    value = psi(reference, current, bins, epsilon)
    return _row(
        day, table, feature, status=COMPARED, psi=value, flagged=bool(value > threshold),
        bins=int(len(quantile_edges(reference, bins)) + 1), note=note, **common,
    )


def feature_drift(
    day: str,
    table: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    threshold: float = DEFAULT_PSI_THRESHOLD,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
    min_reference_days: int = MIN_REFERENCE_DAYS,
    full_history_days: int = FULL_HISTORY_DAYS,
) -> list[dict[str, Any]]:
    """One row per numeric feature of ``table``: ``current`` (day D) against ``reference`` (its window).

    Both frames are rows of the feature table with ``date`` and ``history_days`` columns; only
    reference days with ``history_days >= full_history_days`` count (see the module doc).
    """
    features = numeric_features(current if len(current.columns) else reference)
    if "history_days" in reference.columns and len(reference):
        reference = reference[reference["history_days"].to_numpy() >= full_history_days]
    days = int(reference["date"].nunique()) if "date" in reference.columns else 0
    rows = []
    for feature in features:
        if feature not in reference.columns or feature not in current.columns:
            rows.append(_row(day, table, feature, note="not in both the reference and the current day"))
            continue
        ref = reference[feature].to_numpy(dtype="float64")
        cur = current[feature].to_numpy(dtype="float64")
        if days < min_reference_days:
            rows.append(
                _row(
                    day, table, feature, reference_days=days, current_rows=int(cur.size), current_mean=_mean(cur),
                    note=f"{days} reference day(s) with {full_history_days} days of history; "
                    f"{min_reference_days} needed",
                )
            )
            continue
        rows.append(compare(day, table, feature, ref, cur, threshold, days, bins, epsilon))
    return rows


def score_drift(
    day: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    threshold: float = DEFAULT_PSI_THRESHOLD,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
    min_reference_days: int = 1,
    table: str = SCORE_TABLE,
) -> dict[str, Any]:
    """The drift row of the champion's scores (``score`` of rows with ``model_version > 0``).

    Scores of different champion versions are compared as they are (a new champion may
    score on another scale: the note names the versions).
    """
    def scored(frame: pd.DataFrame) -> pd.DataFrame:
        if frame is None or not len(frame) or "score" not in frame.columns:
            return pd.DataFrame({"date": [], "score": [], "model_version": []})
        return frame[frame["model_version"].to_numpy() > 0]

    ref, cur = scored(reference), scored(current)
    days = int(ref["date"].nunique())
    versions = sorted({int(v) for v in ref["model_version"]}), sorted({int(v) for v in cur["model_version"]})
    note = ""
    if versions[0] and versions[1] and versions[0] != versions[1]:
        note = f"champion versions: reference {versions[0]}, current {versions[1]}"
    if not len(cur):
        return _row(day, table, "score", reference_days=days, reference_rows=len(ref),
                    note="no champion scores on the day (no champion yet, or no recommendations)")
    if days < min_reference_days:
        return _row(day, table, "score", reference_days=days, current_rows=len(cur),
                    current_mean=_mean(cur["score"].to_numpy(dtype="float64")),
                    note=f"no champion scores in the {SCORE_WINDOW_DAYS} days before")
    return compare(
        day, table, "score", ref["score"].to_numpy(dtype="float64"), cur["score"].to_numpy(dtype="float64"),
        threshold, days, bins, epsilon, note,
    )


def drift_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The published table of a day (:data:`DRIFT_COLUMNS`, contract dtypes)."""
    frame = pd.DataFrame(list(rows), columns=DRIFT_COLUMNS)
    return frame.astype(
        {
            "date": object, "table": object, "feature": object, "status": object, "psi": "float64",
            "flagged": bool, "reference_mean": "float64", "current_mean": "float64", "reference_rows": "int64",
            "current_rows": "int64", "reference_days": "int64", "bins": "int64", "note": object,
        }
    )


@dataclass(frozen=True)
class DriftSummary:
    """The day's figures: over the features compared (the score is reported apart)."""

    features_compared: int
    features_skipped: int
    features_over_threshold: int
    max_psi: float
    mean_psi: float
    max_psi_feature: str
    offending: dict[str, float]  # "table.feature" -> PSI, worst first
    score_psi: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.features_over_threshold == 0


def summarize(table: pd.DataFrame, threshold: float) -> DriftSummary:
    """Max / mean PSI and the features over ``threshold`` (``table``: a day's drift table)."""
    features = table[table["table"] != SCORE_TABLE]
    compared = features[features["status"] == COMPARED]
    over = compared[compared["psi"] > threshold].sort_values("psi", ascending=False, kind="stable")
    score = table[(table["table"] == SCORE_TABLE) & (table["feature"] == "score")]
    worst = compared.sort_values("psi", ascending=False, kind="stable").head(1)
    return DriftSummary(
        features_compared=int(len(compared)),
        features_skipped=int(len(features) - len(compared)),
        features_over_threshold=int(len(over)),
        max_psi=float(compared["psi"].max()) if len(compared) else float("nan"),
        mean_psi=float(compared["psi"].mean()) if len(compared) else float("nan"),
        max_psi_feature=f"{worst['table'].iloc[0]}.{worst['feature'].iloc[0]}" if len(worst) else "",
        offending={f"{t}.{f}": round(float(p), 4) for t, f, p in zip(over["table"], over["feature"], over["psi"],
                                                                        strict=True)},
        score_psi=float(score["psi"].iloc[0]) if len(score) else float("nan"),
        threshold=float(threshold),
    )


# --------------------------------------------------------------------------- alerting


def _plain(value: Any) -> Any:
    """A metadata entry's value (Dagster wraps them in ``MetadataValue``s; plain values pass)."""
    if isinstance(value, str | int | float | bool | dict | list) or value is None:
        return value
    return getattr(value, "value", value)


def _offending(meta: Mapping[str, Any]) -> dict[str, float | None]:
    offending = meta.get("offending_features") or {}
    if isinstance(offending, str):
        return {name.strip(): None for name in offending.split(",") if name.strip()}
    return {str(k): (float(v) if isinstance(v, int | float) else None) for k, v in dict(offending).items()}


def drift_alert_text(metadata: Mapping[str, Any], partition: str = "", asset: str = "feature_drift") -> tuple[str, str]:
    """Title and details of the alert for one failed ``feature_psi_below_threshold`` evaluation.

    ``metadata``: the evaluation's metadata (``MetadataValue``s or plain values): ``threshold``,
    ``features_over_threshold``, ``max_psi``, ``max_psi_feature``, ``offending_features``
    ("table.feature" -> PSI), optionally ``score_psi`` and ``failed_partitions`` (a range's
    merged evaluation). ``partition``: the day evaluated ('' when unknown).
    """
    meta = {k: _plain(v) for k, v in metadata.items()}
    offending = _offending(meta)
    count = int(meta.get("features_over_threshold") or len(offending))
    threshold = meta.get("threshold")
    where = partition or str(meta.get("failed_partitions") or "")
    title = (
        f"{asset}{f' for {where}' if where else ''}: {count} feature{'s' if count != 1 else ''} drifted"
        + (f" (PSI > {float(threshold):g})" if isinstance(threshold, int | float) else "")
    )
    return title, "\n".join(_detail_lines(meta, offending))[:1500]


def _detail_lines(meta: Mapping[str, Any], offending: Mapping[str, float | None], prefix: str = "") -> list[str]:
    ranked = sorted(offending.items(), key=lambda kv: -(kv[1] if kv[1] is not None else 0.0))
    shown = [f"{name} PSI {value:.3f}" if value is not None else name for name, value in ranked[:8]]
    if len(ranked) > 8:
        shown.append(f"and {len(ranked) - 8} more")
    lines = [f"{prefix}{', '.join(shown)}"] if shown else []
    score = meta.get("score_psi")
    if isinstance(score, int | float) and not math.isnan(score):
        lines.append(f"{prefix}champion score PSI {float(score):.3f}")
    return lines


@dataclass(frozen=True)
class DriftAlertText:
    title: str
    details: str
    partition: str


def drift_run_alert(
    evaluations: Iterable[tuple[str | None, bool, Mapping[str, Any]]],
    run_partition: str = "",
    asset: str = "feature_drift",
) -> DriftAlertText | None:
    """One alert for a run's ``feature_psi_below_threshold`` evaluations: ``(partition, passed, metadata)``.

    A single-run range records one evaluation per day (with its partition) and one for the
    range (no partition, ``failed_partitions`` in its metadata); a one-day run only the latter,
    whose day is ``run_partition``. Returns None when no day failed.
    """
    evaluations = list(evaluations)
    per_day = {p: m for p, ok, m in evaluations if p and not ok}
    if not per_day:
        merged = [m for p, ok, m in evaluations if not p and not ok]
        if not merged:
            return None
        day = run_partition or str(_plain(merged[-1].get("failed_partitions")) or "")
        title, details = drift_alert_text(merged[-1], day, asset)
        return DriftAlertText(title, details, day)
    days = sorted(per_day)
    if len(days) == 1:
        title, details = drift_alert_text(per_day[days[0]], days[0], asset)
        return DriftAlertText(title, details, days[0])
    features: dict[str, float] = {}
    for meta in per_day.values():
        for name, value in _offending({k: _plain(v) for k, v in meta.items()}).items():
            features[name] = max(features.get(name, 0.0), value or 0.0)
    partition = f"{days[0]}..{days[-1]} ({len(days)} days)"
    threshold = _plain(per_day[days[-1]].get("threshold"))
    title = (
        f"{asset} for {partition}: {len(features)} feature{'s' if len(features) != 1 else ''} drifted"
        + (f" (PSI > {float(threshold):g})" if isinstance(threshold, int | float) else "")
    )
    lines = []
    for day in days:
        meta = {k: _plain(v) for k, v in per_day[day].items()}
        lines += _detail_lines(meta, _offending(meta), prefix=f"{day}: ")
    return DriftAlertText(title, "\n".join(lines)[:1500], partition)
