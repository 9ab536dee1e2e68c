"""Exactly-once registration and idempotent promotion in the MLflow model registry (no Dagster).

The ``registered_model`` asset builds a :class:`Candidate` per day and calls
:func:`register_day`; everything here works on an ``MlflowClient`` and plain data,
so two processes (or machines) can be raced against one registry in a test.

**One version per input fingerprint.** MLflow has no lock, but it has one atomic
step that orders concurrent writers: creating a model version. Its number is
``max(version) + 1`` inside the creating database transaction, and the version's
tags are inserted in that same transaction. So:

1. search the versions tagged with the fingerprint; if there are any, reuse the
   lowest (:attr:`Registration.REUSED`);
2. otherwise log the MLflow run (parameters, metrics, the model in XGBoost's own
   format with its signature, ``lineage.json``), then create the version *with* its fingerprint,
   lineage and owner tags and its description in one call: a version is never
   visible half-made;
3. search again: the **lowest version number with the fingerprint wins**. A version
   number is only allocated after every lower one was committed, so the loser of a
   race always sees the winner, and the winner never sees a lower rival. The loser
   deletes its own version, tags its run ``streamrec.duplicate_of`` and deletes it,
   and continues with the winner (:attr:`Registration.RACE_LOST`). Duplicates left
   by a loser that died in between are swept by the next registration of the same
   fingerprint (unless an alias points at them).

**One promotion decision per version.** The decision is recorded as the version tag
``streamrec.promotion`` (JSON, :class:`Decision`) *before* the champion alias moves.
The run that registered the winning version (its Dagster run id is the version's
``streamrec.registered_by`` tag; a step retry is the same run) decides; any other run
reads the recorded decision instead of deciding again, waiting up to
``decision_wait_s`` after the version's creation for a racing owner to record it.
Re-applying a recorded promotion is idempotent: the alias moves only while it still
points where it pointed when the decision was made (a crash between the tag and the
alias); setting the alias to the same version twice is one decision. A version whose
owner died before deciding is decided by the first run after the wait.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger("streamrec.registry")

CHAMPION, CHALLENGER = "champion", "challenger"
FINGERPRINT_TAG = "input_fingerprint"
PARTITION_TAG = "partition"
REGISTERED_BY_TAG = "streamrec.registered_by"
DECISION_TAG = "streamrec.promotion"
DUPLICATE_OF_TAG = "streamrec.duplicate_of"
#: How long a run that did not register a version waits for its registrant's decision.
DECISION_WAIT_S = 120.0
#: The MLflow UI when the tracking URI names no server: ``make mlflow-ui`` serves the local store there.
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
#: The output column of the ranker's MLflow signature (what ``Booster.predict`` returns per row).
SCORE_OUTPUT = "score"


class Registration(StrEnum):
    """How this run obtained the day's model version."""

    REGISTERED = "registered"  #: this run created it
    REUSED = "reused"  #: a version with the same input fingerprint already existed
    RACE_LOST = "race_lost"  #: a concurrent run created the same version first; ours was deleted


class Status(StrEnum):
    """What this run did for the day (exactly one run per version carries a decision status)."""

    PROMOTED = "promoted"  #: decided here: the version became champion
    CHAMPION_KEPT = "champion_kept"  #: decided here: the gate failed, the champion stays
    ALREADY_CHAMPION = "already_champion"  #: decided here: the version already was the champion
    REUSED = "reused"  #: the version's decision was already recorded; nothing decided again
    SKIPPED = "skipped"  #: no trained ranker for the day: nothing registered

    @property
    def is_decision(self) -> bool:
        return self in (Status.PROMOTED, Status.CHAMPION_KEPT, Status.ALREADY_CHAMPION)


@dataclass(frozen=True)
class Decision:
    """A promotion decision, recorded once on the model version it is about."""

    status: Status
    reason: str
    version: str
    champion_before: str | None
    challenger_ndcg: float
    champion_ndcg: float
    tolerance: float
    decided_by: str
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_tag(self) -> str:
        values = asdict(self)
        values["status"] = self.status.value
        values = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Decision | None:
        raw = tags.get(DECISION_TAG)
        if not raw:
            return None
        try:
            values = json.loads(raw)
            values["status"] = Status(values["status"])
            values["version"] = str(values["version"])
            if values.get("champion_before") is not None:
                values["champion_before"] = str(values["champion_before"])
            for name in ("challenger_ndcg", "champion_ndcg", "tolerance"):
                values[name] = float("nan") if values.get(name) is None else float(values[name])
            return cls(**values)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable %s tag %r: deciding again", DECISION_TAG, raw[:200])
            return None


@dataclass(frozen=True)
class Champion:
    """The current champion as the gate sees it: its NDCG@20 on the challenger's evaluation set."""

    version: str
    day: str | None
    ndcg: float


# ----------------------------------------------------------------------------------- pure rules


def decide(
    challenger_ndcg: float,
    champion: Champion | None,
    version: str,
    day: str,
    tolerance: float,
    decided_by: str,
    gate_day: str | None = None,
) -> Decision:
    """The promotion gate (:func:`streamrec_assets.core.evaluation.promotion_decision`) as a typed decision;
    ``gate_day``: the day whose slates both models were scored on (the model day's D-1)."""
    from streamrec_assets.core.evaluation import promotion_decision

    if champion is not None and champion.version == version:
        status, reason = Status.ALREADY_CHAMPION, f"version {version} is already the champion"
    else:
        promote, reason = promotion_decision(
            challenger_ndcg,
            None if champion is None else champion.ndcg,
            tolerance,
            day,
            None if champion is None else champion.version,
            None if champion is None else champion.day,
            gate_day,
        )
        status = Status.PROMOTED if promote else Status.CHAMPION_KEPT
    return Decision(
        status=status,
        reason=reason,
        version=version,
        champion_before=None if champion is None else champion.version,
        challenger_ndcg=float(challenger_ndcg),
        champion_ndcg=float("nan") if champion is None else float(champion.ndcg),
        tolerance=float(tolerance),
        decided_by=decided_by,
    )


def alias_to_apply(decision: Decision, current_champion: str | None) -> bool:
    """Whether a recorded decision still has to move the champion alias (idempotent re-apply).

    Only a promotion, only while the alias still points where it pointed when the decision was
    made: a later promotion of another version is never undone.
    """
    return (
        decision.status == Status.PROMOTED
        and current_champion != decision.version
        and current_champion == decision.champion_before
    )


def lowest(versions: Iterable[ModelVersion]) -> list[ModelVersion]:
    """Versions sorted by number, the winner first."""
    return sorted(versions, key=lambda v: int(v.version))


def ndcg_on(evaluation_set: pd.DataFrame, scores) -> float:
    """Mean NDCG@20 of ``scores`` re-ranking the evaluation set's slates."""
    from streamrec_assets.core.evaluation import NDCG_K
    from streamrec_assets.core.metrics import ndcg_at_k, rank_by_score

    ranked = rank_by_score(evaluation_set[["user_id", "item_id"]].assign(score=scores), 100)
    return float(ndcg_at_k(ranked, evaluation_set[["user_id", "item_id", "relevance"]], NDCG_K).mean())


def ranker_signature(feature_names: Iterable[str] | None):
    """The MLflow signature of a ranker: its features (in the model's order) as double columns in,
    one float ``score`` per row out; None when the model names no features."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    names = list(feature_names or [])
    if not names:
        return None
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in names]),
        outputs=Schema([ColSpec(DataType.float, SCORE_OUTPUT)]),
    )


# ------------------------------------------------------------------------------- MLflow UI links


def mlflow_ui_base(tracking_uri: str) -> str:
    """Base URL of the MLflow UI: the tracking server for an http(s) URI (credentials, query and
    fragment dropped), else :data:`DEFAULT_MLFLOW_UI` (a SQLite or file store has no UI of its own)."""
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri or "")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # an unparsable port
        return DEFAULT_MLFLOW_UI
    if parts.scheme not in ("http", "https") or not host:
        return DEFAULT_MLFLOW_UI
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (MLflow 3 route ``#/experiments/<id>/runs/<run_id>``)."""
    from urllib.parse import quote

    return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(str(run_id), safe='')}"


def mlflow_model_version_url(base: str, name: str, version: int | str) -> str:
    """The MLflow UI page of a model version (MLflow 3 route ``#/models/<name>/versions/<version>``)."""
    from urllib.parse import quote

    return f"{base}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


# ------------------------------------------------------------------------------- the candidate


@dataclass
class Candidate:
    """One day's model, ready to register. The loaders run only when a version is created."""

    day: str
    fingerprint: str
    params: dict[str, Any]
    metrics: dict[str, float]
    description: str
    load_model: Callable[[], bytes]
    lineage: Callable[[], dict[str, Any]]


@dataclass
class DayOutcome:
    """The registry's record of one day (a row of the ``registered_model`` partition)."""

    day: str
    status: Status
    reason: str
    registration: Registration | None = None
    decision: Decision | None = None
    version: int = -1
    run_id: str = ""
    fingerprint: str = ""
    champion_version: int = -1
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == Status.PROMOTED

    def row(self) -> dict[str, Any]:
        d = self.decision
        nan = float("nan")
        return {
            "date": self.day,
            "status": self.status.value,
            "decision": d.status.value if d else "",
            "registration": self.registration.value if self.registration else "",
            "reason": self.reason,
            "version": int(self.version),
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "reused": self.registration is not None and self.registration != Registration.REGISTERED,
            "challenger_ndcg": d.challenger_ndcg if d else nan,
            "champion_ndcg": d.champion_ndcg if d else nan,
            "champion_version": int(self.champion_version),
            "decided_by": d.decided_by if d else "",
            "ndcg_at_20": float(self.metrics.get("ndcg_at_20", nan)),
            "popularity_ndcg_at_20": float(self.metrics.get("popularity_ndcg_at_20", nan)),
        }


def skipped(day: str, reason: str, registry: Registry | None = None) -> DayOutcome:
    """A day without a trained ranker: nothing registered; the champion as it stands."""
    champion = registry.champion() if registry is not None else None
    return DayOutcome(
        day=day, status=Status.SKIPPED, reason=reason, champion_version=int(champion.version) if champion else -1
    )


# ------------------------------------------------------------------------------- the registry


class Registry:
    """The convergent registration protocol on one registered model (see the module docstring)."""

    def __init__(
        self,
        client: MlflowClient,
        name: str,
        experiment_id: str,
        decision_wait_s: float = DECISION_WAIT_S,
        poll_s: float = 0.5,
    ):
        self.client = client
        self.name = name
        self.experiment_id = experiment_id
        self.decision_wait_s = decision_wait_s
        self.poll_s = poll_s

    # -- setup ------------------------------------------------------------------------------------
    def ensure_model(self, description: str = "") -> None:
        """Create the registered model unless it exists (a concurrent creator is fine)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
            return
        except MlflowException:
            pass
        try:
            self.client.create_registered_model(self.name, description=description or None)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    # -- lookups ----------------------------------------------------------------------------------
    def versions(self, fingerprint: str) -> list[ModelVersion]:
        """Live versions with the fingerprint, lowest first."""
        found = self.client.search_model_versions(f"name='{self.name}' and tags.{FINGERPRINT_TAG}='{fingerprint}'")
        return lowest(found)

    def version(self, number: str) -> ModelVersion:
        return self.client.get_model_version(self.name, str(number))

    def champion(self) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException:
            return None

    def decisions(self) -> dict[str, Decision | None]:
        """Every live version's recorded promotion decision (None while undecided)."""
        found = self.client.search_model_versions(f"name='{self.name}'")
        return {str(v.version): Decision.from_tags(v.tags or {}) for v in found}

    def consistency(self) -> ChampionConsistency:
        """Alias ``champion`` against the recorded decisions (:func:`champion_consistency`).

        A concurrent run records its decision before it moves the alias: read again once when the
        first reading sees a promotion the alias does not follow yet."""
        def reading() -> ChampionConsistency:
            decisions = self.decisions()
            champion = self.champion()
            return champion_consistency(decisions, None if champion is None else str(champion.version))

        result = reading()
        if not result.passed:
            time.sleep(self.poll_s)
            result = reading()
        return result

    def model_bytes(self, number: str) -> bytes:
        from mlflow import xgboost as mlflow_xgboost

        booster = mlflow_xgboost.load_model(f"models:/{self.name}/{number}")
        return bytes(booster.save_raw(raw_format="ubj"))

    # -- registration -----------------------------------------------------------------------------
    def register(self, candidate: Candidate, registrant: str) -> tuple[ModelVersion, Registration]:
        """The version of ``candidate.fingerprint``: reused, registered here, or the race winner's."""
        found = self.versions(candidate.fingerprint)
        if found:
            self._sweep(found)
            return found[0], Registration.REUSED
        run_id, model_uri, model_id, record = self._log_run(candidate)
        from streamrec_assets.lineage import as_tags

        tags = {
            FINGERPRINT_TAG: candidate.fingerprint,
            PARTITION_TAG: candidate.day,
            REGISTERED_BY_TAG: registrant,
            **as_tags(record),
        }
        mine = self.client.create_model_version(
            self.name, model_uri, run_id=run_id, tags=tags, description=candidate.description, model_id=model_id
        )
        found = self.versions(candidate.fingerprint)
        if all(str(v.version) != str(mine.version) for v in found):
            found = lowest([*found, mine])
        winner = found[0]
        if str(winner.version) == str(mine.version):
            self._sweep(found)
            return mine, Registration.REGISTERED
        log.info(
            "%s: version %s of the same inputs was registered first; discarding version %s",
            candidate.day, winner.version, mine.version,
        )
        self._discard(mine.version, run_id, model_id, winner.version)
        return winner, Registration.RACE_LOST

    def _log_run(self, candidate: Candidate) -> tuple[str, str, str | None, dict[str, Any]]:
        import mlflow
        import xgboost
        from mlflow import xgboost as mlflow_xgboost

        from streamrec_assets.core.ranking import load_booster

        booster = load_booster(candidate.load_model())
        record = dict(candidate.lineage())
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"ranker-{candidate.day}") as run:
            mlflow.log_params(candidate.params)
            mlflow.log_metrics(candidate.metrics)
            # Explicit requirements: inferring them imports the model in a subprocess (~10 s per version).
            # An explicit signature from the model's own feature names (no input example: inferring or
            # validating one loads the model again); the UI shows the features as the model's inputs.
            # The version's identity is its input fingerprint tag, never the logged artifacts.
            info = mlflow_xgboost.log_model(
                booster,
                name="model",
                model_format="ubj",
                pip_requirements=[f"xgboost=={xgboost.__version__}"],
                signature=ranker_signature(booster.feature_names),
            )
            record["mlflow_run_id"] = run.info.run_id
            mlflow.log_dict(record, "lineage.json")
            mlflow.set_tags({PARTITION_TAG: candidate.day, FINGERPRINT_TAG: candidate.fingerprint})
        return run.info.run_id, info.model_uri, getattr(info, "model_id", None), record

    def _discard(self, number: str, run_id: str | None, model_id: str | None, winner: str) -> None:
        """Delete a duplicate version, and mark and delete the run that logged it."""
        from mlflow.exceptions import MlflowException

        for action in (
            lambda: self.client.delete_model_version(self.name, number),
            lambda: run_id and self.client.set_tag(run_id, DUPLICATE_OF_TAG, f"{self.name}/{winner}"),
            lambda: run_id and self.client.delete_run(run_id),
            lambda: model_id and self.client.delete_logged_model(model_id),
        ):
            try:
                action()
            except MlflowException as exc:  # deleted meanwhile by a sweeper: the goal is reached
                log.info("discarding duplicate version %s: %s", number, exc.message)

    def _sweep(self, found: list[ModelVersion]) -> None:
        """Remove duplicates that a racing loser left behind when it died (never an aliased one)."""
        now_ms = time.time() * 1000
        for dup in found[1:]:
            if now_ms - dup.creation_timestamp < self.decision_wait_s * 1000:
                continue  # a live loser may still be deleting it itself
            current = self.version(dup.version)
            if current.aliases:
                log.warning(
                    "version %s duplicates version %s but holds aliases %s: left in place",
                    dup.version, found[0].version, current.aliases,
                )
                continue
            self._discard(dup.version, current.run_id, None, found[0].version)

    # -- promotion --------------------------------------------------------------------------------
    def settle(
        self, version: ModelVersion, registrant: str, gate: Callable[[], Decision]
    ) -> tuple[Decision, bool]:
        """The version's promotion decision and whether this call made it (see the module docstring)."""
        current = self.version(version.version)
        recorded = Decision.from_tags(current.tags)
        owner = current.tags.get(REGISTERED_BY_TAG) == registrant
        if recorded is None and not owner:
            recorded = self._await_decision(current)
        if recorded is not None:
            champion = self.champion()
            if alias_to_apply(recorded, str(champion.version) if champion else None):
                self.client.set_registered_model_alias(self.name, CHAMPION, recorded.version)
            return recorded, False
        decision = gate()
        # The record first, then the alias: whoever sees the alias also sees the decision.
        self.client.set_model_version_tag(self.name, version.version, DECISION_TAG, decision.to_tag())
        if decision.status == Status.PROMOTED:
            self.client.set_registered_model_alias(self.name, CHAMPION, str(version.version))
        return decision, True

    def _await_decision(self, version: ModelVersion) -> Decision | None:
        deadline = version.creation_timestamp / 1000 + self.decision_wait_s
        while time.time() < deadline:
            time.sleep(self.poll_s)
            recorded = Decision.from_tags(self.version(version.version).tags)
            if recorded is not None:
                return recorded
        log.warning(
            "version %s has no promotion decision %.0f s after its creation (its registrant %s died?): deciding",
            version.version, self.decision_wait_s, version.tags.get(REGISTERED_BY_TAG, "?"),
        )
        return None

    def gate(self, version: str, day: str, evaluation_set: pd.DataFrame, tolerance: float, decided_by: str) -> Decision:
        """Challenger vs the current champion, both scored on the challenger's evaluation set."""
        from streamrec_assets.core.ranking import score

        challenger_ndcg = ndcg_on(evaluation_set, evaluation_set["score"].to_numpy())
        days = sorted(evaluation_set["date"].astype(str).unique()) if "date" in evaluation_set else []
        gate_day = days[0] if len(days) == 1 else None
        current = self.champion()
        champion = None
        if current is not None:
            number = str(current.version)
            ndcg = (
                challenger_ndcg
                if number == version
                else ndcg_on(evaluation_set, score(self.model_bytes(number), evaluation_set))
            )
            champion = Champion(number, current.tags.get(PARTITION_TAG), ndcg)
        return decide(challenger_ndcg, champion, version, day, tolerance, decided_by, gate_day)


def register_day(
    registry: Registry,
    candidate: Candidate,
    registrant: str,
    load_evaluation_set: Callable[[], pd.DataFrame],
    tolerance: float,
) -> DayOutcome:
    """Register (or reuse) the day's version, point ``challenger`` at it, settle its promotion."""
    version, registration = registry.register(candidate, registrant)
    number = str(version.version)
    registry.client.set_registered_model_alias(registry.name, CHALLENGER, number)
    decision, decided_here = registry.settle(
        version,
        registrant,
        lambda: registry.gate(number, candidate.day, load_evaluation_set(), tolerance, registrant),
    )
    champion = registry.champion()
    mine = decided_here or decision.decided_by == registrant  # a step retry of the deciding run
    status = decision.status if mine else Status.REUSED
    reason = decision.reason if mine else f"decided by run {decision.decided_by}: {decision.reason}"
    return DayOutcome(
        day=candidate.day,
        status=status,
        reason=reason,
        registration=registration,
        decision=decision,
        version=int(version.version),
        run_id=version.run_id or "",
        fingerprint=candidate.fingerprint,
        champion_version=int(champion.version) if champion is not None else -1,
        metrics=candidate.metrics,
    )


# --------------------------------------------------------------------------- consistency (pure)

#: Decisions that make their version the champion.
CHAMPION_DECISIONS = (Status.PROMOTED, Status.ALREADY_CHAMPION)


@dataclass(frozen=True)
class ChampionConsistency:
    """Whether alias ``champion`` points at the version of the latest decision that made a champion."""

    passed: bool
    champion: str | None
    expected: str | None
    versions: int
    promotions: int
    undecided: int
    note: str


def champion_consistency(decisions: dict[str, Decision | None], champion: str | None) -> ChampionConsistency:
    """Alias ``champion`` against the recorded decisions (version -> its decision, None when undecided).

    The expected champion is the version of the latest recorded promotion (ordered by ``decided_at``,
    then version number; ``already_champion`` confirms a champion like a promotion); with no promotion,
    no version may hold the alias. A mismatch means the alias moved outside the gate (by hand, or a
    run died between recording a promotion and moving the alias: the next run of that day re-applies it).
    """
    promotions = sorted(
        (d.decided_at, int(number), str(number))
        for number, d in decisions.items()
        if d is not None and d.status in CHAMPION_DECISIONS
    )
    expected = promotions[-1][2] if promotions else None
    champion = None if champion is None else str(champion)
    passed = champion == expected
    if passed:
        note = f"champion is version {champion}, the latest promoted" if champion else "no promotion, no champion"
    elif expected is None:
        note = f"alias champion points at version {champion}, but no version has a recorded promotion"
    else:
        note = f"alias champion points at version {champion}; the latest recorded promotion is version {expected}"
    return ChampionConsistency(
        passed=passed,
        champion=champion,
        expected=expected,
        versions=len(decisions),
        promotions=len(promotions),
        undecided=sum(d is None for d in decisions.values()),
        note=note,
    )
