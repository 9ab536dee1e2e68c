"""Alert severities and routing.

=====  =====================================================  ===========================
P0     halted: a run failed and will not be retried           page someone
P1     a day skipped: a data contract failed, data is stale   fix today
P2     completed, degraded: the new model was not promoted    look at it this week
P3     recovered: a run or step succeeded after a retry       for the record
=====  =====================================================  ===========================

Every alert goes to the log; it is also POSTed as Slack-compatible JSON
(``{"text": ...}`` plus structured fields) to ``STREAMREC_ALERT_WEBHOOK_URL``
when that is set. The URL is a secret: it is never logged.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import asdict, dataclass, field
from enum import StrEnum

log = logging.getLogger("streamrec.alerts")

CONTRACT_MARKERS = ("failure budget", "contract", "no_feature_leakage", "reconciles_with_landing")


class Severity(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


MEANING = {
    Severity.P0: "halted after retries",
    Severity.P1: "a day skipped: contract failed or data stale",
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


def classify_run_failure(error_text: str, failed_checks: list[str], retry_number: int, max_retries: int) -> Severity | None:
    """Severity of a failed run; None while the run will still be retried (no page yet)."""
    text = error_text.lower()
    if failed_checks or any(marker in text for marker in CONTRACT_MARKERS):
        return Severity.P1  # persistent data error: retrying cannot help
    if retry_number < max_retries:
        return None
    return Severity.P0


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
