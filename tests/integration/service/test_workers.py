"""Workers on the sandbox: one killed mid-job (the job is marked, the next worker recovers the deployment), and two
workers draining eight requests without ever running one deployment's jobs at the same time.

One API process and a database of this module's own; workers are started and killed by the cases.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from umc_infra import status
from umc_infra.sandbox import scratch_database

from ..conftest import only_this_modules_vms, vm_names
from .conftest import Client, running, served

PREFIX = "svcq-"


@pytest.fixture(scope="module")
def queue(sandbox, info, tmp_path_factory) -> Iterator[tuple[Client, dict[str, str], Path]]:
    """The API (no worker): its client, the environment a worker gets, and the log they share."""
    log = tmp_path_factory.mktemp("workers") / "service.log"
    with only_this_modules_vms(info, PREFIX), scratch_database(info) as database:
        env = {**os.environ, **info.environment(), "UMC_SERVICE_DATABASE_URL": database.get_secret_value()}
        with served(env, log) as url:
            tokens = {user: sandbox.token(user).get_secret_value() for user in ("alice", "bob", "admin")}
            client = Client(url, tokens, log)
            yield client, env, log
            with running(["worker"], env, log):  # destroyed through the service: records and addresses freed too
                for made in client.call("GET", "/api/deployments", "admin").json():
                    answer = client.call("DELETE", f"/api/deployments/{made['name']}", "admin")
                    if answer.status_code == 202:
                        client.wait(answer.json()["job"], "admin")


def request(client: Client, deployment: str, user: str = "alice", **params) -> int:
    body = {"blueprint": "web-server", "deployment": deployment, "params": {"instances": 1, **params}}
    answer = client.call("POST", "/api/deployments", user, json=body)
    assert answer.status_code == 202, answer.text
    return answer.json()["job"]


def until(predicate, what: str, client: Client, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: {client.log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_a_worker_killed_mid_job_leaves_the_job_marked_and_the_next_one_recovers_the_deployment(queue, info):
    client, env, log = queue
    deployment = f"{PREFIX}kill"
    with running(["worker"], env, log) as first:
        job = request(client, deployment)

        def cloning() -> bool:  # Terraform has started making the VM
            answer = client.call("GET", f"/api/jobs/{job}/events", headers={"Last-Event-ID": "0"}, stream=True)
            with answer:  # the stream follows the running job: read only what is there, then let go
                seen = b""
                for chunk in answer.iter_content(chunk_size=None):
                    seen += chunk
                    if b"event: resource" in seen:
                        return True
                    if b"event: job_finished" in seen:
                        return False
            return False

        until(lambda: client.call("GET", f"/api/jobs/{job}").json()["state"] == "running", "job never ran", client)
        until(cloning, "Terraform never started", client)
        os.killpg(first.pid, signal.SIGKILL)  # the worker's machine is lost: the worker and all it started
        first.wait()
    assert client.call("GET", f"/api/jobs/{job}").json()["state"] == "running"  # nobody runs it: marked so next

    with running(["worker"], env, log):  # a worker elsewhere: it finds the silent one's job and runs it again
        finished = client.wait(job, timeout_s=420)
    assert finished["state"] == "succeeded", finished
    kinds = [kind for _, kind, _ in client.events(job)]
    assert "worker_lost" in kinds and kinds.count("job_started") == 2 and kinds[-1] == "job_finished"
    assert vm_names(info, f"{deployment}-") == [f"{deployment}-web-1"]  # exactly one VM: nothing made twice
    assert status(deployment, settings=info.settings()).state == "active"


def test_two_workers_drain_eight_requests_and_never_run_one_deployment_twice_at_once(queue, info):
    client, env, log = queue
    names = [f"{PREFIX}d{i}" for i in range(5)]  # with the kill case's deployment, cardiology's quota of 6 VMs
    jobs: dict[str, list[int]] = {}

    def started(name: str) -> None:
        until(lambda: client.call("GET", f"/api/jobs/{jobs[name][0]}").json()["state"] != "queued",
              f"{name} never started", client)  # fmt: skip

    with running(["worker"], env, log), running(["worker"], env, log):
        # an update asked while its deployment's provision runs and the other worker is idle: the next job in
        # the queue, which that worker must leave for later (a job beside it would meet the library's lease)
        jobs[names[0]] = [request(client, names[0])]
        started(names[0])
        jobs[names[0]].append(request(client, names[0], site_title=f"updated {names[0]}"))
        for name in names[1:]:
            jobs[name] = [request(client, name)]
        jobs[f"{PREFIX}kill"] = [request(client, f"{PREFIX}kill", site_title="updated")]
        started(names[1])
        jobs[names[1]].append(request(client, names[1], site_title=f"updated {names[1]}"))
        all_jobs = [j for js in jobs.values() for j in js]
        assert len(all_jobs) == 8
        ends = {j: client.wait(j, timeout_s=900) for j in all_jobs}
    assert {j: e["state"] for j, e in ends.items()} == dict.fromkeys(all_jobs, "succeeded")

    spans = {}
    for job in all_jobs:
        events = client.events(job)
        # a job started beside its deployment's running one would meet the library's lease (DeploymentLocked)
        # and be retried: the first start counts, and no job was retried
        assert [kind for _, kind, _ in events if kind == "job_retrying"] == [], (job, events)
        at: dict[str, datetime] = {}
        for _, kind, data in events:
            at.setdefault(kind, datetime.fromisoformat(data["at"]))
        spans[job] = (at["job_started"], at["job_finished"])
    for name, queued in jobs.items():  # one deployment's jobs ran one after the other, in the order asked
        for before, after in itertools.pairwise(queued):
            assert spans[before][1] <= spans[after][0], (name, spans[before], spans[after])
    running_at = sorted([(s, 1) for s, _ in spans.values()] + [(f, -1) for _, f in spans.values()])
    busy, most = 0, 0
    for _, step in running_at:
        busy += step
        most = max(most, busy)
    assert most == 2  # both workers were busy at once: the eight were shared, not run one by one
    assert vm_names(info, PREFIX) == sorted(f"{n}-web-1" for n in [*names, f"{PREFIX}kill"])
