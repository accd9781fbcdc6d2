"""umc_infra's own vCenter calls (pyvmomi; the vAPI REST API for tags and content libraries), beside Terraform's.

Terraform does all the building. umc_infra talks to vCenter itself only where Terraform cannot help:
removing a VM that a run killed outright created but never got into Terraform's state (see
:mod:`umc_infra.run.recovery`), and making the tags a blueprint names when vCenter lacks them (a tag is the
site's, shared by deployments: Terraform would own it and delete it with one of them). It logs in with the
credentials in the Vault secret that ``UMC_VSPHERE_CREDENTIALS`` names (keys ``user`` and ``password``).

It also reads the names a portal offers for a param that declares ``choices`` (:func:`choices`), cached briefly.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import SecretStr

from umc_infra.blueprint.model import ChoiceKind, SecretRef
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


# -- live choices ------------------------------------------------------------------------------------

_VIM_TYPES = {"datastore_clusters": "StoragePod", "clusters": "ClusterComputeResource", "hosts": "HostSystem"}
"""The kinds that are the names of one managed object type below the datacenter."""
_LISTED = {"networks": "network", "datastores": "datastore"}
"""The kinds a datacenter lists itself: port groups, distributed ones too; datastores, those in a datastore cluster
too (a container view misses those on the simulator)."""


Names = dict[ChoiceKind, tuple[str, ...]]
"""The names of each kind of vCenter object."""
Reader = Callable[[list[ChoiceKind]], Names]


class ChoiceCache:
    """Names per vCenter, datacenter and kind, each kept ``ttl_s`` seconds; safe to share between threads.

    A miss is read once even when several threads ask at once: the others wait for it and take its answer.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: dict[tuple[str, ...], threading.Lock] = {}
        self._entries: dict[tuple[str, ...], tuple[float, tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        return f"ChoiceCache(entries={len(self._entries)})"

    def get(self, site: tuple[str, ...], kinds: list[ChoiceKind], ttl_s: float, read: Reader) -> Names:
        """The names of each kind for ``site``; ``read`` gets the kinds not cached (or expired) and reads them."""
        with self._lock:
            reading = self._reading.setdefault(site, threading.Lock())
        with reading:  # one read per site at a time: a second caller then finds the first one's answer
            found = self._fresh(site, kinds, ttl_s)
            missing = [kind for kind in kinds if kind not in found]
            if missing:
                read_now = read(missing)
                with self._lock:
                    now = self._clock()
                    for kind, names in read_now.items():
                        self._entries[(*site, kind)] = (now, names)
                found |= {kind: read_now[kind] for kind in missing}
        return found

    def _fresh(self, site: tuple[str, ...], kinds: list[ChoiceKind], ttl_s: float) -> Names:
        with self._lock:
            now = self._clock()
            entries = {kind: self._entries.get((*site, kind)) for kind in kinds}
            return {kind: e[1] for kind, e in entries.items() if e is not None and now - e[0] < ttl_s}

    def clear(self) -> None:
        """Forget everything (the next call reads vCenter again)."""
        with self._lock:
            self._entries.clear()


_CHOICES = ChoiceCache()


def choices(
    settings: Settings, source: SecretSource, kinds: Iterable[ChoiceKind], *, cache: ChoiceCache | None = None
) -> Names:
    """The names, sorted, of the site's vCenter objects of each kind, for params that declare ``choices``.

    In the site's datacenter (``UMC_VSPHERE_DATACENTER``; every datacenter without it). ``templates``: template VMs
    by inventory path under the datacenter's VM folder (``templates/rhel9``), or with ``UMC_VSPHERE_CONTENT_LIBRARY``
    that library's items; ``folders``: VM folders under the site's folder (``UMC_VSPHERE_FOLDER``) as paths
    relative to it, as a ``department`` names them; ``tags``: ``Category/Name``; the others: names. Kept
    ``UMC_VCENTER_CHOICES_TTL`` seconds (``cache``: a process-wide one by default): a portal's forms do not each
    log in to vCenter.

    Raises:
        SettingsError: ``UMC_VSPHERE_CREDENTIALS`` or ``UMC_VSPHERE_SERVER`` is not set.
        SecretError: The credentials cannot be read.
        VCenterError: vCenter cannot be reached, or refuses the login or a call.
    """
    site = (str(settings.vsphere_server), settings.vsphere_datacenter or "", settings.vsphere_folder or "",
            settings.vsphere_content_library)  # fmt: skip

    def read(missing: list[ChoiceKind]) -> Names:
        user, password = credentials(settings, source)
        return read_choices(settings, user, password, missing)

    wanted = list(dict.fromkeys(kinds))
    return (cache or _CHOICES).get(site, wanted, settings.vcenter_choices_ttl_s, read) if wanted else {}


def read_choices(settings: Settings, user: str, password: SecretStr, kinds: Iterable[ChoiceKind]) -> Names:
    """The names of each kind, read from vCenter now (no cache): see :func:`choices`."""
    wanted = set(kinds)
    found: Names = {}
    library = "templates" in wanted and settings.vsphere_content_library
    if "tags" in wanted or library:
        with rest_session(settings, user, password, step="vcenter.choices") as call:
            if "tags" in wanted:
                categories = {c["id"]: c.get("name") for c in _listing(call, "category")}
                found["tags"] = _sorted(f"{categories.get(t.get('category_id'))}/{t.get('name')}"
                                        for t in _listing(call, "tag"))  # fmt: skip
            if library:
                found["templates"] = _library_names(call, settings.vsphere_content_library)
    if wanted - set(found):
        with connect(settings, user, password) as si:
            found |= _inventory_choices(settings, si, wanted - set(found))
    return found


def _library_names(call: Callable[..., Any], library: str) -> tuple[str, ...]:
    ids = call("POST", "/content/library?~action=find", {"spec": {"name": library}}) or []
    items = (call("GET", f"/content/library/item?library_id={ids[0]}") or []) if ids else []
    return _sorted(call("GET", f"/content/library/item/id:{item}").get("name") for item in items)


def _inventory_choices(settings: Settings, si: Any, kinds: set[ChoiceKind]) -> Names:
    from pyVmomi import vim

    content = si.RetrieveContent()
    listed = ["name", "vmFolder", *_LISTED.values()]
    datacenters = [dc for dc in _objects(content, content.rootFolder, vim.Datacenter, listed)
                   if not settings.vsphere_datacenter or dc["name"] == settings.vsphere_datacenter]  # fmt: skip
    found: Names = {}
    for kind in kinds:
        names: list[str] = []
        for dc in datacenters:
            if kind in _LISTED:
                names += [o["name"] for o in _named(content, dc.get(_LISTED[kind]) or [])]
                continue
            if kind in _VIM_TYPES:
                names += [o["name"] for o in _objects(content, dc["obj"], getattr(vim, _VIM_TYPES[kind]), ["name"])]
                continue
            folders = {o["obj"]: o for o in _objects(content, dc["vmFolder"], vim.Folder, ["name", "parent"])}
            if kind == "folders":
                base = _folder_at(folders, dc["vmFolder"], settings.vsphere_folder or "")
                names += [p for f in folders if base is not None and (p := _path(folders, f, base))]
            else:  # templates: template VMs by path under the datacenter's VM folder
                vms = _objects(content, dc["vmFolder"], vim.VirtualMachine, ["name", "parent", "config.template"])
                names += [f"{_path(folders, vm['parent'], dc['vmFolder'])}/{vm['name']}".lstrip("/")
                          for vm in vms if vm.get("config.template")]  # fmt: skip
        found[kind] = _sorted(names)
    return found


def _objects(content: Any, container: Any, vim_type: Any, paths: list[str]) -> list[dict[str, Any]]:
    """Every object of a type below ``container`` with the given properties (one call, not one per object)."""
    from pyVmomi import vim, vmodl

    collector = vmodl.query.PropertyCollector
    view = content.viewManager.CreateContainerView(container, [vim_type], True)
    try:
        traversal = collector.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
        spec = collector.FilterSpec(
            objectSet=[collector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
            propSet=[collector.PropertySpec(type=vim_type, pathSet=paths)],
        )
        return [{"obj": o.obj, **{p.name: p.val for p in o.propSet}}
                for o in content.propertyCollector.RetrieveContents([spec])]  # fmt: skip
    finally:
        view.Destroy()


def _named(content: Any, objects: list[Any]) -> list[dict[str, Any]]:
    """The names of the given objects (one call)."""
    from pyVmomi import vmodl

    if not objects:
        return []
    collector = vmodl.query.PropertyCollector
    spec = collector.FilterSpec(
        objectSet=[collector.ObjectSpec(obj=o, skip=False) for o in objects],
        propSet=[
            collector.PropertySpec(type=type(o), pathSet=["name"]) for o in {type(o): o for o in objects}.values()
        ],
    )
    return [
        {"obj": o.obj, **{p.name: p.val for p in o.propSet}} for o in content.propertyCollector.RetrieveContents([spec])
    ]


def _path(folders: dict[Any, dict[str, Any]], folder: Any, base: Any) -> str:
    """A folder's path relative to ``base`` ("" for ``base`` itself, or for a folder not below it)."""
    parts: list[str] = []
    while folder is not None and folder != base and folder in folders:
        parts.insert(0, folders[folder]["name"])
        folder = folders[folder].get("parent")
    return "/".join(parts) if folder == base else ""


def _folder_at(folders: dict[Any, dict[str, Any]], root: Any, path: str) -> Any:
    """The folder at ``path`` below ``root`` ("" is ``root``), or None."""
    if not path.strip("/"):
        return root
    return next((f for f in folders if _path(folders, f, root) == path.strip("/")), None)


def _sorted(names: Iterable[Any]) -> tuple[str, ...]:
    return tuple(sorted({str(n) for n in names if n}))
