"""The portal router: the page and its files, and the sandbox login only when the setting enables it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from umc_infra.errors import UmcInfraError
from umc_infra.service.portal import ASSETS, CONTENT_SECURITY_POLICY, portal_router
from umc_infra.service.settings import load_service_settings

LOOPBACK = ("127.0.0.1", 50000)


@dataclass(frozen=True)
class Options:
    sandbox_login: bool


class FakeIssuer:
    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.asked: list[str] = []

    def users(self) -> Mapping[str, str]:
        return {"alice": "cardiology-it", "bob": "radiology-it", "admin": "platform-engineers"}

    def token(self, user: str) -> SecretStr:
        self.asked.append(user)
        if self.down:
            raise UmcInfraError("the sandbox's Vault does not answer", step="sandbox.token")
        return SecretStr(f"token-of-{user}")


def client(sandbox_login: bool, issuer: FakeIssuer | None = None, *, at: tuple[str, int] = LOOPBACK) -> TestClient:
    app = FastAPI()
    app.include_router(portal_router(Options(sandbox_login), issuer=issuer or FakeIssuer()))
    return TestClient(app, client=at)


def test_the_page_and_its_files_are_served_with_a_strict_policy():
    web = client(False)
    page = web.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert 'data-testid="blueprint"' in page.text
    for name, media_type in ASSETS.items():
        answer = web.get(f"/portal/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"] == media_type, name
        assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["index.html", "../portal.py", "vendor/json-editor/VENDORED.md", "nothing.js", ""])
def test_only_the_listed_files_are_served(name):
    assert client(False).get(f"/portal/{name}").status_code == 404


def test_without_the_setting_the_sandbox_login_does_not_exist():
    issuer = FakeIssuer()
    web = client(False, issuer)
    assert web.get("/api/sandbox/users").status_code == 404
    assert web.post("/api/sandbox/token", json={"user": "alice"}).status_code in (404, 405)
    assert issuer.asked == []


def test_with_the_setting_the_page_gets_a_test_users_token():
    web = client(True)
    assert web.get("/api/sandbox/users").json() == [
        {"name": "alice", "group": "cardiology-it"}, {"name": "bob", "group": "radiology-it"},
        {"name": "admin", "group": "platform-engineers"},
    ]  # fmt: skip
    answer = web.post("/api/sandbox/token", json={"user": "bob"})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert answer.json() == {"user": "bob", "token": "token-of-bob", "token_type": "Bearer"}


def test_an_unknown_user_is_a_422_naming_the_field_and_the_users():
    answer = client(True).post("/api/sandbox/token", json={"user": "mallory"})
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]["problems"]
    assert problem["field"] == "user" and problem["allowed"] == "alice, bob, admin"


def test_tokens_go_to_loopback_clients_only():
    issuer = FakeIssuer()
    answer = client(True, issuer, at=("192.0.2.7", 40000)).post("/api/sandbox/token", json={"user": "admin"})
    assert answer.status_code == 403 and issuer.asked == []


def test_a_sandbox_that_does_not_answer_is_a_503_with_its_message():
    answer = client(True, FakeIssuer(down=True)).post("/api/sandbox/token", json={"user": "alice"})
    assert answer.status_code == 503 and "does not answer" in answer.json()["detail"]["message"]


def test_the_setting_is_read_from_the_environment(monkeypatch, tmp_path):
    for name, value in {"DATABASE_URL": "postgresql://u:p@127.0.0.1:5/d", "OIDC_ISSUER": "http://127.0.0.1:9/oidc",
                        "OIDC_AUDIENCE": "umc", "POLICY_FILE": str(tmp_path / "policy.yaml")}.items():  # fmt: skip
        monkeypatch.setenv(f"UMC_SERVICE_{name}", value)
    monkeypatch.delenv("UMC_SERVICE_SANDBOX_LOGIN", raising=False)
    assert load_service_settings().sandbox_login is False
    monkeypatch.setenv("UMC_SERVICE_SANDBOX_LOGIN", "1")
    assert load_service_settings().sandbox_login is True
