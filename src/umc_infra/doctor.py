"""``doctor``: a site's first command. Checks every setting against the real services, one line per check.

Terraform and its provider, Vault and the configured auth, every blueprint's secrets (read, never shown), the
state backend (bucket, lock table, conditional writes), the vCenter login and the inventory objects the site
settings name. A check whose prerequisite failed is skipped, not failed again. Each failure says what to set
or fix.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from umc_infra import vcenter
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.content import Content
from umc_infra.blueprint.model import SecretRef
from umc_infra.errors import StateBackendError, UmcInfraError
from umc_infra.secrets.auth import default_registry
from umc_infra.secrets.redact import Redactor
from umc_infra.secrets.vault import VaultSource
from umc_infra.settings import Settings

Status = Literal["ok", "failed", "skipped"]


class DoctorCheck(BaseModel):
    """One check: what was checked, how it went, what was found or is wrong, and what to do."""

    model_config = ConfigDict(frozen=True)

    name: str
    """``terraform``, ``provider``, ``vault``, ``vault.auth``, ``secret <ref>``, ``state.bucket``, ..."""
    status: Status
    detail: str
    fix: str = ""
    """For a failure: what to set or fix."""


class DoctorReport(BaseModel):
    """Every check, in order."""

    model_config = ConfigDict(frozen=True)

    checks: tuple[DoctorCheck, ...]

    @property
    def ok(self) -> bool:
        """Whether no check failed."""
        return all(c.status != "failed" for c in self.checks)


class _Failed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


class _Doctor:
    def __init__(self, settings: Settings, on_check: Callable[[DoctorCheck], None]) -> None:
        self.settings = settings
        self.checks: list[DoctorCheck] = []
        self._on_check = on_check

    def _add(self, name: str, status: Status, detail: str, fix: str = "") -> bool:
        check = DoctorCheck(name=name, status=status, detail=detail, fix=fix if status == "failed" else "")
        self.checks.append(check)
        self._on_check(check)
        return status == "ok"

    def check(self, name: str, run: Callable[[], str], *, needs: tuple[str, ...] = (), fix: str = "") -> bool:
        """Run one check; True if it passed. Skipped when a check it ``needs`` did not pass."""
        failed = [c.name for c in self.checks if c.name in needs and c.status != "ok"]
        if failed:
            return self._add(name, "skipped", f"not checked: {', '.join(failed)} did not pass")
        try:
            return self._add(name, "ok", run())
        except _Failed as exc:
            return self._add(name, "failed", exc.detail, exc.fix or fix)
        except UmcInfraError as exc:  # messages of the library's errors never hold a secret
            return self._add(name, "failed", str(exc.args[0] if exc.args else exc).strip(), fix)
        except Exception as exc:  # an unexpected failure: its kind only, as its text may quote anything
            return self._add(name, "failed", f"unexpected {type(exc).__name__}", fix)

    def skip(self, name: str, detail: str) -> None:
        self._add(name, "skipped", detail)


def doctor(settings: Settings | None = None, *, on_check: Callable[[DoctorCheck], None] | None = None) -> DoctorReport:
    """DoctorCheck the site's settings against the real services.

    Args:
        settings: The site's settings; default ``Settings()`` (the environment).
        on_check: Called with each check as it ends (progress for a terminal).

    Example:
        >>> report = doctor()            # doctest: +SKIP
        >>> [c.name for c in report.checks if c.status == "failed"]  # doctest: +SKIP
    """
    s = settings if settings is not None else Settings()
    d = _Doctor(s, on_check or (lambda check: None))
    with tempfile.TemporaryDirectory(prefix="umc-doctor-") as scratch:
        _terraform_checks(d, Path(scratch))
    source = VaultSource(s)
    _vault_checks(d, source)
    _state_checks(d)
    _vcenter_checks(d, source)
    return DoctorReport(checks=tuple(d.checks))


def _terraform_checks(d: _Doctor, scratch: Path) -> None:
    from umc_infra.terraform.runner import Terraform

    found: list[Terraform] = []

    def version() -> str:
        terraform = Terraform(d.settings, on_event=lambda e: None, redactor=Redactor(), deployment="doctor",
                              private_dir=scratch)  # fmt: skip
        found.append(terraform)
        return f"Terraform {terraform.check_version()} at {terraform.binary}"

    def provider() -> str:
        module = Content.locate(d.settings.content_dir).modules / "vsphere-vm"
        errors = found[0].validate(module, scratch / "provider")
        if errors:
            raise _Failed("; ".join(message for _, _, message in errors[:3]))
        s = d.settings
        where = {"mirror": f"the filesystem mirror {s.provider_mirror or '(assembled from the installed packages)'}",
                 "network_mirror": f"the network mirror {s.provider_network_mirror}",
                 "registry": "its registry"}[s.provider_installation]  # fmt: skip
        return f"{s.vsphere_provider_source} installs from {where}; modules/vsphere-vm validates"

    fix = "install Terraform 1.0 or newer, or set UMC_TERRAFORM_BINARY to its path"
    d.check("terraform", version, fix=fix)
    d.check("provider", provider, needs=("terraform",),
            fix="check UMC_PROVIDER_INSTALLATION (and UMC_PROVIDER_MIRROR or UMC_PROVIDER_NETWORK_MIRROR) and "
                "UMC_VSPHERE_PROVIDER_SOURCE: the provider must be there under that address")  # fmt: skip


def _vault_checks(d: _Doctor, source: VaultSource) -> None:
    s = d.settings

    def reachable() -> str:
        import requests

        if not s.vault_addr:
            raise _Failed("VAULT_ADDR is not set", "set VAULT_ADDR (or UMC_VAULT_ADDR) to the Vault server")
        try:
            health = requests.get(f"{s.vault_addr.rstrip('/')}/v1/sys/health", timeout=s.vault_timeout_s)
            state = health.json()
        except (requests.RequestException, ValueError) as exc:
            raise _Failed(f"Vault at {s.vault_addr} cannot be reached ({type(exc).__name__})",
                          "check VAULT_ADDR and the network") from None  # fmt: skip
        if state.get("sealed"):
            raise _Failed(f"Vault at {s.vault_addr} is sealed", "unseal it")
        if not state.get("initialized", True):
            raise _Failed(f"Vault at {s.vault_addr} is not initialized", "initialize it")
        return f"Vault {state.get('version', '')} at {s.vault_addr}, unsealed".replace("  ", " ")

    every = _blueprint_secrets(d)
    refs = [ref for ref in every if not ref.placeholders()]

    def login() -> str:
        method = default_registry().first_configured(s)
        if method is None:
            raise _Failed("no Vault credentials are set", default_registry().setup())
        if refs:
            source.read(refs[0])  # the first read logs in (and shows the policy reads it)
        return f"logged in with {method.describe(s)}"

    d.check("vault", reachable)
    d.check("vault.auth", login, needs=("vault",), fix="check the credentials of the auth method")
    for ref in refs:
        d.check(f"secret {ref}", functools.partial(_read, source, ref), needs=("vault.auth",),
                fix="write the secret, or let the policy of the auth method read it")  # fmt: skip
    for ref in (ref for ref in every if ref.placeholders()):
        d.skip(f"secret {ref}", "per deployment: read when a deployment is provisioned")


def _read(source: VaultSource, ref: SecretRef) -> str:
    source.read(ref)  # the value is dropped here: never shown, never kept
    return "readable"


def _blueprint_secrets(d: _Doctor) -> list[SecretRef]:
    catalog = Catalog.from_settings(d.settings)
    found: dict[str, SecretRef] = {}
    for name in catalog.names():
        blueprint, _ = catalog.resolve(name)
        for text in blueprint.secrets.values() if blueprint is not None else ():
            ref = SecretRef.parse(text)
            found.setdefault(str(ref), ref)
    for ref in vcenter.credential_refs(d.settings) or ():
        found.setdefault(str(ref), ref)
    return sorted(found.values(), key=str)


def _state_checks(d: _Doctor) -> None:
    s = d.settings
    if s.backend != "s3":

        def local() -> str:
            root = s.state_dir / "state"
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
                pass
            return f"local state in {root} (one machine only: UMC_BACKEND=s3 for a shared site)"

        d.check("state", local, fix="make UMC_STATE_DIR writable")
        return
    from umc_infra.state.aws import AwsClient, dynamodb
    from umc_infra.state.s3 import S3Store, conditional_write_problems

    def bucket() -> str:
        if not s.state_bucket:
            raise _Failed("UMC_STATE_BUCKET is not set", "set UMC_STATE_BUCKET to the state bucket")
        fix = "create it, or set UMC_STATE_BUCKET to one that exists"
        with _aws("the bucket", s.state_bucket, fix):
            reply = AwsClient(s, "s3").request("HEAD", f"/{s.state_bucket}")
        if not reply.ok:
            raise _Failed(f"the bucket {s.state_bucket}: {reply.code}", fix)
        return f"bucket {s.state_bucket} at {s.s3_endpoint or f'AWS {s.s3_region}'}"

    def table() -> str:
        if not s.lock_table:
            raise _Failed("UMC_LOCK_TABLE is not set: Terraform would run without a state lock",
                          "set UMC_LOCK_TABLE to a DynamoDB table with the hash key LockID")  # fmt: skip
        with _aws("the lock table", s.lock_table, "create it (hash key LockID), or set UMC_LOCK_TABLE"):
            table = dynamodb(AwsClient(s, "dynamodb"), "DescribeTable", {"TableName": s.lock_table})["Table"]
        return f"lock table {s.lock_table} ({table['TableStatus']})"

    def conditional() -> str:
        assert s.state_bucket is not None
        problems = conditional_write_problems(S3Store(AwsClient(s, "s3"), s.state_bucket,
                                                      kms_key_id=s.state_kms_key_id))  # fmt: skip
        if problems:
            raise _Failed("; ".join(problems), "use an S3 endpoint that honours If-None-Match and If-Match on PUT "
                          "and DELETE (leases and address claims depend on them)")  # fmt: skip
        return "If-None-Match and If-Match are honoured (leases and address claims depend on them)"

    d.check("state.bucket", bucket)
    d.check("state.lock_table", table)
    d.check("state.conditional_writes", conditional, needs=("state.bucket",))


@contextlib.contextmanager
def _aws(what: str, name: str, fix: str) -> Iterator[None]:
    try:
        yield
    except StateBackendError as exc:
        raise _Failed(f"{what} {name}: {exc}", fix) from None


def _vcenter_checks(d: _Doctor, source: VaultSource) -> None:
    s = d.settings
    with contextlib.ExitStack() as stack:
        session: dict[str, Any] = {}

        def login() -> str:
            user, password = vcenter.credentials(s, source)
            session["si"] = stack.enter_context(vcenter.connect(s, user, password))
            session["credentials"] = user, password  # for the REST calls: content libraries
            return f"logged in to {s.vsphere_server} as {user}"

        credentials = ("vault.auth", *(f"secret {ref}" for ref in vcenter.credential_refs(s) or ()))
        if not d.check("vcenter", login, needs=credentials,
                       fix="check UMC_VSPHERE_SERVER and the vCenter credentials in Vault"):  # fmt: skip
            return
        content = session["si"].RetrieveContent()
        datacenter = s.vsphere_datacenter or ""

        def find(setting: str, kind: str, name: str | None, path: str | None = None) -> Callable[[], str]:
            def run() -> str:
                if not name:
                    raise _Failed(f"{setting} is not set", f"set {setting}")
                index = content.searchIndex
                found = (index.FindByInventoryPath(path) if path is not None
                         else _by_name(content, index.FindByInventoryPath(datacenter), kind, name))  # fmt: skip
                if found is None:
                    raise _Failed(f"no {kind} {name!r} in datacenter {datacenter!r}",
                                  f"set {setting} to one that exists")  # fmt: skip
                return f"{kind} {name}"

            return run

        dc = ("vcenter.datacenter",)
        d.check("vcenter.datacenter", find("UMC_VSPHERE_DATACENTER", "datacenter", datacenter, datacenter))
        if s.vsphere_cluster:
            d.check("vcenter.cluster", find("UMC_VSPHERE_CLUSTER", "cluster", s.vsphere_cluster), needs=dc)
        else:
            d.check("vcenter.host", find("UMC_VSPHERE_HOST", "host", s.vsphere_host), needs=dc)
        d.check("vcenter.datastore", find("UMC_VSPHERE_DATASTORE", "datastore", s.vsphere_datastore), needs=dc)
        d.check("vcenter.network", find("UMC_VSPHERE_NETWORK", "network", s.vsphere_network), needs=dc)
        d.check("vcenter.folder", find("UMC_VSPHERE_FOLDER", "folder", s.vsphere_folder,
                                       f"{datacenter}/vm/{s.vsphere_folder}"), needs=dc)  # fmt: skip
        templates = {"vcenter.template": ("UMC_VSPHERE_TEMPLATE", s.vsphere_template)}
        if s.vsphere_windows_template:
            templates["vcenter.windows_template"] = ("UMC_VSPHERE_WINDOWS_TEMPLATE", s.vsphere_windows_template)
        if s.vsphere_content_library:
            _library_checks(d, s, session["credentials"], templates)
            return
        for check, (setting, template) in templates.items():
            d.check(check, find(setting, "template", template, f"{datacenter}/vm/{template}"), needs=dc)


def _library_checks(d: _Doctor, s: Settings, credentials: tuple[str, Any],
                    templates: dict[str, tuple[str, str | None]]) -> None:  # fmt: skip
    """UMC_VSPHERE_CONTENT_LIBRARY: the library, and each template setting's item in it (vAPI REST)."""
    library = s.vsphere_content_library
    wanted = [name for _, name in templates.values() if name]
    found: dict[str, str | None] = {}

    def library_found() -> str:
        types = vcenter.library_items(s, *credentials, library, wanted)
        if types is None:
            raise _Failed(f"no content library {library!r}", "set UMC_VSPHERE_CONTENT_LIBRARY to one that exists, "
                          "or leave it empty for template VMs")  # fmt: skip
        found.update(types)
        return f"content library {library}"

    d.check("vcenter.content_library", library_found, fix="check UMC_VSPHERE_CONTENT_LIBRARY")

    def item(setting: str, name: str | None) -> Callable[[], str]:
        def run() -> str:
            if not name:
                raise _Failed(f"{setting} is not set", f"set {setting} to an item of content library {library!r}")
            if found.get(name) is None:
                raise _Failed(f"no item {name!r} in content library {library!r}",
                              f"set {setting} to an OVF or VM template item of it")  # fmt: skip
            return f"content library item {library}/{name} ({found[name]})"

        return run

    for check, (setting, name) in templates.items():
        d.check(check, item(setting, name), needs=("vcenter.content_library",))


def _by_name(content: Any, datacenter: Any, kind: str, name: str) -> Any:
    from pyVmomi import vim

    types = {"cluster": vim.ClusterComputeResource, "host": vim.HostSystem, "datastore": vim.Datastore,
             "network": vim.Network}  # fmt: skip
    view = content.viewManager.CreateContainerView(datacenter, [types[kind]], True)
    try:
        return next((obj for obj in view.view if obj.name == name), None)
    finally:
        view.Destroy()
