"""Shared helpers for unit tests."""

import ipaddress
from pathlib import Path

from pydantic import SecretStr

from umc_infra.sandbox._config import INVENTORY, Credentials, SandboxInfo

CANARIES = {
    "vault_root_token": "root-canary-1",
    "vault_read_token": "read-token-1",
    "vault_secret_id": "secret-id-1",
    "vsphere_password": "vsphere-canary-1",
    "ssh_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-canary-1\n",
    "jwt_signing_key": "jwt-canary-1",
    "demo_db_password": "db-canary-1",
    "windows_admin_password": "win-admin-canary-1",
    "windows_join_password": "win-join-canary-1",
    "postgres_password": "pg-canary-1",
}
USER_CANARIES = {"alice": "alice-canary-1", "bob": "bob-canary-1", "admin": "admin-canary-1"}


def fake_credentials() -> Credentials:
    """Sandbox credentials whose every secret is a recognisable canary."""
    return Credentials(
        vault_role_id="role-1",
        ssh_public_key="ssh-ed25519 AAAA test",
        user_passwords={user: SecretStr(value) for user, value in USER_CANARIES.items()},
        **{name: SecretStr(value) for name, value in CANARIES.items()},
    )


def fake_info(directory: Path, /, **overrides: object) -> SandboxInfo:
    """Connection settings of a sandbox on the default ports, whose every secret is a recognisable canary."""
    values: dict[str, object] = dict(
        state_dir=directory,
        vsphere_server="127.0.0.1:18989",
        vsphere_user=INVENTORY.vsphere_user,
        vsphere_password=SecretStr("vs-password-canary"),
        vault_addr="http://127.0.0.1:18200",
        vault_token=SecretStr("read-token-canary"),
        vault_role_id="role-1",
        vault_secret_id=SecretStr("secret-id-canary"),
        s3_endpoint="http://127.0.0.1:18555",
        s3_secret_key=SecretStr("s3-secret-canary"),
        guest_network=ipaddress.IPv4Network("127.0.1.0/24"),
        guest_ssh_port=22,
        database_url=SecretStr("postgresql://umc:db-password-canary@127.0.0.1:18432/umc"),
        oidc_issuer="http://127.0.0.1:18200/v1/identity/oidc",
        oidc_audience="umc-portal",
        policy_file=directory / "service-policy.yaml",
    )
    values.update(overrides)
    return SandboxInfo.model_validate(values)
