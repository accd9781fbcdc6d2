"""Live choices from the sandbox's vCenter simulator: every kind read through umc_infra.vcenter.choices agrees with
an independent reading (pyvmomi walking the inventory one object at a time, the tagging REST API), the cache
answers without logging in again, and validation and the portal form use the names.

Read-only: the sandbox is shared, so this module creates and removes nothing in it.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vim

from umc_infra import ParamsError, Provisioner
from umc_infra.blueprint.catalog import Catalog
from umc_infra.params import form_schema, validate
from umc_infra.sandbox import Sandbox, SandboxInfo, _vcsim
from umc_infra.secrets.vault import VaultSource
from umc_infra.vcenter import ChoiceCache, choices, rest_session

KINDS = ("templates", "networks", "datastores", "datastore_clusters", "folders", "clusters", "hosts", "tags")


@pytest.fixture(scope="module")
def running(request) -> SandboxInfo:
    """The sandbox that runs (read only, never started or seeded again here); else the session's, brought up."""
    sandbox = Sandbox()
    if sandbox.status().healthy:
        return sandbox.info()
    return request.getfixturevalue("info")


class CountingSource:
    """Vault, counting the secrets read: each vCenter login reads the user and the password."""

    def __init__(self, settings: Any) -> None:
        self._vault = VaultSource(settings)
        self.reads = 0

    def read(self, ref: Any) -> Any:
        self.reads += 1
        return self._vault.read(ref)


def walk(entity: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every object below ``entity`` with its path, one property read at a time (no property collector)."""
    found = []
    for child in getattr(entity, "childEntity", []) or []:
        child_path = f"{path}/{child.name}".lstrip("/")
        found.append((child_path, child))
        if isinstance(child, vim.Folder | vim.StoragePod):
            found += walk(child, child_path)
    return found


def independent(info: SandboxInfo, settings: Any) -> dict[str, set[str]]:
    with _vcsim.connect(info) as si:
        dc = _vcsim._child(si.RetrieveContent().rootFolder, settings.vsphere_datacenter)
        vms = walk(dc.vmFolder)
        site_folder = next(obj for path, obj in vms if path == settings.vsphere_folder)
        stores = [obj for _, obj in walk(dc.datastoreFolder)]
        computes = [obj for _, obj in walk(dc.hostFolder)]
        found = {
            "templates": {p for p, o in vms if isinstance(o, vim.VirtualMachine) and o.config.template},
            "folders": {p for p, o in walk(site_folder) if isinstance(o, vim.Folder)},
            "networks": {n.name for n in dc.network},
            "datastores": {d.name for d in dc.datastore},
            "datastore_clusters": {s.name for s in stores if isinstance(s, vim.StoragePod)},
            "clusters": {c.name for c in computes if isinstance(c, vim.ClusterComputeResource)},
            "hosts": {h.name for c in computes for h in c.host},
        }
    with rest_session(settings, info.vsphere_user, info.vsphere_password, step="test") as call:
        # An empty list answers no value at all (a fresh simulator has no tags yet)
        listed = call("GET", "/cis/tagging/category") or []
        categories = {c: call("GET", f"/cis/tagging/category/id:{c}")["name"] for c in listed}
        tags = [call("GET", f"/cis/tagging/tag/id:{t}") for t in call("GET", "/cis/tagging/tag") or []]
        found["tags"] = {f"{categories[t['category_id']]}/{t['name']}" for t in tags}
    return found


def test_every_kind_agrees_with_an_independent_reading_of_the_simulator(running):
    settings = running.settings()
    live = choices(settings, VaultSource(settings), KINDS, cache=ChoiceCache())
    assert set(live) == set(KINDS)
    assert {kind: set(names) for kind, names in live.items()} == independent(running, settings)
    assert all(list(names) == sorted(names) for names in live.values())
    inventory = running.inventory  # what the sandbox seeds: each kind that has objects there is non-empty
    assert settings.vsphere_template in live["templates"] and inventory.network in live["networks"]
    assert inventory.datastore in live["datastores"] and inventory.host in live["hosts"]
    assert inventory.cluster in live["clusters"]


def test_folders_are_paths_under_the_site_folder_or_the_datacenter_vm_folder(running):
    settings = running.settings(vsphere_folder=None)
    folders = choices(settings, VaultSource(settings), ["folders"], cache=ChoiceCache())["folders"]
    inventory = running.inventory
    assert {inventory.vm_folder, inventory.template_folder} <= set(folders)
    under_site = choices(running.settings(), VaultSource(settings), ["folders"], cache=ChoiceCache())["folders"]
    assert set(under_site) == {f.removeprefix(f"{inventory.vm_folder}/") for f in folders
                               if f.startswith(f"{inventory.vm_folder}/")}  # fmt: skip


def test_a_cached_answer_needs_no_login_until_the_ttl_passes(running):
    settings, cache = running.settings(vcenter_choices_ttl_s=60), ChoiceCache()
    source = CountingSource(settings)
    first = choices(settings, source, ["networks", "hosts"], cache=cache)
    assert source.reads == 2  # one login: user and password
    assert choices(settings, source, ["hosts", "networks"], cache=cache) == first
    assert source.reads == 2  # from the cache
    choices(settings, source, ["tags"], cache=cache)
    assert source.reads == 4  # only the kind not cached is read
    fresh = running.settings(vcenter_choices_ttl_s=0)
    choices(fresh, source, ["networks"], cache=cache)
    assert source.reads == 6  # TTL 0: read every time


def test_validation_and_the_portal_form_use_the_live_names(running):
    settings = running.settings()
    live = choices(settings, VaultSource(settings), ["networks", "folders", "datastore_clusters"], cache=ChoiceCache())
    linux = Catalog.from_settings(settings).load("linux-server")
    network = running.inventory.network
    validate(linux, {"extra_networks": [network]}, "choices-check", choices=live)
    with pytest.raises(ParamsError) as refused:
        validate(linux, {"extra_networks": ["No Such Network"]}, "choices-check", choices=live)
    [problem] = refused.value.problems
    assert problem.field == "params.extra_networks" and repr(network) in problem.allowed
    assert Provisioner(settings=settings).choices("linux-server") == live  # what the blueprint declares
    form = form_schema(linux, choices=live)["properties"]["params"]["properties"]
    assert network in form["extra_networks"]["items"]["enum"]
    assert "" in form["datastore_cluster"]["enum"]  # the default (the site's datastore) stays possible
