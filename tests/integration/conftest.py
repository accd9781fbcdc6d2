"""The sandbox, brought up once per test run, and helpers to reach its guests."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from umc_infra.run.tools import RealTools, ToolContext
from umc_infra.sandbox import Sandbox, SandboxInfo, SandboxSettings, _vcsim
from umc_infra.terraform.runner import Terraform


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The sandbox from the environment's settings: reused if it runs, stopped at the end if we started it.

    pytest-xdist's workers share it: one at a time brings it up (the first may start it, the others reuse it), and
    a worker never stops it, as another may still be using it (``nox -s tests`` starts and stops it around them).
    """
    sb = Sandbox(on_progress=print)
    sb.paths.state_dir.mkdir(parents=True, exist_ok=True)
    with open(sb.paths.state_dir / "up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sb.up()
    started = sb.started and "PYTEST_XDIST_WORKER" not in os.environ
    yield sb
    if started:
        sb.down()


@pytest.fixture(scope="session")
def info(sandbox: Sandbox) -> SandboxInfo:
    return sandbox.info()


def read_secret(info: SandboxInfo, path: str) -> dict[str, str]:
    """Read a KV v2 secret the way the library will: AppRole login, least-privilege policy."""
    client = hvac.Client(url=info.vault_addr)
    client.auth.approle.login(role_id=info.vault_role_id, secret_id=info.vault_secret_id.get_secret_value())
    return client.secrets.kv.v2.read_secret_version(
        path=path, mount_point=info.inventory.vault_mount, raise_on_deleted_version=True
    )["data"]["data"]


@contextlib.contextmanager
def private_key_file(info: SandboxInfo) -> Iterator[Path]:
    """The Ansible SSH key from Vault, in a 0600 file removed afterwards."""
    key = read_secret(info, info.inventory.vault_ansible_path)["ssh_private_key"]
    fd, name = tempfile.mkstemp(prefix="umc-test-key-")
    try:
        os.write(fd, key.encode())
        os.close(fd)
        yield Path(name)
    finally:
        os.unlink(name)


def ssh(info: SandboxInfo, ip: str, command: str, *, port: int = 22) -> subprocess.CompletedProcess[str]:
    with private_key_file(info) as key:
        return subprocess.run(
            ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
             f"root@{ip}", command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def own_ports() -> dict[str, int]:
    """A free port for each service of a second sandbox (every ``*_port`` setting but the guests' SSH port), so it
    never meets the session's sandbox; a service added later gets one too."""
    services = [name for name in SandboxSettings.model_fields if name.endswith("_port") and name != "guest_ssh_port"]
    return {name: free_port() for name in services}


def vm_names(info: SandboxInfo, prefix: str) -> list[str]:
    """The names of the VMs in the simulator whose name starts with ``prefix`` (templates left out)."""
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return sorted(vm.name for vm in view.view if vm.name.startswith(prefix) and not vm.config.template)
        finally:
            view.Destroy()


@contextlib.contextmanager
def only_this_modules_vms(info: SandboxInfo, *prefixes: str) -> Iterator[None]:
    """No VM named ``<prefix>*`` before the module (left by an earlier run that died) nor after it: its addresses
    are free again for whatever runs next from the same range (the benchmark's range spans several files')."""

    def remove() -> None:
        for name in [n for prefix in prefixes for n in vm_names(info, prefix)]:
            destroy_vm(info, name)

    remove()
    try:
        yield
    finally:
        remove()


def find_vm(si, path: str):
    return si.RetrieveContent().searchIndex.FindByInventoryPath(path)


def clone_vm(info: SandboxInfo, name: str, ip: str) -> None:
    """Clone the template the way the vSphere provider does: clone, customize (fixed IP), power on."""
    inv = info.inventory
    with _vcsim.connect(info) as si:
        template = find_vm(si, f"{inv.datacenter}/vm/{inv.template_path}")
        folder = find_vm(si, f"{inv.datacenter}/vm/{inv.vm_folder}")
        host = find_vm(si, f"{inv.datacenter}/host/{inv.host}")
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=host.resourcePool), powerOn=False)
        task = template.Clone(folder=folder, name=name, spec=spec)
        WaitForTask(task)
        vm = task.info.result
        custom = vim.vm.customization
        WaitForTask(vm.CustomizeVM_Task(spec=custom.Specification(
            identity=custom.LinuxPrep(hostName=custom.FixedName(name=name), domain="sandbox.umc.local"),
            globalIPSettings=custom.GlobalIPSettings(),
            nicSettingMap=[custom.AdapterMapping(adapter=custom.IPSettings(
                ip=custom.FixedIp(ipAddress=ip), subnetMask="255.255.255.0"))],
        )))  # fmt: skip
        WaitForTask(vm.PowerOnVM_Task())


def destroy_vm(info: SandboxInfo, name: str) -> None:
    with _vcsim.connect(info) as si:
        vm = find_vm(si, f"{info.inventory.datacenter}/vm/{info.inventory.vm_folder}/{name}")
        if vm is not None:
            if vm.runtime.powerState == "poweredOn":
                WaitForTask(vm.PowerOffVM_Task())
            WaitForTask(vm.Destroy_Task())


class _ShowingTerraform(Terraform):
    """The real Terraform; keeps what ``terraform show -json`` printed, in memory, for the test to read."""

    shown: list[dict[str, Any]]

    def _show(self, workdir: Path, module: str, planfile: Path | None) -> dict[str, Any]:
        found = super()._show(workdir, module, planfile)
        self.shown.append(found)
        return found


class ShowingTools(RealTools):
    def __init__(self) -> None:
        self.shown: list[dict[str, Any]] = []

    def terraform(self, context: ToolContext) -> Terraform:
        terraform = _ShowingTerraform(
            context.settings, on_event=context.on_event, redactor=context.redactor, deployment=context.deployment,
            cancel=context.cancel, private_dir=context.private_dir, on_lock=context.on_lock,
        )  # fmt: skip
        terraform.shown = self.shown
        return terraform
