"""The windows-server blueprint on the sandbox: validated (terraform validate, the playbook's syntax check), planned
with ``windows_options`` (computer name, workgroup or domain join, time zone; the passwords marked sensitive), and
its compute applied on the simulator and read back from vCenter, with no Windows secret left anywhere but the
deployment's Terraform state, and not even there once it is destroyed.

WinRM/SSH to a Windows guest cannot run here: the sandbox has no Windows guests. The apply uses ``windows-compute``,
windows-server as written less its playbooks (a child blueprint cannot drop its parent's playbooks), so what runs is
the blueprint's own params, secrets and module inputs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ShowingTools, only_this_modules_vms, read_secret, vm_names
from tests.leaks import ArgvWatch, leaks, sandbox_secrets, scanned_places
from umc_infra import ParamsError, Provisioner, RunOptions, UmcInfraError, destroy, plan
from umc_infra.ansible import runner as ansible_runner
from umc_infra.sandbox import _s3, _vcsim

ROOT = Path(__file__).resolve().parents[2]
POOL = "127.0.1.220-127.0.1.224"
PREFIX = "win-"


@pytest.fixture(scope="module")
def site(info, tmp_path_factory):
    with only_this_modules_vms(info, PREFIX):
        yield info.settings(state_dir=tmp_path_factory.mktemp("state"), ip_pool=POOL)


@pytest.fixture(scope="module")
def compute(tmp_path_factory) -> Path:
    """A blueprint source with ``windows-compute``: windows-server less its playbooks and Ansible settings."""
    root = tmp_path_factory.mktemp("win-blueprints")
    (root / "blueprints").mkdir()
    spec = yaml.safe_load((ROOT / "blueprints" / "windows-server.yaml").read_text())
    spec.update(name="windows-compute", description="windows-server without its playbooks (WinRM/SSH cannot run here)")
    del spec["playbooks"], spec["ansible"]
    del spec["secrets"]["ssh_private_key"]  # the Ansible key is used by the playbooks only
    (root / "blueprints" / "windows-compute.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def windows_secrets(info) -> dict[str, str]:
    return read_secret(info, info.inventory.vault_windows_path)


def test_windows_server_validates_terraform_and_the_playbook(info, tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)} | info.environment()
    done = subprocess.run([str(Path(sys.executable).parent / "umc-infra"), "blueprints", "validate",
                           str(ROOT / "blueprints" / "windows-server.yaml")], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 module(s), 1 playbook(s): ok" in done.stdout + done.stderr
    assert ansible_runner.syntax_check(ROOT / "playbooks" / "windows.yml") == []


def test_without_the_windows_collections_validate_names_what_to_install(monkeypatch):
    plain = ansible_runner.base_env

    def without_collections(*, home: Path) -> dict[str, str]:  # as if only ansible-core were installed
        return plain(home=home) | {"ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "False", "ANSIBLE_COLLECTIONS_PATH": str(home)}

    monkeypatch.setattr(ansible_runner, "base_env", without_collections)
    ((file, line, message),) = ansible_runner.syntax_check(ROOT / "playbooks" / "windows.yml")
    assert file.endswith("roles/windows/tasks/main.yml") and line is not None
    assert "ansible.windows" in message and "pip install 'umc-infra[windows]'" in message


def test_the_plan_carries_windows_options_and_never_shows_the_passwords(site, info, caplog):
    caplog.set_level(logging.DEBUG)
    tools, events = ShowingTools(), []
    found = Provisioner(settings=site, tools=tools, on_event=events.append).plan(
        "windows-server", {"computer_name": "umc-app", "instances": 2, "domain": "ad.sandbox.umc.local",
                           "time_zone": "GMT Standard Time"}, deployment="win-plan")  # fmt: skip
    assert [r.action for r in found.resources] == ["create", "create"]
    (change,) = {id(s): s for s in tools.shown if s.get("resource_changes")}.values()
    vms = [c["change"] for c in change["resource_changes"] if c["type"] == "vsphere_virtual_machine"]
    customize = [vm["after"]["clone"][0]["customize"][0] for vm in vms]
    assert [c["linux_options"] for c in customize] == [[], []]
    options = [c["windows_options"][0] for c in customize]
    assert [o["computer_name"] for o in options] == ["umc-app-1", "umc-app-2"]
    assert {(o["join_domain"], o["workgroup"], o["time_zone"]) for o in options} == {("ad.sandbox.umc.local", None, 85)}
    secret = windows_secrets(info)
    assert {(o["admin_password"], o["domain_admin_password"], o["domain_admin_user"]) for o in options} == {
        (secret["admin_password"], secret["join_password"], secret["join_user"])}  # fmt: skip
    marks = [vm["after_sensitive"]["clone"][0]["customize"][0]["windows_options"][0] for vm in vms]
    for mark in marks:  # marked sensitive: Terraform and the library show them as (sensitive) / ***
        assert mark["admin_password"] is True and mark["domain_admin_password"] is True
        assert mark["domain_admin_user"] is True
    assert vms[0]["after"]["guest_id"] == info.inventory.windows_template_guest_id
    texts = [json.dumps([e.model_dump(mode="json") for e in events]), caplog.text, found.model_dump_json(),
             repr(found)]  # fmt: skip
    assert leaks([secret["admin_password"], secret["join_password"]], *texts) == []


def test_workgroup_without_a_domain_leaves_the_join_credential_out(site):
    tools = ShowingTools()
    Provisioner(settings=site, tools=tools).plan(
        "windows-server", {"computer_name": "umcfs", "workgroup": "UMC-LAB"}, deployment="win-plan-wg"
    )
    (change,) = {id(s): s for s in tools.shown if s.get("resource_changes")}.values()
    (vm,) = [c["change"] for c in change["resource_changes"] if c["type"] == "vsphere_virtual_machine"]
    options = vm["after"]["clone"][0]["customize"][0]["windows_options"][0]
    assert (options["computer_name"], options["workgroup"], options["time_zone"]) == ("umcfs-1", "UMC-LAB", 110)
    assert options["join_domain"] is None and options["domain_admin_password"] is None
    assert options["domain_admin_user"] is None


def vcenter_vm(info, name: str) -> dict[str, Any] | None:
    with _vcsim.connect(info) as si:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath(
            f"{info.inventory.datacenter}/vm/{info.inventory.vm_folder}/{name}"
        )
        if vm is None:
            return None
        return {"guest_id": vm.config.guestId, "cpu": vm.config.hardware.numCPU,
                "memory_mb": vm.config.hardware.memoryMB, "host_name": vm.guest.hostName,
                "ip": vm.guest.ipAddress, "notes": vm.config.annotation}  # fmt: skip


def stored_documents(info, deployment: str) -> dict[str, str]:
    s3, _ = _s3.clients(info.s3_endpoint, info.inventory.region)
    bucket = info.inventory.state_bucket
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in keys
            if deployment in k.split("/")}  # fmt: skip


def test_windows_compute_applies_on_the_simulator_and_its_secrets_stay_in_the_state_only(
    sandbox, site, info, compute, caplog
):
    started = time.time()
    everything = sandbox_secrets(sandbox, info)
    secret = windows_secrets(info)
    windows = [secret["admin_password"], secret["join_password"]]
    assert set(windows) <= set(everything)  # the suites' scans look for them too
    settings = site.model_copy(update={"blueprint_path": [compute]})
    d = "win-compute"
    events: list[Any] = []
    caplog.set_level(logging.DEBUG)
    params = {"computer_name": "umc-win", "cpu": 4, "memory_mb": 8192, "domain": "ad.sandbox.umc.local",
              "notes": "Windows file server\nticket 42"}  # fmt: skip
    try:
        with ArgvWatch(everything) as watch:
            made = Provisioner(settings=settings, on_event=events.append).provision("windows-compute", params,
                                                                                    deployment=d)  # fmt: skip
        (host,) = made.hosts
        assert host.name == "win-compute-1" and host.groups == ("windows",)
        assert made.ansible == {}
        shown = vcenter_vm(info, host.name)
        assert shown is not None
        # vcsim 0.24.2 applies a sysprep identity's computer name to guest.hostName, and the fixed IP; it ignores
        # the rest (workgroup, domain, time zone, passwords)
        assert shown == {"guest_id": info.inventory.windows_template_guest_id, "cpu": 4, "memory_mb": 8192,
                         "host_name": "umc-win-1", "ip": host.ip, "notes": params["notes"]}  # fmt: skip

        assert watch.found == {}, watch.found
        texts = [json.dumps([e.model_dump(mode="json") for e in events]), caplog.text, made.model_dump_json(),
                 repr(made)]  # fmt: skip
        stored = stored_documents(info, d)
        places = (*scanned_places(settings.state_dir), sandbox.paths.state_dir)
        assert leaks(everything, *texts, directories=places, since=started) == []
        # sysprep needs the passwords in the VM's customization spec: the provider keeps that in the Terraform
        # state (clear text inside, like every sensitive value), the one place they are
        state = {k: v for k, v in stored.items() if k.endswith(".tfstate")}
        assert state and leaks(everything, *(v for k, v in stored.items() if k not in state)) == []
        assert {s[:4] for s in windows} == {hit[:4] for hit in leaks(windows, *state.values())}
    finally:
        destroy(d, settings=settings, options=RunOptions(lock_timeout_s=60))
    assert vcenter_vm(info, "win-compute-1") is None
    assert leaks(everything, *stored_documents(info, d).values()) == []  # gone with the VM


HOSTILE = ["it's", 'say "hi"', "${var.windows_admin_password}", "%{ if true }x%{ endif }", "line\nbreak",
           "../../etc/passwd", "a; rm -rf /", "{{ lookup('pipe', 'id') }}", "x" * 300]  # fmt: skip


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("param", ["computer_name", "domain", "workgroup", "time_zone"])
def test_hostile_windows_params_are_refused_naming_the_field_before_anything_is_made(site, info, param, value):
    before = vm_names(info, PREFIX)
    given = {"computer_name": "umcwin"} | {param: value}
    with pytest.raises(ParamsError) as refused:
        plan("windows-server", given, deployment="win-hostile", settings=site)
    assert [p.field for p in refused.value.problems] == [f"params.{param}"]
    assert f"params.{param}" in str(refused.value)
    assert vm_names(info, PREFIX) == before


@pytest.mark.parametrize("name", ["umc-windows-01", "umc.win", "1umc", "umc_win", ""])
def test_a_computer_name_windows_refuses_is_refused_naming_the_param(site, name):
    with pytest.raises(ParamsError) as refused:
        plan("windows-server", {"computer_name": name}, deployment="win-names", settings=site)
    (problem,) = refused.value.problems
    assert problem.field == "params.computer_name" and "^[A-Za-z][A-Za-z0-9-]{0,11}$" in problem.allowed


def test_the_computer_name_is_required(site):
    with pytest.raises(ParamsError) as refused:
        plan("windows-server", {}, deployment="win-names", settings=site)
    assert [p.field for p in refused.value.problems] == ["params.computer_name"]


def test_the_module_refuses_a_windows_guest_on_the_linux_template(site, info):
    wrong = site.model_copy(update={"vsphere_windows_template": info.inventory.template_path})
    with pytest.raises(UmcInfraError, match="not a Windows one: name a Windows template"):
        plan("windows-server", {"computer_name": "umcwin"}, deployment="win-wrong", settings=wrong)
