"""What a request would use (VMs, vCPUs, memory), counted from the blueprint without running Terraform.

Each module whose source is the VM module (``vsphere-vm``) makes ``instances`` VMs of ``cpu`` vCPUs and
``memory_mb`` MB: the same module inputs a run gives Terraform, resolved from the validated params (and
literals, formats, site settings) as the run resolves them. A module of another source makes no VMs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from umc_infra.blueprint.model import Blueprint
from umc_infra.blueprint.references import Values, resolve
from umc_infra.errors import BlueprintError, BlueprintProblem
from umc_infra.params import ResolvedParams
from umc_infra.service.policy import Quota

VM_MODULES = frozenset({"vsphere-vm"})
"""Module sources that make VMs, sized by their ``instances``, ``cpu`` and ``memory_mb`` inputs."""
_SIZE_INPUTS = ("instances", "cpu", "memory_mb")


class Usage(BaseModel):
    """VMs, vCPUs and memory: of one deployment, or summed."""

    model_config = ConfigDict(frozen=True)

    vms: int = Field(default=0, ge=0)
    vcpus: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)

    def __add__(self, other: Usage) -> Usage:
        return Usage(vms=self.vms + other.vms, vcpus=self.vcpus + other.vcpus,
                     memory_mb=self.memory_mb + other.memory_mb)  # fmt: skip

    @classmethod
    def total(cls, usages: Iterable[Usage]) -> Usage:
        """The sum of ``usages``."""
        result = cls()
        for usage in usages:
            result = result + usage
        return result


class QuotaBreach(BaseModel):
    """A request that would take a department over its quota: each number, and which are over."""

    model_config = ConfigDict(frozen=True)

    department: str
    quota: Quota
    current: Usage
    """What the department's other deployments use (the deployment being updated left out)."""
    requested: Usage
    over: tuple[str, ...]
    """``vms``, ``vcpus``, ``memory_mb``: those above the quota."""

    def __str__(self) -> str:
        parts = [f"{name}: {getattr(self.current, name)} in use + {getattr(self.requested, name)} requested = "
                 f"{getattr(self.current, name) + getattr(self.requested, name)} > quota {getattr(self.quota, name)}"
                 for name in self.over]  # fmt: skip
        return f"department {self.department!r} quota exceeded: " + "; ".join(parts)


def usage(blueprint: Blueprint, params: ResolvedParams, *, site: Mapping[str, Any] | None = None) -> Usage:
    """The VMs, vCPUs and memory a deployment of ``blueprint`` with ``params`` has once provisioned.

    Raises:
        BlueprintError: A VM module's size input is missing, or not a whole number once resolved.
        UnresolvedReference: A size input reads something only a run knows (a module output).
    """
    values = Values(deployment=params.deployment, params=params.values, site=dict(site or {}))
    total = Usage()
    for name, module in blueprint.modules.items():
        if module.source not in VM_MODULES:
            continue
        size = [_whole(blueprint, name, key, module.inputs.get(key), values) for key in _SIZE_INPUTS]
        instances, cpu, memory_mb = size
        total = total + Usage(vms=instances, vcpus=instances * cpu, memory_mb=instances * memory_mb)
    return total


def _whole(blueprint: Blueprint, module: str, key: str, value: Any, values: Values) -> int:
    where = f"modules.{module}.inputs.{key}"
    if value is None:
        raise BlueprintError(f"blueprint {blueprint.name!r} cannot be sized for quotas",
                             problems=[BlueprintProblem(where=where, message="missing")], step="quota")  # fmt: skip
    found = resolve(value, values, where=where)
    if isinstance(found, bool) or not isinstance(found, int | float) or not float(found).is_integer() or found < 0:
        problem = BlueprintProblem(where=where, message=f"resolves to {found!r}, not a whole number >= 0")
        raise BlueprintError(f"blueprint {blueprint.name!r} cannot be sized for quotas", problems=[problem],
                             step="quota")  # fmt: skip
    return int(found)


def breach(department: str, quota: Quota, current: Usage, requested: Usage) -> QuotaBreach | None:
    """The breach if ``current`` plus ``requested`` exceeds ``quota`` on any count, else None."""
    over = tuple(name for name in ("vms", "vcpus", "memory_mb")
                 if getattr(current, name) + getattr(requested, name) > getattr(quota, name))  # fmt: skip
    if not over:
        return None
    return QuotaBreach(department=department, quota=quota, current=current, requested=requested, over=over)
