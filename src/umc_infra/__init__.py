"""umc_infra: self-service vSphere environments from service blueprints.

Terraform (vSphere provider) builds the VMs, Ansible configures them, Vault supplies every secret::

    from umc_infra import provision

    result = provision("web-server", {"instances": 2}, deployment="team-x-web")
    print([(h.name, h.ip) for h in result.hosts])

``plan``, ``destroy``, ``drift``, ``deployments`` and ``status`` complete a deployment's lifecycle. The
local sandbox (:mod:`umc_infra.sandbox`) runs the whole stack on one machine.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from umc_infra.ansible.inventory import Host
from umc_infra.ansible.runner import HostStats, PlaybookResult
from umc_infra.blueprint.model import Blueprint
from umc_infra.errors import (
    AddressError,
    BlueprintError,
    BlueprintNotFound,
    BlueprintProblem,
    BuildFailed,
    Cancelled,
    ComponentFailed,
    DeploymentLocked,
    DeploymentNotFound,
    DestroyNotAllowed,
    HostKeyChanged,
    InternalError,
    MissingDependency,
    ParamProblem,
    ParamsError,
    PlanChanged,
    PlaybookError,
    PortInUse,
    ProcessError,
    ProcessTimeout,
    SandboxError,
    SecretError,
    SettingsError,
    StateBackendError,
    TerraformError,
    UmcInfraError,
)
from umc_infra.events import Event, OutputLine, ResourceChanged, StepFinished, StepStarted, TaskResult
from umc_infra.run.hooks import HookContext, HookError
from umc_infra.run.provisioner import (
    ConfigChange,
    DestroyResult,
    DriftReport,
    PlanResult,
    Provisioner,
    ProvisionResult,
    deployments,
    destroy,
    drift,
    plan,
    provision,
    status,
)
from umc_infra.secrets.vault import SecretSource
from umc_infra.settings import Settings, load_settings
from umc_infra.state.lease import LockInfo
from umc_infra.state.records import Actor, DeploymentRecord, RunRecord
from umc_infra.terraform.runner import AttributeChange, ChangeCounts, ResourceChange

# A library logs to "umc_infra" and leaves the handlers to the application (nothing on stderr unless asked).
logging.getLogger("umc_infra").addHandler(logging.NullHandler())

try:
    __version__ = version("umc-infra")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "Actor",
    "AddressError",
    "AttributeChange",
    "Blueprint",
    "BlueprintError",
    "BlueprintNotFound",
    "BlueprintProblem",
    "BuildFailed",
    "Cancelled",
    "ChangeCounts",
    "ComponentFailed",
    "ConfigChange",
    "DeploymentLocked",
    "DeploymentNotFound",
    "DeploymentRecord",
    "DestroyNotAllowed",
    "DestroyResult",
    "DriftReport",
    "Event",
    "HookContext",
    "HookError",
    "Host",
    "HostKeyChanged",
    "HostStats",
    "InternalError",
    "LockInfo",
    "MissingDependency",
    "OutputLine",
    "ParamProblem",
    "ParamsError",
    "PlanChanged",
    "PlanResult",
    "PlaybookError",
    "PlaybookResult",
    "PortInUse",
    "ProcessError",
    "ProcessTimeout",
    "ProvisionResult",
    "Provisioner",
    "ResourceChange",
    "ResourceChanged",
    "RunRecord",
    "SandboxError",
    "SecretError",
    "SecretSource",
    "Settings",
    "SettingsError",
    "StateBackendError",
    "StepFinished",
    "StepStarted",
    "TaskResult",
    "TerraformError",
    "UmcInfraError",
    "__version__",
    "deployments",
    "destroy",
    "drift",
    "load_settings",
    "plan",
    "provision",
    "status",
]
