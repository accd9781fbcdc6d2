"""Vault auth methods: one class per method, in an ordered registry whose first configured method logs in.

As in hvac (``hvac.api.auth_methods``), each method is its own module: :mod:`.token`, :mod:`.approle`,
:mod:`.jwt`. A new one (Kubernetes, say) is a module with a class that has the :class:`AuthMethod` members,
and one line in :mod:`.registry` (or :func:`register` at run time, e.g. from a plugin). The registry also
lists every credential the settings hold (:func:`credentials`): what a run's redactor starts from.
"""

from umc_infra.secrets.auth.approle import AppRoleAuth
from umc_infra.secrets.auth.base import AuthMethod
from umc_infra.secrets.auth.jwt import JwtAuth
from umc_infra.secrets.auth.registry import AuthRegistry, credentials, default_registry, register
from umc_infra.secrets.auth.token import TokenAuth

__all__ = [
    "AppRoleAuth",
    "AuthMethod",
    "AuthRegistry",
    "JwtAuth",
    "TokenAuth",
    "credentials",
    "default_registry",
    "register",
]
