"""Records and the deployment lease (more of the lease in test_lease.py)."""

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

import pytest

from umc_infra import DeploymentLocked, StateBackendError
from umc_infra.state.lease import break_lock, holder, locked
from umc_infra.state.records import Actor, DeploymentRecord, Records, RunRecord
from umc_infra.state.store import LocalStore

TTL = 30.0


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def test_actor_from_gitlab_ci():
    actor = Actor.from_environment({
        "GITLAB_CI": "true", "CI_JOB_ID": "4711", "CI_PIPELINE_ID": "815", "CI_PROJECT_PATH": "umc/platform",
        "GITLAB_USER_LOGIN": "jdevries", "CI_JOB_URL": "https://gitlab.example/job/4711",
    })  # fmt: skip
    assert (actor.user, actor.ci_job_id, actor.ci_pipeline_id, actor.ci_project) == (
        "jdevries", "4711", "815", "umc/platform",
    )  # fmt: skip


def test_actor_from_github_and_locally():
    assert (
        Actor.from_environment({"GITHUB_RUN_ID": "9", "GITHUB_ACTOR": "a", "GITHUB_REPOSITORY": "o/r"}).ci_pipeline_id
        == "9"
    )
    local = Actor.from_environment({})
    assert local.ci_job_id is None and local.host == socket.gethostname() and local.user


def test_records_keep_every_run(store):
    records = Records(store)
    now = datetime.now(UTC)
    record = DeploymentRecord(deployment="team-x", blueprint="web-server", version="1.0.0", state="provisioning",
                              params={"instances": 2, "token": "***"}, created_at=now, updated_at=now)  # fmt: skip
    run = RunRecord(action="provision", outcome="running", actor=Actor.from_environment({}), started_at=now)
    record = records.update_run(record, run)
    record = records.update_run(record, run.model_copy(update={"outcome": "succeeded"}), state="active")
    again = records.get("team-x")
    assert again == record
    assert [r.outcome for r in again.runs] == ["succeeded"]  # the same run, updated in place
    later = RunRecord(action="destroy", outcome="succeeded", actor=run.actor, started_at=datetime.now(UTC))
    records.update_run(again, later, state="destroyed")
    assert [(r.action, r.outcome) for r in records.get("team-x").runs] == [
        ("provision", "succeeded"), ("destroy", "succeeded"),
    ]  # fmt: skip
    assert [r.deployment for r in records.all()] == ["team-x"]
    assert records.get("nobody") is None


def test_the_lock_excludes_a_second_holder_until_released(store):
    with locked(store, "team-x", operation="provision", timeout_s=1, ttl_s=TTL) as mine:
        assert holder(store, "team-x").lock_id == mine.info.lock_id
        started = time.monotonic()
        with pytest.raises(DeploymentLocked) as info, locked(store, "team-x", operation="destroy", timeout_s=0.3,
                                                              ttl_s=TTL, poll_s=0.05):  # fmt: skip
            pass
        assert time.monotonic() - started >= 0.3
        assert f"pid {os.getpid()}" in info.value.holder
        assert "for provision since" in str(info.value)
        assert f"its lease expires at {mine.info.expires_at:%H:%M:%S} UTC" in str(info.value)
        with locked(store, "team-y", operation="provision", timeout_s=0, ttl_s=TTL):  # another deployment: free
            pass
    assert holder(store, "team-x") is None


def test_a_waiting_run_gets_the_lock_when_it_is_released(store):
    release = threading.Event()

    def hold():
        with locked(store, "team-x", operation="provision", timeout_s=1, ttl_s=TTL):
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    threading.Timer(0.3, release.set).start()
    with locked(store, "team-x", operation="provision", timeout_s=5, ttl_s=TTL, poll_s=0.05) as mine:
        assert holder(store, "team-x").lock_id == mine.info.lock_id
        assert mine.previous is None  # released in time: nobody was taken over
    thread.join()


def test_break_lock(store):
    with locked(store, "team-x", operation="provision", timeout_s=1, ttl_s=TTL) as mine:
        with pytest.raises(DeploymentLocked, match=r"looks alive.*unlock --force team-x"):
            break_lock(store, "team-x")  # a live holder: refused
        assert holder(store, "team-x") == mine.info
        gone = break_lock(store, "team-x", force=True)
        assert gone is not None and gone.operation == "provision" and gone.lock_id == mine.info.lock_id
        assert holder(store, "team-x") is None
    assert break_lock(store, "team-x") is None


def test_a_corrupt_record_names_its_document_and_is_left_out_of_the_list(store, caplog):
    records = Records(store)
    now = datetime.now(UTC)
    good = DeploymentRecord(deployment="good", blueprint="web-server", version="1.0.0", state="active", params={},
                            created_at=now, updated_at=now)  # fmt: skip
    records.put(good)
    store.put("deployments/bad/record.json", b'{"deployment": "bad", "blueprint": "web-ser')  # truncated
    store.put("deployments/worse/record.json", b'{"deployment": "worse", "params": "token-canary-9"}')  # wrong shape
    with pytest.raises(StateBackendError, match=r"deployments/bad/record\.json in the state backend is corrupt"):
        records.get("bad")
    with pytest.raises(StateBackendError, match=r"deployments/worse/record\.json.*remove the document") as info:
        records.get("worse")
    assert "token-canary-9" not in str(info.value)  # the document's values stay out of the message
    with caplog.at_level(logging.WARNING, logger="umc_infra"):
        assert records.all() == [good]
    assert sorted(r.args[0] for r in caplog.records) == ["bad", "worse"]


def test_a_run_can_be_recorded_as_abandoned(store):
    records = Records(store)
    now = datetime.now(UTC)
    record = DeploymentRecord(deployment="x", blueprint="b", version="1", state="provisioning", params={},
                              created_at=now, updated_at=now)  # fmt: skip
    run = RunRecord(action="provision", outcome="abandoned", actor=Actor.from_environment({}), started_at=now)
    records.update_run(record, run)
    assert records.get("x").last_run.outcome == "abandoned"
