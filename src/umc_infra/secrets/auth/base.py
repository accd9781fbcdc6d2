"""What a Vault auth method is: how it knows it is configured, how it logs in, which secrets it holds."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import SecretStr

from umc_infra.errors import SecretError
from umc_infra.settings import Settings


class AuthMethod(Protocol):
    """One way to log in to Vault (token, AppRole, JWT ...), as hvac has one class per auth method.

    A method reads its configuration from :class:`~umc_infra.settings.Settings` (or from its own constructor
    arguments, for a method registered at run time). It never puts a credential in a message.
    """

    @property
    def name(self) -> str:
        """Its name in a registry (``"approle"``): unique there, and what ``register(before=...)`` names."""
        ...

    @property
    def setup(self) -> str:
        """What to set to use it (``"UMC_VAULT_JWT (CI job token)"``), for the message when no method is configured."""
        ...

    @property
    def path_setting(self) -> str:
        """The setting to check when Vault has no login path for it (its mount, e.g. ``UMC_VAULT_JWT_MOUNT``)."""
        ...

    def configured(self, settings: Settings) -> bool:
        """Whether ``settings`` hold everything this method needs to log in."""
        ...

    def describe(self, settings: Settings) -> str:
        """The method as messages name it (``"AppRole (mount approle)"``); never a credential."""
        ...

    def login(self, client: Any, settings: Settings) -> None:
        """Log ``client`` (an ``hvac.Client`` without a token) in, leaving the token it gets on the client.

        Raises:
            hvac.exceptions.VaultError: Vault refused or failed; :class:`~umc_infra.secrets.vault.VaultSource`
                reports it as a SecretError naming this method (:meth:`describe`) and the HTTP status.
            requests.exceptions.RequestException: Vault did not answer; reported the same way.
            SecretError: A problem the method finds itself, naming the method, never a credential.

        """
        ...

    def credentials(self, settings: Settings) -> tuple[SecretStr, ...]:
        """Its secret values that are set, configured or not (a secret id without its role id is still a secret)."""
        ...


def not_configured(method: AuthMethod, settings: Settings) -> SecretError:
    """The error of a method asked to log in without its settings (a registry picks only configured ones)."""
    return SecretError(f"cannot log in to Vault with {method.describe(settings)}: set {method.setup}")
