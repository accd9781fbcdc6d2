"""The VM hardware params of modules/vsphere-vm on the simulator: data disks, NICs on further (distributed) port
groups, CPU and memory hot add, reservations; read back from vCenter, then changed in place and removed."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from umc_infra import ParamsError, RunOptions, destroy, provision
from umc_infra.sandbox import _vcsim

from .conftest import vm_names


@pytest.fixture
def site(info, tmp_path):
    return info.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.240-127.0.1.244")


def hardware(info, name: str) -> dict:
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"{info.inventory.datacenter}/vm/"
                                                                  f"{info.inventory.vm_folder}/{name}")  # fmt: skip
        devices = vm.config.hardware.device
        found = sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)), key=lambda d: d.unitNumber)
        disks = [d.capacityInKB // (1024 * 1024) for d in found]
        nics = [d.backing for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        networks = [getattr(b, "deviceName", None) or b.port.portgroupKey for b in nics]
        config = vm.config
        return {"disks": disks, "nics": len(nics), "networks": networks,
                "cpu_hot_add": config.cpuHotAddEnabled, "memory_hot_add": config.memoryHotAddEnabled,
                "cpu_mhz": config.cpuAllocation.reservation,
                "memory_mb": config.memoryAllocation.reservation}  # fmt: skip


def test_data_disks_extra_nics_hot_add_and_reservations_reach_vcenter(site, info):
    d = "hw-vm"
    params = {"instances": 1, "data_disks_gb": [1, 2], "extra_networks": ["VM Network"], "cpu_hot_add": True,
              "memory_hot_add": True, "cpu_reservation_mhz": 500, "memory_reservation_mb": 512}  # fmt: skip
    made = provision("linux-server", params, deployment=d, settings=site)
    (host,) = made.hosts
    shown = hardware(info, host.name)
    assert shown["disks"][1:] == [1, 2] and len(shown["disks"]) == 3
    assert shown["nics"] == 2
    assert (shown["cpu_hot_add"], shown["memory_hot_add"]) == (True, True)
    assert (shown["cpu_mhz"], shown["memory_mb"]) == (500, 512)

    again = provision("linux-server", {"data_disks_gb": [1, 2, 3], "memory_reservation_mb": 0}, deployment=d,
                      settings=site)  # fmt: skip
    assert again.terraform["vm"].change == 1 and again.terraform["vm"].add == 0  # in place, the VM kept
    shown = hardware(info, host.name)
    assert shown["disks"][1:] == [1, 2, 3] and shown["memory_mb"] == 0
    destroy(d, settings=site, options=RunOptions(lock_timeout_s=30))


def test_a_reservation_over_the_memory_is_refused_naming_both(site, info):
    too_much = {"memory_mb": 1024, "memory_reservation_mb": 2048}
    with pytest.raises(ParamsError) as refused:
        provision("linux-server", too_much, deployment="hw-bad", settings=site)
    (problem,) = refused.value.problems
    assert (problem.field, problem.message) == ("params.memory_reservation_mb", "2048 is more than memory_mb (1024)")
    assert not vm_names(info, "hw-bad")
