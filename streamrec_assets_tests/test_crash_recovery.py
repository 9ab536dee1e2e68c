"""Crash recovery with the real daemon: a run worker killed with SIGKILL in the middle of a
pooled step is marked FAILURE, its `training` pool slot is freed, the next pooled step runs,
and the half-written temporary file it left is never read and is swept by the next write.

The instance is a temporary DAGSTER_HOME with the repo's own dagster.yaml (run monitoring,
run retries, pools) and `dagster instance concurrency set training 1`; the code location is a
tiny file written by the test (one asset in pool `training` that writes through
`streamrec_assets.storage`), so the real pipeline is not needed. Runs are launched with the real
`dagster job launch` (queued; the daemon launches them through its code server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from streamrec_assets.storage import read_bytes, storage_path
from streamrec_assets_tests.servers import stop_group

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "training"
#: The code server checks its run workers every 0.5 s; allow for a loaded CI machine.
FAILURE_BOUND_S = 10
#: Dagster's claim back-off for a step blocked on a pool tops out at 15 s.
CLAIM_BACKOFF_S = 15

LOCATION = textwrap.dedent(
    '''
    """Test code location: one asset in pool `training` whose first attempt can hang mid-write."""
    import os
    import time

    import dagster as dg

    from streamrec_assets.storage import atomic_write, storage_path, write_bytes

    OUT = os.environ["CRASH_TEST_OUT"]


    class TrainConfig(dg.Config):
        hang: bool = False


    @dg.asset(pool="training")
    def model(context: dg.AssetExecutionContext, config: TrainConfig) -> dg.MaterializeResult:
        target = storage_path(os.path.join(OUT, "model", "model.bin"))
        # The run retry of a killed run carries the same config: only the first attempt hangs.
        if config.hang and "dagster/parent_run_id" not in context.run.tags:

            def write(tmp):
                with open(tmp, "wb") as handle:
                    handle.write(b"partial")
                    handle.flush()
                write_bytes(str(os.getpid()).encode(), storage_path(os.path.join(OUT, "writing.pid")))
                time.sleep(600)  # killed here, with the temporary file half written

            atomic_write(target, write)
        size = write_bytes(b"complete model", target)
        return dg.MaterializeResult(metadata={"bytes": size, "pid": os.getpid()})


    train = dg.define_asset_job("train", selection=[model], executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=[model], jobs=[train])
    '''
)


def monitoring_settings() -> dict:
    settings = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_monitoring"]
    assert settings["enabled"] is True
    assert settings.get("max_resume_run_attempts", 0) == 0, "the default run launcher cannot resume runs"
    assert settings["free_slots_after_run_end_seconds"] > 0, "without it a dead run keeps its pool slots"
    return settings


@pytest.fixture
def world(tmp_path):
    home, out, code = tmp_path / "dagster_home", tmp_path / "out", tmp_path / "code"
    for folder in (home, out, code):
        folder.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    (code / "crash_location.py").write_text(LOCATION)
    (code / "workspace.yaml").write_text(
        yaml.safe_dump({"load_from": [{"python_file": {"relative_path": "crash_location.py",
                                                        "working_directory": str(code),
                                                        "location_name": "crash_location"}}]})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "MLFLOW_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), CRASH_TEST_OUT=str(out), PYTHONWARNINGS="ignore")
    limit = subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", POOL, "1"],
                           env=env, cwd=code, capture_output=True, text=True, timeout=120)
    assert limit.returncode == 0, limit.stdout + limit.stderr
    return env, home, out, code


def launch(env: dict, code: Path, run_id: str, hang: bool) -> subprocess.Popen:
    """`dagster job launch` (the run is queued; the daemon launches it); call ``launched`` on the result."""
    config = {"ops": {"model": {"config": {"hang": hang}}}}
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", "launch", "-w", str(code / "workspace.yaml"), "-j", "train",
         "--run-id", run_id, "--config-json", json.dumps(config)],
        env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def launched(cli: subprocess.Popen) -> None:
    output, _ = cli.communicate(timeout=120)
    assert cli.returncode == 0, output[-3000:]


def slot_holders(instance: dg.DagsterInstance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return {slot.run_id for slot in info.claimed_slots}


def test_killed_run_is_failed_and_frees_its_pool_slot(world, tmp_path):
    env, home, out, code = world
    settings = monitoring_settings()
    # The run's last update (its failure, then the run retry's bookkeeping tags a few seconds later)
    # + free_slots_after_run_end_seconds + one monitoring poll: ~30 s with the repo's settings.
    slot_bound = settings["free_slots_after_run_end_seconds"] + settings["poll_interval_seconds"] + 15
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "w")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(code / "workspace.yaml")],
                              env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    instance = dg.DagsterInstance.from_config(str(home))

    def daemon_log() -> str:
        return log_path.read_text()[-4000:]

    def wait_for(what: str, condition, timeout: float, step: float = 0.25):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                pytest.fail(f"dagster-daemon exited ({daemon.returncode}):\n{daemon_log()}")
            value = condition()
            if value:
                return value
            time.sleep(step)
        states = [(r.run_id[:8], r.status.value, r.tags.get("dagster/parent_run_id", "")[:8])
                  for r in instance.get_runs()]
        pytest.fail(f"{what} not within {timeout}s; runs {states}; slots {slot_holders(instance)}\n{daemon_log()}")

    victim, follower = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
    model_dir = out / "model"
    target = storage_path(str(model_dir / "model.bin"))
    second_cli = None
    try:
        launched(launch(env, code, victim, hang=True))
        pid = int(wait_for("the first run writing its model", lambda: read_bytes(storage_path(str(out / "writing.pid"))),
                           timeout=90))
        run = instance.get_run_by_id(victim)
        assert run.status == dg.DagsterRunStatus.STARTED
        assert slot_holders(instance) == {victim}, "the step holds the pool's only slot"
        temps = [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1 and temps[0].startswith(".model.bin.") and f"-{pid}-" in temps[0], temps
        assert read_bytes(target) is None

        os.kill(pid, signal.SIGKILL)  # the run worker (in-process executor: the step runs in it)
        killed_at = time.monotonic()
        second_cli = launch(env, code, follower, hang=False)  # a second run whose pooled step must get the slot

        wait_for("FAILURE of the killed run",
                 lambda: instance.get_run_by_id(victim).status == dg.DagsterRunStatus.FAILURE, timeout=FAILURE_BOUND_S + 30)
        failed_s = time.monotonic() - killed_at
        # Until the next write, the half-written file lies there, hidden; readers see no model at all.
        assert [p.name for p in model_dir.iterdir()] == temps
        assert read_bytes(target) is None, "a half-written temporary file is never read as the model"

        launched(second_cli)
        wait_for("the dead run's slot being freed", lambda: victim not in slot_holders(instance), timeout=slot_bound + 30)
        freed_s, freed_wall = time.monotonic() - killed_at, time.time()

        def done(run_id):
            run = instance.get_run_by_id(run_id)
            return run is not None and run.is_finished

        wait_for("the second run", lambda: done(follower), timeout=CLAIM_BACKOFF_S + 60)
        second_s = time.monotonic() - killed_at
        retries = wait_for(
            "the run retry of the killed run",
            lambda: [r for r in instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": victim}))
                     if r.is_finished],
            timeout=CLAIM_BACKOFF_S + 60,
        )
    finally:
        if second_cli is not None and second_cli.poll() is None:
            second_cli.kill()
        stop_group(daemon)
        log.close()

    print(f"\nSIGKILL -> FAILURE {failed_s:.1f}s, -> slot free {freed_s:.1f}s, -> second run done {second_s:.1f}s")
    assert failed_s <= FAILURE_BOUND_S, failed_s
    assert freed_s <= slot_bound, (freed_s, slot_bound)
    failure = instance.get_run_by_id(victim)
    messages = [e.message for e in instance.all_logs(victim) if e.message]
    assert any("terminated by signal 9 (SIGKILL)" in m for m in messages), messages[-5:]
    assert failure.status == dg.DagsterRunStatus.FAILURE

    second = instance.get_run_by_id(follower)
    assert second.status == dg.DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(follower)][-10:]
    assert retries[0].status == dg.DagsterRunStatus.SUCCESS
    # Both waited for the dead run's slot: nothing was materialised before it was freed.
    for run_id in (follower, retries[0].run_id):
        [materialization] = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert materialization.timestamp >= freed_wall - 1, (run_id, materialization.timestamp, freed_wall)
    assert slot_holders(instance) == set(), "every slot is free at the end"
    # The next write to the model's directory swept the dead writer's temporary file.
    assert [p.name for p in model_dir.iterdir()] == ["model.bin"]
    assert read_bytes(target) == b"complete model"
    instance.dispose()
