"""The guest agent: keeps one SSH guest per powered-on VM whose guest IP lies in the guest network.

Runs as a sandbox daemon (``python -m umc_infra.sandbox._agent``), reading its settings from
``UMC_SANDBOX_*`` like everything else. Twice a second it lists the simulator's VMs and reconciles:
a new VM with a guest IP gets a guest, a powered-off VM's guest stops (its root is kept), a deleted VM's
guest stops and its root is removed. If the simulator is unreachable it waits and changes nothing.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from umc_infra.errors import UmcInfraError
from umc_infra.sandbox import _guests, _vcsim
from umc_infra.sandbox._config import SandboxInfo, SandboxPaths, SandboxSettings
from umc_infra.sandbox._guests import GuestVM

POLL_S = 0.5


def list_vms(si: Any) -> list[dict[str, Any]]:
    """Name, uuid, guest IP, power state and template flag of every VM, in one property-collector call."""
    from pyVmomi import vim, vmodl

    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine,
                    pathSet=["name", "config.instanceUuid", "config.template", "guest.ipAddress",
                             "runtime.powerState"],
                )
            ],
        )  # fmt: skip
        result = content.propertyCollector.RetrieveContents([spec])
    finally:
        view.Destroy()
    return [{prop.name: prop.val for prop in obj.propSet} for obj in result]


def desired_guests(
    vms: list[dict[str, Any]],
    network: ipaddress.IPv4Network,
    running: Mapping[ipaddress.IPv4Address, str] | None = None,
) -> dict[ipaddress.IPv4Address, GuestVM]:
    """The guests that should run: powered-on, non-template VMs with a guest IP in ``network``.

    Two VMs with one address (a misconfiguration) never make the guest flip between them: the VM whose
    guest already runs (``running``: address -> VM uuid) keeps it, else the first by name.
    """
    running = running or {}
    wanted: dict[ipaddress.IPv4Address, GuestVM] = {}

    def order(vm: dict[str, Any]) -> tuple[bool, str]:
        ip = str(vm.get("guest.ipAddress"))
        owner = next((uuid for address, uuid in running.items() if str(address) == ip), None)
        return (owner != str(vm.get("config.instanceUuid")), str(vm.get("name")))

    for vm in sorted(vms, key=order):
        raw_ip = vm.get("guest.ipAddress")
        if not raw_ip or vm.get("config.template") or vm.get("runtime.powerState") != "poweredOn":
            continue
        try:
            ip = ipaddress.IPv4Address(raw_ip)
        except ValueError:
            continue
        if ip in network and ip not in wanted:
            wanted[ip] = GuestVM(uuid=str(vm.get("config.instanceUuid")), name=str(vm["name"]), ip=ip)
    return wanted


def reconcile(settings: SandboxSettings, paths: SandboxPaths, vms: list[dict[str, Any]]) -> None:
    """Start, stop and remove guests so they match the VMs."""
    running = {g.vm.ip: g.vm.uuid for g in _guests.guests(paths) if g.running}
    wanted = desired_guests(vms, settings.guest_network, running)
    existing_uuids = {str(vm.get("config.instanceUuid")) for vm in vms}
    for guest in _guests.guests(paths):
        target = wanted.get(guest.vm.ip)
        if target is not None and target.uuid == guest.vm.uuid:
            continue
        gone = guest.vm.uuid not in existing_uuids
        if guest.running or gone:
            print(
                f"guest {guest.vm.ip} ({guest.vm.name}): {'VM gone' if gone else 'VM off'}, stopping",
                flush=True,
            )
            _guests.stop_guest(paths, guest.vm.ip, remove=gone)
    still_running = {g.vm.ip for g in _guests.guests(paths) if g.running}
    for ip, vm in wanted.items():
        if ip not in still_running:
            print(f"guest {ip} ({vm.name}): starting", flush=True)
            _guests.start_guest(settings, paths, vm)


class _Stop(BaseException):
    """SIGTERM or SIGINT: a stop, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def main() -> int:
    from umc_infra.sandbox import Sandbox

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    settings = SandboxSettings()
    sandbox = Sandbox(settings)
    paths = SandboxPaths.of(settings)
    info: SandboxInfo = sandbox.info()
    print(f"guest agent watching {info.vsphere_server} for guests in {settings.guest_network}", flush=True)
    try:
        while True:
            try:
                with _vcsim.connect(info) as si:
                    while True:
                        vms = list_vms(si)
                        try:
                            reconcile(settings, paths, vms)
                        except UmcInfraError as exc:  # one guest failing must not stop the others
                            print(f"reconcile failed: {exc}", flush=True)
                        time.sleep(POLL_S)
            except _Stop:
                raise
            except Exception as exc:  # the simulator went away (restart, down): keep guests, retry
                print(f"simulator unreachable ({type(exc).__name__}); retrying", flush=True)
                time.sleep(1)
    except _Stop:
        print("guest agent stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
