"""The service's settings: the database, the token issuer and the policy file (``UMC_SERVICE_*``).

The library's own settings (``UMC_*``: vCenter, Vault, state backend) are read as they always are: the
worker runs the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from umc_infra.settings import invalid_settings

_PREFIX = "UMC_SERVICE_"


class ServiceSettings(BaseSettings):
    """Where the service's database, token issuer and policy are; from ``UMC_SERVICE_*`` variables."""

    model_config = SettingsConfigDict(env_prefix=_PREFIX, frozen=True, extra="ignore")

    database_url: SecretStr
    """``postgresql://user:password@127.0.0.1:port/db``: the queue and the service's tables."""
    oidc_issuer: str = Field(pattern=r"^https?://\S+$")
    """The token issuer; its keys are found at ``<issuer>/.well-known/openid-configuration``."""
    oidc_audience: str = Field(min_length=1)
    """The ``aud`` every token must carry."""
    policy_file: Path
    """The YAML policy: admin groups, departments, their blueprints, quotas and leases."""
    sandbox_login: bool = False
    """Offer the sandbox's test users on the portal page (``/api/sandbox/*``): never on a real site."""

    @field_validator("oidc_issuer")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _postgres(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value


def load_service_settings(overrides: Mapping[str, Any] | None = None) -> ServiceSettings:
    """The service's settings from the environment, ``overrides`` (those not None) winning.

    Raises:
        SettingsError: Names each invalid or missing setting by its ``UMC_SERVICE_*`` variable.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as exc:
        raise invalid_settings(exc, lambda name: _PREFIX + name.upper()) from None
