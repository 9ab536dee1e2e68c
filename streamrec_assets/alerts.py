"""Alert severities, classification by error class, and routing.

=====  =====================================================  ===========================
P0     halted: a run failed and will not be retried           page someone
P1     a day skipped: persistent data error, failed blocking  fix today
       check, or data is stale
P2     completed, degraded: the new model was not promoted    look at it this week
P3     recovered: a run or step succeeded after a retry       for the record
=====  =====================================================  ===========================

A failed run is classified by the *type* of its errors, never by their text:

* a step failure raised through :func:`streamrec_assets.errors.persistent_failure`
  carries metadata ``error_class``, ``error_kind`` (``persistent`` / ``transient``),
  ``asset``, ``partition`` and ``location``; a persistent one (or a failed blocking
  asset check) is P1 at once: retrying cannot help, and no run retry happens
  (``run_retries.retry_on_asset_or_op_failure: false``), so it pages once;
* anything else (an infrastructure failure, an unknown error, a transient error that
  outlived its step retries) is P0, but only once no run retry will follow
  (``dagster/will_retry`` as the instance decided it, else ``dagster/retry_number``
  against the instance's ``max_retries``).

Titles name the assets, the partition and the error class (never the internal job
name); details name the file. Every alert goes to the log; it is also POSTed as
Slack-compatible JSON (``{"text": ...}`` plus structured fields) to
``STREAMREC_ALERT_WEBHOOK_URL`` when that is set. The URL is a secret: it is never logged.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

log = logging.getLogger("streamrec.alerts")

PERSISTENT, TRANSIENT = "persistent", "transient"


class Severity(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


MEANING = {
    Severity.P0: "halted after retries",
    Severity.P1: "a day skipped: persistent data error, failed check or stale data",
    Severity.P2: "completed, degraded",
    Severity.P3: "recovered on retry",
}


@dataclass(frozen=True)
class Alert:
    severity: Severity
    title: str
    details: str = ""
    run_id: str = ""
    asset: str = ""
    partition: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def payload(self) -> dict:
        """Slack-compatible JSON: ``text`` for humans, the fields for machines."""
        text = f"[{self.severity.value}] {self.title}"
        if self.details:
            text += f"\n{self.details}"
        body = {k: v for k, v in asdict(self).items() if v}
        body["severity"] = self.severity.value
        body["meaning"] = MEANING[self.severity]
        return {"text": text, **body}


# --------------------------------------------------------------------------- failure classification


def _class_names(*roots: type) -> frozenset[str]:
    names, todo = set(), list(roots)
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def persistent_class_names() -> frozenset[str]:
    """Names of :class:`~streamrec_assets.errors.PersistentDataError` and all its subclasses."""
    from streamrec_assets.errors import PersistentDataError

    return _class_names(PersistentDataError)


def transient_class_names() -> frozenset[str]:
    """Names of the error classes a retry may cure (:class:`~streamrec_assets.errors.TransientError`, ...)."""
    from streamrec_assets.errors import TRANSIENT_BUILTINS, TransientError

    return _class_names(TransientError, *TRANSIENT_BUILTINS)


@dataclass(frozen=True)
class StepFailure:
    """One failed step, as its typed error describes it."""

    step: str
    assets: tuple[str, ...] = ()
    error_class: str = ""
    error_kind: str = ""  #: "persistent", "transient" or "" (not one of ours: unknown)
    partition: str = ""
    location: str = ""
    message: str = ""

    @property
    def persistent(self) -> bool:
        return self.error_kind == PERSISTENT

    def key(self) -> tuple:
        """What makes two failures the same failure (a retry of it pages nothing new)."""
        return (self.assets, self.error_class, self.partition, self.location)

    @classmethod
    def from_labels(
        cls, step: str, labels: dict[str, str], step_assets: Sequence[str] = (), error_classes: Sequence[str] = (),
        message: str = "",
    ) -> StepFailure:
        """From the metadata of a ``persistent_failure`` (if any) and the classes of the error chain.

        Without labels, an exception class of the chain that is a persistent error class
        still makes the failure persistent (typed, whatever its message says).
        """
        kind = labels.get("error_kind", "")
        error_class = labels.get("error_class", "")
        for known, name in ((persistent_class_names(), PERSISTENT), (transient_class_names(), TRANSIENT)):
            typed = [c for c in error_classes if c in known]
            if not kind and typed:
                kind, error_class = name, error_class or typed[0]
        if not error_class:
            error_class = next((c for c in reversed(error_classes) if c), "")  # the root cause
        asset = labels.get("asset", "")
        return cls(
            step=step,
            assets=(asset,) if asset else tuple(step_assets),
            error_class=error_class,
            error_kind=kind,
            partition=labels.get("partition", ""),
            location=labels.get("location", ""),
            message=message,
        )


@dataclass(frozen=True)
class RunRetry:
    """Where a run stands in its run retries."""

    retry_number: int = 0
    max_retries: int = 0
    will_retry: bool | None = None  #: ``dagster/will_retry`` as the instance decided it, when it did

    @property
    def last(self) -> bool:
        """True when no run retry will follow this failure."""
        if self.will_retry is not None:
            return not self.will_retry
        return self.retry_number >= self.max_retries


def classify_run_failure(
    failures: Sequence[StepFailure], failed_blocking_checks: Sequence[str], retry: RunRetry
) -> Severity | None:
    """Severity of a failed run; None while a run retry will still follow (no page yet)."""
    if failed_blocking_checks or any(f.persistent for f in failures):
        return Severity.P1  # persistent data error: retrying cannot help
    if not retry.last:
        return None
    return Severity.P0


def _join(values: Iterable[str], most: int = 0) -> str:
    """Distinct non-empty values, comma separated (the first ``most`` and a count, when given)."""
    distinct = list(dict.fromkeys(v for v in values if v))
    if most and len(distinct) > most:
        return ", ".join(distinct[:most]) + f" and {len(distinct) - most} more"
    return ", ".join(distinct)


def failure_alert(
    run_id: str,
    failures: Sequence[StepFailure],
    failed_blocking_checks: Sequence[str],
    retry: RunRetry,
    run_assets: Sequence[str] = (),
    run_partition: str = "",
) -> Alert | None:
    """The alert for a failed run (None while a retry will follow), titled by asset, partition, error class."""
    severity = classify_run_failure(failures, failed_blocking_checks, retry)
    if severity is None:
        return None
    relevant = [f for f in failures if f.persistent] if severity == Severity.P1 else list(failures)
    named = [a for f in relevant for a in f.assets] + [c.split(":", 1)[0] for c in failed_blocking_checks]
    named = named or list(run_assets)
    assets = _join(named, most=3) or "a run"
    partition = _join(f.partition for f in relevant) or run_partition
    classes = _join(f.error_class for f in relevant)
    if severity == Severity.P1:
        what = classes or "failed blocking check"
    else:
        what = (classes or "step failure") if failures else "run failed without a step failure (infrastructure)"
        if retry.retry_number:
            what += f", after {retry.retry_number} run retr{'y' if retry.retry_number == 1 else 'ies'}"
    title = f"{assets} failed" + (f" for {partition}" if partition else "") + f": {what}"
    lines = []
    if len(set(named)) > 3:
        lines.append(f"assets: {_join(named)}")
    if failed_blocking_checks:
        lines.append(f"failed blocking checks: {', '.join(failed_blocking_checks)}")
    for f in relevant:
        kind = f.error_kind or "unknown"
        where = f" at {f.location}" if f.location else ""
        lines.append(f"{_join(f.assets) or f.step}: {f.error_class or 'error'} ({kind}){where}: {f.message}".strip())
    lines.append(f"run {run_id} (run retry {retry.retry_number} of {retry.max_retries})")
    first = relevant[0] if relevant else None
    labels = {
        k: v
        for k, v in {
            "error_class": classes,
            "error_kind": _join(f.error_kind for f in relevant),
            "location": _join(f.location for f in relevant),
            "failed_checks": ", ".join(failed_blocking_checks),
            "retry_number": str(retry.retry_number),
        }.items()
        if v
    }
    return Alert(
        severity,
        title,
        "\n".join(lines)[:1500],
        run_id=run_id,
        asset=assets,
        partition=partition or (first.partition if first else ""),
        labels=labels,
    )


def repeats(failures: Sequence[StepFailure], parent_failures: Sequence[StepFailure]) -> bool:
    """True when every persistent failure of a retry run was already a persistent failure of its parent
    (already paged: a run retry of a persistent error, if an instance retries step failures after all)."""
    mine = {f.key() for f in failures if f.persistent}
    return bool(mine) and mine <= {f.key() for f in parent_failures if f.persistent}


# ---------------------------------------------------------------------------------------- routing


def send(alert: Alert, webhook_url: str = "", timeout: float = 5.0) -> list[str]:
    """Route ``alert``; returns the channels it reached (``log`` always, ``webhook`` when set)."""
    level = logging.ERROR if alert.severity in (Severity.P0, Severity.P1) else logging.WARNING
    log.log(level, "%s", alert.payload()["text"])
    channels = ["log"]
    if webhook_url:
        request = urllib.request.Request(
            webhook_url,
            data=json.dumps(alert.payload()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
                response.read()
            channels.append("webhook")
        except OSError as exc:  # the alert is still in the log; never fail the sensor on delivery
            log.error("alert webhook delivery failed: %s", type(exc).__name__)
    return channels
