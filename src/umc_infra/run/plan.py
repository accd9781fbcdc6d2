"""Planning: each module in dependency order, a module reading an earlier one's outputs from that one's plan.

A module whose inputs read outputs of an earlier module is planned with the values the earlier module's
plan says its outputs will have. Where the plan cannot know them yet (an id only vCenter gives), the module
is *deferred*: its changes are known only once the earlier module is applied, and the plan says so.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from umc_infra.ansible.inventory import Inventory
from umc_infra.blueprint.references import dependency_order, playbooks_read_outputs
from umc_infra.errors import UnresolvedReference
from umc_infra.run import policy
from umc_infra.run.results import ConfigChange, PlanResult
from umc_infra.run.session import Session
from umc_infra.state.records import DeploymentRecord
from umc_infra.terraform.plan import TerraformPlan

T = TypeVar("T")


@dataclass
class ModulePlan:
    """One module's plan within a run."""

    module: str
    planfile: Path
    inputs: dict[str, Any] = field(default_factory=dict)
    """The inputs it was planned with."""
    plan: TerraformPlan | None = None
    """None: deferred (it reads outputs not known before an earlier module is applied)."""


def plan_modules(session: Session, scratch: Path) -> dict[str, ModulePlan]:
    """Plan every module in dependency order; outputs of a planned module are taken from its plan."""
    planned: dict[str, ModulePlan] = {}
    for module in dependency_order(session.spec):
        planfile = scratch / f"{module}.tfplan"
        try:
            inputs = session.inputs(module)
        except UnresolvedReference:
            planned[module] = ModulePlan(module, planfile)  # deferred: its inputs are known after an apply
            continue
        with session.step(f"terraform.plan.{module}"):
            if session.journal is not None:
                session.journal.working(module)  # its state locks count as this run's, should it die
            workdir, secret = session.prepare(module, inputs)
            found = session.terraform.plan(workdir, planfile, module=module, secret_inputs=secret)
            if found.resources:
                # Planned values; unknown ones are left out, so a module that reads one is deferred.
                session.remember_outputs(module, found.outputs)
            else:
                session.read_outputs(module, workdir)
        planned[module] = ModulePlan(module, planfile, inputs, found)
    return planned


def plan(session: Session, record: DeploymentRecord | None, *, check_configuration: bool) -> PlanResult:
    """What ``provision`` would change, per resource and (for existing hosts) per task. Changes nothing."""
    from umc_infra.run.recovery import recover

    recover(session, full=False)
    exists = record is not None and record.state != "destroyed"
    session.addresses(dry_run=True)  # the addresses it would claim, unclaimed
    hosts = record.hosts if check_configuration and exists and record is not None and session.spec.ansible else ()

    def terraform_plan() -> dict[str, ModulePlan]:
        with session.scratch() as scratch:
            return plan_modules(session, scratch)

    planned, configuration = with_check(session, terraform_plan, Inventory(hosts=hosts) if hosts else None)
    resources = tuple(r for p in planned.values() if p.plan is not None for r in p.plan.resources)
    deferred = tuple(m for m, p in planned.items() if p.plan is None)
    params = session.params.masked()
    before = record.params if exists and record is not None else {}
    return PlanResult(
        deployment=session.deployment, blueprint=session.spec.name, version=session.spec.version, params=params,
        exists=exists, previous_version=record.version if record else None,
        param_changes=policy.param_changes(before, params) if exists else {}, resources=resources,
        deferred=deferred, configuration=tuple(configuration),
        fingerprint=policy.fingerprint(params, resources, deferred), timings=dict(session.timings),
    )  # fmt: skip


def with_check(
    session: Session, terraform: Callable[[], T], inventory: Inventory | None
) -> tuple[T, list[ConfigChange]]:
    """Terraform's part of a plan or drift and, for existing hosts (``inventory``), Ansible's check mode.

    The two run at once unless a playbook's vars read a module's outputs (``modules.<module>.<output>``):
    the check then waits for the values Terraform's part gives them (everything else its vars read is known
    before). Should Terraform's part fail, its error is raised once the check is over (the check changes nothing).
    """
    if inventory is None:
        return terraform(), []
    session.remember_inventory(inventory)  # here: below, only Terraform's part sets the run's values (its outputs)
    spec = session.spec
    if playbooks_read_outputs(spec):
        found = terraform()
        return found, configuration_changes(session, inventory)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="umc-check") as pool:
        checked = pool.submit(configuration_changes, session, inventory)
        try:
            found = terraform()
        except BaseException:
            concurrent.futures.wait([checked])
            raise
        return found, checked.result()


def configuration_changes(session: Session, inventory: Inventory) -> list[ConfigChange]:
    """Tasks Ansible check mode says would change on the hosts (plan and drift; the run knows ``inventory``).

    Every pinned host must show its pinned SSH host keys: a check pins no VM anew (only a provision does).
    """
    with session.step("ssh"):
        known = session.known_hosts(inventory, recreated=(), by_vm_id=False)
    plays = [play for play in session.spec.playbooks if inventory.in_group(play.hosts)]
    played = session.playbooks(plays, inventory=inventory, known_hosts=known, check=True)
    return [ConfigChange(playbook=name, host=h, task=t) for name, result in played.items()
            for h, t in result.changed_tasks]  # fmt: skip
