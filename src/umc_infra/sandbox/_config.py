"""Sandbox configuration: settings, paths, seeded inventory and the settings it hands out.

Everything here is pure (no process, no network), so it is unit-tested without the services.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from umc_infra.private import write_private
from umc_infra.settings import Settings

__all__ = ["write_private"]  # kept here for the sandbox's callers

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
ROOTFS_LAYOUT = "2"
"""The guest root's layout: 2 holds the .deb files of the shipped roles' packages (no download per guest)."""

Port = Annotated[int, Field(ge=1, le=65535)]


def _cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("umc-infra"))


class SandboxSettings(BaseSettings):
    """Where the sandbox keeps its state and where its services listen.

    Every field can be set with an ``UMC_SANDBOX_<FIELD>`` environment variable; explicit arguments win.
    All addresses must lie in 127.0.0.0/8: the sandbox never listens beyond loopback.
    """

    model_config = SettingsConfigDict(env_prefix="UMC_SANDBOX_", frozen=True, extra="forbid")

    state_dir: Path = Field(default_factory=lambda: _cache_root() / "sandbox")
    """Pids, logs, credentials and guest roots of this sandbox."""
    cache_dir: Path = Field(default_factory=_cache_root)
    """Shared between sandboxes: the built simulator and the debootstrap root."""
    host: ipaddress.IPv4Address = ipaddress.IPv4Address("127.0.0.1")
    vcsim_port: Port = 18989
    vault_port: Port = 18200
    s3_port: Port = 18555
    postgres_port: Port = 18432
    """The PostgreSQL server of the self-service service (its job queue and tables)."""
    guest_network: ipaddress.IPv4Network = ipaddress.IPv4Network("127.0.1.0/24")
    """Guest IPs: a VM whose guest IP lies here gets an SSH-reachable guest."""
    guest_ssh_port: Port = 22
    guests: bool = True
    """Run SSH guests for VMs (needs root: mount namespaces and chroot)."""
    debian_mirror: str = "http://deb.debian.org/debian"
    debian_suite: str = "bookworm"

    @field_validator("host")
    @classmethod
    def _host_loopback(cls, value: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        if value not in LOOPBACK:
            raise ValueError(f"{value} is not a loopback address; use one in 127.0.0.0/8")
        return value

    @field_validator("guest_network")
    @classmethod
    def _network_loopback(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if not value.subnet_of(LOOPBACK):
            raise ValueError(f"{value} is not inside 127.0.0.0/8; guests must use loopback addresses")
        if value.num_addresses < 16:
            raise ValueError(f"{value} is too small; use at least a /28")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> SandboxSettings:
        ports = [self.vcsim_port, self.vault_port, self.s3_port, self.postgres_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"vcsim_port, vault_port, s3_port and postgres_port must differ, got {ports}")
        return self


class SandboxInventory(BaseModel):
    """What the sandbox seeds into the simulator, Vault and the state backend (names only)."""

    model_config = ConfigDict(frozen=True)

    datacenter: str = "DC0"
    host: str = "DC0_H0"
    cluster: str = "DC0_C0"
    datastore: str = "LocalDS_0"
    network: str = "VM Network"
    vm_folder: str = "umc"
    template_folder: str = "templates"
    template: str = "umc-linux-template"
    template_guest_id: str = "centos7_64Guest"
    windows_template: str = "umc-windows-template"
    # The simulator's guest list (govmomi 0.24.2) ends at Windows Server 2016; real templates keep their own id.
    windows_template_guest_id: str = "windows9Server64Guest"
    vsphere_user: str = "umc-sandbox@vsphere.local"

    vault_mount: str = "kv"
    vault_vsphere_path: str = "umc/vsphere"
    vault_ansible_path: str = "umc/ansible"
    vault_demo_app_path: str = "apps/demo"
    vault_windows_path: str = "umc/windows"
    vault_policy: str = "umc-read"
    vault_approle: str = "umc-infra"
    vault_jwt_role: str = "ci"
    jwt_audience: str = "umc-infra"
    jwt_issuer: str = "https://ci.sandbox.invalid"

    oidc_key: str = "umc-sandbox"
    oidc_role: str = "portal"
    oidc_client_id: str = "umc-portal"
    """The audience of the role's ID tokens."""
    oidc_policy: str = "umc-oidc-token"
    oidc_users: dict[str, str] = {"alice": "cardiology-it", "bob": "radiology-it", "admin": "platform-engineers"}
    """Userpass users of Vault and the one identity group each belongs to (the ID token's ``groups``)."""

    postgres_database: str = "umc"
    postgres_user: str = "umc"
    postgres_superuser: str = "postgres"
    """The cluster's bootstrap superuser: reached through the 0700 unix socket only, for seeding."""

    state_bucket: str = "umc-terraform-state"
    lock_table: str = "umc-terraform-locks"
    region: str = "eu-west-1"

    @property
    def template_path(self) -> str:
        """Inventory path of the template VM relative to the datacenter's VM folder."""
        return f"{self.template_folder}/{self.template}"

    @property
    def windows_template_path(self) -> str:
        """Inventory path of the Windows template VM relative to the datacenter's VM folder."""
        return f"{self.template_folder}/{self.windows_template}"


INVENTORY = SandboxInventory()


class SandboxPaths(BaseModel):
    """Files and directories of one sandbox (state) and of the shared cache."""

    model_config = ConfigDict(frozen=True)

    state_dir: Path
    cache_dir: Path

    @classmethod
    def of(cls, settings: SandboxSettings) -> SandboxPaths:
        """Paths for the given settings, made absolute."""
        return cls(state_dir=settings.state_dir.absolute(), cache_dir=settings.cache_dir.absolute())

    @property
    def pids(self) -> Path:
        return self.state_dir / "pids"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def credentials(self) -> Path:
        """Generated sandbox credentials (mode 0600); removed by ``down --purge``."""
        return self.state_dir / "credentials.json"

    @property
    def ssh_public_key(self) -> Path:
        return self.state_dir / "ansible_ed25519.pub"

    @property
    def guests(self) -> Path:
        return self.state_dir / "guests"

    @property
    def postgres_data(self) -> Path:
        """The PostgreSQL cluster's data directory (made once by initdb)."""
        return self.state_dir / "postgres"

    @property
    def postgres_run(self) -> Path:
        """The directory of PostgreSQL's unix socket (mode 0700; not /var/run)."""
        return self.state_dir / "postgres-run"

    @property
    def service_policy(self) -> Path:
        """The self-service service's policy file (departments, groups, blueprints, quotas)."""
        return self.state_dir / "service-policy.yaml"

    @property
    def vcsim_tmp(self) -> Path:
        """TMPDIR of the simulator: its datastore directories live here."""
        return self.state_dir / "vcsim"

    @property
    def vcsim_binary(self) -> Path:
        return self.cache_dir / "bin" / "umc-vcsim"

    @property
    def go_cache(self) -> Path:
        return self.cache_dir / "go-build"

    def rootfs(self, suite: str) -> Path:
        """The shared debootstrap root all guests overlay.

        A new layout of it gets a new directory: guests running on the old one are never pulled from under.
        """
        return self.cache_dir / "rootfs" / f"{suite}-{ROOTFS_LAYOUT}"


def pool_addresses(network: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The pool the sandbox hands out: the first 60 % of the network from .10 (.1 is the gateway).

    The rest stays free for VMs given fixed addresses, and for tests whose separate state backend
    allocates from a range of its own.
    """
    hosts = list(network.hosts())
    return hosts[9], hosts[9 + (len(hosts) - 9) * 6 // 10]


def gateway(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The guest network's gateway address (its first host)."""
    return next(network.hosts())


def vault_policy(inventory: SandboxInventory) -> str:
    """The least-privilege read policy: read the umc and apps secrets, nothing else."""
    mount = inventory.vault_mount
    return (
        f'path "{mount}/data/umc/*" {{\n  capabilities = ["read"]\n}}\n'
        f'path "{mount}/data/apps/*" {{\n  capabilities = ["read"]\n}}\n'
    )


def oidc_token_policy(inventory: SandboxInventory) -> str:
    """What a sandbox user's Vault login may do: read an ID token of the portal role, nothing else."""
    return f'path "identity/oidc/token/{inventory.oidc_role}" {{\n  capabilities = ["read"]\n}}\n'


OIDC_TEMPLATE = '{"preferred_username": {{identity.entity.name}}, "groups": {{identity.entity.groups.names}}}'
"""The claims the portal role adds to its ID tokens (an OpenBao identity template: its values are JSON)."""

SERVICE_POLICY = """\
admin_groups: [platform-engineers]
departments:
  cardiology:
    groups: [cardiology-it]
    blueprints: [web-server, linux-server, app-stack, web-ha]
    quota: {vms: 6, vcpus: 12, memory_mb: 24576}
    lease: {max_days: 30, default_days: 14, warn_days: 3}
  radiology:
    groups: [radiology-it]
    blueprints: [web-server, linux-server]
    quota: {vms: 2, vcpus: 4, memory_mb: 8192}
"""
"""The policy file the sandbox writes for the self-service service (its groups are the sandbox users' groups)."""


def database_url(host: str, port: int, inventory: SandboxInventory, password: SecretStr) -> SecretStr:
    """The service database's URL, ``postgresql://user:password@host:port/database``."""
    quoted = urllib.parse.quote(password.get_secret_value(), safe="")
    return SecretStr(f"postgresql://{inventory.postgres_user}:{quoted}@{host}:{port}/{inventory.postgres_database}")


def vault_config(host: str, port: int) -> str:
    """OpenBao server configuration: in-memory storage, one plain-HTTP listener on loopback."""
    return (
        'storage "inmem" {}\n'
        f'listener "tcp" {{\n  address = "{host}:{port}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://{host}:{port}"\n'
        "ui = false\n"
    )


class SandboxInfo(BaseModel):
    """Connection settings of a running sandbox.

    Secret fields are :class:`~pydantic.SecretStr`: they show as ``**********`` in reprs and logs.
    """

    model_config = ConfigDict(frozen=True)

    state_dir: Path
    vsphere_server: str
    vsphere_user: str
    vsphere_password: SecretStr
    vault_addr: str
    vault_token: SecretStr
    """A token with the least-privilege read policy (not the root token)."""
    vault_role_id: str
    vault_secret_id: SecretStr
    s3_endpoint: str
    s3_secret_key: SecretStr
    """The state backend's secret access key (the S3 stand-in accepts any; a real one is secret)."""
    guest_network: ipaddress.IPv4Network
    guest_ssh_port: int
    database_url: SecretStr
    """The self-service service's PostgreSQL database, ``postgresql://umc:...@127.0.0.1:port/umc``."""
    oidc_issuer: str
    """Vault's OIDC issuer: ``<vault_addr>/v1/identity/oidc`` (discovery under ``/.well-known/``)."""
    oidc_audience: str
    """The ``aud`` of the sandbox users' ID tokens (the OIDC role's client id)."""
    policy_file: Path
    """The self-service service's policy file."""
    inventory: SandboxInventory = INVENTORY

    @property
    def ip_pool(self) -> str:
        """The addresses VMs get, as ``first-last``."""
        first, last = pool_addresses(self.guest_network)
        return f"{first}-{last}"

    def environment(self) -> dict[str, str]:
        """The settings as environment variables, for ``umc-infra sandbox env`` and child processes.

        The vSphere password is left out on purpose: the library reads it from Vault.
        """
        inv = self.inventory
        return {
            "VAULT_ADDR": self.vault_addr,
            "VAULT_TOKEN": self.vault_token.get_secret_value(),
            "UMC_VAULT_MOUNT": inv.vault_mount,
            "UMC_VAULT_ROLE_ID": self.vault_role_id,
            "UMC_VAULT_SECRET_ID": self.vault_secret_id.get_secret_value(),
            "VSPHERE_SERVER": self.vsphere_server,
            "UMC_VSPHERE_CREDENTIALS": f"{inv.vault_mount}/data/{inv.vault_vsphere_path}",
            "VSPHERE_USER": self.vsphere_user,
            "VSPHERE_ALLOW_UNVERIFIED_SSL": "true",
            "UMC_VSPHERE_DATACENTER": inv.datacenter,
            "UMC_VSPHERE_DOMAIN": "sandbox.umc.local",
            "UMC_VSPHERE_HOST": inv.host,
            "UMC_VSPHERE_DATASTORE": inv.datastore,
            "UMC_VSPHERE_NETWORK": inv.network,
            "UMC_VSPHERE_FOLDER": inv.vm_folder,
            "UMC_VSPHERE_TEMPLATE": inv.template_path,
            "UMC_VSPHERE_WINDOWS_TEMPLATE": inv.windows_template_path,
            "UMC_IP_POOL": self.ip_pool,
            "UMC_IP_GATEWAY": str(gateway(self.guest_network)),
            "UMC_SSH_PORT": str(self.guest_ssh_port),
            # The simulator never reports customization done, and its guest IPs are loopback, which
            # the provider does not count as routable: don't wait for either. Guests can't set the clock.
            "UMC_VSPHERE_CUSTOMIZE_TIMEOUT": "0",
            "UMC_VSPHERE_WAIT_FOR_GUEST_NET_TIMEOUT": "0",
            "UMC_TIME_SYNC_SERVICE": "false",
            # Guests share the host's network: they reach each other from 127.0.0.1.
            "UMC_CLIENT_SOURCE_ADDRESSES": '["127.0.0.1"]',
            "UMC_BACKEND": "s3",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": "sandbox",
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key.get_secret_value(),
            "AWS_DEFAULT_REGION": inv.region,
            "UMC_STATE_BUCKET": inv.state_bucket,
            "UMC_LOCK_TABLE": inv.lock_table,
            "UMC_SANDBOX_STATE_DIR": str(self.state_dir),
            "UMC_SERVICE_DATABASE_URL": self.database_url.get_secret_value(),
            "UMC_SERVICE_OIDC_ISSUER": self.oidc_issuer,
            "UMC_SERVICE_OIDC_AUDIENCE": self.oidc_audience,
            "UMC_SERVICE_POLICY_FILE": str(self.policy_file),
        }

    def settings(self, **overrides: Any) -> Settings:
        """:class:`umc_infra.Settings` for provisioning on this sandbox; ``overrides`` by field name."""
        # By field name, after the environment names are resolved: an alias would win over a field name.
        return Settings.model_validate(Settings.model_validate(self.environment()).model_dump() | overrides)

    def export_lines(self) -> list[str]:
        """``export NAME=value`` lines, shell-quoted, for ``eval "$(umc-infra sandbox env)"``."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.environment().items()]


class Credentials(BaseModel):
    """Generated once per sandbox and kept in ``credentials.json`` (mode 0600) so restarts reseed alike."""

    model_config = ConfigDict(frozen=True)

    vault_root_token: SecretStr
    vault_read_token: SecretStr
    vault_role_id: str
    vault_secret_id: SecretStr
    vsphere_password: SecretStr
    ssh_private_key: SecretStr
    ssh_public_key: str
    jwt_signing_key: SecretStr
    demo_db_password: SecretStr
    s3_secret_key: SecretStr | None = None
    """Generated once; a sandbox made before it existed gets one on its next start."""
    windows_admin_password: SecretStr | None = None
    """The Windows guests' Administrator password (Vault ``umc/windows``); generated like ``s3_secret_key``."""
    windows_join_password: SecretStr | None = None
    """The domain join account's password (Vault ``umc/windows``); generated like ``s3_secret_key``."""
    postgres_password: SecretStr | None = None
    """The service database role's password; generated like ``s3_secret_key``."""
    user_passwords: dict[str, SecretStr] | None = None
    """Vault userpass passwords of the sandbox users (alice, bob, admin), by name; generated like ``s3_secret_key``."""

    def dump(self) -> str:
        """JSON with the secret values revealed, for the 0600 file only."""
        return json.dumps({name: _revealed(value) for name, value in self}, indent=2)


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    return value


def vcsim_environment(listen: str, user: str, password: SecretStr, tmpdir: Path) -> dict[str, str]:
    """The simulator's whole environment: its configuration travels here, never in argv."""
    return {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmpdir),
        "UMC_VCSIM_LISTEN": listen,
        "UMC_VCSIM_USER": user,
        "UMC_VCSIM_PASSWORD": password.get_secret_value(),
    }


def sshd_argv(ip: ipaddress.IPv4Address, port: int) -> list[str]:
    """Sshd inside a guest: foreground, key-only root login, listening on the guest IP alone."""
    return [
        "/usr/sbin/sshd",
        "-D",
        "-e",
        "-o", f"ListenAddress={ip}:{port}",
        "-o", "PermitRootLogin=prohibit-password",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "UseDNS=no",
        "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key",
    ]  # fmt: skip
