"""Provision: plan every module, check the policy and the reviewed plan, apply in dependency order, configure.

``addresses -> plan (all modules) -> policy -> apply (each module; re-planned and checked again when its inputs
moved) -> inventory -> ssh + host keys -> playbooks -> record``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from umc_infra.ansible import inventory as _inventory
from umc_infra.ansible.runner import PlaybookResult
from umc_infra.blueprint.content import module_interface
from umc_infra.blueprint.references import dependency_order
from umc_infra.errors import Cancelled, RollbackFailed, UmcInfraError
from umc_infra.params import MASK
from umc_infra.run import policy
from umc_infra.run.destroy import destroy_modules
from umc_infra.run.journal import Journal, error_text
from umc_infra.run.options import RunOptions
from umc_infra.run.plan import ModulePlan, plan_modules
from umc_infra.run.recovery import recover
from umc_infra.run.results import ProvisionResult, masked
from umc_infra.run.session import Session
from umc_infra.state import ipam as _ipam
from umc_infra.state.records import DeploymentRecord
from umc_infra.terraform.plan import ChangeCounts


def provision(session: Session, options: RunOptions) -> ProvisionResult:
    """Create, update or converge the session's deployment; the record says how it went."""
    recover(session, full=True)
    now = datetime.now(UTC)
    existing = session.records.get(session.deployment)
    brand_new = existing is None or existing.state == "destroyed"
    session.previous_run = existing.last_run if existing else None
    record = existing or DeploymentRecord(
        deployment=session.deployment, blueprint=session.spec.name, version=session.spec.version,
        state="provisioning", params=session.params.masked(), created_at=now, updated_at=now,
    )  # fmt: skip
    digest = policy.params_digest(session.params.masked())
    journal = session.journal = Journal.start(
        session.records, record, action="provision", blueprint_version=session.spec.version, params_digest=digest,
        state="provisioning" if brand_new else record.state, requested_by=options.requested_by, ticket=options.ticket,
    )  # fmt: skip
    changes: dict[str, ChangeCounts] = {}
    applied: list[str] = []
    try:
        result = _provision(session, options, changes, applied, digest)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt | Cancelled)
        state = "interrupted" if interrupted else "failed"
        rollback: UmcInfraError | None = None
        if options.on_failure == "destroy" and brand_new and not interrupted and applied:
            try:
                destroy_modules(session, applied)
                _ipam.release(session.store, deployment=session.deployment)
                state = "destroyed"
            except UmcInfraError as failed:
                rollback = failed
        journal.failed(
            exc, redactor=session.redactor, timings=session.timings, failed_step=session.failed_step,
            changes=changes, failed_hosts=tuple(dict.fromkeys(h for h, _, _ in getattr(exc, "failures", ()))),
            record_changes={"state": state if brand_new or state == "interrupted" else record.state},
        )  # fmt: skip
        if rollback is not None:
            cause, undo = error_text(exc, session.redactor), error_text(rollback, session.redactor)
            raise RollbackFailed(
                f"deployment {session.deployment!r} failed ({cause}), and removing what it made failed too "
                f"({undo}); what exists is kept and recorded as failed: run destroy once the cause is fixed",
                cause=cause, rollback=undo, step=rollback.step,
            ) from exc  # fmt: skip
        raise
    with session.step("record"):
        journal.finish(
            "succeeded", timings=result.timings, changes=changes,
            record_changes={
                "state": "active", "version": session.spec.version, "blueprint": session.spec.name,
                "params": result.params, "hosts": result.hosts, "outputs": result.outputs,
                "modules": tuple(dependency_order(session.spec)),
                "blueprint_snapshot": session.spec.model_dump(mode="json"),
            },
        )  # fmt: skip
    return result


def _provision(
    session: Session, options: RunOptions, changes: dict[str, ChangeCounts], applied: list[str], digest: str
) -> ProvisionResult:
    spec = session.spec
    session.addresses()
    session.hooks("before_terraform", "provision")
    recreated: set[str] = set()
    with session.scratch() as scratch:
        # Plan every module first: the destroy policy and a reviewed plan are checked before anything applies.
        planned = plan_modules(session, scratch)
        with session.step("policy"):
            for module, found in planned.items():
                _check(session, options, module, found, applied=[])
        for module in dependency_order(spec):
            with session.step(f"terraform.apply.{module}"):
                mp = planned[module]
                inputs = session.inputs(module)  # the real outputs of the modules applied before
                workdir = session.workdir(module)
                replanned = mp.plan is None or mp.inputs != inputs
                if replanned:
                    # Planned with outputs the apply has only now made known (or made differently): plan again,
                    # and check that plan as the first one was checked.
                    workdir, secret = session.prepare(module, inputs)
                    again = session.terraform.plan(workdir, mp.planfile, module=module, secret_inputs=secret)
                    mp = planned[module] = ModulePlan(module, mp.planfile, inputs, again)
                    _check(session, options, module, mp, applied=applied)
                assert mp.plan is not None
                changes[module] = ChangeCounts()
                applied.append(module)
                outputs: dict[str, Any] = {}
                if not mp.plan.resources:  # read when it was planned, unless planned again just now
                    outputs = (
                        session.read_outputs(module, workdir) if replanned else dict(session.values.outputs[module])
                    )
                # Nothing to change, but an interrupted apply can leave outputs unwritten: apply then too.
                declared = module_interface(session.module_dir(module)).outputs
                if mp.plan.resources or not declared <= set(outputs):
                    assert session.journal is not None
                    session.journal.applying(module, mp.plan.new_vms)  # for the recovery, should this run die
                    changes[module] = session.terraform.apply_plan(workdir, mp.planfile, module=module)
                    session.journal.landed(module)
                    session.read_outputs(module, workdir)
                recreated |= {vm.rsplit("/", 1)[-1] for vm in mp.plan.new_vms}
    session.release_removed_addresses()

    with session.step("inventory"):
        inventory = _inventory.build(spec, {m: dict(o) for m, o in session.values.outputs.items()})
        session.remember_inventory(inventory)
    session.hooks("after_terraform", "provision")
    played: dict[str, PlaybookResult] = {}
    if spec.playbooks and spec.ansible is not None:
        session.hooks("before_ansible", "provision")
        with session.step("ssh"):
            session.guests.wait(inventory)
            # VMs this run created or replaced are pinned anew; every other must show its pinned key.
            known = session.known_hosts(inventory, recreated=recreated)
        resume = policy.resume_point(
            session.previous_run, retry=options.retry, playbooks=[p.playbook for p in spec.playbooks],
            changes=changes, version=spec.version, digest=digest,
        )  # fmt: skip
        plays, only = list(spec.playbooks), None
        if resume is not None:  # those before it succeeded everywhere in the failed run, and nothing changed since
            plays = plays[[p.playbook for p in plays].index(resume[0]) :]
            only = resume[1]
        played = session.playbooks(plays, inventory=inventory, known_hosts=known, only=only)
        session.hooks("after_ansible", "provision")
    session.hooks("after_provision", "provision")
    shown: dict[str, Any] = {
        name: MASK if out.sensitive else masked(session.value(out.value, where=f"outputs.{name}"))
        for name, out in spec.outputs.items()
    }
    return ProvisionResult(
        deployment=session.deployment, blueprint=spec.name, version=spec.version, params=session.params.masked(),
        hosts=inventory.hosts, outputs=shown, terraform=changes, ansible=played, timings=session.timings,
        started_at=session.started_at, finished_at=datetime.now(UTC),
    )  # fmt: skip


def _check(session: Session, options: RunOptions, module: str, mp: ModulePlan, *, applied: list[str]) -> None:
    """The destroy policy and, with a reviewed plan, that this module's changes are the reviewed ones."""
    if mp.plan is None:
        return  # deferred: checked when it is planned, once the modules it reads are applied
    policy.check_destroys(mp.plan.resources, deployment=session.deployment, allow_destroy=options.allow_destroy,
                          applied=applied)  # fmt: skip
    if options.plan is not None:
        policy.check_reviewed(options.plan, deployment=session.deployment, params=session.params.masked(),
                              module=module, found=mp.plan.resources, applied=applied)  # fmt: skip
