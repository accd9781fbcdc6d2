"""The deployment lease: waiting, takeover of dead or expired holders, renewal, loss, breaking (both backends)."""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from umc_infra import DeploymentLocked, StateBackendError
from umc_infra.cli.app import app
from umc_infra.errors import ExitCode as Exit
from umc_infra.state import lease as _lock
from umc_infra.state.lease import LockInfo, break_lock, holder, locked
from umc_infra.state.records import Actor
from umc_infra.state.store import LocalStore


class Faulty:
    """A store whose operations named in ``down`` fail as if the backend were unreachable."""

    def __init__(self, inner):
        self.inner = inner
        self.down: set[str] = set()

    def __getattr__(self, name):
        real = getattr(self.inner, name)

        def call(*args, **kwargs):
            if name in self.down:
                raise StateBackendError(f"{name}: the backend is down (test)", step="store")
            return real(*args, **kwargs)

        return call


def lease_doc(*, host="elsewhere", expires_in_s=30.0, pid=4242, process_start=None, boot_id=None, pid_ns=None):
    now = datetime.now(UTC)
    return LockInfo(
        lock_id="other-run", deployment="team-x", operation="provision",
        actor=Actor(user="ci", host=host, ci_job_id="77"), pid=pid, since=now - timedelta(minutes=5),
        expires_at=now + timedelta(seconds=expires_in_s), ttl_s=30, boot_id=boot_id, pid_namespace=pid_ns,
        process_start=process_start,
    )  # fmt: skip


def test_a_second_run_waits_then_gives_up_naming_the_holder_and_the_expiry(any_store):
    with locked(any_store, "team-x", operation="provision", timeout_s=0, ttl_s=30) as mine:
        started = time.monotonic()
        second = locked(any_store, "team-x", operation="destroy", timeout_s=0.4, ttl_s=30, poll_s=0.05)
        with pytest.raises(DeploymentLocked) as info, second:
            pass
        assert time.monotonic() - started >= 0.4
        message = str(info.value)
        assert info.value.holder == mine.info.holder and info.value.since == mine.info.since
        assert "for provision since" in message and f"expires at {mine.info.expires_at:%H:%M:%S} UTC" in message
        assert "umc-infra unlock --force team-x" in message
        assert holder(any_store, "team-x") == mine.info
    assert holder(any_store, "team-x") is None


CHILD = r"""
import sys, time
from pathlib import Path
from umc_infra.state.lease import locked
from umc_infra.settings import Settings
from umc_infra.state.aws import AwsClient
from umc_infra.state.s3 import S3Store
from umc_infra.state.store import LocalStore

kind, *where = sys.argv[1:]
if kind == "local":
    store = LocalStore(Path(where[0]))
else:
    endpoint, bucket = where
    settings = Settings(backend="s3", state_bucket=bucket, s3_endpoint=endpoint, s3_access_key_id="testing",
                        s3_secret_access_key="testing", s3_region="eu-west-1")
    store = S3Store(AwsClient(settings, "s3"), bucket)
with locked(store, "team-x", operation="provision", timeout_s=5, ttl_s=60):
    print("held", flush=True)
    time.sleep(120)
"""


def where(store):
    if isinstance(store, LocalStore):
        return ["local", str(store.root)]
    return ["s3", store._s3.endpoint, store.bucket]


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(any_store):
    child = subprocess.Popen([sys.executable, "-c", CHILD, *where(any_store)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        # the control: while the child lives, its lease holds
        with pytest.raises(DeploymentLocked), locked(any_store, "team-x", operation="destroy", timeout_s=0, ttl_s=30):
            pass
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, but not reaped: a zombie still has a pid
        started = time.monotonic()
        with locked(any_store, "team-x", operation="destroy", timeout_s=0, ttl_s=30) as mine:
            assert time.monotonic() - started < 5  # no waiting for its 60 s lease
            assert mine.previous is not None and mine.previous.pid == child.pid
            assert not mine.previous.expired()  # taken over because the process is gone, not by expiry
            assert holder(any_store, "team-x").lock_id == mine.info.lock_id
    finally:
        child.kill()
        child.wait()


def test_process_identity_is_exact_on_this_machine():
    here = _lock._identity(lock_id="x", deployment="team-x", operation="provision", ttl_s=30)
    assert here.holder_gone() is False  # this very process
    # a reused pid: the same number, but a process that started at another time
    assert here.model_copy(update={"process_start": here.process_start + 1}).holder_gone() is True
    assert here.model_copy(update={"pid": 2**22 + 17}).holder_gone() is True  # no such process
    # cannot be told: another machine, another boot, another PID namespace, no identity recorded
    other_host = here.actor.model_copy(update={"host": socket.gethostname() + "-other"})
    assert here.model_copy(update={"actor": other_host}).holder_gone() is None
    assert here.model_copy(update={"boot_id": "another-boot"}).holder_gone() is None
    assert here.model_copy(update={"pid_namespace": "pid:[1]"}).holder_gone() is None
    assert here.model_copy(update={"process_start": None}).holder_gone() is None


@pytest.mark.parametrize("expires_in_s", [-10.0, 30.0])
def test_a_holder_elsewhere_is_taken_over_only_once_its_lease_expired(any_store, expires_in_s):
    theirs = lease_doc(expires_in_s=expires_in_s)
    any_store.create("locks/team-x.json", theirs.model_dump_json().encode())
    if expires_in_s > 0:  # alive as far as anyone here can tell: wait, then give up
        second = locked(any_store, "team-x", operation="provision", timeout_s=0.2, ttl_s=30, poll_s=0.05)
        with pytest.raises(DeploymentLocked, match=r"ci@elsewhere pid 4242 \(CI job 77\)"), second:
            pass
        assert holder(any_store, "team-x") == theirs
        return
    with locked(any_store, "team-x", operation="provision", timeout_s=0, ttl_s=30) as mine:
        assert mine.previous == theirs
        assert holder(any_store, "team-x") == mine.info


def test_the_clock_skew_margin_delays_a_takeover(any_store, monkeypatch):
    monkeypatch.setattr(_lock, "CLOCK_SKEW_S", 60.0)
    any_store.create("locks/team-x.json", lease_doc(expires_in_s=-10).model_dump_json().encode())
    # expired 10 s ago by our clock, but clocks may be 60 s apart
    with pytest.raises(DeploymentLocked), locked(any_store, "team-x", operation="provision", timeout_s=0, ttl_s=30):
        pass


def test_renewal_keeps_a_lease_alive_well_past_its_ttl(any_store, monkeypatch):
    monkeypatch.setattr(_lock, "CLOCK_SKEW_S", 0.1)
    lost = []
    with locked(
        any_store, "team-x", operation="provision", timeout_s=0, ttl_s=1.2, on_lost=lambda: lost.append(1)
    ) as mine:
        first = mine.info.expires_at
        time.sleep(3.0)  # two and a half times the ttl
        assert not mine.lost.is_set() and lost == []
        assert mine.info.expires_at >= first + timedelta(seconds=1.6)
        assert holder(any_store, "team-x") == mine.info
        second = locked(any_store, "team-x", operation="destroy", timeout_s=0.3, ttl_s=30, poll_s=0.05)
        with pytest.raises(DeploymentLocked), second:
            pass
    assert holder(any_store, "team-x") is None


def test_a_lease_that_cannot_be_renewed_is_lost_before_anyone_takes_it_over(any_store, monkeypatch, caplog):
    monkeypatch.setattr(_lock, "CLOCK_SKEW_S", 0.5)
    faulty = Faulty(any_store)
    lost_at = []
    with locked(faulty, "team-x", operation="provision", timeout_s=0, ttl_s=0.6,
                on_lost=lambda: lost_at.append(time.monotonic())) as mine:  # fmt: skip
        faulty.down = {"replace", "get_versioned"}  # the backend stops answering this run
        with locked(any_store, "team-x", operation="destroy", timeout_s=5, ttl_s=30, poll_s=0.05) as theirs:
            taken_at = time.monotonic()
            assert theirs.previous is not None and theirs.previous.lock_id == mine.info.lock_id
            assert mine.lost.is_set() and len(lost_at) == 1
            assert lost_at[0] <= taken_at  # the old holder knew first
            faulty.down = set()
        assert holder(any_store, "team-x") is None
    assert "could not renew the lease of team-x" in caplog.text


class DeletesAnyVersion(Faulty):
    """The old lock's release: delete whatever is there (get-then-delete)."""

    def delete_if(self, key, *, version):
        self.inner.delete(key)
        return True


@pytest.mark.parametrize("compare_and_delete", [True, False], ids=["compare-and-delete", "control-plain-delete"])
def test_a_broken_lease_stops_its_old_holder_whose_release_leaves_the_new_lease_alone(any_store, compare_and_delete):
    store = any_store if compare_and_delete else DeletesAnyVersion(any_store)
    lost = threading.Event()
    old_block = locked(store, "team-x", operation="provision", timeout_s=0, ttl_s=0.6, on_lost=lost.set)
    old = old_block.__enter__()
    try:
        assert break_lock(any_store, "team-x", force=True).lock_id == old.info.lock_id
        with locked(any_store, "team-x", operation="destroy", timeout_s=0, ttl_s=30) as new:
            assert new.previous is None  # the deployment was free when it came
            assert lost.wait(3) and old.lost.is_set()  # the old holder's next renewal was refused
            old_block.__exit__(None, None, None)
            if compare_and_delete:
                assert holder(any_store, "team-x") == new.info
            else:  # the control: a release that ignores the version deletes the new holder's lease
                assert holder(any_store, "team-x") is None
    finally:
        old_block.__exit__(None, None, None)


def test_break_lock_refuses_a_live_lease_and_forces_any(any_store):
    any_store.create("locks/team-x.json", lease_doc(expires_in_s=30).model_dump_json().encode())
    with pytest.raises(DeploymentLocked, match=r"looks alive.*force=True.*umc-infra unlock --force team-x"):
        break_lock(any_store, "team-x")
    assert holder(any_store, "team-x") is not None
    assert break_lock(any_store, "team-x", force=True).lock_id == "other-run"
    assert holder(any_store, "team-x") is None
    any_store.create("locks/team-x.json", lease_doc(expires_in_s=-30).model_dump_json().encode())
    assert break_lock(any_store, "team-x").lock_id == "other-run"  # an expired one goes without force
    assert break_lock(any_store, "team-x") is None


@pytest.mark.parametrize("document", [b'{"lock_id": "abc", "deploym', b"", b'{"lock_id": "abc"}', b"[1, 2]"])
def test_a_corrupt_lease_document_is_named_and_only_removed_by_force(any_store, document):
    any_store.put("locks/team-x.json", document)
    for attempt in (
        lambda: locked(any_store, "team-x", operation="provision", timeout_s=0, ttl_s=30).__enter__(),
        lambda: holder(any_store, "team-x"),
        lambda: break_lock(any_store, "team-x"),
    ):
        with pytest.raises(StateBackendError, match=r"locks/team-x\.json in the state backend is corrupt") as info:
            attempt()
        assert "umc-infra unlock --force team-x" in str(info.value)
    assert break_lock(any_store, "team-x", force=True) is None
    assert any_store.get("locks/team-x.json") is None
    with locked(any_store, "team-x", operation="provision", timeout_s=0, ttl_s=30):
        pass


def test_a_create_whose_reply_was_lost_still_holds_the_lease(any_store):
    class LostReply(Faulty):
        def create(self, key, data):
            self.inner.create(key, data)
            return None  # as when the client retried a create that had gone through, and got 412

    with locked(LostReply(any_store), "team-x", operation="provision", timeout_s=0, ttl_s=30) as mine:
        assert mine.previous is None
        assert holder(any_store, "team-x") == mine.info
    assert holder(any_store, "team-x") is None


def test_a_release_while_the_backend_is_down_leaves_the_lease_to_expire(any_store, caplog):
    faulty = Faulty(any_store)
    lease = locked(faulty, "team-x", operation="provision", timeout_s=0, ttl_s=30)
    with caplog.at_level(logging.WARNING, logger="umc_infra"), lease as mine:
        faulty.down = {"delete_if"}
    assert "could not release the lease of team-x" in caplog.text and "expires by itself" in caplog.text
    assert holder(any_store, "team-x") == mine.info


def test_unlock_refuses_a_live_lease_without_force(tmp_path, monkeypatch):
    monkeypatch.setenv("UMC_BACKEND", "local")
    monkeypatch.setenv("UMC_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    with locked(LocalStore(tmp_path / "state"), "team-x", operation="provision", timeout_s=0, ttl_s=3) as mine:
        refused = runner.invoke(app, ["unlock", "team-x", "--yes"])
        assert refused.exit_code == Exit.LOCKED, refused.output
        assert "looks alive" in refused.stderr and "unlock --force team-x" in refused.stderr
        assert holder(LocalStore(tmp_path / "state"), "team-x") is not None
        forced = runner.invoke(app, ["unlock", "team-x", "--yes", "--force", "-o", "json"])
        assert forced.exit_code == 0, forced.output
        assert f'"lock_id": "{mine.info.lock_id}"' in forced.stdout
        assert mine.lost.wait(5)  # its next renewal finds the lease gone
    assert runner.invoke(app, ["unlock", "team-x", "--yes"]).exit_code == 0
