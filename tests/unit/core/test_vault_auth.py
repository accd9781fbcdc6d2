"""Vault auth methods, one class each in an ordered registry: each logs in against a fake Vault over real HTTP, the
first configured one wins (token, AppRole, JWT), a new method is one class plus one registry line, the registry
lists every credential the settings hold (what a run's redactor starts from), and no error carries one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from tests.unit.core.fake_vault import (
    APPROLE,
    APPROLE_TOKEN,
    JWT,
    JWT_TOKEN,
    LOOKUP,
    READ,
    RENEW,
    FakeVault,
    json_answer,
    login_answer,
    serve,
)
from umc_infra import SecretError, Settings
from umc_infra.blueprint.model import SecretRef
from umc_infra.secrets import auth
from umc_infra.secrets.auth import AppRoleAuth, AuthRegistry, JwtAuth, TokenAuth, credentials, default_registry
from umc_infra.secrets.auth import registry as registry_module
from umc_infra.secrets.redact import Redactor
from umc_infra.secrets.vault import VaultSource

TOKEN = "hvs.canary-token-4d1f"
ROLE_ID = "role-id-7a2c"
SECRET_ID = "canary-secret-id-9e03"
CI_JWT = "eyJhbGciOiJSUzI1NiJ9.canary-jwt-payload-61b8.sig"
SA_TOKEN = "canary-service-account-token-2f5d"
K8S_TOKEN = "hvs.from-k8s-canary"
CANARIES = (TOKEN, SECRET_ID, CI_JWT, SA_TOKEN, APPROLE_TOKEN, JWT_TOKEN, K8S_TOKEN)
REF = SecretRef(mount="kv", path="apps/h11", key="password")
K8S = "/v1/auth/kubernetes/login"

CREDENTIALS: dict[str, Any] = {
    "token": {"vault_token": SecretStr(TOKEN)},
    "approle": {"vault_role_id": ROLE_ID, "vault_secret_id": SecretStr(SECRET_ID)},
    "jwt": {"vault_jwt": SecretStr(CI_JWT)},
}


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with serve() as server:
        yield server


def settings(vault: FakeVault, *methods: str, **more: Any) -> Settings:
    given: dict[str, Any] = {"vault_addr": vault.addr, "vault_timeout_s": 2.0}
    for method in methods:
        given |= CREDENTIALS[method]
    return Settings(**(given | more))


def logins(vault: FakeVault) -> list[str]:
    return [p for p in vault.paths() if p.endswith("/login")]


class KubernetesAuth:
    """What adding Kubernetes auth takes: this class (in its own file, secrets/auth/kubernetes.py) and one line in
    the registry. Its configuration comes from its constructor: no new settings field is needed."""

    name = "kubernetes"
    setup = "a service-account token file (Kubernetes)"
    path_setting = "the Kubernetes auth mount"

    def __init__(self, *, token: str | None, role: str = "umc", mount: str = "kubernetes") -> None:
        self._token = SecretStr(token) if token else None
        self._role = role
        self._mount = mount

    def configured(self, settings: Settings) -> bool:
        return self._token is not None

    def describe(self, settings: Settings) -> str:
        return f"Kubernetes (role {self._role}, mount {self._mount})"

    def login(self, client: Any, settings: Settings) -> None:
        if self._token is None:
            raise SecretError(f"cannot log in to Vault with {self.describe(settings)}: no service-account token")
        client.auth.kubernetes.login(role=self._role, jwt=self._token.get_secret_value(), mount_point=self._mount)

    def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
        return (self._token,) if self._token is not None else ()


def with_kubernetes(token: str | None = SA_TOKEN) -> AuthRegistry:
    registry = default_registry().copy()
    registry.register(KubernetesAuth(token=token), before="jwt")
    return registry


# -- each method logs in --------------------------------------------------------------------------


def test_token_auth_uses_the_token_as_it_is(vault):
    assert VaultSource(settings(vault, "token")).read(REF).get_secret_value() == "s3cret"
    assert vault.paths() == [LOOKUP, READ]
    assert {r.token for r in vault.requests} == {TOKEN}


@pytest.mark.parametrize("method", ["approle", "jwt"])
def test_the_token_file_of_whoever_runs_it_is_never_sent(vault, monkeypatch, tmp_path, method):
    """hvac reads ``~/.vault-token`` when given no token: a developer's or a CI image's own Vault token would
    travel with the run's login. The configured method alone says who the run is."""
    (tmp_path / ".vault-token").write_text("hvs.ambient-file-token-canary")
    monkeypatch.setenv("HOME", str(tmp_path))
    vault.answers[f"/v1/auth/{method}/login"] = login_answer(APPROLE_TOKEN)
    assert VaultSource(settings(vault, method)).read(REF).get_secret_value() == "s3cret"
    assert all(r.token != "hvs.ambient-file-token-canary" for r in vault.requests)
    assert vault.requests[0].token is None


@pytest.mark.parametrize("mount", ["approle", "machines"])
def test_approle_auth_logs_in_with_role_id_and_secret_id(vault, mount):
    path = f"/v1/auth/{mount}/login"
    vault.answers[path] = login_answer(APPROLE_TOKEN)
    assert VaultSource(settings(vault, "approle", vault_approle_mount=mount)).read(REF).get_secret_value() == "s3cret"
    assert vault.paths() == [path, LOOKUP, READ]
    login, *after = vault.requests
    assert login.method == "POST" and login.body == {"role_id": ROLE_ID, "secret_id": SECRET_ID}
    assert login.token is None and {r.token for r in after} == {APPROLE_TOKEN}


@pytest.mark.parametrize(("role", "mount"), [("ci", "jwt"), ("deploy", "gitlab")])
def test_jwt_auth_logs_in_with_the_ci_job_token(vault, role, mount):
    path = f"/v1/auth/{mount}/login"
    vault.answers[path] = login_answer(JWT_TOKEN)
    source = VaultSource(settings(vault, "jwt", vault_jwt_role=role, vault_jwt_mount=mount))
    assert source.read(REF).get_secret_value() == "s3cret"
    assert vault.paths() == [path, LOOKUP, READ]
    login, *after = vault.requests
    assert login.method == "POST" and login.body == {"role": role, "jwt": CI_JWT}
    assert login.token is None and {r.token for r in after} == {JWT_TOKEN}


def test_a_token_about_to_expire_is_renewed_and_a_refused_renewal_logs_in_again(vault):
    vault.answers[LOOKUP] = (200, *json_answer({"data": {"ttl": 60}}))  # under the 120 s renewal margin
    vault.answers[RENEW] = login_answer(APPROLE_TOKEN, ttl=3600)
    vault.answers["/v1/kv/data/apps/other"] = vault.answers[READ]
    source = VaultSource(settings(vault, "approle"))
    source.read(REF)
    source.read(SecretRef(mount="kv", path="apps/other", key="password"))
    assert logins(vault) == [APPROLE] and RENEW in vault.paths()
    vault.requests.clear()
    vault.answers[RENEW] = (403, *json_answer({"errors": ["permission denied"]}))
    vault.answers["/v1/kv/data/apps/third"] = vault.answers[READ]
    source._expires_at = 0.0  # as if the hour had passed
    source.read(SecretRef(mount="kv", path="apps/third", key="password"))
    assert vault.paths() == [RENEW, APPROLE, LOOKUP, "/v1/kv/data/apps/third"]


# -- the registry: order, and a new method --------------------------------------------------------


def test_the_builtin_order_is_token_approle_jwt():
    assert default_registry().names() == ("token", "approle", "jwt")
    assert [type(m) for m in default_registry().methods] == [TokenAuth, AppRoleAuth, JwtAuth]


@pytest.mark.parametrize(
    ("configured", "login_paths", "token"),
    [
        (("token", "approle", "jwt"), [], TOKEN),
        (("approle", "jwt"), [APPROLE], APPROLE_TOKEN),
        (("jwt",), [JWT], JWT_TOKEN),
    ],
    ids=["token-first", "approle-before-jwt", "jwt-alone"],
)
def test_the_first_configured_method_logs_in(vault, configured, login_paths, token):
    VaultSource(settings(vault, *configured)).read(REF)
    assert logins(vault) == login_paths
    assert vault.requests[-1].path == READ and vault.requests[-1].token == token


def test_a_half_configured_approle_is_skipped(vault):
    """A secret id without its role id does not make AppRole the method: JWT logs in."""
    VaultSource(settings(vault, "jwt", vault_secret_id=SecretStr(SECRET_ID))).read(REF)
    assert logins(vault) == [JWT]


def test_no_method_configured_names_what_to_set(vault):
    with pytest.raises(SecretError) as failed:
        VaultSource(settings(vault)).read(REF)
    assert str(failed.value) == (
        "[secrets] no Vault credentials to read kv/data/apps/h11#password: set VAULT_TOKEN, or UMC_VAULT_ROLE_ID and "
        "UMC_VAULT_SECRET_ID (AppRole), or UMC_VAULT_JWT (CI job token)"
    )
    assert failed.value.reference == str(REF) and vault.requests == []
    with pytest.raises(SecretError, match=r"or a service-account token file \(Kubernetes\), or UMC_VAULT_JWT"):
        VaultSource(settings(vault), auth=with_kubernetes(token=None)).read(REF)


def test_a_registered_method_logs_in_in_its_place(vault):
    vault.answers[K8S] = login_answer(K8S_TOKEN)
    registry = with_kubernetes()
    assert registry.names() == ("token", "approle", "kubernetes", "jwt")
    assert default_registry().names() == ("token", "approle", "jwt")  # the copy was extended, not the default
    VaultSource(settings(vault, "jwt"), auth=registry).read(REF)  # before JWT: it wins over a configured JWT
    assert logins(vault) == [K8S]
    assert vault.requests[0].body == {"role": "umc", "jwt": SA_TOKEN}
    assert vault.requests[-1].path == READ and vault.requests[-1].token == K8S_TOKEN
    vault.requests.clear()
    VaultSource(settings(vault, "approle", "jwt"), auth=registry).read(REF)  # after AppRole: AppRole wins
    assert logins(vault) == [APPROLE]
    assert credentials(settings(vault, "jwt")) == [SecretStr(CI_JWT)]  # not in the default registry
    assert registry.credentials(settings(vault, "jwt")) == [SecretStr(SA_TOKEN), SecretStr(CI_JWT)]


def test_register_adds_to_the_process_registry(vault, monkeypatch):
    monkeypatch.setattr(registry_module, "_DEFAULT", default_registry().copy())  # undone after the test
    vault.answers[K8S] = login_answer(K8S_TOKEN)
    auth.register(KubernetesAuth(token=SA_TOKEN))
    assert default_registry().names() == ("token", "approle", "jwt", "kubernetes")
    VaultSource(settings(vault)).read(REF)
    assert logins(vault) == [K8S]
    assert credentials(settings(vault, "jwt")) == [SecretStr(CI_JWT), SecretStr(SA_TOKEN)]


def test_registering_a_taken_name_or_an_unknown_place_is_refused():
    registry = default_registry().copy()
    with pytest.raises(SecretError, match=r"'approle': one of that name is registered already \(registered: token, "):
        registry.register(AppRoleAuth())
    with pytest.raises(SecretError, match=r"before 'ldap': no method of that name \(registered: token, approle, jwt"):
        registry.register(KubernetesAuth(token=SA_TOKEN), before="ldap")
    assert registry.names() == ("token", "approle", "jwt")
    with pytest.raises(SecretError, match="one of that name is registered already"):
        AuthRegistry([TokenAuth(), TokenAuth()])


# -- credentials: what the run's redactor starts from ---------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, []),
        ({"vault_role_id": ROLE_ID}, []),  # a role id names a role: not a secret
        (CREDENTIALS["token"], [TOKEN]),
        (CREDENTIALS["approle"], [SECRET_ID]),
        (CREDENTIALS["jwt"], [CI_JWT]),
        ({"vault_secret_id": SecretStr(SECRET_ID)}, [SECRET_ID]),  # half an AppRole: still a secret
        (CREDENTIALS["jwt"] | CREDENTIALS["approle"] | CREDENTIALS["token"], [TOKEN, SECRET_ID, CI_JWT]),
        ({"vault_token": SecretStr(TOKEN), "vault_jwt": SecretStr(TOKEN)}, [TOKEN]),  # each once
        ({"vault_token": SecretStr(""), "vault_jwt": SecretStr(CI_JWT)}, [CI_JWT]),  # an empty value hides nothing
    ],
    ids=["none", "role-id", "token", "approle", "jwt", "secret-id-alone", "all", "same-value", "empty"],
)
def test_credentials_lists_exactly_the_secrets_the_settings_hold(given, expected):
    found = credentials(Settings(**given))
    assert all(isinstance(c, SecretStr) for c in found)
    assert [c.get_secret_value() for c in found] == expected


def test_a_redactor_from_the_credentials_hides_every_one():
    everything = Settings(**CREDENTIALS["token"], **CREDENTIALS["approle"], **CREDENTIALS["jwt"])
    text = f"token={TOKEN} secret_id={SECRET_ID} jwt={CI_JWT} role_id={ROLE_ID}"
    assert Redactor(credentials(everything))(text) == f"token=*** secret_id=*** jwt=*** role_id={ROLE_ID}"


# -- no credential in any error -------------------------------------------------------------------

SECRETS_OF = {
    "token": (TOKEN,),
    "approle": (SECRET_ID, APPROLE_TOKEN),
    "jwt": (CI_JWT, JWT_TOKEN),
    "kubernetes": (SA_TOKEN, K8S_TOKEN),
}
"""Each method's credential, then the token its login returns: what a Vault (or a proxy) may echo back."""


def source_for(vault: FakeVault, method: str) -> VaultSource:
    if method == "kubernetes":
        return VaultSource(settings(vault), auth=with_kubernetes())
    return VaultSource(settings(vault, method))


LOGIN_PATH = {"token": LOOKUP, "approle": APPROLE, "jwt": JWT, "kubernetes": K8S}
DESCRIBED = {
    "token": "a token",
    "approle": "AppRole (mount approle)",
    "jwt": "JWT (role ci, mount jwt)",
    "kubernetes": "Kubernetes (role umc, mount kubernetes)",
}


@pytest.mark.parametrize("method", list(LOGIN_PATH))
@pytest.mark.parametrize(
    ("where", "status"),
    [("login", 400), ("login", 403), ("login", 500), ("lookup", 401), ("read", 500), ("read", 403)],
)
def test_no_error_carries_a_credential(vault, method, where, status):
    vault.answers[K8S] = login_answer(K8S_TOKEN)
    path = {"login": LOGIN_PATH[method], "lookup": LOOKUP, "read": READ}[where]
    echoed = SECRETS_OF[method] if where != "login" else SECRETS_OF[method][:1]  # no token before a login
    vault.answers[path] = (status, *json_answer({"errors": [f"echo: {' '.join(echoed)} ."]}))
    with pytest.raises(SecretError) as failed:
        source_for(vault, method).read(REF)
    message = str(failed.value)
    if (where, status) != ("read", 403):  # which says "the policy does not allow it" instead
        assert f"echo: {' '.join('***' for _ in echoed)} ." in message  # Vault's message, redacted
    assert not [c for c in CANARIES if c in message], message
    assert failed.value.reference == str(REF)
    if where != "read":
        assert f"logging in with {DESCRIBED[method]} to read {REF}" in message


def test_the_control_a_credential_the_registry_does_not_list_is_not_hidden(vault):
    """The redaction of Vault's messages is only as good as the registry's credentials: a method that does not list
    its secret leaks it. So the test above can fail."""

    class Forgetful(KubernetesAuth):
        def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
            return ()

    registry = default_registry().copy()
    registry.register(Forgetful(token=SA_TOKEN))
    vault.answers[K8S] = (400, *json_answer({"errors": [f"echo: {SA_TOKEN}"]}))
    with pytest.raises(SecretError) as failed:
        VaultSource(settings(vault), auth=registry).read(REF)
    assert SA_TOKEN in str(failed.value)


@pytest.mark.parametrize(
    ("method", "hint"),
    [("token", "check VAULT_ADDR"), ("approle", "check UMC_VAULT_APPROLE_MOUNT"), ("jwt", "check UMC_VAULT_JWT_MOUNT"),
     ("kubernetes", "check the Kubernetes auth mount")],
)  # fmt: skip
def test_a_login_path_vault_does_not_have_names_the_method_and_its_setting(vault, method, hint):
    vault.answers.pop(LOGIN_PATH[method], None)  # the fake answers 404 for a path it does not know
    with pytest.raises(SecretError) as failed:
        source_for(vault, method).read(REF)
    assert f"answered 404 (no such path) while logging in with {DESCRIBED[method]} to read {REF}; {hint}" in str(
        failed.value
    )


@pytest.mark.parametrize("method", [TokenAuth(), AppRoleAuth(), JwtAuth()], ids=lambda m: m.name)
def test_a_method_asked_to_log_in_without_its_settings_says_what_to_set(vault, method):
    with pytest.raises(SecretError, match=r"cannot log in to Vault with .+: set ") as failed:
        method.login(object(), Settings(vault_secret_id=SecretStr(SECRET_ID)))
    assert method.setup in str(failed.value) and SECRET_ID not in str(failed.value)


def test_a_method_s_own_error_gets_the_reference(vault):
    class Broken(KubernetesAuth):
        def configured(self, settings: Settings) -> bool:
            return True

    registry = AuthRegistry([Broken(token=None)])
    with pytest.raises(SecretError, match=r"cannot log in to Vault with Kubernetes .+: no service-account token") as e:
        VaultSource(settings(vault), auth=registry).read(REF)
    assert e.value.reference == str(REF) and vault.requests == []
