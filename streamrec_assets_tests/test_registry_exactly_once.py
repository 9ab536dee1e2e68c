"""registered_model exactly once: one MLflow version per input fingerprint, one promotion decision.

Two real processes materialise ``registered_model`` for the same day against one Dagster
home (pool ``registry`` *not* configured) and one MLflow SQLite backend. Each waits at a
barrier just before creating its model version, so both have searched, found nothing and
logged a run: the race of the incident (v8 and v9 with the same fingerprint, both
"promoted") happens on every run of this test, and must converge.

The upstream partitions (ranker card + model, evaluation metrics + scored slates, two tiny
feature tables for Feast) are written directly, so the test needs no pipeline run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from streamrec_assets.core.registry import (
    CHAMPION,
    DECISION_TAG,
    DUPLICATE_OF_TAG,
    FINGERPRINT_TAG,
    REGISTERED_BY_TAG,
    Candidate,
    Champion,
    Decision,
    Registration,
    Registry,
    Status,
    alias_to_apply,
    decide,
    register_day,
)
from streamrec_assets.settings import Settings

NAME = "streamrec-ranker"
FIRST, RACED = "2026-01-20", "2026-01-21"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ inputs


def _examples(day: str, seed: int, users: int = 40, items: int = 12) -> pd.DataFrame:
    """Synthetic slates whose label follows f1 (+ noise): a ranker learns something real."""
    rng = np.random.default_rng(seed)
    n = users * items
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    label = np.clip(np.round(f1 + 0.5 * rng.normal(size=n)), 0, 3).astype("int64")
    return pd.DataFrame(
        {
            "date": day,
            "user_id": np.repeat(np.arange(users, dtype="int64"), items),
            "item_id": np.tile(np.arange(items, dtype="int64"), users),
            "example_id": np.arange(n, dtype="int64"),
            "f1": f1,
            "f2": f2,
            "label": label,
        }
    )


def _publish_inputs(settings: Settings, day: str, seed: int) -> None:
    """The ranking_model and model_evaluation partitions of ``day`` (what registered_model reads)."""
    from streamrec_assets.assets.models import EVALUATION_SET
    from streamrec_assets.core.ranking import score, train_ranker
    from streamrec_assets.core.registry import ndcg_on
    from streamrec_assets.resources import Storage

    trained = train_ranker(_examples(day, seed), _examples(day, seed + 1), ["f1", "f2"], num_boost_round=10)
    slates = _examples(day, seed + 2).rename(columns={"label": "relevance"})
    slates["score"] = score(trained.model_bytes, slates)
    storage = Storage(base_uri=settings.storage_uri)
    sha = hashlib.sha256(trained.model_bytes).hexdigest()
    card = pd.DataFrame(
        [
            {
                "date": day, "status": "ok", "model_uri": str(storage.path("ranking_model", day, "model.ubj")),
                "model_sha256": sha, "train_days": 1, "validation_day": day, "train_rows": trained.train_rows,
                "validation_rows": trained.validation_rows, "best_iteration": trained.best_iteration,
                "validation_ndcg_at_20": trained.validation_ndcg, "features": json.dumps(trained.features),
                "params": json.dumps({"max_depth": 6}),
            }
        ]
    )
    ndcg = ndcg_on(slates, slates["score"].to_numpy())
    metrics = pd.DataFrame(
        {"date": day, "method": ["ours", "popularity"], "users": 40, "ndcg_at_20": [ndcg, ndcg / 2],
         "recall_at_100": [0.5, 0.25], "model_sha256": sha}
    )
    with storage.transaction("test inputs") as txn:
        txn.stage_table("ranking_model", day, card)
        txn.stage_file("ranking_model", day, "model.ubj", trained.model_bytes)
        txn.stage_table("model_evaluation", day, metrics)
        txn.stage_frame_file("model_evaluation", day, EVALUATION_SET, slates)
        txn.commit()


def _apply_feast(settings: Settings) -> None:
    """Two one-row feature tables and the Feast views over them (the lineage names their versions)."""
    from streamrec_assets.resources import FeastResource, Storage, feast_settings

    storage = Storage(base_uri=settings.storage_uri)
    stamp = pd.Timestamp(FIRST, tz="UTC")
    with storage.transaction("feature tables") as txn:
        for view, key in (("user_features", "user_id"), ("item_features", "item_id")):
            txn.stage_table(view, FIRST, pd.DataFrame({key: [1], "feature_timestamp": [stamp], "plays_7d": [3]}))
        txn.commit()
    feast = FeastResource(**dataclasses.asdict(feast_settings(settings)))
    feast.store().apply(feast.objects())


def _settings(root: Path) -> Settings:
    from streamrec_assets_tests.conftest import tiny_settings

    return tiny_settings(root)


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _materialize(settings: Settings, instance: dg.DagsterInstance, day: str) -> dict:
    """registered_model for ``day``; returns the figures of its materialisation."""
    from streamrec_assets_tests.conftest import run_range

    result = run_range(settings, instance, day, day, selection="registered_model", raise_on_error=False)
    out = {"success": result.success}
    for event in result.get_asset_materialization_events():
        meta = event.step_materialization_data.materialization.metadata
        out.update({k: getattr(v, "value", v) for k, v in meta.items() if k in
                    ("status", "registration", "version", "champion_version", "promoted", "decision")})
    return out


def _race_child(root: str, day: str, barrier, results) -> None:
    """One racing run: every process stops right before creating its version until both are there."""
    from mlflow import MlflowClient

    create = MlflowClient.create_model_version

    def synchronized(self, *args, **kwargs):
        barrier.wait(timeout=60)
        return create(self, *args, **kwargs)

    MlflowClient.create_model_version = synchronized
    try:
        results.put(_materialize(_settings(Path(root)), _instance(Path(root) / "dagster_home"), day))
    except BaseException as exc:  # report, never hang the parent
        results.put({"success": False, "error": repr(exc)})


#: The racing processes fork from a server that imported these once (Feast alone takes seconds):
#: they start warm, and nothing (no database connection, no thread) is shared with this process.
PRELOAD = ["streamrec_assets_tests.test_registry_exactly_once", "streamrec_assets.definitions", "feast", "xgboost",
           "mlflow.xgboost"]


def _processes():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from multiprocessing import forkserver

    _processes()
    forkserver.ensure_running()  # imports PRELOAD in the background while the inputs are built
    root = tmp_path_factory.mktemp("registry_race")
    settings = _settings(root)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")  # pools NOT configured in the instance
    _apply_feast(settings)
    _publish_inputs(settings, FIRST, seed=1)
    _publish_inputs(settings, RACED, seed=5)
    instance = _instance(home)
    first = _materialize(settings, instance, FIRST)  # creates the MLflow database and the first champion
    assert first["success"] and first["status"] == "promoted", first
    return root, settings, instance


@pytest.fixture(scope="module")
def client(world):
    from mlflow import MlflowClient

    _, settings, _ = world
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


# ------------------------------------------------------------------------------------- tests


def test_registered_model_is_in_the_registry_pool():
    from streamrec_assets.automation import POOL_LIMITS
    from streamrec_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("registered_model")).pools == {"registry"}
    assert POOL_LIMITS["registry"] == 1


@pytest.mark.slow  # two real processes
def test_two_racing_processes_register_one_version_and_decide_once(world, client):
    root, settings, instance = world
    ctx = _processes()
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_child, args=(str(root), RACED, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(o["success"] for o in outcomes), outcomes

    # Both created a version (the barrier made sure); the lowest won, the loser deleted its own.
    assert sorted(o["registration"] for o in outcomes) == ["race_lost", "registered"], outcomes
    assert len({o["version"] for o in outcomes}) == 1, "both runs report the same version"
    version = str(outcomes[0]["version"])
    day_versions = client.search_model_versions(f"name='{NAME}' and tags.partition='{RACED}'")
    assert [str(v.version) for v in day_versions] == [version]
    fingerprint = day_versions[0].tags[FINGERPRINT_TAG]
    assert len(client.search_model_versions(f"name='{NAME}' and tags.{FINGERPRINT_TAG}='{fingerprint}'")) == 1
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2, "one version per day, nothing else"

    # One decision: made by one run, read (not re-made) by the other; recorded once on the version.
    statuses = sorted(o["status"] for o in outcomes)
    assert statuses[1] == "reused" and Status(statuses[0]).is_decision, outcomes
    decision = Decision.from_tags(client.get_model_version(NAME, version).tags)
    assert decision is not None and decision.status.value == statuses[0]
    assert decision.decided_by == client.get_model_version(NAME, version).tags[REGISTERED_BY_TAG]
    champion = client.get_model_version_by_alias(NAME, CHAMPION).version
    assert str(champion) == (version if decision.status == Status.PROMOTED else decision.champion_before)
    assert {o["champion_version"] for o in outcomes} == {int(champion)}

    # The loser's MLflow run is marked as a duplicate of the winner and deleted.
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name("streamrec")
    deleted = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [r.data.tags.get(DUPLICATE_OF_TAG) for r in deleted] == [f"{NAME}/{version}"]
    live = client.search_runs([experiment.experiment_id], filter_string=f"tags.partition = '{RACED}'")
    assert [r.info.run_id for r in live] == [day_versions[0].run_id]

    # A third run of the same inputs reuses the version and the recorded decision.
    again = _materialize(settings, instance, RACED)
    assert again["success"] and again["registration"] == "reused" and again["status"] == "reused"
    assert str(again["version"]) == version
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
    assert Decision.from_tags(client.get_model_version(NAME, version).tags).to_tag() == decision.to_tag()


def test_a_registrant_that_died_leaves_no_twin_and_no_undecided_version(world, client):
    """A loser that died after creating its version, and an owner that died before deciding."""
    _, settings, _ = world
    import mlflow

    from streamrec_assets.assets.models import EVALUATION_SET
    from streamrec_assets.resources import Storage

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    storage = Storage(base_uri=settings.storage_uri)
    champion_before = client.get_model_version_by_alias(NAME, CHAMPION).version
    experiment_id = client.get_experiment_by_name("streamrec").experiment_id
    registry = Registry(client, NAME, experiment_id, decision_wait_s=0)
    day = "2026-01-22"
    candidate = Candidate(
        day=day, fingerprint="f" * 32, params={"partition": day}, metrics={"ndcg_at_20": 0.5},
        description="test", load_model=lambda: storage.read_bytes("ranking_model", RACED, "model.ubj"),
        lineage=lambda: {"partition": day},
    )
    owner, registration = registry.register(candidate, registrant="dead-owner")  # then "dies": no decision
    assert registration == Registration.REGISTERED
    dup_run = client.create_run(experiment_id).info.run_id
    dup = client.create_model_version(NAME, owner.source, run_id=dup_run,
                                      tags={FINGERPRINT_TAG: candidate.fingerprint, "partition": day})
    assert int(dup.version) > int(owner.version)  # a dead loser's twin

    outcome = register_day(registry, candidate, "next-run",
                           lambda: storage.read_table("model_evaluation", RACED, EVALUATION_SET), 0.005)
    assert outcome.registration == Registration.REUSED and str(outcome.version) == str(owner.version)
    assert outcome.status.is_decision and outcome.decision.decided_by == "next-run", "the next run took over"
    assert [str(v.version) for v in registry.versions(candidate.fingerprint)] == [str(owner.version)], "twin swept"
    assert DECISION_TAG in client.get_model_version(NAME, owner.version).tags
    assert client.get_run(dup_run).info.lifecycle_stage == "deleted"
    assert client.get_run(owner.run_id).info.lifecycle_stage == "active"
    # Clean up for the module's other tests: the champion alias back where it was.
    client.set_registered_model_alias(NAME, CHAMPION, champion_before)
    client.delete_model_version(NAME, owner.version)


def test_promotion_rules_are_typed_and_idempotent():
    first = decide(0.5, None, "1", "2026-01-02", 0.005, "run-a")
    assert first.status == Status.PROMOTED and "first registered model" in first.reason
    kept = decide(0.40, Champion("3", "2026-01-02", 0.50), "4", "2026-01-03", 0.005, "run-a")
    assert kept.status == Status.CHAMPION_KEPT and kept.champion_before == "3"
    same = decide(0.5, Champion("4", "2026-01-03", 0.5), "4", "2026-01-03", 0.005, "run-a")
    assert same.status == Status.ALREADY_CHAMPION
    older = decide(0.9, Champion("5", "2026-01-09", 0.1), "6", "2026-01-03", 0.005, "run-a")
    assert older.status == Status.CHAMPION_KEPT, "a backfilled model never replaces a newer champion"
    assert Decision.from_tags({DECISION_TAG: first.to_tag()}).to_tag() == first.to_tag()
    assert Decision.from_tags({DECISION_TAG: "not json"}) is None

    promoted = decide(0.6, Champion("3", "2026-01-02", 0.5), "4", "2026-01-03", 0.005, "run-a")
    assert alias_to_apply(promoted, "3"), "crashed between the record and the alias: re-apply"
    assert not alias_to_apply(promoted, "4"), "already applied: setting it again is the same decision"
    assert not alias_to_apply(promoted, "7"), "a later promotion is never undone"
    assert not alias_to_apply(kept, "3")
