"""Recovery: the first run on a deployment after a run that died.

A run killed outright (SIGKILL, the OOM killer, a lost CI runner, SIGTERM to a provision running off
the main thread) cannot write its outcome, release its lease or clean up. The next run on the
deployment finds out: it took the lease over from a holder that is gone or expired, or the record's
last run still says ``running`` while nobody holds the lease. Before it does anything else it:

1. records the dead run as ``abandoned`` (with what it was doing);
2. waits for the dead run's tools on this machine to stop (they got SIGINT when it died: Terraform
   finishes the resource operations in flight and writes its state) and removes its private directory
   (:func:`umc_infra.private.sweep`);
3. releases the Terraform state locks the dead run left in DynamoDB: those whose ids it recorded, and
   those its Terraform identity took while it ran (:mod:`umc_infra.terraform.statelock`);
4. repairs a local state file left empty by a Terraform killed while writing it (from Terraform's own
   ``.backup``);
5. removes VMs the dead run's apply created that Terraform's state does not know (a Terraform killed
   before it wrote its state): the journal noted the VMs each apply was to create before it started.

Then the run goes on as usual, and Terraform converges the deployment to exactly what is asked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from umc_infra import vcenter
from umc_infra.errors import RecoveryError
from umc_infra.events import OutputLine
from umc_infra.private import working_in
from umc_infra.state.lease import LockInfo
from umc_infra.state.records import DeploymentRecord, RunRecord
from umc_infra.terraform import statelock

if TYPE_CHECKING:
    from umc_infra.run.session import Session

log = logging.getLogger("umc_infra")


class DeadRun(BaseModel):
    """What is known of a run that died: its lease (if it was taken over) and its record (if it wrote one)."""

    model_config = ConfigDict(frozen=True)

    holder: LockInfo | None = None
    """The lease it held, if this run took it over (its holder was gone or its lease expired)."""
    run: RunRecord | None = None
    """Its record: still ``running`` (its process died), or failed with Terraform's work in flight (a state
    Terraform could not save): then only the VMs it may have left are looked for."""

    @property
    def died(self) -> bool:
        """Whether its process died (rather than failing and saying so)."""
        return self.run is None or self.run.outcome == "running"

    @property
    def since(self) -> datetime | None:
        """When it started (lease or record)."""
        times = [t for t in (self.holder.since if self.holder else None, self.run.started_at if self.run else None)
                 if t is not None]  # fmt: skip
        return min(times) if times else None

    @property
    def who(self) -> str | None:
        """The ``user@host`` its Terraform wrote into state locks (or the host it ran on)."""
        return self.run.terraform_who if self.run and self.run.terraform_who else None

    @property
    def lock_ids(self) -> tuple[str, ...]:
        """State lock ids it recorded."""
        return tuple(i for f in (self.run.in_flight.values() if self.run else ()) for i in f.lock_ids)

    def in_flight(self, module: str) -> bool:
        """Whether its Terraform was working on ``module`` when it stopped."""
        return self.run is not None and module in self.run.in_flight

    def new_vms(self, module: str) -> tuple[str, ...]:
        """VMs its apply of ``module`` was to create when it died."""
        flight = self.run.in_flight.get(module) if self.run else None
        return flight.new_vms if flight else ()

    def describe(self) -> str:
        """``provision by alice@ci-7 pid 42, started 2026-11-26 13:10:00 UTC`` (and how it ended, if it did)."""
        if self.holder is not None:
            who, what = self.holder.holder, self.holder.operation
        else:
            who = self.run.actor.user + "@" + self.run.actor.host if self.run else "?"
            what = self.run.action if self.run else "?"
        since = self.since
        return f"{what} by {who}" + (f", started {since:%Y-%m-%d %H:%M:%S} UTC" if since else "")


def dead_run(record: DeploymentRecord | None, taken_over: LockInfo | None) -> DeadRun | None:
    """The run before this one, if it died or failed with Terraform's work in flight.

    Called while holding the lease: a last run still ``running`` is dead (its holder would hold the lease).
    """
    last = record.last_run if record is not None else None
    if last is not None and (last.outcome == "running" or (last.outcome != "succeeded" and last.in_flight)):
        return DeadRun(holder=taken_over, run=last)
    return DeadRun(holder=taken_over) if taken_over is not None else None


def recover(session: Session, *, full: bool) -> None:
    """Clean up after a run on the session's deployment that died (nothing to do if the last run did not).

    ``full`` (provision, destroy): also record it abandoned and remove the VMs it left that no state knows;
    plan and drift only release its state locks and repair damaged state, which they need to read.
    """
    dead = session.dead
    if dead is None:
        return
    with session.step("recover"):
        how = "died" if dead.died else f"{dead.run.outcome if dead.run else 'failed'} while Terraform worked"
        _tell(session, f"the last run ({dead.describe()}) {how}; cleaning up after it")
        record = session.records.get(session.deployment)
        if full and record is not None and dead.run is not None and dead.died:
            abandoned = dead.run.model_copy(update={
                "outcome": "abandoned", "finished_at": datetime.now(UTC),
                "error": "the run's process died before it finished; the next run cleaned up after it",
            })  # fmt: skip
            state = "interrupted" if record.state == "provisioning" else record.state
            session.records.update_run(record, abandoned, state=state)
        modules = [m for m in dict.fromkeys((*(record.modules if record else ()), *session.spec.modules))
                   if m in session.spec.modules]  # fmt: skip
        orphans: list[str] = []
        for module in modules:
            _release_stale_lock(session, module, dead)
            if full and dead.new_vms(module):
                known = session.terraform.state_vms(session.init_only(module), module=module)
                orphans += [vm for vm in dead.new_vms(module) if vm not in known]
        if orphans:
            _remove_orphans(session, orphans, dead)
        session.dead = None


def _tell(session: Session, line: str) -> None:
    session.emit(OutputLine(deployment=session.deployment, step="recover", line=line))


def _release_stale_lock(session: Session, module: str, dead: DeadRun) -> None:
    """Release the module's state lock in DynamoDB if the dead run left it."""
    if not statelock.applies(session.settings) or dead.since is None:
        return
    lock = statelock.read(session.settings, session.deployment, module)
    if lock is None:
        return
    stale = statelock.is_stale(lock, recorded=dead.lock_ids, who=dead.who if dead.died else None, since=dead.since,
                               in_flight=dead.in_flight(module))  # fmt: skip
    if stale and working_in(session.workdir(module)):
        return  # a live process works in the module's directory (the dead run's Terraform still saving, a person):
        # Terraform's -lock-timeout waits for it rather than breaking its lock
    if not stale:
        raise RecoveryError(
            f"module {module!r} of deployment {session.deployment!r} has a Terraform state lock ({lock.id}, held by "
            f"{lock.who} since {lock.created}) that the run which died did not take. If no Terraform runs on it, "
            f"release it with `terraform force-unlock {lock.id}`; nothing was changed",
            step="recover",
        )
    _tell(session, f"releasing the state lock {lock.id} of module {module!r} that the run left")
    session.terraform.force_unlock(session.init_only(module), module=module, lock_id=lock.id)


def _remove_orphans(session: Session, vms: list[str], dead: DeadRun) -> None:
    """Remove VMs the dead run created that Terraform's state does not know (they would be duplicates)."""
    settings = session.settings
    if not settings.vsphere_credentials or not settings.vsphere_datacenter:
        raise RecoveryError(
            f"the last run of deployment {session.deployment!r} ({dead.describe()}) died while creating VMs; these "
            f"may exist in vCenter but not in Terraform's state: {', '.join(vms)}. Set UMC_VSPHERE_CREDENTIALS (and "
            "UMC_VSPHERE_DATACENTER) so umc_infra removes them, or remove them by hand; nothing was changed",
            step="recover",
        )
    user, password = vcenter.credentials(settings, session.secret_source)
    session.redactor.add(password)
    with vcenter.connect(settings, user, password) as si:
        for path in vms:
            vm = vcenter.find_vm(si, settings.vsphere_datacenter, path)
            if vm is not None:
                _tell(session, f"removing VM {path}: the run that died created it, no state knows it")
                vcenter.remove_vm(si, vm)
