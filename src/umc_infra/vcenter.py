"""umc_infra's own vCenter calls (pyvmomi), beside Terraform's.

Terraform does all the building. umc_infra talks to vCenter itself only where Terraform cannot help:
removing a VM that a run killed outright created but never got into Terraform's state (see
:mod:`umc_infra.run.recovery`). It logs in with the credentials in the Vault secret that
``UMC_VSPHERE_CREDENTIALS`` names (keys ``user`` and ``password``).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
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
