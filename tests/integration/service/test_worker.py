"""``umc-infra worker`` as a process: it takes a queued job, runs the library in-process, records the outcome.

No sandbox here: the library fails at its first outside call (no Vault is configured), which is not a
transient failure, so the job ends ``failed`` at once, its error named in the events and the audit.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from procrastinate import PsycopgConnector

from umc_infra.service.jobs import PROVISION, Runtime, build_app
from umc_infra.service.store import AuditEntry, PgStore

from ...unit.service.conftest import POLICY, FakeRunner


async def _defer(database_url):
    store = PgStore(database_url)
    await store.ensure_schema()
    app = build_app(PsycopgConnector(conninfo=database_url.get_secret_value()), Runtime(store, FakeRunner()))
    try:
        async with app.open_async():
            asked = AuditEntry(subject="s", username="alice", department="cardiology", action="provision",
                               deployment="worker-web", blueprint="web-server")  # fmt: skip
            audit = await store.record(asked)
            return await app.configure_task(PROVISION, lock="worker-web", queueing_lock="worker-web").defer_async(
                blueprint="web-server", deployment="worker-web", params={"instances": 1}, audit=audit
            )
    finally:
        await store.close()


async def _outcome(database_url, job):
    store = PgStore(database_url)
    try:
        request = await store.request_of(job)
        return (request.outcome if request else None), await store.events(job)
    finally:
        await store.close()


def test_a_worker_process_runs_a_job_and_records_its_failure(database_url, tmp_path):
    job = asyncio.run(_defer(database_url))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMC_", "VAULT_"))}
    env |= {"UMC_SERVICE_DATABASE_URL": database_url.get_secret_value(),
            "UMC_SERVICE_OIDC_ISSUER": "http://127.0.0.1:9/oidc", "UMC_SERVICE_OIDC_AUDIENCE": "umc-service",
            "UMC_SERVICE_POLICY_FILE": str(tmp_path / "policy.yaml"), "UMC_BACKEND": "local",
            "UMC_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    worker = subprocess.Popen([str(Path(sys.executable).parent / "umc-infra"), "worker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        outcome, events = None, []
        while time.monotonic() < deadline and worker.poll() is None:
            outcome, events = asyncio.run(_outcome(database_url, job))
            if outcome and outcome.startswith(("failed", "succeeded")):
                break
            time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output = worker.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            worker.kill()
            output = worker.communicate()[0]
    assert outcome is not None and outcome.startswith("failed: "), (outcome, output[-3000:])
    kinds = [e.kind for e in events]
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished" and "job_retrying" not in kinds
    assert events[-1].data["state"] == "failed" and events[-1].data["error_type"]
    assert worker.returncode is not None
