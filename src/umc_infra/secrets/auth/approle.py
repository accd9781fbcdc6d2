"""AppRole auth: a role id and a secret id (a machine's login), at ``UMC_VAULT_APPROLE_MOUNT``."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from umc_infra.secrets.auth.base import not_configured
from umc_infra.settings import Settings


class AppRoleAuth:
    """AppRole login with ``UMC_VAULT_ROLE_ID`` and ``UMC_VAULT_SECRET_ID``."""

    name = "approle"
    setup = "UMC_VAULT_ROLE_ID and UMC_VAULT_SECRET_ID (AppRole)"
    path_setting = "UMC_VAULT_APPROLE_MOUNT"

    def configured(self, settings: Settings) -> bool:
        """Whether both the role id and the secret id are set."""
        return bool(settings.vault_role_id) and settings.vault_secret_id is not None

    def describe(self, settings: Settings) -> str:
        """``AppRole (mount approle)``."""
        return f"AppRole (mount {settings.vault_approle_mount})"

    def login(self, client: Any, settings: Settings) -> None:
        """``POST auth/<mount>/login`` with the role id and secret id."""
        if not settings.vault_role_id or settings.vault_secret_id is None:
            raise not_configured(self, settings)
        client.auth.approle.login(
            role_id=settings.vault_role_id,
            secret_id=settings.vault_secret_id.get_secret_value(),
            mount_point=settings.vault_approle_mount,
        )

    def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
        """The secret id, if set (the role id names the role, like a user name: it is not a secret)."""
        return tuple(v for v in (settings.vault_secret_id,) if v is not None)
