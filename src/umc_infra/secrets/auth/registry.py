"""The auth methods in the order they are tried: the first configured one logs in.

The order is code, not configuration: settings supply credentials, never the order in which methods are
tried. A new method is one module and one line here (in :func:`_builtin`), or :func:`register` at run time.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import SecretStr

from umc_infra.errors import SecretError
from umc_infra.secrets.auth.approle import AppRoleAuth
from umc_infra.secrets.auth.base import AuthMethod
from umc_infra.secrets.auth.jwt import JwtAuth
from umc_infra.secrets.auth.token import TokenAuth
from umc_infra.settings import Settings


class AuthRegistry:
    """Vault auth methods, in the order they are tried.

    Args:
        methods: The methods, first tried first; their names must differ.

    Raises:
        SecretError: Two methods share a name.

    """

    def __init__(self, methods: Iterable[AuthMethod] = ()) -> None:
        self._methods: list[AuthMethod] = []
        for method in methods:
            self.register(method)

    def __repr__(self) -> str:
        return f"AuthRegistry({', '.join(self.names())})"

    @property
    def methods(self) -> tuple[AuthMethod, ...]:
        """The methods, first tried first."""
        return tuple(self._methods)

    def names(self) -> tuple[str, ...]:
        """Their names, first tried first."""
        return tuple(m.name for m in self._methods)

    def register(self, method: AuthMethod, *, before: str | None = None) -> None:
        """Add ``method``: tried last, or just before the method named ``before``.

        Raises:
            SecretError: A method of that name is registered already, or none is named ``before``.

        """
        names = self.names()
        if method.name in names:
            raise SecretError(f"cannot register the Vault auth method {method.name!r}: one of that name is registered "
                              f"already (registered: {', '.join(names)}); give it another name")  # fmt: skip
        if before is None:
            self._methods.append(method)
        elif before in names:
            self._methods.insert(names.index(before), method)
        else:
            raise SecretError(f"cannot register the Vault auth method {method.name!r} before {before!r}: no method "
                              f"of that name (registered: {', '.join(names) or 'none'})")  # fmt: skip

    def copy(self) -> AuthRegistry:
        """A registry with the same methods in the same order, to extend without changing this one."""
        return AuthRegistry(self._methods)

    def first_configured(self, settings: Settings) -> AuthMethod | None:
        """The method that logs in with ``settings``: the first configured one; None if none is."""
        return next((m for m in self._methods if m.configured(settings)), None)

    def setup(self) -> str:
        """What to set to use any of them (``set VAULT_TOKEN, or ...``), for the message when none is configured."""
        if not self._methods:
            return "no Vault auth method is registered"
        return "set " + ", or ".join(m.setup for m in self._methods)

    def credentials(self, settings: Settings) -> list[SecretStr]:
        """Every credential set in ``settings`` for any of the methods, each once, in method order.

        What a run's redactor starts from. A method's secrets count even when the method is not fully configured
        (a secret id without its role id is still a secret that must not leak).
        """
        seen: set[str] = set()
        found: list[SecretStr] = []
        for method in self._methods:
            for secret in method.credentials(settings):
                value = secret.get_secret_value()
                if value and value not in seen:
                    seen.add(value)
                    found.append(secret)
        return found


def _builtin() -> AuthRegistry:
    return AuthRegistry(
        (
            TokenAuth(),
            AppRoleAuth(),
            JwtAuth(),
        )
    )


_DEFAULT = _builtin()


def default_registry() -> AuthRegistry:
    """The process's registry: token, AppRole, JWT, and what :func:`register` added."""
    return _DEFAULT


def register(method: AuthMethod, *, before: str | None = None) -> None:
    """Add ``method`` to the process's registry: tried last, or just before the method named ``before``.

    Raises:
        SecretError: A method of that name is registered already, or none is named ``before``.

    """
    _DEFAULT.register(method, before=before)


def credentials(settings: Settings) -> list[SecretStr]:
    """Every credential ``settings`` hold for a method of the process's registry, each once.

    What a run's redactor starts from: ``Redactor(credentials(settings))``.
    """
    return _DEFAULT.credentials(settings)
