"""What the operations return: frozen models, secret values shown as ``***``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.ansible.inventory import Host
from umc_infra.ansible.runner import PlaybookResult
from umc_infra.params import MASK
from umc_infra.terraform.plan import ChangeCounts, ResourceChange, counts_of


class ProvisionResult(BaseModel):
    """What a provision did. Secret params and sensitive outputs show as ``***``."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    blueprint: str
    version: str
    params: dict[str, Any]
    hosts: tuple[Host, ...]
    outputs: dict[str, Any]
    terraform: dict[str, ChangeCounts]
    ansible: dict[str, PlaybookResult]
    timings: dict[str, float]
    started_at: datetime
    finished_at: datetime

    @property
    def changed(self) -> bool:
        """Whether Terraform or Ansible changed anything."""
        return any(c != ChangeCounts() for c in self.terraform.values()) or any(
            p.changed for p in self.ansible.values()
        )


class ConfigChange(BaseModel):
    """A task Ansible check mode says would change on a host."""

    model_config = ConfigDict(frozen=True)

    playbook: str
    host: str
    task: str


class ParamChange(BaseModel):
    """A param whose value the change moves (``***`` for secret ones)."""

    model_config = ConfigDict(frozen=True)

    before: Any
    after: Any


class PlanResult(BaseModel):
    """What ``provision`` would change; nothing was changed to find out."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    blueprint: str
    version: str
    params: dict[str, Any]
    """The params the provision would use: those given over those the deployment has (unless reset)."""
    exists: bool
    """The deployment exists (an update), or would be created."""
    previous_version: str | None
    param_changes: dict[str, ParamChange] = {}
    """Params whose value would change, against what the deployment has now."""
    resources: tuple[ResourceChange, ...]
    deferred: tuple[str, ...] = ()
    """Modules whose changes cannot be known before earlier modules are applied (they read outputs only the
    apply makes known); ``provision(plan=...)`` applies the earlier ones and then stops before these."""
    configuration: tuple[ConfigChange, ...]
    """For existing hosts: tasks that would change (Ansible check mode with diff)."""
    fingerprint: str
    """Identifies exactly these changes; ``provision(plan=...)`` refuses if the world moved since."""
    timings: dict[str, float] = {}
    """Seconds of each step of the plan (not part of the fingerprint)."""

    @property
    def counts(self) -> dict[str, ChangeCounts]:
        """Add/change/remove per module."""
        modules = dict.fromkeys(r.module for r in self.resources)
        return {m: counts_of([r for r in self.resources if r.module == m]) for m in modules}

    @property
    def destroys(self) -> list[str]:
        """Resources that would be deleted or replaced."""
        return [f"{r.module}: {r.address} ({r.action})" for r in self.resources if r.action in ("delete", "replace")]

    @property
    def version_change(self) -> str | None:
        """``1.0.0 -> 1.1.0`` when an existing deployment would move to another blueprint version."""
        if self.exists and self.previous_version is not None and self.previous_version != self.version:
            return f"{self.previous_version} -> {self.version}"
        return None

    @property
    def changed(self) -> bool:
        """Whether anything would change (the blueprint version and the params included)."""
        return bool(self.resources or self.configuration or self.version_change or self.param_changes
                    or self.deferred)  # fmt: skip


class DestroyResult(BaseModel):
    """What ``destroy`` did."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    already_destroyed: bool
    terraform: dict[str, ChangeCounts]
    released_addresses: tuple[str, ...]


class DriftReport(BaseModel):
    """Differences between what a deployment should be and what it is."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    compute: tuple[ResourceChange, ...]
    """Changed outside Terraform, e.g. a VM's memory changed in vCenter."""
    configuration: tuple[ConfigChange, ...]
    """Managed configuration changed on a host, e.g. a file edited by hand."""
    checked_at: datetime

    @property
    def has_drift(self) -> bool:
        """Whether anything drifted."""
        return bool(self.compute or self.configuration)


def masked(value: Any) -> Any:
    """``value`` with every secret in it (at any depth) shown as ``***``."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    return value
