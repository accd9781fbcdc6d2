"""The API through FastAPI's TestClient, on the in-memory store and procrastinate's InMemoryConnector.

Controls: each refusal (401, 404, 403, 409 quota) is paired with the same call that passes when the one
fault is removed (a valid token, the owning department, an allowed blueprint, a request within the quota).
"""

import json

import pytest
from pydantic import SecretStr

from umc_infra.errors import DeploymentLocked, TerraformError
from umc_infra.service.jobs import Asked

from .conftest import auth, make_token

CANARY = "app-token-canary-7f3a"


def jobs_queued(api):
    return [j for j in api.connector.jobs.values() if j["task_name"] in ("umc.provision", "umc.destroy")]


def test_the_openapi_document_is_published_without_a_token(api):
    answer = api.client.get("/openapi.json")
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    for path in (
        "/api/blueprints",
        "/api/blueprints/{name}",
        "/api/deployments",
        "/api/deployments/{name}",
        "/api/plans",
        "/api/jobs/{job}",
        "/api/jobs/{job}/cancel",
        "/api/jobs/{job}/events",
        "/api/audit",
    ):
        assert path in paths, path
    assert set(paths["/api/deployments/{name}"]) == {"get", "delete"}


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer " + make_token(exp=1_000_000, iat=1)},
    {"Authorization": "Bearer " + make_token(aud="other")}, {"Authorization": "Bearer garbage"},
])  # fmt: skip
def test_unauthenticated_calls_get_401_with_www_authenticate(api, headers):
    answer = api.client.get("/api/deployments", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.json()["detail"]["error_type"] == "Unauthenticated"


def test_control_the_same_call_with_a_valid_token_passes(api):
    assert api.client.get("/api/deployments", headers=auth("alice")).status_code == 200


def test_blueprints_are_those_of_the_callers_departments(api):
    bob = [b["name"] for b in api.client.get("/api/blueprints", headers=auth("bob")).json()]
    assert bob == ["linux-server", "web-server"]
    admin = [b["name"] for b in api.client.get("/api/blueprints", headers=auth("admin")).json()]
    assert "app-stack" in admin and "windows-server" not in admin  # in no department's list
    form = api.client.get("/api/blueprints/web-server", headers=auth("bob")).json()
    assert form["schema"]["required"] == ["deployment", "params"]
    assert form["schema"]["properties"]["params"]["properties"]["instances"]["maximum"] == 20
    assert api.client.get("/api/blueprints/app-stack", headers=auth("bob")).status_code == 404


def test_a_request_is_queued_and_scoped_to_its_department(api):
    answer = api.request("alice", "cardio-web", instances=2)
    assert answer.status_code == 202, answer.text
    job = answer.json()["job"]
    assert answer.json()["usage"] == {"vms": 2, "vcpus": 4, "memory_mb": 4096}
    assert api.client.get(f"/api/jobs/{job}", headers=auth("alice")).json()["state"] == "queued"
    (queued,) = jobs_queued(api)
    assert (queued["lock"], queued["queueing_lock"]) == ("cardio-web", "cardio-web")
    names = lambda user: [d["name"] for d in api.client.get("/api/deployments", headers=auth(user)).json()]  # noqa: E731
    assert names("alice") == ["cardio-web"] and names("admin") == ["cardio-web"]
    assert names("bob") == []
    # another department's deployment and job: 404, exactly as if they did not exist
    for call in (lambda h: api.client.get("/api/deployments/cardio-web", headers=h),
                 lambda h: api.client.delete("/api/deployments/cardio-web", headers=h),
                 lambda h: api.client.get(f"/api/jobs/{job}", headers=h),
                 lambda h: api.client.post(f"/api/jobs/{job}/cancel", headers=h)):  # fmt: skip
        assert call(auth("bob")).status_code == 404
    assert api.client.get("/api/deployments/no-such", headers=auth("bob")).json() == \
        api.client.get("/api/deployments/no-such", headers=auth("bob")).json()  # fmt: skip
    # control: its own department (and an admin) see it
    assert api.client.get("/api/deployments/cardio-web", headers=auth("alice")).status_code == 200
    assert api.client.get(f"/api/jobs/{job}", headers=auth("admin")).status_code == 200
    # bob cannot take the name either
    assert api.request("bob", "cardio-web").status_code == 409
    assert len(jobs_queued(api)) == 1


def test_a_blueprint_the_department_may_not_use_is_403_naming_the_allowed(api):
    answer = api.request("bob", "rad-app", "app-stack")
    assert answer.status_code == 403
    assert "web-server, linux-server" in answer.json()["detail"]["message"]
    assert api.request("bob", "rad-app", "linux-server").status_code == 202  # control


def test_bad_params_are_422_with_the_librarys_problems(api):
    answer = api.request("alice", "cardio-web", instances=0, colour="red")
    assert answer.status_code == 422
    problems = {p["field"]: p for p in answer.json()["detail"]["problems"]}
    assert set(problems) == {"params.instances", "params.colour"}
    assert "20" in problems["params.instances"]["allowed"]
    assert api.request("alice", "Bad_Name").json()["detail"]["problems"][0]["field"] == "deployment"
    assert jobs_queued(api) == []


def test_a_quota_breach_is_409_with_the_numbers_before_anything_is_queued(api):
    assert api.request("bob", "rad-one", cpu=2, memory_mb=2048).status_code == 202
    answer = api.request("bob", "rad-two", instances=2, cpu=1, memory_mb=1024)
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert detail["error_type"] == "QuotaExceeded" and detail["over"] == ["vms"]
    assert (detail["quota"]["vms"], detail["current"]["vms"], detail["requested"]["vms"]) == (2, 1, 2)
    assert "vms: 1 in use + 2 requested = 3 > quota 2" in detail["message"]
    assert len(jobs_queued(api)) == 1 and api.runner.calls == []
    assert api.client.get("/api/deployments/rad-two", headers=auth("bob")).status_code == 404
    refused = api.client.get("/api/audit?deployment=rad-two", headers=auth("bob")).json()
    assert [e["outcome"].split(":")[0] for e in refused] == ["refused"]
    # control: the same request within the quota is queued
    assert api.request("bob", "rad-two", instances=1, cpu=1, memory_mb=1024).status_code == 202


def test_a_second_request_while_one_is_queued_is_409(api):
    assert api.request("alice", "cardio-web").status_code == 202
    answer = api.request("alice", "cardio-web", instances=2)
    assert answer.status_code == 409 and "already queued" in answer.json()["detail"]["message"]
    # the refused request did not change what the deployment counts for
    assert api.client.get("/api/deployments/cardio-web", headers=auth("alice")).json()["usage"]["vms"] == 1


def leaked(api, text):
    """Whether ``text`` appears in anything the store holds (the audit, ownership, job events)."""
    dumps = [e.model_dump_json() for e in api.store.entries] + [o.model_dump_json() for o in api.store.owners.values()]
    dumps += [e.model_dump_json() for events in api.store.job_events.values() for e in events]
    dumps += [json.dumps(j, default=str) for j in api.connector.jobs.values()]
    return any(text in d for d in dumps)


def test_a_plan_masks_secret_params_in_the_audit(api):
    body = {"blueprint": "secret-web", "deployment": "cardio-sec", "params": {"app_token": CANARY}, "ticket": "CHG-1"}
    answer = api.client.post("/api/plans", json=body, headers=auth("alice"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["quota"]["fits"] is True
    assert api.planner.calls[0][1]["app_token"] == CANARY  # the plan itself had the value
    (entry,) = api.client.get("/api/audit", headers=auth("alice")).json()
    assert (entry["action"], entry["ticket"], entry["params"]["app_token"]) == ("plan", "CHG-1", "***")
    assert entry["plan"]["fingerprint"] == "f1"
    assert not leaked(api, CANARY)
    # a request with a secret param is refused (it would be stored in the queue), naming the field
    refused = api.client.post("/api/deployments", json=body, headers=auth("alice"))
    assert refused.status_code == 422
    assert refused.json()["detail"]["problems"][0]["field"] == "params.app_token"
    assert not leaked(api, CANARY)


def test_control_the_leak_scan_finds_a_planted_secret(api, monkeypatch):
    from umc_infra.params import ResolvedParams

    def unmasked(self):
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in self.values.items()}

    monkeypatch.setattr(ResolvedParams, "masked", unmasked)
    body = {"blueprint": "secret-web", "deployment": "cardio-sec", "params": {"app_token": CANARY}}
    assert api.client.post("/api/plans", json=body, headers=auth("alice")).status_code == 200
    assert leaked(api, CANARY)


def test_a_job_runs_streams_its_events_and_records_its_outcome(api):
    job = api.request("alice", "cardio-web", instances=2).json()["job"]
    api.work()
    assert api.runner.calls == [("provision", "cardio-web", api.runner.calls[0][2])]
    assert api.runner.calls[0][2]["instances"] == 2
    status = api.client.get(f"/api/jobs/{job}", headers=auth("alice")).json()
    assert (status["state"], status["outcome"]) == ("succeeded", "succeeded")
    stream = api.client.get(f"/api/jobs/{job}/events", headers=auth("alice"))
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [block for block in stream.text.split("\n\n") if block]
    kinds = [line.removeprefix("event: ") for b in events for line in b.splitlines() if line.startswith("event:")]
    assert kinds == ["job_started", "step_started", "step_finished", "job_finished"]
    assert events[0].startswith("id: 1\n")
    finished = json.loads(events[-1].split("data: ", 1)[1])
    assert finished["data"]["state"] == "succeeded"
    replay = api.client.get(f"/api/jobs/{job}/events", headers={**auth("alice"), "Last-Event-ID": "2"})
    assert [b.split("\n")[0] for b in replay.text.split("\n\n") if b] == ["id: 3", "id: 4"]
    assert api.client.get(f"/api/jobs/{job}/events", headers=auth("bob")).status_code == 404


def test_a_failed_job_is_not_retried_and_says_why(api):
    api.runner.fail["cardio-web"] = TerraformError("terraform apply failed (exit 1)", step="terraform.apply")
    job = api.request("alice", "cardio-web").json()["job"]
    api.work()
    status = api.client.get(f"/api/jobs/{job}", headers=auth("alice")).json()
    assert status["state"] == "failed" and status["outcome"].startswith("failed: TerraformError")
    assert len(api.runner.calls) == 1


def test_a_transient_failure_is_retried(api):
    from datetime import UTC, datetime

    api.runner.fail["cardio-web"] = DeploymentLocked("held by ci", holder="ci", since=datetime.now(UTC))
    job = api.request("alice", "cardio-web").json()["job"]
    api.work()
    row = api.connector.jobs[job]
    assert (row["status"], row["attempts"]) == ("todo", 1)  # queued again, after a wait
    assert api.client.get(f"/api/jobs/{job}", headers=auth("alice")).json()["outcome"] == "retrying: DeploymentLocked"


def test_a_queued_job_can_be_cancelled(api):
    job = api.request("alice", "cardio-web").json()["job"]
    answer = api.client.post(f"/api/jobs/{job}/cancel", headers=auth("alice"))
    assert answer.status_code == 202 and answer.json()["state"] == "cancelled"
    api.work()
    assert api.runner.calls == []
    assert api.client.get(f"/api/jobs/{job}", headers=auth("alice")).json()["outcome"] == "cancelled"
    assert api.client.post(f"/api/jobs/{job}/cancel", headers=auth("alice")).status_code == 409


def test_a_destroy_is_queued_and_forgets_the_deployment(api):
    api.request("alice", "cardio-web")
    api.work()
    answer = api.client.delete("/api/deployments/cardio-web", headers=auth("alice"))
    assert answer.status_code == 202 and answer.json()["action"] == "destroy"
    api.work()
    assert api.runner.calls[-1][:2] == ("destroy", "cardio-web")
    assert api.client.get("/api/deployments/cardio-web", headers=auth("alice")).status_code == 404


def test_the_audit_is_scoped_and_filtered(api):
    api.request("alice", "cardio-web")
    api.request("bob", "rad-web")

    def users(user, query=""):
        return {e["username"] for e in api.client.get(f"/api/audit{query}", headers=auth(user)).json()}

    assert users("alice") == {"alice"} and users("bob") == {"bob"}
    assert users("admin") == {"alice", "bob"}
    assert users("admin", "?department=radiology") == {"bob"}
    assert users("admin", "?user=alice") == {"alice"}
    assert users("bob", "?department=cardiology") == set()  # control above: admin sees cardiology
    assert users("admin", "?since=2999-01-01T00:00:00Z") == set()


def test_a_lease_beyond_the_departments_cap_is_422(api):
    body = {"blueprint": "web-server", "deployment": "cardio-web", "lease_until": "2999-01-01"}
    answer = api.client.post("/api/deployments", json=body, headers=auth("alice"))
    assert answer.status_code == 422 and answer.json()["detail"]["problems"][0]["field"] == "lease_until"
    ok = api.client.post("/api/deployments", json={**body, "lease_until": None}, headers=auth("alice"))
    assert ok.status_code == 202 and ok.json()["lease_until"] is not None  # the department's default lease


def test_an_update_keeps_the_params_it_had_and_never_passes_a_masked_secret(api):
    assert api.request("alice", "cardio-sec", "secret-web", instances=2).status_code == 202
    api.work()
    again = api.request("alice", "cardio-sec", "secret-web", cpu=4)
    assert again.status_code == 202 and again.json()["usage"] == {"vms": 2, "vcpus": 8, "memory_mb": 4096}
    api.work()
    first, second = (call[2] for call in api.runner.calls)
    assert first == {"instances": 2}  # what was asked; the library fills in the defaults
    assert (second["instances"], second["cpu"]) == (2, 4)
    assert "app_token" not in first and "app_token" not in second  # never "***" in place of the secret


def test_refused_requests_are_audited_too(api):
    api.request("alice", "cardio-web")
    api.request("bob", "rad-app", "app-stack", instances=1)  # 403
    api.client.delete("/api/deployments/cardio-web", headers=auth("bob"))  # 404
    api.request("bob", "rad-web", instances=99)  # 422
    mine = api.client.get("/api/audit?user=bob", headers=auth("bob")).json()
    assert [(e["action"], e["outcome"].split(":")[:2]) for e in mine] == [
        ("provision", ["refused", " Forbidden"]), ("destroy", ["refused", " NotFound"]),
        ("provision", ["refused", " ParamsError"]),
    ]  # fmt: skip
    assert all(e["department"] == "radiology" and e["params"] == {} for e in mine)
    assert "bob" not in {e["username"] for e in api.client.get("/api/audit", headers=auth("alice")).json()}


def test_a_malformed_request_is_422_naming_each_field(api):
    body = {"deployment": "x" * 65, "params": [], "colour": "red"}
    answer = api.client.post("/api/deployments", json=body, headers=auth("alice"))
    assert answer.status_code == 422
    problems = {p["field"]: p for p in answer.json()["detail"]["problems"]}
    assert set(problems) == {"blueprint", "deployment", "params", "colour"}
    assert problems["deployment"]["allowed"] == "at most 64 characters"
    assert problems["blueprint"]["allowed"] == "a value"
    assert api.client.post("/api/deployments", json=body).status_code == 401  # the token is checked first


def test_who_asked_and_the_ticket_reach_the_library_run(api):
    body = {"blueprint": "web-server", "deployment": "cardio-web", "params": {}, "ticket": "INC0012345"}
    assert api.client.post("/api/deployments", json=body, headers=auth("alice")).status_code == 202
    api.work()
    assert api.runner.asked == [Asked(requested_by="alice", ticket="INC0012345")]
    assert api.client.delete("/api/deployments/cardio-web?ticket=CHG-7", headers=auth("alice")).status_code == 202
    api.work()
    assert api.runner.asked[-1] == Asked(requested_by="alice", ticket="CHG-7")


@pytest.mark.parametrize("ticket", ['INC1"; rm', "${jndi}", "two\nlines", "../../etc"])
def test_a_hostile_ticket_is_refused_naming_the_field_and_nothing_is_queued(api, ticket):
    body = {"blueprint": "web-server", "deployment": "cardio-web", "params": {}, "ticket": ticket}
    answer = api.client.post("/api/deployments", json=body, headers=auth("alice"))
    assert answer.status_code == 422
    assert [p["field"] for p in answer.json()["detail"]["problems"]] == ["ticket"]
    assert jobs_queued(api) == []


def test_the_form_and_the_request_use_the_sites_live_choices(api):
    form = api.client.get("/api/blueprints/linux-server", headers=auth("alice")).json()["schema"]
    networks = form["properties"]["params"]["properties"]["extra_networks"]["items"]
    assert networks["enum"] == ["VM Network", "DMZ"]
    assert form["properties"]["deployment"]["propertyOrder"] < form["properties"]["params"]["propertyOrder"]
    wrong = api.request("alice", "cardio-vm", blueprint="linux-server", extra_networks=["Nowhere"])
    assert wrong.status_code == 422
    (problem,) = wrong.json()["detail"]["problems"]
    assert problem["field"] == "params.extra_networks" and "DMZ" in problem["allowed"]
    assert api.request("alice", "cardio-vm", blueprint="linux-server", extra_networks=["DMZ"]).status_code == 202


def test_pages_opened_at_once_load_each_blueprint_once(api):
    """Fifty blueprint lists at once (a portal's first morning): one load per blueprint, not one per caller."""
    import asyncio
    import threading
    import time

    from umc_infra.service.app import BlueprintCache

    loads: list[str] = []
    lock = threading.Lock()

    class SlowCatalog:
        def load(self, name):
            with lock:
                loads.append(name)
            time.sleep(0.05)  # reading YAML and module files
            return api.service.catalog.load(name)

    cache = BlueprintCache(SlowCatalog())  # type: ignore[arg-type]

    async def at_once():
        return await asyncio.gather(*(cache.load(name) for name in ["web-server", "linux-server"] * 25))

    specs = asyncio.run(at_once())
    assert sorted(loads) == ["linux-server", "web-server"]
    assert {s.name for s in specs} == {"web-server", "linux-server"}
