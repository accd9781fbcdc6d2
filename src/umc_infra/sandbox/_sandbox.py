"""The sandbox as one object: ``up``, ``down``, ``status``, ``info``, guests and test helpers."""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.errors import ComponentFailed, SandboxDamaged, SandboxError, SandboxNotFound, UnknownSandboxUser
from umc_infra.sandbox import _daemons, _guests, _host, _postgres, _s3, _vault, _vcsim
from umc_infra.sandbox._config import (
    INVENTORY,
    SERVICE_POLICY,
    Credentials,
    SandboxInfo,
    SandboxPaths,
    SandboxSettings,
    database_url,
    write_private,
)
from umc_infra.sandbox._guests import Guest

AGENT = "agent"
_SERVICES = (_vcsim.NAME, _vault.NAME, _s3.NAME, _postgres.NAME)


class ComponentStatus(BaseModel):
    """One component's health, from a real client call."""

    model_config = ConfigDict(frozen=True)

    name: str
    healthy: bool
    detail: str
    pid: int | None = None


class SandboxStatus(BaseModel):
    """Health of every component and the guests."""

    model_config = ConfigDict(frozen=True)

    components: tuple[ComponentStatus, ...]
    guests: tuple[Guest, ...]

    @property
    def healthy(self) -> bool:
        """Every component answers."""
        return all(c.healthy for c in self.components)


class Sandbox:
    """A vCenter simulator, Vault (also the OIDC issuer), an S3/DynamoDB state backend, PostgreSQL and SSH guests.

    All on loopback; PostgreSQL and the OIDC issuer serve the self-service service.

    ``up()`` is idempotent: what runs is reused, what is missing is started and seeded. Used as a
    context manager it brings the sandbox up and, on exit, stops it again if it started anything.

    Example:
        >>> from umc_infra.sandbox import Sandbox
        >>> with Sandbox() as sb:                     # doctest: +SKIP
        ...     print(sb.info().vsphere_server)

    Args:
        settings: Where state lives and services listen; defaults from ``UMC_SANDBOX_*``.
        on_progress: Called with a line of text for each long step (builds, starts, seeding).

    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else SandboxSettings()
        self.paths = SandboxPaths.of(self.settings)
        self._progress = on_progress or (lambda _message: None)
        self._started: list[str] = []

    def __repr__(self) -> str:
        return f"Sandbox(state_dir={str(self.paths.state_dir)!r}, host={self.settings.host})"

    def __enter__(self) -> Sandbox:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started:
            self.down()

    @property
    def started(self) -> tuple[str, ...]:
        """Components the last ``up()`` started (empty if everything was already running)."""
        return tuple(self._started)

    # -- lifecycle ---------------------------------------------------------------------------------

    def up(self) -> SandboxInfo:
        """Start and seed whatever is not running; returns the connection settings.

        Raises:
            PortInUse: A port is taken by another process (nothing was started).
            MissingDependency: A package is missing and cannot be installed here.
            BuildFailed: The simulator does not build.
            ComponentFailed: A component did not come up.

        """
        settings, paths, host = self.settings, self.paths, str(self.settings.host)
        self._started = []
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        creds = self._credentials(create=True)
        ports = {
            _vcsim.NAME: settings.vcsim_port,
            _vault.NAME: settings.vault_port,
            _s3.NAME: settings.s3_port,
            _postgres.NAME: settings.postgres_port,
        }
        missing = [name for name in _SERVICES if _daemons.running(paths.pids, name) is None]
        # Check every port first, so a taken port stops us before anything starts.
        for name in missing:
            _daemons.ensure_port_free(host, ports[name], component=name, setting=f"UMC_SANDBOX_{name.upper()}_PORT")
        postgres = _postgres.ensure_server(on_progress=self._progress) if _postgres.NAME in missing else None
        binary = _vcsim.ensure_built(paths, on_progress=self._progress)
        rootfs = _guests.ensure_rootfs(settings, paths, on_progress=self._progress) if settings.guests else None

        info = self._info(creds)
        if _vcsim.NAME in missing:
            self._progress(f"starting the vCenter simulator on {info.vsphere_server}")
            _vcsim.start(
                binary,
                host=host,
                port=settings.vcsim_port,
                user=INVENTORY.vsphere_user,
                creds=creds,
                paths=paths,
            )
            self._started.append(_vcsim.NAME)

        if _vault.NAME in missing:
            self._progress(f"starting Vault (OpenBao, in-memory storage) on {info.vault_addr}")
            _vault.start(host=host, port=settings.vault_port, creds=creds, paths=paths)
            self._started.append(_vault.NAME)

        if _s3.NAME in missing:
            self._progress(f"starting the S3/DynamoDB state backend on {info.s3_endpoint}")
            _s3.start(host=host, port=settings.s3_port, paths=paths)
            self._started.append(_s3.NAME)

        if postgres is not None:
            self._progress(f"starting PostgreSQL on {host}:{settings.postgres_port}")
            _postgres.start(postgres, host=host, port=settings.postgres_port, paths=paths, inventory=INVENTORY,
                            root=_host.is_root())  # fmt: skip
            self._started.append(_postgres.NAME)
        self._seed(info, creds)
        paths.service_policy.write_text(SERVICE_POLICY)

        if rootfs is not None:
            paths.ssh_public_key.write_text(creds.ssh_public_key + "\n")
            if _daemons.running(paths.pids, AGENT) is None:
                self._progress(f"starting the guest agent for VMs in {settings.guest_network}")
                _daemons.start(
                    AGENT,
                    [sys.executable, "-m", "umc_infra.sandbox._agent"],
                    env=self._settings_env(),
                    pids_dir=paths.pids,
                    logs_dir=paths.logs,
                )
                self._started.append(AGENT)
        return info

    def seed(self) -> None:
        """Seed the running simulator, Vault and state backend again: what ``up()`` does after starting them.

        Safe to repeat, and it starts nothing: a running sandbox gets what was added since it started (a template,
        a Vault secret) without a restart.
        """
        creds = self._credentials(create=False)
        self._seed(self._info(creds), creds)

    def _seed(self, info: SandboxInfo, creds: Credentials) -> None:
        with _vcsim.connect(info) as si:
            _vcsim.seed(si, INVENTORY)
        _vault.seed(self._vault_root(creds), creds, INVENTORY, vsphere_server=info.vsphere_server,
                    vault_addr=info.vault_addr)  # fmt: skip
        _s3.seed(info.s3_endpoint, INVENTORY)
        if _daemons.running(self.paths.pids, _postgres.NAME) is not None:  # a sandbox made before it: `up` starts it
            _postgres.seed(self.paths, self.settings.postgres_port, creds, INVENTORY)

    def down(self, *, purge: bool = False) -> None:
        """Stop every process the sandbox started, guests included; ``purge`` also removes its state.

        The shared cache (built simulator, guest root) is kept: ``rm -r`` the cache dir to drop it.
        """
        paths = self.paths
        agent = _daemons.find(paths.pids, AGENT)
        if agent is not None:
            _daemons.stop(agent, pids_dir=paths.pids)
        # The simulator keeps its inventory in memory: after down its VMs are gone, so are their guests.
        for guest in _guests.guests(paths):
            _guests.stop_guest(paths, guest.vm.ip, remove=True)
        for name in _SERVICES:
            daemon = _daemons.find(paths.pids, name)
            if daemon is not None:
                _daemons.stop(daemon, pids_dir=paths.pids)
        shutil.rmtree(paths.vcsim_tmp, ignore_errors=True)
        if purge:
            shutil.rmtree(paths.state_dir, ignore_errors=True)
        self._started = []

    def status(self) -> SandboxStatus:
        """Each component's health from a real client call (vSphere login, AppRole read, S3 HEAD, database login)."""
        components: list[ComponentStatus] = []
        try:
            info: SandboxInfo | None = self.info()
        except SandboxError as exc:
            info = None
            components.append(ComponentStatus(name="credentials", healthy=False, detail=str(exc)))
        checks: dict[str, Callable[[SandboxInfo], str]] = {
            _vcsim.NAME: _vcsim.health,
            _vault.NAME: _vault.health,
            _s3.NAME: _s3.health,
            _postgres.NAME: _postgres.health,
        }
        for name, check in checks.items():
            daemon = _daemons.running(self.paths.pids, name)
            if daemon is None or info is None:
                components.append(ComponentStatus(name=name, healthy=False, detail="not running"))
                continue
            try:
                detail, healthy = check(info), True
            except Exception as exc:  # any client failure is an unhealthy component, shown as such
                detail, healthy = (
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    False,
                )
            components.append(ComponentStatus(name=name, healthy=healthy, detail=detail, pid=daemon.pid))
        if self.settings.guests:
            agent = _daemons.running(self.paths.pids, AGENT)
            guests = _guests.guests(self.paths)
            components.append(
                ComponentStatus(
                    name=AGENT,
                    healthy=agent is not None,
                    detail=f"{sum(g.running for g in guests)} guests running" if agent else "not running",
                    pid=agent.pid if agent else None,
                )
            )
        return SandboxStatus(components=tuple(components), guests=tuple(_guests.guests(self.paths)))

    # -- connection settings -----------------------------------------------------------------------

    def info(self) -> SandboxInfo:
        """Connection settings of this sandbox (it need not be running).

        Raises:
            SandboxNotFound: The sandbox was never brought up here.
            SandboxDamaged: Its credentials file is damaged.

        """
        return self._info(self._credentials(create=False))

    def _info(self, creds: Credentials) -> SandboxInfo:
        host = self.settings.host
        vault_addr = f"http://{host}:{self.settings.vault_port}"
        return SandboxInfo(
            state_dir=self.paths.state_dir,
            vsphere_server=f"{host}:{self.settings.vcsim_port}",
            vsphere_user=INVENTORY.vsphere_user,
            vsphere_password=creds.vsphere_password,
            vault_addr=vault_addr,
            vault_token=creds.vault_read_token,
            vault_role_id=creds.vault_role_id,
            vault_secret_id=creds.vault_secret_id,
            s3_endpoint=f"http://{host}:{self.settings.s3_port}",
            s3_secret_key=creds.s3_secret_key or SecretStr(""),
            guest_network=self.settings.guest_network,
            guest_ssh_port=self.settings.guest_ssh_port,
            database_url=database_url(
                str(host), self.settings.postgres_port, INVENTORY, creds.postgres_password or SecretStr("")
            ),
            oidc_issuer=f"{vault_addr}/v1/identity/oidc",
            oidc_audience=INVENTORY.oidc_client_id,
            policy_file=self.paths.service_policy,
        )

    def _settings_env(self) -> dict[str, str]:
        """Settings of this sandbox as ``UMC_SANDBOX_*`` variables, for the agent it starts."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        for name, value in self.settings.model_dump(mode="json").items():
            env[f"UMC_SANDBOX_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    def _credentials(self, *, create: bool) -> Credentials:
        path = self.paths.credentials
        try:
            creds = Credentials.model_validate_json(path.read_text())
            complete = _with_added_secrets(creds)
            if complete is not creds:
                write_private(path, complete.dump())
            return complete
        except FileNotFoundError:
            if not create:
                raise SandboxNotFound(
                    f"no sandbox at {self.paths.state_dir}; start it with: umc-infra sandbox up",
                    step="sandbox",
                ) from None
        except ValueError:
            raise SandboxDamaged(
                f"{path} is damaged; remove the sandbox state with: umc-infra sandbox down --purge",
                step="sandbox",
            ) from None
        creds = _new_credentials()
        write_private(path, creds.dump())
        return creds

    def _vault_root(self, creds: Credentials | None = None) -> Any:
        creds = creds or self._credentials(create=False)
        return _vault.client(self.info().vault_addr, creds.vault_root_token.get_secret_value())

    # -- guests and helpers for tests and demos -----------------------------------------------------

    def guests(self) -> list[Guest]:
        """Guests with a root on disk, by IP."""
        return _guests.guests(self.paths)

    def wait_for_guest(self, ip: str | ipaddress.IPv4Address, *, timeout_s: float = 60) -> Guest:
        """Wait until the guest for ``ip`` accepts SSH connections.

        Raises:
            ComponentFailed: It did not within ``timeout_s``.

        """
        address = ipaddress.IPv4Address(str(ip))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            guest = next((g for g in self.guests() if g.vm.ip == address and g.running), None)
            if guest is not None and _daemons.port_open(str(address), self.settings.guest_ssh_port):
                return guest
            time.sleep(0.2)
        raise ComponentFailed(
            f"no SSH guest answered on {address}:{self.settings.guest_ssh_port} within {timeout_s:.0f} s; "
            f"see {self.paths.logs / 'agent.log'}",
            step="sandbox.guests",
        )

    def guest_root(self, ip: str | ipaddress.IPv4Address) -> Path:
        """The running guest's root directory as seen from the host (read files a playbook wrote)."""
        return _guests.guest_root(self.paths, ipaddress.IPv4Address(str(ip)))

    def put_secret(self, path: str, values: Mapping[str, str]) -> None:
        """Write a KV v2 secret (with the sandbox's root token), e.g. an application's password."""
        self._vault_root().secrets.kv.v2.create_or_update_secret(
            path=path, mount_point=INVENTORY.vault_mount, secret=dict(values)
        )

    def token(self, user: str) -> SecretStr:
        """A fresh OIDC ID token for a sandbox user (``alice``, ``bob``, ``admin``), issued by the sandbox's Vault.

        Its claims: ``iss`` (:attr:`SandboxInfo.oidc_issuer`), ``aud`` (:attr:`SandboxInfo.oidc_audience`),
        ``exp``, ``sub`` (the user's Vault entity), ``preferred_username`` and ``groups``.

        Raises:
            UnknownSandboxUser: ``user`` is not a sandbox user (the message lists them).
            SandboxNotFound: The sandbox was never brought up here.
            ComponentFailed: Vault does not answer.

        """
        users = INVENTORY.oidc_users
        if user not in users:
            raise UnknownSandboxUser(
                f"{user!r} is not a sandbox user; the users are: "
                + ", ".join(f"{name} ({group})" for name, group in users.items()),
                step="sandbox.token",
            )
        import requests

        creds = self._credentials(create=False)
        addr = self._info(creds).vault_addr
        try:
            return _vault.id_token(
                addr, user=user, password=(creds.user_passwords or {})[user], role=INVENTORY.oidc_role
            )
        except requests.ConnectionError:
            raise ComponentFailed(
                f"the sandbox's Vault does not answer at {addr}; start it with: umc-infra sandbox up",
                step="sandbox.token",
            ) from None

    def ci_jwt(
        self,
        *,
        subject: str = "project_path:umc/platform:ref_type:branch:ref:main",
        claims: Mapping[str, str] | None = None,
        ttl_s: int = 300,
    ) -> SecretStr:
        """A JWT as a CI system would issue it; the sandbox Vault's ``jwt`` auth (role ``ci``) accepts it."""
        import jwt

        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": INVENTORY.jwt_issuer,
            "aud": INVENTORY.jwt_audience,
            "sub": subject,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl_s,
            **(claims or {}),
        }
        key = self._credentials(create=False).jwt_signing_key.get_secret_value()
        return SecretStr(jwt.encode(payload, key, algorithm="RS256"))


def _new_credentials() -> Credentials:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    creds = Credentials(
        vault_root_token=SecretStr(f"umc-root-{secrets.token_hex(16)}"),
        vault_read_token=SecretStr(f"umc-read-{secrets.token_hex(16)}"),
        vault_role_id=str(uuid.uuid4()),
        vault_secret_id=SecretStr(str(uuid.uuid4())),
        vsphere_password=SecretStr(secrets.token_urlsafe(18)),
        ssh_private_key=SecretStr(private),
        ssh_public_key=f"{public.decode()} umc-infra-sandbox",
        jwt_signing_key=SecretStr(_vault.new_jwt_signing_key()),
        demo_db_password=SecretStr(secrets.token_urlsafe(18)),
    )
    return _with_added_secrets(creds)


def _with_added_secrets(creds: Credentials) -> Credentials:
    """Secrets added since the sandbox was made: generated once, then kept like the others."""
    added = {name: make() for name, make in _ADDED_SECRETS.items() if getattr(creds, name) is None}
    return creds.model_copy(update=added) if added else creds


_ADDED_SECRETS: dict[str, Callable[[], SecretStr | dict[str, SecretStr]]] = {
    "s3_secret_key": lambda: SecretStr(secrets.token_urlsafe(24)),
    "windows_admin_password": lambda: SecretStr(_vault.new_windows_password()),
    "windows_join_password": lambda: SecretStr(_vault.new_windows_password()),
    "postgres_password": lambda: SecretStr(secrets.token_urlsafe(24)),
    "user_passwords": lambda: {user: SecretStr(secrets.token_urlsafe(18)) for user in INVENTORY.oidc_users},
}
"""Credentials a sandbox made before them gets on its next start (or :meth:`Sandbox.seed`)."""
