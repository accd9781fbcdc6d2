"""``blueprints validate``: each broken fixture gives its problem with file and line; sound ones pass."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from umc_infra import Settings
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.validate import validate
from umc_infra.errors import ExitCode as Exit

BROKEN = Path(__file__).parents[2] / "fixtures" / "broken-blueprints"
LAB = Path(__file__).parents[2] / "fixtures" / "umc-lab-blueprints" / "umc_lab_blueprints"


def line(path: Path, text: str) -> int:
    return next(i for i, content in enumerate(path.read_text().splitlines(), 1) if text in content)


@pytest.fixture(scope="module")
def report():
    settings = Settings()
    return validate(Catalog.from_settings(settings), settings, path=BROKEN)


def found(report, blueprint: str) -> list[tuple[str, int | None, str]]:
    file = str(BROKEN / "blueprints" / f"{blueprint}.yaml")
    return [(p.where, p.line, p.message) for p in report.problems if p.file == file]


def test_a_missing_module(report):
    (where, at, message), *_ = found(report, "missing-module")
    assert where == "modules.backup.source"
    assert at == line(BROKEN / "blueprints" / "missing-module.yaml", "source: no-such-module")
    assert message.startswith("module 'no-such-module' not found in ")


def test_an_unknown_param_in_a_mapping(report):
    problems = found(report, "unknown-param")
    assert ("modules.vm.inputs.cpu", line(BROKEN / "blueprints" / "unknown-param.yaml", "cpu: params.cpus")) in [
        (w, a) for w, a, _ in problems
    ]
    assert any("unknown param 'cpus'" in m for _, _, m in problems)
    unused = [p for p in report.problems if p.where == "params.cpu"]  # inherited, and no longer used
    assert [(Path(p.file).name, "never used" in p.message) for p in unused] == [("linux-server.yaml", True)]


def test_a_widened_constraint(report):
    assert found(report, "widened") == [
        ("params.instances.max", line(BROKEN / "blueprints" / "widened.yaml", "max: 50"),
         "widens the parent's constraint: max 50 where the parent has 20.0"),
    ]  # fmt: skip


def test_cyclic_extends(report):
    assert found(report, "cycle-a") == [
        ("extends", 4, "cyclic extends: cycle-a -> cycle-b -> cycle-a"),
    ]
    assert found(report, "cycle-b")[0][2] == "cyclic extends: cycle-b -> cycle-a -> cycle-b"


def test_terraform_validate_and_ansible_syntax_check_with_their_lines(report):
    tools = {p.where: p for p in report.problems if p.where.startswith(("terraform", "ansible"))}
    terraform = tools["terraform validate"]
    assert terraform.file == str(BROKEN / "modules" / "bad-hcl" / "main.tf")
    assert terraform.line == line(BROKEN / "modules" / "bad-hcl" / "main.tf", "var.factor")
    assert "Reference to undeclared input variable" in terraform.message
    ansible = tools["ansible-playbook --syntax-check"]
    assert ansible.file == str(BROKEN / "playbooks" / "bad-syntax.yml") and ansible.line
    assert "no.such.module" in ansible.message


def test_the_shipped_and_installed_blueprints_are_sound():
    settings = Settings()
    result = validate(Catalog.from_settings(settings), settings)
    assert result.ok, [str(p) for p in result.problems]
    assert {"linux-server", "web-server", "app-stack", "lab-web"} <= set(result.blueprints)
    assert any(m.endswith("lab-label") for m in result.modules)
    assert any(p.endswith("lab.yml") for p in result.playbooks)


def test_the_command_exits_2_and_prints_file_and_line_for_ci(tmp_path):
    umc = Path(sys.executable).parent / "umc-infra"
    bad = subprocess.run([str(umc), "blueprints", "validate", str(BROKEN / "blueprints" / "widened.yaml"),
                          "--no-tools"], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == Exit.BAD_INPUT
    where = f"{BROKEN / 'blueprints' / 'widened.yaml'}:{line(BROKEN / 'blueprints' / 'widened.yaml', 'max: 50')}:"
    assert where + " params.instances.max: widens the parent's constraint" in bad.stderr
    good = subprocess.run([str(umc), "blueprints", "validate", str(LAB / "blueprints"), "-o", "json"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["problems"] == []


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ("couldn't resolve module/action 'ansible.windows.win_timezone'. This often indicates a misspelling, missing "
         "collection, or incorrect module path.", "pip install 'umc-infra[windows]'"),
        ("couldn't resolve module/action 'community.windows.win_firewall_rule'.", "pip install 'umc-infra[windows]'"),
        ("couldn't resolve module/action 'acme.tools.thing'.", "ansible-galaxy collection install acme.tools"),
        ("couldn't resolve module/action 'win_timezone'.", None),
        ("conflicting action statements: copy, file", None),
    ],
)  # fmt: skip
def test_a_module_of_a_missing_collection_names_what_installs_it(message, hint):
    from umc_infra.ansible.runner import _collection_hint

    found = _collection_hint(message)
    assert (hint in found) if hint else found == ""
