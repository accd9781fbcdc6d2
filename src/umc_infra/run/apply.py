"""Provision: plan every module, check the policy and the reviewed plan, apply in dependency order, configure.

``addresses -> plan (all modules) -> policy -> apply (each module; re-planned and checked again when its inputs
moved) -> inventory -> ssh + host keys -> playbooks -> record``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from datetime import UTC, datetime
from typing import Any

from umc_infra.ansible import inventory as _inventory
from umc_infra.ansible.inventory import Host, Inventory
from umc_infra.ansible.runner import PlaybookResult
from umc_infra.blueprint.content import module_interface
from umc_infra.blueprint.references import dependency_order, playbooks_read_outputs
from umc_infra.errors import Cancelled, RollbackFailed, SshUnreachable, UmcInfraError
from umc_infra.params import MASK
from umc_infra.run import policy
from umc_infra.run.destroy import destroy_modules
from umc_infra.run.journal import Journal, error_text
from umc_infra.run.options import RunOptions
from umc_infra.run.plan import ModulePlan, plan_modules
from umc_infra.run.recovery import recover
from umc_infra.run.results import ProvisionResult, masked
from umc_infra.run.session import Session
from umc_infra.run.tools import AnsibleTool
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
        result = _provision(session, options, changes, applied, digest, existing)
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
    session: Session,
    options: RunOptions,
    changes: dict[str, ChangeCounts],
    applied: list[str],
    digest: str,
    existing: DeploymentRecord | None,
) -> ProvisionResult:
    spec = session.spec
    session.addresses()
    session.hooks("before_terraform", "provision")
    recreated: set[str] = set()
    early = _Early(session, existing) if existing and _may_configure_early(session, options, existing, digest) else None
    try:
        with session.scratch() as scratch:
            # Plan every module first: the destroy policy and a reviewed plan are checked before anything applies.
            planned = plan_modules(session, scratch)
            with session.step("policy"):
                for module, found in planned.items():
                    _check(session, options, module, found, applied=[])
            if early is not None and any(mp.plan is None or mp.plan.resources for mp in planned.values()):
                early.forget()  # Terraform changes something: the hosts are configured after it, as ever
                early = None
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
        played: dict[str, PlaybookResult] | None = None
        if early is not None and early.hosts == inventory.hosts and all(c == ChangeCounts() for c in changes.values()):
            played = early.outcome()  # the hosts were configured while Terraform planned (None: they were not)
        if played is None and spec.playbooks and spec.ansible is not None:
            if early is not None:
                early.forget()
                early = None
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
    finally:
        if early is not None:
            early.stop()
    session.hooks("after_provision", "provision")
    shown: dict[str, Any] = {
        name: MASK if out.sensitive else masked(session.value(out.value, where=f"outputs.{name}"))
        for name, out in spec.outputs.items()
    }
    return ProvisionResult(
        deployment=session.deployment, blueprint=spec.name, version=spec.version, params=session.params.masked(),
        hosts=inventory.hosts, outputs=shown, terraform=changes, ansible=played or {}, timings=session.timings,
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


def _may_configure_early(session: Session, options: RunOptions, record: DeploymentRecord, digest: str) -> bool:
    """Whether a provision may run the playbooks on the recorded hosts while Terraform plans (a converge).

    Only when the deployment is active and its last run succeeded with these params and this blueprint version
    (the playbooks then get what they got then), without a reviewed plan or hooks (which have their place in
    the order of the run), and when no playbook var reads a module's outputs (known only after the plan).
    """
    spec, previous = session.spec, session.previous_run
    return (
        session.settings.converge_early and spec.ansible is not None and bool(spec.playbooks) and not spec.hooks
        and options.plan is None and record.state == "active" and bool(record.hosts)
        and record.version == spec.version and previous is not None and previous.outcome == "succeeded"
        and previous.params_digest == digest and previous.blueprint_version == spec.version
        and not playbooks_read_outputs(spec)
    )  # fmt: skip


class _Early:
    """A converge's playbooks, run on the recorded hosts in a thread of their own while Terraform plans.

    The run takes their outcome only when Terraform changed nothing and the hosts are the recorded ones.
    Otherwise it waits for them, forgets them, and configures the hosts after Terraform's changes, as ever.
    They run only if every host answers SSH at once: a host that does not is waited for after Terraform.
    Their Ansible has a cancel of its own: stopped when the run fails, and what failed in them is the run's
    failed step only when the run takes their outcome.
    """

    def __init__(self, session: Session, record: DeploymentRecord) -> None:
        self.session = session
        self.hosts: tuple[Host, ...] = record.hosts
        session.remember_inventory(Inventory(hosts=record.hosts))  # what hosts.* read; set again after Terraform
        self.cancel = threading.Event()
        self.failed_steps: list[str] = []
        context = dataclasses.replace(session.context(), cancel=self.cancel)
        ansible = session.cleanup.enter_context(session.tools.ansible(context, session.spec.playbook_file))
        at_once = session.settings.model_copy(update={"ssh_wait_timeout_s": 0.01})  # one probe of each
        self.guests = session.tools.guests(dataclasses.replace(context, settings=at_once))
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="umc-early")
        self.future = self.pool.submit(self._run, ansible)

    def _run(self, ansible: AnsibleTool) -> dict[str, PlaybookResult] | None:
        session, inventory = self.session, Inventory(hosts=self.hosts)
        with session.failed_steps_aside() as aside:
            self.failed_steps = aside
            with session.step("ssh"):
                try:
                    self.guests.wait(inventory)
                except SshUnreachable:
                    return None  # a host does not answer at once: the run waits for it after Terraform, as ever
                known = session.known_hosts(inventory, recreated=(), by_vm_id=False)  # a converge pins nothing anew
            return session.playbooks(list(session.spec.playbooks), inventory=inventory, known_hosts=known,
                                     ansible=ansible)  # fmt: skip

    def outcome(self) -> dict[str, PlaybookResult] | None:
        """What the playbooks did, or their error (its step the run's failed step); None: they did not run."""
        try:
            return self.future.result()
        except BaseException:
            if self.session.failed_step is None and self.failed_steps:
                self.session.failed_step = self.failed_steps[0]
            raise

    def forget(self) -> None:
        """Wait for the playbooks to end, and forget what they did."""
        concurrent.futures.wait([self.future])
        self.pool.shutdown()

    def stop(self) -> None:
        """Stop the playbooks (the run ends, or failed), and wait for them."""
        self.cancel.set()
        self.forget()
