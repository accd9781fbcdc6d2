"""Leases: owners warned once before the end, a destroy queued at the end, an extension within the cap."""

import asyncio
import functools
from datetime import UTC, datetime, timedelta

from procrastinate.testing import InMemoryConnector

from umc_infra.service.jobs import Runtime, build_app, enforce_leases
from umc_infra.service.leases import due
from umc_infra.service.policy import Policy
from umc_infra.service.store import AuditQuery, MemoryStore, Ownership

from .conftest import POLICY, FakeRunner, auth

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY_ = Policy.parse(POLICY)  # cardiology: max 30 days, warn 3 days before


def owner(name, days, *, warned=False, department="cardiology"):
    return Ownership(name=name, department=department, blueprint="web-server", requested_by="alice",
                     lease_until=NOW + timedelta(days=days), lease_warned=warned)  # fmt: skip


def test_what_is_due():
    forever = Ownership(name="forever", department="cardiology", blueprint="b", requested_by="a")
    owners = [owner("ended", -1), owner("today", 0), owner("soon", 2), owner("warned", 2, warned=True),
              owner("later", 10), forever]  # fmt: skip
    assert [(d.deployment, d.kind) for d in due(owners, POLICY_, NOW)] == [
        ("ended", "expire"), ("today", "expire"), ("soon", "warn"),
    ]  # fmt: skip


def test_the_periodic_round_warns_once_and_queues_the_destroy():
    store, connector = MemoryStore(), InMemoryConnector()
    app = build_app(connector, Runtime(store=store, runner=FakeRunner(), policy=POLICY_))

    async def rounds():
        for o in (owner("ended", -1), owner("soon", 2), owner("later", 10)):
            store.owners[o.name] = o
        async with app.open_async():
            first = await enforce_leases(app, store, POLICY_, at=NOW)
            second = await enforce_leases(app, store, POLICY_, at=NOW)
        return first, second

    first, second = asyncio.run(rounds())
    assert [(d.deployment, d.kind) for d in first] == [("ended", "expire"), ("soon", "warn")]
    assert [(d.deployment, d.kind) for d in second] == [("ended", "expire")]  # warned once; destroy already queued
    (job,) = [j for j in connector.jobs.values() if j["task_name"] == "umc.destroy"]
    assert (job["args"]["deployment"], job["lock"]) == ("ended", "ended")
    entries = asyncio.run(store.audit(AuditQuery()))
    assert [(e.action, e.deployment, e.username) for e in entries][:2] == [
        ("destroy", "ended", "lease"), ("lease_warning", "soon", "lease"),
    ]  # fmt: skip
    assert store.owners["soon"].lease_warned
    (warning,) = [j for j in connector.jobs.values() if j["task_name"] == "umc.lease_warning"]
    assert warning["args"]["deployment"] == "soon" and entries[1].job == warning["id"]


def test_the_owners_read_the_warning_as_a_job_of_their_department(api):
    """The warning is a job with a ``lease_warning`` event: alice's portal reads it like any job; bob cannot."""
    assert api.request("alice", "cardio-web").status_code == 202
    api.work()
    soon = datetime.now(UTC) + timedelta(days=1)
    api.store.owners["cardio-web"] = api.store.owners["cardio-web"].model_copy(update={"lease_until": soon})
    enforce = functools.partial(enforce_leases, api.service.queue, api.store, api.service.policy, at=datetime.now(UTC))
    due_now = api.client.portal.call(enforce)  # type: ignore[union-attr]
    assert [(d.deployment, d.kind) for d in due_now] == [("cardio-web", "warn")]
    api.work()
    (entry,) = [e for e in asyncio.run(api.store.audit(AuditQuery())) if e.action == "lease_warning"]
    assert entry.outcome.startswith("warned: lease ends") and entry.job is not None
    job = api.client.get(f"/api/jobs/{entry.job}", headers=auth("alice"))
    assert job.status_code == 200 and job.json()["state"] == "succeeded"
    events = api.client.get(f"/api/jobs/{entry.job}/events", headers=auth("alice")).text
    assert "event: lease_warning" in events and "cardio-web" in events and soon.isoformat() in events
    assert api.client.get(f"/api/jobs/{entry.job}", headers=auth("bob")).status_code == 404
    assert api.client.get(f"/api/jobs/{entry.job}/events", headers=auth("bob")).status_code == 404


def test_an_extension_within_the_cap_clears_the_warning(api):
    assert api.request("alice", "cardio-web").status_code == 202
    api.store.owners["cardio-web"] = api.store.owners["cardio-web"].model_copy(update={"lease_warned": True})
    today = datetime.now(UTC).date()
    too_far = api.client.post("/api/deployments/cardio-web/lease", headers=auth("alice"),
                              json={"lease_until": str(today + timedelta(days=31))})  # fmt: skip
    assert too_far.status_code == 422
    ok = api.client.post("/api/deployments/cardio-web/lease", headers=auth("alice"),
                         json={"lease_until": str(today + timedelta(days=20)), "ticket": "CHG-9"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["lease_until"].startswith(str(today + timedelta(days=20)))
    assert ok.json()["lease_warned"] is False
    other = api.client.post("/api/deployments/cardio-web/lease", headers=auth("bob"), json={"lease_until": None})
    assert other.status_code == 404
    # an update that does not ask for a lease keeps the one it has
    api.work()
    assert api.request("alice", "cardio-web", instances=2).status_code == 202
    assert api.store.owners["cardio-web"].lease_until.date() == today + timedelta(days=20)
