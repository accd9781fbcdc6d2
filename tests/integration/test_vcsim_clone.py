"""Clones in the sandbox simulator own their devices: the fix laid over govmomi 0.24's CloneVM_Task.

Unfixed, the template and every clone share one disk object: a clone read while another clone runs shows an
empty disk file name, and destroying a clone deletes the disk of whichever VM was cloned last, so a parallel
``terraform apply`` failed now and then with FileNotFound on its post-clone reconfigure.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

from umc_infra.sandbox import _vcsim
from umc_infra.sandbox._config import SandboxInventory

PREFIX = "vcsim-clone-"


def _disk(vm: Any) -> Any:
    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def _own_disk(inventory: SandboxInventory, name: str) -> str:
    return f"[{inventory.datastore}] {name}/{name}.vmdk"


def _grow_disk(vm: Any, file_name: str) -> None:
    """The vSphere provider's post-clone disk edit: the disk as read, 20 GB, no file operation."""
    disk = _disk(vm)
    disk.backing.fileName = file_name
    disk.capacityInKB = 20 * 1024 * 1024
    disk.capacityInBytes = 20 * 1024**3
    edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[edit])))


def check_clones_own_their_disks(si: Any, inventory: SandboxInventory, prefix: str) -> None:
    """Clone the template twice, then destroy one clone: the template and the other clone keep their disks."""
    content = si.RetrieveContent()
    index = content.searchIndex
    dc = next(e for e in content.rootFolder.childEntity if e.name == inventory.datacenter)
    template = index.FindByInventoryPath(f"{inventory.datacenter}/vm/{inventory.template_folder}/{inventory.template}")
    folder = index.FindByInventoryPath(f"{inventory.datacenter}/vm/{inventory.vm_folder}")
    host = next(e for e in dc.hostFolder.childEntity if e.name == inventory.host)
    datastore = next(d for d in dc.datastore if d.name == inventory.datastore)
    template_disk = _disk(template).backing.fileName
    names = [f"{prefix}1", f"{prefix}2"]
    clones: dict[str, Any] = {}
    try:
        for name in names:
            spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=host.resourcePool, datastore=datastore))
            task = template.Clone(folder=folder, name=name, spec=spec)
            WaitForTask(task)
            clones[name] = task.info.result

        assert _disk(template).backing.fileName == template_disk
        assert {n: _disk(vm).backing.fileName for n, vm in clones.items()} == {
            n: _own_disk(inventory, n) for n in names
        }
        first, second = names
        WaitForTask(clones.pop(first).Destroy_Task())
        _grow_disk(clones[second], _disk(clones[second]).backing.fileName)  # FileNotFound if its disk went
    finally:
        for name, vm in clones.items():
            with contextlib.suppress(Exception):
                # Point the clone at its own disk first: unfixed, a destroy deletes another VM's disk.
                _grow_disk(vm, _own_disk(inventory, name))
            WaitForTask(vm.Destroy_Task())


def test_clones_own_their_disks(info):
    with _vcsim.connect(info) as si:
        check_clones_own_their_disks(si, info.inventory, PREFIX)
