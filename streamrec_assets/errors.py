"""Typed errors: every failure the pipeline raises on purpose belongs to one class.

* :class:`PersistentDataError` and its subclasses are *data* problems: the same
  input gives the same error, so they are never retried (neither as a step nor as
  a run) and page once. Each names the asset, the partition and the file.
* :class:`TransientError` wraps infrastructure problems that a retry with backoff
  can cure (connection refused, timeouts, 5xx, throttling).

Control flow and alert severity use these classes, never the text of a message.
"""

from __future__ import annotations

from collections.abc import Sequence


class StreamRecError(Exception):
    """Base of the project's own errors; ``asset``, ``partition`` and ``location`` name the culprit."""

    kind = "error"

    def __init__(self, message: str, *, asset: str = "", partition: str = "", location: str = ""):
        super().__init__(message)
        self.asset = asset
        self.partition = partition
        self.location = location

    def labels(self) -> dict[str, str]:
        out = {"error_class": type(self).__name__, "error_kind": self.kind}
        for name in ("asset", "partition", "location"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


class PersistentDataError(StreamRecError):
    """The input is wrong; retrying cannot help."""

    kind = "persistent"


class DeliveryError(PersistentDataError):
    """A landing file does not match its completion marker, is corrupt, or is not delivered."""


class NotDeliveredError(DeliveryError):
    """The landing day (or catalogue) is absent or has no completion marker yet."""


class BudgetExceededError(PersistentDataError):
    """Too many records of a day violate the record contract."""


class AuditFailedError(PersistentDataError):
    """A staged value failed its blocking checks; it was quarantined, the published one is untouched."""

    def __init__(self, message: str, *, failed_checks: Sequence[str] = (), quarantine: str = "", **kw):
        super().__init__(message, **kw)
        self.failed_checks = list(failed_checks)
        self.quarantine = quarantine


class MissingPartitionsError(PersistentDataError):
    """Upstream partitions that a step needs were never materialised."""

    def __init__(self, asset: str, missing: Sequence[str], where: str):
        from streamrec_assets.storage import format_key_spans

        self.missing = list(missing)
        spans = ", ".join(format_key_spans(missing))
        super().__init__(
            f"Asset '{asset}' has no materialised partition for {len(self.missing)} requested day(s): "
            f"{spans} (looked under {where}). Materialise them first, e.g. "
            f"`dagster asset materialize -m streamrec_assets.definitions --select {asset} "
            f"--partition-range {self.missing[0]}...{self.missing[-1]}`.",
            asset=asset,
            partition=self.missing[0] if self.missing else "",
            location=where,
        )


class NeverMaterializedError(PersistentDataError):
    """An unpartitioned asset that a step needs was never materialised."""

    def __init__(self, asset: str, where: str):
        super().__init__(
            f"Asset '{asset}' was never materialised (no {where}); materialise it first: "
            f"dagster asset materialize -m streamrec_assets.definitions --select {asset}",
            asset=asset,
            location=where,
        )


class TransientError(StreamRecError):
    """An infrastructure hiccup (network, throttling, 5xx): retried with backoff and jitter."""

    kind = "transient"


def persistent_failure(err: PersistentDataError):
    """A Dagster step failure that is never retried (neither step nor run), naming asset, partition, file."""
    import dagster as dg

    return dg.Failure(description=str(err), metadata=dict(err.labels()), allow_retries=False)


#: Exception types from the standard library and the storage clients that mean "try again later".
TRANSIENT_BUILTINS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may cure: our TransientError, connection/timeouts, throttling, 5xx."""
    if isinstance(exc, TransientError | TRANSIENT_BUILTINS):
        return True
    if isinstance(exc, PersistentDataError):
        return False
    try:  # botocore is present with s3fs; its client errors carry the HTTP status
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in ("Throttling", "SlowDown", "RequestTimeout")
    return False
