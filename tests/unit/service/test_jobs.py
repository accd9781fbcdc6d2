"""The queue's rules: which failures are retried, how procrastinate's statuses read, the library runner."""

import threading
from datetime import UTC, datetime

import pytest
from procrastinate.jobs import Job, Status

from umc_infra.errors import (
    Cancelled,
    DeploymentLocked,
    ParamsError,
    PlaybookError,
    SecretError,
    SshUnreachable,
    StateBackendError,
    TerraformError,
    VCenterError,
)
from umc_infra.service.jobs import MAX_ATTEMPTS, RETRY, Asked, LibraryRunner, job_state


def job(attempts=0):
    return Job(id=1, queue="umc", lock=None, queueing_lock=None, task_name="umc.provision", attempts=attempts)


@pytest.mark.parametrize(("error", "retried"), [
    (DeploymentLocked("held", holder="ci", since=datetime.now(UTC)), True),
    (StateBackendError("bucket unreachable"), True),
    (VCenterError("vCenter unreachable"), True),
    (SshUnreachable("no answer"), True),
    (TerraformError("apply failed", step="terraform.apply"), False),
    (ParamsError([], blueprint="web-server"), False),
    (SecretError("denied"), False),
    (PlaybookError("failed on 2 hosts", playbook="web", failures=[], step="ansible.web"), False),
    (Cancelled("cancelled"), False),
    (KeyError("bug"), False),
])  # fmt: skip
def test_only_transient_failures_are_retried(error, retried):
    assert (RETRY.get_retry_decision(exception=error, job=job()) is not None) is retried


def test_retries_stop_after_the_last_attempt():
    locked = StateBackendError("bucket unreachable")
    assert RETRY.get_retry_decision(exception=locked, job=job(MAX_ATTEMPTS - 1)) is not None
    assert RETRY.get_retry_decision(exception=locked, job=job(MAX_ATTEMPTS)) is None


def test_every_status_has_a_state():
    assert {job_state(s) for s in Status} == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert job_state(Status.ABORTED) == "cancelled"


def test_destroying_a_deployment_without_a_record_is_already_done(tmp_path, monkeypatch):
    monkeypatch.setenv("UMC_BACKEND", "local")
    monkeypatch.setenv("UMC_STATE_DIR", str(tmp_path))
    result = LibraryRunner().destroy("never-made", on_event=lambda e: None, cancel=threading.Event(), asked=Asked())
    assert result["already_destroyed"] is True
