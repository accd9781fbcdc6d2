"""The tools a run drives, behind small Protocols: Terraform, Ansible, and the guests' SSH.

The orchestrator only sequences them. :class:`RealTools` gives the real ones; unit tests pass fakes, so
the orchestration (plan, apply order, resume, policy, journal) is tested without the sandbox.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from umc_infra import vcenter
from umc_infra.ansible import hostkeys
from umc_infra.ansible.inventory import Inventory
from umc_infra.ansible.runner import Ansible, Play, PlaybookResult
from umc_infra.errors import SshUnreachable
from umc_infra.events import EventCallback
from umc_infra.secrets.redact import Redactor
from umc_infra.secrets.source import SecretSource
from umc_infra.settings import Settings
from umc_infra.state.store import StateStore
from umc_infra.terraform.plan import ChangeCounts, TerraformPlan
from umc_infra.terraform.runner import Terraform

Locate = Callable[[str], Path]
"""A playbook's file, by its name."""


@dataclass(frozen=True)
class ToolContext:
    """What every tool of a run is given."""

    settings: Settings
    deployment: str
    on_event: EventCallback
    redactor: Redactor
    cancel: threading.Event
    private_dir: Path
    """The run's private directory (0700, in memory where the machine has it)."""
    on_lock: Callable[[str, str], None]
    """Called with ``(module, lock id)`` when Terraform takes a module's state lock."""
    store: StateStore


class TerraformTool(Protocol):
    """Terraform for the module instances of one deployment (see :class:`umc_infra.terraform.runner.Terraform`)."""

    def check_version(self) -> str:
        """The version; refuses one too old."""
        ...

    def prepare(self, source: Path, workdir: Path, *, module: str, inputs: Mapping[str, Any]) -> None:
        """The module, its non-secret inputs and the backend block in its working directory."""
        ...

    def init(self, workdir: Path, *, module: str) -> None:
        """``terraform init`` (and a state an earlier run could not save is pushed)."""
        ...

    def plan(
        self,
        workdir: Path,
        planfile: Path,
        *,
        module: str,
        secret_inputs: Mapping[str, SecretStr],
        destroy: bool = False,
        refresh_only: bool = False,
    ) -> TerraformPlan:
        """Plan into ``planfile``: the changes (or drift), the VMs it creates, its planned outputs."""
        ...

    def apply_plan(self, workdir: Path, planfile: Path, *, module: str) -> ChangeCounts:
        """Apply a saved plan."""
        ...

    def apply(
        self, workdir: Path, *, module: str, secret_inputs: Mapping[str, SecretStr], destroy: bool = False
    ) -> ChangeCounts:
        """Apply (or destroy) without a saved plan."""
        ...

    def outputs(self, workdir: Path, *, module: str) -> dict[str, dict[str, Any]]:
        """``terraform output -json``: name -> value, sensitive, type."""
        ...

    def state_vms(self, workdir: Path, *, module: str) -> set[str]:
        """The VMs the module's state knows (``folder/name``)."""
        ...

    def force_unlock(self, workdir: Path, *, module: str, lock_id: str) -> None:
        """Release a state lock a dead run left."""
        ...


class AnsibleTool(Protocol):
    """Runs playbooks (see :class:`umc_infra.ansible.runner.Ansible`)."""

    def run(
        self,
        playbook: str,
        *,
        inventory: Inventory,
        hosts: str,
        user: str,
        ssh_key: SecretStr,
        variables: Mapping[str, Any],
        check: bool = False,
        only: Sequence[str] | None = None,
        known_hosts: str | None = None,
    ) -> PlaybookResult:
        """Run a playbook on group ``hosts`` (``only``: these hosts of it)."""
        ...

    def run_together(
        self,
        plays: Sequence[Play],
        *,
        inventory: Inventory,
        user: str,
        ssh_key: SecretStr,
        check: bool = False,
        only: Sequence[str] | None = None,
        known_hosts: str | None = None,
    ) -> dict[str, PlaybookResult]:
        """Run playbooks in order in one run, none after the first that fails (a blueprint's ``ansible.one_run``)."""
        ...


class GuestsTool(Protocol):
    """How a run reaches the VMs over SSH."""

    def wait(self, inventory: Inventory) -> None:
        """Until every host answers SSH.

        Raises:
            SshUnreachable: Some did not within the settings' timeout.
        """
        ...

    def known_hosts(self, hosts: Sequence[tuple[str, str, str | None]], *, recreated: Collection[str]) -> str:
        """Check each host's SSH host keys against its pin (pinning new VMs); the ``known_hosts`` text."""
        ...


class VCenterTool(Protocol):
    """umc_infra's own vCenter calls in a run (see :mod:`umc_infra.vcenter`)."""

    def ensure_tags(self, tags: Sequence[str]) -> list[str]:
        """Make the categories and tags (``Category/Name``) vCenter lacks; the ones made."""
        ...


class Tools(Protocol):
    """Makes the tools of one run."""

    def terraform(self, context: ToolContext) -> TerraformTool:
        """Terraform for the run's deployment."""
        ...

    def ansible(
        self, context: ToolContext, locate: Callable[[str], Path]
    ) -> contextlib.AbstractContextManager[AnsibleTool]:
        """Ansible for the run (its playbooks share SSH connections inside the block)."""
        ...

    def guests(self, context: ToolContext) -> GuestsTool:
        """SSH reachability and host keys of the run's VMs."""
        ...

    def vcenter(self, context: ToolContext, secrets: SecretSource) -> VCenterTool:
        """vCenter, logged in with the site's credentials (``UMC_VSPHERE_CREDENTIALS``) from ``secrets``."""
        ...


class RealTools:
    """The real Terraform, Ansible and SSH."""

    def __repr__(self) -> str:
        return "RealTools()"

    def terraform(self, context: ToolContext) -> TerraformTool:
        """Terraform for the run's deployment."""
        return Terraform(
            context.settings, on_event=context.on_event, redactor=context.redactor, deployment=context.deployment,
            cancel=context.cancel, private_dir=context.private_dir, on_lock=context.on_lock,
        )  # fmt: skip

    def ansible(
        self, context: ToolContext, locate: Callable[[str], Path]
    ) -> contextlib.AbstractContextManager[AnsibleTool]:
        """Ansible for the run."""
        return Ansible(
            context.settings, locate, on_event=context.on_event, redactor=context.redactor,
            deployment=context.deployment, cancel=context.cancel, private_dir=context.private_dir,
        )  # fmt: skip

    def guests(self, context: ToolContext) -> GuestsTool:
        """SSH reachability and host keys of the run's VMs."""
        return SshGuests(context)

    def vcenter(self, context: ToolContext, secrets: SecretSource) -> VCenterTool:
        """vCenter, logged in with the site's credentials (``UMC_VSPHERE_CREDENTIALS``) from ``secrets``."""
        return SiteVCenter(context.settings, secrets)


@dataclass(frozen=True)
class SiteVCenter:
    """The site's vCenter, through :mod:`umc_infra.vcenter`."""

    settings: Settings
    secrets: SecretSource

    def ensure_tags(self, tags: Sequence[str]) -> list[str]:
        """Make the categories and tags (``Category/Name``) vCenter lacks; the ones made."""
        user, password = vcenter.credentials(self.settings, self.secrets)
        return vcenter.ensure_tags(self.settings, user, password, tags)


class SshGuests:
    """Waits for SSH banners; checks and pins host keys in the state backend."""

    def __init__(self, context: ToolContext) -> None:
        self._context = context

    def __repr__(self) -> str:
        return f"SshGuests(deployment={self._context.deployment!r})"

    def wait(self, inventory: Inventory) -> None:
        """Until every host answers with an SSH banner.

        Raises:
            SshUnreachable: Some did not within ``UMC_SSH_WAIT_TIMEOUT``.
        """
        settings = self._context.settings
        deadline = time.monotonic() + settings.ssh_wait_timeout_s
        waiting = {h.name: h.ip for h in inventory.hosts}
        while waiting:
            for name, ip in list(waiting.items()):
                with contextlib.suppress(OSError), socket.create_connection((ip, settings.ssh_port), 2) as sock:
                    sock.settimeout(2)
                    if sock.recv(4).startswith(b"SSH-"):
                        del waiting[name]
            if waiting and time.monotonic() > deadline:
                raise SshUnreachable(
                    f"hosts of deployment {self._context.deployment!r} did not answer SSH on port {settings.ssh_port} "
                    f"within {settings.ssh_wait_timeout_s:.0f} s: "
                    + ", ".join(f"{n} ({ip})" for n, ip in waiting.items())
                    + "; check that the VMs booted with these addresses (UMC_SSH_WAIT_TIMEOUT waits longer)",
                    step="ssh",
                )
            if waiting:
                time.sleep(0.2)

    def known_hosts(self, hosts: Sequence[tuple[str, str, str | None]], *, recreated: Collection[str]) -> str:
        """Check each host's SSH host keys against its pin (pinning new VMs); the ``known_hosts`` text."""
        context = self._context
        return hostkeys.known_hosts(context.store, context.deployment, hosts, recreated=recreated,
                                    port=context.settings.ssh_port)  # fmt: skip
