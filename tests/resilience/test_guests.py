"""Faults of guests and playbooks on the sandbox: a task failing on one host, a guest's sshd dying mid-run,
the process running a playbook killed outright (SIGKILL), a guest's SSH host key changing. (SIGTERM mid-run is
in test_kills.py.)

Each case breaks something real, then checks the typed error or the recovery; that vCenter, Terraform's
state, the record, the address claims and the lease agree (``assert_agree``); and that no secret shows in
the error, the output or the files a run could leave.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from tests.integration.conftest import destroy_vm
from tests.integration.test_ansible_isolation import _regenerate_host_keys as regenerate_host_keys
from umc_infra import PlaybookError, Provisioner, destroy, provision, status
from umc_infra.ansible import hostkeys as _hostkeys
from umc_infra.events import Event, OutputLine, StepStarted, TaskResult
from umc_infra.state import lease as _lock
from umc_infra.state.store import open_store

from .conftest import (
    assert_agree,
    assert_no_secret,
    child,
    daemon_pid,
    frozen,
    no_tool_left_running,
    run_dirs,
    scanned_places,
    tools_running,
    umc_infra,
)

ONE = {"instances": 1}
FIRST_REMOTE_TASK = "Set the permanent hostname"
"""The base playbook's first task that runs on the host (``Check inputs`` before it runs on the controller)."""


def on_host(event: dict[str, Any]) -> bool:
    """A child's event: the first task that works on the host has started."""
    return event["kind"] == "task" and event["status"] == "started" and event["task"] == FIRST_REMOTE_TASK


def test_a_task_fails_on_one_of_three_hosts(sandbox, info, site, secrets):
    started = time.time()
    d = "res-task"
    first = provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    broken = first.hosts[1]
    python = sandbox.guest_root(broken.ip) / "usr" / "bin" / "python3"
    python.rename(python.with_name("python3.away"))  # every module fails on that host, and only there
    try:
        with pytest.raises(PlaybookError) as failed:
            provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    finally:
        python.with_name("python3.away").rename(python)
    assert {host for host, _, _ in failed.value.failures} == {broken.name}
    run = status(d, settings=site).last_run
    assert (run.outcome, run.failed_step, run.failed_hosts) == ("failed", "ansible.base", (broken.name,))
    assert_agree(info, site, d, vms=3)

    retried = provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    assert retried.ansible["base"].hosts.keys() == {broken.name}  # only the failed host ran again
    assert status(d, settings=site).state == "active"
    assert_agree(info, site, d, vms=3)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, str(failed.value), directories=scanned_places(site), since=started)


def test_a_guest_whose_sshd_dies_mid_playbook(sandbox, info, site, secrets):
    """The guest's sshd is killed once the playbook started on it (the guest's processes end with it); the sandbox's
    agent is held meanwhile, so the guest stays down until the run has failed, then comes back."""
    started = time.time()
    d = "res-sshd"
    (host,) = provision("linux-server", ONE, deployment=d, settings=site).hosts
    sshd = int(sandbox.guest_root(host.ip).parent.name)  # /proc/<pid of the guest's sshd>/root
    events: list[Event] = []

    def kill_sshd(event: Event) -> None:
        if isinstance(event, TaskResult) and event.task == FIRST_REMOTE_TASK and not events:
            os.kill(sshd, signal.SIGKILL)
            events.append(event)
        elif events:
            events.append(event)

    # The sandbox's agent would restart the guest at once; held, it brings the guest back only after the run failed.
    with frozen(daemon_pid(sandbox, "agent")), pytest.raises(PlaybookError) as failed:
        Provisioner(settings=site, on_event=kill_sshd).provision("linux-server", ONE, deployment=d)
    assert events, "no task started on the host"
    assert [h for h, _, _ in failed.value.failures] == [host.name] and host.name in str(failed.value)
    assert [(e.host, e.task) for e in events if isinstance(e, TaskResult) and e.status == "unreachable"] == [
        (host.name, FIRST_REMOTE_TASK)
    ], events
    assert not [e for e in events if isinstance(e, TaskResult) and e.status in ("ok", "changed", "failed")], events
    run = status(d, settings=site).last_run
    assert (run.outcome, run.failed_step, run.failed_hosts) == ("failed", "ansible.base", (host.name,))
    assert_agree(info, site, d, vms=1)  # the VM is kept, once

    sandbox.wait_for_guest(host.ip)  # the agent restarts the guest (same root, same host key)
    again = provision("linux-server", ONE, deployment=d, settings=site)
    assert again.terraform["vm"].add == 0 and again.ansible["base"].hosts[host.name].failed == 0
    assert status(d, settings=site).state == "active"
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, str(failed.value), *map(str, events), directories=scanned_places(site), since=started)


def test_sigkill_mid_playbook(info, site, secrets):
    """The process running the playbook is killed outright, its private directory (SSH key, vars) left behind: its
    ansible-playbook stops, the next run sweeps that directory as it starts, takes the lease over, records the dead
    run abandoned, and converges."""
    started = time.time()
    d = "res-kill-play"
    run = child(info, site, d)
    run.wait_for(on_host)
    [left] = run_dirs(run.pid)
    assert list(left.glob("umc-ansible-*/ssh_key")) and list(left.glob("umc-ansible-*/vars.yml"))
    run.proc.kill()
    assert run.finish(timeout=60) == -signal.SIGKILL
    # ansible-playbook stops with its parent (SIGINT from the launcher; or its next write to ansible-runner's pty)
    assert no_tool_left_running(15, deployment=d), tools_running(d)
    dead = _lock.holder(open_store(site), d)
    assert dead is not None and dead.pid == run.pid  # its lease is left too

    seen: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, StepStarted) and event.step == "recover":
            seen.update(dirs=run_dirs(run.pid), holder=_lock.holder(open_store(site), d))
        if isinstance(event, OutputLine) and event.step == "recover":
            seen.setdefault("told", event.line)

    again = Provisioner(settings=site, on_event=on_event).provision("linux-server", ONE, deployment=d)
    assert seen["dirs"] == []  # swept before the run did anything on the deployment
    assert seen["holder"] is not None and seen["holder"].pid == os.getpid()  # the lease taken over ...
    assert f"pid {run.pid}" in seen["told"]  # ... from the dead run, which it names
    assert again.terraform["vm"].add == 0  # the VM the dead run made is the one kept
    runs = status(d, settings=site).runs
    assert [r.outcome for r in runs[-2:]] == ["abandoned", "succeeded"]
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, run.text, directories=scanned_places(site), since=started)


def test_a_changed_host_key_is_refused_until_forgotten(sandbox, info, site, secrets):
    """The guest's SSH host keys are regenerated between two runs: the command refuses (exit 7) before any task
    reaches the host; once the operator forgets the pin, the run pins the new key and converges."""
    started = time.time()
    d = "res-hostkey"
    provided = umc_infra(info, site, "provision", "linux-server", "-d", d, "-p", "instances=1", "--output", "json")
    assert provided.returncode == 0, provided.stderr
    [host] = json.loads(provided.stdout)["hosts"]
    name, ip = host["name"], host["ip"]
    notes = sandbox.guest_root(ip) / "etc" / "umc" / "notes"  # the base playbook writes it on every run
    old = _hostkeys.scan(ip, site.ssh_port, timeout_s=5)

    regenerate_host_keys(sandbox, ip)
    deadline = time.monotonic() + 30
    while _hostkeys.scan(ip, site.ssh_port, timeout_s=5) in ((), old):  # () while sshd re-executes itself
        assert time.monotonic() < deadline, "the guest's sshd did not pick up its new host key"
        time.sleep(0.5)
    new = _hostkeys.scan(ip, site.ssh_port, timeout_s=5)
    notes.unlink()

    refused = umc_infra(info, site, "provision", "linux-server", "-d", d, "-p", "instances=1", "--output", "json")
    assert refused.returncode == 7, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert (error["type"], error["step"]) == ("HostKeyChanged", "ssh")
    assert _hostkeys.fingerprint(old[0]) in error["message"] and _hostkeys.fingerprint(new[0]) in error["message"]
    assert not notes.exists()  # no task reached the host
    run = status(d, settings=site).last_run
    assert (run.outcome, run.failed_step) == ("failed", "ssh")
    assert_agree(info, site, d, vms=1)

    forgot = umc_infra(info, site, "forget-host-key", d, name, "--yes", "--output", "json")
    assert (forgot.returncode, json.loads(forgot.stdout)) == (0, {"deployment": d, "forgotten": [name]})
    again = umc_infra(info, site, "provision", "linux-server", "-d", d, "-p", "instances=1", "--output", "json")
    assert again.returncode == 0, again.stderr
    assert notes.exists()
    pin = _hostkeys.HostKeyPin.model_validate_json(open_store(site).get(_hostkeys.pin_key(d, name)) or b"")
    assert pin.keys == new
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    texts = [p.stdout + p.stderr for p in (provided, refused, forgot, again)]
    assert_no_secret(secrets, *texts, directories=scanned_places(site), since=started)


def test_a_vm_the_run_recreates_is_pinned_anew(sandbox, info, site, secrets):
    """A VM deleted in vCenter comes back from the next run with a new guest and new host keys: the run pins them
    (it made the VM) instead of refusing it as a changed host."""
    started = time.time()
    d = "res-repin"
    (host,) = provision("linux-server", ONE, deployment=d, settings=site).hosts
    old = _hostkeys.scan(host.ip, site.ssh_port, timeout_s=5)
    destroy_vm(info, host.name)  # gone outside umc_infra; the sandbox removes its guest and root

    again = provision("linux-server", ONE, deployment=d, settings=site)
    assert again.terraform["vm"].add == 1 and again.hosts == (host,)
    new = _hostkeys.scan(host.ip, site.ssh_port, timeout_s=5)
    assert new and new != old  # a new guest: really another host key
    pin = _hostkeys.HostKeyPin.model_validate_json(open_store(site).get(_hostkeys.pin_key(d, host.name)) or b"")
    assert pin.keys == new
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
    assert_no_secret(secrets, directories=scanned_places(site), since=started)
