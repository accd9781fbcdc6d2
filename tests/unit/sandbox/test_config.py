"""Sandbox configuration: settings, paths, seeded data and handed-out settings, without any service."""

import ipaddress
import json
import stat
import subprocess
import urllib.parse

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from tests.unit.conftest import CANARIES, USER_CANARIES, fake_credentials, fake_info
from umc_infra.sandbox import SandboxSettings
from umc_infra.sandbox._config import (
    INVENTORY,
    OIDC_TEMPLATE,
    SERVICE_POLICY,
    Credentials,
    SandboxPaths,
    database_url,
    gateway,
    oidc_token_policy,
    pool_addresses,
    sshd_argv,
    vault_config,
    vault_policy,
    vcsim_environment,
    write_private,
)


def test_defaults_are_loopback_and_distinct_ports():
    settings = SandboxSettings()
    assert settings.host == ipaddress.IPv4Address("127.0.0.1")
    assert settings.guest_network == ipaddress.IPv4Network("127.0.1.0/24")
    assert settings.postgres_port == 18432
    assert len({settings.vcsim_port, settings.vault_port, settings.s3_port, settings.postgres_port}) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("host", "10.0.0.5", "not a loopback address"),
        ("host", "0.0.0.0", "not a loopback address"),
        ("host", "192.168.1.1", "not a loopback address"),
        ("guest_network", "10.1.0.0/24", "not inside 127.0.0.0/8"),
        ("guest_network", "127.0.1.0/30", "too small"),
        ("vcsim_port", 0, "greater than or equal to 1"),
        ("vault_port", 70000, "less than or equal to 65535"),
        ("host", "127.0.0.1\n-o x", "valid IPv4"),
        ("guest_network", "../127.0.1.0/24", "valid IPv4"),
    ],
)
def test_bad_settings_name_the_field_and_what_is_allowed(field, value, message):
    with pytest.raises(ValidationError) as info:
        SandboxSettings(**{field: value})
    text = str(info.value)
    assert field in text
    assert message in text


@pytest.mark.parametrize("other", ["vcsim_port", "vault_port", "s3_port"])
def test_ports_must_differ(other):
    with pytest.raises(ValidationError, match="must differ"):
        SandboxSettings(**{other: 18000, "postgres_port": 18000})
    with pytest.raises(ValidationError, match="must differ"):
        SandboxSettings(vcsim_port=18000, vault_port=18000)


def test_settings_come_from_umc_sandbox_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UMC_SANDBOX_VCSIM_PORT", "19989")
    monkeypatch.setenv("UMC_SANDBOX_STATE_DIR", str(tmp_path / "sb"))
    monkeypatch.setenv("UMC_SANDBOX_GUESTS", "false")
    monkeypatch.setenv("UMC_SANDBOX_POSTGRES_PORT", "19432")
    settings = SandboxSettings()
    assert settings.postgres_port == 19432
    assert settings.vcsim_port == 19989
    assert settings.state_dir == tmp_path / "sb"
    assert settings.guests is False
    # explicit arguments win over the environment
    assert SandboxSettings(vcsim_port=20000).vcsim_port == 20000


def test_unknown_setting_is_rejected():
    with pytest.raises(ValidationError, match="vcsim_prot"):
        SandboxSettings(vcsim_prot=1)


def test_paths_live_under_state_and_cache(tmp_path):
    paths = SandboxPaths.of(SandboxSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"))
    assert paths.credentials == tmp_path / "state" / "credentials.json"
    assert paths.guests == tmp_path / "state" / "guests"
    assert paths.rootfs("bookworm") == tmp_path / "cache" / "rootfs" / "bookworm-2"
    assert paths.vcsim_binary.parent == tmp_path / "cache" / "bin"
    assert paths.postgres_data == tmp_path / "state" / "postgres"
    assert paths.postgres_run == tmp_path / "state" / "postgres-run"  # the socket: in the state dir, not /var/run
    assert paths.service_policy == tmp_path / "state" / "service-policy.yaml"


def test_pool_and_gateway():
    net = ipaddress.IPv4Network("127.0.1.0/24")
    assert pool_addresses(net) == (ipaddress.IPv4Address("127.0.1.10"), ipaddress.IPv4Address("127.0.1.157"))
    assert gateway(net) == ipaddress.IPv4Address("127.0.1.1")


def test_vault_policy_is_read_only_on_umc_and_apps():
    policy = vault_policy(INVENTORY)
    assert 'path "kv/data/umc/*"' in policy
    assert 'path "kv/data/apps/*"' in policy
    assert policy.count('capabilities = ["read"]') == 2
    for verb in ("create", "update", "delete", "list", "sudo"):
        assert verb not in policy


def test_environment_hands_out_connection_settings_but_not_the_vsphere_password(tmp_path):
    env = fake_info(tmp_path).environment()
    assert env["VAULT_ADDR"] == "http://127.0.0.1:18200"
    assert env["VAULT_TOKEN"] == "read-token-canary"
    assert env["VSPHERE_SERVER"] == "127.0.0.1:18989"
    assert env["UMC_IP_POOL"] == "127.0.1.10-127.0.1.157"
    assert env["UMC_VSPHERE_TEMPLATE"] == "templates/umc-linux-template"
    assert env["UMC_VSPHERE_WINDOWS_TEMPLATE"] == "templates/umc-windows-template"
    assert "vs-password-canary" not in json.dumps(env)
    assert all(not k.startswith("VSPHERE_PASSWORD") for k in env)
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3-secret-canary"  # generated per sandbox, never a shared word
    assert env["UMC_VSPHERE_CREDENTIALS"] == "kv/data/umc/vsphere"  # the library reads it from Vault


def test_export_lines_survive_a_real_shell(tmp_path):
    info = fake_info(tmp_path, state_dir=tmp_path / "it's $(here)")
    script = "\n".join(info.export_lines()) + '\nprintf "%s|%s" "$UMC_VSPHERE_NETWORK" "$UMC_SANDBOX_STATE_DIR"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"VM Network|{tmp_path}/it's $(here)"


def test_info_repr_hides_secrets(tmp_path):
    text = repr(fake_info(tmp_path)) + str(fake_info(tmp_path))
    for canary in ("vs-password-canary", "read-token-canary", "secret-id-canary", "s3-secret-canary",
                   "db-password-canary"):  # fmt: skip
        assert canary not in text


def test_environment_hands_out_the_service_settings(tmp_path):
    env = fake_info(tmp_path).environment()
    assert env["UMC_SERVICE_DATABASE_URL"] == "postgresql://umc:db-password-canary@127.0.0.1:18432/umc"
    assert env["UMC_SERVICE_OIDC_ISSUER"] == "http://127.0.0.1:18200/v1/identity/oidc"
    assert env["UMC_SERVICE_OIDC_AUDIENCE"] == "umc-portal"
    assert env["UMC_SERVICE_POLICY_FILE"] == str(tmp_path / "service-policy.yaml")


@pytest.mark.parametrize("password", ["plain-Password_123", "p@ss:w/rd?#%&=+ 'q\"$"])
def test_database_url_carries_any_password_intact(password):
    url = database_url("127.0.0.1", 18432, INVENTORY, SecretStr(password))
    parts = urllib.parse.urlsplit(url.get_secret_value())
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("postgresql", "127.0.0.1", 18432, "/umc")
    assert parts.username == "umc"
    assert urllib.parse.unquote(parts.password) == password
    assert password not in repr(url)


def test_service_policy_is_the_contract():
    """The policy file of ISSUE14's contract: two departments, the admin group, the sandbox users' groups."""
    policy = yaml.safe_load(SERVICE_POLICY)
    assert policy == {
        "admin_groups": ["platform-engineers"],
        "departments": {
            "cardiology": {
                "groups": ["cardiology-it"],
                "blueprints": ["web-server", "linux-server", "app-stack", "web-ha"],
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
    groups = {g for d in policy["departments"].values() for g in d["groups"]} | set(policy["admin_groups"])
    assert groups == set(INVENTORY.oidc_users.values())  # every sandbox user lands in a department or is admin


def test_sandbox_users_are_the_contract():
    assert INVENTORY.oidc_users == {"alice": "cardiology-it", "bob": "radiology-it", "admin": "platform-engineers"}


def test_a_user_login_may_only_read_the_portal_role_tokens():
    policy = oidc_token_policy(INVENTORY)
    assert policy == 'path "identity/oidc/token/portal" {\n  capabilities = ["read"]\n}\n'


def test_the_token_template_gives_username_and_groups_as_json():
    """OpenBao fills each placeholder with a JSON value: the template is JSON once they are filled."""
    filled = OIDC_TEMPLATE.replace("{{identity.entity.name}}", '"alice"').replace(
        "{{identity.entity.groups.names}}", '["cardiology-it"]'
    )
    assert json.loads(filled) == {"preferred_username": "alice", "groups": ["cardiology-it"]}


def test_simulator_gets_its_password_in_the_environment_only(tmp_path):
    env = vcsim_environment("127.0.0.1:18989", "user", SecretStr("pw-canary"), tmp_path)
    assert env["UMC_VCSIM_PASSWORD"] == "pw-canary"
    assert env["UMC_VCSIM_LISTEN"] == "127.0.0.1:18989"
    assert env["TMPDIR"] == str(tmp_path)


def test_sshd_listens_on_the_guest_ip_only():
    argv = sshd_argv(ipaddress.IPv4Address("127.0.1.10"), 2222)
    assert "ListenAddress=127.0.1.10:2222" in argv
    assert "PasswordAuthentication=no" in argv
    assert "-D" in argv
    assert not any("0.0.0.0" in a for a in argv)


def test_private_files_are_created_0600(tmp_path):
    path = tmp_path / "sub" / "credentials.json"
    write_private(path, "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_round_trip_and_hide_secrets_in_repr():
    creds = fake_credentials()
    for canary in CANARIES.values():
        assert canary not in repr(creds)
    for canary in USER_CANARIES.values():
        assert canary not in repr(creds)
    again = Credentials.model_validate_json(creds.dump())
    assert again.vault_root_token.get_secret_value() == CANARIES["vault_root_token"]
    assert again.ssh_private_key == creds.ssh_private_key
    assert again.user_passwords == creds.user_passwords  # the users' passwords, revealed in the 0600 file only


def test_vault_config_is_in_memory_on_loopback():
    config = vault_config("127.0.0.1", 18200)
    assert 'storage "inmem" {}' in config
    assert 'address = "127.0.0.1:18200"' in config
    assert "dev" not in config


def test_a_sandbox_made_before_the_windows_secrets_gets_them_once_and_keeps_them(tmp_path):
    from umc_infra.sandbox import Sandbox

    sandbox = Sandbox(SandboxSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"))
    old = json.loads(fake_credentials().dump())
    for name in ("windows_admin_password", "windows_join_password", "s3_secret_key", "postgres_password",
                 "user_passwords"):  # fmt: skip
        old.pop(name, None)
    write_private(sandbox.paths.credentials, json.dumps(old))
    first = sandbox._credentials(create=False)
    assert first.windows_admin_password is not None and first.windows_join_password is not None
    assert first.windows_admin_password.get_secret_value() != first.windows_join_password.get_secret_value()
    assert first.postgres_password is not None and len(first.postgres_password.get_secret_value()) >= 16
    assert first.user_passwords is not None and set(first.user_passwords) == {"alice", "bob", "admin"}
    again = sandbox._credentials(create=False)
    assert again.windows_admin_password == first.windows_admin_password  # written once, then read back
    assert again.postgres_password == first.postgres_password
    assert again.user_passwords == first.user_passwords
    assert stat.S_IMODE(sandbox.paths.credentials.stat().st_mode) == 0o600


def test_windows_passwords_meet_windows_complexity_and_are_long_enough_to_scan():
    from umc_infra.sandbox._vault import new_windows_password

    for password in (new_windows_password() for _ in range(50)):
        assert len(password) >= 16
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() for c in password) and any(not c.isalnum() for c in password)
