"""Secrets from Vault (KV v2) through hvac: token, AppRole or JWT login, values as ``SecretStr``.

A failure names the reference (``kv/data/apps/x#db_password``) and what to do, never a value.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra._blueprint import Blueprint, SecretRef
from umc_infra._errors import SecretError
from umc_infra._params import ResolvedParams
from umc_infra._settings import Settings

_PLACEHOLDER_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RENEW_BELOW_S = 120


class SecretSource(Protocol):
    """Reads one key of a KV v2 secret."""

    def read(self, ref: SecretRef) -> SecretStr:
        """The value at ``ref``.

        Raises:
            SecretError: Missing, denied, deleted or unreachable.

        """
        ...


class Secrets(BaseModel):
    """Resolved secrets by name; the values show as ``**********`` everywhere."""

    model_config = ConfigDict(frozen=True)

    values: dict[str, SecretStr]

    def __getitem__(self, name: str) -> SecretStr:
        return self.values[name]

    def all(self) -> list[SecretStr]:
        """Every value, for redaction."""
        return list(self.values.values())


def concrete_ref(blueprint: Blueprint, name: str, params: ResolvedParams) -> SecretRef:
    """The reference of secret ``name`` with its placeholders filled from validated params.

    Raises:
        SecretError: A placeholder value could escape its path (``/``, ``..``, odd characters).

    """
    ref = blueprint.secret_ref(name)
    fills: dict[str, str] = {}
    for placeholder in ref.placeholders():
        value = params.deployment if placeholder == "deployment" else str(params.values[placeholder])
        if not _PLACEHOLDER_VALUE.fullmatch(value) or value in {".", ".."}:
            raise SecretError(
                f"secret {name!r}: the value of {{{placeholder}}} cannot be part of a Vault path "
                "(letters, digits, '.', '_' and '-' only)",
                reference=str(ref),
            )
        fills[placeholder] = value
    return ref.model_copy(update={"path": ref.path.format(**fills)})


def resolve(blueprint: Blueprint, params: ResolvedParams, source: SecretSource) -> Secrets:
    """Read every secret the blueprint declares."""
    return Secrets(values={name: source.read(concrete_ref(blueprint, name, params)) for name in blueprint.secrets})


class VaultSource:
    """KV v2 reads with hvac; logs in on first use and renews or re-logs in as the token runs out.

    Auth, first that is configured: token; AppRole (role id + secret id); JWT (a CI job's ID token).
    """

    def __init__(self, settings: Settings, *, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client
        self._expires_at: float | None = None
        self._cache: dict[tuple[str, str, str], Mapping[str, Any]] = {}

    def __repr__(self) -> str:
        return f"VaultSource(addr={self._settings.vault_addr!r})"

    def _login(self) -> Any:
        import hvac
        import hvac.exceptions
        import requests

        s = self._settings
        if not s.vault_addr:
            raise SecretError("no Vault address: set VAULT_ADDR (or UMC_VAULT_ADDR)")
        client = hvac.Client(url=s.vault_addr, timeout=s.vault_timeout_s, namespace=s.vault_namespace)
        try:
            if s.vault_token is not None:
                client.token = s.vault_token.get_secret_value()
                method = "token"
            elif s.vault_role_id and s.vault_secret_id is not None:
                client.auth.approle.login(
                    role_id=s.vault_role_id,
                    secret_id=s.vault_secret_id.get_secret_value(),
                    mount_point=s.vault_approle_mount,
                )
                method = f"AppRole (mount {s.vault_approle_mount})"
            elif s.vault_jwt is not None:
                client.auth.jwt.jwt_login(
                    role=s.vault_jwt_role, jwt=s.vault_jwt.get_secret_value(), path=s.vault_jwt_mount
                )
                method = f"JWT (role {s.vault_jwt_role})"
            else:
                raise SecretError(
                    "no Vault credentials: set VAULT_TOKEN, or UMC_VAULT_ROLE_ID and UMC_VAULT_SECRET_ID (AppRole), "
                    "or UMC_VAULT_JWT (CI job token)"
                )
            info = client.auth.token.lookup_self()["data"]
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized, hvac.exceptions.InvalidRequest):
            raise SecretError(f"Vault at {s.vault_addr} refused the {method} login; check the credentials") from None
        except requests.exceptions.RequestException as exc:
            raise SecretError(f"Vault at {s.vault_addr} is unreachable ({type(exc).__name__})") from None
        except hvac.exceptions.VaultDown:
            raise SecretError(f"Vault at {s.vault_addr} is sealed or down; unseal it or try later") from None
        ttl = int(info.get("ttl") or 0)
        self._expires_at = None if ttl == 0 else time.monotonic() + ttl
        return client

    def _fresh_client(self) -> Any:
        if self._client is None:
            self._client = self._login()
        elif self._expires_at is not None and self._expires_at - time.monotonic() < _RENEW_BELOW_S:
            try:
                ttl = self._client.auth.token.renew_self()["auth"]["lease_duration"]
                self._expires_at = time.monotonic() + int(ttl)
            except Exception:  # not renewable or past max TTL: log in again
                self._client = self._login()
        return self._client

    def read(self, ref: SecretRef) -> SecretStr:
        """Read ``ref`` (each path once per source; KV v2, deleted versions are an error)."""
        import hvac.exceptions
        import requests

        client = self._fresh_client()
        cache_key = (ref.mount, ref.path, "")
        try:
            if cache_key not in self._cache:
                response = client.secrets.kv.v2.read_secret_version(
                    path=ref.path, mount_point=ref.mount, raise_on_deleted_version=True
                )
                self._cache[cache_key] = response["data"]["data"] or {}
        except hvac.exceptions.InvalidPath:
            raise SecretError(
                f"secret {ref} does not exist (or its latest version is deleted)", reference=str(ref)
            ) from None
        except hvac.exceptions.Forbidden:
            raise SecretError(f"Vault denied reading {ref}: the policy does not allow it", reference=str(ref)) from None
        except requests.exceptions.RequestException as exc:
            raise SecretError(
                f"Vault is unreachable while reading {ref} ({type(exc).__name__})", reference=str(ref)
            ) from None
        except hvac.exceptions.VaultDown:
            raise SecretError(f"Vault is sealed or down while reading {ref}", reference=str(ref)) from None
        data = self._cache[cache_key]
        if ref.key not in data:
            raise SecretError(f"secret {ref.mount}/data/{ref.path} has no key {ref.key!r}", reference=str(ref))
        value = data[ref.key]
        return SecretStr(value if isinstance(value, str) else str(value))
