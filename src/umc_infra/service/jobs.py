"""The queue: a procrastinate app on PostgreSQL and its tasks, which run the library in the worker's process.

- ``umc.provision`` (create or update) and ``umc.destroy``: deferred with ``lock=<deployment>`` (one job of a
  deployment runs at a time, on any number of workers) and ``queueing_lock=<deployment>`` (a second request
  for a deployment that already has one queued is refused);
- retried only for transient failures (:data:`TRANSIENT`), with a growing wait, at most :data:`MAX_ATTEMPTS`;
- cancelled through procrastinate's abort: the task is cancelled, which sets the library's cancel event; the
  run stops its tool gracefully (Terraform saves its state) and the job ends ``cancelled``;
- every library event is stored as a job event (``job_started``, the library's kinds, ``job_finished``), and
  the outcome goes into the request's audit entry;
- ``umc.leases`` (every ten minutes): owners warned before a lease ends (an entry in their department's audit
  and a ``umc.lease_warning`` job of its own whose ``lease_warning`` event their portal reads, like any job's),
  a destroy queued when it has ended (:mod:`.leases`);
- ``umc.stalled`` (every minute): jobs whose worker died (no heartbeat) are marked with an event and queued
  again; the library's lease and dead-run recovery reconcile the deployment on the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from procrastinate import App, JobContext, RetryStrategy
from procrastinate.connector import BaseConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Status
from pydantic import BaseModel, ConfigDict

from umc_infra.errors import DeploymentLocked, DeploymentNotFound, SshUnreachable, StateBackendError, VCenterError
from umc_infra.events import Event, EventCallback
from umc_infra.service.leases import LeaseDue, due, horizon
from umc_infra.service.policy import Policy
from umc_infra.service.store import AuditEntry, Store, now

logger = logging.getLogger(__name__)

QUEUE = "umc"
PROVISION = "umc.provision"
DESTROY = "umc.destroy"
LEASE_WARNING = "umc.lease_warning"
MAX_ATTEMPTS = 3
STALLED_AFTER_S = 60.0
"""A worker silent this long (procrastinate's heartbeat is every 10 s) is taken for dead."""
TRANSIENT: tuple[type[Exception], ...] = (DeploymentLocked, StateBackendError, VCenterError, SshUnreachable)
"""Failures a later attempt may not meet: another run holds the deployment (a CLI run, a lease not yet
expired), the state backend or vCenter did not answer, a VM had not answered SSH yet. Everything else (bad
params, a secret denied, Terraform or a playbook failing, a refused change) fails the job at once."""
RETRY = RetryStrategy(max_attempts=MAX_ATTEMPTS, exponential_wait=5, retry_exceptions=TRANSIENT)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_STATES: dict[Status, JobState] = {
    Status.TODO: "queued", Status.DOING: "running", Status.ABORTING: "running", Status.SUCCEEDED: "succeeded",
    Status.FAILED: "failed", Status.CANCELLED: "cancelled", Status.ABORTED: "cancelled",
}  # fmt: skip
FINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})


def job_state(status: Status) -> JobState:
    """The API's state of a procrastinate status."""
    return _STATES[status]


class Runner(Protocol):
    """What a job runs: the library (tests pass a fake). Returns the result as JSON data."""

    def provision(self, blueprint: str, params: Mapping[str, Any], *, deployment: str, on_event: EventCallback,
                  cancel: threading.Event, asked: Asked) -> dict[str, Any]:  # fmt: skip
        """Create or update a deployment."""
        ...

    def destroy(self, deployment: str, *, on_event: EventCallback, cancel: threading.Event,
                asked: Asked) -> dict[str, Any]:  # fmt: skip
        """Remove a deployment."""
        ...


class Asked(BaseModel):
    """Who asked for a job and under which ticket: the library keeps both in the deployment's record."""

    model_config = ConfigDict(frozen=True)

    requested_by: str | None = None
    ticket: str | None = None


class LibraryRunner:
    """The library in this process, with its settings from the environment (``UMC_*``) read per run."""

    def provision(self, blueprint: str, params: Mapping[str, Any], *, deployment: str, on_event: EventCallback,
                  cancel: threading.Event, asked: Asked) -> dict[str, Any]:  # fmt: skip
        """:meth:`umc_infra.Provisioner.provision`."""
        from umc_infra.run.options import RunOptions
        from umc_infra.run.provisioner import Provisioner

        result = Provisioner(on_event=on_event, cancel=cancel).provision(
            blueprint, params, deployment=deployment, options=RunOptions(**asked.model_dump())
        )
        return result.model_dump(mode="json")

    def destroy(self, deployment: str, *, on_event: EventCallback, cancel: threading.Event,
                asked: Asked) -> dict[str, Any]:  # fmt: skip
        """:meth:`umc_infra.Provisioner.destroy`; a deployment the backend has no record of is already gone.

        (A first provision that failed before its record was written leaves the service's ownership only.)
        """
        from umc_infra.run.options import RunOptions
        from umc_infra.run.provisioner import Provisioner

        try:
            found = Provisioner(on_event=on_event, cancel=cancel).destroy(
                deployment, options=RunOptions(**asked.model_dump())
            )
            return found.model_dump(mode="json")
        except DeploymentNotFound:
            return {"deployment": deployment, "already_destroyed": True, "record": None}


@dataclass(frozen=True)
class Runtime:
    """What the tasks use: the service's store and the runner (the API process defers, never runs, them)."""

    store: Store
    runner: Runner
    policy: Policy | None = None
    """For the lease task (a worker loads it; without it, leases are not enforced by this process)."""


class JobFinished(BaseModel):
    """The data of a job's last event."""

    state: JobState
    error: str | None = None
    error_type: str | None = None
    result: dict[str, Any] | None = None


def build_app(connector: BaseConnector, runtime: Runtime) -> App:
    """The procrastinate app with the service's tasks (the API defers them, a worker runs them)."""
    app = App(connector=connector)

    @app.task(name=PROVISION, queue=QUEUE, pass_context=True, retry=RETRY)
    async def provision(context: JobContext, *, blueprint: str, deployment: str, params: dict[str, Any],
                        audit: int, requested_by: str | None = None, ticket: str | None = None) -> None:  # fmt: skip
        asked = Asked(requested_by=requested_by, ticket=ticket)

        def run(on_event: EventCallback, cancel: threading.Event) -> dict[str, Any]:
            return runtime.runner.provision(blueprint, params, deployment=deployment, on_event=on_event,
                                              cancel=cancel, asked=asked)  # fmt: skip

        await _run(context, runtime.store, audit, run)

    @app.task(name=DESTROY, queue=QUEUE, pass_context=True, retry=RETRY)
    async def destroy(context: JobContext, *, deployment: str, audit: int, requested_by: str | None = None,
                      ticket: str | None = None) -> None:  # fmt: skip
        asked = Asked(requested_by=requested_by, ticket=ticket)

        def run(on_event: EventCallback, cancel: threading.Event) -> dict[str, Any]:
            return runtime.runner.destroy(deployment, on_event=on_event, cancel=cancel, asked=asked)

        await _run(context, runtime.store, audit, run)
        await runtime.store.forget(deployment)

    @app.task(name=LEASE_WARNING, queue=QUEUE, pass_context=True)
    async def lease_warning(context: JobContext, *, deployment: str, lease_until: str, audit: int) -> None:
        job = context.job.id
        assert job is not None
        add = functools.partial(runtime.store.add_event, job)
        warning = {"deployment": deployment, "lease_until": lease_until,
                   "note": "the lease of this deployment ends soon: extend it, or it is destroyed then"}  # fmt: skip
        await add("lease_warning", warning)
        await _finish(add, runtime.store, audit, JobFinished(state="succeeded", result=warning),
                      f"warned: lease ends {lease_until}")  # fmt: skip

    @app.periodic(cron="* * * * *", periodic_id="stalled")
    @app.task(name="umc.stalled", queue=QUEUE, queueing_lock="umc.stalled", pass_context=True)
    async def stalled(context: JobContext, timestamp: int) -> None:
        await requeue_stalled(context.app, runtime.store)

    @app.periodic(cron="*/10 * * * *", periodic_id="leases")
    @app.task(name="umc.leases", queue=QUEUE, queueing_lock="umc.leases", pass_context=True)
    async def leases(context: JobContext, timestamp: int) -> None:
        if runtime.policy is not None:
            await enforce_leases(context.app, runtime.store, runtime.policy, at=now())

    return app


async def requeue_stalled(app: App, store: Store, *, seconds_since_heartbeat: float = STALLED_AFTER_S) -> list[int]:
    """Queue again the jobs whose worker stopped sending heartbeats (killed, or its machine lost); their ids.

    The job's events and its request's audit entry say so. The next run takes the deployment's lease once the
    dead run's has expired, and the library's recovery reconciles what that run left.
    """
    requeued = []
    for job in await app.job_manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=seconds_since_heartbeat):
        if job.id is None or job.task_name not in (PROVISION, DESTROY):
            continue
        await store.add_event(job.id, "worker_lost", {"note": "the worker running this job stopped answering; "
                                                      "the job is queued again and its next run recovers"})  # fmt: skip
        request = await store.request_of(job.id)
        if request is not None and request.id is not None:
            await store.update(request.id, outcome="worker lost: queued again")
        await app.job_manager.retry_job(job)
        requeued.append(job.id)
    return requeued


async def enforce_leases(app: App, store: Store, policy: Policy, *, at: datetime) -> list[LeaseDue]:
    """Warn the owners of leases ending soon (the audit and a warning job), queue a destroy of those that ended.

    What was due; a lease is warned of once (an extension clears it).
    """
    found = due(await store.leases_before(horizon(policy, at)), policy, at)
    for item in found:
        entry = AuditEntry(subject="umc-service", username="lease", department=item.department,
                           action="lease_warning" if item.kind == "warn" else "destroy", deployment=item.deployment,
                           outcome=f"lease ends {item.lease_until:%Y-%m-%d %H:%M} UTC")  # fmt: skip
        if item.kind == "warn":
            audit = await store.record(entry)
            await store.set_lease(item.deployment, item.lease_until, warned=True)
            job = await app.configure_task(LEASE_WARNING).defer_async(
                deployment=item.deployment, lease_until=item.lease_until.isoformat(), audit=audit
            )
            await store.update(audit, job=job)
            continue
        audit = await store.record(entry.model_copy(update={"outcome": "lease ended: destroy queued"}))
        try:
            job = await app.configure_task(DESTROY, lock=item.deployment, queueing_lock=item.deployment).defer_async(
                deployment=item.deployment, audit=audit
            )
        except AlreadyEnqueued:
            await store.update(audit, outcome="lease ended: a job for it is already queued; next round")
            continue
        await store.update(audit, job=job)
    return found


async def _run(context: JobContext, store: Store, audit: int,
               run: Callable[[EventCallback, threading.Event], dict[str, Any]]) -> None:  # fmt: skip
    """Run ``run`` in a thread; its events into the store, its outcome into the audit; an abort cancels it."""
    job = context.job.id
    assert job is not None
    loop = asyncio.get_running_loop()
    serial = asyncio.Lock()  # the library emits from several threads: the store numbers one at a time

    async def add(kind: str, data: dict[str, Any]) -> None:
        async with serial:
            await store.add_event(job, kind, data)

    def on_event(event: Event) -> None:
        future = asyncio.run_coroutine_threadsafe(add(event.kind, event.model_dump(mode="json")), loop)
        try:
            future.result(timeout=30)
        except Exception:  # a lost progress line must not fail the run
            logger.warning("job %s: could not store a %s event", job, event.kind, exc_info=True)

    await add("job_started", {"attempt": context.job.attempts + 1, "worker": context.worker_name})
    await store.update(audit, outcome="running", job=job)
    cancel = threading.Event()
    future = loop.run_in_executor(None, functools.partial(run, on_event, cancel))
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:  # aborted (the API's cancel, or the worker shutting down)
        cancel.set()
        with contextlib.suppress(BaseException):
            await future  # the run stops its tool gracefully; wait for it before the job ends
        await _finish(add, store, audit, JobFinished(state="cancelled"), "cancelled")
        raise
    except Exception as exc:
        retried = RETRY.get_retry_decision(exception=exc, job=context.job) is not None
        if retried:
            await add("job_retrying", {"error_type": type(exc).__name__, "error": str(exc),
                                       "attempt": context.job.attempts + 1})  # fmt: skip
            await store.update(audit, outcome=f"retrying: {type(exc).__name__}")
        else:
            finished = JobFinished(state="failed", error=str(exc), error_type=type(exc).__name__)
            await _finish(add, store, audit, finished, f"failed: {type(exc).__name__}: {exc}")
        raise
    await _finish(add, store, audit, JobFinished(state="succeeded", result=result), "succeeded")


async def _finish(add: Callable[[str, dict[str, Any]], Any], store: Store, audit: int, finished: JobFinished,
                  outcome: str) -> None:  # fmt: skip
    await add("job_finished", finished.model_dump(mode="json"))
    await store.update(audit, outcome=outcome)
