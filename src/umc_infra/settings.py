"""Settings: where Vault, the state backend, vSphere and the tools are; from the environment or arguments.

Every field reads an ``UMC_*`` variable; a few also read the names their tools use (``VAULT_ADDR``,
``VAULT_TOKEN``, ``VSPHERE_SERVER``, ``AWS_ENDPOINT_URL``), the ``UMC_*`` name winning. Explicit
arguments win over both. ``eval "$(umc-infra sandbox env)"`` sets all of them for the sandbox.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from umc_infra.errors import ParamProblem, SettingsError

_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,200}$"
# A content library's or a library item's name: one name, no path.
_LIBRARY = r"^([A-Za-z0-9][A-Za-z0-9 ._-]{0,79})?$"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _comma_list(value: object) -> object:
    """``a,b`` or a JSON list, as environment variables give them; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _path_list(value: object) -> object:
    """``a:b`` as ``PATH`` gives directories; lists pass through."""
    if isinstance(value, str):
        return [part for part in value.split(os.pathsep) if part.strip()]
    return value


def site_subnet(gateway: str, netmask: int) -> ipaddress.IPv4Network | None:
    """The site's subnet: the network of ``gateway/netmask``; None without a gateway (or with an invalid one)."""
    try:
        return ipaddress.IPv4Network(f"{ipaddress.IPv4Address(gateway)}/{netmask}", strict=False)
    except ValueError:
        return None


PathList = Annotated[list[Path], NoDecode, BeforeValidator(_path_list)]
AddressList = Annotated[list[Annotated[str, AfterValidator(_ip)]], NoDecode, BeforeValidator(_comma_list)]


# ``site.<key>`` in blueprints -> the Settings field it reads
SITE_FIELDS = {
    "vsphere_server": "vsphere_server",
    "allow_unverified_ssl": "vsphere_allow_unverified_ssl",
    "datacenter": "vsphere_datacenter",
    "cluster": "vsphere_cluster",
    "host": "vsphere_host",
    "datastore": "vsphere_datastore",
    "network": "vsphere_network",
    "folder": "vsphere_folder",
    "template": "vsphere_template",
    "windows_template": "vsphere_windows_template",
    "content_library": "vsphere_content_library",
    "domain": "vsphere_domain",
    "ip_gateway": "ip_gateway",
    "ip_netmask": "ip_netmask",
    "dns_servers": "dns_servers",
    "customize_timeout": "customize_timeout",
    "wait_for_guest_net_timeout": "wait_for_guest_net_timeout",
    "time_sync_service": "time_sync_service",
    "client_source_addresses": "client_source_addresses",
}


class Settings(BaseSettings):
    """Everything umc_infra needs to know about the site it provisions on."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # -- Vault ------------------------------------------------------------------------------------
    vault_addr: str | None = Field(default=None, validation_alias=_env("UMC_VAULT_ADDR", "VAULT_ADDR"))
    vault_token: SecretStr | None = Field(default=None, validation_alias=_env("UMC_VAULT_TOKEN", "VAULT_TOKEN"))
    vault_role_id: str | None = Field(default=None, validation_alias=_env("UMC_VAULT_ROLE_ID"))
    vault_secret_id: SecretStr | None = Field(default=None, validation_alias=_env("UMC_VAULT_SECRET_ID"))
    vault_jwt: SecretStr | None = Field(default=None, validation_alias=_env("UMC_VAULT_JWT"))
    """A CI job's ID token (e.g. GitLab's ``id_tokens``), for JWT login."""
    vault_jwt_role: str = Field(default="ci", validation_alias=_env("UMC_VAULT_JWT_ROLE"))
    vault_jwt_mount: str = Field(default="jwt", validation_alias=_env("UMC_VAULT_JWT_MOUNT"))
    vault_approle_mount: str = Field(default="approle", validation_alias=_env("UMC_VAULT_APPROLE_MOUNT"))
    vault_namespace: str | None = Field(default=None, validation_alias=_env("UMC_VAULT_NAMESPACE", "VAULT_NAMESPACE"))
    vault_timeout_s: float = Field(default=10.0, validation_alias=_env("UMC_VAULT_TIMEOUT"))

    # -- state backend ----------------------------------------------------------------------------
    state_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("umc-infra")),
        validation_alias=_env("UMC_STATE_DIR"),
    )
    """Working directories, and with the local backend: Terraform state, records, IP allocations."""
    backend: Literal["local", "s3"] = Field(default="local", validation_alias=_env("UMC_BACKEND"))
    state_bucket: Annotated[str, Field(pattern=_BUCKET)] | None = Field(
        default=None, validation_alias=_env("UMC_STATE_BUCKET")
    )
    lock_table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")] | None = Field(
        default=None, validation_alias=_env("UMC_LOCK_TABLE")
    )
    s3_endpoint: str | None = Field(default=None, validation_alias=_env("UMC_S3_ENDPOINT", "AWS_ENDPOINT_URL"))
    s3_region: str = Field(default="eu-west-1", validation_alias=_env("UMC_S3_REGION", "AWS_DEFAULT_REGION"))
    s3_access_key_id: str | None = Field(
        default=None, validation_alias=_env("UMC_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=_env("UMC_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    """Without these two, umc_infra (botocore's credential chain) and Terraform find credentials the usual AWS ways
    (environment, profile, role)."""
    state_timeout_s: float = Field(default=20, gt=0, validation_alias=_env("UMC_STATE_TIMEOUT"))
    """Seconds an S3 request may take (connect, then read) before it is retried; 3 attempts in all."""
    state_kms_key_id: str | None = Field(default=None, validation_alias=_env("UMC_STATE_KMS_KEY_ID"))
    """A KMS key (id, alias or ARN) that encrypts Terraform state and umc_infra's documents in S3 (SSE-KMS);
    without it, S3-managed keys (SSE-S3). Terraform state holds sensitive values in clear text inside."""
    lease_ttl_s: float = Field(default=60, ge=3, validation_alias=_env("UMC_LEASE_TTL"))
    """Seconds a deployment lease lives without renewal: a run renews it every third of this while it lives,
    so a run that died (SIGKILL, a lost machine) frees its deployment this long after its last renewal."""

    # -- vSphere site -----------------------------------------------------------------------------
    vsphere_server: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_SERVER", "VSPHERE_SERVER"))
    vsphere_allow_unverified_ssl: bool = Field(
        default=False,
        validation_alias=_env("UMC_VSPHERE_ALLOW_UNVERIFIED_SSL", "VSPHERE_ALLOW_UNVERIFIED_SSL"),
    )
    vsphere_datacenter: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_DATACENTER"))
    vsphere_cluster: str = Field(default="", validation_alias=_env("UMC_VSPHERE_CLUSTER"))
    vsphere_host: str = Field(default="", validation_alias=_env("UMC_VSPHERE_HOST"))
    vsphere_datastore: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_DATASTORE"))
    vsphere_network: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_NETWORK"))
    vsphere_folder: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_FOLDER"))
    vsphere_content_library: Annotated[str, Field(pattern=_LIBRARY)] = Field(
        default="", validation_alias=_env("UMC_VSPHERE_CONTENT_LIBRARY")
    )
    """A content library by name: ``UMC_VSPHERE_TEMPLATE`` (and ``UMC_VSPHERE_WINDOWS_TEMPLATE``) then name items in it
    (OVF or VM template items) instead of template VMs. Empty: template VMs."""
    vsphere_template: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_TEMPLATE"))
    vsphere_windows_template: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_WINDOWS_TEMPLATE"))
    """The Windows template VM (e.g. ``templates/win2022``), for blueprints that build Windows guests."""
    vsphere_domain: str = Field(default="local", validation_alias=_env("UMC_VSPHERE_DOMAIN"))
    vsphere_credentials: str | None = Field(default=None, validation_alias=_env("UMC_VSPHERE_CREDENTIALS"))
    """A Vault KV v2 secret with keys ``user`` and ``password`` (``kv/data/umc/vsphere``) for umc_infra's own
    vCenter calls: removing a VM a killed run created but never recorded, and ``doctor``."""
    vcenter_choices_ttl_s: float = Field(default=60, ge=0, validation_alias=_env("UMC_VCENTER_CHOICES_TTL"))
    """Seconds the names of vCenter objects (a param's ``choices``, for a portal's form) are kept before vCenter is
    asked again; 0 asks every time."""
    customize_timeout: int = Field(default=10, ge=0, validation_alias=_env("UMC_VSPHERE_CUSTOMIZE_TIMEOUT"))
    """Minutes to wait for guest customization; 0 on the simulator, which never reports completion."""
    wait_for_guest_net_timeout: int = Field(
        default=5, ge=0, validation_alias=_env("UMC_VSPHERE_WAIT_FOR_GUEST_NET_TIMEOUT")
    )

    # -- addresses and guests ---------------------------------------------------------------------
    ip_gateway: str = Field(default="", validation_alias=_env("UMC_IP_GATEWAY"))
    """The VMs' default gateway; with ``ip_netmask`` it makes the site's subnet, which every VM address must lie in."""
    ip_netmask: int = Field(default=24, ge=1, le=32, validation_alias=_env("UMC_IP_NETMASK"))
    # After the gateway and netmask: its validator checks that the pool lies in their subnet.
    ip_pool: str | None = Field(default=None, validation_alias=_env("UMC_IP_POOL"))
    """Addresses to allocate from, ``first-last`` (e.g. ``10.20.30.10-10.20.30.200``)."""
    dns_servers: AddressList = Field(default_factory=list, validation_alias=_env("UMC_DNS_SERVERS"))
    client_source_addresses: AddressList = Field(
        default_factory=list, validation_alias=_env("UMC_CLIENT_SOURCE_ADDRESSES")
    )
    """Addresses connections between VMs appear to come from besides their own (NAT); the sandbox: 127.0.0.1."""
    ssh_port: int = Field(default=22, ge=1, le=65535, validation_alias=_env("UMC_SSH_PORT"))
    python_interpreter: str = Field(default="/usr/bin/python3", validation_alias=_env("UMC_PYTHON_INTERPRETER"))
    time_sync_service: bool = Field(default=True, validation_alias=_env("UMC_TIME_SYNC_SERVICE"))
    """Run chronyd on the VMs; false in the sandbox, whose guests cannot set the clock."""
    ssh_wait_timeout_s: float = Field(default=600, gt=0, validation_alias=_env("UMC_SSH_WAIT_TIMEOUT"))
    """How long new VMs may take to answer SSH before the playbooks run."""
    ansible_forks: int = Field(default=20, ge=1, le=500, validation_alias=_env("UMC_ANSIBLE_FORKS"))
    ansible_mitogen: bool = Field(default=True, validation_alias=_env("UMC_ANSIBLE_MITOGEN"))
    """Run playbooks on Linux hosts with Mitogen's strategy: one Python process per host for the whole playbook
    instead of an SSH command and a module upload per task (about half the time per task). ``false``: Ansible's
    own ``linear`` strategy. A play that names its ``strategy`` keeps it; WinRM/PSRP hosts are unaffected."""
    converge_early: bool = Field(default=True, validation_alias=_env("UMC_CONVERGE_EARLY"))
    """A converge (a provision whose last run succeeded with the same params and blueprint version) runs the
    playbooks on the recorded hosts while Terraform plans. When Terraform changes nothing, that is the run's
    configuration; otherwise it is forgotten and the playbooks run again after Terraform's changes. ``false``:
    the playbooks always wait for Terraform."""

    # -- tools ------------------------------------------------------------------------------------
    terraform_binary: str = Field(default="terraform", validation_alias=_env("UMC_TERRAFORM_BINARY"))
    provider_installation: Literal["mirror", "network_mirror", "registry"] = Field(
        default="mirror", validation_alias=_env("UMC_PROVIDER_INSTALLATION")
    )
    """Where Terraform gets providers: ``mirror``, a filesystem mirror (``UMC_PROVIDER_MIRROR``, else one assembled
    from the installed provider packages); ``network_mirror`` (``UMC_PROVIDER_NETWORK_MIRROR``); ``registry``, the
    registry the provider's source address names."""
    provider_mirror: Path | None = Field(default=None, validation_alias=_env("UMC_PROVIDER_MIRROR"))
    """A Terraform filesystem mirror (air-gapped sites); default: assembled from installed provider packages."""
    provider_network_mirror: Annotated[str, Field(pattern=r"^https://[^\s\"]+/$")] | None = Field(
        default=None, validation_alias=_env("UMC_PROVIDER_NETWORK_MIRROR"), validate_default=True
    )
    """A provider network mirror's base URL (https, ending in ``/``); for ``UMC_PROVIDER_INSTALLATION``
    ``network_mirror``."""
    vsphere_provider_source: Annotated[str, Field(pattern=r"^([a-z0-9.-]+/)?[a-z0-9-]+/vsphere$")] = Field(
        default="hashicorp/vsphere", validation_alias=_env("UMC_VSPHERE_PROVIDER_SOURCE")
    )
    """The vSphere provider's source address: ``vmware/vsphere`` is where it lives now on the public registry;
    ``hashicorp/vsphere`` (the default) is the address of the versions up to 2.x that the sandbox ships."""
    plugin_cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("umc-infra")) / "terraform-plugins",
        validation_alias=_env("UMC_PLUGIN_CACHE_DIR"),
    )
    content_dir: Path | None = Field(default=None, validation_alias=_env("UMC_CONTENT_DIR"))
    """Where ``blueprints/``, ``modules/`` and ``playbooks/`` live; default: those shipped with umc_infra."""
    blueprint_path: PathList = Field(default_factory=list, validation_alias=_env("UMC_BLUEPRINT_PATH"))
    """More blueprint directories, searched after the built-in ones (``:``-separated, like ``PATH``)."""
    blueprint_overrides: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = Field(
        default_factory=list, validation_alias=_env("UMC_BLUEPRINT_OVERRIDES")
    )
    """Names of built-in blueprints that a blueprint from ``UMC_BLUEPRINT_PATH`` or a package may replace
    (with ``override: true``); without its name here, such a replacement is refused."""
    min_free_mb: int = Field(default=64, ge=0, validation_alias=_env("UMC_MIN_FREE_MB"))
    """Free space the state directory must have before Terraform runs: a full disk while Terraform writes its
    state would leave VMs that no state knows of. 0 turns the check off."""
    lock_timeout_s: float = Field(default=300, ge=0, validation_alias=_env("UMC_LOCK_TIMEOUT"))
    """How long a run waits for another run on the same deployment before DeploymentLocked."""
    terraform_timeout_s: float = Field(default=3600, gt=0, validation_alias=_env("UMC_TERRAFORM_TIMEOUT"))
    ansible_timeout_s: float = Field(default=3600, gt=0, validation_alias=_env("UMC_ANSIBLE_TIMEOUT"))

    @field_validator("ip_gateway")
    @classmethod
    def _gateway(cls, value: str) -> str:
        if not value.strip():
            return ""
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            raise ValueError("must be empty or an IPv4 address, e.g. 10.20.30.1") from None

    @field_validator("ip_pool")
    @classmethod
    def _pool(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        first, sep, last = value.partition("-")
        try:
            a, b = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
        except ValueError:
            raise ValueError("must be 'first-last' IPv4 addresses, e.g. 10.20.30.10-10.20.30.200") from None
        if not sep or int(b) < int(a):
            raise ValueError("must be 'first-last' with first <= last")
        subnet = site_subnet(info.data.get("ip_gateway", ""), info.data.get("ip_netmask", 24))
        if subnet is not None and (a not in subnet or b not in subnet):
            raise PydanticCustomError(
                "pool_outside_subnet",
                "the pool {pool} (UMC_IP_POOL) is not inside the site's subnet {subnet} (from UMC_IP_GATEWAY and "
                "UMC_IP_NETMASK): VMs with these addresses could not reach their gateway; choose a pool in {subnet}",
                {
                    "pool": f"{a}-{b}",
                    "subnet": str(subnet),
                    "expected": f"'first-last' inside the site's subnet {subnet}",
                },
            )
        return f"{a}-{b}"

    @field_validator("provider_network_mirror")
    @classmethod
    def _network_mirror_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("provider_installation") == "network_mirror":
            raise ValueError("must be set (the mirror's https:// base URL, ending in /) when UMC_PROVIDER_INSTALLATION "
                             "is network_mirror")  # fmt: skip
        return value

    @field_validator(
        "vsphere_datacenter",
        "vsphere_datastore",
        "vsphere_network",
        "vsphere_folder",
        "vsphere_template",
        "vsphere_windows_template",
    )
    @classmethod
    def _inventory_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_NAME, value):
            raise ValueError("must be a vSphere inventory name (letters, digits, space, . _ / -)")
        return value

    @field_validator("vsphere_template", "vsphere_windows_template")
    @classmethod
    def _library_item(cls, value: str | None, info: ValidationInfo) -> str | None:
        # With a content library the templates are items of it: names, not inventory paths.
        if value is not None and info.data.get("vsphere_content_library") and not re.fullmatch(_LIBRARY, value):
            raise ValueError("must be the name of an item in UMC_VSPHERE_CONTENT_LIBRARY (letters, digits, space, "
                             ". _ -; no /), as that setting is set")  # fmt: skip
        return value


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, argument_name: Callable[[str], str] | None = None
) -> Settings:
    """Settings from the environment, ``overrides`` (those not None) winning.

    Args:
        overrides: Field values that win over the environment (e.g. from command-line flags).
        argument_name: How an override is named in errors (the CLI: ``state_bucket`` -> ``--state-bucket``).

    Raises:
        SettingsError: Names every invalid setting (its ``UMC_*`` variable, or the argument) and what is allowed.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise invalid_settings(exc, lambda name: (argument_name or str)(name) if name in given else name) from None


def invalid_settings(exc: ValidationError, name_of: Callable[[str], str]) -> SettingsError:
    """A settings ValidationError as a SettingsError; ``name_of`` names a field as the user set it.

    The invalid value is never quoted: it may be a credential.
    """
    problems = [
        ParamProblem(
            field=name_of(".".join(str(part) for part in e["loc"])),
            message=e["msg"].removeprefix("Value error, "),
            allowed=_allowed(e),
        )
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return SettingsError(problems)


_BOUNDS = {"ge": "at least", "le": "at most", "gt": "more than", "lt": "less than"}


def _allowed(error: Any) -> str:
    ctx = error.get("ctx") or {}
    bounds = [f"{words} {ctx[key]}" for key, words in _BOUNDS.items() if key in ctx]
    if bounds:
        return " and ".join(bounds)
    if "expected" in ctx:
        return str(ctx["expected"])
    if "pattern" in ctx:
        return f"text matching {ctx['pattern']}"
    return "see docs/cli.md#settings"
