"""The portal page: one HTML page, its script and style, and the vendored form library, served by the API.

The page (``GET /``) calls the API with a bearer token it keeps in memory only (never in storage, a cookie or a
URL). A real site pastes a token from its own OIDC login; the sandbox can hand out its test users' tokens:
with ``sandbox_login`` on (``UMC_SERVICE_SANDBOX_LOGIN=1``), ``GET /api/sandbox/users`` lists them and
``POST /api/sandbox/token {"user": "alice"}`` returns a fresh token from :meth:`umc_infra.sandbox.Sandbox.token`,
to loopback clients only. Off (the default), those two routes do not exist (404).

The app includes it with one line::

    app.include_router(portal_router(settings))
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.errors import UmcInfraError

STATIC = "static"
"""The page's files, next to this module (package data: the wheel ships ``src/umc_infra/**``)."""

ASSETS: dict[str, str] = {
    "portal.js": "text/javascript; charset=utf-8",
    "portal.css": "text/css; charset=utf-8",
    "vendor/json-editor/jsoneditor.js": "text/javascript; charset=utf-8",
    "vendor/json-editor/jsoneditor.js.LICENSE.txt": "text/plain; charset=utf-8",
    "vendor/json-editor/LICENSE": "text/plain; charset=utf-8",
}
"""What ``GET /portal/<name>`` serves (nothing else: no directory listing, no path from the request reaches
the file system)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page runs only its own scripts and talks only to its own origin (json-editor sets inline styles)."""

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class PortalOptions(Protocol):
    """What the portal reads of the service's settings."""

    @property
    def sandbox_login(self) -> bool:
        """Offer the sandbox's test users (``/api/sandbox/users``, ``/api/sandbox/token``)."""
        ...


class TokenIssuer(Protocol):
    """Hands out bearer tokens for test users (the sandbox; tests pass a fake)."""

    def users(self) -> Mapping[str, str]:
        """User name -> the group it belongs to."""
        ...

    def token(self, user: str) -> SecretStr:
        """A fresh token for ``user``.

        Raises:
            UmcInfraError: ``user`` is unknown, or the issuer does not answer.
        """
        ...


class SandboxIssuer:
    """:meth:`umc_infra.sandbox.Sandbox.token` of the sandbox ``UMC_SANDBOX_*`` names (its state directory)."""

    def users(self) -> Mapping[str, str]:
        """See :class:`TokenIssuer`."""
        from umc_infra.sandbox import SandboxInventory

        return SandboxInventory().oidc_users

    def token(self, user: str) -> SecretStr:
        """See :class:`TokenIssuer`."""
        from umc_infra.sandbox import Sandbox

        return Sandbox().token(user)


class TokenRequest(BaseModel):
    """``POST /api/sandbox/token``."""

    model_config = ConfigDict(extra="forbid")

    user: str


class SandboxUser(BaseModel):
    """A sandbox test user."""

    name: str
    group: str


class IssuedToken(BaseModel):
    """A bearer token for the page to keep in memory."""

    user: str
    token: str
    token_type: str = "Bearer"


def asset(name: str) -> bytes:
    """One of the page's files (``index.html`` or a name in :data:`ASSETS`)."""
    return _static().joinpath(*name.split("/")).read_bytes()


def _static() -> Traversable:
    return files(__package__ or "umc_infra.service").joinpath(STATIC)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refusal(status: int, message: str, error_type: str, **extra: Any) -> JSONResponse:
    """The API's error document (``{"detail": {"message", "error_type", ...}}``)."""
    detail = {"message": message, "error_type": error_type, "step": "sandbox.token", **extra}
    return JSONResponse(status_code=status, content={"detail": detail}, headers={"Cache-Control": "no-store"})


def portal_router(settings: PortalOptions, *, issuer: TokenIssuer | None = None) -> APIRouter:
    """The portal's routes: the page at ``/``, its files at ``/portal/<name>``, and the sandbox login if enabled.

    Args:
        settings: The service's settings (:class:`~umc_infra.service.settings.ServiceSettings`: ``sandbox_login``).
        issuer: Where sandbox tokens come from (default: the sandbox's Vault, :class:`SandboxIssuer`).
    """
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(asset("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/portal/{name:path}", include_in_schema=False)
    def portal_file(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            return JSONResponse(status_code=404, content={"detail": "Not Found"})
        return Response(asset(name), media_type=media_type, headers=_HEADERS)

    if not settings.sandbox_login:
        return router
    tokens = issuer if issuer is not None else SandboxIssuer()

    @router.get("/api/sandbox/users", include_in_schema=False)
    def sandbox_users() -> list[SandboxUser]:
        """The sandbox's test users (sandbox login only)."""
        return [SandboxUser(name=name, group=group) for name, group in tokens.users().items()]

    @router.post("/api/sandbox/token", include_in_schema=False, response_model=None)
    def sandbox_token(body: TokenRequest, request: Request) -> IssuedToken | JSONResponse:
        """A fresh token for a sandbox test user, to loopback clients only (sandbox login only)."""
        if not _loopback(request):
            return _refusal(403, "sandbox tokens are handed out to loopback clients only", "Forbidden")
        users = tokens.users()
        if body.user not in users:
            problem = {"field": "user", "message": f"{body.user!r} is not a sandbox user", "allowed": ", ".join(users)}
            return _refusal(422, f"{body.user!r} is not a sandbox user", "ParamsError", problems=[problem])
        try:
            token = tokens.token(body.user)
        except UmcInfraError as exc:
            return _refusal(503, str(exc), type(exc).__name__)
        issued = IssuedToken(user=body.user, token=token.get_secret_value())
        return JSONResponse(issued.model_dump(), headers={"Cache-Control": "no-store"})

    return router
