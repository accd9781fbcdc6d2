"""The policy file: departments by group, admins, and a clear error naming the field of a bad file."""

import copy

import pytest
import yaml

from umc_infra.errors import SettingsError
from umc_infra.service.policy import Caller, Policy

from .conftest import POLICY


def caller(*groups: str) -> Caller:
    return Caller(subject="s", username="u", groups=groups)


def test_groups_map_to_departments_and_admins():
    policy = Policy.parse(POLICY)
    alice = policy.access(caller("cardiology-it", "unrelated"))
    assert (alice.departments, alice.admin) == (("cardiology",), False)
    assert alice.may_see("cardiology") and not alice.may_see("radiology")
    admin = policy.access(caller("platform-engineers"))
    assert (admin.departments, admin.admin) == ((), True)
    assert admin.may_see("radiology")
    nobody = policy.access(caller("visitors"))
    assert (nobody.departments, nobody.admin) == ((), False)
    assert policy.departments["radiology"].lease is None
    assert policy.departments["cardiology"].lease.max_days == 30  # type: ignore[union-attr]


def test_the_file_is_read(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    assert Policy.load(path) == Policy.parse(POLICY)


def broken(change):
    document = copy.deepcopy(POLICY)
    change(document)
    return document


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["departments"]["cardiology"]["quota"].update(vms=-1), "departments.cardiology.quota.vms"),
    (lambda d: d["departments"]["radiology"].pop("groups"), "departments.radiology.groups"),
    (lambda d: d["departments"]["cardiology"]["lease"].update(default_days=40), "departments.cardiology.lease"),
    (lambda d: d["departments"]["cardiology"].update(quotas={}), "departments.cardiology.quotas"),
    (lambda d: d["departments"].update({"Bad Name": d["departments"]["radiology"]}), "departments.Bad Name"),
    (lambda d: d.update(departments={}), "departments"),
])  # fmt: skip
def test_a_bad_policy_names_the_field(change, field, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(broken(change)))
    with pytest.raises(SettingsError) as raised:
        Policy.load(path)
    fields = [p.field for p in raised.value.problems]
    assert any(f.startswith(f"{path}: {field}") for f in fields), fields


def test_a_file_that_is_not_a_policy_says_so(tmp_path):
    with pytest.raises(SettingsError, match="cannot be read"):
        Policy.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(SettingsError, match="is not a mapping"):
        Policy.load(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("departments: [\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        Policy.load(tmp_path / "bad.yaml")
