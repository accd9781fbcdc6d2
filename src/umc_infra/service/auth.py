"""Bearer tokens: a JWT verified against the issuer's published keys; ``iss``, ``aud`` and ``exp`` checked.

The API depends on :class:`TokenVerifier` only; :class:`JwtVerifier` is the real one. Its keys come from a
:class:`KeySource`: :class:`IssuerKeys` discovers ``jwks_uri`` at ``<issuer>/.well-known/openid-configuration``
and caches the key set (PyJWKClient); unit tests pass a source holding a locally generated key.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import jwt
import requests

from umc_infra.errors import Unauthenticated
from umc_infra.service.policy import Caller

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
"""Asymmetric algorithms only: never ``none``, never an HMAC keyed with the public key."""


class TokenVerifier(Protocol):
    """Turns a bearer token into a :class:`Caller`, or raises :class:`Unauthenticated`."""

    def verify(self, token: str) -> Caller:
        """The caller the token names."""
        ...


class KeySource(Protocol):
    """The public key that should have signed a token (chosen by its ``kid``)."""

    def signing_key(self, token: str) -> Any:
        """The key, for :func:`jwt.decode`."""
        ...


class IssuerKeys:
    """An issuer's keys: ``jwks_uri`` discovered once, the key set cached (and fetched again for a new ``kid``).

    Args:
        issuer: The issuer URL (no trailing slash).
        timeout_s: For discovery and key fetches.
    """

    def __init__(self, issuer: str, *, timeout_s: float = 5.0) -> None:
        self.issuer = issuer
        self.timeout_s = timeout_s
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _jwks(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                try:
                    answer = requests.get(url, timeout=self.timeout_s)
                    answer.raise_for_status()
                    jwks_uri = answer.json()["jwks_uri"]
                except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                    raise Unauthenticated(f"the token issuer's keys cannot be read ({type(exc).__name__})") from None
                self._client = jwt.PyJWKClient(str(jwks_uri), cache_jwk_set=True, lifespan=300,
                                               timeout=int(self.timeout_s))  # fmt: skip
            return self._client

    def signing_key(self, token: str) -> Any:
        """The issuer's key whose ``kid`` the token names."""
        try:
            return self._jwks().get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise Unauthenticated(f"no issuer key for this token ({exc})") from None
        except jwt.DecodeError:
            raise Unauthenticated("malformed token") from None


class JwtVerifier:
    """Verifies a JWT: signature by the issuer's key, ``iss``, ``aud``, ``exp`` (and ``sub``) required.

    Args:
        issuer: The only accepted ``iss``.
        audience: The ``aud`` a token must carry.
        keys: Where the public keys come from.
        leeway_s: Clock skew allowed on ``exp``/``nbf``/``iat``.
    """

    def __init__(self, *, issuer: str, audience: str, keys: KeySource, leeway_s: float = 30.0) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.leeway_s = leeway_s

    @classmethod
    def for_issuer(cls, issuer: str, audience: str) -> JwtVerifier:
        """A verifier with the issuer's discovered keys."""
        return cls(issuer=issuer, audience=audience, keys=IssuerKeys(issuer))

    def verify(self, token: str) -> Caller:
        """The caller a valid token names.

        Raises:
            Unauthenticated: Bad signature, wrong ``iss`` or ``aud``, expired, a refused algorithm, no ``sub``.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated(f"algorithm {header.get('alg')!r} is not accepted")
        key = self.keys.signing_key(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=list(ALGORITHMS), audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not for this service (aud)") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer (iss)") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token ({type(exc).__name__})") from None
        return caller_of(claims)


def caller_of(claims: dict[str, Any]) -> Caller:
    """The caller of verified claims: ``sub``, ``preferred_username`` (else ``sub``) and ``groups``."""
    subject = str(claims["sub"])
    groups = claims.get("groups") or []
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise Unauthenticated("the token's groups claim is not a list of names")
    username = claims.get("preferred_username")
    return Caller(subject=subject, username=str(username) if username else subject, groups=tuple(groups))
