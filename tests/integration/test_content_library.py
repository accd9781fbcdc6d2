"""Templates from a content library (UMC_VSPHERE_CONTENT_LIBRARY): linux-server deployed from an OVF item on the
simulator, read back from vCenter, planned again without a change, and removed; the lookups by name in the plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyVmomi import vim

from umc_infra import Provisioner, RunOptions, TerraformError, destroy, plan, provision
from umc_infra.sandbox import _vcsim
from umc_infra.vcenter import rest_session

from .conftest import ShowingTools, vm_names
from .test_doctor import PER_DEPLOYMENT, doctor

LIBRARY = "umc-lib"
ITEM = "umc-linux"
OVF = Path(__file__).parents[1] / "fixtures" / "content-library" / "umc-linux.ovf"


@pytest.fixture(scope="module")
def library(info) -> dict[str, str]:
    """What a site's platform team makes once: a local library on the datastore with an OVF item (idempotent)."""
    with _vcsim.connect(info) as si:
        dc = _vcsim._child(si.RetrieveContent().rootFolder, info.inventory.datacenter)
        datastore = next(d._moId for d in dc.datastore if d.name == info.inventory.datastore)
    with rest_session(info.settings(), info.vsphere_user, info.vsphere_password, step="test") as call:
        found = call("POST", "/content/library?~action=find", {"spec": {"name": LIBRARY}})
        backing = {"type": "DATASTORE", "datastore_id": datastore}
        spec = {"name": LIBRARY, "type": "LOCAL", "storage_backings": [backing]}
        library = found[0] if found else call("POST", "/content/local-library", {"create_spec": spec})
        found = call("POST", "/content/library/item?~action=find", {"spec": {"library_id": library, "name": ITEM}})
        if found:
            item = found[0]
        else:  # an item, then its descriptor through an update session (the simulator keeps only the .ovf)
            spec = {"library_id": library, "name": ITEM, "type": "ovf"}
            item = call("POST", "/content/library/item", {"create_spec": spec})
            session = call("POST", "/content/library/item/update-session",
                           {"create_spec": {"library_item_id": item}})  # fmt: skip
            upload = call("POST", f"/content/library/item/updatesession/file/id:{session}?~action=add",
                          {"file_spec": {"name": OVF.name, "source_type": "PUSH"}})  # fmt: skip
            path = upload["upload_endpoint"]["uri"].split("/rest/com/vmware", 1)[1]
            call("PUT", path, data=OVF.read_bytes())
            call("POST", f"/content/library/item/update-session/id:{session}?~action=complete")
    return {"library": library, "item": item}


@pytest.fixture
def site(info, library, tmp_path):
    return info.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.225-127.0.1.229",
                         vsphere_content_library=LIBRARY, vsphere_template=ITEM,
                         vsphere_windows_template=None)  # fmt: skip


def deployed(info, name: str) -> dict:
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"{info.inventory.datacenter}/vm/"
                                                                  f"{info.inventory.vm_folder}/{name}")  # fmt: skip
        devices = vm.config.hardware.device
        return {
            "guest_id": vm.config.guestId,
            "template": vm.config.template,
            "cpu": vm.config.hardware.numCPU,
            "memory_mb": vm.config.hardware.memoryMB,
            "disks_gb": [d.capacityInKB // (1024 * 1024) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)],
            "networks": [d.backing.deviceName for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)],
            "ip": vm.guest.ipAddress,
        }


def test_linux_server_deploys_from_a_library_item_and_plans_no_change_after(site, info):
    d = "lib-vm"
    made = provision("linux-server", {"cpu": 2, "memory_mb": 2048, "disk_gb": 20}, deployment=d, settings=site)
    (host,) = made.hosts
    shown = deployed(info, host.name)
    assert shown == {"guest_id": "other3xLinux64Guest", "template": False, "cpu": 2, "memory_mb": 2048,
                     "disks_gb": [20], "networks": [info.inventory.network], "ip": host.ip}  # fmt: skip

    again = plan("linux-server", {"cpu": 2, "memory_mb": 2048, "disk_gb": 20}, deployment=d, settings=site)
    assert [(r.address, r.action) for r in again.resources] == []  # the item's hardware is what the module says
    destroy(d, settings=site, options=RunOptions(lock_timeout_s=30))
    assert not vm_names(info, d)


def test_the_plan_finds_library_and_item_by_name_and_clones_from_the_item(site, library):
    tools = ShowingTools()
    Provisioner(settings=site, tools=tools).plan("linux-server", {}, deployment="lib-plan")
    (shown,) = {id(s): s for s in tools.shown if s.get("resource_changes")}.values()
    (vm,) = [c["change"]["after"] for c in shown["resource_changes"] if c["type"] == "vsphere_virtual_machine"]
    lookups = {r["type"]: r["values"] for r in shown["prior_state"]["values"]["root_module"]["resources"]
               if r["mode"] == "data"}  # fmt: skip
    assert lookups["vsphere_content_library"]["id"] == library["library"]
    item = lookups["vsphere_content_library_item"]
    assert (item["id"], item["type"]) == (library["item"], "ovf")
    assert vm["clone"][0]["template_uuid"] == library["item"]
    assert "vsphere_virtual_machine" not in lookups  # no template VM is looked up
    assert (vm["guest_id"], vm["firmware"], vm["scsi_type"]) == ("other3xLinux64Guest", "bios", "pvscsi")


def test_windows_server_plans_from_a_library_item_with_windows_options(site, library):
    """Plan only: the sandbox's item is a Linux one; the module takes a Windows Server guest id for guest_os windows."""
    tools = ShowingTools()
    windows = site.model_copy(update={"vsphere_windows_template": ITEM})
    Provisioner(settings=windows, tools=tools).plan("windows-server", {"computer_name": "umcfs"}, deployment="lib-win")
    (shown,) = {id(s): s for s in tools.shown if s.get("resource_changes")}.values()
    (vm,) = [c["change"]["after"] for c in shown["resource_changes"] if c["type"] == "vsphere_virtual_machine"]
    assert vm["clone"][0]["template_uuid"] == library["item"]
    assert vm["guest_id"] == "windows9Server64Guest"
    (customize,) = vm["clone"][0]["customize"]
    assert customize["windows_options"][0]["computer_name"] == "umcfs-1" and not customize["linux_options"]


@pytest.mark.parametrize(("setting", "value"), [("vsphere_template", "no-such-item"),
                                                ("vsphere_content_library", "no-such-library")])  # fmt: skip
def test_a_library_or_item_that_does_not_exist_stops_the_plan_naming_it(site, info, setting, value):
    with pytest.raises(TerraformError, match=value):
        plan("linux-server", {}, deployment="lib-missing", settings=site.model_copy(update={setting: value}))
    assert not vm_names(info, "lib-missing")


def test_a_datastore_cluster_with_a_library_item_is_refused_at_plan_time(site, info):
    with pytest.raises(TerraformError, match=r"datastore_cluster[\s|]+cannot[\s|]+place"):
        plan("linux-server", {"datastore_cluster": "UmcPod"}, deployment="lib-pod", settings=site)
    assert not vm_names(info, "lib-pod")


def test_doctor_checks_the_library_and_its_item_instead_of_a_template_vm(info, library, tmp_path):
    library_site = {"UMC_VSPHERE_CONTENT_LIBRARY": LIBRARY, "UMC_VSPHERE_TEMPLATE": ITEM,
                    "UMC_VSPHERE_WINDOWS_TEMPLATE": None}  # fmt: skip
    code, checks, printed = doctor(info, tmp_path, **library_site)
    assert code == 0, printed
    assert checks["vcenter.content_library"]["status"] == "ok"
    assert checks["vcenter.template"]["detail"] == f"content library item {LIBRARY}/{ITEM} (ovf)"
    assert {name for name, c in checks.items() if c["status"] != "ok"} == {PER_DEPLOYMENT}

    code, checks, printed = doctor(info, tmp_path, **library_site | {"UMC_VSPHERE_TEMPLATE": "no-such-item"})
    assert code == 9, printed
    assert {name for name, c in checks.items() if c["status"] == "failed"} == {"vcenter.template"}
    assert "no item 'no-such-item'" in checks["vcenter.template"]["detail"]
    assert "UMC_VSPHERE_TEMPLATE" in checks["vcenter.template"]["fix"]

    code, checks, printed = doctor(info, tmp_path, **library_site | {"UMC_VSPHERE_CONTENT_LIBRARY": "No Such"})
    assert code == 9, printed
    assert {name for name, c in checks.items() if c["status"] == "failed"} == {"vcenter.content_library"}
    assert "no content library 'No Such'" in checks["vcenter.content_library"]["detail"]
    assert checks["vcenter.template"]["status"] == "skipped"
