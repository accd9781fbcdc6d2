"""Token auth: a Vault token given as it is (``VAULT_TOKEN``); checked by the token lookup that follows every login."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from umc_infra.secrets.auth.base import not_configured
from umc_infra.settings import Settings


class TokenAuth:
    """A Vault token (``VAULT_TOKEN`` or ``UMC_VAULT_TOKEN``): no login call, the token is used as it is."""

    name = "token"
    setup = "VAULT_TOKEN"
    path_setting = "VAULT_ADDR"

    def configured(self, settings: Settings) -> bool:
        """Whether a token is set."""
        return settings.vault_token is not None

    def describe(self, settings: Settings) -> str:
        """``a token``."""
        return "a token"

    def login(self, client: Any, settings: Settings) -> None:
        """Put the token on the client (the source's token lookup then checks it)."""
        if settings.vault_token is None:
            raise not_configured(self, settings)
        client.token = settings.vault_token.get_secret_value()

    def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
        """The token, if set."""
        return tuple(v for v in (settings.vault_token,) if v is not None)
