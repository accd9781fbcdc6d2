"""The sandbox: a real vSphere (simulator), Vault, S3 state backend, PostgreSQL and SSH guests on one machine.

It is what the demo and every integration test run on, on loopback only::

    from umc_infra.sandbox import Sandbox

    with Sandbox() as sb:
        info = sb.info()
        print(info.vsphere_server, info.vault_addr, info.s3_endpoint)

From the shell: ``umc-infra sandbox up | status | env | token USER | down [--purge]``.
"""

from umc_infra.sandbox._config import SandboxInfo, SandboxInventory, SandboxSettings
from umc_infra.sandbox._guests import Guest, GuestVM
from umc_infra.sandbox._postgres import scratch_database
from umc_infra.sandbox._sandbox import ComponentStatus, Sandbox, SandboxStatus

__all__ = [
    "ComponentStatus",
    "Guest",
    "GuestVM",
    "Sandbox",
    "SandboxInfo",
    "SandboxInventory",
    "SandboxSettings",
    "SandboxStatus",
    "scratch_database",
]
