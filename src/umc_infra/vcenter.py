"""umc_infra's own vCenter calls (pyvmomi; the vAPI REST API for tags and content libraries), beside Terraform's.

Terraform does all the building. umc_infra talks to vCenter itself only where Terraform cannot help:
removing a VM that a run killed outright created but never got into Terraform's state (see
:mod:`umc_infra.run.recovery`), and making the tags a blueprint names when vCenter lacks them (a tag is the
site's, shared by deployments: Terraform would own it and delete it with one of them). It logs in with the
credentials in the Vault secret that ``UMC_VSPHERE_CREDENTIALS`` names (keys ``user`` and ``password``).
"""

from __future__ import annotations

import contextlib
import ssl
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import SecretStr

from umc_infra.blueprint.model import SecretRef
from umc_infra.errors import ParamProblem, SettingsError, VCenterError
from umc_infra.secrets.source import SecretSource
from umc_infra.settings import Settings


def credential_refs(settings: Settings) -> tuple[SecretRef, SecretRef] | None:
    """The Vault references of the vCenter user and password (``UMC_VSPHERE_CREDENTIALS``), or None if unset."""
    if not settings.vsphere_credentials:
        return None
    base = settings.vsphere_credentials.partition("#")[0]
    return SecretRef.parse(f"{base}#user"), SecretRef.parse(f"{base}#password")


def credentials(settings: Settings, source: SecretSource) -> tuple[str, SecretStr]:
    """The vCenter user and password from the Vault secret ``UMC_VSPHERE_CREDENTIALS`` names.

    Raises:
        SettingsError: The setting (or the vCenter server) is not set.
        SecretError: The secret cannot be read.
    """
    refs = credential_refs(settings)
    if refs is None or not settings.vsphere_server:
        raise SettingsError([ParamProblem(
            field="UMC_VSPHERE_CREDENTIALS", message="is needed for umc_infra's own vCenter calls",
            allowed="a KV v2 secret with keys user and password, e.g. kv/data/umc/vsphere (and UMC_VSPHERE_SERVER)",
        )])  # fmt: skip
    user, password = refs
    return source.read(user).get_secret_value(), source.read(password)


@contextlib.contextmanager
def connect(settings: Settings, user: str, password: SecretStr) -> Iterator[Any]:
    """A pyvmomi ServiceInstance logged in to the site's vCenter.

    Raises:
        VCenterError: vCenter cannot be reached or refuses the login (never shows the password).
    """
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    server = str(settings.vsphere_server)
    host, _, port = server.rpartition(":") if server.rpartition(":")[2].isdigit() else (server, "", "443")
    context = ssl.create_default_context()
    if settings.vsphere_allow_unverified_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        si = SmartConnect(host=host, port=int(port), user=user, pwd=password.get_secret_value(), sslContext=context,
                          connectionPoolTimeout=30)  # fmt: skip
    except vim.fault.InvalidLogin:
        raise VCenterError(f"vCenter {server} refused the login of {user!r}", step="vcenter") from None
    except (OSError, vim.fault.VimFault) as exc:
        raise VCenterError(f"vCenter {server} cannot be reached: {type(exc).__name__}", step="vcenter") from None
    try:
        yield si
    finally:
        with contextlib.suppress(Exception):
            Disconnect(si)


def find_vm(si: Any, datacenter: str, path: str) -> Any:
    """The VM at ``<datacenter>/vm/<path>`` (``path`` is ``folder/name``), or None."""
    return si.RetrieveContent().searchIndex.FindByInventoryPath(f"{datacenter}/vm/{path}")


def remove_vm(si: Any, vm: Any) -> None:
    """Power a VM off and delete it with its disks."""
    from pyVim.task import WaitForTask

    if vm.runtime.powerState == "poweredOn":
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())


@contextlib.contextmanager
def rest_session(settings: Settings, user: str, password: SecretStr, *, step: str) -> Iterator[Callable[..., Any]]:
    """A vAPI REST session (tagging, content libraries), logged out at the end.

    Yields ``call(method, path, body)`` for paths under ``/rest/com/vmware`` (e.g. ``/cis/tagging/tag``), which
    returns the answer's ``value``.

    Raises:
        VCenterError: vCenter cannot be reached, refuses the login or a call (named by ``step``; never shows
            the password).
    """
    import requests

    server = str(settings.vsphere_server)
    base = f"https://{server}/rest/com/vmware"
    # UMC_VSPHERE_ALLOW_UNVERIFIED_SSL: the same choice as Terraform's provider and pyvmomi make.
    verify = not settings.vsphere_allow_unverified_ssl

    def call(method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        try:
            # verify per request: a session's own verify loses to REQUESTS_CA_BUNDLE (psf/requests#3829)
            response = http.request(method, base + path, json=body, timeout=30, verify=verify, **kwargs)
        except requests.RequestException as exc:
            raise VCenterError(f"vCenter {server} cannot be reached: {type(exc).__name__}", step=step) from None
        if response.status_code == 401:
            raise VCenterError(f"vCenter {server} refused the login of {user!r}", step=step)
        if not response.ok:
            raise VCenterError(f"vCenter {server} refused {method} {path}: HTTP {response.status_code} "
                               f"{response.text[:200]}", step=step)  # fmt: skip
        return response.json().get("value") if response.content else None

    with warnings.catch_warnings(), requests.Session() as http:
        warnings.simplefilter("ignore")  # urllib3's warning about the unverified certificate: the setting says so
        # The password lives only in the auth object (whose repr hides it) for the login, never in a frame's args.
        http.auth = requests.auth.HTTPBasicAuth(user, password.get_secret_value())
        try:
            http.headers["vmware-api-session-id"] = call("POST", "/cis/session")
        finally:
            http.auth = None
        try:
            yield call
        finally:
            with contextlib.suppress(VCenterError):
                call("DELETE", "/cis/session")


def ensure_tags(settings: Settings, user: str, password: SecretStr, tags: Iterable[str]) -> list[str]:
    """Make the categories and tags (``Category/Name``) that vCenter lacks, through its tagging API (vAPI).

    Categories and tags are the site's, shared by deployments: a new category takes several tags per VM, and
    nothing here ever deletes one. Two runs making the same tag at once is fine (the loser finds it made).

    Returns:
        The ``Category/Name`` (or ``Category/``) entries it made, for the log.

    Raises:
        VCenterError: vCenter cannot be reached, refuses the login, or refuses a tag (never shows the password).
    """
    wanted = sorted({(category, name) for category, _, name in (tag.partition("/") for tag in tags)})
    made: list[str] = []
    with rest_session(settings, user, password, step=_TAGS) as call:

        def categories() -> dict[Any, str]:
            return {c.get("name"): c["id"] for c in _listing(call, "category")}

        def tag_ids() -> dict[Any, str]:
            return {(t.get("category_id"), t.get("name")): t["id"] for t in _listing(call, "tag")}

        known = categories()
        for category in sorted({c for c, _ in wanted} - set(known)):
            spec = {"name": category, "description": "made by umc_infra", "cardinality": "MULTIPLE",
                    "associable_types": ["VirtualMachine"]}  # fmt: skip
            known[category] = _create(call, "category", spec, categories, category)
            made.append(f"{category}/")
        existing = tag_ids()
        for category, name in wanted:
            if (known[category], name) not in existing:
                spec = {"name": name, "description": "made by umc_infra", "category_id": known[category]}
                _create(call, "tag", spec, tag_ids, (known[category], name))
                made.append(f"{category}/{name}")
    return made


def library_items(settings: Settings, user: str, password: SecretStr, library: str,
                  items: Iterable[str]) -> dict[str, str | None] | None:  # fmt: skip
    """The type (``ovf``, ``vm-template``) of each named item of a content library, None for one not in it.

    Returns:
        None when vCenter has no content library of that name.

    Raises:
        VCenterError: vCenter cannot be reached, or refuses the login or a call.
    """
    with rest_session(settings, user, password, step="vcenter.content_library") as call:
        found = call("POST", "/content/library?~action=find", {"spec": {"name": library}}) or []
        if not found:
            return None
        types: dict[str, str | None] = {}
        for name in items:
            spec = {"library_id": found[0], "name": name}
            ids = call("POST", "/content/library/item?~action=find", {"spec": spec}) or []
            types[name] = call("GET", f"/content/library/item/id:{ids[0]}").get("type") if ids else None
        return types


_TAGS = "vcenter.tags"


def _listing(call: Callable[..., Any], kind: str) -> list[dict[str, Any]]:
    """Every category or tag, with its name (the list call gives ids only)."""
    return [call("GET", f"/cis/tagging/{kind}/id:{ident}") for ident in call("GET", f"/cis/tagging/{kind}") or []]


def _create(call: Callable[..., Any], kind: str, spec: dict[str, Any], lookup: Callable[[], dict[Any, str]],
            key: Any) -> str:  # fmt: skip
    """Create a category or tag; if another run made it meanwhile (vCenter refuses a duplicate), use that one."""
    try:
        return str(call("POST", f"/cis/tagging/{kind}", {"create_spec": spec}))
    except VCenterError:
        found = lookup().get(key)
        if found is None:
            raise
        return found
