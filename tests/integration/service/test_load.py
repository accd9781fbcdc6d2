"""A load test on loopback: 50 concurrent API clients listing, planning and requesting (``benchmarks/load.py``).

The real ``umc-infra serve`` on the sandbox (PostgreSQL, the token issuer, vCenter's live choices, Terraform
plans through the library) with a database of this test's own and no worker: the requests stay queued, so
nothing is created. Every call is answered and none with a 5xx; each department's quota holds although its
requests arrive at once. (``nox -s bench`` runs the same load and reports the read latencies.)
"""

from __future__ import annotations

import asyncio
import os

from tests.benchmark_modules import benchmark_module
from umc_infra.sandbox import scratch_database

from .conftest import served


def test_fifty_clients_at_once_get_no_server_error_and_the_quotas_hold(sandbox, info, tmp_path):
    load = benchmark_module("load")
    tokens = {user: sandbox.token(user).get_secret_value() for user in load.USERS}
    clients, rounds, planners = 50, 2, 4
    with scratch_database(info) as database:
        env = {**os.environ, **info.environment(), "UMC_SERVICE_DATABASE_URL": database.get_secret_value()}
        with served(env, tmp_path / "service.log") as url:
            result = asyncio.run(load.run_load(url, tokens, clients=clients, rounds=rounds, planners=planners,
                                               prefix="load-", deadline_s=240))  # fmt: skip
    log = (tmp_path / "service.log").read_text()
    assert result.server_errors == [], (result.server_errors[:5], log[-3000:])
    requesting = clients  # every client asks for a deployment of its own
    assert result.calls == clients * rounds * len(load.READS) + planners + requesting + result.figures()["accepted"]
    assert set(result.statuses) <= {200, 202, 409}, result.statuses
    assert result.statuses[200] == clients * rounds * len(load.READS) + planners + result.figures()["accepted"]
    # each department's quota in VMs (one per request): no more accepted than fit, none refused that fitted
    accepted = {user: len(made) for user, made in result.accepted.items()}
    assert accepted.get("alice", 0) + accepted.get("admin", 0) == 6  # cardiology (admin acts for it)
    assert accepted.get("bob", 0) == 2  # radiology
    assert result.figures()["refused"] == requesting - 8
    figures = result.figures()
    assert figures["read_ms"]["n"] == clients * rounds * len(load.READS) and figures["read_ms"]["p95"] > 0
    assert "Traceback" not in log, log[-3000:]
