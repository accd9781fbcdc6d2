"""The vCenter simulator: built from Debian's govmomi source, seeded through the vSphere API."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import ssl
import tempfile
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from umc_infra.errors import BuildFailed, ComponentFailed, ProcessError
from umc_infra.process import run
from umc_infra.sandbox import _daemons, _host
from umc_infra.sandbox._config import (
    Credentials,
    SandboxInfo,
    SandboxInventory,
    SandboxPaths,
    vcsim_environment,
)

NAME = "vcsim"
GOPATH = "/usr/share/gocode"
SIMULATOR_SOURCE = _host.VCSIM_PACKAGES["golang-github-vmware-govmomi-dev"]

# govmomi 0.24.2 (Debian bookworm) has CloneVM_Task hand the source VM's own device objects to the clone and
# blank the disk's file name in place (simulator/virtual_machine.go, CloneVMTask). The template and every clone
# then share one disk object: a clone read while another clone runs shows an empty disk file name (provider
# 2.0.2: "could not parse path from filename"), and destroying any of them deletes the disk of whichever VM was
# cloned last (the next post-clone reconfigure: FileNotFound). govmomi 0.28.0 fixed it by cloning a copy of the
# device list (vmware/govmomi#2704, issue #2706); the build overlays that fix on Debian's source.
_CLONE_FILE = "virtual_machine.go"
_CLONE_SHARED = (
    "\t\tdefaultDevices := object.VirtualDeviceList(esx.VirtualDevice)\n\t\tdevices := vm.Config.Hardware.Device\n"
)
_CLONE_COPIED = "\t\tdefaultDevices := object.VirtualDeviceList(esx.VirtualDevice)\n\t\tdevices := vm.cloneDevice()\n"
_CLONE_DEVICE = "func (vm *VirtualMachine) cloneDevice() []types.BaseVirtualDevice"
_CLONE_DEVICE_FILE = "umc_clone_device.go"
_CLONE_DEVICE_GO = f"""package simulator

import "github.com/vmware/govmomi/vim25/types"

// cloneDevice is govmomi commit 93c2afd1 (v0.28.0): a deep copy of the VM's devices for CloneVM_Task.
{_CLONE_DEVICE} {{
\tsrc := types.ArrayOfVirtualDevice{{
\t\tVirtualDevice: vm.Config.Hardware.Device,
\t}}
\tdst := types.ArrayOfVirtualDevice{{}}
\tdeepCopy(src, &dst)
\treturn dst.VirtualDevice
}}
"""


# govmomi 0.24.2 gives a disk added by a reconfigure no backing UUID; provider 2.0.2 matches a VM's disks to its
# state by that UUID, and two data disks that both have none make its refresh panic ("slice bounds out of range
# [:-1]" in DiskRefreshOperation). The overlay gives each new disk backing a UUID, as vCenter does.
_DISK_BACKING = "\t\t\tif disk, ok := b.(*types.VirtualDiskFlatVer2BackingInfo); ok {\n"
_DISK_DEFAULTS = _DISK_BACKING + "\t\t\t\t// These properties default to false\n"
_DISK_UUID = '\t\t\t\tif disk.Uuid == "" {\n\t\t\t\t\tdisk.Uuid = uuid.New().String()\n\t\t\t\t}\n'


# govmomi 0.24.2 finds an object only by its exact type: a reference to a cluster typed as its supertype
# ComputeResource (which provider 2.0.2 makes from a resource pool's owner to find the guest OS family) is "not
# found", so no VM with guest customization can be planned on a cluster. vCenter resolves it; the overlay does too.
_REGISTRY_FILE = "registry.go"
_REGISTRY_GET = "\treturn r.objects[ref]\n}\n"
_REGISTRY_SUPERTYPE = (
    '\tif obj, ok := r.objects[ref]; ok || ref.Type != "ComputeResource" {\n\t\treturn obj\n\t}\n'
    '\treturn r.objects[types.ManagedObjectReference{Type: "ClusterComputeResource", Value: ref.Value}]\n}\n'
)


def _source() -> bytes:
    return resources.files("umc_infra.sandbox").joinpath("vcsim/main.go").read_bytes()


def clone_fix_overlay(clone_source: str) -> dict[str, str]:
    """The files to lay over govmomi's simulator package so CloneVM_Task gives a clone copies of the devices.

    Args:
        clone_source: the text of the package's ``virtual_machine.go``.

    Returns:
        File name in the package -> replacement text; empty when the source copies the devices already
        (govmomi >= 0.28.0).

    Raises:
        BuildFailed: the source is a govmomi this sandbox does not know how to fix.

    """
    if _CLONE_DEVICE in clone_source:
        return {}
    if clone_source.count(_CLONE_SHARED) != 1:
        raise BuildFailed(
            f"the simulator source {SIMULATOR_SOURCE / _CLONE_FILE} is neither govmomi 0.24 (whose CloneVM_Task "
            "shares the template's devices with every clone) nor a version that copies them: the sandbox "
            "cannot fix its clones. Install Debian bookworm's golang-github-vmware-govmomi-dev (0.24.2) or "
            "govmomi >= 0.28.0.",
            step="sandbox.vcsim.build",
        )
    fixed = clone_source.replace(_CLONE_SHARED, _CLONE_COPIED)
    if fixed.count(_DISK_DEFAULTS) == 1:
        fixed = fixed.replace(
            _DISK_DEFAULTS, _DISK_DEFAULTS.replace("\t\t\t\t// These", _DISK_UUID + "\t\t\t\t// These")
        )
    return {_CLONE_FILE: fixed, _CLONE_DEVICE_FILE: _CLONE_DEVICE_GO}


def registry_fix_overlay(registry_source: str) -> dict[str, str]:
    """The ``registry.go`` for govmomi 0.24's simulator that finds a cluster by a ``ComputeResource`` reference.

    Returns an empty mapping for a source that does not look up objects that way (a govmomi that needs no fix).
    """
    if registry_source.count(_REGISTRY_GET) != 1 or _REGISTRY_SUPERTYPE in registry_source:
        return {}
    return {_REGISTRY_FILE: registry_source.replace(_REGISTRY_GET, _REGISTRY_SUPERTYPE)}


def go_build_argv(output: Path, *, overlay: Path | None) -> list[str]:
    """``go build`` of the command in the working directory, with an ``-overlay`` file if given."""
    return ["go", "build", *(["-overlay", str(overlay)] if overlay is not None else []), "-o", str(output), "."]


def write_overlay(files: dict[str, str], directory: Path) -> Path | None:
    """Write the overlay's files and its JSON map (package file -> replacement) into ``directory``."""
    if not files:
        return None
    directory.mkdir()
    replace = {}
    for name, text in files.items():
        (directory / name).write_text(text)
        replace[str(SIMULATOR_SOURCE / name)] = str(directory / name)
    overlay = directory / "overlay.json"
    overlay.write_text(json.dumps({"Replace": replace}))
    return overlay


def ensure_built(paths: SandboxPaths, *, on_progress: Callable[[str], None]) -> Path:
    """Build the simulator (with the clone fix laid over govmomi) once per source and Go version.

    Later calls reuse the binary.

    Raises:
        MissingDependency: Go or the govmomi source is missing and cannot be installed here.
        BuildFailed: ``go build`` failed, or the govmomi source is a version the clone fix does not know.

    """
    _host.require_packages(
        _host.VCSIM_PACKAGES,
        purpose="the vCenter simulator",
        step="sandbox.vcsim.build",
        on_progress=on_progress,
    )
    env = _host.host_env() | {
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOCACHE": str(paths.go_cache),
        "HOME": str(paths.cache_dir),
        "CGO_ENABLED": "0",
    }
    go_version = run(["go", "version"], step="sandbox.vcsim.build", env=env).stdout
    clone_source = (SIMULATOR_SOURCE / _CLONE_FILE).read_text()
    overlay_files = clone_fix_overlay(clone_source) | registry_fix_overlay(
        (SIMULATOR_SOURCE / _REGISTRY_FILE).read_text()
    )
    fingerprint = _source() + go_version.encode() + clone_source.encode() + json.dumps(overlay_files).encode()
    digest = hashlib.sha256(fingerprint).hexdigest()[:16]
    binary = paths.vcsim_binary.with_name(f"umc-vcsim-{digest}")
    if binary.exists():
        return binary

    on_progress("building the vCenter simulator from Debian's govmomi source (once, about 20 s)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="umc-vcsim-src-") as tmp:
        src = Path(tmp) / "cmd"
        src.mkdir()
        (src / "main.go").write_bytes(_source())
        overlay = write_overlay(overlay_files, Path(tmp) / "overlay")
        partial = binary.with_suffix(".partial")
        try:
            run(
                go_build_argv(partial, overlay=overlay),
                step="sandbox.vcsim.build",
                env=env,
                cwd=src,
                timeout=900,
            )
        except ProcessError as exc:
            raise BuildFailed(
                "building the vCenter simulator failed:\n"
                + "\n".join(exc.output_tail)
                + f"\nCheck the govmomi source: {_host.install_command(sorted(_host.VCSIM_PACKAGES))}",
                step="sandbox.vcsim.build",
            ) from None
        partial.replace(binary)
    return binary


def start(binary: Path, *, host: str, port: int, user: str, creds: Credentials, paths: SandboxPaths) -> _daemons.Daemon:
    """Start the simulator (its password travels in its environment, not argv) and wait for it."""
    # A previous run's datastore directories are stale: the simulator's inventory is in memory.
    shutil.rmtree(paths.vcsim_tmp, ignore_errors=True)
    paths.vcsim_tmp.mkdir(parents=True)
    daemon = _daemons.start(
        NAME,
        [str(binary)],
        env=vcsim_environment(f"{host}:{port}", user, creds.vsphere_password, paths.vcsim_tmp),
        pids_dir=paths.pids,
        logs_dir=paths.logs,
    )
    _daemons.wait_until(lambda: _daemons.port_open(host, port), daemon=daemon, component=NAME, timeout_s=30)
    return daemon


@contextlib.contextmanager
def connect(info: SandboxInfo) -> Iterator[Any]:
    """A pyvmomi ServiceInstance logged in to the sandbox simulator."""
    from pyVim.connect import Disconnect, SmartConnect

    host, port = info.vsphere_server.rsplit(":", 1)
    context = ssl.create_default_context()
    # The simulator serves Go's built-in test certificate; this connection never leaves loopback.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    si = SmartConnect(
        host=host,
        port=int(port),
        user=info.vsphere_user,
        pwd=info.vsphere_password.get_secret_value(),
        sslContext=context,
        connectionPoolTimeout=10,
    )
    try:
        yield si
    finally:
        with contextlib.suppress(Exception):
            Disconnect(si)


def _child(parent: Any, name: str) -> Any:
    return next((e for e in parent.childEntity if e.name == name), None)


def seed(si: Any, inventory: SandboxInventory) -> None:
    """Create the VM folder, the template folder and the Linux and Windows template VMs, unless they exist."""
    content = si.RetrieveContent()
    dc = _child(content.rootFolder, inventory.datacenter)
    if dc is None:
        raise ComponentFailed(f"the simulator has no datacenter {inventory.datacenter!r}", step="sandbox.vcsim")
    for folder in (inventory.vm_folder, inventory.template_folder):
        if _child(dc.vmFolder, folder) is None:
            dc.vmFolder.CreateFolder(folder)
    templates = _child(dc.vmFolder, inventory.template_folder)
    for name, guest_id in ((inventory.template, inventory.template_guest_id),
                           (inventory.windows_template, inventory.windows_template_guest_id)):  # fmt: skip
        if _child(templates, name) is None:
            _create_template(dc, templates, inventory, name=name, guest_id=guest_id)


def _create_template(dc: Any, templates: Any, inventory: SandboxInventory, *, name: str, guest_id: str) -> None:
    """A template VM: one 16 GB thin disk on a paravirtual SCSI controller, one vmxnet3 NIC on the network."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    compute = _child(dc.hostFolder, inventory.host)
    network = next(n for n in dc.network if n.name == inventory.network)
    datastore = next(d for d in dc.datastore if d.name == inventory.datastore)
    device = vim.vm.device
    controller = device.VirtualDeviceSpec(
        operation="add", device=device.ParaVirtualSCSIController(key=1000, busNumber=0, sharedBus="noSharing")
    )
    disk = device.VirtualDeviceSpec(
        operation="add",
        fileOperation="create",
        device=device.VirtualDisk(
            key=2000,
            controllerKey=1000,
            unitNumber=0,
            capacityInKB=16 * 1024 * 1024,
            # The provider finds disks by UUID when it resizes a clone's disk; the simulator assigns none.
            backing=device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True, uuid=str(uuid.uuid4())
            ),
        ),
    )
    nic = device.VirtualDeviceSpec(
        operation="add",
        device=device.VirtualVmxnet3(
            key=4000,
            # PCI slot 7 is where vSphere puts the first NIC; the provider computes NIC indexes from it.
            controllerKey=100,
            unitNumber=7,
            addressType="generated",
            backing=device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network.name, network=network),
            connectable=device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True),
            # Provider 2.0.2 reads the template NIC's resource allocation without a nil check and
            # crashes if it is missing; real vCenters always report one.
            resourceAllocation=device.VirtualEthernetCard.ResourceAllocation(
                limit=-1, reservation=0, share=vim.SharesInfo(shares=50, level="normal")
            ),
        ),
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId=guest_id,
        numCPUs=1,
        memoryMB=1024,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore.name}]"),
        deviceChange=[controller, disk, nic],
    )
    task = templates.CreateVM_Task(config=spec, pool=compute.resourcePool, host=compute.host[0])
    WaitForTask(task)
    task.info.result.MarkAsTemplate()


def health(info: SandboxInfo) -> str:
    """Log in and count VMs; returns a one-line description or raises."""
    from pyVmomi import vim

    with connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            vms = list(view.view)
        finally:
            view.Destroy()
        return f"{content.about.fullName}; {len(vms)} VMs (template included)"
