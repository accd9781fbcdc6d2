"""Shared helpers for unit tests."""

from pydantic import SecretStr

from umc_infra.sandbox._config import Credentials

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
}


def fake_credentials() -> Credentials:
    """Sandbox credentials whose every secret is a recognisable canary."""
    return Credentials(
        vault_role_id="role-1",
        ssh_public_key="ssh-ed25519 AAAA test",
        **{name: SecretStr(value) for name, value in CANARIES.items()},
    )
