"""provision() end to end on the sandbox: the real simulator, Vault, S3, Terraform, Ansible and guests."""

from __future__ import annotations

import html
import json
import logging
import os
import secrets
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from pyVmomi import vim

from tests.leaks import ArgvWatch, leaks, sandbox_secrets, scanned_places
from umc_infra import (
    BlueprintNotFound,
    ParamsError,
    Provisioner,
    SecretError,
    UmcInfraError,
    provision,
)
from umc_infra.process import add_argv_observer
from umc_infra.sandbox import _s3, _vcsim

PREFIX = "itest-"


def vms(info) -> dict[str, object]:
    """VMs in the sandbox's VM folder by name, with CPU, memory and guest IP."""
    with _vcsim.connect(info) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return {
                vm.name: (vm.config.hardware.numCPU, vm.config.hardware.memoryMB, vm.guest.ipAddress)
                for vm in view.view
                if not vm.config.template
            }
        finally:
            view.Destroy()


def made_since(info, before: set[str], *deployments: str) -> list[str]:
    """VMs of ``deployments`` that are new since ``before``: other test files make VMs of their own meanwhile."""
    return sorted(n for n in set(vms(info)) - before if any(n.startswith(f"{d}-") for d in deployments))


@pytest.fixture(scope="module")
def site(sandbox, info, tmp_path_factory):
    """Settings for the sandbox site, with a state directory of this test run."""
    # VMs of earlier runs on a sandbox that kept running would hold addresses this run's pool hands out.
    from .conftest import destroy_vm

    for name in vms(info):
        if name.startswith(PREFIX):
            destroy_vm(info, name)
    return info.settings(state_dir=tmp_path_factory.mktemp("state"))


def page(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}/", timeout=10) as response:
        return response.read().decode()


def test_web_server_two_instances_then_nothing_to_change(site, info):
    title = "{{ lookup('pipe', 'id') }} ${x} %{y}"
    events = []
    result = provision(
        "web-server",
        {"instances": 2, "cpu": 2, "memory_mb": 2048, "site_title": title},
        deployment="itest-web",
        settings=site,
        on_event=events.append,
    )
    assert [h.name for h in result.hosts] == ["itest-web-web-1", "itest-web-web-2"]
    assert result.terraform["web"].add == 2
    assert result.blueprint == "web-server" and result.version == "1.0.0"
    found = vms(info)
    for host in result.hosts:
        assert found[host.name] == (2, 2048, host.ip)
        body = page(host.ip)
        assert host.name in body and "itest-web" in body
        assert title in body or html.escape(title) in body  # shown verbatim, never templated
        assert "uid=0" not in body
    assert {e.kind for e in events} >= {"step_started", "step_finished", "resource", "task", "output"}
    assert result.outputs["ips"] == [h.ip for h in result.hosts]

    # state and allocations live in the S3 backend (the sandbox's settings choose it)
    s3, _ = _s3.clients(info.s3_endpoint, info.inventory.region)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=info.inventory.state_bucket)["Contents"]]
    assert "deployments/itest-web/web.tfstate" in keys
    assert {f"umc/ipam/{h.ip}" for h in result.hosts} <= set(keys)
    assert "umc/deployments/itest-web/record.json" in keys

    again = provision(
        "web-server",
        {"instances": 2, "cpu": 2, "memory_mb": 2048, "site_title": title},
        deployment="itest-web",
        settings=site,
    )
    assert again.terraform["web"].model_dump() == {"add": 0, "change": 0, "remove": 0}
    assert {p: r.changed for p, r in again.ansible.items()} == {"base": 0, "web": 0}
    assert not again.changed
    assert again.hosts == result.hosts and again.outputs == result.outputs


def stored_documents(info, deployment: str, ips: list[str]) -> list[str]:
    """Every document the S3 backend keeps for a deployment: its record, Terraform states, pinned host keys, and
    the address claims of ``ips``."""
    s3, _ = _s3.clients(info.s3_endpoint, info.inventory.region)
    bucket = info.inventory.state_bucket
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    wanted = [k for k in keys if deployment in k.split("/") or k in {f"umc/ipam/{ip}" for ip in ips}]
    assert any(k.endswith("record.json") for k in wanted), keys
    return [s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in wanted]


def test_app_stack_reaches_the_database_with_the_password_from_vault_and_leaks_it_nowhere(sandbox, site, info, caplog):
    started = time.time()
    # Its hex part is found however a format escapes the rest (tests.leaks), as are the sandbox's own secrets.
    canary = f"canary-{secrets.token_hex(12)}-'q\"$`\\"
    everything = [canary, *sandbox_secrets(sandbox, info)]
    sandbox.put_secret("apps/itest-app", {"db_password": canary})
    argvs: list[tuple[str, ...]] = []
    remove = add_argv_observer(argvs.append)
    events = []
    caplog.set_level(logging.DEBUG)
    try:
        with ArgvWatch(everything) as watch:
            result = Provisioner(settings=site, on_event=events.append).provision(
                "app-stack", {"web_instances": 1}, deployment="itest-app"
            )
    finally:
        remove()
    web = next(h for h in result.hosts if "web" in h.groups)
    db = next(h for h in result.hosts if "db" in h.groups)
    body = page(web.ip)
    assert "connected" in body.lower() and db.ip in body
    assert result.outputs["db_ip"] == db.ip

    # the canary and every sandbox secret, in any escaped form: not in the argv the choke point saw, nor in any
    # command line on the machine while the run went on (its ssh to the guests included), nor in events, log
    # records, the result, what the backend stores, or files the run could leave (the sandbox's own included)
    assert argvs, "the choke point saw no child process"
    assert leaks(everything, *(" ".join(argv) for argv in argvs)) == []
    assert watch.found == {}, watch.found
    texts = [json.dumps([e.model_dump(mode="json") for e in events]), caplog.text, result.model_dump_json(),
             repr(result), *stored_documents(info, "itest-app", [h.ip for h in result.hosts])]  # fmt: skip
    places = (*scanned_places(site.state_dir), sandbox.paths.state_dir)
    assert leaks(everything, *texts, directories=places, since=started) == []
    assert not list(Path("/dev/shm").glob(f"umc-run.{os.getpid()}.*"))  # the run's private directory is gone


HOSTILE = [
    "it's",
    'say "hi"',
    "${var.vsphere_password}",
    "%{ if true }x%{ endif }",
    "line\nbreak",
    "../../etc/passwd",
    "a; rm -rf /",
    "{{ lookup('pipe', 'id') }}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_are_refused_before_anything_is_created(site, info, value):
    before = set(vms(info))
    with pytest.raises(ParamsError) as by_deployment:
        provision("web-server", {"instances": 1}, deployment=value, settings=site)
    assert [p.field for p in by_deployment.value.problems] == ["deployment"]
    with pytest.raises(ParamsError) as by_param:
        provision("web-server", {"admin_user": value}, deployment="itest-hostile", settings=site)
    assert [p.field for p in by_param.value.problems] == ["params.admin_user"]
    assert "matching" in by_param.value.problems[0].allowed
    assert made_since(info, before, value, "itest-hostile") == []


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"instances": 0}, ["params.instances"]),
        ({"instances": "2"}, ["params.instances"]),
        ({"cpu": 99, "memory_mb": 1}, ["params.cpu", "params.memory_mb"]),
        ({"nope": 1}, ["params.nope"]),
        ({"ip_addresses": ["127.0.1.300"]}, ["params.ip_addresses.0"]),
        ({"site_title": "two\nlines"}, ["params.site_title"]),
    ],
)
def test_wrong_params_name_every_field(site, info, params, fields):
    before = set(vms(info))
    with pytest.raises(ParamsError) as error:
        provision("web-server", params, deployment="itest-bad", settings=site)
    assert sorted(p.field for p in error.value.problems) == sorted(fields)
    assert made_since(info, before, "itest-bad") == []


def test_unknown_blueprint(site):
    with pytest.raises(
        BlueprintNotFound, match="available: app-stack, lab-web, linux-server, web-ha, web-server, windows-server"
    ):
        provision("web-servr", {}, deployment="itest-x", settings=site)


def test_missing_secret_is_named_and_nothing_is_created(site, info):
    before = set(vms(info))
    with pytest.raises(SecretError) as error:
        provision("app-stack", {}, deployment="itest-nosecret", settings=site)
    assert error.value.reference == "kv/data/apps/itest-nosecret#db_password"
    assert "does not exist" in str(error.value)
    assert made_since(info, before, "itest-nosecret") == []


def test_denied_and_unreachable_vault_are_secret_errors(sandbox, site):
    from umc_infra.blueprint.model import SecretRef
    from umc_infra.secrets.vault import VaultSource

    sandbox.put_secret("elsewhere/thing", {"k": "v"})
    with pytest.raises(SecretError, match="denied reading kv/data/elsewhere/thing#k"):  # the read-only token
        VaultSource(site).read(SecretRef(mount="kv", path="elsewhere/thing", key="k"))
    unreachable = site.model_copy(update={"vault_addr": "http://127.0.0.1:9"})
    with pytest.raises(SecretError, match="unreachable"):
        provision("web-server", {}, deployment="itest-novault", settings=unreachable)


def test_site_setting_missing_is_named(site):
    with pytest.raises(UmcInfraError, match="UMC_VSPHERE_DATACENTER"):
        provision(
            "web-server", {}, deployment="itest-nosite", settings=site.model_copy(update={"vsphere_datacenter": None})
        )


def test_approle_and_jwt_logins_work_for_provisioning_secrets(sandbox, site, info):
    from umc_infra.blueprint.model import SecretRef
    from umc_infra.secrets.vault import VaultSource

    ref = SecretRef(mount="kv", path="umc/vsphere", key="user")
    approle = site.model_copy(update={"vault_token": None})
    assert VaultSource(approle).read(ref).get_secret_value() == info.vsphere_user
    jwt = site.model_copy(update={"vault_token": None, "vault_role_id": None, "vault_jwt": sandbox.ci_jwt()})
    assert VaultSource(jwt).read(ref).get_secret_value() == info.vsphere_user


def test_a_failed_play_names_hosts_and_leaves_no_private_dir(site):
    """Real ansible-playbook against an address where nothing listens: unreachable, typed, cleaned up."""
    from pydantic import SecretStr

    from umc_infra import PlaybookError
    from umc_infra.ansible.inventory import Host, Inventory
    from umc_infra.ansible.runner import Ansible
    from umc_infra.blueprint.content import Content
    from umc_infra.private import private_root
    from umc_infra.process import Redactor

    key = SecretStr("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-canary\n-----END OPENSSH PRIVATE KEY-----")
    playbooks = Content.locate().playbooks
    run_dir = Path(tempfile.mkdtemp(prefix="itest-run-", dir=private_root()))  # the run's, as the caller's
    ansible = Ansible(site, lambda name: playbooks / f"{name}.yml", on_event=lambda e: None, redactor=Redactor([key]),
                      deployment="itest-fail", private_dir=run_dir)  # fmt: skip
    inventory = Inventory(hosts=(Host(name="itest-gone-1", ip="127.0.1.253", groups=("web",), module="web"),))
    before = set(Path("/dev/shm").glob("umc-ansible-*"))
    try:
        with pytest.raises(PlaybookError) as error:
            ansible.run(
                "base",
                inventory=inventory,
                hosts="all",
                user="root",
                ssh_key=key,
                variables={"umc_deployment": "itest-fail", "umc_admin_ssh_key": "ssh-ed25519 AAAA x"},
            )
        assert error.value.playbook == "base"
        assert [host for host, _, _ in error.value.failures] == ["itest-gone-1"]
        assert "itest-gone-1" in str(error.value)
        assert "not-a-real-key-canary" not in str(error.value)
        assert list(run_dir.iterdir()) == []  # the playbook's private dir is gone with its key
        assert set(Path("/dev/shm").glob("umc-ansible-*")) == before
    finally:
        run_dir.rmdir()


def test_an_old_terraform_is_refused(site, tmp_path):
    from umc_infra import TerraformError
    from umc_infra.process import Redactor
    from umc_infra.terraform.runner import Terraform

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fake = tmp_path / "terraform"
    fake.write_text('#!/bin/sh\necho \'{"terraform_version": "0.14.11"}\'\n')
    fake.chmod(0o755)
    terraform = Terraform(
        site.model_copy(update={"terraform_binary": str(fake)}),
        on_event=lambda e: None,
        redactor=Redactor(),
        deployment="itest-old",
        private_dir=run_dir,
    )
    with pytest.raises(UmcInfraError, match=r"Terraform 0\.14\.11 is too old"):
        terraform.check_version()
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'crashed' >&2\nexit 3\n")
    broken.chmod(0o755)
    terraform = Terraform(
        site.model_copy(update={"terraform_binary": str(broken)}),
        on_event=lambda e: None,
        redactor=Redactor(),
        deployment="itest-old",
        private_dir=run_dir,
    )
    with pytest.raises(TerraformError, match="crashed") as error:
        terraform.check_version()
    assert error.value.returncode == 3


def test_a_provider_address_this_terraform_cannot_override_is_refused_before_anything_is_made(site, info):
    from umc_infra import SettingsError

    moved = site.model_copy(update={"vsphere_provider_source": "vmware/vsphere"})
    with pytest.raises(SettingsError, match="UMC_VSPHERE_PROVIDER_SOURCE") as refused:
        provision("linux-server", {"instances": 1}, deployment="itest-provider", settings=moved)
    assert "this Terraform is 1.0.3" in str(refused.value) and "needs Terraform 1.6" in str(refused.value)
    assert not [name for name in vms(info) if name.startswith("itest-provider")]
