"""The run's rules as pure functions: params kept over updates, the plan fingerprint, destroy policy, the
reviewed-plan check and the resume point of a retry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from umc_infra import DestroyNotAllowed, PlanChanged
from umc_infra.blueprint.model import Blueprint
from umc_infra.params import MASK
from umc_infra.run.policy import (
    check_destroys,
    check_reviewed,
    fingerprint,
    param_changes,
    params_digest,
    params_to_use,
    resume_point,
)
from umc_infra.run.results import PlanResult
from umc_infra.state.records import Actor, DeploymentRecord, RunRecord
from umc_infra.terraform.plan import ChangeCounts, ResourceChange

NOW = datetime(2026, 11, 26, tzinfo=UTC)
ACTOR = Actor(user="ci", host="runner")
CREATE = ResourceChange(module="vm", address="vsphere_virtual_machine.vm[0]", action="create")
DELETE = ResourceChange(module="vm", address="vsphere_virtual_machine.vm[1]", action="delete")
RETUNED = ResourceChange.model_validate(CREATE.model_dump() | {"attributes": {"x": {"before": 1, "after": 2}}})
REPLACE = ResourceChange(module="db", address="vsphere_virtual_machine.vm[0]", action="replace")


@pytest.fixture
def blueprint() -> Blueprint:
    return Blueprint.model_validate({
        "name": "demo", "version": "1.0.0", "description": "d",
        "params": {"instances": {"type": "integer", "default": 1, "min": 1, "max": 5},
                   "title": {"type": "string", "default": "t"},
                   "token": {"type": "string", "default": "x", "secret": True}},
        "modules": {"vm": {"source": "vsphere-vm"}},
    })  # fmt: skip


def record(params: dict, state: str = "active") -> DeploymentRecord:
    return DeploymentRecord(deployment="d", blueprint="demo", version="1.0.0", state=state, params=params,
                            created_at=NOW, updated_at=NOW)  # fmt: skip


def test_an_update_merges_over_what_the_deployment_has(blueprint):
    kept = record({"instances": 3, "title": "old", "token": MASK, "gone": 1})
    assert params_to_use(blueprint, {"title": "new"}, kept, reset=False) == {"instances": 3, "title": "new"}


@pytest.mark.parametrize("why", ["reset", "new", "destroyed"])
def test_reset_a_new_or_a_destroyed_deployment_starts_from_what_is_given(blueprint, why):
    before = None if why == "new" else record({"instances": 3}, state="destroyed" if why == "destroyed" else "active")
    assert params_to_use(blueprint, {"title": "new"}, before, reset=why == "reset") == {"title": "new"}


def test_param_changes_name_only_what_differs():
    changes = param_changes({"instances": 3, "title": "a"}, {"instances": 1, "title": "a", "cpu": 2})
    assert {k: (c.before, c.after) for k, c in changes.items()} == {"cpu": (None, 2), "instances": (3, 1)}


def test_the_fingerprint_and_digest_change_with_every_part_and_not_with_key_order():
    base = fingerprint({"a": 1, "b": 2}, [CREATE])
    assert fingerprint({"b": 2, "a": 1}, [CREATE]) == base
    others = {fingerprint({"a": 1, "b": 3}, [CREATE]), fingerprint({"a": 1, "b": 2}, [CREATE, DELETE]),
              fingerprint({"a": 1, "b": 2}, [CREATE], ["tag"])}  # fmt: skip
    assert base not in others and len(others) == 3
    assert params_digest({"a": 1, "b": 2}) == params_digest({"b": 2, "a": 1}) != params_digest({"a": 1})


def test_deletes_and_replaces_are_refused_unless_allowed_and_the_error_says_what_was_applied():
    check_destroys([CREATE], deployment="d", allow_destroy=False, applied=[])
    check_destroys([DELETE, REPLACE], deployment="d", allow_destroy=True, applied=[])
    with pytest.raises(DestroyNotAllowed) as refused:
        check_destroys([CREATE, DELETE, REPLACE], deployment="d", allow_destroy=False, applied=["net"])
    assert list(refused.value.resources) == ["vm: vsphere_virtual_machine.vm[1] (delete)",
                                             "db: vsphere_virtual_machine.vm[0] (replace)"]  # fmt: skip
    assert "module(s) 'net' were applied before this" in str(refused.value)


def reviewed(**changes) -> PlanResult:
    fields = {
        "deployment": "d",
        "blueprint": "demo",
        "version": "1.0.0",
        "params": {"instances": 1},
        "exists": True,
        "previous_version": "1.0.0",
        "resources": (CREATE,),
        "configuration": (),
        "fingerprint": "f",
    }
    return PlanResult.model_validate(fields | changes)


@pytest.mark.parametrize(
    ("plan", "params", "found", "says"),
    [
        (reviewed(deployment="other"), {"instances": 1}, [CREATE], "made for deployment 'other'"),
        (reviewed(), {"instances": 2}, [CREATE], "the params differ"),
        (reviewed(deferred=("vm",)), {"instances": 1}, [CREATE], "its changes were never reviewed"),
        (reviewed(), {"instances": 1}, [CREATE, DELETE], "vsphere_virtual_machine.vm[1] delete"),
        (reviewed(), {"instances": 1}, [RETUNED],
         "the same resources, with other attribute changes"),
    ],
)  # fmt: skip
def test_a_reviewed_plan_holds_only_while_nothing_differs(plan, params, found, says):
    check_reviewed(reviewed(), deployment="d", params={"instances": 1}, module="vm", found=[CREATE], applied=[])
    with pytest.raises(PlanChanged, match="Plan and review again") as changed:
        check_reviewed(plan, deployment="d", params=params, module="vm", found=found, applied=[])
    assert says in str(changed.value) and "nothing was applied" in str(changed.value)


def failed_run(**changes) -> RunRecord:
    fields = {"action": "provision", "outcome": "failed", "actor": ACTOR, "started_at": NOW,
              "blueprint_version": "1.0.0", "failed_step": "ansible.web", "failed_hosts": ("d-2",),
              "params_digest": "p"}  # fmt: skip
    return RunRecord.model_validate(fields | changes)


@pytest.mark.parametrize(
    ("previous", "retry", "changes", "resumes"),
    [
        (failed_run(), "failed", {}, ("web", ("d-2",))),
        (failed_run(), "all", {}, None),
        (None, "failed", {}, None),
        (failed_run(outcome="succeeded"), "failed", {}, None),
        (failed_run(failed_hosts=()), "failed", {}, None),
        (failed_run(failed_step="terraform.apply.vm"), "failed", {}, None),
        (failed_run(), "failed", {"vm": ChangeCounts(add=1)}, None),
        (failed_run(blueprint_version="0.9.0"), "failed", {}, None),
        (failed_run(params_digest="other"), "failed", {}, None),
        (failed_run(failed_step="ansible.gone"), "failed", {}, None),
    ],
)
def test_a_retry_resumes_only_at_failed_hosts_of_the_same_request(previous, retry, changes, resumes):
    found = resume_point(previous, retry=retry, playbooks=["base", "web"], changes={"vm": ChangeCounts()} | changes,
                         version="1.0.0", digest="p")  # fmt: skip
    assert found == resumes
