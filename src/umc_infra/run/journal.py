"""The journal of a run: its entry in the deployment record, from start to finish.

One path for every operation that changes a deployment (provision, destroy): the run is written as
``running`` when it starts, what its Terraform is doing is written as it happens (the VMs an apply will
create, the ids of the state locks it takes), and the outcome when it ends: ``succeeded``, ``failed``,
``cancelled`` (cancelled from another thread, or a step's timeout) or ``interrupted`` (Ctrl-C, SIGTERM).
A run that died without writing its outcome is found by the next run on the deployment, which records it
as ``abandoned`` (see :mod:`umc_infra.run.recovery`).

Writes come from the run's thread and from Terraform's lock watcher: they are serialised here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from umc_infra.errors import Cancelled, UmcInfraError
from umc_infra.secrets.redact import Redactor
from umc_infra.state.records import Actor, DeploymentRecord, InFlight, Outcome, Records, RunRecord
from umc_infra.terraform.plan import ChangeCounts
from umc_infra.terraform.statelock import terraform_who


def outcome_of(exc: BaseException) -> Outcome:
    """How a run that raised ``exc`` ended."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, Cancelled):
        return "cancelled"
    return "failed"


def error_text(exc: BaseException, redactor: Redactor) -> str:
    """The error's message for the record: redacted; only the type of an error that is not ours."""
    return redactor(str(exc)) if isinstance(exc, UmcInfraError) else type(exc).__name__


class Journal:
    """Writes one run of one deployment into its record."""

    def __init__(self, records: Records, record: DeploymentRecord, run: RunRecord) -> None:
        self._records = records
        self._lock = threading.Lock()
        self.record = record
        self.run = run

    @classmethod
    def start(
        cls,
        records: Records,
        record: DeploymentRecord,
        *,
        action: Literal["provision", "destroy"],
        blueprint_version: str,
        params_digest: str | None = None,
        state: Any = None,
        requested_by: str | None = None,
        ticket: str | None = None,
    ) -> Journal:
        """Write a new run as ``running`` (and the deployment's ``state`` if given)."""
        run = RunRecord(
            action=action, outcome="running", actor=Actor.from_environment(), started_at=datetime.now(UTC),
            blueprint_version=blueprint_version, terraform_who=terraform_who(), params_digest=params_digest,
            requested_by=requested_by, ticket=ticket,
        )  # fmt: skip
        journal = cls(records, record, run)
        journal._write(run, **({"state": state} if state is not None else {}))
        return journal

    def _write(self, run: RunRecord, **changes: Any) -> None:
        with self._lock:
            self.run = run
            self.record = self._records.update_run(self.record, run, **changes)

    def working(self, module: str) -> None:
        """Before a Terraform command that takes ``module``'s state lock (plan, apply, destroy)."""
        with self._lock:
            if module in self.run.in_flight:
                return
            run = self.run.model_copy(update={"in_flight": {**self.run.in_flight, module: InFlight()}})
        self._write(run)

    def applying(self, module: str, new_vms: tuple[str, ...]) -> None:
        """Before an apply of ``module``: the VMs it will create."""
        with self._lock:
            current = self.run.in_flight.get(module, InFlight())
            update = {**self.run.in_flight, module: current.model_copy(update={"new_vms": new_vms})}
            run = self.run.model_copy(update={"in_flight": update})
        self._write(run)

    def lock_taken(self, module: str, lock_id: str) -> None:
        """A Terraform command of ``module`` took the state lock ``lock_id`` (from the lock watcher's thread)."""
        with self._lock:
            current = self.run.in_flight.get(module, InFlight())
            if lock_id in current.lock_ids:
                return
            update = {**self.run.in_flight, module: current.model_copy(update={"lock_ids": (*current.lock_ids,
                                                                                            lock_id)})}  # fmt: skip
            run = self.run.model_copy(update={"in_flight": update})
        self._write(run)

    def landed(self, module: str) -> None:
        """Terraform on ``module`` ended (its state is written, its lock released)."""
        with self._lock:
            if module not in self.run.in_flight:
                return
            run = self.run.model_copy(update={"in_flight": {k: v for k, v in self.run.in_flight.items()
                                                            if k != module}})  # fmt: skip
        self._write(run)

    def finish(
        self,
        outcome: Outcome,
        *,
        timings: dict[str, float],
        changes: dict[str, ChangeCounts] | None = None,
        error: str | None = None,
        failed_step: str | None = None,
        failed_hosts: tuple[str, ...] = (),
        record_changes: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the run's outcome, and ``record_changes`` to the record.

        A run that did not succeed keeps what was in flight: the next run checks for VMs no state knows.
        """
        with self._lock:
            run = self.run.model_copy(update={
                "outcome": outcome, "finished_at": datetime.now(UTC), "timings": timings,
                "in_flight": {} if outcome == "succeeded" else self.run.in_flight,
                "changes": changes if changes is not None else self.run.changes, "error": error,
                "failed_step": failed_step, "failed_hosts": failed_hosts,
            })  # fmt: skip
        self._write(run, **dict(record_changes or {}))

    def failed(
        self,
        exc: BaseException,
        *,
        redactor: Redactor,
        timings: dict[str, float],
        failed_step: str | None,
        changes: dict[str, ChangeCounts] | None = None,
        failed_hosts: tuple[str, ...] = (),
        record_changes: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Write the outcome of a run that raised ``exc``; returns it."""
        outcome = outcome_of(exc)
        self.finish(
            outcome, timings=timings, changes=changes, error=error_text(exc, redactor),
            failed_step=failed_step or getattr(exc, "step", None), failed_hosts=failed_hosts,
            record_changes=record_changes,
        )  # fmt: skip
        return outcome
