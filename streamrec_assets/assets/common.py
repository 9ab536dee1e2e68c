"""Shared helpers for asset functions: metadata and contract checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    import pandas as pd
    import pandera.pandas as pa

CONTRACT_CHECK = "contract"


def contract_check_spec(asset: str, description: str | None = None) -> dg.AssetCheckSpec:
    """A blocking check: a failed contract stops everything downstream in the run."""
    return dg.AssetCheckSpec(
        CONTRACT_CHECK,
        asset=asset,
        blocking=True,
        description=description or f"The {asset} table satisfies its pandera schema (streamrec_assets.contracts).",
    )


def contract_check(df: pd.DataFrame, schema: pa.DataFrameSchema, asset: str) -> dg.AssetCheckResult:
    from streamrec_assets.contracts import validate

    result = validate(df, schema)
    metadata: dict[str, Any] = {"rows_checked": result.rows, "schema": schema.name or asset}
    if not result.passed:
        metadata["failures"] = dg.MetadataValue.json(result.failure_counts)
        metadata["failure_sample"] = dg.MetadataValue.md(
            result.failures.head(20).astype(str).to_markdown(index=False)
        )
    return dg.AssetCheckResult(
        asset_key=asset, check_name=CONTRACT_CHECK, passed=result.passed, metadata=metadata
    )


def table_metadata(df: pd.DataFrame, preview_rows: int = 5) -> dict[str, Any]:
    """Row count, column schema and a preview for the Dagster UI."""
    columns = [dg.TableColumn(str(name), str(dtype)) for name, dtype in df.dtypes.items()]
    preview = df.head(preview_rows)
    return {
        "dagster/row_count": len(df),
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "preview": dg.MetadataValue.md(preview.to_markdown(index=False) if len(preview) else "_empty_"),
    }


def table_result(
    asset: str,
    df: pd.DataFrame,
    metadata: dict[str, Any] | None = None,
    extra_checks: list[dg.AssetCheckResult] | None = None,
    preview_rows: int = 5,
) -> dg.MaterializeResult:
    """The asset's table with its metadata and its blocking ``contract`` check
    (schema ``<asset>_schema`` of :mod:`streamrec_assets.contracts`)."""
    from streamrec_assets import contracts

    schema = getattr(contracts, f"{asset}_schema")
    return dg.MaterializeResult(
        asset_key=asset,
        value=df,
        metadata={**table_metadata(df, preview_rows), **(metadata or {})},
        check_results=[contract_check(df, schema, asset), *(extra_checks or [])],
    )
