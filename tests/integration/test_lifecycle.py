"""The deployment lifecycle on the sandbox: plan, update, scale, drift, destroy, locks, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from umc_infra import (
    Cancelled,
    DeploymentLocked,
    DeploymentNotFound,
    DestroyNotAllowed,
    PlanChanged,
    PlaybookError,
    Provisioner,
    RunOptions,
    TerraformError,
    deployments,
    destroy,
    drift,
    plan,
    provision,
    status,
)
from umc_infra.sandbox import Sandbox, SandboxSettings, _vcsim
from umc_infra.state.ipam import held
from umc_infra.state.store import open_store

from .conftest import only_this_modules_vms, own_ports, vm_names

PREFIX = "life-"


def find(info, name: str):
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"DC0/vm/umc/{name}")
        return (vm.config.hardware.numCPU, vm.config.hardware.memoryMB) if vm else None


@pytest.fixture(scope="module")
def site(sandbox, info, tmp_path_factory):
    # The local backend: records, claims and locks of this run only (the lock test also uses S3). Its
    # address claims are its own, so it allocates from a range outside the sandbox's pool, which the
    # deployments in the S3 backend use at the same time.
    with only_this_modules_vms(info, PREFIX):
        yield info.settings(
            state_dir=tmp_path_factory.mktemp("life"), backend="local", ip_pool="127.0.1.160-127.0.1.179"
        )


def test_scale_up_update_in_place_scale_down_and_reviewed_plans(site, info):
    d = "life-scale"
    first = provision("linux-server", {"instances": 2}, deployment=d, settings=site)
    assert vm_names(info, d) == [f"{d}-1", f"{d}-2"]

    reviewed = plan("linux-server", {"instances": 3}, deployment=d, settings=site)
    assert reviewed.exists and reviewed.previous_version == "1.0.0"
    assert [(r.address, r.action) for r in reviewed.resources] == [("vsphere_virtual_machine.vm[2]", "create")]
    assert reviewed.configuration == ()  # existing hosts: nothing would change
    assert vm_names(info, d) == [f"{d}-1", f"{d}-2"]  # planning changed nothing

    up = provision("linux-server", {"instances": 3}, deployment=d, settings=site, options=RunOptions(plan=reviewed))
    assert up.terraform["vm"].model_dump() == {"add": 1, "change": 0, "remove": 0}
    assert vm_names(info, d) == [f"{d}-1", f"{d}-2", f"{d}-3"]
    base = up.ansible["base"].hosts
    assert base[f"{d}-1"].changed == base[f"{d}-2"].changed == 0 and base[f"{d}-3"].changed > 0
    assert [h.ip for h in up.hosts][:2] == [h.ip for h in first.hosts]

    with pytest.raises(DestroyNotAllowed) as refused:
        provision("linux-server", {"instances": 2}, deployment=d, settings=site)
    assert refused.value.resources == ("vm: vsphere_virtual_machine.vm[2] (delete)",)
    assert len(vm_names(info, d)) == 3

    down = provision(
        "linux-server", {"instances": 2}, deployment=d, settings=site, options=RunOptions(allow_destroy=True)
    )
    assert down.terraform["vm"].remove == 1
    assert vm_names(info, d) == [f"{d}-1", f"{d}-2"]
    assert held(open_store(site), deployment=d, module="vm") == [h.ip for h in first.hosts]  # the third freed

    bigger = provision("linux-server", {"instances": 2, "cpu": 4}, deployment=d, settings=site)
    assert bigger.terraform["vm"].model_dump() == {"add": 0, "change": 2, "remove": 0}  # in place
    assert find(info, f"{d}-1")[0] == find(info, f"{d}-2")[0] == 4

    # a reviewed plan is refused when the world moved since: someone resized a VM in vCenter
    reviewed = plan("linux-server", {"instances": 2, "cpu": 4}, deployment=d, settings=site)
    assert reviewed.resources == ()
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"DC0/vm/umc/{d}-1")
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=3072)))
    with pytest.raises(PlanChanged, match="changed since the plan was reviewed"):
        provision(
            "linux-server", {"instances": 2, "cpu": 4}, deployment=d, settings=site, options=RunOptions(plan=reviewed)
        )
    assert find(info, f"{d}-1")[1] == 3072  # nothing applied

    record = status(d, settings=site)
    assert record.state == "active" and record.params["instances"] == 2
    assert [r.outcome for r in record.runs] == ["succeeded", "succeeded", "failed", "succeeded", "succeeded", "failed"]
    assert record.runs[2].failed_step == "policy" and "delete or replace" in record.runs[2].error
    assert record.runs[0].actor.user and record.runs[0].timings["terraform.apply.vm"] > 0


def test_drift_found_and_repaired_then_destroy_twice(sandbox, site, info):
    d = "life-drift"
    result = provision("web-server", {"instances": 1}, deployment=d, settings=site)
    host = result.hosts[0]
    assert not drift(d, settings=site).has_drift

    (sandbox.guest_root(host.ip) / "etc" / "motd").write_text("edited by hand\n")
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"DC0/vm/umc/{host.name}")
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=4096)))
    report = drift(d, settings=site)
    assert report.has_drift
    assert [(c.address, set(c.attributes)) for c in report.compute] == [("vsphere_virtual_machine.vm[0]", {"memory"})]
    assert (report.compute[0].attributes["memory"].before, report.compute[0].attributes["memory"].after) == (
        2048,
        4096,
    )
    assert [(c.playbook, c.host) for c in report.configuration] == [("base", host.name)]

    repaired = provision("web-server", {"instances": 1}, deployment=d, settings=site)
    assert repaired.terraform["web"].change == 1
    assert find(info, host.name)[1] == 2048
    assert "edited by hand" not in (sandbox.guest_root(host.ip) / "etc" / "motd").read_text()
    assert not drift(d, settings=site).has_drift

    gone = destroy(d, settings=site)
    assert not gone.already_destroyed and gone.terraform["web"].remove == 1
    assert gone.released_addresses == (host.ip,)
    assert vm_names(info, d) == []
    record = status(d, settings=site)
    assert record.state == "destroyed" and record.hosts == ()
    assert destroy(d, settings=site).already_destroyed
    assert d in [r.deployment for r in deployments(settings=site)]
    with pytest.raises(DeploymentNotFound):
        status("life-never-made", settings=site)


def _child_env(info, site) -> dict[str, str]:
    env = dict(os.environ) | info.environment()
    env["UMC_STATE_DIR"] = str(site.state_dir)
    env["UMC_BACKEND"] = site.backend
    return env


CHILD = textwrap.dedent(
    """
    import json, sys
    from umc_infra import provision
    def show(event):
        print(json.dumps(event.model_dump(mode="json")), flush=True)
    provision("linux-server", {"instances": 1}, deployment=sys.argv[1], on_event=show)
    """
)


def _start_child(info, site, deployment: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, deployment], env=_child_env(info, site), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen[str], predicate) -> dict:
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if predicate(event):
            return event
    raise AssertionError(f"the child ended first: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_two_processes_on_one_deployment(site, info, backend):
    """The lock lives in the state backend: S3 (what many CI runners share) and the local directory."""
    d = f"life-lock-{backend}-{os.getpid() % 10000}"
    site = site.model_copy(update={"backend": backend})
    child = _start_child(info, site, d)
    try:
        _wait_for(child, lambda e: e["kind"] == "step_started" and e["step"] == "secrets")
        started = time.monotonic()
        with pytest.raises(DeploymentLocked) as locked:
            provision(
                "linux-server", {"instances": 1}, deployment=d, settings=site, options=RunOptions(lock_timeout_s=2)
            )
        assert time.monotonic() - started >= 2
        assert f"pid {child.pid}" in locked.value.holder
        assert "for provision since" in str(locked.value)
        # another deployment is not held up
        other = Provisioner(settings=site).plan("linux-server", {"instances": 1}, deployment="life-other")
        assert other.resources
    finally:
        assert child.wait(timeout=300) == 0, child.stderr.read() if child.stderr else ""
    assert status(d, settings=site).state == "active"


def test_a_live_lease_holds_and_a_dead_holders_lease_is_taken_over(site, info):
    d = "life-stale"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from umc_infra import Settings
            from umc_infra.state.lease import locked
            from umc_infra.state.store import open_store
            with locked(open_store(Settings()), {d!r}, operation="provision", timeout_s=5, ttl_s=300):
                print("locked", flush=True)
                time.sleep(300)
        """)],
        env=_child_env(info, site), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(DeploymentLocked, match=f"pid {holder.pid}"):
        plan("linux-server", {"instances": 1}, deployment=d, settings=site, options=RunOptions(lock_timeout_s=0.5))
    with pytest.raises(DeploymentLocked, match="force"):
        Provisioner(settings=site).break_lock(d)  # a live holder's lease is not broken without force
    holder.kill()  # SIGKILL: no chance to release; the lease is taken over at once on this machine
    holder.wait()
    events = []
    reviewed = plan("linux-server", {"instances": 1}, deployment=d, settings=site,
                    on_event=events.append, options=RunOptions(lock_timeout_s=5))  # fmt: skip
    assert reviewed.resources
    told = [e.line for e in events if e.kind == "output" and e.step == "recover"]
    assert told and f"pid {holder.pid}" in told[0] and "died" in told[0]
    assert Provisioner(settings=site).break_lock(d) is None  # released at the end of the plan


def test_sigint_mid_terraform_is_recorded_and_a_rerun_converges(site, info):
    d = "life-sigint"
    child = _start_child(info, site, d)
    _wait_for(child, lambda e: e["kind"] == "resource" and e["status"] == "started")
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) != 0
    record = status(d, settings=site)
    assert record.last_run.outcome == "interrupted" and record.state == "interrupted"
    assert record.last_run.failed_step.startswith("terraform.apply")
    again = provision(
        "linux-server", {"instances": 1}, deployment=d, settings=site, options=RunOptions(lock_timeout_s=5)
    )
    assert vm_names(info, d) == [f"{d}-1"]  # no duplicate
    assert [h.name for h in again.hosts] == [f"{d}-1"]
    assert status(d, settings=site).state == "active"


def test_cancel_from_another_thread(site, info):
    d = "life-cancel"
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "resource" and event.status == "started":
            cancel.set()

    with pytest.raises(Cancelled):
        Provisioner(settings=site, on_event=on_event, cancel=cancel).provision(
            "linux-server", {"instances": 1}, deployment=d
        )
    assert status(d, settings=site).last_run.outcome == "cancelled"
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert vm_names(info, d) == [f"{d}-1"]


def test_a_failing_play_keeps_vms_or_rolls_a_new_deployment_back(site, info):
    broken = site.model_copy(update={"python_interpreter": "/nonexistent/python3"})
    with pytest.raises(PlaybookError) as failed:
        provision("linux-server", {"instances": 1}, deployment="life-keep", settings=broken)
    assert [h for h, _, _ in failed.value.failures] == ["life-keep-1"]
    assert vm_names(info, "life-keep") == ["life-keep-1"]  # kept
    record = status("life-keep", settings=site)
    assert (record.state, record.last_run.failed_step) == ("failed", "ansible.base")
    assert provision("linux-server", {"instances": 1}, deployment="life-keep", settings=site).hosts  # re-run works

    with pytest.raises(PlaybookError):
        provision(
            "linux-server",
            {"instances": 1},
            deployment="life-rollback",
            settings=broken,
            options=RunOptions(on_failure="destroy"),
        )
    assert vm_names(info, "life-rollback") == []
    assert status("life-rollback", settings=site).state == "destroyed"


def test_vcsim_killed_mid_apply_then_restarted_converges(tmp_path, sandbox):
    """On a second sandbox of its own: its simulator dies while Terraform clones."""
    second = Sandbox(
        SandboxSettings(
            state_dir=tmp_path / "faults",
            cache_dir=sandbox.settings.cache_dir,
            guest_network="127.0.4.0/24",
            **own_ports(),
        )
    )
    try:
        info = second.up()
        site = info.settings(state_dir=tmp_path / "state")
        vcsim_pid = next(c.pid for c in second.status().components if c.name == "vcsim")

        def kill_on_clone(event):
            if event.kind == "resource" and event.status == "started":
                os.kill(vcsim_pid, signal.SIGKILL)

        with pytest.raises(TerraformError) as failed:
            provision("linux-server", {"instances": 2}, deployment="fault", settings=site, on_event=kill_on_clone)
        assert failed.value.step == "terraform.apply.vm"
        record = status("fault", settings=site)
        assert (record.state, record.last_run.failed_step) == ("failed", "terraform.apply.vm")

        second.up()  # restarts the simulator (its inventory starts empty again) and reseeds it
        result = provision("linux-server", {"instances": 2}, deployment="fault", settings=site)
        assert vm_names(info, "fault") == ["fault-1", "fault-2"]  # exactly two: no duplicates
        assert len(result.hosts) == 2
    finally:
        second.down(purge=True)
    assert not Path(tmp_path / "faults").exists()


def test_a_rerun_retries_only_the_failed_hosts_or_all(sandbox, site, info):
    d = "life-retry"
    first = provision("linux-server", {"instances": 2}, deployment=d, settings=site)
    bad = first.hosts[1]
    python = sandbox.guest_root(bad.ip) / "usr" / "bin" / "python3"
    python.rename(python.with_name("python3.moved"))  # Ansible cannot run modules on that host now
    try:
        with pytest.raises(PlaybookError) as failed:
            provision("linux-server", {"instances": 2}, deployment=d, settings=site, options=RunOptions(retry="all"))
        assert [h for h, _, _ in failed.value.failures] == [bad.name]
        assert status(d, settings=site).last_run.failed_hosts == (bad.name,)
    finally:
        python.with_name("python3.moved").rename(python)
    retried = provision("linux-server", {"instances": 2}, deployment=d, settings=site)
    assert list(retried.ansible["base"].hosts) == [bad.name]  # only the host that failed
    everything = provision(
        "linux-server", {"instances": 2}, deployment=d, settings=site, options=RunOptions(retry="all")
    )
    assert sorted(everything.ansible["base"].hosts) == sorted(h.name for h in first.hosts)
