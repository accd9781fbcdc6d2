"""The service's store and queue on a real PostgreSQL: schema, quota under concurrency, events, a real job."""

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from procrastinate import PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued

from umc_infra.errors import RequestConflict
from umc_infra.service.jobs import PROVISION, QUEUE, Runtime, build_app, requeue_stalled
from umc_infra.service.policy import Quota
from umc_infra.service.quota import Usage
from umc_infra.service.store import AuditEntry, AuditQuery, Ownership, PgStore

from ...unit.service.conftest import FakeRunner


def owner(name, department="cardiology", vms=1):
    used = Usage(vms=vms, vcpus=vms, memory_mb=512)
    return Ownership(name=name, department=department, blueprint="web-server", requested_by="alice",
                     params={"instances": vms, "app_token": "***"}, usage=used)  # fmt: skip


def tables(url):
    with psycopg.connect(url.get_secret_value()) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_the_schema_is_made_once_and_again_is_a_no_op(database_url):
    async def twice():
        store = PgStore(database_url)
        try:
            await store.ensure_schema()
            await store.record(AuditEntry(subject="s", username="alice", department="cardiology", action="plan",
                                          deployment="x-web"))  # fmt: skip
            await asyncio.gather(store.ensure_schema(), PgStore(database_url).ensure_schema())
            return await store.audit(AuditQuery())
        finally:
            await store.close()

    kept = asyncio.run(twice())
    assert [e.username for e in kept] == ["alice"]  # nothing recreated
    assert {"procrastinate_jobs", "umc_service_deployments", "umc_service_job_events", "umc_service_audit"} <= tables(
        database_url
    )


def test_concurrent_claims_never_exceed_the_quota(database_url):
    quota = Quota(vms=3, vcpus=100, memory_mb=100_000)

    async def race():
        stores = [PgStore(database_url, max_size=2) for _ in range(8)]
        await stores[0].ensure_schema()
        try:
            claims = await asyncio.gather(*(s.claim(owner(f"web-{i}"), quota) for i, s in enumerate(stores)))
            return claims, await stores[0].deployments(["cardiology"])
        finally:
            for s in stores:
                await s.close()

    claims, kept = asyncio.run(race())
    assert sum(c.breach is None for c in claims) == 3
    assert len(kept) == 3


def test_ownership_events_and_audit_round_trip(database_url):
    async def scenario():
        store = PgStore(database_url)
        await store.ensure_schema()
        try:
            quota = Quota(vms=5, vcpus=5, memory_mb=5000)
            assert (await store.claim(owner("a-web", vms=2), quota)).breach is None
            with pytest.raises(RequestConflict):
                await store.claim(owner("a-web", department="radiology"), quota)
            claim = await store.claim(owner("a-web", vms=3), quota)  # an update: counted once
            assert claim.previous is not None and claim.previous.usage.vms == 2
            await store.restore("a-web", claim.previous)
            assert (await store.ownership("a-web")).usage.vms == 2  # type: ignore[union-attr]
            assert await store.deployments(["radiology"]) == []
            for n in range(3):
                await store.add_event(7, "output", {"line": f"l{n}"})
            assert [e.id for e in await store.events(7, after=1)] == [2, 3]
            asked = AuditEntry(subject="s1", username="alice", department="cardiology", action="provision",
                               deployment="a-web", params={"x": "***"})  # fmt: skip
            entry = await store.record(asked)
            await store.update(entry, outcome="running", job=7)
            await store.update(entry, job=7)  # the API's job id after a worker started it: the outcome stays
            assert (await store.request_of(7)).outcome == "running"  # type: ignore[union-attr]
            assert [e.id for e in await store.audit(AuditQuery(user="alice", departments=("cardiology",)))] == [entry]
            assert await store.audit(AuditQuery(departments=("radiology",))) == []
            soon = datetime.now(UTC) + timedelta(days=1)
            await store.set_lease("a-web", soon, warned=True)
            (leased,) = await store.leases_before(soon)
            assert (leased.name, leased.lease_warned) == ("a-web", True)
            assert await store.leases_before(soon - timedelta(seconds=1)) == []
            await store.forget("a-web")
            assert await store.ownership("a-web") is None
        finally:
            await store.close()

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def queued(database_url, runner):
    """The store, the queue (open) and one provision request of ``a-web`` in the audit."""
    store = PgStore(database_url)
    await store.ensure_schema()
    app = build_app(PsycopgConnector(conninfo=database_url.get_secret_value()), Runtime(store, runner))
    try:
        async with app.open_async():
            asked = AuditEntry(subject="s", username="alice", department="cardiology", action="provision",
                               deployment="a-web")  # fmt: skip
            yield store, app, await store.record(asked)
    finally:
        await store.close()


async def outcome(store, app, job):
    status = await app.job_manager.get_job_status_async(job)
    return status.value, [e.kind for e in await store.events(job)], await store.request_of(job)


def test_a_job_runs_on_the_real_queue_with_its_lock(database_url):
    runner = FakeRunner()

    async def scenario():
        async with queued(database_url, runner) as (store, app, audit):
            deferrer = app.configure_task(PROVISION, lock="a-web", queueing_lock="a-web")
            job = await deferrer.defer_async(blueprint="web-server", deployment="a-web", params={}, audit=audit)
            with pytest.raises(AlreadyEnqueued):
                await app.configure_task(PROVISION, lock="a-web", queueing_lock="a-web").defer_async(
                    blueprint="web-server", deployment="a-web", params={}, audit=audit
                )
            await app.run_worker_async(queues=[QUEUE], wait=False, install_signal_handlers=False)
            return await outcome(store, app, job)

    status, kinds, request = asyncio.run(scenario())
    assert status == "succeeded"
    assert kinds == ["job_started", "step_started", "step_finished", "job_finished"]
    assert request is not None and request.outcome == "succeeded"


def test_cancelling_a_running_job_sets_the_librarys_cancel_event(database_url):
    runner = FakeRunner()
    runner.block.set()  # the fake run waits for its cancel event, then raises Cancelled as the library does

    async def scenario():
        async with queued(database_url, runner) as (store, app, audit):
            job = await app.configure_task(PROVISION, lock="a-web").defer_async(
                blueprint="web-server", deployment="a-web", params={}, audit=audit
            )
            worker = asyncio.create_task(app.run_worker_async(queues=[QUEUE], install_signal_handlers=False,
                                                              abort_job_polling_interval=0.2))  # fmt: skip
            await asyncio.to_thread(runner.started.wait, 20)
            assert await app.job_manager.cancel_job_by_id_async(job, abort=True)
            for _ in range(100):
                if (await app.job_manager.get_job_status_async(job)).value not in ("doing", "todo"):
                    break
                await asyncio.sleep(0.1)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            return await outcome(store, app, job)

    status, kinds, request = asyncio.run(scenario())
    assert runner.cancel_seen  # the abort reached the run as the library's cancel event
    assert status == "aborted"
    assert kinds == ["job_started", "step_started", "job_finished"]
    assert request is not None and request.outcome == "cancelled"


def test_a_job_whose_worker_died_is_marked_and_queued_again(database_url):
    runner = FakeRunner()

    async def scenario(heartbeat_age_s):
        async with queued(database_url, runner) as (store, app, audit):
            job = await app.configure_task(PROVISION, lock="a-web").defer_async(
                blueprint="web-server", deployment="a-web", params={}, audit=audit
            )
            await store.update(audit, outcome="running", job=job)
            dead = await app.job_manager.register_worker()
            assert (await app.job_manager.fetch_job([QUEUE], dead)).id == job  # taken, then its worker is gone
            with psycopg.connect(database_url.get_secret_value(), autocommit=True) as conn:
                conn.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - make_interval(secs => %s) "
                             "WHERE id = %s", (heartbeat_age_s, dead))  # fmt: skip
            requeued = await requeue_stalled(app, store, seconds_since_heartbeat=30)
            state = (await app.job_manager.get_job_status_async(job)).value
            if requeued:
                await app.run_worker_async(queues=[QUEUE], wait=False, install_signal_handlers=False)
            return requeued == [job], state, await outcome(store, app, job)

    marked, state, (status, kinds, request) = asyncio.run(scenario(600))
    assert marked and state == "todo"
    assert status == "succeeded" and kinds[0] == "worker_lost" and kinds[-1] == "job_finished"
    assert request is not None and request.outcome == "succeeded"
    # control: a worker that still sends heartbeats keeps its job
    marked, state, (status, kinds, _) = asyncio.run(scenario(0))
    assert not marked and state == status == "doing" and kinds == []
