"""The service's own tables, next to procrastinate's in the same PostgreSQL: ownership, job events, audit.

- ownership: which department a deployment belongs to, its blueprint, who asked, when, its lease end, the
  params last asked (secret ones masked) and what it uses (for quotas);
- job events: every event of a job numbered from 1 (the library's typed events and the service's own), so a
  stream replays from the start or resumes after the last id seen;
- audit: every request (who, for which department, ticket, params masked, the plan shown, the outcome).

:class:`Store` is the interface; :class:`PgStore` the real one (psycopg 3, async), :class:`MemoryStore` the fake
unit tests use. :meth:`Store.claim` checks the quota and records ownership in one step, so two requests of a
department cannot both fit in the room one of them leaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from umc_infra.errors import RequestConflict
from umc_infra.service.policy import Quota
from umc_infra.service.quota import QuotaBreach, Usage, breach

Action = Literal["provision", "destroy", "plan", "cancel", "extend", "lease_warning"]


def now() -> datetime:
    """The current time (UTC)."""
    return datetime.now(UTC)


class Ownership(BaseModel):
    """A deployment the service made: whose it is and what it uses."""

    model_config = ConfigDict(frozen=True)

    name: str
    department: str
    blueprint: str
    requested_by: str
    created: datetime = Field(default_factory=now)
    lease_until: datetime | None = None
    lease_warned: bool = False
    """Its owners were warned that the lease ends soon (cleared when the lease is extended)."""
    params: dict[str, Any] = {}
    """The params last asked for (secret ones masked)."""
    usage: Usage = Usage()


class Claim(BaseModel):
    """The outcome of :meth:`Store.claim`: a quota breach (nothing recorded), or the ownership it replaced."""

    model_config = ConfigDict(frozen=True)

    breach: QuotaBreach | None = None
    previous: Ownership | None = None


class JobEvent(BaseModel):
    """One event of a job: ``id`` numbers the job's events from 1."""

    model_config = ConfigDict(frozen=True)

    job: int
    id: int
    kind: str
    at: datetime
    data: dict[str, Any]


class AuditEntry(BaseModel):
    """One request: who, for which department, what, and how it ended."""

    model_config = ConfigDict(frozen=True)

    id: int | None = None
    at: datetime = Field(default_factory=now)
    subject: str
    username: str
    department: str
    action: Action
    deployment: str
    blueprint: str | None = None
    ticket: str | None = None
    params: dict[str, Any] = {}
    """Secret params masked (the caller masks them: :func:`umc_infra.params.ResolvedParams.masked`)."""
    plan: dict[str, Any] | None = None
    """The plan shown (a summary), if one was."""
    outcome: str = "requested"
    """``requested``, ``queued``, ``refused: ...``, ``succeeded``, ``failed: ...``, ``cancelled``, ``planned``."""
    job: int | None = None


class AuditQuery(BaseModel):
    """Filters of the audit; ``departments`` (None: all) scopes it to what the caller may see."""

    model_config = ConfigDict(frozen=True)

    departments: tuple[str, ...] | None = None
    department: str | None = None
    user: str | None = None
    deployment: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=500, ge=1, le=5000)

    def matches(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` passes every filter."""
        return (
            (self.departments is None or entry.department in self.departments)
            and (self.department is None or entry.department == self.department)
            and (self.user is None or self.user in (entry.username, entry.subject))
            and (self.deployment is None or entry.deployment == self.deployment)
            and (self.since is None or entry.at >= self.since)
            and (self.until is None or entry.at <= self.until)
        )


class Store(Protocol):
    """The service's tables."""

    async def ensure_schema(self) -> None:
        """Create what is missing (idempotent)."""
        ...

    async def claim(self, owner: Ownership, quota: Quota) -> Claim:
        """Record ``owner`` unless the department's other deployments plus it exceed ``quota``.

        Raises:
            RequestConflict: The name belongs to another department.
        """
        ...

    async def restore(self, name: str, previous: Ownership | None) -> None:
        """Undo a claim (its job could not be queued): put ``previous`` back, or forget the name."""
        ...

    async def ownership(self, name: str) -> Ownership | None:
        """Whose ``name`` is, or None."""
        ...

    async def deployments(self, departments: Sequence[str] | None) -> list[Ownership]:
        """The deployments of ``departments`` (None: all), by name."""
        ...

    async def forget(self, name: str) -> None:
        """The deployment is destroyed: it no longer counts."""
        ...

    async def set_lease(self, name: str, lease_until: datetime | None, *, warned: bool) -> None:
        """Set a deployment's lease end, and whether its owners were warned of it."""
        ...

    async def leases_before(self, when: datetime) -> list[Ownership]:
        """The deployments whose lease ends at or before ``when``."""
        ...

    async def add_event(self, job: int, kind: str, data: dict[str, Any]) -> JobEvent:
        """Append an event to a job's stream."""
        ...

    async def events(self, job: int, *, after: int = 0) -> list[JobEvent]:
        """A job's events with an id above ``after``, in order."""
        ...

    async def record(self, entry: AuditEntry) -> int:
        """Add an audit entry; its id."""
        ...

    async def update(self, entry_id: int, *, outcome: str | None = None, job: int | None = None) -> None:
        """Set an entry's outcome and/or its job (None keeps what it has: a worker may have moved it on)."""
        ...

    async def request_of(self, job: int) -> AuditEntry | None:
        """The audit entry of the request behind ``job``."""
        ...

    async def audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``, oldest first."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """A :class:`Store` in memory, for unit tests."""

    def __init__(self) -> None:
        self.owners: dict[str, Ownership] = {}
        self.job_events: dict[int, list[JobEvent]] = {}
        self.entries: list[AuditEntry] = []
        self._lock = asyncio.Lock()

    async def ensure_schema(self) -> None:
        """Nothing to create."""

    async def claim(self, owner: Ownership, quota: Quota) -> Claim:
        """See :meth:`Store.claim`."""
        async with self._lock:
            previous = self.owners.get(owner.name)
            if previous is not None and previous.department != owner.department:
                raise _taken(owner.name)
            current = Usage.total(o.usage for o in self.owners.values()
                                  if o.department == owner.department and o.name != owner.name)  # fmt: skip
            found = breach(owner.department, quota, current, owner.usage)
            if found is not None:
                return Claim(breach=found, previous=previous)
            if previous is not None:  # an update keeps who made it and when
                owner = owner.model_copy(update={"created": previous.created, "requested_by": previous.requested_by})
            self.owners[owner.name] = owner
            return Claim(previous=previous)

    async def restore(self, name: str, previous: Ownership | None) -> None:
        """See :meth:`Store.restore`."""
        if previous is None:
            self.owners.pop(name, None)
        else:
            self.owners[name] = previous

    async def ownership(self, name: str) -> Ownership | None:
        """See :meth:`Store.ownership`."""
        return self.owners.get(name)

    async def deployments(self, departments: Sequence[str] | None) -> list[Ownership]:
        """See :meth:`Store.deployments`."""
        return [o for _, o in sorted(self.owners.items()) if departments is None or o.department in departments]

    async def forget(self, name: str) -> None:
        """See :meth:`Store.forget`."""
        self.owners.pop(name, None)

    async def set_lease(self, name: str, lease_until: datetime | None, *, warned: bool) -> None:
        """See :meth:`Store.set_lease`."""
        if name in self.owners:
            self.owners[name] = self.owners[name].model_copy(update={"lease_until": lease_until,
                                                                     "lease_warned": warned})  # fmt: skip

    async def leases_before(self, when: datetime) -> list[Ownership]:
        """See :meth:`Store.leases_before`."""
        return [o for _, o in sorted(self.owners.items()) if o.lease_until is not None and o.lease_until <= when]

    async def add_event(self, job: int, kind: str, data: dict[str, Any]) -> JobEvent:
        """See :meth:`Store.add_event`."""
        events = self.job_events.setdefault(job, [])
        event = JobEvent(job=job, id=len(events) + 1, kind=kind, at=now(), data=data)
        events.append(event)
        return event

    async def events(self, job: int, *, after: int = 0) -> list[JobEvent]:
        """See :meth:`Store.events`."""
        return [e for e in self.job_events.get(job, []) if e.id > after]

    async def record(self, entry: AuditEntry) -> int:
        """See :meth:`Store.record`."""
        entry_id = len(self.entries) + 1
        self.entries.append(entry.model_copy(update={"id": entry_id}))
        return entry_id

    async def update(self, entry_id: int, *, outcome: str | None = None, job: int | None = None) -> None:
        """See :meth:`Store.update`."""
        entry = self.entries[entry_id - 1]
        changes: dict[str, Any] = {}
        if outcome is not None:
            changes["outcome"] = outcome
        if job is not None:
            changes["job"] = job
        self.entries[entry_id - 1] = entry.model_copy(update=changes)

    async def request_of(self, job: int) -> AuditEntry | None:
        """See :meth:`Store.request_of`."""
        return next((e for e in self.entries if e.job == job), None)

    async def audit(self, query: AuditQuery) -> list[AuditEntry]:
        """See :meth:`Store.audit`."""
        return [e for e in self.entries if query.matches(e)][: query.limit]

    async def close(self) -> None:
        """Nothing to release."""


_TABLES = """
CREATE TABLE IF NOT EXISTS umc_service_deployments (
    name text PRIMARY KEY,
    department text NOT NULL,
    blueprint text NOT NULL,
    requested_by text NOT NULL,
    created timestamptz NOT NULL,
    lease_until timestamptz,
    lease_warned boolean NOT NULL DEFAULT false,
    params jsonb NOT NULL,
    usage jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS umc_service_deployments_department ON umc_service_deployments (department);
CREATE TABLE IF NOT EXISTS umc_service_job_events (
    job_id bigint NOT NULL,
    seq integer NOT NULL,
    kind text NOT NULL,
    at timestamptz NOT NULL,
    data jsonb NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS umc_service_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    subject text NOT NULL,
    username text NOT NULL,
    department text NOT NULL,
    action text NOT NULL,
    deployment text NOT NULL,
    blueprint text,
    ticket text,
    params jsonb NOT NULL,
    plan jsonb,
    outcome text NOT NULL,
    job_id bigint UNIQUE
);
CREATE INDEX IF NOT EXISTS umc_service_audit_department_at ON umc_service_audit (department, at);
CREATE INDEX IF NOT EXISTS umc_service_audit_deployment ON umc_service_audit (deployment);
"""
_SCHEMA_LOCK = 0x756D63  # one process at a time creates the schema ("umc")
# Queries are whole literals (values always bound): no SQL is ever assembled from data.
_OWNER_BY_NAME = (
    "SELECT name, department, blueprint, requested_by, created, lease_until, lease_warned, params, usage "
    "FROM umc_service_deployments WHERE name = %s"
)
_OWNERS = (
    "SELECT name, department, blueprint, requested_by, created, lease_until, lease_warned, params, usage "
    "FROM umc_service_deployments WHERE (%s::text[] IS NULL OR department = ANY(%s::text[])) ORDER BY name"
)
_INSERT_OWNER = (
    "INSERT INTO umc_service_deployments (name, department, blueprint, requested_by, created, lease_until, "
    "lease_warned, params, usage) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_OWNER = (
    _INSERT_OWNER + " ON CONFLICT (name) DO UPDATE SET blueprint = EXCLUDED.blueprint, "
    "lease_until = EXCLUDED.lease_until, lease_warned = EXCLUDED.lease_warned, params = EXCLUDED.params, "
    "usage = EXCLUDED.usage"
)
_LEASES_BEFORE = (
    "SELECT name, department, blueprint, requested_by, created, lease_until, lease_warned, params, usage "
    "FROM umc_service_deployments WHERE lease_until <= %s ORDER BY lease_until, name"
)
_AUDIT_SELECT = (
    "SELECT id, at, subject, username, department, action, deployment, blueprint, ticket, params, plan, outcome, "
    "job_id FROM umc_service_audit "
)
_AUDIT_BY_JOB = _AUDIT_SELECT + "WHERE job_id = %s"
_AUDIT_QUERY = _AUDIT_SELECT + (
    "WHERE (%(departments)s::text[] IS NULL OR department = ANY(%(departments)s::text[])) "
    "AND (%(department)s::text IS NULL OR department = %(department)s) "
    "AND (%(deployment)s::text IS NULL OR deployment = %(deployment)s) "
    "AND (%(user)s::text IS NULL OR username = %(user)s OR subject = %(user)s) "
    "AND (%(since)s::timestamptz IS NULL OR at >= %(since)s) "
    "AND (%(until)s::timestamptz IS NULL OR at <= %(until)s) "
    "ORDER BY at, id LIMIT %(limit)s"
)


class PgStore:
    """A :class:`Store` in PostgreSQL (psycopg 3, a small async pool).

    Args:
        database_url: ``postgresql://...``.
        max_size: Connections at most.
    """

    def __init__(self, database_url: SecretStr, *, max_size: int = 8) -> None:
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(database_url.get_secret_value(), min_size=1, max_size=max_size, open=False)
        self._opened = False

    def __repr__(self) -> str:
        return "PgStore(...)"  # never the URL: it carries the password

    async def _open(self) -> None:
        if not self._opened:
            await self._pool.open(wait=True, timeout=30)
            self._opened = True

    async def ensure_schema(self) -> None:
        """The service's tables, and procrastinate's schema when it is absent; under an advisory lock."""
        from procrastinate.schema import SchemaManager

        await self._open()
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
            try:
                row = await (await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).fetchone()
                if not (row and row[0]):
                    await conn.execute(SchemaManager.get_schema())
                await conn.execute(_TABLES)
                await conn.commit()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
                await conn.commit()

    async def claim(self, owner: Ownership, quota: Quota) -> Claim:
        """See :meth:`Store.claim` (the department's quota is checked under an advisory lock of the department)."""
        await self._open()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("umc-quota:" + owner.department,))
            previous = _owner(await (await conn.execute(_OWNER_BY_NAME + " FOR UPDATE", (owner.name,))).fetchone())
            if previous is not None and previous.department != owner.department:
                raise _taken(owner.name)
            rows = await (await conn.execute(
                "SELECT usage FROM umc_service_deployments WHERE department = %s AND name <> %s",
                (owner.department, owner.name),
            )).fetchall()  # fmt: skip
            current = Usage.total(Usage.model_validate(r[0]) for r in rows)
            found = breach(owner.department, quota, current, owner.usage)
            if found is not None:
                return Claim(breach=found, previous=previous)
            await conn.execute(_UPSERT_OWNER, _owner_row(owner))
            return Claim(previous=previous)

    async def restore(self, name: str, previous: Ownership | None) -> None:
        """See :meth:`Store.restore`."""
        await self._open()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM umc_service_deployments WHERE name = %s", (name,))
            if previous is not None:
                await conn.execute(_INSERT_OWNER, _owner_row(previous))

    async def ownership(self, name: str) -> Ownership | None:
        """See :meth:`Store.ownership`."""
        rows = await self._fetch(_OWNER_BY_NAME, (name,))
        return _owner(rows[0]) if rows else None

    async def deployments(self, departments: Sequence[str] | None) -> list[Ownership]:
        """See :meth:`Store.deployments`."""
        scope = None if departments is None else list(departments)
        rows = await self._fetch(_OWNERS, (scope, scope))
        return [o for o in map(_owner, rows) if o is not None]

    async def forget(self, name: str) -> None:
        """See :meth:`Store.forget`."""
        await self._run("DELETE FROM umc_service_deployments WHERE name = %s", (name,))

    async def set_lease(self, name: str, lease_until: datetime | None, *, warned: bool) -> None:
        """See :meth:`Store.set_lease`."""
        await self._run("UPDATE umc_service_deployments SET lease_until = %s, lease_warned = %s WHERE name = %s",
                        (lease_until, warned, name))  # fmt: skip

    async def leases_before(self, when: datetime) -> list[Ownership]:
        """See :meth:`Store.leases_before`."""
        return [o for o in map(_owner, await self._fetch(_LEASES_BEFORE, (when,))) if o is not None]

    async def add_event(self, job: int, kind: str, data: dict[str, Any]) -> JobEvent:
        """See :meth:`Store.add_event` (numbered under the job's row lock: one writer at a time per job)."""
        await self._open()
        at = now()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (job,))
            row = await (await conn.execute(
                "INSERT INTO umc_service_job_events (job_id, seq, kind, at, data) "
                "SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, %s, %s FROM umc_service_job_events WHERE job_id = %s "
                "RETURNING seq", (job, kind, at, json.dumps(data), job),
            )).fetchone()  # fmt: skip
        assert row is not None
        return JobEvent(job=job, id=int(row[0]), kind=kind, at=at, data=data)

    async def events(self, job: int, *, after: int = 0) -> list[JobEvent]:
        """See :meth:`Store.events`."""
        rows = await self._fetch("SELECT seq, kind, at, data FROM umc_service_job_events "
                                 "WHERE job_id = %s AND seq > %s ORDER BY seq", (job, after))  # fmt: skip
        return [JobEvent(job=job, id=r[0], kind=r[1], at=r[2], data=r[3]) for r in rows]

    async def record(self, entry: AuditEntry) -> int:
        """See :meth:`Store.record`."""
        rows = await self._fetch(
            "INSERT INTO umc_service_audit (at, subject, username, department, action, deployment, blueprint, ticket, "
            "params, plan, outcome, job_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (entry.at, entry.subject, entry.username, entry.department, entry.action, entry.deployment,
             entry.blueprint, entry.ticket, json.dumps(entry.params),
             None if entry.plan is None else json.dumps(entry.plan), entry.outcome, entry.job),
        )  # fmt: skip
        return int(rows[0][0])

    async def update(self, entry_id: int, *, outcome: str | None = None, job: int | None = None) -> None:
        """See :meth:`Store.update`."""
        await self._run("UPDATE umc_service_audit SET outcome = COALESCE(%s, outcome), job_id = COALESCE(%s, job_id) "
                        "WHERE id = %s",
                        (outcome, job, entry_id))  # fmt: skip

    async def request_of(self, job: int) -> AuditEntry | None:
        """See :meth:`Store.request_of`."""
        rows = await self._fetch(_AUDIT_BY_JOB, (job,))
        return _entry(rows[0]) if rows else None

    async def audit(self, query: AuditQuery) -> list[AuditEntry]:
        """See :meth:`Store.audit`."""
        rows = await self._fetch(_AUDIT_QUERY, {
            "departments": None if query.departments is None else list(query.departments),
            "department": query.department, "deployment": query.deployment, "user": query.user,
            "since": query.since, "until": query.until, "limit": query.limit,
        })  # fmt: skip
        return [_entry(r) for r in rows]

    async def close(self) -> None:
        """Close the pool."""
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def _fetch(self, sql: str, args: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        await self._open()
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def _run(self, sql: str, args: Sequence[Any]) -> None:
        await self._open()
        async with self._pool.connection() as conn:
            await conn.execute(sql, args)


def _owner_row(owner: Ownership) -> tuple[Any, ...]:
    return (owner.name, owner.department, owner.blueprint, owner.requested_by, owner.created, owner.lease_until,
            owner.lease_warned, json.dumps(owner.params), owner.usage.model_dump_json())  # fmt: skip


def _owner(row: tuple[Any, ...] | None) -> Ownership | None:
    if row is None:
        return None
    name, department, blueprint, requested_by, created, lease_until, lease_warned, params, usage = row
    return Ownership(name=name, department=department, blueprint=blueprint, requested_by=requested_by,
                     created=created, lease_until=lease_until, lease_warned=lease_warned, params=params,
                     usage=Usage.model_validate(usage))  # fmt: skip


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    entry_id, at, subject, username, department, action, deployment, blueprint, ticket, params, plan, outcome, job = row
    return AuditEntry(id=entry_id, at=at, subject=subject, username=username, department=department, action=action,
                      deployment=deployment, blueprint=blueprint, ticket=ticket, params=params, plan=plan,
                      outcome=outcome, job=job)  # fmt: skip


def _taken(name: str) -> RequestConflict:
    return RequestConflict(f"deployment name {name!r} is taken; choose another name", step="request")
