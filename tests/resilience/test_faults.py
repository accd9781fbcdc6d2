"""Faults on the real stack: each breaks one component mid-run, then checks nothing was lost or leaked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from umc_infra import (
    ComponentFailed,
    DeploymentLocked,
    PlaybookError,
    Provisioner,
    SecretError,
    StateBackendError,
    UmcInfraError,
    destroy,
    provision,
    status,
)
from umc_infra.sandbox import _daemons
from umc_infra.state.ipam import held
from umc_infra.state.store import open_store

from .conftest import assert_consistent, assert_no_secret

CHILD = textwrap.dedent("""
    import json, sys
    from umc_infra import provision
    def show(event):
        print(json.dumps(event.model_dump(mode="json")), flush=True)
    provision("linux-server", {"instances": 1}, deployment=sys.argv[1], on_event=show)
""")


def child(info, site, deployment: str) -> subprocess.Popen[str]:
    """A separate process provisioning, printing its events as JSON lines."""
    env = dict(os.environ) | info.environment() | {"UMC_STATE_DIR": str(site.state_dir), "UMC_BACKEND": site.backend,
                                                    "UMC_IP_POOL": str(site.ip_pool)}  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", CHILD, deployment], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(proc: subprocess.Popen[str], predicate) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if predicate(json.loads(line)):
            return
    raise AssertionError(f"the child ended first: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


def tools_running() -> list[str]:
    """terraform, its provider plugins and ansible-playbook processes (nothing else runs them in this suite)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [Path(a).name for a in cmdline.read_bytes().decode(errors="replace").split("\0")[:2] if a]
        except OSError:
            continue
        if any(a == "terraform" or a.startswith("terraform-provider-") or a == "ansible-playbook" for a in argv):
            found.append(" ".join(argv))
    return found


def no_tool_left_running(timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while tools_running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def daemon_pid(sandbox, name: str) -> int:
    daemon = _daemons.running(sandbox.paths.pids, name)
    assert daemon is not None, f"{name} is not running"
    return daemon.pid


def nothing_created(info, site, deployment: str) -> None:
    """A run that failed before Terraform: no VM, no address kept."""
    assert_consistent(info, site, deployment, vms=0)
    assert held(open_store(site), deployment=deployment, module="vm") == []


# -- vCenter ----------------------------------------------------------------------------------------


def test_vcenter_simulator_killed_mid_apply(sandbox, info, site, secrets, caplog):
    d = "res-vcsim"
    proc = child(info, site, d)
    wait_for(proc, lambda e: e["kind"] == "resource" and e["status"] == "started")
    os.kill(daemon_pid(sandbox, "vcsim"), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "TerraformError" in stderr
    record = status(d, settings=site)
    assert (record.state, record.last_run.failed_step) == ("failed", "terraform.apply.vm")

    sandbox.up()  # a new simulator: its inventory starts empty, as after a vCenter restore
    again = provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert [h.name for h in again.hosts] == [f"{d}-1"]
    assert_consistent(info, site, d, vms=1)  # recreated once, never twice
    assert_no_secret(secrets, stderr, caplog.text, directories=(site.state_dir,))
    destroy(d, settings=site)
    assert_consistent(info, site, d, vms=0)


# -- Vault ------------------------------------------------------------------------------------------


def test_vault_down(sandbox, info, site, secrets):
    d = "res-vault-down"
    os.kill(daemon_pid(sandbox, "vault"), signal.SIGKILL)
    try:
        with pytest.raises(SecretError, match="Vault") as failed:
            provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    finally:
        sandbox.up()  # a new Vault, seeded with the same credentials
    nothing_created(info, site, d)
    assert status(d, settings=site).last_run.failed_step == "secrets"
    assert_no_secret(secrets, str(failed.value), directories=(site.state_dir,))
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert_consistent(info, site, d, vms=1)
    destroy(d, settings=site)


def test_vault_sealed(sandbox, info, site, secrets):
    d = "res-vault-sealed"
    sandbox._vault_root().sys.seal()
    try:
        with pytest.raises(SecretError) as failed:
            provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    finally:
        os.kill(daemon_pid(sandbox, "vault"), signal.SIGKILL)  # the unseal key is not kept: start a new one
        time.sleep(0.5)
        sandbox.up()
    assert "sealed" in str(failed.value).lower() or "503" in str(failed.value)
    nothing_created(info, site, d)
    assert_no_secret(secrets, str(failed.value))


def test_vault_token_expired(sandbox, info, site, secrets):
    d = "res-vault-expired"
    token = sandbox._vault_root().auth.token.create(policies=[info.inventory.vault_policy], ttl="2s",
                                                    renewable=False)["auth"]["client_token"]  # fmt: skip
    time.sleep(3)
    expired = site.model_copy(update={"vault_token": SecretStr(token)})
    with pytest.raises(SecretError) as failed:
        provision("linux-server", {"instances": 1}, deployment=d, settings=expired)
    assert token not in str(failed.value)
    nothing_created(info, site, d)
    assert_no_secret([*secrets, token], str(failed.value), directories=(site.state_dir,))


def test_vault_secret_deleted(sandbox, info, site, secrets):
    d = "res-deleted"
    sandbox.put_secret(f"apps/{d}", {"db_password": "a-password-about-to-go"})
    root = sandbox._vault_root()
    root.secrets.kv.v2.delete_latest_version_of_secret(path=f"apps/{d}", mount_point=info.inventory.vault_mount)
    with pytest.raises(SecretError) as failed:
        provision("app-stack", {}, deployment=d, settings=site)
    assert failed.value.reference == f"kv/data/apps/{d}#db_password"
    nothing_created(info, site, d)
    assert "a-password-about-to-go" not in str(failed.value)


# -- the state backend ------------------------------------------------------------------------------


def test_s3_backend_down_at_init(info, site, secrets):
    d = "res-s3-init"
    from tests.integration.conftest import free_port

    down = site.model_copy(update={"backend": "s3", "s3_endpoint": f"http://127.0.0.1:{free_port()}",
                                   "state_timeout_s": 2.0})  # fmt: skip
    with pytest.raises(StateBackendError, match="unreachable") as failed:
        provision("linux-server", {"instances": 1}, deployment=d, settings=down)
    assert vm_count(info, d) == 0
    assert_no_secret(secrets, str(failed.value))


def vm_count(info, deployment: str) -> int:
    from tests.integration.conftest import vm_names

    return len(vm_names(info, f"{deployment}-"))


def test_s3_backend_down_at_state_write(sandbox, info, site, secrets):
    """The S3 server stops answering after Terraform wrote its state, while the record is still to write."""
    d = "res-s3-write"
    s3 = site.model_copy(update={"backend": "s3", "state_timeout_s": 2.0})
    moto = daemon_pid(sandbox, "s3")

    def freeze_at_ansible(event):
        if event.kind == "step_started" and event.step == "ansible.base":
            os.kill(moto, signal.SIGSTOP)

    try:
        with pytest.raises(StateBackendError) as failed:
            Provisioner(settings=s3, on_event=freeze_at_ansible).provision("linux-server", {"instances": 1},
                                                                            deployment=d)  # fmt: skip
    finally:
        os.kill(moto, signal.SIGCONT)
    assert_no_secret(secrets, str(failed.value))
    p = Provisioner(settings=s3)
    p.break_lock(d)  # the lock could not be released while S3 was down: an operator removes it (umc-infra unlock)
    again = p.provision("linux-server", {"instances": 1}, deployment=d)
    assert again.terraform["vm"].add == 0  # Terraform's state was written: nothing created twice
    assert_consistent(info, s3, d, vms=1)
    assert status(d, settings=s3).state == "active"
    destroy(d, settings=s3)


def test_lock_held_by_another_process(info, site):
    d = "res-lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom umc_infra import Settings\nfrom umc_infra.state.lease import locked\n"
         "from umc_infra.state.store import open_store\n"
         f"with locked(open_store(Settings()), {d!r}, operation='provision', timeout_s=5):\n"
         "    print('locked', flush=True); sys.stdin.readline()\n"],
        env=dict(os.environ) | {"UMC_STATE_DIR": str(site.state_dir), "UMC_BACKEND": "local"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(DeploymentLocked, match=f"pid {holder.pid}"):
        provision("linux-server", {"instances": 1}, deployment=d, settings=site, lock_timeout_s=1)
    assert vm_count(info, d) == 0
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)
    provision("linux-server", {"instances": 1}, deployment=d, settings=site, lock_timeout_s=5)
    assert_consistent(info, site, d, vms=1)
    destroy(d, settings=site)


def test_disk_full_on_the_state_directory(info, site, secrets):
    """A nearly full state directory stops the run before Terraform starts: a full disk while Terraform
    writes its state would leave a VM no state knows of (this case found that)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    d = "res-disk-full"
    state = site.state_dir
    state.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(state)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(StateBackendError, match="MB free") as failed:
            provision("linux-server", {"instances": 1}, deployment=d, settings=site)
        assert vm_count(info, d) == 0  # stopped before Terraform created anything
        assert failed.value.step == "space"
        assert status(d, settings=site).last_run.failed_step == "terraform.plan.vm"
        assert_no_secret(secrets, str(failed.value), directories=(state,))

        # Without the check, the same disk fills while Terraform writes the state of a VM it just made:
        unchecked = site.model_copy(update={"min_free_mb": 0})
        with pytest.raises(UmcInfraError) as full:  # an error of ours, never a bare OSError
            provision("linux-server", {"instances": 1}, deployment=d, settings=unchecked)
        assert "no space left on device" in str(full.value).lower()
        assert_no_secret(secrets, str(full.value), directories=(state,))
        orphans = vm_count(info, d)

        subprocess.run(["mount", "-o", "remount,size=256m", str(state)], check=True)
        if orphans:  # what an operator does: remove the VM no state knows of, and the half-written state
            from tests.integration.conftest import destroy_vm

            destroy_vm(info, f"{d}-1")
            (state / "state" / "terraform" / d / "vm.tfstate").unlink(missing_ok=True)
        provision("linux-server", {"instances": 1}, deployment=d, settings=site)
        assert_consistent(info, site, d, vms=1)
        destroy(d, settings=site)
        assert_consistent(info, site, d, vms=0)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


# -- guests and playbooks ---------------------------------------------------------------------------


def test_ssh_unreachable(info, site, secrets):
    d = "res-ssh"
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    unreachable = site.model_copy(update={"ssh_port": 9, "ssh_wait_timeout_s": 3.0})  # nothing listens on 9
    with pytest.raises(ComponentFailed, match=f"{d}-1") as failed:
        provision("linux-server", {"instances": 1}, deployment=d, settings=unreachable)
    record = status(d, settings=site)
    assert (record.last_run.outcome, record.last_run.failed_step) == ("failed", "ssh")
    assert_consistent(info, site, d, vms=1)  # the VM is kept, and not made twice
    assert_no_secret(secrets, str(failed.value))
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert status(d, settings=site).state == "active"
    destroy(d, settings=site)


def test_a_task_fails_on_one_of_three_hosts(sandbox, info, site, secrets):
    d = "res-task"
    first = provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    broken = first.hosts[1]
    python = sandbox.guest_root(broken.ip) / "usr" / "bin" / "python3"
    python.rename(python.with_name("python3.away"))  # every module fails on that host, and only there
    with pytest.raises(PlaybookError) as failed:
        provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    assert {host for host, _, _ in failed.value.failures} == {broken.name}
    assert status(d, settings=site).last_run.failed_hosts == (broken.name,)
    assert_consistent(info, site, d, vms=3)
    assert_no_secret(secrets, str(failed.value))
    python.with_name("python3.away").rename(python)
    retried = provision("linux-server", {"instances": 3}, deployment=d, settings=site)
    assert retried.ansible["base"].hosts.keys() == {broken.name}  # only the failed host ran again
    assert status(d, settings=site).state == "active"
    destroy(d, settings=site)


# -- signals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "predicate", "failed_step"),
    [
        ("terraform", lambda e: e["kind"] == "resource" and e["status"] == "started", "terraform.apply.vm"),
        ("ansible", lambda e: e["kind"] == "task" and e["status"] == "started", "ansible.base"),
    ],
)
def test_sigterm_mid_run(info, site, secrets, where, predicate, failed_step):
    d = f"res-term-{where}"
    proc = child(info, site, d)
    wait_for(proc, predicate)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    record = status(d, settings=site)
    assert (record.state, record.last_run.outcome, record.last_run.failed_step) == (
        "interrupted", "interrupted", failed_step,
    )  # fmt: skip
    assert no_tool_left_running(), "a tool of the stopped run is still running"
    assert_no_secret(secrets, stderr, directories=(site.state_dir,))
    provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    assert_consistent(info, site, d, vms=1)
    destroy(d, settings=site)


def test_the_sandbox_is_whole_again(sandbox):
    assert sandbox.status().healthy
