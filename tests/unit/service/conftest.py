"""Fixtures of the service's unit tests: a local signing key and tokens, the sandbox's policy, an API over fakes.

The API runs on the in-memory store and procrastinate's InMemoryConnector; a job runs in a worker started on
the test client's event loop, with a fake runner in place of the library.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from procrastinate.testing import InMemoryConnector

from umc_infra.blueprint.catalog import Catalog
from umc_infra.errors import Cancelled
from umc_infra.events import EventCallback, StepFinished, StepStarted
from umc_infra.params import Choices
from umc_infra.service.app import Service, create_app
from umc_infra.service.auth import JwtVerifier
from umc_infra.service.jobs import QUEUE, Asked, Runtime, build_app
from umc_infra.service.policy import Policy
from umc_infra.service.store import MemoryStore
from umc_infra.settings import Settings

ISSUER = "http://127.0.0.1:9/v1/identity/oidc"
AUDIENCE = "umc-service"
BLUEPRINTS = Path(__file__).parent  # blueprints/secret-web.yaml: web-server with a secret param
POLICY = {
    "admin_groups": ["platform-engineers"],
    "departments": {
        "cardiology": {
            "groups": ["cardiology-it"],
            "blueprints": ["web-server", "linux-server", "app-stack", "web-ha", "secret-web"],
            "quota": {"vms": 6, "vcpus": 12, "memory_mb": 24576},
            "lease": {"max_days": 30, "default_days": 14, "warn_days": 3},
        },
        "radiology": {
            "groups": ["radiology-it"],
            "blueprints": ["web-server", "linux-server"],
            "quota": {"vms": 2, "vcpus": 4, "memory_mb": 8192},
        },
    },
}
USERS = {"alice": ("cardiology-it",), "bob": ("radiology-it",), "admin": ("platform-engineers",)}


@functools.cache
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class StaticKeys:
    """The issuer's key, generated here."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.public = key.public_key()

    def signing_key(self, token: str) -> Any:
        return self.public


def make_token(user: str = "alice", *, key: Any = None, algorithm: str = "RS256", **claims: Any) -> str:
    """A token as the sandbox's issuer would sign it; ``claims`` override (None removes one)."""
    issued = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": f"entity-{user}", "preferred_username": user,
        "groups": list(USERS.get(user, ())), "iat": issued, "exp": issued + 300,
    }  # fmt: skip
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, signing_key() if key is None else key, algorithm=algorithm, headers={"kid": "k1"})


def verifier() -> JwtVerifier:
    return JwtVerifier(issuer=ISSUER, audience=AUDIENCE, keys=StaticKeys(signing_key()))


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


class FakeRunner:
    """The library's stand-in: emits two events; ``fail[deployment]`` raises; ``block`` waits for cancel."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.asked: list[Asked] = []
        self.fail: dict[str, BaseException] = {}
        self.block = threading.Event()
        self.started = threading.Event()
        self.cancel_seen = False

    def _run(self, action: str, deployment: str, params: Mapping[str, Any], on_event: EventCallback,
             cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
        self.calls.append((action, deployment, dict(params)))
        on_event(StepStarted(deployment=deployment, step="terraform.web", seq=1))
        self.started.set()
        if self.block.is_set():
            self.cancel_seen = cancel.wait(10)
            if not self.cancel_seen:
                raise AssertionError("never cancelled")
            raise Cancelled(f"cancelled before step 'ansible' of deployment {deployment!r}", step="ansible")
        if deployment in self.fail:
            raise self.fail[deployment]
        on_event(StepFinished(deployment=deployment, step="terraform.web", seconds=0.1, ok=True, seq=2))
        return {"deployment": deployment, "action": action}

    def provision(self, blueprint: str, params: Mapping[str, Any], *, deployment: str, on_event: EventCallback,
                  cancel: threading.Event, asked: Asked) -> dict[str, Any]:  # fmt: skip
        self.asked.append(asked)
        return self._run("provision", deployment, params, on_event, cancel)

    def destroy(self, deployment: str, *, on_event: EventCallback, cancel: threading.Event,
                asked: Asked) -> dict[str, Any]:  # fmt: skip
        self.asked.append(asked)
        return self._run("destroy", deployment, {}, on_event, cancel)


class FakePlanner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    def plan(self, blueprint: str, params: Mapping[str, Any], *, deployment: str) -> dict[str, Any]:
        self.calls.append((blueprint, dict(params), deployment))
        counts = {"web": {"add": 1, "change": 0, "remove": 0}}
        return {"deployment": deployment, "blueprint": blueprint, "fingerprint": "f1", "exists": False,
                "counts": counts, "param_changes": {}, "deferred": []}  # fmt: skip

    def choices(self, blueprint: str) -> Choices:
        """The site's names, as a small vCenter would have them."""
        return {"networks": ("VM Network", "DMZ"), "folders": ("", "cardiology"), "datastore_clusters": ()}


class Api:
    """A running API over fakes: its client, store, queue connector, runner and planner."""

    def __init__(self, client: TestClient, service: Service, connector: InMemoryConnector, runner: FakeRunner,
                 planner: FakePlanner) -> None:  # fmt: skip
        self.client = client
        self.service = service
        self.store: MemoryStore = service.store  # type: ignore[assignment]
        self.connector = connector
        self.runner = runner
        self.planner = planner

    def work(self) -> None:
        """Run the queued jobs to the end (a worker on the client's loop that stops when the queue is empty)."""
        run = functools.partial(self.service.queue.run_worker_async, queues=[QUEUE], wait=False,
                                install_signal_handlers=False, listen_notify=False)  # fmt: skip
        self.client.portal.call(run)  # type: ignore[union-attr]

    def request(self, user: str, deployment: str, blueprint: str = "web-server", **params: Any) -> Any:
        body = {"blueprint": blueprint, "deployment": deployment, "params": params}
        return self.client.post("/api/deployments", json=body, headers=auth(user))


def make_service(policy: dict[str, Any] = POLICY) -> tuple[Service, InMemoryConnector, FakeRunner, FakePlanner]:
    store = MemoryStore()
    connector = InMemoryConnector()
    runner, planner = FakeRunner(), FakePlanner()
    catalog = Catalog.from_settings(Settings(blueprint_path=[BLUEPRINTS]))
    service = Service(policy=Policy.parse(policy), verifier=verifier(), store=store,
                      queue=build_app(connector, Runtime(store=store, runner=runner)), catalog=catalog,
                      planner=planner)  # fmt: skip
    return service, connector, runner, planner


@pytest.fixture
def api() -> Iterator[Api]:
    service, connector, runner, planner = make_service()
    with TestClient(create_app(service)) as client:
        yield Api(client, service, connector, runner, planner)
