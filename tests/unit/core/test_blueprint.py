"""Blueprint schema and reference checks, on small blueprints written by the tests."""

import textwrap

import pytest
import yaml

from umc_infra import BlueprintError, BlueprintNotFound
from umc_infra.blueprint.catalog import Catalog, Source
from umc_infra.blueprint.content import Content
from umc_infra.blueprint.model import SecretRef


def catalog(content: Content) -> Catalog:
    return Catalog([Source(label="test", root=content.root, blueprints=content.blueprints)])


def load(name, content):
    return catalog(content).load(name)


MODULE = """
variable "name_prefix" { type = string }
variable "instances" { type = number }
variable "password" {
  type      = string
  sensitive = true
}
output "names" { value = [] }
output "ips" { value = [] }
"""

BASE = {
    "name": "demo",
    "version": "1.0.0",
    "description": "A demo",
    "params": {
        "instances": {"type": "integer", "default": 1, "min": 1, "max": 5},
        "label": {"type": "string", "default": "x"},
    },
    "secrets": {"password": "kv/data/apps/{deployment}#password", "key": "kv/data/umc/ansible#key"},
    "modules": {
        "vm": {
            "source": "mod",
            "inputs": {
                "name_prefix": {"format": "{deployment}-{label}"},
                "instances": "params.instances",
                "password": "secrets.password",
            },
        }
    },
    "hosts": [{"module": "vm", "groups": ["app"]}],
    "playbooks": [{"playbook": "play", "hosts": "app", "vars": {"umc_x": "params.label"}}],
    "ansible": {"ssh_private_key": "secrets.key"},
    "outputs": {"ips": {"value": "modules.vm.ips"}},
}


@pytest.fixture
def content(tmp_path):
    (tmp_path / "blueprints").mkdir()
    (tmp_path / "modules" / "mod").mkdir(parents=True)
    (tmp_path / "modules" / "mod" / "main.tf").write_text(MODULE)
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "play.yml").write_text("- hosts: all\n  tasks: []\n")
    return Content(root=tmp_path)


def write(content, data, name="demo"):
    (content.blueprints / f"{name}.yaml").write_text(yaml.safe_dump(data))


def variant(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[keys[-1]] = value
    return data


def test_a_valid_blueprint_loads(content):
    write(content, BASE)
    blueprint = load("demo", content)
    assert blueprint.name == "demo"
    assert list(blueprint.modules) == ["vm"]
    assert blueprint.groups == {"all", "app"}
    assert blueprint.secret_ref("password") == SecretRef(mount="kv", path="apps/{deployment}", key="password")
    assert catalog(content).names() == ["demo"]


@pytest.mark.parametrize("name", ["nope", "../demo", "demo\n", "DEMO", "", "demo/../../etc"])
def test_unknown_blueprint_names_what_exists(content, name):
    write(content, BASE)
    with pytest.raises(BlueprintNotFound, match="available: demo"):
        load(name, content)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"modules__vm__source": "missing"}, "module 'missing' not found"),
        ({"modules__vm__inputs__instances": "params.nope"}, "unknown param 'nope'"),
        ({"modules__vm__inputs__password": "secrets.nope"}, "unknown secret 'nope'"),
        ({"modules__vm__inputs__cpu": "params.instances"}, "module 'mod' has no variable 'cpu'"),
        ({"modules__vm__inputs__instances": "site.nope"}, "unknown site setting 'nope'"),
        ({"playbooks__0__playbook": "missing"}, "playbook 'missing' not found"),
        ({"playbooks__0__hosts": "db"}, "unknown group 'db'"),
        ({"outputs__ips__value": "modules.vm.nope"}, "module 'vm' has no output 'nope'"),
        ({"outputs__ips__value": "modules.other.ips"}, "unknown module 'other'; modules: vm"),
        ({"secrets__password": "kv/data/apps/{label2}#password"}, "placeholder {label2}"),
        ({"modules__vm__inputs__name_prefix": {"format": "{deployment.__class__}"}}, "unknown param"),
        ({"ansible__ssh_private_key": "params.label"}, "must be a secrets.<name> reference"),
        (
            {"modules__vm__inputs__instances": "hosts.app.ips"},
            "modules.vm.inputs.instances: hosts.<group>.ips is only for playbook vars and outputs, not module inputs",
        ),
        (
            {"modules__vm__addresses": {"count": "addresses.vm"}},
            "modules.vm.addresses.count: addresses.<module> is only for module inputs, playbook vars and outputs",
        ),
        ({"modules__vm__inputs__instances": "addresses.vm"}, "module 'vm' declares no addresses"),
        ({"outputs__ips__value": {"format": "{deployment}-{nope}"}}, "outputs.ips: unknown param 'nope'"),
        ({"params__instances__at_most": "nope"}, "params.instances.at_most: 'nope' is not an integer or number param"),
        ({"params__instances__at_most": "label"}, "params.instances.at_most: 'label' is not an integer or number"),
    ],
)
def test_broken_references_are_named(content, changes, message):
    write(content, variant(**changes))
    with pytest.raises(BlueprintError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load("demo", content)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"secrets__password": "kv/apps/x#password"}, "is not a KV v2 reference"),
        ({"secrets__password": "kv/data/../x#password"}, "is not a KV v2 reference"),
        ({"params__instances": {"type": "enum"}}, "an enum needs 'values'"),
        ({"params__instances": {"type": "list"}}, "a list needs 'items'"),
        ({"params__instances": {"type": "integer", "min": 5, "max": 1}}, "'min' is greater than 'max'"),
        ({"params__instances": {"type": "string", "pattern": "("}}, "not a regular expression"),
        ({"params__instances": {"type": "integer", "secrte": True}}, "Extra inputs are not permitted"),
        ({"version": "1.0"}, "version"),
        (
            {"modules__vm__inputs__instances": "params.instances; rm -rf /"},
            r"modules\.vm\.inputs\.instances: 'params\.instances; rm -rf /' is not a reference: one of deployment",
        ),
        ({"modules__vm__inputs__instances": "${var.x}"}, r"instances: '\$\{var\.x\}' is not a reference"),
        ({"modules__vm__inputs__instances": {"value": 1, "format": "x"}}, r"instances\.format: Extra inputs"),
        ({"modules__vm__inputs__instances": 2}, r"instances: a value is a reference \(deployment, params"),
    ],
)
def test_schema_errors_name_the_field(content, changes, message):
    write(content, variant(**changes))
    with pytest.raises(BlueprintError, match=message):
        load("demo", content)


def test_a_blueprint_must_declare_its_own_name(content):
    write(content, BASE, name="other")
    with pytest.raises(BlueprintError, match="name: is 'demo'; the file name says 'other'"):
        load("other", content)


def test_invalid_yaml_is_a_blueprint_error(content):
    (content.blueprints / "demo.yaml").write_text(textwrap.dedent("name: [unclosed\n"))
    with pytest.raises(BlueprintError, match="not valid YAML"):
        load("demo", content)


def test_the_shipped_blueprints_load():
    content = Content.locate()
    assert {"linux-server", "web-server", "app-stack", "windows-server"} <= set(catalog(content).names())
    for name in ("linux-server", "web-server", "app-stack", "windows-server"):
        blueprint = load(name, content)
        assert blueprint.version
        assert blueprint.ansible is not None


def test_a_secret_must_reach_a_sensitive_variable(content):
    """A secret in a variable Terraform does not know is sensitive would show in plans (an old one after a rotation)."""
    (content.modules / "mod" / "main.tf").write_text(MODULE.replace("sensitive = true", "sensitive = false"))
    write(content, BASE)
    with pytest.raises(BlueprintError, match=r"modules\.vm\.inputs\.password: receives a secret \(secrets\.password\)"):
        load("demo", content)
    secret_param = variant(params__label={"type": "string", "secret": True},
                           modules__vm__inputs__password="params.label",
                           playbooks__0__vars={})  # fmt: skip
    (content.modules / "mod" / "main.tf").write_text(MODULE.replace("sensitive = true", "sensitive = false"))
    write(content, secret_param)
    with pytest.raises(BlueprintError, match=r"receives a secret \(params\.label\)") as refused:
        load("demo", content)
    assert "param 'label' is secret and cannot be part of a name" in str(refused.value)
    (content.modules / "mod" / "main.tf").write_text(MODULE)  # the control: declared sensitive, it loads
    write(content, BASE)
    assert load("demo", content).modules["vm"].inputs["password"] == "secrets.password"


def test_modules_may_be_listed_in_any_order_but_not_read_each_other_in_a_cycle(content):
    """A module reads outputs of modules listed after it (they are applied first); a cycle names its modules."""
    reader = {"source": "mod", "inputs": {"name_prefix": "modules.vm.names[0]", "instances": {"value": 1},
                                          "password": "secrets.password"}}  # fmt: skip
    data = variant()
    data["modules"] = {"reader": reader, **data["modules"]}
    write(content, data)
    assert list(load("demo", content).modules) == ["reader", "vm"]
    data["modules"]["vm"]["inputs"]["instances"] = "modules.reader.ips"
    write(content, data)
    with pytest.raises(BlueprintError) as refused:
        load("demo", content)
    (problem,) = [p for p in refused.value.problems if p.where.startswith("modules")]
    text = (content.blueprints / "demo.yaml").read_text().splitlines()
    assert problem.where == "modules.reader" and problem.line == text.index("  reader:") + 1
    assert problem.message.startswith("modules read each other's outputs in a cycle: reader -> vm -> reader")
