"""After a run that died: private directories swept, its tools stopped, its journal read, state repaired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from umc_infra import private as _private
from umc_infra.process_identity import is_running, process_start
from umc_infra.run import recovery as _recovery
from umc_infra.run.journal import Journal
from umc_infra.secrets.redact import Redactor
from umc_infra.state.records import Actor, DeploymentRecord, InFlight, Records, RunRecord
from umc_infra.state.store import LocalStore
from umc_infra.terraform import statelock as _tflock
from umc_infra.terraform.backend import repair_local_state


@pytest.fixture
def shm(tmp_path, monkeypatch):
    """Private directories under tmp_path instead of /dev/shm."""
    monkeypatch.setattr(_private, "private_root", lambda: tmp_path)
    return tmp_path


DEAD_OWNER = (
    "import pathlib, subprocess, sys, time\n"
    "from umc_infra import private as _private\n"
    "_private.private_root = lambda: pathlib.Path(sys.argv[3])\n"
    "with _private.run_directory(sys.argv[1]) as d:\n"
    "    tool = subprocess.Popen([sys.executable, '-c', sys.argv[2]])\n"
    "    _private.register_tool(d, tool.pid)\n"
    "    print(d, tool.pid, flush=True)\n"
    "    time.sleep(60)\n"
)


def _dead_run_dir(shm, deployment: str, tool_code: str) -> tuple[str, int]:
    """A run's private directory with one tool in it, whose run was then SIGKILLed."""
    owner = subprocess.Popen([sys.executable, "-c", DEAD_OWNER, deployment, tool_code, str(shm)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert owner.stdout is not None
    directory, tool = owner.stdout.readline().split()
    owner.kill()  # SIGKILL: the owner cannot clean up
    owner.wait()
    return directory, int(tool)


def test_a_dead_runs_directory_is_swept_and_a_live_ones_is_kept(shm):
    with _private.run_directory("mine") as live:
        (live / "ssh_key").write_text("secret")
        directory, _ = _dead_run_dir(shm, "other", "pass")
        time.sleep(0.3)  # its tool exits by itself
        assert os.path.isdir(directory)
        removed = _private.sweep(deployment="mine")
        assert [str(p) for p in removed] == [directory]
        assert live.is_dir() and (live / "ssh_key").exists()
        assert oct(live.stat().st_mode & 0o777) == "0o700"
    assert not live.exists()


def test_a_dead_runs_lingering_tool_is_stopped_only_for_its_own_deployment(shm):
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n"
    directory, tool = _dead_run_dir(shm, "team-x", stubborn)
    try:
        assert _private.sweep(deployment="team-y") == []  # another deployment's tool: left alone, dir kept
        assert is_running(tool, process_start(tool))
        started = time.monotonic()
        assert [str(p) for p in _private.sweep(deployment="team-x", grace_s=0.5)] == [directory]
        assert not is_running(tool, None)
        assert time.monotonic() - started < 15
    finally:
        if is_running(tool, None):
            os.kill(tool, signal.SIGKILL)


def test_a_dead_runs_ansible_helper_is_stopped_whatever_the_deployment(shm):
    """An unregistered process that names the dead run's files (an Ansible worker in a session of its own, left by a
    killed ansible-playbook) is stopped, so the directory and its secrets go; registered tools are handled above."""
    directory, _ = _dead_run_dir(shm, "team-x", "pass")
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{directory}/vars.yml"],
                              start_new_session=True)  # fmt: skip
    try:
        time.sleep(0.3)  # the registered tool exits by itself
        assert [str(p) for p in _private.sweep(deployment="team-y")] == [directory]
        assert helper.wait(timeout=10) != 0 and not os.path.exists(directory)
    finally:
        helper.kill()


def test_a_reused_pid_is_not_the_same_process():
    me = os.getpid()
    assert is_running(me, process_start(me))
    assert not is_running(me, (process_start(me) or 0) + 1)
    assert not is_running(2**22 + 12345, None)


def _record(**run_fields) -> DeploymentRecord:
    now = datetime.now(UTC)
    run = RunRecord(action="provision", outcome="running", actor=Actor(user="ci", host="runner-7"),
                    started_at=now - timedelta(minutes=5), **run_fields)  # fmt: skip
    return DeploymentRecord(deployment="team-x", blueprint="linux-server", version="1.0.0", state="provisioning",
                            params={}, created_at=now, updated_at=now, runs=(run,))  # fmt: skip


def test_the_journal_notes_what_terraform_does_and_clears_it_at_the_end(tmp_path):
    records = Records(LocalStore(tmp_path))
    record = _record().model_copy(update={"runs": ()})
    journal = Journal.start(records, record, action="provision", blueprint_version="1.0.0", state="provisioning")
    journal.applying("vm", ("umc/team-x-1", "umc/team-x-2"))
    journal.lock_taken("vm", "lock-1")
    journal.lock_taken("vm", "lock-1")
    stored = records.get("team-x")
    assert stored is not None and stored.last_run is not None
    assert stored.last_run.outcome == "running"
    assert stored.last_run.in_flight == {"vm": InFlight(new_vms=("umc/team-x-1", "umc/team-x-2"), lock_ids=("lock-1",))}
    assert stored.last_run.terraform_who == _tflock.terraform_who()
    journal.landed("vm")
    assert records.get("team-x").last_run.in_flight == {}  # type: ignore[union-attr]
    journal.applying("vm", ("umc/team-x-3",))
    outcome = journal.failed(KeyboardInterrupt(), redactor=Redactor(), timings={"x": 1.0}, failed_step="ansible.base")
    final = records.get("team-x")
    assert outcome == "interrupted" and final is not None and final.last_run is not None
    assert (final.last_run.outcome, final.last_run.failed_step) == ("interrupted", "ansible.base")
    # A run that did not succeed keeps what was in flight: the next run looks for VMs no state knows.
    assert final.last_run.in_flight == {"vm": InFlight(new_vms=("umc/team-x-3",))}
    assert len(final.runs) == 1
    again = Journal.start(records, final, action="provision", blueprint_version="1.0.0")
    again.working("vm")
    again.finish("succeeded", timings={})
    assert records.get("team-x").last_run.in_flight == {}  # type: ignore[union-attr]


def test_a_dead_run_is_found_by_its_lease_or_its_record():
    record = _record(in_flight={"vm": InFlight(new_vms=("umc/a-1",), lock_ids=("l1",))}, terraform_who="root@r7")
    dead = _recovery.dead_run(record, None)
    assert dead is not None and dead.lock_ids == ("l1",) and dead.new_vms("vm") == ("umc/a-1",)
    assert dead.who == "root@r7" and "provision by ci@runner-7" in dead.describe()
    finished = record.model_copy(update={"runs": (record.runs[0].model_copy(update={"outcome": "succeeded"}),)})
    assert _recovery.dead_run(finished, None) is None
    # A run that failed while Terraform worked (a state it could not save) is looked after, but did not die.
    failed = record.model_copy(update={"runs": (record.runs[0].model_copy(update={"outcome": "failed"}),)})
    after_failure = _recovery.dead_run(failed, None)
    assert after_failure is not None and not after_failure.died and after_failure.new_vms("vm") == ("umc/a-1",)
    clean_failure = failed.model_copy(update={"runs": (failed.runs[0].model_copy(update={"in_flight": {}}),)})
    assert _recovery.dead_run(clean_failure, None) is None
    assert _recovery.dead_run(None, None) is None


def test_stale_state_locks_are_those_the_dead_run_took():
    since = datetime.now(UTC) - timedelta(minutes=5)
    lock = _tflock.StateLock(id="abc", who="root@r7", created=since + timedelta(minutes=1))
    assert _tflock.is_stale(lock, recorded=("abc",), who=None, since=since, in_flight=False)
    assert _tflock.is_stale(lock, recorded=(), who="root@r7", since=since, in_flight=True)
    assert not _tflock.is_stale(lock, recorded=(), who="root@r7", since=since, in_flight=False)  # not its module
    assert not _tflock.is_stale(lock, recorded=(), who="root@other", since=since, in_flight=True)
    older = lock.model_copy(update={"created": since - timedelta(minutes=1)})
    assert not _tflock.is_stale(older, recorded=(), who="root@r7", since=since, in_flight=True)


def test_a_state_file_left_empty_is_replaced_by_what_terraform_could_not_save_or_its_backup(tmp_path):
    state = tmp_path / "vm.tfstate"
    backup = tmp_path / "vm.tfstate.backup"
    errored = tmp_path / "errored.tfstate"
    assert not repair_local_state(state, errored)  # nothing there: nothing to do
    state.write_text(json.dumps({"version": 4, "resources": [1]}))
    assert not repair_local_state(state, errored)  # sound: untouched
    backup.write_text(json.dumps({"version": 4, "resources": []}))
    errored.write_text("")  # what Terraform writes when the disk is full too
    state.write_text("")  # what a Terraform killed while rewriting it leaves
    assert repair_local_state(state, errored)
    assert json.loads(state.read_text()) == {"version": 4, "resources": []}  # an empty errored state is no use
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    errored.write_text(json.dumps({"version": 4, "resources": [2]}))
    state.write_text('{"version": 4, "reso')
    assert repair_local_state(state, errored)
    assert json.loads(state.read_text())["resources"] == [2] and not errored.exists()  # the newest state wins
    state.write_text('{"version": 4, "reso')
    assert repair_local_state(state, errored)  # no backup and no errored state left: the cut file goes
    assert not state.exists()
