"""The HTTP API (FastAPI): blueprints, deployments scoped by department, jobs and their event streams, the audit.

Every route but ``/openapi.json`` needs a bearer token (401 otherwise). A caller acts for the departments its
groups map to; an admin (an admin group) sees every department. Another department's deployment or job is
404 (its existence is not revealed); a blueprint the department may not use is 403 naming those it may; bad
params are 422 with the library's :class:`~umc_infra.errors.ParamProblem` list; a request over the
department's quota is 409 with the numbers, refused before anything is queued.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic as time_monotonic
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from procrastinate import App
from procrastinate.exceptions import AlreadyEnqueued
from pydantic import BaseModel, ConfigDict, Field

from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import (
    BlueprintNotFound,
    DeploymentLocked,
    Forbidden,
    NotFound,
    ParamProblem,
    ParamsError,
    QuotaExceeded,
    RequestConflict,
    ServiceError,
    SettingsError,
    UmcInfraError,
    Unauthenticated,
)
from umc_infra.params import Choices, ResolvedParams, check_request, form_schema, validate
from umc_infra.service import jobs
from umc_infra.service.auth import TokenVerifier
from umc_infra.service.policy import Access, Department, Policy
from umc_infra.service.quota import QuotaBreach, Usage, breach, usage
from umc_infra.service.store import AuditEntry, AuditQuery, JobEvent, Ownership, Store, now

EVENT_POLL_S = 0.5
"""How often an event stream looks for new events."""


class Planner(Protocol):
    """The library's read-only side for the API (called in a thread): plans and the site's live choices."""

    def plan(self, blueprint: str, params: Mapping[str, Any], *, deployment: str) -> dict[str, Any]:
        """What a provision would change (the plan as JSON data)."""
        ...

    def choices(self, blueprint: str) -> Choices:
        """The site's names for each kind of ``choices`` the blueprint's params declare."""
        ...


class LibraryPlanner:
    """:meth:`umc_infra.Provisioner.plan` with the library's settings from the environment."""

    def plan(self, blueprint: str, params: Mapping[str, Any], *, deployment: str) -> dict[str, Any]:
        """See :class:`Planner`."""
        from umc_infra.run.provisioner import Provisioner

        result = Provisioner().plan(blueprint, params, deployment=deployment)
        return {**result.model_dump(mode="json"), "counts": {m: c.model_dump(mode="json")
                                                             for m, c in result.counts.items()}}  # fmt: skip

    def choices(self, blueprint: str) -> Choices:
        """See :class:`Planner` (:meth:`umc_infra.Provisioner.choices`: read from vCenter, kept a short while)."""
        from umc_infra.run.provisioner import Provisioner

        return {str(kind): names for kind, names in Provisioner().choices(blueprint).items()}


@dataclass
class Service:
    """Everything the API uses; :func:`umc_infra.service.serve.build_service` makes the real one."""

    policy: Policy
    verifier: TokenVerifier
    store: Store
    queue: App
    catalog: Catalog
    planner: Planner
    site: Mapping[str, Any] = field(default_factory=dict)
    """The site settings, for a size input that reads one (``site.<name>``)."""


class BlueprintCache:
    """Blueprints loaded (in a thread: a load reads YAML and module files) and kept for ``ttl_s`` seconds.

    One load of a name at a time: callers that ask while it loads wait for that load (fifty portal pages
    opened at once load each blueprint once, not fifty times).

    Args:
        catalog: Where blueprints come from.
        ttl_s: How long a loaded blueprint is kept; a changed blueprint file is seen after at most this long.
    """

    def __init__(self, catalog: Catalog, *, ttl_s: float = 60.0) -> None:
        self.catalog = catalog
        self.ttl_s = ttl_s
        self._loaded: dict[str, tuple[float, Blueprint]] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def _kept(self, name: str) -> Blueprint | None:
        kept = self._loaded.get(name)
        return kept[1] if kept is not None and time_monotonic() - kept[0] < self.ttl_s else None

    async def load(self, name: str) -> Blueprint:
        """The blueprint (see :meth:`Catalog.load` for what it raises; failures are not kept)."""
        spec = self._kept(name)
        if spec is not None:
            return spec
        async with self._loading.setdefault(name, asyncio.Lock()):
            spec = self._kept(name)  # loaded while this caller waited
            if spec is None:
                spec = await run_in_threadpool(self.catalog.load, name)
                self._loaded[name] = (time_monotonic(), spec)
            return spec


# -- request and response models ----------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentRequest(_In):
    """Create or update a deployment (``POST /api/deployments``), or preview it (``POST /api/plans``)."""

    blueprint: str = Field(max_length=64)
    deployment: str = Field(max_length=64)
    params: dict[str, Any] = {}
    ticket: str | None = Field(default=None, max_length=200)
    """A change or ticket reference, kept in the audit."""
    lease_until: date | None = None
    """The end date (within the department's lease cap); default: the department's default lease."""
    department: str | None = None
    """Needed only when the caller acts for several departments (or is an admin acting for one)."""


class LeaseRequest(_In):
    """A new lease end for a deployment (``POST /api/deployments/{name}/lease``)."""

    lease_until: date | None
    ticket: str | None = Field(default=None, max_length=200)


class JobAccepted(BaseModel):
    """A queued job."""

    job: int
    action: str
    deployment: str
    department: str
    state: jobs.JobState = "queued"
    usage: Usage | None = None
    lease_until: datetime | None = None


class QuotaView(BaseModel):
    """A department's quota against what it uses and what a request would add."""

    department: str
    quota: dict[str, int]
    current: Usage
    requested: Usage
    fits: bool
    over: tuple[str, ...] = ()


class PlanView(BaseModel):
    """A plan preview: the library's plan, and the quota the request would use."""

    plan: dict[str, Any]
    quota: QuotaView


class DeploymentView(BaseModel):
    """A deployment the caller may see."""

    name: str
    department: str
    blueprint: str
    requested_by: str
    created: datetime
    lease_until: datetime | None
    lease_warned: bool = False
    params: dict[str, Any]
    usage: Usage


class JobView(BaseModel):
    """A job's state and the request behind it."""

    id: int
    state: jobs.JobState
    action: str
    deployment: str
    department: str
    requested_by: str
    outcome: str


class BlueprintSummary(BaseModel):
    """A blueprint a caller may use."""

    name: str
    version: str
    description: str
    departments: tuple[str, ...]


# -- errors -------------------------------------------------------------------------------------------


def _status(exc: UmcInfraError) -> int:
    """The HTTP status of an error: a refusal's own; bad input 422; unknown blueprint 404; another run 409."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, ParamsError | SettingsError):
        return 422
    if isinstance(exc, BlueprintNotFound):
        return 404
    if isinstance(exc, DeploymentLocked):
        return 409
    return 502  # the library failed talking to the site (Vault, vCenter, Terraform ...)


def error_document(exc: UmcInfraError) -> dict[str, Any]:
    """The body of an error answer: ``{"detail": {"message", "error_type", "step", ...}}``."""
    detail: dict[str, Any] = {"message": str(exc), "error_type": type(exc).__name__, "step": exc.step}
    if isinstance(exc, ParamsError | SettingsError):
        detail["problems"] = [p.model_dump() for p in exc.problems]
    if isinstance(exc, QuotaExceeded):
        detail |= {"department": exc.department, **exc.numbers, "over": list(exc.over)}
    return {"detail": detail}


def _www_authenticate(exc: Unauthenticated) -> str:
    """The ``WWW-Authenticate`` header of a 401 (RFC 6750)."""
    reason = exc.reason.replace('"', "'")
    return f'Bearer realm="umc-infra", error="invalid_token", error_description="{reason}"'


def _expected(error: Mapping[str, Any]) -> str:
    context = error.get("ctx") or {}
    if "expected" in context:
        return str(context["expected"])
    if "max_length" in context:
        return f"at most {context['max_length']} characters"
    return {"missing": "a value", "extra_forbidden": "only the documented fields"}.get(
        str(error["type"]), "see /openapi.json"
    )


def _problem(field: str, message: str, allowed: str) -> ParamsError:
    return ParamsError([ParamProblem(field=field, message=message, allowed=allowed)], blueprint=None, step="request")


def create_app(service: Service) -> FastAPI:
    """The API over ``service``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service.queue.open_async():
            await service.store.ensure_schema()
            try:
                yield
            finally:
                await service.store.close()

    api = FastAPI(title="umc-infra self-service", version="1", lifespan=lifespan)
    blueprints = BlueprintCache(service.catalog)
    bearer = HTTPBearer(auto_error=False)

    def access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Access:
        # A sync dependency: FastAPI runs it in a thread (the first call fetches the issuer's keys).
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthenticated("a bearer token is required")
        return service.policy.access(service.verifier.verify(credentials.credentials))

    Caller = Annotated[Access, Depends(access)]

    # -- blueprints -----------------------------------------------------------------------------------

    def usable(who: Access) -> dict[str, tuple[str, ...]]:
        """Blueprint name -> the caller's departments that may use it (an admin: every department)."""
        found: dict[str, list[str]] = {}
        for name, dept in service.policy.departments.items():
            if who.admin or name in who.departments:
                for blueprint in dept.blueprints:
                    found.setdefault(blueprint, []).append(name)
        return {k: tuple(v) for k, v in found.items()}

    @api.get("/api/me")
    async def me(who: Caller) -> Access:
        """The caller, its departments and whether it is an admin."""
        return who

    @api.get("/api/blueprints")
    async def list_blueprints(who: Caller) -> list[BlueprintSummary]:
        """The blueprints the caller's departments may use."""
        mine = usable(who)
        result = []
        for name in service.catalog.names():
            if name not in mine:
                continue
            try:
                spec = await blueprints.load(name)
            except UmcInfraError:
                continue  # a broken blueprint is not offered (`umc-infra blueprints check` names why)
            result.append(BlueprintSummary(name=name, version=spec.version, description=spec.description,
                                           departments=mine[name]))  # fmt: skip
        return result

    @api.get("/api/blueprints/{name}")
    async def blueprint_form(name: str, who: Caller) -> dict[str, Any]:
        """A blueprint's form: JSON Schema of the deployment name and the params (titles, defaults, bounds)."""
        if name not in usable(who):
            yours = ", ".join(sorted(usable(who)))
            raise NotFound(f"no blueprint {name!r} for your departments; yours: {yours}", step="request")
        spec = await blueprints.load(name)
        return {"name": spec.name, "version": spec.version, "description": spec.description,
                "schema": form_schema(spec, choices=await site_choices(spec))}  # fmt: skip

    async def site_choices(spec: Blueprint) -> Choices | None:
        """The live names the blueprint's params choose from (None: it declares none).

        Raises:
            VCenterError, SecretError, SettingsError: The site cannot be read (a 502/500 naming why).
        """
        if not any(p.choices for p in spec.params.values()):
            return None
        return await run_in_threadpool(service.planner.choices, spec.name)

    # -- checks shared by request and plan ------------------------------------------------------------

    def department_for(who: Access, asked: str | None) -> tuple[str, Department]:
        if asked is not None:
            if asked not in service.policy.departments or not who.may_see(asked):
                yours = ", ".join(who.departments) or "none"
                raise Forbidden(f"you do not act for department {asked!r}; yours: {yours}", step="request")
            return asked, service.policy.departments[asked]
        if len(who.departments) == 1:
            name = who.departments[0]
            return name, service.policy.departments[name]
        if not who.departments and not who.admin:
            raise Forbidden("your groups belong to no department of the policy", step="request")
        departments = ", ".join(who.departments or tuple(service.policy.departments))
        raise _problem("department", "required: say which department the request is for", departments)

    @dataclass
    class Checked:
        department: str
        dept: Department
        spec: Blueprint
        params: ResolvedParams
        asked: dict[str, Any]
        """What the run is given: the params asked, over those the service last gave it (never secret ones)."""
        usage: Usage
        existing: Ownership | None
        lease_until: datetime | None

    async def check(who: Access, body: DeploymentRequest, *, secrets: bool = False) -> Checked:
        department, dept = department_for(who, body.department)
        if body.blueprint not in dept.blueprints:
            raise Forbidden(f"department {department!r} may not use blueprint {body.blueprint!r}; it may use: "
                            f"{', '.join(dept.blueprints)}", step="request")  # fmt: skip
        existing = await service.store.ownership(body.deployment)
        if existing is not None and existing.department != department:
            raise RequestConflict(f"deployment name {body.deployment!r} is taken; choose another name", step="request")
        if existing is not None and existing.blueprint != body.blueprint:
            raise RequestConflict(f"deployment {body.deployment!r} is a {existing.blueprint!r} deployment, "
                                  f"not {body.blueprint!r}", step="request")  # fmt: skip
        spec = await blueprints.load(body.blueprint)  # BlueprintNotFound: 404; BlueprintError: 502
        secret = [ParamProblem(field=f"params.{n}", message="secret params cannot be passed through the service "
                               "(they would be stored in the job queue)", allowed="set it with the CLI or library")
                  for n in body.params if n in spec.params and spec.params[n].secret]  # fmt: skip
        if secret and not secrets:
            raise ParamsError(secret, blueprint=spec.name, step="request")
        kept = {k: v for k, v in (existing.params if existing else {}).items()
                if k in spec.params and not spec.params[k].secret}  # fmt: skip
        asked = {**kept, **body.params}
        asking = check_request(requested_by=who.caller.username, ticket=body.ticket)  # the library records both
        if asking:
            raise ParamsError(asking, blueprint=spec.name, step="request")
        resolved = validate(spec, asked, body.deployment, choices=await site_choices(spec))  # ParamsError: 422
        needed = usage(spec, resolved, site=service.site)  # a blueprint that cannot be sized: 502
        keep = existing is not None and body.lease_until is None  # an update keeps its lease unless it asks
        lease = existing.lease_until if existing is not None and keep else lease_end(dept, body.lease_until)
        return Checked(department, dept, spec, resolved, asked, needed, existing, lease)

    async def checked(who: Access, body: DeploymentRequest, action: str, *, secrets: bool = False) -> Checked:
        """:func:`check`; a refusal is audited too (no params: they were not checked), then raised."""
        try:
            return await check(who, body, secrets=secrets)
        except (ServiceError, ParamsError) as exc:
            await refused(who, action, exc, department=body.department, deployment=body.deployment,
                          blueprint=body.blueprint, ticket=body.ticket)  # fmt: skip
            raise

    async def refused(who: Access, action: str, exc: UmcInfraError, *, department: str | None, deployment: str,
                      blueprint: str | None = None, ticket: str | None = None) -> None:  # fmt: skip
        """Audit a refused request, under the department it named (or the caller's only one; else admins only)."""
        if department is None:
            department = who.departments[0] if len(who.departments) == 1 else ""
        await service.store.record(AuditEntry(
            subject=who.caller.subject, username=who.caller.username, department=department,
            action=action,  # type: ignore[arg-type]
            deployment=deployment, blueprint=blueprint, ticket=ticket, outcome=f"refused: {type(exc).__name__}: {exc}",
        ))  # fmt: skip

    def lease_end(dept: Department, asked: date | None) -> datetime | None:
        if dept.lease is None:
            return None if asked is None else datetime.combine(asked, time.max, UTC)
        today = now()
        latest = today + timedelta(days=dept.lease.max_days)
        if asked is None:
            return today + timedelta(days=dept.lease.default_days)
        end = datetime.combine(asked, time.max, UTC)
        if end < today or end.date() > latest.date():
            raise _problem(
                "lease_until",
                f"{asked.isoformat()} is outside the department's lease",
                f"{today.date()} to {latest.date()}",
            )
        return end

    def entry(who: Access, action: str, c: Checked | None, *, deployment: str, department: str,
              body: DeploymentRequest | None = None, **extra: Any) -> AuditEntry:  # fmt: skip
        return AuditEntry(
            subject=who.caller.subject, username=who.caller.username, department=department,
            action=action,  # type: ignore[arg-type]
            deployment=deployment, blueprint=c.spec.name if c else None, ticket=body.ticket if body else None,
            params=c.params.masked() if c else {}, **extra,
        )  # fmt: skip

    # -- deployments ----------------------------------------------------------------------------------

    @api.post("/api/deployments", status_code=202)
    async def request_deployment(body: DeploymentRequest, who: Caller) -> JobAccepted:
        """Create or update a deployment: checked (rights, params, quota) and queued; 202 with the job."""
        c = await checked(who, body, "provision")
        audit = await service.store.record(entry(who, "provision", c, deployment=body.deployment,
                                                 department=c.department, body=body))  # fmt: skip
        owner = Ownership(name=body.deployment, department=c.department, blueprint=c.spec.name,
                          requested_by=who.caller.username, lease_until=c.lease_until,
                          lease_warned=c.existing is not None and c.existing.lease_until == c.lease_until
                          and c.existing.lease_warned,
                          params=c.params.masked(), usage=c.usage)  # fmt: skip
        try:
            claim = await service.store.claim(owner, c.dept.quota)
        except RequestConflict:
            await service.store.update(audit, outcome="refused: name taken")
            raise
        if claim.breach is not None:
            await service.store.update(audit, outcome=f"refused: {claim.breach}")
            raise _quota_exceeded(claim.breach)
        await service.store.update(audit, outcome="queued")  # before the defer: a worker may start it at once
        try:
            job = await service.queue.configure_task(jobs.PROVISION, lock=body.deployment,
                                                     queueing_lock=body.deployment).defer_async(
                blueprint=c.spec.name, deployment=body.deployment, params=c.asked, audit=audit,
                requested_by=who.caller.username, ticket=body.ticket)  # fmt: skip
        except AlreadyEnqueued:
            await service.store.restore(body.deployment, claim.previous)
            await service.store.update(audit, outcome="refused: a job for it is already queued")
            raise _queued(body.deployment) from None
        await service.store.update(audit, job=job)
        return JobAccepted(job=job, action="provision", deployment=body.deployment, department=c.department,
                           usage=c.usage, lease_until=c.lease_until)  # fmt: skip

    @api.post("/api/plans")
    async def plan(body: DeploymentRequest, who: Caller) -> PlanView:
        """What a request would change (the library's plan), and the quota it would use; nothing is queued."""
        c = await checked(who, body, "plan", secrets=True)  # a plan runs here: secret params are never stored
        others = [o for o in await service.store.deployments([c.department]) if o.name != body.deployment]
        current = Usage.total(o.usage for o in others)
        over = breach(c.department, c.dept.quota, current, c.usage)
        quota = QuotaView(department=c.department, quota=c.dept.quota.model_dump(), current=current,
                          requested=c.usage, fits=over is None, over=over.over if over else ())  # fmt: skip
        try:
            planned = await run_in_threadpool(service.planner.plan, c.spec.name, c.asked,
                                              deployment=body.deployment)  # fmt: skip
        except UmcInfraError as exc:
            await service.store.record(entry(who, "plan", c, deployment=body.deployment, department=c.department,
                                             body=body, outcome=f"failed: {type(exc).__name__}"))  # fmt: skip
            raise
        await service.store.record(entry(who, "plan", c, deployment=body.deployment, department=c.department,
                                         body=body, plan=_plan_summary(planned), outcome="planned"))  # fmt: skip
        return PlanView(plan=planned, quota=quota)

    async def visible(who: Access, name: str) -> Ownership:
        owner = await service.store.ownership(name)
        if owner is None or not who.may_see(owner.department):
            raise NotFound(f"no deployment {name!r} among your departments' deployments", step="request")
        return owner

    @api.get("/api/deployments")
    async def list_deployments(who: Caller) -> list[DeploymentView]:
        """The deployments of the caller's departments (an admin: all)."""
        owners = await service.store.deployments(None if who.admin else who.departments)
        return [DeploymentView.model_validate(o.model_dump()) for o in owners]

    @api.get("/api/deployments/{name}")
    async def show_deployment(name: str, who: Caller) -> DeploymentView:
        """One deployment (404 if it is not the caller's departments')."""
        return DeploymentView.model_validate((await visible(who, name)).model_dump())

    @api.post("/api/deployments/{name}/lease")
    async def extend_lease(name: str, body: LeaseRequest, who: Caller) -> DeploymentView:
        """Set a deployment's lease end (within its department's cap from today); clears the warning."""
        owner = await visible(who, name)
        end = lease_end(service.policy.departments[owner.department], body.lease_until)
        await service.store.set_lease(name, end, warned=False)
        await service.store.record(AuditEntry(
            subject=who.caller.subject, username=who.caller.username, department=owner.department, action="extend",
            deployment=name, blueprint=owner.blueprint, ticket=body.ticket,
            outcome=f"lease until {end:%Y-%m-%d}" if end else "no end date",
        ))  # fmt: skip
        return DeploymentView.model_validate((await visible(who, name)).model_dump())

    @api.delete("/api/deployments/{name}", status_code=202)
    async def destroy_deployment(name: str, who: Caller, ticket: str | None = None) -> JobAccepted:
        """Queue a destroy; 202 with the job."""
        try:
            owner = await visible(who, name)
            asking = check_request(requested_by=who.caller.username, ticket=ticket)  # the library records both
            if asking:
                raise ParamsError(asking, blueprint=owner.blueprint, step="request")
        except (NotFound, ParamsError) as exc:
            await refused(who, "destroy", exc, department=None, deployment=name, ticket=None)
            raise
        audit = await service.store.record(AuditEntry(
            subject=who.caller.subject, username=who.caller.username, department=owner.department, action="destroy",
            deployment=name, blueprint=owner.blueprint, ticket=ticket, params={}, outcome="queued"))  # fmt: skip
        try:
            job = await service.queue.configure_task(jobs.DESTROY, lock=name, queueing_lock=name).defer_async(
                deployment=name, audit=audit, requested_by=who.caller.username, ticket=ticket
            )
        except AlreadyEnqueued:
            await service.store.update(audit, outcome="refused: a job for it is already queued")
            raise _queued(name) from None
        await service.store.update(audit, job=job)
        return JobAccepted(job=job, action="destroy", deployment=name, department=owner.department)

    # -- jobs -----------------------------------------------------------------------------------------

    async def job_of(who: Access, job: int) -> AuditEntry:
        request = await service.store.request_of(job)
        if request is None or not who.may_see(request.department):
            raise NotFound(f"no job {job} among your departments' jobs", step="request")
        return request

    async def state_of(job: int) -> jobs.JobState:
        return jobs.job_state(await service.queue.job_manager.get_job_status_async(job))

    @api.get("/api/jobs/{job}")
    async def show_job(job: int, who: Caller) -> JobView:
        """A job's state: queued, running, succeeded, failed or cancelled."""
        request = await job_of(who, job)
        return _job_view(job, await state_of(job), request)

    @api.post("/api/jobs/{job}/cancel", status_code=202)
    async def cancel_job(job: int, who: Caller) -> JobView:
        """Cancel a queued job, or ask a running one to stop (its tool stops gracefully)."""
        request = await job_of(who, job)
        before = await state_of(job)
        if before in jobs.FINAL or not await service.queue.job_manager.cancel_job_by_id_async(job, abort=True):
            raise RequestConflict(f"job {job} has already ended ({await state_of(job)})", step="request")
        state = await state_of(job)
        if state == "cancelled" and request.id is not None:  # it never started: no worker will say so
            await service.store.add_event(job, "job_finished", jobs.JobFinished(state="cancelled").model_dump())
            await service.store.update(request.id, outcome="cancelled")
        await service.store.record(AuditEntry(
            subject=who.caller.subject, username=who.caller.username, department=request.department,
            action="cancel", deployment=request.deployment, blueprint=request.blueprint, job=None,
            outcome=f"cancel requested for job {job}"))  # fmt: skip
        return _job_view(job, state, request)

    @api.get("/api/jobs/{job}/events")
    async def job_events(job: int, who: Caller, request: Request,
                         last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:  # fmt: skip
        """The job's events as server-sent events, from the start or after ``Last-Event-ID``; ends with the job."""
        await job_of(who, job)
        try:
            after = int(last_event_id) if last_event_id else 0
        except ValueError:
            raise _problem("Last-Event-ID", "is not an event id", "the id of the last event seen") from None
        return StreamingResponse(_stream(job, after, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    async def _stream(job: int, after: int, request: Request) -> AsyncIterator[str]:
        while True:
            events = await service.store.events(job, after=after)
            for event in events:
                after = event.id
                yield _sse(event)
            if any(e.kind == "job_finished" for e in events):
                return
            if not events:
                if await state_of(job) in jobs.FINAL and not await service.store.events(job, after=after):
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(EVENT_POLL_S)

    # -- audit ----------------------------------------------------------------------------------------

    @api.get("/api/audit")
    async def audit(who: Caller, department: str | None = None, user: str | None = None,
                    deployment: str | None = None, since: datetime | None = None, until: datetime | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[AuditEntry]:  # fmt: skip
        """Audit entries of the caller's departments (an admin: all), filtered, oldest first."""
        scope = None if who.admin else who.departments
        query = AuditQuery(departments=scope, department=department, user=user, deployment=deployment, since=since,
                           until=until, limit=limit)  # fmt: skip
        return await service.store.audit(query)

    @api.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The request body or query itself is malformed: answered as the library's problems are, field by field.
        problems = [ParamProblem(field=".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                                 message=str(e["msg"]), allowed=_expected(e)) for e in exc.errors()]  # fmt: skip
        error = ParamsError(problems, blueprint=None, step="request")
        return JSONResponse(status_code=422, content=error_document(error))

    @api.exception_handler(UmcInfraError)
    async def answer_refusal(request: Request, exc: UmcInfraError) -> JSONResponse:
        headers = {"WWW-Authenticate": _www_authenticate(exc)} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(status_code=_status(exc), content=error_document(exc), headers=headers)

    return api


def _job_view(job: int, state: jobs.JobState, request: AuditEntry) -> JobView:
    return JobView(id=job, state=state, action=request.action, deployment=request.deployment,
                   department=request.department, requested_by=request.username, outcome=request.outcome)  # fmt: skip


def _sse(event: JobEvent) -> str:
    """One server-sent event: its id (for Last-Event-ID), its kind, and the event as JSON."""
    data = json.dumps({"id": event.id, "kind": event.kind, "at": event.at.isoformat(), "data": event.data})
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


def _quota_exceeded(found: QuotaBreach) -> QuotaExceeded:
    numbers = {"quota": found.quota.model_dump(), "current": found.current.model_dump(),
               "requested": found.requested.model_dump()}  # fmt: skip
    return QuotaExceeded(str(found), department=found.department, numbers=numbers, over=found.over)


def _queued(deployment: str) -> RequestConflict:
    return RequestConflict(f"a job for deployment {deployment!r} is already queued; wait for it or cancel it",
                           step="request")  # fmt: skip


def _plan_summary(planned: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a plan: the counts per module, the param changes and its fingerprint."""
    return {key: planned.get(key) for key in ("fingerprint", "counts", "param_changes", "exists", "deferred")}
