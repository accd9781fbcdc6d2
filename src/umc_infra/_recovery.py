"""Recovery: the first run on a deployment after a run that died.

A run killed outright (SIGKILL, the OOM killer, a lost CI runner, SIGTERM to a provision running off
the main thread) cannot write its outcome, release its lease or clean up. The next run on the
deployment finds out: it took the lease over from a holder that is gone or expired, or the record's
last run still says ``running`` while nobody holds the lease. Before it does anything else it:

1. records the dead run as ``abandoned`` (with what it was doing);
2. waits for the dead run's tools on this machine to stop (they got SIGINT when it died: Terraform
   finishes the resource operations in flight and writes its state) and removes its private directory
   (:func:`umc_infra._private.sweep`);
3. releases the Terraform state locks the dead run left in DynamoDB: those whose ids it recorded, and
   those its Terraform identity took while it ran (:mod:`umc_infra._tflock`);
4. repairs a local state file left empty by a Terraform killed while writing it (from Terraform's own
   ``.backup``);
5. removes VMs the dead run's apply created that Terraform's state does not know (a Terraform killed
   before it wrote its state): the journal noted the VMs each apply was to create before it started.

Then the run goes on as usual, and Terraform converges the deployment to exactly what is asked.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from umc_infra._lock import LockInfo
from umc_infra._records import DeploymentRecord, RunRecord

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
