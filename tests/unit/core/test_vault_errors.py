"""Every way Vault can fail, against a real HTTP server on 127.0.0.1: a SecretError naming the reference and the
HTTP status or kind (exit code 8), never a response body beyond Vault's short message, never a credential."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from tests.unit.core.fake_vault import APPROLE, LOOKUP, READ, FakeVault, serve
from tests.unit.core.fake_vault import json_answer as _json
from umc_infra import SecretError, Settings
from umc_infra.blueprint.model import SecretRef
from umc_infra.cli.common import exit_code
from umc_infra.errors import ExitCode as Exit
from umc_infra.secrets.vault import VaultSource

TOKEN = "hvs.canary-token-0b7e"
SECRET_ID = "canary-secret-id-3c9a"
BODY_CANARY = "canary-proxy-body-51d2"
"""In an HTML error page a proxy returns: hvac puts the whole body in its message; ours never shows it."""
REF = SecretRef(mount="kv", path="apps/h11", key="password")


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with serve() as server:
        yield server


def source(vault: FakeVault, **settings: object) -> VaultSource:
    given = {"vault_addr": vault.addr, "vault_token": SecretStr(TOKEN), "vault_timeout_s": 2.0} | settings
    return VaultSource(Settings(**given))


def failure(vault: FakeVault, **settings: object) -> SecretError:
    with pytest.raises(SecretError) as failed:
        source(vault, **settings).read(REF)
    error = failed.value
    assert error.reference == "kv/data/apps/h11#password" and str(REF) in str(error)
    assert exit_code(error) == Exit.SECRETS
    assert TOKEN not in str(error) and SECRET_ID not in str(error) and BODY_CANARY not in str(error)
    assert "\n" not in str(error)
    return error


def test_the_fake_vault_serves_a_secret(vault):
    assert source(vault).read(REF).get_secret_value() == "s3cret"


VAULT_ERRORS = {"errors": [f"internal error; token {TOKEN} rejected"]}
PROXY_PAGE = (f"<html><body><h1>Bad Gateway</h1><p>{BODY_CANARY}</p></body></html>".encode(), "text/html")


@pytest.mark.parametrize(
    ("path", "answer", "says"),
    [
        (LOOKUP, (500, *_json(VAULT_ERRORS)), "answered 500 (internal server error: internal error; token *** "
                                              "rejected) while logging in with a token to read kv/data/apps/h11"),
        (READ, (500, *_json(VAULT_ERRORS)), "answered 500 (internal server error: internal error; token *** "
                                            "rejected) while reading kv/data/apps/h11#password"),
        (LOOKUP, (502, *PROXY_PAGE), "answered 502 (bad gateway: a proxy in front of Vault could not reach it) "
                                     "while logging in"),
        (READ, (502, *PROXY_PAGE), "answered 502 (bad gateway: a proxy in front of Vault could not reach it) "
                                   "while reading"),
        (LOOKUP, (503, *_json({"errors": ["Vault is sealed"]})), "answered 503 (sealed, no active node, or down: "
                                                                 "Vault is sealed) while logging in"),
        (READ, (503, *PROXY_PAGE), "answered 503 (sealed, no active node, or down) while reading"),
        (READ, (501, *_json({"errors": []})), "answered 501 (not initialized) while reading"),
        (READ, (429, *_json({"errors": ["request path kv/: rate limit quota exceeded"]})),
         "answered 429 (rate limit exceeded: request path kv/: rate limit quota exceeded) while reading"),
        (READ, (504, *PROXY_PAGE), "answered 504 (unexpected) while reading"),
        (READ, (418, *_json({"errors": ["teapot"]})), "answered 418 (unexpected: teapot) while reading"),
        (READ, (404, *_json({"errors": []})), "secret kv/data/apps/h11#password does not exist"),
        (READ, (403, *_json({"errors": ["permission denied"]})), "Vault denied reading kv/data/apps/h11#password"),
        (READ, (401, *_json({"errors": ["token expired"]})), "answered 401 (the token is not valid: token expired)"),
        (LOOKUP, (403, *_json({"errors": ["permission denied"]})), "refused logging in with a token to read "
                                                                  "kv/data/apps/h11#password (403: permission denied)"),
        (READ, (200, b"<html>portal login</html>", "text/html"), "gave an answer that is not Vault's (TypeError) "
                                                                 "while reading"),
        (LOOKUP, (200, *_json({"nothing": "here"})), "gave an answer that is not Vault's (KeyError) while logging in"),
    ],
    ids=["login-500", "read-500", "login-502-html", "read-502-html", "login-503", "read-503", "read-501", "read-429",
         "read-504", "read-418", "read-404", "read-403", "read-401", "login-403", "read-200-html", "login-200-odd"],
)  # fmt: skip
def test_vault_failures_are_secret_errors_with_the_status(vault, path, answer, says):
    vault.answers[path] = answer
    assert says in str(failure(vault))


def test_an_approle_login_that_vault_cannot_answer(vault):
    vault.answers[APPROLE] = (502, *PROXY_PAGE)
    error = failure(vault, vault_token=None, vault_role_id="role-1", vault_secret_id=SecretStr(SECRET_ID))
    assert "answered 502 (bad gateway" in str(error) and "logging in with AppRole (mount approle)" in str(error)
    vault.answers[APPROLE] = (400, *_json({"errors": [f"invalid secret id {SECRET_ID}"]}))
    refused = failure(vault, vault_token=None, vault_role_id="role-1", vault_secret_id=SecretStr(SECRET_ID))
    assert "refused logging in with AppRole (mount approle) to read kv/data/apps/h11#password (400: invalid " \
           "secret id ***); check the credentials" in str(refused)  # fmt: skip


def test_a_vault_that_does_not_answer_in_time(vault):
    vault.delay_s = 1.0
    assert "did not answer within 0.2 s (ReadTimeout) while logging in" in str(failure(vault, vault_timeout_s=0.2))


def test_a_vault_nobody_listens_on():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        addr = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, never listening: refused
        with pytest.raises(SecretError, match=r"is unreachable \(ConnectionError\) while logging in") as failed:
            VaultSource(Settings(vault_addr=addr, vault_token=SecretStr(TOKEN))).read(REF)
    assert failed.value.reference == str(REF)


def test_the_controls_hvac_itself_would_show_the_body_and_the_token(vault):
    """hvac's own exception carries the proxy's page and Vault's text with the token: the checks above can fail."""
    import hvac

    vault.answers[READ] = (502, *PROXY_PAGE)
    client = hvac.Client(url=vault.addr, token=TOKEN)
    with pytest.raises(hvac.exceptions.BadGateway) as raw:
        client.secrets.kv.v2.read_secret_version(path="apps/h11", mount_point="kv", raise_on_deleted_version=True)
    assert BODY_CANARY in str(raw.value)
    vault.answers[READ] = (500, *_json(VAULT_ERRORS))
    with pytest.raises(hvac.exceptions.InternalServerError) as raw_500:
        client.secrets.kv.v2.read_secret_version(path="apps/h11", mount_point="kv", raise_on_deleted_version=True)
    assert TOKEN in str(raw_500.value)
