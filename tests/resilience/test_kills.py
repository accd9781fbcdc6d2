"""Runs that die or are stopped from outside: SIGKILL (the child, the whole process tree), SIGTERM (on the main
thread, on a worker thread), and other runs on the same deployment (plan, drift, ``umc-infra unlock``).

Every run under test is a separate process, as a CI job is; the next run is another process too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from umc_infra import destroy, provision, status
from umc_infra.private import is_running
from umc_infra.state import lease as _lock
from umc_infra.state.store import open_store
from umc_infra.terraform import statelock as _tflock

from .conftest import (
    Child,
    assert_agree,
    assert_no_secret,
    child,
    forget_s3,
    no_tool_left_running,
    on_s3,
    run_dirs,
    scanned_places,
    state_vm_names,
    terraform_state,
    tools_running,
    umc_infra,
    vm_names,
)


def started(event: dict) -> bool:
    """Terraform started creating a VM."""
    return event["kind"] == "resource" and event["status"] == "started"


def recover_lines(run: Child) -> list[str]:
    """What the run's recover step said (it cleans up after a run that died); fails if it did not run."""
    said = [e["line"] for e in run.events if e["kind"] == "output" and e["step"] == "recover"]
    assert said, "the run did not recover after the dead run"
    return said


def next_run(info, site, deployment: str) -> Child:
    """The next run on the deployment (another process) that must take a dead run's lease over at once."""
    run = child(info, site, deployment, UMC_LOCK_TIMEOUT="0")
    assert run.finish() == 0, run.text
    assert run.outcome is not None and run.outcome["kind"] == "result", run.text
    return run


def process_tree(pid: int) -> list[int]:
    """A run's process and its tools (registered in its private directory), with the tools' children."""
    registered = [p.name.split(".") for d in run_dirs(pid) for p in (d / "tools").glob("*.*")]
    tools = [int(tool) for tool, start in registered if is_running(int(tool), int(start) or None)]
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent in tools:
            children.append(int(stat.parent.name))
    return [pid, *tools, *children]


def wait_until(condition, *, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- SIGKILL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_sigkill_of_the_provisioning_process_mid_apply(info, site, secrets, backend):
    """Its tools get SIGINT (parent-death signal): Terraform finishes, writes its state, releases its lock."""
    site = on_s3(site) if backend == "s3" else site
    d = f"res-kill-{backend}"
    forget_s3(info, d)
    since = time.time()
    dead = child(info, site, d)
    dead.wait_for(started)
    os.kill(dead.pid, signal.SIGKILL)
    assert dead.finish() == -signal.SIGKILL
    assert status(d, settings=site).last_run.outcome == "running"  # it could not write its end
    left = _lock.holder(open_store(site), d)
    assert left is not None and left.pid == dead.pid  # nor release its lease
    assert no_tool_left_running(60, deployment=d), tools_running(d)  # its tools stopped on their own ...
    if backend == "s3":
        assert _tflock.read(site, d, "vm") is None  # ... as on Ctrl-C: Terraform released its state lock

    again = next_run(info, site, d)  # lock timeout 0: the lease of a dead process is taken over at once
    told = recover_lines(again)[0]
    assert told.startswith("the last run (provision by") and f"pid {dead.pid}" in told, told
    runs = status(d, settings=site).runs
    assert [r.outcome for r in runs] == ["abandoned", "succeeded"], runs
    assert runs[0].error and "died" in runs[0].error
    assert run_dirs(dead.pid) == []  # its private directory was swept
    assert_agree(info, site, d, vms=1)
    assert_no_secret(secrets, dead.text, again.text, directories=scanned_places(site), since=since)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)


def test_sigkill_of_the_whole_process_tree(info, site, secrets):
    """Terraform and its provider die too: the state lock stays in DynamoDB, and the VM is in no state."""
    s3 = on_s3(site)
    d = "res-kill-tree"
    forget_s3(info, d)
    since = time.time()
    dead = child(info, s3, d)
    dead.wait_for(started)
    wait_until(lambda: vm_names(info, f"{d}-"), what="the VM to appear in vCenter")  # made, not yet in state
    victims = process_tree(dead.pid)
    assert len(victims) >= 3, victims  # the child, terraform, the vSphere provider
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # all stopped first: none reacts to another's death
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    assert dead.finish() == -signal.SIGKILL
    lock = _tflock.read(s3, d, "vm")
    assert lock is not None  # Terraform's state lock, left behind
    assert vm_names(info, f"{d}-") == [f"{d}-1"]
    assert state_vm_names(terraform_state(info, s3, d, "vm")) == []  # a VM no state knows

    again = next_run(info, s3, d)
    said = recover_lines(again)
    assert any(lock.id in line and "releasing the state lock" in line for line in said), said
    assert any("removing VM" in line and f"{d}-1" in line for line in said), said
    assert again.outcome["result"]["terraform"]["vm"]["add"] == 1  # made again, once
    assert _tflock.read(s3, d, "vm") is None
    assert [r.outcome for r in status(d, settings=s3).runs] == ["abandoned", "succeeded"]
    assert run_dirs(dead.pid) == []
    assert_agree(info, s3, d, vms=1)
    assert_no_secret(secrets, dead.text, again.text, directories=scanned_places(s3), since=since)
    destroy(d, settings=s3)
    assert_agree(info, s3, d, vms=0)


# -- SIGTERM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "predicate", "failed_step"),
    [
        ("terraform", started, "terraform.apply.vm"),
        ("ansible", lambda e: e["kind"] == "task" and e["status"] == "started", "ansible.base"),
    ],
    ids=["terraform", "ansible"],
)
def test_sigterm_mid_run(info, site, secrets, where, predicate, failed_step):
    """SIGTERM (a CI runner cancelling the job) stops the run like Ctrl-C: tools stop, the record says so."""
    d = f"res-term-{where}"
    since = time.time()
    run = child(info, site, d)
    run.wait_for(predicate)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=120) != 0
    record = status(d, settings=site)
    assert (record.state, record.last_run.outcome, record.last_run.failed_step) == (
        "interrupted", "interrupted", failed_step,
    )  # fmt: skip
    assert no_tool_left_running(deployment=d), "a tool of the stopped run is still running"
    assert _lock.holder(open_store(site), d) is None  # released on the way out
    assert_no_secret(secrets, run.text, directories=scanned_places(site), since=since)
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)


def test_sigterm_to_a_provision_in_a_worker_thread(info, site, secrets):
    """Off the main thread SIGTERM cannot be turned into an interrupt: the process dies, its tools get SIGINT."""
    d = "res-term-thread"
    since = time.time()
    dead = child(info, site, d, thread=True)
    dead.wait_for(started)
    dead.proc.send_signal(signal.SIGTERM)
    assert dead.finish(timeout=120) == -signal.SIGTERM
    assert no_tool_left_running(60, deployment=d), "a tool of the dead run is still running"
    assert status(d, settings=site).last_run.outcome == "running"

    again = next_run(info, site, d)
    assert f"pid {dead.pid}" in recover_lines(again)[0]
    assert [r.outcome for r in status(d, settings=site).runs] == ["abandoned", "succeeded"]
    assert run_dirs(dead.pid) == []
    assert_agree(info, site, d, vms=1)
    assert_no_secret(secrets, dead.text, again.text, directories=scanned_places(site), since=since)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)


# -- other runs on the same deployment ----------------------------------------------------------------


def test_plan_and_drift_during_a_provision(info, site, secrets):
    """plan (asking 4 VMs) and drift, in other processes, wait for the provision's lease or give up with
    DeploymentLocked; they never touch its working files: it applies exactly its 1 VM."""
    d = "res-concurrent"
    since = time.time()
    store = open_store(site)
    varsfile = site.state_dir / "work" / d / "vm" / "umc.auto.tfvars.json"
    prov = child(info, site, d, pause={"kind": "step_started", "step": "terraform.apply.vm"})
    prov.wait_for(lambda e: e["kind"] == "step_started" and e["step"] == "terraform.apply.vm")
    # The provision holds the lease, its plan file made: a plan that does not wait gives up at once.
    quick = child(info, site, d, operation="plan", params={"instances": 4}, UMC_LOCK_TIMEOUT="1")
    assert quick.finish() == 0 and quick.outcome is not None
    assert (quick.outcome["kind"], quick.outcome.get("type")) == ("error", "DeploymentLocked"), quick.outcome
    assert f"pid {prov.pid}" in quick.outcome["message"]
    waiting_plan = child(info, site, d, operation="plan", params={"instances": 4}, UMC_LOCK_TIMEOUT="120")
    waiting_drift = child(info, site, d, operation="drift", UMC_LOCK_TIMEOUT="120")
    prov.go()

    tries: list[Child] = []
    done = threading.Event()

    def keep_planning() -> None:  # one plan after another, each giving up after 1 s
        while not done.is_set():
            tried = child(info, site, d, operation="plan", params={"instances": 4}, UMC_LOCK_TIMEOUT="1")
            tried.finish()
            tries.append(tried)
            done.wait(3)  # the machine has two cores: leave the provision room

    planner = threading.Thread(target=keep_planning, daemon=True)
    planner.start()
    samples = 0
    while prov.proc.poll() is None:
        holder = _lock.holder(store, d)
        instances = json.loads(varsfile.read_text())["instances"] if varsfile.exists() else None
        again = _lock.holder(store, d)
        if holder is not None and holder.pid == prov.pid and again is not None and again.lock_id == holder.lock_id:
            assert instances == 1, "the working files changed under the provision"
            samples += 1
        assert len(vm_names(info, f"{d}-")) <= 1
        time.sleep(0.2)
    done.set()
    planner.join(timeout=60)
    assert prov.finish() == 0 and prov.outcome["kind"] == "result", prov.text
    assert prov.outcome["result"]["terraform"]["vm"]["add"] == 1
    outcomes = [(c.outcome or {}).get("type", (c.outcome or {}).get("kind")) for c in tries]
    assert samples >= 3 and "DeploymentLocked" in outcomes, (samples, outcomes)
    assert set(outcomes) <= {"DeploymentLocked", "result"}, outcomes  # never another error
    for waiter in (waiting_plan, waiting_drift):  # they waited for the lease, then ran
        assert waiter.finish() == 0 and waiter.outcome["kind"] == "result", waiter.text
    assert waiting_plan.outcome["result"]["exists"] is True
    assert sum(r["action"] == "create" for r in waiting_plan.outcome["result"]["resources"]) == 3  # planned only
    assert [h.name for h in status(d, settings=site).hosts] == [f"{d}-1"]
    assert_agree(info, site, d, vms=1)
    texts = [c.text for c in (prov, quick, waiting_plan, waiting_drift, *tries)]
    assert_no_secret(secrets, *texts, directories=scanned_places(site), since=since)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)


def test_unlock_of_a_live_lease(info, site, secrets):
    """``umc-infra unlock`` refuses a live holder's lease (exit 3); ``--force`` breaks it and the holder stops."""
    d = "res-unlock"
    since = time.time()
    store = open_store(site)
    holder = child(info, site, d, UMC_LEASE_TTL="3")  # renewed every second
    holder.wait_for(started)
    lease = _lock.holder(store, d)
    assert lease is not None and lease.pid == holder.pid
    refused = umc_infra(info, site, "unlock", d, "--yes")
    assert refused.returncode == 3, refused
    assert f"pid {holder.pid}" in refused.stdout + refused.stderr
    holder.wait_for(lambda e: e["kind"] == "resource" and e["status"] == "complete")  # it works on ...
    wait_until(lambda: _lock.holder(store, d).expires_at > lease.expires_at, timeout=5, what="a renewal")
    assert _lock.holder(store, d).lock_id == lease.lock_id  # ... and keeps its lease

    broken = umc_infra(info, site, "unlock", d, "--yes", "--force", "--output", "json")
    assert broken.returncode == 0, broken
    assert json.loads(broken.stdout)["removed"]["pid"] == holder.pid
    assert holder.finish(timeout=120) == 0
    assert (holder.outcome["kind"], holder.outcome.get("type")) == ("error", "Cancelled"), holder.outcome
    record = status(d, settings=site)
    assert (record.last_run.outcome, record.state) == ("cancelled", "interrupted"), record.last_run
    assert _lock.holder(store, d) is None  # it did not take the lease back, nor delete another's
    assert no_tool_left_running(deployment=d)
    assert_no_secret(secrets, holder.text, refused.stdout, refused.stderr, broken.stdout, broken.stderr,
                     directories=scanned_places(site), since=since)  # fmt: skip

    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert_agree(info, site, d, vms=1)
    destroy(d, settings=site)
    assert_agree(info, site, d, vms=0)
