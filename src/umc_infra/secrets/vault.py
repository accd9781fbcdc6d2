"""Secrets from Vault (KV v2) through hvac: log in with the first configured auth method, read values as ``SecretStr``.

The auth methods (token, AppRole, JWT ...) are in :mod:`umc_infra.secrets.auth`; this module logs in with the one
the settings configure, renews its token, reads and caches, and turns every failure into a SecretError naming
the reference and what to do, never a value or a credential.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from umc_infra.blueprint.model import SecretRef
from umc_infra.errors import SecretError
from umc_infra.secrets.auth import AuthMethod, AuthRegistry, default_registry
from umc_infra.secrets.redact import Redactor
from umc_infra.settings import Settings

__all__ = ["VaultSource"]

_RENEW_BELOW_S = 120


class VaultSource:
    """KV v2 reads with hvac; logs in on first use and renews or re-logs in as the token runs out.

    Every failure to talk to Vault (an HTTP error status, no answer, an answer that is not Vault's) is a
    :class:`SecretError` naming the reference and the status or kind; never a response body beyond Vault's
    short error message, and never a credential.

    Args:
        settings: Where Vault is, and the credentials of the auth methods.
        client: An ``hvac.Client`` already logged in (then no login, no renewal).
        auth: The auth methods to choose from; default :func:`~umc_infra.secrets.auth.default_registry` (token,
            AppRole, JWT: the first configured one logs in).

    """

    def __init__(self, settings: Settings, *, client: Any | None = None, auth: AuthRegistry | None = None) -> None:
        self._settings = settings
        self._auth = auth if auth is not None else default_registry()
        self._client = client
        self._expires_at: float | None = None
        self._cache: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self._last_status: int | None = None

    def __repr__(self) -> str:
        return f"VaultSource(addr={self._settings.vault_addr!r})"

    def _login(self, ref: SecretRef) -> Any:
        import hvac
        import requests

        s = self._settings
        if not s.vault_addr:
            raise SecretError(f"no Vault address to read {ref}: set VAULT_ADDR (or UMC_VAULT_ADDR)", reference=str(ref))
        method = self._auth.first_configured(s)
        if method is None:
            raise SecretError(f"no Vault credentials to read {ref}: {self._auth.setup()}", reference=str(ref))
        session = requests.Session()
        session.hooks["response"].append(self._note_status)
        # token="": hvac would otherwise take VAULT_TOKEN or ~/.vault-token of whoever runs this and send it along
        # with the login; the configured method alone says who this run is (a token method sets its own).
        client = hvac.Client(url=s.vault_addr, token="", timeout=s.vault_timeout_s, namespace=s.vault_namespace,
                             session=session)  # fmt: skip
        try:
            method.login(client, s)
            ttl = int(client.auth.token.lookup_self()["data"].get("ttl") or 0)
        except SecretError as exc:  # the method's own: it names the method, the reference is the source's
            exc.reference = exc.reference or str(ref)
            raise
        except _failures() as exc:
            doing = f"logging in with {method.describe(s)} to read {ref}"
            raise self._failure(exc, doing=doing, client=client, ref=ref, method=method) from None
        self._expires_at = None if ttl == 0 else time.monotonic() + ttl
        return client

    def _note_status(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """A ``requests`` response hook: the last HTTP status, which hvac's UnexpectedError does not keep."""
        self._last_status = int(response.status_code)

    def _fresh_client(self, ref: SecretRef) -> Any:
        if self._client is None:
            self._client = self._login(ref)
        elif self._expires_at is not None and self._expires_at - time.monotonic() < _RENEW_BELOW_S:
            try:
                ttl = self._client.auth.token.renew_self()["auth"]["lease_duration"]
                self._expires_at = time.monotonic() + int(ttl)
            except Exception:  # not renewable or past max TTL: log in again
                self._client = self._login(ref)
        return self._client

    def read(self, ref: SecretRef) -> SecretStr:
        """Read ``ref`` (each path once per source; KV v2, deleted versions are an error)."""
        client = self._fresh_client(ref)
        cache_key = (ref.mount, ref.path, "")
        try:
            if cache_key not in self._cache:
                response = client.secrets.kv.v2.read_secret_version(
                    path=ref.path, mount_point=ref.mount, raise_on_deleted_version=True
                )
                self._cache[cache_key] = dict(response["data"]["data"] or {})
        except _failures() as exc:
            raise self._failure(exc, doing=f"reading {ref}", client=client, ref=ref) from None
        data = self._cache[cache_key]
        if ref.key not in data:
            raise SecretError(f"secret {ref.mount}/data/{ref.path} has no key {ref.key!r}", reference=str(ref))
        value = data[ref.key]
        return SecretStr(value if isinstance(value, str) else str(value))

    def _failure(
        self, exc: Exception, *, doing: str, client: Any, ref: SecretRef, method: AuthMethod | None = None
    ) -> SecretError:
        """What went wrong talking to Vault, and what to do: the HTTP status or the kind of failure.

        ``method`` is the auth method while logging in, None while reading.

        Only Vault's short error message (its JSON ``errors``, one line, clipped, redacted) is quoted; never
        a response body, which a proxy may fill with anything, and never a credential.
        """
        import hvac.exceptions as vault
        import requests.exceptions as http

        s = self._settings
        at = f"Vault at {s.vault_addr}"
        reference = str(ref)
        if not isinstance(exc, vault.VaultError):
            if isinstance(exc, http.Timeout):
                kind = f"did not answer within {s.vault_timeout_s:g} s ({type(exc).__name__}) while {doing}"
                return SecretError(f"{at} {kind}; check VAULT_ADDR and the network, or raise UMC_VAULT_TIMEOUT",
                                   reference=reference)  # fmt: skip
            if isinstance(exc, http.ConnectionError):
                return SecretError(f"{at} is unreachable ({type(exc).__name__}) while {doing}; check VAULT_ADDR "
                                   "and the network", reference=reference)  # fmt: skip
            if isinstance(exc, http.RequestException):
                return SecretError(f"the request to {at} failed ({type(exc).__name__}) while {doing}; check "
                                   "VAULT_ADDR", reference=reference)  # fmt: skip
            # KeyError, TypeError, ValueError: a 2xx answer that is not the Vault API's JSON
            return SecretError(f"{at} gave an answer that is not Vault's ({type(exc).__name__}) while {doing}; "
                               "check that VAULT_ADDR is Vault itself", reference=reference)  # fmt: skip
        status = _STATUS.get(type(exc).__name__)
        if isinstance(exc, vault.UnexpectedError):
            status = self._last_status
        answered = f"{at} answered {status or 'an unexpected status'}"
        said = _short_message(exc, self._redactor(client))
        login = method is not None
        if not login and isinstance(exc, vault.InvalidPath):
            message = f"secret {ref} does not exist (or its latest version is deleted)"
        elif not login and isinstance(exc, vault.Forbidden):
            message = f"Vault denied reading {ref}: the policy does not allow it (403)"
        elif login and isinstance(exc, vault.InvalidRequest | vault.Unauthorized | vault.Forbidden):
            message = f"{at} refused {doing} ({status}{said}); check the credentials"
        elif isinstance(exc, vault.InvalidPath) and method is not None:
            message = f"{answered} (no such path{said}) while {doing}; check {method.path_setting}"
        elif isinstance(exc, vault.Unauthorized):
            message = f"{answered} (the token is not valid{said}) while {doing}; check the credentials"
        elif isinstance(exc, vault.RateLimitExceeded):
            message = f"{answered} (rate limit exceeded{said}) while {doing}; wait a little and run again"
        elif isinstance(exc, vault.VaultDown):
            message = f"{answered} (sealed, no active node, or down{said}) while {doing}; unseal it or run again later"
        elif isinstance(exc, vault.InternalServerError | vault.BadGateway | vault.VaultNotInitialized):
            meaning = {500: "internal server error", 501: "not initialized",
                       502: "bad gateway: a proxy in front of Vault could not reach it"}[status or 500]  # fmt: skip
            message = (f"{answered} ({meaning}{said}) while {doing}; run again later, and check Vault and any "
                       "proxy in front of it if this persists")  # fmt: skip
        elif isinstance(exc, vault.UnexpectedError):
            message = f"{answered} (unexpected{said}) while {doing}; check that VAULT_ADDR is Vault itself"
        else:  # hvac refused the call before sending it (ParamValidationError, UnsupportedOperation ...)
            message = f"hvac refused the request ({type(exc).__name__}{said}) while {doing}"
        return SecretError(message, reference=reference)

    def _redactor(self, client: Any) -> Redactor:
        """Every credential this source knows, the token a login returned included."""
        token = getattr(client, "token", None)
        return Redactor([*self._auth.credentials(self._settings), *([token] if token else [])])


_STATUS = {
    "InvalidRequest": 400, "Unauthorized": 401, "Forbidden": 403, "InvalidPath": 404, "RateLimitExceeded": 429,
    "InternalServerError": 500, "VaultNotInitialized": 501, "BadGateway": 502, "VaultDown": 503,
}  # fmt: skip
"""hvac's exception per HTTP status (``hvac.exceptions.VaultError.from_status``); others are UnexpectedError."""
_SHORT = 160


def _failures() -> tuple[type[Exception], ...]:
    """What a call to Vault through hvac can raise besides a bug: hvac's and requests' errors, a malformed answer."""
    import hvac.exceptions
    import requests.exceptions

    return hvac.exceptions.VaultError, requests.exceptions.RequestException, KeyError, TypeError, ValueError


def _short_message(exc: Any, redact: Redactor) -> str:
    """Vault's own short error message (its JSON ``errors``) as ``: text``, one line, clipped and redacted.

    hvac puts the whole response body in the message when there is no JSON ``errors``: that is never shown.
    """
    errors = exc.errors
    if not errors:
        return ""
    text = errors if isinstance(errors, str) else "; ".join(str(e) for e in errors)
    line = " ".join(redact(text).split())
    return f": {line[:_SHORT]}{'...' if len(line) > _SHORT else ''}" if line else ""
