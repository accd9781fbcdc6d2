"""Who asked and the ticket: checked before anything happens, kept in every run of the record, shown by status.

The orchestrator runs with fake tools on a local backend (as in test_orchestrator); the records are the real ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from tests.unit.run.fakes import FakeTools
from tests.unit.run.test_orchestrator import provisioner, site, world  # noqa: F401 (site is a fixture)
from umc_infra import ParamsError, RunOptions
from umc_infra.cli.app import app
from umc_infra.cli.common import out
from umc_infra.state.records import DeploymentRecord, Records
from umc_infra.state.store import LocalStore

HOSTILE = [
    ("requested_by", "alice\nbob"), ("requested_by", "alice'; rm -rf /"), ("requested_by", '"alice"'),
    ("requested_by", "${jndi:ldap://x}"), ("requested_by", "../../etc/passwd"), ("requested_by", ""),
    ("requested_by", "a" * 129), ("requested_by", "alice\x1b[31m"), ("requested_by", "alice\u2028"),
    ("ticket", "INC1\nINC2"), ("ticket", "${ticket}"), ("ticket", "../x"), ("ticket", "OPS 1"),
    ("ticket", "'OPS-1'"), ("ticket", "x" * 65), ("ticket", "{{ lookup('pipe','id') }}"),
]  # fmt: skip
FINE = [
    {"requested_by": "alice", "ticket": "INC0012345"}, {"requested_by": "dependabot[bot]", "ticket": "#42"},
    {"requested_by": "jan.de-vries@umcutrecht.nl", "ticket": "OPS-1234"},
    {"requested_by": "repo:umc:ref", "ticket": None}, {"requested_by": None, "ticket": None},
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=repr)
@pytest.mark.parametrize("operation", ["plan", "provision", "destroy"])
def test_a_hostile_requester_or_ticket_is_refused_naming_the_field_before_anything_is_made(site, operation,  # noqa: F811
                                                                                          field, value):  # fmt: skip
    tools = FakeTools(world())
    p = provisioner(site, tools)
    if operation == "destroy":
        p.provision("demo", {"instances": 1})
    calls, runs = len(tools.world.calls), len(p.records.get("demo").runs) if operation == "destroy" else 0
    options = RunOptions(**{field: value})
    with pytest.raises(ParamsError) as refused:
        if operation == "destroy":
            p.destroy("demo", options=options)
        else:
            getattr(p, operation)("demo", {"instances": 1}, options=options)
    assert [problem.field for problem in refused.value.problems] == [field]
    assert refused.value.step == "params" and field in str(refused.value)
    assert "\n" not in str(refused.value)  # the value is shown as its repr: one line
    assert tools.world.calls[calls:] == []  # no Terraform, nothing planned or applied
    record = p.records.get("demo")
    assert (record is None) if operation != "destroy" else (len(record.runs) == runs and record.state == "active")


def test_a_bad_requester_is_refused_even_for_a_destroyed_deployment(site):  # noqa: F811
    p = provisioner(site, FakeTools(world()))
    p.provision("demo", {"instances": 1})
    p.destroy("demo")
    with pytest.raises(ParamsError, match="requested_by"):
        p.destroy("demo", options=RunOptions(requested_by="x\ny"))


def test_both_problems_and_a_bad_deployment_are_named_at_once(site):  # noqa: F811
    p = provisioner(site, FakeTools(world()))
    with pytest.raises(ParamsError) as refused:
        p.provision("demo", {}, deployment="Bad_Name", options=RunOptions(requested_by="a b", ticket="$x"))
    assert [problem.field for problem in refused.value.problems] == ["deployment", "requested_by", "ticket"]


@pytest.mark.parametrize("asked", FINE, ids=repr)
def test_every_run_records_who_asked_and_the_ticket_and_a_plan_records_nothing(site, asked):  # noqa: F811
    p = provisioner(site, FakeTools(world()))
    options = RunOptions(**asked)
    p.plan("demo", {"instances": 1}, options=options)
    assert p.records.get("demo") is None
    p.provision("demo", {"instances": 1}, options=options)
    p.provision("demo", {"instances": 2}, options=RunOptions(requested_by="bob", ticket="CHG-7"))
    p.destroy("demo", options=options)
    runs = p.status("demo").runs
    assert [(r.action, r.requested_by, r.ticket) for r in runs] == [
        ("provision", asked["requested_by"], asked["ticket"]), ("provision", "bob", "CHG-7"),
        ("destroy", asked["requested_by"], asked["ticket"]),
    ]  # fmt: skip
    assert all(r.outcome == "succeeded" for r in runs)


def test_a_record_written_before_the_fields_existed_still_loads(tmp_path):
    store = LocalStore(tmp_path)
    now = datetime.now(UTC).isoformat()
    old = {"deployment": "old-one", "blueprint": "demo", "version": "1.0.0", "state": "active", "params": {},
           "created_at": now, "updated_at": now,
           "runs": [{"action": "provision", "outcome": "succeeded", "actor": {"user": "ci", "host": "runner"},
                     "started_at": now}]}  # fmt: skip
    store.put("deployments/old-one/record.json", json.dumps(old).encode())
    record = Records(store).get("old-one")
    assert isinstance(record, DeploymentRecord)
    assert (record.runs[0].requested_by, record.runs[0].ticket) == (None, None)


def test_status_shows_who_asked_and_the_ticket(site, monkeypatch):  # noqa: F811
    for name, value in {"UMC_STATE_DIR": str(site.state_dir), "UMC_BACKEND": "local",
                        "UMC_BLUEPRINT_PATH": str(site.blueprint_path[0])}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    p = provisioner(site, FakeTools(world()))
    p.provision("demo", {"instances": 1}, options=RunOptions(requested_by="dependabot[bot]", ticket="INC0012345"))
    monkeypatch.setattr(out, "_width", 200)  # every column whole
    shown = CliRunner().invoke(app, ["status", "demo"])
    assert shown.exit_code == 0, shown.output
    assert "dependabot[bot]" in shown.output and "INC0012345" in shown.output
    as_json = CliRunner().invoke(app, ["status", "demo", "-o", "json"])
    assert json.loads(as_json.stdout)["runs"][0]["requested_by"] == "dependabot[bot]"


@pytest.mark.parametrize(("env", "expected"), [
    ({"GITLAB_CI": "true", "CI_JOB_ID": "7", "GITLAB_USER_LOGIN": "gitlab-alice"}, "gitlab-alice"),
    ({"GITHUB_RUN_ID": "9", "GITHUB_ACTOR": "dependabot[bot]"}, "dependabot[bot]"),
    ({}, None),  # the login name
])  # fmt: skip
def test_requested_by_defaults_to_the_ci_user_else_the_login_name(monkeypatch, env, expected):
    import getpass

    from umc_infra.cli.common import requester

    for name in ("GITLAB_CI", "CI_JOB_ID", "GITLAB_USER_LOGIN", "GITHUB_RUN_ID", "GITHUB_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert requester(None) == (expected or getpass.getuser())
    assert requester("given") == "given"


def test_the_cli_refuses_a_hostile_ticket_naming_the_flag_field(site, monkeypatch):  # noqa: F811
    monkeypatch.setenv("UMC_STATE_DIR", str(site.state_dir))
    monkeypatch.setenv("UMC_BLUEPRINT_PATH", str(site.blueprint_path[0]))
    result = CliRunner().invoke(app, ["destroy", "demo", "--yes", "--ticket", "${x}", "-o", "json"])
    assert result.exit_code == 2, result.output
    problems = json.loads(result.stdout)["error"]["problems"]
    assert [p["field"] for p in problems] == ["ticket"]
