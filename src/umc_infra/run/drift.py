"""Drift: compute drift (a Terraform refresh-only plan) and configuration drift (Ansible check mode)."""

from __future__ import annotations

from datetime import UTC, datetime

from umc_infra.ansible.inventory import Inventory
from umc_infra.blueprint.references import dependency_order
from umc_infra.run.plan import with_check
from umc_infra.run.recovery import recover
from umc_infra.run.results import DriftReport
from umc_infra.run.session import Session
from umc_infra.state.records import DeploymentRecord
from umc_infra.terraform.plan import ResourceChange


def drift(session: Session, record: DeploymentRecord) -> DriftReport:
    """How the deployment differs from what it should be, in vCenter and on its hosts. Changes nothing."""
    recover(session, full=False)
    spec = session.spec
    for module in dependency_order(spec):  # before the check: its vars may read the addresses
        if spec.modules[module].addresses is not None:
            session.held_addresses(module)

    def refresh_only() -> list[ResourceChange]:
        compute: list[ResourceChange] = []
        with session.scratch() as scratch:
            for module in dependency_order(spec):
                with session.step(f"terraform.drift.{module}"):
                    workdir, secret = session.prepare(module)
                    compute += session.terraform.plan(workdir, scratch / f"{module}.tfplan", module=module,
                                                      secret_inputs=secret, refresh_only=True).resources  # fmt: skip
                    session.read_outputs(module, workdir)
        return compute

    hosts = record.hosts if spec.ansible is not None else ()
    compute, configuration = with_check(session, refresh_only, Inventory(hosts=hosts) if hosts else None)
    return DriftReport(deployment=session.deployment, compute=tuple(compute), configuration=tuple(configuration),
                       checked_at=datetime.now(UTC))  # fmt: skip
