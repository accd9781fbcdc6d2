"""JWT auth: a CI job's ID token (GitLab's ``id_tokens``, GitHub's OIDC token) for a role at ``UMC_VAULT_JWT_MOUNT``."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from umc_infra.secrets.auth.base import not_configured
from umc_infra.settings import Settings


class JwtAuth:
    """JWT login with ``UMC_VAULT_JWT`` for the role ``UMC_VAULT_JWT_ROLE``."""

    name = "jwt"
    setup = "UMC_VAULT_JWT (CI job token)"
    path_setting = "UMC_VAULT_JWT_MOUNT"

    def configured(self, settings: Settings) -> bool:
        """Whether a JWT is set (the role and mount have defaults)."""
        return settings.vault_jwt is not None

    def describe(self, settings: Settings) -> str:
        """``JWT (role ci, mount jwt)``."""
        return f"JWT (role {settings.vault_jwt_role}, mount {settings.vault_jwt_mount})"

    def login(self, client: Any, settings: Settings) -> None:
        """``POST auth/<mount>/login`` with the role and the JWT."""
        if settings.vault_jwt is None:
            raise not_configured(self, settings)
        client.auth.jwt.jwt_login(
            role=settings.vault_jwt_role, jwt=settings.vault_jwt.get_secret_value(), path=settings.vault_jwt_mount
        )

    def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
        """The JWT, if set."""
        return tuple(v for v in (settings.vault_jwt,) if v is not None)
