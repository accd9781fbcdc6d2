"""Terraform argv builders and configuration: pure functions, table-driven."""

import json
from pathlib import Path

import pytest

from umc_infra import SettingsError, UmcInfraError
from umc_infra.settings import Settings
from umc_infra.terraform.argv import (
    _argv,
    argv_apply,
    argv_apply_plan,
    argv_force_unlock,
    argv_init,
    argv_init_offline,
    argv_output,
    argv_plan,
    argv_show,
    argv_state_push,
    argv_validate,
    argv_version,
)
from umc_infra.terraform.backend import backend
from umc_infra.terraform.mirror import (
    assemble_mirror,
    cli_config,
    installed_providers,
    provider_override,
    write_cli_config,
)

TF = "/opt/terraform"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (argv_init(TF, {}), [TF, "init", "-input=false", "-no-color", "-reconfigure"]),
        (
            argv_init(TF, {"path": "/s/web.tfstate"}),
            [TF, "init", "-input=false", "-no-color", "-reconfigure", "-backend-config=path=/s/web.tfstate"],
        ),
        (argv_apply(TF), [TF, "apply", "-input=false", "-no-color", "-auto-approve", "-json", "-lock-timeout=30s"]),
        (
            argv_apply(TF, destroy=True),
            [TF, "apply", "-input=false", "-no-color", "-auto-approve", "-json", "-destroy", "-lock-timeout=30s"],
        ),
        (
            argv_apply_plan(TF, Path("/shm/p")),
            [TF, "apply", "-input=false", "-no-color", "-json", "-lock-timeout=30s", "/shm/p"],
        ),
        (argv_show(TF), [TF, "show", "-no-color", "-json"]),
        (argv_show(TF, Path("/shm/p")), [TF, "show", "-no-color", "-json", "/shm/p"]),
        (argv_force_unlock(TF, "1b2c-lock"), [TF, "force-unlock", "-force", "1b2c-lock"]),
        (argv_state_push(TF, Path("errored.tfstate")), [TF, "state", "push", "-lock-timeout=30s", "errored.tfstate"]),
        (argv_output(TF), [TF, "output", "-no-color", "-json"]),
        (argv_version(TF), [TF, "version", "-json"]),
        (
            argv_plan(TF, Path("/shm/p")),
            [TF, "plan", "-input=false", "-no-color", "-detailed-exitcode", "-out=/shm/p", "-lock-timeout=30s"],
        ),
        (argv_init_offline(TF), [TF, "init", "-input=false", "-no-color", "-backend=false"]),
        (argv_validate(TF), [TF, "validate", "-no-color", "-json"]),
    ],
)
def test_argv(argv, expected):
    assert argv == expected


def test_no_force_flag_and_no_vars_in_argv():
    for argv in (argv_apply(TF), argv_apply(TF, destroy=True)):
        assert "-force" not in argv
        assert not any(a.startswith("-var") for a in argv)


def test_a_map_never_becomes_a_temp_var_file():
    with pytest.raises(UmcInfraError, match="never argv"):
        _argv(TF, "apply", var={"password": "x"})


def test_local_backend_keeps_state_under_the_state_dir(tmp_path):
    block, config = backend(Settings(state_dir=tmp_path), deployment="team-x", module="web")
    assert block == {"terraform": {"backend": {"local": {}}}}
    assert config == {"path": str(tmp_path / "state" / "terraform" / "team-x" / "web.tfstate")}


S3_SITE = {"backend": "s3", "state_bucket": "umc-state", "lock_table": "umc-locks", "s3_region": "eu-west-1"}


def test_s3_backend_before_terraform_1_6_with_locking_and_a_custom_endpoint():
    settings = Settings(**S3_SITE, s3_endpoint="http://127.0.0.1:18555")
    block, config = backend(settings, deployment="team-x", module="web", version=(1, 0, 3))
    assert block == {"terraform": {"backend": {"s3": {}}}}
    assert config["key"] == "deployments/team-x/web.tfstate"
    assert config["dynamodb_table"] == "umc-locks"
    assert config["encrypt"] == "true"
    assert config["force_path_style"] == "true"
    assert config["endpoint"] == config["dynamodb_endpoint"] == "http://127.0.0.1:18555"
    assert "skip_requesting_account_id" not in config and "use_path_style" not in config  # unknown before 1.6


@pytest.mark.parametrize("version", [(1, 6, 0), (1, 11, 4), (2, 0, 0)])
def test_s3_backend_from_terraform_1_6_names_every_endpoint_and_asks_no_account(version):
    settings = Settings(**S3_SITE, s3_endpoint="http://127.0.0.1:18555")
    block, config = backend(settings, deployment="team-x", module="web", version=version)
    endpoints = block["terraform"]["backend"]["s3"]["endpoints"]
    assert endpoints == dict.fromkeys(("s3", "dynamodb", "iam", "sts"), "http://127.0.0.1:18555")
    assert config["use_path_style"] == config["skip_requesting_account_id"] == config["skip_metadata_api_check"]
    assert config["use_path_style"] == "true"
    assert not {"endpoint", "dynamodb_endpoint", "force_path_style"} & set(config)  # deprecated in 1.6


def test_s3_backend_on_aws_itself_sets_no_endpoint():
    block, config = backend(Settings(**S3_SITE), deployment="team-x", module="web", version=(1, 11, 4))
    assert block == {"terraform": {"backend": {"s3": {}}}}
    assert not {"endpoint", "use_path_style", "skip_requesting_account_id"} & set(config)


def test_cli_config_quotes_paths():
    text = cli_config(Path("/cache"), mirror=Path('/odd "dir"/mirror'))
    assert json.dumps('/odd "dir"/mirror') in text
    assert 'plugin_cache_dir = "/cache"' in text
    assert "direct" not in text and "network_mirror" not in text  # providers only from the mirror


def test_cli_config_for_a_network_mirror_and_for_the_registry():
    assert 'network_mirror {\n    url = "https://tf.example.org/providers/"' in cli_config(
        Path("/cache"), network_mirror="https://tf.example.org/providers/"
    )
    direct = cli_config(Path("/cache"))
    assert "direct {}" in direct and "mirror" not in direct


@pytest.mark.parametrize(
    ("installation", "says"),
    [("mirror", "filesystem_mirror"), ("network_mirror", "network_mirror"), ("registry", "direct {}")],
)
def test_the_settings_choose_where_providers_come_from_one_config_file_each(tmp_path, installation, says):
    settings = Settings(plugin_cache_dir=tmp_path / "cache", provider_installation=installation,
                        provider_network_mirror="https://tf.example.org/providers/",
                        provider_mirror=tmp_path / "m")  # fmt: skip
    path = write_cli_config(settings)
    assert says in path.read_text()
    others = {write_cli_config(settings.model_copy(update={"provider_installation": other}))
              for other in ("mirror", "network_mirror", "registry") if other != installation}  # fmt: skip
    assert path not in others and path.read_text().count("provider_installation") == 1  # never rewritten


def test_mirror_from_installed_provider_packages(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("terraform-provider-vsphere_v2.0.2_x5", "terraform-provider-null_v2.1.2_x4", "terraform-other"):
        (lib / name).write_text("#!/bin/true\n")
    providers = installed_providers([lib])
    assert set(providers) == {("vsphere", "2.0.2"), ("null", "2.1.2")}
    mirror = assemble_mirror(tmp_path / "mirror", providers)
    link = mirror / "registry.terraform.io/hashicorp/vsphere/2.0.2/linux_amd64/terraform-provider-vsphere_v2.0.2_x5"
    assert link.is_symlink() and link.resolve() == (lib / "terraform-provider-vsphere_v2.0.2_x5").resolve()
    assemble_mirror(tmp_path / "mirror", providers)  # a second time is fine
    assemble_mirror(tmp_path / "mirror", providers, {"vsphere": "vmware/vsphere"})
    assert (
        mirror / "registry.terraform.io/vmware/vsphere/2.0.2/linux_amd64/terraform-provider-vsphere_v2.0.2_x5"
    ).exists()
    assemble_mirror(tmp_path / "mirror", providers, {"vsphere": "tf.umc.local/platform/vsphere"})
    assert (mirror / "tf.umc.local/platform/vsphere/2.0.2/linux_amd64").is_dir()
    assert (mirror / "registry.terraform.io/hashicorp/null/2.1.2/linux_amd64").is_dir()


@pytest.mark.parametrize(
    ("source", "override"),
    [("hashicorp/vsphere", None),
     ("vmware/vsphere", {"terraform": {"required_providers": {"vsphere": {"source": "vmware/vsphere",
                                                                          "version": "2.0.2"}}}})],
)  # fmt: skip
def test_a_module_is_pointed_at_the_sites_provider_address_keeping_its_version(source, override):
    from umc_infra.blueprint.content import Content, module_interface

    required = module_interface(Content.locate().modules / "vsphere-vm").providers
    modern = {"version": lambda: (1, 11, 4)}
    assert provider_override(required, Settings(vsphere_provider_source=source), **modern) == override
    assert provider_override({}, Settings(vsphere_provider_source="vmware/vsphere"), **modern) is None  # no vsphere


def test_a_terraform_that_cannot_override_a_provider_address_is_refused_naming_the_setting():
    from umc_infra.blueprint.content import Content, module_interface

    required = module_interface(Content.locate().modules / "vsphere-vm").providers
    with pytest.raises(SettingsError) as refused:
        provider_override(required, Settings(vsphere_provider_source="vmware/vsphere"), version=lambda: (1, 0, 3))
    (problem,) = refused.value.problems
    assert problem.field == "UMC_VSPHERE_PROVIDER_SOURCE" and "needs Terraform 1.6" in problem.message
    assert "1.0.3" in problem.message and "hashicorp/vsphere" in problem.allowed


def test_resource_changes_mask_sensitive_values_and_ignore_empty_noise():
    from umc_infra.terraform.plan import counts_of, resource_changes

    entries = [
        {"address": "vm[0]", "change": {
            "actions": ["update"],
            "before": {"memory": 2048, "tags": None, "clone": [{"customize": [{"admin": "old"}]}], "name": "a"},
            "after": {"memory": 4096, "tags": [], "clone": [{"customize": [{"admin": "new-secret"}]}], "name": "a"},
            "after_unknown": {}, "before_sensitive": {"clone": True}, "after_sensitive": {"clone": True},
        }},
        {"address": "vm[1]", "change": {"actions": ["delete", "create"], "before": {"id": "x"}, "after": {},
                                        "after_unknown": {"id": True}}},
        {"address": "vm[2]", "change": {"actions": ["no-op"], "before": {}, "after": {}}},
        {"address": "vm[3]", "change": {"actions": ["create"], "before": None, "after": {"name": "n"}}},
    ]  # fmt: skip
    changes = resource_changes("web", entries)
    assert [(c.address, c.action) for c in changes] == [("vm[0]", "update"), ("vm[1]", "replace"), ("vm[3]", "create")]
    first = changes[0].attributes
    assert set(first) == {"memory", "clone"}
    assert (first["memory"].before, first["memory"].after) == (2048, 4096)
    assert first["clone"].after == "***" and "new-secret" not in changes[0].model_dump_json()
    assert changes[1].attributes["id"].after == "(known after apply)"
    assert counts_of(changes).model_dump() == {"add": 2, "change": 1, "remove": 1}


def _change(before, after, *, unknown=False, sensitive=False, actions=("create",)):
    return {"actions": list(actions), "before": before, "after": after, "after_unknown": unknown,
            "before_sensitive": sensitive, "after_sensitive": sensitive}  # fmt: skip


# ``terraform show -json`` of a plan file, in the shape Terraform writes it (an unknown output has no "value").
SHOWN_PLAN = {
    "planned_values": {"outputs": {
        "known": {"sensitive": False, "value": "k"},
        "unknown": {"sensitive": False},
        "secret": {"sensitive": True, "value": "s3cr3t-value"},
        "partly": {"sensitive": False, "value": {"ids": ["a", "b"]}},
    }},
    "output_changes": {
        "known": _change(None, "k"),
        "unknown": _change(None, None, unknown=True),
        "secret": _change(None, "s3cr3t-value", sensitive=True),
        "partly": _change(None, {"ids": ["a", "b"]}, unknown={"ids": [False, True]}),
    },
    "resource_changes": [
        {"address": "vsphere_virtual_machine.vm[0]", "type": "vsphere_virtual_machine", "change": _change(
            None, {"name": "web-1", "folder": "/team-x/", "clone": [{"customize": [{"admin": "adm1n-pass"}]}]},
            unknown={"id": True}) | {"after_sensitive": {"clone": [{"customize": [{"admin": True}]}]}}},
        {"address": "null_resource.x", "type": "null_resource",
         "change": _change(None, {"triggers": {"a": "hello"}}, unknown={"id": True})},
    ],
    "resource_drift": [
        {"address": "vsphere_virtual_machine.old", "type": "vsphere_virtual_machine", "change": _change(
            {"name": "old", "tags": ["tag-before"]}, {"name": "old", "tags": ["tag-after"]},
            unknown={}, sensitive={"tags": True}, actions=("update",))},
    ],
}  # fmt: skip


def test_a_plan_holds_its_changes_new_vms_and_the_outputs_it_already_knows():
    from umc_infra.terraform.plan import plan_of

    plan = plan_of("web", SHOWN_PLAN)
    assert [(r.address, r.action) for r in plan.resources] == [
        ("vsphere_virtual_machine.vm[0]", "create"), ("null_resource.x", "create")]  # fmt: skip
    assert plan.new_vms == ("team-x/web-1",)
    assert plan.outputs["known"] == "k" and set(plan.outputs) == {"known", "secret"}  # unknown, even in part: out
    assert plan.outputs["secret"].get_secret_value() == "s3cr3t-value" and "s3cr3t" not in repr(plan)
    drift = plan_of("web", SHOWN_PLAN, refresh_only=True)
    assert [r.address for r in drift.resources] == ["vsphere_virtual_machine.old"] and drift.new_vms == ()
    assert drift.resources[0].attributes["tags"].after == "***"


def test_every_sensitive_value_of_a_plan_goes_to_the_redactor_and_nothing_else():
    from umc_infra.terraform.plan import sensitive_values

    found = sensitive_values(SHOWN_PLAN)
    # nested marks count (only the admin password of the clone block), and outputs count
    assert set(found) == {"adm1n-pass", "s3cr3t-value", "tag-before", "tag-after"}
    assert sensitive_values({}) == []


def test_the_vms_of_a_state_are_named_folder_slash_name():
    from umc_infra.terraform.plan import vms_in_state

    shown = {"values": {"root_module": {"resources": [
        {"type": "vsphere_virtual_machine", "values": {"name": "web-1", "folder": "team-x"}},
        {"type": "vsphere_virtual_machine", "values": {"name": "bare"}},
        {"type": "vsphere_folder", "values": {"name": "team-x"}},
    ]}}}  # fmt: skip
    assert vms_in_state(shown) == {"team-x/web-1", "bare"}
    assert vms_in_state({}) == set()


def test_a_module_working_directory_and_its_local_state_are_private_whatever_the_umask(tmp_path):
    import os
    import stat
    import sys

    from umc_infra.secrets.redact import Redactor
    from umc_infra.terraform.runner import Terraform

    source = tmp_path / "module"
    source.mkdir()
    (source / "main.tf").write_text('variable "cpu" {}\n')
    settings = Settings(backend="local", state_dir=tmp_path / "state-dir", terraform_binary=sys.executable)
    terraform = Terraform(settings, on_event=lambda event: None, redactor=Redactor(), deployment="team-x",
                          private_dir=tmp_path / "private")  # fmt: skip
    workdir = settings.state_dir / "work" / "team-x" / "web"
    old = os.umask(0)  # the most permissive umask: modes must not come from it
    try:
        terraform.prepare(source, workdir, module="web", inputs={"cpu": 2})
    finally:
        os.umask(old)
    assert json.loads((workdir / "umc.auto.tfvars.json").read_text()) == {"cpu": 2}
    state = settings.state_dir / "state" / "terraform" / "team-x"
    for path in (settings.state_dir, workdir.parent, workdir, state.parent, state):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


HOSTILE = ['a"b', '${file("/etc/passwd")}', "x\nprovider_installation { direct {} }", "../../etc", "https://m/ x/"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("field", "variable", "base"),
    [("provider_network_mirror", "UMC_PROVIDER_NETWORK_MIRROR", {"provider_installation": "network_mirror"}),
     ("vsphere_provider_source", "UMC_VSPHERE_PROVIDER_SOURCE", {}),
     ("provider_installation", "UMC_PROVIDER_INSTALLATION", {})],
)  # fmt: skip
def test_hostile_provider_settings_are_refused_naming_the_setting(monkeypatch, field, variable, base, value):
    """Values that would end up in the CLI config or an override file: never written, the setting named."""
    from umc_infra import load_settings

    for name, given in base.items():
        monkeypatch.setenv(f"UMC_{name.upper()}", given)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert [p.field for p in refused.value.problems] == [variable]


def test_a_modules_files_are_parsed_once_per_content(tmp_path, monkeypatch):
    """A run reads a module's interface several times: HCL is parsed again only when a file changed."""
    import hcl2

    from umc_infra.blueprint.content import module_interface

    parsed = []
    loads = hcl2.loads
    monkeypatch.setattr(hcl2, "loads", lambda text: parsed.append(text) or loads(text))
    (tmp_path / "main.tf").write_text('variable "a" {}\noutput "b" { value = 1 }\n')
    first, again = module_interface(tmp_path), module_interface(tmp_path)
    assert first == again and first.required == {"a"} and first.outputs == {"b"} and len(parsed) == 1
    (tmp_path / "main.tf").write_text('variable "a" {\n  default = 2\n}\n')
    changed = module_interface(tmp_path)
    assert changed.required == set() and changed.outputs == set() and len(parsed) == 2
    with pytest.raises(UmcInfraError, match=r"main\.tf: not valid HCL"):
        (tmp_path / "main.tf").write_text('variable "a" {\n')
        module_interface(tmp_path)
