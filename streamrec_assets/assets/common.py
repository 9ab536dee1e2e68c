"""Shared helpers for asset functions: write-audit-publish day by day, contracts, metadata.

Every asset that stores data goes through :func:`run_days`: for each partition of
the step (one day, or each day of a single-run range, in order) it

1. computes the day's value(s) (a :class:`DayResult`: tables and the files next to them),
2. **stages** them in a storage transaction (invisible to readers),
3. **audits** them: the pandera contract of every table plus the asset's own checks,
4. **publishes** them together when every blocking check passed, or moves them to
   quarantine and fails the step without retry, naming the failed checks and the
   quarantine location; the previously published value stays readable.

A day is written as soon as it is audited, so a range holds one day in memory at
a time. Errors of a persistent class fail at once (never retried); anything else
is left to the step's retry policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from streamrec_assets.errors import AuditFailedError, PersistentDataError, persistent_failure

if TYPE_CHECKING:
    import pandas as pd
    import pandera.pandas as pa

    from streamrec_assets.resources import Storage

CONTRACT_CHECK = "contract"


def check_spec(
    name: str, asset: str, description: str, *, blocking: bool = False, partitioned: bool = True
) -> dg.AssetCheckSpec:
    """A check of ``asset``; partitioned like the daily assets, so each day has its own result."""
    import warnings

    from streamrec_assets.partitions import daily_partitions

    with warnings.catch_warnings():  # partitioned checks are a preview feature of Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, blocking=blocking, description=description,
            partitions_def=daily_partitions if partitioned else None,
        )


def contract_check_spec(asset: str, description: str | None = None, *, partitioned: bool = True) -> dg.AssetCheckSpec:
    """A blocking check: a failed contract keeps the value out of storage and stops everything downstream."""
    return check_spec(
        CONTRACT_CHECK, asset,
        description or f"The {asset} table satisfies its pandera schema (streamrec_assets.contracts).",
        blocking=True, partitioned=partitioned,
    )


def schema_of(asset: str) -> pa.DataFrameSchema | None:
    from streamrec_assets import contracts

    return getattr(contracts, f"{asset}_schema", None)


def contract_check(df: pd.DataFrame, schema: pa.DataFrameSchema, asset: str) -> dg.AssetCheckResult:
    from streamrec_assets.contracts import validate

    result = validate(df, schema)
    metadata: dict[str, Any] = {"rows_checked": result.rows, "schema": schema.name or asset}
    if not result.passed:
        metadata["failures"] = dg.MetadataValue.json(result.failure_counts)
        metadata["failure_sample"] = dg.MetadataValue.md(
            result.failures.head(20).astype(str).to_markdown(index=False)
        )
    return dg.AssetCheckResult(asset_key=asset, check_name=CONTRACT_CHECK, passed=result.passed, metadata=metadata)


def _schema_column(schema: pa.DataFrameSchema | None, name: str):
    """The pandera column that describes ``name`` (by name, or a regex column matching it)."""
    import re

    if schema is None:
        return None
    if name in schema.columns:
        return schema.columns[name]
    for column in schema.columns.values():
        if getattr(column, "regex", False) and re.fullmatch(str(column.name), name):
            return column
    return None


def _column_type(series: pd.Series) -> str:
    """A readable type: strings and bytes are named as such (pandas calls both ``object``)."""
    import pandas as pd

    if series.dtype == object:
        kind = pd.api.types.infer_dtype(series, skipna=True)
        return {"string": "string", "bytes": "binary", "empty": "string"}.get(kind, kind)
    return str(series.dtype)


def column_schema(df: pd.DataFrame, asset: str | None = None) -> dg.TableSchema:
    """The table's columns with real types, and the descriptions and constraints of its contract."""
    schema = schema_of(asset) if asset else None
    columns = []
    for name in df.columns:
        column = _schema_column(schema, str(name))
        constraints = None
        if column is not None:
            constraints = dg.TableColumnConstraints(nullable=bool(column.nullable), unique=bool(column.unique))
        columns.append(
            dg.TableColumn(
                str(name),
                _column_type(df[name]),
                description=getattr(column, "description", None) or None,
                constraints=constraints,
            )
        )
    return dg.TableSchema(columns=columns)


def contract_column_schema(asset: str) -> dg.TableSchema | None:
    """The columns an asset's contract declares (definition metadata: shown before any run)."""
    schema = schema_of(asset)
    if schema is None:
        return None
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                str(name),
                str(column.dtype) if column.dtype is not None else "any",
                description=column.description or None,
                constraints=dg.TableColumnConstraints(nullable=bool(column.nullable), unique=bool(column.unique)),
            )
            for name, column in schema.columns.items()
        ]
    )


def table_metadata(df: pd.DataFrame, preview_rows: int = 5, asset: str | None = None) -> dict[str, Any]:
    """Row count, column schema (types and the contract's descriptions) and a preview for the UI."""
    preview = df.head(preview_rows)
    return {
        "dagster/row_count": len(df),
        "dagster/column_schema": column_schema(df, asset),
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False) if len(preview) else "_empty_"),
    }


@dataclass
class DayResult:
    """What one step produced for one day: published together, or not at all.

    ``tables``: asset -> the day's table (``<asset>/date=D/data.parquet``), audited by the
    asset's contract. ``files`` / ``frames``: (asset, name) -> bytes / a table stored next to
    it (models, manifests). ``checks``: further audits; blocking ones gate the publish.
    ``metadata``: asset -> the day's figures for the UI.
    """

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    frames: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    checks: list[dg.AssetCheckResult] = field(default_factory=list)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    contracts: bool = True


def _check_key(check: dg.AssetCheckResult) -> tuple[str, str]:
    return (check.asset_key.to_user_string() if check.asset_key else "", check.check_name or "")


def publish_day(
    storage: Storage,
    day: str | None,
    result: DayResult,
    blocking: set[tuple[str, str]],
    label: str = "",
) -> list[dg.AssetCheckResult]:
    """Stage, audit and publish one day's result; returns its check results.

    Raises :class:`AuditFailedError` (after quarantining the staged values) when a
    blocking check fails; the published values are then untouched.
    """
    with storage.transaction(label=label or ",".join(result.tables) or "files") as txn:
        for asset, df in result.tables.items():
            txn.stage_table(asset, day, df)
        for (asset, name), data in result.files.items():
            txn.stage_file(asset, day or "", name, data)
        for (asset, name), frame in result.frames.items():
            txn.stage_frame_file(asset, day or "", name, frame)
        checks = list(result.checks)
        if result.contracts:
            for asset, df in result.tables.items():
                schema = schema_of(asset)
                if schema is not None:
                    checks.append(contract_check(df, schema, asset))
        failed = [c for c in checks if not c.passed and _check_key(c) in blocking]
        if failed:
            names = [":".join(_check_key(c)) for c in failed]
            where = txn.quarantine(
                reason=f"failed blocking checks: {', '.join(names)}",
                details={
                    "partition": day,
                    "checks": {
                        n: {k: _jsonable(v) for k, v in c.metadata.items()} for n, c in zip(names, failed, strict=True)
                    },
                },
            )
            assets = sorted({_check_key(c)[0] for c in failed})
            errors = [str(getattr(c.metadata.get("error"), "value", "")) for c in failed if c.metadata.get("error")]
            raise AuditFailedError(
                f"{', '.join(assets)}{f' [{day}]' if day else ''} failed its blocking checks "
                f"({', '.join(names)}); nothing was published, the previous version stays in place. "
                f"The rejected value is in quarantine: {where}" + "".join(f"\n{e}" for e in errors),
                failed_checks=names,
                quarantine=where,
                asset=assets[0],
                partition=day or "",
                location=where,
            )
        txn.commit()
    return checks


def blocking_checks(context: dg.AssetExecutionContext) -> set[tuple[str, str]]:
    return {
        (spec.asset_key.to_user_string(), spec.name)
        for spec in context.assets_def.check_specs
        if spec.blocking
    }


def run_days(
    context: dg.AssetExecutionContext,
    storage: Storage,
    assets: Sequence[str],
    compute: Callable[[str], DayResult],
    days: Sequence[str] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Write-audit-publish each day of the step in order; then one MaterializeResult per asset.

    Every partition gets its own metadata (``context.add_asset_metadata(partition_key=D)``)
    and its own check evaluations, also inside a single-run range, so the UI's partition
    plots show each day's figures. (Metadata of the step's own result would be copied onto
    every partition of a range, so it carries none.)

    A multi-asset step writes all of ``assets`` together even when only some are selected
    (they are one day's consistent output); the ones not selected are recorded as runtime
    materialisations, so Dagster's record matches storage. If a day fails its audit, the
    days already published in this step are recorded the same way before the step fails.
    """
    days = list(days if days is not None else context.partition_keys)
    step = _StepDays(context, list(assets), ranged=len(days) > 1)
    for day in days:
        try:
            result = compute(day)
            checks = publish_day(storage, day, result, step.blocking, label=f"{','.join(assets)}@{day}")
        except PersistentDataError as err:
            yield from step.fail(day, err)
        step.record(day, result, checks)
        context.log.info(f"{day}: published {', '.join(assets)}")
    yield from step.results(days)


class _StepDays:
    """What one step has published so far, and how it reports it to Dagster."""

    def __init__(self, context: dg.AssetExecutionContext, assets: list[str], ranged: bool) -> None:
        self.context, self.assets, self.ranged = context, assets, ranged
        self.blocking = blocking_checks(context)
        self.selected = {k.to_user_string() for k in context.selected_asset_keys}
        self.selected_checks = {(k.asset_key.to_user_string(), k.name) for k in context.selected_asset_check_keys}
        self.per_day: dict[str, dict[str, dict[str, Any]]] = {a: {} for a in assets}
        self.checks: dict[tuple[str, str], list[tuple[str, dg.AssetCheckResult]]] = {}

    def record(self, day: str, result: DayResult, checks: list[dg.AssetCheckResult]) -> None:
        for check in checks:
            if _check_key(check) in self.selected_checks:
                self.checks.setdefault(_check_key(check), []).append((day, check))
        for asset in self.assets:
            figures = dict(result.metadata.get(asset, {}))
            if asset in result.tables:
                figures.setdefault("rows", len(result.tables[asset]))
                if "dagster/column_schema" in figures:  # with the contract's descriptions
                    figures["dagster/column_schema"] = column_schema(result.tables[asset], asset)
            self.per_day[asset][day] = figures
            if asset in self.selected:
                self.context.add_asset_metadata(partition_metadata(figures), asset_key=asset, partition_key=day)

    def fail(self, day: str, err: PersistentDataError) -> Iterator[dg.AssetCheckResult]:
        """Record the days already published, show the failed checks, and fail without retry."""
        _record_published(self.context, self.per_day, set(self.assets))
        if isinstance(err, AuditFailedError):
            for check in _failed_checks_of(err):
                if self.ranged:
                    _log_check(self.context, check, day, None)
                else:
                    yield check  # the UI shows which check failed, on which day
        raise persistent_failure(err) from err

    def results(self, days: list[str]) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        _record_published(self.context, self.per_day, set(self.assets) - self.selected)
        for asset in self.assets:
            if asset not in self.selected:
                continue
            mine = {key: seen for key, seen in self.checks.items() if key[0] == asset}
            if not self.ranged:
                yield dg.MaterializeResult(asset_key=asset, check_results=[seen[-1][1] for seen in mine.values()])
                continue
            yield dg.MaterializeResult(asset_key=asset)
            # now that each partition's materialisation exists, record each day's evaluation against it
            targets = _materializations_of_run(self.context, asset, days)
            for seen in mine.values():
                for day, check in seen:
                    _log_check(self.context, check, day, targets.get(day))
            for key, seen in mine.items():
                yield _merge_checks(key, seen)  # the check's step output: the range as a whole


def partition_metadata(figures: dict[str, Any]) -> dict[str, Any]:
    """One day's figures as Dagster metadata: ``rows`` becomes ``dagster/row_count``."""
    metadata = {k: v for k, v in figures.items() if k != "rows" and v is not None}
    if figures.get("rows") is not None:
        metadata["dagster/row_count"] = int(figures["rows"])
    return metadata


def _record_published(
    context: dg.AssetExecutionContext, per_day: dict[str, dict[str, dict[str, Any]]], assets: set[str]
) -> None:
    """Runtime materialisation events for days this step published outside its own outputs."""
    for asset in sorted(assets):
        for day, figures in per_day.get(asset, {}).items():
            context.log_event(
                dg.AssetMaterialization(asset_key=asset, partition=day, metadata=partition_metadata(figures))
            )


def _materializations_of_run(context: dg.AssetExecutionContext, asset: str, days: Sequence[str]) -> dict[str, Any]:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=list(days)), limit=len(days) * 2
    ).records
    return {r.partition_key: r for r in records if r.run_id == context.run.run_id}


def _log_check(context: dg.AssetExecutionContext, check: dg.AssetCheckResult, day: str, target: Any) -> None:
    """One partition's check evaluation, linked to that partition's materialisation when known."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluation,
        AssetCheckEvaluationTargetMaterializationData,
    )

    asset, name = _check_key(check)
    spec = next((s for s in context.assets_def.check_specs if (s.asset_key.to_user_string(), s.name) == (asset, name)),
                None)
    context.log_event(
        AssetCheckEvaluation(
            asset_key=dg.AssetKey.from_user_string(asset),
            check_name=name,
            passed=check.passed,
            metadata=check.metadata,
            severity=check.severity,
            description=check.description,
            blocking=bool(spec and spec.blocking),
            partition=day,
            target_materialization_data=None if target is None else AssetCheckEvaluationTargetMaterializationData(
                storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
            ),
        )
    )


def _failed_checks_of(err: AuditFailedError) -> list[dg.AssetCheckResult]:
    out = []
    for name in err.failed_checks:
        asset, check = name.split(":", 1)
        metadata: dict[str, Any] = {"partition": err.partition, "quarantine": dg.MetadataValue.path(err.quarantine)}
        out.append(dg.AssetCheckResult(asset_key=asset, check_name=check, passed=False, metadata=metadata))
    return out


def _merge_checks(key: tuple[str, str], seen: list[tuple[str, dg.AssetCheckResult]]) -> dg.AssetCheckResult:
    asset, name = key
    passed = all(c.passed for _, c in seen)
    last_day, last = seen[-1]
    metadata: dict[str, Any] = dict(last.metadata)
    if len(seen) > 1:
        metadata["partitions_checked"] = len(seen)
        rows = [c.metadata.get("rows_checked") for _, c in seen]
        if all(r is not None for r in rows):
            metadata["rows_checked"] = int(sum(getattr(r, "value", r) for r in rows))
        failed_days = [d for d, c in seen if not c.passed]
        if failed_days:
            metadata["failed_partitions"] = ", ".join(failed_days)
    return dg.AssetCheckResult(asset_key=asset, check_name=name, passed=passed, metadata=metadata,
                               severity=last.severity)


def _jsonable(value: Any) -> Any:
    value = getattr(value, "value", value)
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def day_metadata(df: pd.DataFrame, preview_rows: int = 5, **extra: Any) -> dict[str, Any]:
    """The per-day metadata of a table: rows, schema, preview and ``extra`` figures."""
    meta = table_metadata(df, preview_rows)
    meta["rows"] = meta.pop("dagster/row_count")
    meta.update(extra)
    return meta


def publish_table(
    context: dg.AssetExecutionContext,
    storage: Storage,
    asset: str,
    df: pd.DataFrame,
    metadata: dict[str, Any] | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish an unpartitioned table (a catalogue): a bad one never replaces the good one."""
    result = DayResult(tables={asset: df})
    try:
        checks = publish_day(storage, None, result, blocking_checks(context), label=asset)
    except AuditFailedError as err:
        yield from _failed_checks_of(err)
        raise persistent_failure(err) from err
    yield dg.MaterializeResult(
        asset_key=asset, metadata={**table_metadata(df, asset=asset), **(metadata or {})}, check_results=checks
    )
