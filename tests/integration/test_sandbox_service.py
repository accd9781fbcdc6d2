"""What the sandbox gives the self-service service (issue 14): PostgreSQL, the OIDC issuer and the policy file."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import jwt
import psycopg
import pytest
import yaml

from tests.leaks import leaks, sandbox_secrets
from umc_infra import SandboxError
from umc_infra.sandbox import Sandbox, SandboxSettings, _postgres
from umc_infra.sandbox._config import SERVICE_POLICY

from .conftest import own_ports

UMC_INFRA = str(Path(sys.executable).parent / "umc-infra")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UMC_INFRA, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250"})  # fmt: skip


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_the_database_url_logs_in_and_keeps_a_table(info):
    """The service's URL: a password login over TCP as a role that owns the database, but is no superuser."""
    table = f"probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(info.database_url.get_secret_value(), connect_timeout=5) as conn:
        conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute(f"INSERT INTO {table} (note) VALUES (%s), (%s)", ("first", "second"))
        conn.commit()
    with psycopg.connect(info.database_url.get_secret_value(), connect_timeout=5) as conn:
        assert conn.execute(f"SELECT note FROM {table} ORDER BY id").fetchall() == [("first",), ("second",)]
        user, database, superuser = conn.execute(
            "SELECT current_user, current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    assert (user, database, superuser) == ("umc", "umc", False)


def test_tcp_logins_need_the_password(info):
    url = urllib.parse.urlsplit(info.database_url.get_secret_value())
    wrong = url._replace(netloc=f"umc:not-the-password@{url.hostname}:{url.port}").geturl()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
    superuser = url._replace(netloc=f"postgres@{url.hostname}:{url.port}").geturl()
    with pytest.raises(psycopg.OperationalError, match="password"):  # no way in over TCP without one
        psycopg.connect(superuser, connect_timeout=5)


def _tcp_listeners(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a TCP socket listens on at ``port`` (IPv4 and IPv6), from /proc."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints host-order words
            found.add(ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))
    return found


def test_postgres_listens_on_the_sandbox_host_only_and_its_socket_is_private(sandbox):
    """TCP on 127.0.0.1 alone (no wildcard, no IPv6); the unix socket in a 0700 directory of the state dir."""
    port = sandbox.settings.postgres_port
    assert _tcp_listeners(port) == {sandbox.settings.host}
    socket = _postgres.socket_file(sandbox.paths, port)
    assert socket.is_socket()
    assert socket.parent.parent == sandbox.paths.state_dir
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    assert not Path(f"/var/run/postgresql/.s.PGSQL.{port}").exists()


def test_the_server_does_not_run_as_root_but_its_files_are_the_sandbox_users(sandbox):
    """As root, the server runs in a user namespace as `postgres`; on disk its data directory stays ours."""
    pid = next(c.pid for c in sandbox.status().components if c.name == "postgres")
    assert pid is not None
    assert Path(f"/proc/{pid}/exe").resolve().name == "postgres"
    data = sandbox.paths.postgres_data
    assert data.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
        assert uid_map[1:] == ["0", "1"]  # root outside is one non-root user inside
        assert uid_map[0] != "0"


# -- the OIDC issuer ------------------------------------------------------------------------------------


def _verify(info, token: str) -> dict:
    """Verify an ID token the way the service will: the JWKS found through the issuer's discovery document."""
    with urllib.request.urlopen(f"{info.oidc_issuer}/.well-known/openid-configuration", timeout=10) as response:
        discovery = json.load(response)
    assert discovery["issuer"] == info.oidc_issuer
    keys = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    return jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=info.oidc_audience,
        issuer=info.oidc_issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )


def test_the_issuer_is_the_sandbox_vault(info, sandbox):
    assert info.oidc_issuer == f"http://127.0.0.1:{sandbox.settings.vault_port}/v1/identity/oidc"
    assert info.oidc_audience == "umc-portal"


def test_a_token_for_alice_verifies_against_the_discovered_keys(sandbox, info):
    claims = _verify(info, sandbox.token("alice").get_secret_value())
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["cardiology-it"]
    assert claims["iss"] == info.oidc_issuer and claims["aud"] == info.oidc_audience
    assert claims["iat"] < claims["exp"] <= claims["iat"] + 3600


def test_a_token_whose_claims_were_changed_does_not_verify(sandbox, info):
    """The control of the test above: the verification checks the signature, not only the claims."""
    header, payload, signature = sandbox.token("alice").get_secret_value().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["platform-engineers"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(info, f"{header}.{forged}.{signature}")
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(sandbox.token("alice").get_secret_value(), options={"verify_signature": False, "verify_aud": True},
                   audience="another-client")  # fmt: skip


@pytest.mark.parametrize(("user", "group"), [("bob", "radiology-it"), ("admin", "platform-engineers")])
def test_each_user_gets_their_own_group(sandbox, info, user, group):
    claims = _verify(info, sandbox.token(user).get_secret_value())
    assert (claims["preferred_username"], claims["groups"]) == (user, [group])


def test_tokens_of_two_users_have_different_subjects(sandbox, info):
    alice, bob = (_verify(info, sandbox.token(u).get_secret_value())["sub"] for u in ("alice", "bob"))
    assert alice != bob
    assert _verify(info, sandbox.token("alice").get_secret_value())["sub"] == alice  # the same entity each time


def test_a_token_for_an_unknown_user_is_refused(sandbox):
    with pytest.raises(SandboxError) as refused:
        sandbox.token("mallory")
    assert "'mallory' is not a sandbox user" in str(refused.value)
    assert all(user in str(refused.value) for user in ("alice", "bob", "admin"))


def test_vault_refuses_a_user_login_with_a_wrong_password(info):
    with pytest.raises(hvac.exceptions.InvalidRequest):
        hvac.Client(url=info.vault_addr).auth.userpass.login("alice", "not-alices-password")


def test_a_users_vault_login_may_only_read_id_tokens(sandbox, info):
    """A sandbox user's Vault token reads its ID token and nothing else: not the seeded secrets, not other roles."""
    password = (sandbox._credentials(create=False).user_passwords or {})["alice"].get_secret_value()
    client = hvac.Client(url=info.vault_addr)
    client.auth.userpass.login("alice", password)
    assert client.secrets.identity.generate_signed_id_token(info.inventory.oidc_role)["data"]["token"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path=info.inventory.vault_vsphere_path, mount_point="kv",
                                                 raise_on_deleted_version=True)  # fmt: skip
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.identity.read_role(info.inventory.oidc_role)
    client.auth.token.revoke_self()


def test_the_token_command_prints_the_raw_token(info):
    done = cli("sandbox", "token", "bob")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.count(".") == 2  # nothing but the token, for $(...)
    assert _verify(info, token)["preferred_username"] == "bob"
    unknown = cli("sandbox", "token", "mallory")
    assert unknown.returncode != 0 and unknown.stdout == ""
    assert "alice" in unknown.stderr


# -- the policy file and the settings handed out ----------------------------------------------------------


def test_the_policy_file_is_written_with_the_contract(info):
    assert info.policy_file == info.state_dir / "service-policy.yaml"
    assert info.policy_file.read_text() == SERVICE_POLICY
    assert set(yaml.safe_load(info.policy_file.read_text())["departments"]) == {"cardiology", "radiology"}


def test_env_exports_the_service_settings(info):
    done = cli("sandbox", "env")
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(
        ["bash", "-c", done.stdout + '\nprintf "%s\\n" "$UMC_SERVICE_DATABASE_URL" "$UMC_SERVICE_OIDC_ISSUER" '
         '"$UMC_SERVICE_OIDC_AUDIENCE" "$UMC_SERVICE_POLICY_FILE"'],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown == [info.database_url.get_secret_value(), info.oidc_issuer, info.oidc_audience,
                     str(info.policy_file)]  # fmt: skip


def test_up_and_status_never_show_the_database_password(sandbox, info):
    """``sandbox up`` names the database URL but masks it; ``status`` logs in with it but never prints it."""
    secrets = sandbox_secrets(sandbox, info)
    password = (sandbox._credentials(create=False).postgres_password).get_secret_value()
    assert password in secrets
    env = cli("sandbox", "env")
    assert leaks([password], env.stdout) != []  # the control: the scan finds it where it is printed on purpose
    up, status = cli("sandbox", "up"), cli("sandbox", "status")
    assert up.returncode == 0 and status.returncode == 0, up.stderr + status.stderr
    assert "UMC_SERVICE_DATABASE_URL" in up.stdout and "postgres" in status.stdout
    assert leaks(secrets, up.stdout, up.stderr, status.stdout, status.stderr) == []
    status_json = cli("sandbox", "status", "--json")
    assert leaks(secrets, status_json.stdout, status_json.stderr) == []


def test_the_cluster_is_made_once_and_keeps_its_data_across_down_and_up(tmp_path, sandbox):
    """On a second sandbox of its own (no guests): `down` stops the server and all its workers, `up` starts it on the
    same cluster (no second initdb), whose tables are still there; `down --purge` removes it."""
    settings = SandboxSettings(
        state_dir=tmp_path / "pg",
        cache_dir=sandbox.settings.cache_dir,
        guests=False,
        **own_ports(),
    )
    second = Sandbox(settings)
    try:
        info = second.up()
        made = (second.paths.postgres_data / "PG_VERSION").stat().st_mtime_ns
        with psycopg.connect(info.database_url.get_secret_value()) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        server = next(c.pid for c in second.status().components if c.name == "postgres")
        workers = [int(p) for p in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
        assert workers  # checkpointer, writers, launchers
        second.down()
        assert not [pid for pid in [server, *workers] if Path(f"/proc/{pid}").exists()]
        assert not _tcp_listeners(settings.postgres_port)

        info = second.up()
        assert "postgres" in second.started
        assert (second.paths.postgres_data / "PG_VERSION").stat().st_mtime_ns == made
        with psycopg.connect(info.database_url.get_secret_value()) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(42,)]
    finally:
        second.down(purge=True)
    assert not (tmp_path / "pg").exists()
