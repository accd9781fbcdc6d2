"""A load test of the service's API on loopback: concurrent clients listing, planning and requesting.

Each of ``clients`` clients (its own HTTP connection, a sandbox user in turn: alice, bob, admin) waits for
all to be ready, then reads its way through what a portal page does (who am I, the blueprints, a blueprint's
form with the site's live choices, the deployments, the audit) ``rounds`` times; ``planners`` of them preview
a deployment (a real Terraform plan through the library, bounded by the service), and every client asks for
a deployment of its own (a provision, queued: the department's quota decides which are accepted). Bounded in
count (every client makes the same fixed number of calls) and in time (``deadline_s`` for the whole run).

:func:`run_load` returns the figures ``nox -s bench`` writes under ``service_load`` (latencies in ms, per
endpoint and over all reads: the median, p95 and worst) and the test suite checks (no 5xx, every call
answered, the quota held under concurrency).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from umc_infra.sandbox import Sandbox, SandboxInfo, scratch_database

USERS = ("alice", "bob", "admin")
READS = ("me", "blueprints", "form", "deployments", "audit")
"""The read endpoints, by the name the figures use."""


@dataclass
class LoadResult:
    """What one load run measured."""

    clients: int
    calls: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    accepted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Deployments accepted (202), by user."""
    refused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Deployments refused with 409 (a quota or a name taken), by user."""
    server_errors: list[str] = field(default_factory=list)
    """Every 5xx or failed call: ``METHOD path: status or error``."""

    def figures(self) -> dict[str, Any]:
        """The JSON figures: calls, statuses, and latency percentiles per endpoint and over all reads."""
        reads = [ms for name in READS for ms in self.latencies_ms.get(name, [])]
        return {
            "clients": self.clients,
            "calls": self.calls,
            "seconds": round(self.seconds, 2),
            "calls_per_second": round(self.calls / self.seconds, 1) if self.seconds else None,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "server_errors": len(self.server_errors),
            "read_ms": percentiles(reads),
            "endpoints_ms": {name: percentiles(ms) for name, ms in sorted(self.latencies_ms.items())},
            "accepted": sum(len(v) for v in self.accepted.values()),
            "refused": sum(len(v) for v in self.refused.values()),
        }


def percentiles(values: list[float]) -> dict[str, float | int]:
    """The median, p95 (nearest rank) and worst of ``values``, in ms rounded to 0.1; and how many."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1), "p95": round(p95, 1),
            "max": round(ordered[-1], 1)}  # fmt: skip


async def run_load(url: str, tokens: Mapping[str, str], *, clients: int = 50, rounds: int = 3, planners: int = 5,
                   blueprint: str = "web-server", prefix: str = "load-", deadline_s: float = 300.0,
                   params: Mapping[str, Any] | None = None,
                   acting_for: Mapping[str, str] | None = None) -> LoadResult:  # fmt: skip
    """Run ``clients`` concurrent clients against the API at ``url``; what they met.

    Args:
        url: The API (``http://127.0.0.1:PORT``).
        tokens: A bearer token per user in :data:`USERS`.
        clients: How many clients at once.
        rounds: How many times each client reads its way through :data:`READS`.
        planners: How many of the clients (the first) also preview their deployment.
        blueprint: What the clients plan and ask for.
        prefix: Their deployments are ``<prefix><n>``.
        deadline_s: The whole run is cancelled (and the result says so) after this long.
        params: The blueprint's params (default: one VM).
        acting_for: The department a user names in its requests (default: admin acts for cardiology).
    """
    result = LoadResult(clients=clients)
    asked = dict(params or {"instances": 1})
    departments = dict(acting_for if acting_for is not None else {"admin": "cardiology"})
    ready = asyncio.Event()
    waiting = clients

    async def call(http: httpx.AsyncClient, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            answer = await http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            result.server_errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        finally:
            result.calls += 1
        result.latencies_ms[name].append((time.perf_counter() - started) * 1000)
        result.statuses[answer.status_code] += 1
        if answer.status_code >= 500:
            result.server_errors.append(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
        return answer

    async def client(n: int) -> None:
        nonlocal waiting
        user = USERS[n % len(USERS)]
        deployment = f"{prefix}{n}"
        headers = {"Authorization": f"Bearer {tokens[user]}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=deadline_s) as http:
            waiting -= 1
            if not waiting:
                ready.set()
            await ready.wait()  # everyone at once
            for _ in range(rounds):
                await call(http, "me", "GET", "/api/me")
                await call(http, "blueprints", "GET", "/api/blueprints")
                await call(http, "form", "GET", f"/api/blueprints/{blueprint}")
                await call(http, "deployments", "GET", "/api/deployments")
                await call(http, "audit", "GET", "/api/audit", params={"user": user})
            body = {"blueprint": blueprint, "deployment": deployment, "params": asked, "ticket": f"LOAD-{n}"}
            if user in departments:
                body["department"] = departments[user]
            if n < planners:
                await call(http, "plan", "POST", "/api/plans", json=body)
            answer = await call(http, "request", "POST", "/api/deployments", json=body)
            if answer is not None and answer.status_code == 202:
                result.accepted[user].append(deployment)
                await call(http, "job", "GET", f"/api/jobs/{answer.json()['job']}")
            elif answer is not None and answer.status_code == 409:
                result.refused[user].append(deployment)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*(client(n) for n in range(clients)))
    except TimeoutError:
        result.server_errors.append(f"the run did not end within {deadline_s:.0f} s")
    result.seconds = time.perf_counter() - started
    return result


def service_load(sandbox: Sandbox, info: SandboxInfo, log: Path, *, clients: int = 50, rounds: int = 5,
                 planners: int = 5) -> dict[str, Any]:  # fmt: skip
    """The figures of :func:`run_load` against ``umc-infra serve`` on the sandbox, and the first few failures.

    The API gets a scratch database and no worker: the requests stay queued and nothing is created.
    """
    tokens = {user: sandbox.token(user).get_secret_value() for user in USERS}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with scratch_database(info) as database, log.open("ab") as out:
        env = {**os.environ, **info.environment(), "UMC_SERVICE_DATABASE_URL": database.get_secret_value()}
        serve = subprocess.Popen([str(Path(sys.executable).parent / "umc-infra"), "serve", "--host", "127.0.0.1",
                                  "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not _answers(url):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"umc-infra serve did not start; its log: {log}")
                time.sleep(0.3)
            result = asyncio.run(run_load(url, tokens, clients=clients, rounds=rounds, planners=planners,
                                          prefix="bench-load-"))  # fmt: skip
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    return {**result.figures(), "rounds": rounds, "planners": planners, "failures": result.server_errors[:10]}


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
