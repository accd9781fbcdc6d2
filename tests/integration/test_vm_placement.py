"""Placement and metadata params of modules/vsphere-vm on the simulator's cluster: a department folder, a folder
per deployment, a named resource pool, a DRS anti-affinity rule for an HA pair, and custom attributes (through a
team blueprint that extends linux-server); read back from vCenter, then removed with the deployment."""

from __future__ import annotations

import uuid
import warnings

import pytest
import requests
import yaml
from pyVim.task import WaitForTask
from pyVmomi import vim

from umc_infra import ParamsError, Provisioner, RunOptions, TerraformError, destroy, plan, provision
from umc_infra.sandbox import _vcsim

from .conftest import ShowingTools, vm_names

CLUSTER = "DC0_C0"
DEPARTMENT = "radiology"
POOL = "gold"
ATTRIBUTE = "umc.team"
POD = "UmcPod"
POLICY = "vSAN Default Storage Policy"  # one of the simulator's built-in storage policies


def _child(parent, name):
    return next((e for e in parent.childEntity if e.name == name), None)


@pytest.fixture(scope="module")
def site_objects(info):
    """What a site's platform team makes once: a department folder, a resource pool, a custom attribute."""
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        dc = _child(content.rootFolder, info.inventory.datacenter)
        umc = _child(dc.vmFolder, info.inventory.vm_folder)
        if _child(umc, DEPARTMENT) is None:
            umc.CreateFolder(DEPARTMENT)
        cluster = _child(dc.hostFolder, CLUSTER)
        if not any(p.name == POOL for p in cluster.resourcePool.resourcePool):
            allocation = vim.ResourceAllocationInfo(reservation=0, limit=-1, expandableReservation=True,
                                                    shares=vim.SharesInfo(level="normal", shares=0))  # fmt: skip
            spec = vim.ResourceConfigSpec(cpuAllocation=allocation, memoryAllocation=allocation)
            cluster.resourcePool.CreateResourcePool(POOL, spec)
        if not any(isinstance(e, vim.StoragePod) and e.name == POD for e in dc.datastoreFolder.childEntity):
            host = _child(dc.hostFolder, info.inventory.host).host[0]
            backing = info.state_dir / "vcsim" / "pod-datastore"  # the simulator's datastores are directories
            backing.mkdir(parents=True, exist_ok=True)
            datastore = host.configManager.datastoreSystem.CreateLocalDatastore(name=f"{POD}DS_0", path=str(backing))
            WaitForTask(dc.datastoreFolder.CreateStoragePod(name=POD).MoveIntoFolder_Task([datastore]))
        fields = content.customFieldsManager
        if not any(f.name == ATTRIBUTE for f in fields.field or []):
            fields.AddCustomFieldDef(name=ATTRIBUTE, moType=vim.VirtualMachine)
    return info


@pytest.fixture
def site(site_objects, tmp_path):
    return site_objects.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.245-127.0.1.249",
                                 vsphere_cluster=CLUSTER, vsphere_host="")  # fmt: skip


@pytest.fixture
def team(tmp_path):
    """A team's blueprint: linux-server with the team's custom attribute on every VM."""
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "team-linux.yaml").write_text(yaml.safe_dump({
        "name": "team-linux", "version": "1.0.0", "description": "linux-server for the genomics team",
        "extends": "linux-server",
        "modules": {"vm": {"inputs": {"custom_attributes": {"value": {ATTRIBUTE: "genomics"}}}}},
    }))  # fmt: skip
    return tmp_path / "team"


def placed(info, name: str) -> dict:
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vm = next(v for v in view.view if v.name == name)
        path, parent = [], vm.parent
        while parent.name != "vm":
            path.insert(0, parent.name)
            parent = parent.parent
        names = {f.key: f.name for f in content.customFieldsManager.field}
        cluster = _child(_child(content.rootFolder, info.inventory.datacenter).hostFolder, CLUSTER)
        rules = [(r.name, sorted(v.name for v in r.vm)) for r in cluster.configurationEx.rule
                 if isinstance(r, vim.cluster.AntiAffinityRuleSpec)]  # fmt: skip
        return {"folder": "/".join(path), "pool": vm.resourcePool.name,
                "attributes": {names[v.key]: v.value for v in vm.customValue}, "rules": rules}  # fmt: skip


def test_department_folder_own_folder_pool_spread_and_attributes_reach_vcenter(site, team, info):
    d = "place-ha"
    params = {"instances": 2, "department": DEPARTMENT, "own_folder": True, "resource_pool": POOL,
              "anti_affinity": True}  # fmt: skip
    made = provision("team-linux", params, deployment=d, settings=site.model_copy(update={"blueprint_path": [team]}))
    first, second = (placed(info, h.name) for h in made.hosts)
    assert first["folder"] == second["folder"] == f"{info.inventory.vm_folder}/{DEPARTMENT}/{d}"
    assert first["pool"] == POOL
    assert first["attributes"] == {ATTRIBUTE: "genomics"}
    assert (f"{d}-spread", sorted(h.name for h in made.hosts)) in first["rules"]

    destroy(d, settings=site, options=RunOptions(lock_timeout_s=30))
    assert not vm_names(info, d)
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        department = _child(_child(_child(content.rootFolder, info.inventory.datacenter).vmFolder,
                                   info.inventory.vm_folder), DEPARTMENT)  # fmt: skip
        assert _child(department, d) is None  # the deployment's own folder went with it; the department's stays
        cluster = _child(_child(content.rootFolder, info.inventory.datacenter).hostFolder, CLUSTER)
        assert not [r for r in cluster.configurationEx.rule if r.name == f"{d}-spread"]


def test_a_department_folder_that_does_not_exist_stops_the_plan_naming_it(site, info):
    with pytest.raises(TerraformError, match="no-such-dept"):
        provision("linux-server", {"department": "no-such-dept"}, deployment="place-nodept", settings=site)
    assert not vm_names(info, "place-nodept")


def test_anti_affinity_on_a_standalone_host_is_refused_naming_both(site, info):
    on_host = site.model_copy(update={"vsphere_cluster": "", "vsphere_host": info.inventory.host})
    with pytest.raises(TerraformError, match=r"anti_affinity needs a[\s|]+cluster"):
        provision("linux-server", {"instances": 2, "anti_affinity": True}, deployment="place-host", settings=on_host)
    assert not vm_names(info, "place-host")


@pytest.mark.parametrize("field", ["department", "resource_pool"])
@pytest.mark.parametrize("value", ["../etc", "a\nb", '"; x', "${var.vsphere_password}", " lead", "a/../b"])
def test_hostile_placement_names_are_refused_naming_the_field(site, info, field, value):
    with pytest.raises(ParamsError) as refused:
        provision("linux-server", {field: value}, deployment="place-bad", settings=site)
    assert [p.field for p in refused.value.problems] == [f"params.{field}"]


def test_the_web_ha_blueprint_plans_two_servers_and_their_spread_rule(site):
    planned = plan("web-ha", {}, deployment="place-webha", settings=site)
    assert (planned.counts["web"].add, planned.counts["web"].change) == (3, 0)  # 2 VMs and the rule
    with pytest.raises(ParamsError, match=r"params\.instances"):
        plan("web-ha", {"instances": 1}, deployment="place-webha", settings=site)


def attached_tags(info, vm_name: str) -> set[str]:
    """``Category/Name`` of the tags on a VM, read through vCenter's tagging API."""
    with _vcsim.connect(info) as si:
        view = si.RetrieveContent().viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        moid = next(v for v in view.view if v.name == vm_name)._moId
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=False; the simulator's certificate is Go's
    http.verify = False
    base = f"https://{info.vsphere_server}/rest/com/vmware/cis"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auth = (info.vsphere_user, info.vsphere_password.get_secret_value())
        http.headers["vmware-api-session-id"] = http.post(f"{base}/session", auth=auth).json()["value"]
        ids = http.post(f"{base}/tagging/tag-association?~action=list-attached-tags",
                        json={"object_id": {"id": moid, "type": "VirtualMachine"}}).json()["value"]  # fmt: skip
        names = set()
        for ident in ids:
            tag = http.get(f"{base}/tagging/tag/id:{ident}").json()["value"]
            category = http.get(f"{base}/tagging/category/id:{tag['category_id']}").json()["value"]
            names.add(f"{category['name']}/{tag['name']}")
    return names


def test_tags_by_category_and_name_are_made_when_missing_and_reused(info, tmp_path):
    site = info.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.245-127.0.1.249")
    run = uuid.uuid4().hex[:6]
    tags = [f"umc-backup-{run}/daily", f"umc-owner-{run}/team x"]
    lines: list[str] = []

    def seen(event):
        if getattr(event, "step", "") == "vcenter.tags" and event.kind == "output":
            lines.append(event.line)

    made = provision("linux-server", {"tags": tags}, deployment="place-tag-a", settings=site, on_event=seen)
    (host,) = made.hosts
    assert attached_tags(info, host.name) == set(tags)
    assert sorted(lines) == sorted([f"made vCenter tag umc-backup-{run}/", f"made vCenter tag umc-owner-{run}/",
                                    *(f"made vCenter tag {t}" for t in tags)])  # fmt: skip

    lines.clear()  # another deployment's plan with one tag more: only that one is made, the others are reused
    more = [*tags, f"umc-backup-{run}/weekly"]
    planned = plan("linux-server", {"tags": more}, deployment="place-tag-b", settings=site, on_event=seen)
    assert lines == [f"made vCenter tag umc-backup-{run}/weekly"]
    assert planned.counts["vm"].add == 1

    destroy("place-tag-a", settings=site, options=RunOptions(lock_timeout_s=30))
    assert not vm_names(info, "place-tag-a")


@pytest.mark.parametrize("tag", ["a/b/c", "../x", "x\n/y", "x/y\n", "${var.vsphere_password}/y", 'x"/y', "/y", "x/"])
def test_hostile_tags_are_refused_naming_the_item(info, tmp_path, tag):
    site = info.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.245-127.0.1.249")
    with pytest.raises(ParamsError) as refused:
        provision("linux-server", {"tags": ["ok/fine", tag]}, deployment="place-bad", settings=site)
    assert [p.field for p in refused.value.problems] == ["params.tags.1"]


def test_a_datastore_cluster_and_a_storage_policy_are_planned_by_their_ids(site_objects, tmp_path):
    """Plan only: the simulator gives Storage DRS no clone placement and keeps no VM's storage policy."""
    site = site_objects.settings(state_dir=tmp_path / "state", backend="local", ip_pool="127.0.1.245-127.0.1.249")
    tools = ShowingTools()
    Provisioner(settings=site, tools=tools).plan("linux-server", {"datastore_cluster": POD, "storage_policy": POLICY,
                                                 "data_disks_gb": [1]}, deployment="place-storage")  # fmt: skip
    (shown,) = {id(s): s for s in tools.shown if s.get("resource_changes")}.values()
    (vm,) = [c["change"]["after"] for c in shown["resource_changes"] if c["type"] == "vsphere_virtual_machine"]
    lookups = {r["type"]: r["values"] for r in shown["prior_state"]["values"]["root_module"]["resources"]
               if r["mode"] == "data"}  # fmt: skip
    assert vm["datastore_cluster_id"] == lookups["vsphere_datastore_cluster"]["id"]
    assert not vm.get("datastore_id")  # Storage DRS picks it at the apply
    assert vm["storage_policy_id"] == lookups["vsphere_storage_policy"]["id"]
    assert [d["storage_policy_id"] for d in vm["disk"]] == [lookups["vsphere_storage_policy"]["id"]] * 2


@pytest.mark.parametrize(("field", "value"), [("datastore_cluster", "NoSuchPod"), ("storage_policy", "No such")])
def test_a_datastore_cluster_or_policy_that_does_not_exist_stops_the_plan_naming_it(site, info, field, value):
    with pytest.raises(TerraformError, match=value):
        plan("linux-server", {field: value}, deployment="place-nostore", settings=site)
    assert not vm_names(info, "place-nostore")
