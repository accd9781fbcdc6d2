"""Where blueprints come from (search path, installed packages), name clashes, and extends."""

import copy
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.unit.core.test_blueprint import BASE, MODULE
from umc_infra import BlueprintError, Settings
from umc_infra.blueprint.catalog import Catalog, Source, line_of
from umc_infra.run.hooks import HookContext, HookError, call

FIXTURES = Path(__file__).parents[2] / "fixtures"


def content_dir(root: Path, *blueprints: dict) -> Path:
    """A directory as UMC_BLUEPRINT_PATH names one: blueprints/, modules/, playbooks/."""
    (root / "blueprints").mkdir(parents=True)
    (root / "modules" / "mod").mkdir(parents=True)
    (root / "modules" / "mod" / "main.tf").write_text(MODULE)
    (root / "playbooks").mkdir()
    (root / "playbooks" / "play.yml").write_text("- hosts: all\n  tasks: []\n")
    for blueprint in blueprints:
        (root / "blueprints" / f"{blueprint['name']}.yaml").write_text(yaml.safe_dump(blueprint))
    return root


def test_the_search_path_and_installed_packages_are_sources(tmp_path):
    site = content_dir(tmp_path / "site", BASE)
    catalog = Catalog.from_settings(Settings(blueprint_path=[site]))
    assert [s.label for s in catalog.sources] == [
        "built-in", f"UMC_BLUEPRINT_PATH {site}", "package umc-lab-blueprints (entry point lab)",
    ]  # fmt: skip
    assert {"demo", "lab-web", "web-server"} <= set(catalog.names())
    demo = catalog.load("demo")
    assert demo.module_dir("mod") == site / "modules" / "mod"  # its own module, relative to itself
    assert demo.playbook_file("play") == site / "playbooks" / "play.yml"


def test_the_path_setting_reads_like_path(tmp_path, monkeypatch):
    monkeypatch.setenv("UMC_BLUEPRINT_PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert Settings().blueprint_path == [tmp_path / "a", tmp_path / "b"]


def test_a_name_two_sources_define_is_an_error_naming_both_unless_one_overrides(tmp_path):
    first = content_dir(tmp_path / "first", BASE)
    second = content_dir(tmp_path / "second", BASE | {"description": "the second"})
    catalog = Catalog.from_settings(Settings(blueprint_path=[first, second]))
    with pytest.raises(BlueprintError) as clash:
        catalog.load("demo")
    assert f"UMC_BLUEPRINT_PATH {first}" in str(clash.value) and f"UMC_BLUEPRINT_PATH {second}" in str(clash.value)
    assert "override: true" in str(clash.value)
    (second / "blueprints" / "demo.yaml").write_text(yaml.safe_dump(BASE | {"description": "the second",
                                                                              "override": True}))  # fmt: skip
    assert Catalog.from_settings(Settings(blueprint_path=[first, second])).load("demo").description == "the second"


def test_an_installed_package_extends_a_built_in_blueprint():
    lab = Catalog.from_settings(Settings()).load("lab-web")
    parent = Catalog.from_settings(Settings()).load("web-server")
    assert lab.extends == "web-server" and lab.version == "1.1.0"
    assert list(lab.modules) == ["web", "label"]  # the parent's first
    assert [p.playbook for p in lab.playbooks] == ["base", "web", "lab"]  # appended
    assert lab.params["instances"].max == 3 and lab.params["instances"].min == 1  # narrowed, the rest inherited
    assert lab.params["cpu"] == parent.params["cpu"]
    assert lab.params["team"].values == ["genomics", "imaging"]
    assert set(lab.outputs) == {"names", "ips", "label"}
    assert lab.module_dir("lab-label").parent.parent.name == "umc_lab_blueprints"  # its own, relative to itself
    assert lab.module_dir("vsphere-vm") == parent.module_dir("vsphere-vm")  # the parent's module, found in its source
    assert lab.playbook_file("lab").parent.parent.name == "umc_lab_blueprints"
    assert lab.playbook_file("web") == parent.playbook_file("web")
    assert [h.call for h in lab.hooks] == ["lab-cmdb"]


def test_narrowing_is_allowed_widening_is_not(tmp_path):
    child = {"name": "child", "version": "1.0.0", "description": "c", "extends": "demo"}
    cases = {
        "ok": ({"instances": {"min": 2, "max": 4, "default": 2}, "label": {"pattern": "^[a-z]+$"}}, []),
        "max": ({"instances": {"max": 9}}, ["params.instances.max"]),
        "min": ({"instances": {"min": 0}}, ["params.instances.min"]),
        "unset": ({"instances": {"max": None}}, ["params.instances.max"]),
        "type": ({"instances": {"type": "number"}}, ["params.instances.type"]),
        "default": ({"instances": {"max": 3, "default": 4}}, ["params.instances.default"]),
        "multiline": ({"label": {"multiline": True}}, ["params.label.multiline"]),
    }
    for name, (params, expected) in cases.items():
        root = content_dir(tmp_path / name, BASE, child | {"params": params})
        _, problems = Catalog.from_settings(Settings(content_dir=root)).resolve("child")
        assert [p.where for p in problems] == expected, name
        assert all(p.file == str(root / "blueprints" / "child.yaml") and p.line for p in problems), problems


def test_enum_values_and_patterns_only_narrow(tmp_path):
    parent = copy.deepcopy(BASE)  # its module inputs change below
    parent["params"]["tier"] = {"type": "enum", "values": ["a", "b"], "default": "a"}
    parent["modules"]["vm"]["inputs"]["name_prefix"] = {"format": "{deployment}-{label}-{tier}"}
    child = {"name": "child", "version": "1.0.0", "description": "c", "extends": "demo",
             "params": {"tier": {"values": ["a", "c"]}, "label": {"pattern": "^x$"}}}  # fmt: skip
    root = content_dir(tmp_path, parent, child)
    (root / "blueprints" / "demo.yaml").write_text(yaml.safe_dump(parent | {"params": parent["params"] | {
        "label": {"type": "string", "default": "x", "pattern": "^[a-z]$"}}}))  # fmt: skip
    _, problems = Catalog.from_settings(Settings(content_dir=root)).resolve("child")
    assert sorted(p.where for p in problems) == ["params.label.pattern", "params.tier.values"]


def test_line_of_finds_nested_keys_and_list_items():
    text = textwrap.dedent("""\
        name: x
        modules:
          vm:
            inputs:
              cpu: params.cpus
        playbooks:
          - playbook: a
          - playbook: b
            hosts: db
        """)
    assert line_of(text, "modules.vm.inputs.cpu") == (5, True)
    assert line_of(text, "playbooks[1].hosts") == (9, True)
    assert line_of(text, "modules.vm.inputs.nope") == (4, False)


def test_a_hook_stops_the_run_with_its_name_and_nothing_secret():
    context = HookContext(at="after_provision", action="provision", deployment="d", blueprint="lab-web",
                          version="1.1.0", params={"team": "imaging", "password": "***"}, addresses={}, outputs={},
                          hosts=())  # fmt: skip
    with pytest.raises(HookError, match="UMC_LAB_CMDB is not set") as stopped:
        call("lab-cmdb", context, redact=lambda text: text)
    assert stopped.value.step == "hook.after_provision.lab-cmdb"
    with pytest.raises(HookError, match="not installed"):
        call("no-such-hook", context, redact=lambda text: text)


def test_the_hook_records_hosts(tmp_path, monkeypatch):
    from umc_infra.ansible.inventory import Host

    monkeypatch.setenv("UMC_LAB_CMDB", str(tmp_path / "cmdb.jsonl"))
    context = HookContext(at="after_provision", action="provision", deployment="d", blueprint="lab-web",
                          version="1.1.0", params={"team": "imaging"}, addresses={"web": ("127.0.1.9",)}, outputs={},
                          hosts=(Host(name="d-web-1", ip="127.0.1.9", groups=("web",), module="web"),))  # fmt: skip
    call("lab-cmdb", context, redact=lambda text: text)
    assert json.loads((tmp_path / "cmdb.jsonl").read_text())["name"] == "d-web-1"


@pytest.mark.parametrize("parent", ["../demo", "demo\n", "${demo}", "it's", "demo/../../etc"])
def test_a_hostile_extends_is_a_clear_problem(tmp_path, parent):
    child = {"name": "child", "version": "1.0.0", "description": "c", "extends": parent}
    root = content_dir(tmp_path, BASE, child)
    _, problems = Catalog.from_settings(Settings(content_dir=root)).resolve("child")
    assert [p.where for p in problems] == ["extends"]
    assert "no blueprint named" in problems[0].message and "available: child, demo" in problems[0].message


@pytest.mark.parametrize("call", ["../hook", "x\ny", "${x}", "it's"])
def test_a_hostile_hook_name_is_refused_by_the_schema(tmp_path, call):
    root = content_dir(tmp_path, BASE | {"hooks": [{"call": call, "at": "after_provision"}]})
    _, problems = Catalog.from_settings(Settings(content_dir=root)).resolve("demo")
    assert [p.where for p in problems] == ["hooks[0].call"]
    assert "String should match pattern" in problems[0].message


# -- replacing a built-in blueprint needs consent ---------------------------------------------------


@pytest.fixture
def builtin_and_site(tmp_path):
    """A built-in ``demo`` (UMC_CONTENT_DIR) and a site directory on UMC_BLUEPRINT_PATH that overrides it."""
    builtin = content_dir(tmp_path / "builtin", BASE)
    site = content_dir(tmp_path / "site", BASE | {"description": "the site's", "override": True})
    return builtin, site


def test_overriding_a_built_in_blueprint_is_refused_without_consent(builtin_and_site):
    builtin, site = builtin_and_site
    for overrides in ([], ["web-server"]):  # consent is per name
        catalog = Catalog.from_settings(Settings(content_dir=builtin, blueprint_path=[site],
                                                 blueprint_overrides=overrides))  # fmt: skip
        with pytest.raises(BlueprintError) as refused:
            catalog.load("demo")
        message = str(refused.value)
        assert f"UMC_BLUEPRINT_PATH {site} ({site / 'blueprints' / 'demo.yaml'})" in message
        assert f"built-in one ({builtin / 'blueprints' / 'demo.yaml'})" in message
        assert "add 'demo' to UMC_BLUEPRINT_OVERRIDES" in message


def test_overriding_a_built_in_blueprint_with_consent(builtin_and_site, monkeypatch):
    builtin, site = builtin_and_site
    monkeypatch.setenv("UMC_BLUEPRINT_OVERRIDES", "web-server, demo")
    settings = Settings(content_dir=builtin, blueprint_path=[site])
    assert settings.blueprint_overrides == ["web-server", "demo"]
    source, path = Catalog.from_settings(settings).where("demo")
    assert (source.label, path) == (f"UMC_BLUEPRINT_PATH {site}", site / "blueprints" / "demo.yaml")
    assert Catalog.from_settings(settings).load("demo").description == "the site's"


def test_a_package_overriding_a_built_in_blueprint_needs_consent_too(builtin_and_site):
    builtin, site = builtin_and_site
    sources = [Source(label="built-in", root=builtin, blueprints=builtin / "blueprints", builtin=True),
               Source(label="package site (entry point site)", root=site, blueprints=site / "blueprints")]  # fmt: skip
    with pytest.raises(BlueprintError, match=r"from package site .* would replace the built-in one"):
        Catalog(sources).where("demo")
    assert Catalog(sources, overrides=["demo"]).where("demo")[0].label == "package site (entry point site)"


def test_without_override_true_it_is_the_clash_it_always_was(builtin_and_site):
    builtin, site = builtin_and_site
    (site / "blueprints" / "demo.yaml").write_text(yaml.safe_dump(BASE))
    catalog = Catalog.from_settings(Settings(content_dir=builtin, blueprint_path=[site], blueprint_overrides=["demo"]))
    with pytest.raises(BlueprintError, match="set 'override: true' in the one that should win"):
        catalog.load("demo")


def test_overrides_between_sources_that_are_not_built_in_need_no_consent(tmp_path):
    """A newer copy of the installed package's ``lab-web`` on the search path (as tests/integration do)."""
    packaged = Catalog.from_settings(Settings()).where("lab-web")
    assert packaged[0].label.startswith("package umc-lab-blueprints") and not packaged[0].builtin
    site = tmp_path / "site"
    shutil.copytree(packaged[1].parent.parent, site, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    raw = yaml.safe_load(packaged[1].read_text()) | {"version": "1.2.0", "override": True}
    (site / "blueprints" / "lab-web.yaml").write_text(yaml.safe_dump(raw))
    catalog = Catalog.from_settings(Settings(blueprint_path=[site]))
    assert catalog.where("lab-web")[1] == site / "blueprints" / "lab-web.yaml"
    assert catalog.load("lab-web").version == "1.2.0"


def test_a_directory_named_twice_is_one_source(tmp_path):
    site = content_dir(tmp_path / "site", BASE, {"name": "child", "version": "1.0.0", "description": "c",
                                                 "extends": "demo"})  # fmt: skip
    (tmp_path / "link").symlink_to(site)
    catalog = Catalog.from_settings(Settings(blueprint_path=[site, tmp_path / "link", site / "blueprints"]))
    assert [s.label for s in catalog.sources].count(f"UMC_BLUEPRINT_PATH {site}") == 1
    assert len(catalog.sources) == 3  # built-in, the site, the installed package
    assert catalog.load("child").extends == "demo"


def test_a_blueprint_file_that_cannot_be_read_is_a_problem(tmp_path):
    site = content_dir(tmp_path / "site", BASE)
    (site / "blueprints" / "odd.yaml").mkdir()
    (site / "blueprints" / "latin.yaml").write_bytes(b"name: caf\xe9\n")
    catalog = Catalog.from_settings(Settings(blueprint_path=[site]))
    for name, kind in (("odd", "IsADirectoryError"), ("latin", "UnicodeDecodeError")):
        with pytest.raises(BlueprintError, match=f"cannot be read \\({kind}\\)"):
            catalog.load(name)
