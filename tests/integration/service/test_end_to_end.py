"""The self-service service end to end on the sandbox: `umc-infra serve` and `umc-infra worker` as the
processes a site runs, the sandbox's PostgreSQL (queue, events, audit), OpenBao's ID tokens for its test users
(alice in cardiology, bob in radiology, admin), and the library provisioning web-server on the simulator.

The cases share one service and one deployment and run in order: request, watch, look from the other
department, a refused quota breach, destroy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from umc_infra import status
from umc_infra.sandbox import scratch_database

from ..conftest import destroy_vm, vm_names
from .conftest import Client, running, served

DEPLOYMENT = "svc-web"


@pytest.fixture(scope="module")
def service(sandbox, info, tmp_path_factory) -> Iterator[Client]:
    for name in vm_names(info, "svc-"):  # left by an earlier run that died
        destroy_vm(info, name)
    log = tmp_path_factory.mktemp("service") / "service.log"
    with scratch_database(info) as database:
        env = {**os.environ, **info.environment(), "UMC_SERVICE_DATABASE_URL": database.get_secret_value()}
        with served(env, log) as url, running(["worker"], env, log):
            tokens = {user: sandbox.token(user).get_secret_value() for user in ("alice", "bob", "admin")}
            yield Client(url, tokens, log)


def test_a_request_provisions_web_server_the_stream_shows_every_step_and_the_audit_says_who(service, info):
    answer = service.call(
        "POST",
        "/api/deployments",
        json={"blueprint": "web-server", "deployment": DEPLOYMENT, "params": {"instances": 1}, "ticket": "INC0012345"},
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert (accepted["department"], accepted["action"]) == ("cardiology", "provision")
    service.job = job = accepted["job"]

    events = service.events(job)  # read while the job runs: the stream ends with it
    ids = [i for i, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished"
    started = [data["data"]["step"] for _, kind, data in events if kind == "step_started"]
    assert any(s.startswith("terraform.") for s in started) and any(s.startswith("ansible.") for s in started)
    finished = events[-1][2]["data"]
    assert finished["state"] == "succeeded", finished
    (host,) = finished["result"]["hosts"]
    assert host["name"] == f"{DEPLOYMENT}-web-1"
    assert host["name"] in requests.get(f"http://{host['ip']}/", timeout=10).text  # nginx serves its page

    assert service.call("GET", f"/api/jobs/{job}").json()["state"] == "succeeded"
    replayed = service.events(job)  # after the end: the whole stream again, from the start
    assert [i for i, _, _ in replayed] == ids
    after = service.call("GET", f"/api/jobs/{job}/events", headers={"Last-Event-ID": str(ids[-2])})
    assert after.text.startswith(f"id: {ids[-1]}\n")

    record = status(DEPLOYMENT, settings=info.settings())  # the library's own record says who, too
    assert (record.last_run.requested_by, record.last_run.ticket) == ("alice", "INC0012345")
    audit = service.call("GET", "/api/audit", "admin", params={"deployment": DEPLOYMENT}).json()
    (asked,) = [a for a in audit if a["action"] == "provision"]
    assert (asked["username"], asked["department"], asked["ticket"]) == ("alice", "cardiology", "INC0012345")
    assert asked["params"]["instances"] == 1 and asked["outcome"] == "succeeded"


def test_the_other_department_cannot_see_it_and_an_admin_sees_everything(service):
    assert DEPLOYMENT in [d["name"] for d in service.call("GET", "/api/deployments").json()]
    assert DEPLOYMENT not in [d["name"] for d in service.call("GET", "/api/deployments", "bob").json()]
    assert service.call("GET", f"/api/deployments/{DEPLOYMENT}", "bob").status_code == 404
    assert service.call("GET", f"/api/jobs/{service.job}", "bob").status_code == 404
    assert service.call("GET", f"/api/jobs/{service.job}/events", "bob").status_code == 404
    assert service.call("DELETE", f"/api/deployments/{DEPLOYMENT}", "bob").status_code == 404
    seen = service.call("GET", "/api/audit", "bob", params={"deployment": DEPLOYMENT}).json()
    assert [(a["username"], a["department"]) for a in seen] == [("bob", "radiology")]  # his own refused destroy
    admin = service.call("GET", f"/api/deployments/{DEPLOYMENT}", "admin").json()
    assert (admin["department"], admin["requested_by"]) == ("cardiology", "alice")
    assert service.call("GET", "/api/deployments", None).status_code == 401
    forged = service.tokens["alice"][:-4] + ("AAAA" if not service.tokens["alice"].endswith("AAAA") else "BBBB")
    assert requests.get(f"{service.url}/api/deployments", timeout=10,
                        headers={"Authorization": f"Bearer {forged}"}).status_code == 401  # fmt: skip


def test_a_quota_breach_and_bad_params_are_refused_before_anything_is_created(service, info):
    # radiology may have 2 VMs: 3 is refused with the numbers, and no job, record or VM comes of it
    answer = service.call(
        "POST",
        "/api/deployments",
        "bob",
        json={"blueprint": "web-server", "deployment": "svc-big", "params": {"instances": 3}},
    )
    assert answer.status_code == 409, answer.text
    assert "vms" in answer.text and "3" in answer.text and "2" in answer.text
    bad = service.call(
        "POST",
        "/api/deployments",
        "bob",
        json={"blueprint": "web-server", "deployment": "svc-bad", "params": {"instances": 0, "site_title": "a\nb"}},
    )
    assert bad.status_code == 422
    assert sorted(p["field"] for p in bad.json()["detail"]["problems"]) == ["params.instances", "params.site_title"]
    assert service.call("GET", "/api/deployments", "bob").json() == []
    assert vm_names(info, "svc-big-") == [] and vm_names(info, "svc-bad-") == []


def test_destroy_through_the_api(service, info):
    answer = service.call("DELETE", f"/api/deployments/{DEPLOYMENT}", params={"ticket": "CHG-42"})
    assert answer.status_code == 202, answer.text
    assert service.wait(answer.json()["job"])["state"] == "succeeded"
    assert vm_names(info, f"{DEPLOYMENT}-") == []
    assert DEPLOYMENT not in [d["name"] for d in service.call("GET", "/api/deployments").json()]
    record = status(DEPLOYMENT, settings=info.settings())
    assert (record.state, record.last_run.requested_by, record.last_run.ticket) == ("destroyed", "alice", "CHG-42")
