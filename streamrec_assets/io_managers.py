"""The partition-aware Parquet IO manager: how steps *read* the published assets.

Assets write themselves, day by day, through write-audit-publish transactions
(:mod:`streamrec_assets.storage`, :func:`streamrec_assets.assets.common.run_days`);
their outputs reach this IO manager as ``None``. It still stores a DataFrame
output (split on its ``date`` column over the partitions of a range, every
partition written, empty ones included) for assets that return one.

Inputs:

* annotated :class:`~streamrec_assets.storage.PartitionReader`: a lazy handle over
  the upstream partitions (existence checked now, each day read when asked), so a
  step's memory grows with one day and its window, never with the range;
* annotated ``pd.DataFrame``: every requested partition in one frame (small tables).

Missing upstream partitions are reported by asset and date span with the command
that fixes them (:class:`~streamrec_assets.errors.MissingPartitionsError`), unless
the input's metadata sets ``allow_missing_partitions``. Persistent errors fail the
step without retry; anything else (an S3 outage while loading) is retried by the
step's retry policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from streamrec_assets.errors import MissingPartitionsError, PersistentDataError, persistent_failure
from streamrec_assets.resources import Storage
from streamrec_assets.storage import PartitionReader, format_key_spans

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PARTITION_COLUMN = "date"

__all__ = ["MissingPartitionsError", "PartitionedParquetIOManager", "format_key_spans"]


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Reads (and, for DataFrame outputs, writes) Parquet partitions of the assets' storage."""

    storage: Storage

    @classmethod
    def at(cls, uri: str, **s3: str) -> PartitionedParquetIOManager:
        return cls(storage=Storage(base_uri=uri, **s3))

    # -- output -------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        import pandas as pd

        if obj is None:
            return  # the asset published its partitions itself
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{type(self).__name__} stores pandas DataFrames; the output of "
                f"{context.asset_key.to_user_string()} is a {type(obj).__name__}."
            )
        asset = context.asset_key.to_user_string()
        store = self.storage.tables()
        with store.transaction(label=asset) as txn:
            if not context.has_asset_partitions:
                txn.stage_table(asset, None, obj)
                txn.commit()
                context.add_output_metadata({"uri": dg.MetadataValue.path(str(store.unpartitioned_path(asset))),
                                             "rows": len(obj)})
                return
            keys = list(context.asset_partition_keys)
            column = (context.definition_metadata or {}).get("partition_column", DEFAULT_PARTITION_COLUMN)
            if column not in obj.columns:
                raise ValueError(
                    f"Partitioned output of {asset} has no partition column '{column}'; columns are {list(obj.columns)}."
                )
            values = obj[column].astype(str)
            unexpected = sorted(set(values.unique()) - set(keys))
            if unexpected:
                raise ValueError(
                    f"Output of {asset} for partitions {', '.join(format_key_spans(keys))} holds rows for other "
                    f"days: {', '.join(format_key_spans(unexpected))}."
                )
            groups = {key: frame for key, frame in obj.groupby(values, sort=False)} if len(keys) > 1 else {}
            for key in keys:
                frame = obj if len(keys) == 1 else groups.get(key, obj.iloc[0:0])
                txn.stage_table(asset, key, frame.reset_index(drop=True))
            txn.commit()
        context.add_output_metadata(
            {"uri": dg.MetadataValue.path(str(store.asset_dir(asset))), "partitions_written": len(keys), "rows": len(obj)}
        )

    # -- input --------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> pd.DataFrame | PartitionReader:
        try:
            return self._load(context)
        except PersistentDataError as err:
            raise persistent_failure(err) from err

    def _load(self, context: dg.InputContext) -> pd.DataFrame | PartitionReader:
        asset = context.asset_key.to_user_string()
        store = self.storage.tables()
        if not context.has_asset_partitions:
            return store.read_table(asset)
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
        reader = store.reader(asset, list(context.asset_partition_keys), allow_missing=allow_missing)
        if reader.missing:
            context.log.warning(f"{asset}: skipping missing partitions {', '.join(format_key_spans(reader.missing))}")
        wants_reader = _typing_type(context)
        if isinstance(wants_reader, type) and issubclass(wants_reader, PartitionReader):
            return reader
        return reader.read_all()


def _typing_type(context: dg.InputContext) -> Any:
    try:
        return context.dagster_type.typing_type
    except Exception:  # build_input_context without a type
        return None
