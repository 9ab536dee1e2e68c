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
from dataclasses import dataclass
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
    settings = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())["run_monitoring"]
    assert settings["enabled"] is True
    assert settings.get("max_resume_run_attempts", 0) == 0, "the default run launcher cannot resume runs"
    assert settings["free_slots_after_run_end_seconds"] > 0, "without it a dead run keeps its pool slots"
    return settings


@pytest.fixture
def world(tmp_path):
    home, out, code = tmp_path / "dagster_home", tmp_path / "out", tmp_path / "code"
    for folder in (home, out, code):
        folder.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
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


VICTIM, FOLLOWER = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"


@dataclass
class Daemon:
    """A running `dagster-daemon`, its log, and the instance it serves."""

    process: subprocess.Popen
    log_path: Path
    instance: dg.DagsterInstance

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]

    def wait_for(self, what: str, condition, timeout: float, step: float = 0.25):
        """The first truthy value of ``condition()`` within ``timeout`` seconds; fails the test with the
        runs, the slots and the daemon's log otherwise, or as soon as the daemon exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"dagster-daemon exited ({self.process.returncode}):\n{self.log_tail()}")
            value = condition()
            if value:
                return value
            time.sleep(step)
        states = [(r.run_id[:8], r.status.value, r.tags.get("dagster/parent_run_id", "")[:8])
                  for r in self.instance.get_runs()]
        pytest.fail(f"{what} not within {timeout}s; runs {states}; slots {slot_holders(self.instance)}\n"
                    f"{self.log_tail()}")


@dataclass
class Recovery:
    """What happened after the SIGKILL: seconds to the victim's FAILURE, to its slot being freed and
    to the second run being done; wall time of the slot being freed; the victim's finished run retries."""

    failed_s: float
    freed_s: float
    second_s: float
    freed_wall: float
    retries: list


def hang_in_a_pooled_step(daemon: Daemon, env: dict, code: Path, out: Path) -> tuple[int, list[str]]:
    """Launch the victim, whose pooled step hangs mid-write; (its worker's pid, the temporary file's name)."""
    instance, model_dir = daemon.instance, out / "model"
    launched(launch(env, code, VICTIM, hang=True))
    pid = int(daemon.wait_for("the first run writing its model",
                              lambda: read_bytes(storage_path(str(out / "writing.pid"))), timeout=90))
    run = instance.get_run_by_id(VICTIM)
    assert run.status == dg.DagsterRunStatus.STARTED
    assert slot_holders(instance) == {VICTIM}, "the step holds the pool's only slot"
    temps = [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".model.bin.") and f"-{pid}-" in temps[0], temps
    assert read_bytes(storage_path(str(model_dir / "model.bin"))) is None
    return pid, temps


def kill_and_recover(daemon: Daemon, env: dict, code: Path, out: Path, pid: int, temps: list[str],
                     slot_bound: float) -> Recovery:
    """SIGKILL the victim's run worker, launch a second run whose pooled step needs the slot, and wait
    for the victim's FAILURE, its slot being freed, the second run and the victim's run retry."""
    instance, model_dir = daemon.instance, out / "model"
    os.kill(pid, signal.SIGKILL)  # the run worker (in-process executor: the step runs in it)
    killed_at = time.monotonic()
    second_cli = launch(env, code, FOLLOWER, hang=False)  # a second run whose pooled step must get the slot
    try:
        daemon.wait_for("FAILURE of the killed run",
                        lambda: instance.get_run_by_id(VICTIM).status == dg.DagsterRunStatus.FAILURE,
                        timeout=FAILURE_BOUND_S + 30)
        failed_s = time.monotonic() - killed_at
        # Until the next write, the half-written file lies there, hidden; readers see no model at all.
        assert [p.name for p in model_dir.iterdir()] == temps
        assert read_bytes(storage_path(str(model_dir / "model.bin"))) is None, (
            "a half-written temporary file is never read as the model"
        )

        launched(second_cli)
        daemon.wait_for("the dead run's slot being freed", lambda: VICTIM not in slot_holders(instance),
                        timeout=slot_bound + 30)
        freed_s, freed_wall = time.monotonic() - killed_at, time.time()

        def done(run_id):
            run = instance.get_run_by_id(run_id)
            return run is not None and run.is_finished

        daemon.wait_for("the second run", lambda: done(FOLLOWER), timeout=CLAIM_BACKOFF_S + 60)
        second_s = time.monotonic() - killed_at
        retries = daemon.wait_for(
            "the run retry of the killed run",
            lambda: [r for r in instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": VICTIM}))
                     if r.is_finished],
            timeout=CLAIM_BACKOFF_S + 60,
        )
    finally:
        if second_cli.poll() is None:
            second_cli.kill()
    return Recovery(failed_s, freed_s, second_s, freed_wall, retries)


def assert_recovered(instance: dg.DagsterInstance, recovery: Recovery, out: Path) -> None:
    """The victim failed by SIGKILL; the second run and the run retry succeeded, both after the dead
    run's slot was freed; every slot is free; the next write swept the dead writer's temporary file."""
    failure = instance.get_run_by_id(VICTIM)
    messages = [e.message for e in instance.all_logs(VICTIM) if e.message]
    assert any("terminated by signal 9 (SIGKILL)" in m for m in messages), messages[-5:]
    assert failure.status == dg.DagsterRunStatus.FAILURE

    second = instance.get_run_by_id(FOLLOWER)
    assert second.status == dg.DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(FOLLOWER)][-10:]
    assert recovery.retries[0].status == dg.DagsterRunStatus.SUCCESS
    # Both waited for the dead run's slot: nothing was materialised before it was freed.
    for run_id in (FOLLOWER, recovery.retries[0].run_id):
        [materialization] = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert materialization.timestamp >= recovery.freed_wall - 1, (run_id, materialization.timestamp,
                                                                       recovery.freed_wall)
    assert slot_holders(instance) == set(), "every slot is free at the end"
    # The next write to the model's directory swept the dead writer's temporary file.
    model_dir = out / "model"
    assert [p.name for p in model_dir.iterdir()] == ["model.bin"]
    assert read_bytes(storage_path(str(model_dir / "model.bin"))) == b"complete model"


def test_killed_run_is_failed_and_frees_its_pool_slot(world, tmp_path):
    env, home, out, code = world
    settings = monitoring_settings()
    # The run's last update (its failure, then the run retry's bookkeeping tags a few seconds later)
    # + free_slots_after_run_end_seconds + one monitoring poll: ~30 s with the repo's settings.
    slot_bound = settings["free_slots_after_run_end_seconds"] + settings["poll_interval_seconds"] + 15
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "w")
    process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(code / "workspace.yaml")],
                               env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    daemon = Daemon(process, log_path, dg.DagsterInstance.from_config(str(home)))
    try:
        pid, temps = hang_in_a_pooled_step(daemon, env, code, out)
        recovery = kill_and_recover(daemon, env, code, out, pid, temps, slot_bound)
    finally:
        stop_group(process)
        log.close()

    print(f"\nSIGKILL -> FAILURE {recovery.failed_s:.1f}s, -> slot free {recovery.freed_s:.1f}s, "
          f"-> second run done {recovery.second_s:.1f}s")
    assert recovery.failed_s <= FAILURE_BOUND_S, recovery.failed_s
    assert recovery.freed_s <= slot_bound, (recovery.freed_s, slot_bound)
    assert_recovered(daemon.instance, recovery, out)
    daemon.instance.dispose()
