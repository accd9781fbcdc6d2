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
from umc_infra.ansible.runner import HostStats, Play, PlaybookResult
from umc_infra.blueprint.model import Blueprint
from umc_infra.doctor import DoctorCheck, DoctorReport, doctor
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
    ExitCode,
    Forbidden,
    GuestNotRunning,
    HookError,
    HostKeyChanged,
    InternalError,
    InvalidStateKey,
    InventoryError,
    MissingDependency,
    NotFound,
    ParamProblem,
    ParamsError,
    PlanChanged,
    PlaybookError,
    PortInUse,
    ProcessError,
    ProcessFailed,
    ProcessNotStarted,
    ProcessTimeout,
    QuotaExceeded,
    RecoveryError,
    RequestConflict,
    RollbackFailed,
    RootRequired,
    SandboxDamaged,
    SandboxError,
    SandboxNotFound,
    SecretError,
    ServiceError,
    SettingsError,
    SshUnreachable,
    StateBackendError,
    TerraformError,
    ToolMissing,
    ToolTooOld,
    UmcInfraError,
    Unauthenticated,
    UnknownSandboxUser,
    UnresolvedReference,
    UnsafeArgv,
    VCenterError,
)
from umc_infra.events import Event, OutputLine, ResourceChanged, StepFinished, StepStarted, TaskResult
from umc_infra.run.hooks import HookContext
from umc_infra.run.options import RunOptions
from umc_infra.run.provisioner import Provisioner, deployments, destroy, drift, plan, provision, status
from umc_infra.run.results import (
    ConfigChange,
    DestroyResult,
    DriftReport,
    ParamChange,
    PlanResult,
    ProvisionResult,
)
from umc_infra.run.tools import AnsibleTool, GuestsTool, RealTools, TerraformTool, ToolContext, Tools
from umc_infra.secrets.source import SecretSource
from umc_infra.settings import Settings, load_settings
from umc_infra.state.lease import LockInfo
from umc_infra.state.records import Actor, DeploymentRecord, RunRecord
from umc_infra.terraform.plan import AttributeChange, ChangeCounts, ResourceChange

# A library logs to "umc_infra" and leaves the handlers to the application (nothing on stderr unless asked).
logging.getLogger("umc_infra").addHandler(logging.NullHandler())

try:
    __version__ = version("umc-infra")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "Actor",
    "AddressError",
    "AnsibleTool",
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
    "DoctorCheck",
    "DoctorReport",
    "DriftReport",
    "Event",
    "ExitCode",
    "Forbidden",
    "GuestNotRunning",
    "GuestsTool",
    "HookContext",
    "HookError",
    "Host",
    "HostKeyChanged",
    "HostStats",
    "InternalError",
    "InvalidStateKey",
    "InventoryError",
    "LockInfo",
    "MissingDependency",
    "NotFound",
    "OutputLine",
    "ParamChange",
    "ParamProblem",
    "ParamsError",
    "PlanChanged",
    "PlanResult",
    "Play",
    "PlaybookError",
    "PlaybookResult",
    "PortInUse",
    "ProcessError",
    "ProcessFailed",
    "ProcessNotStarted",
    "ProcessTimeout",
    "ProvisionResult",
    "Provisioner",
    "QuotaExceeded",
    "RealTools",
    "RecoveryError",
    "RequestConflict",
    "ResourceChange",
    "ResourceChanged",
    "RollbackFailed",
    "RootRequired",
    "RunOptions",
    "RunRecord",
    "SandboxDamaged",
    "SandboxError",
    "SandboxNotFound",
    "SecretError",
    "SecretSource",
    "ServiceError",
    "Settings",
    "SettingsError",
    "SshUnreachable",
    "StateBackendError",
    "StepFinished",
    "StepStarted",
    "TaskResult",
    "TerraformError",
    "TerraformTool",
    "ToolContext",
    "ToolMissing",
    "ToolTooOld",
    "Tools",
    "UmcInfraError",
    "Unauthenticated",
    "UnknownSandboxUser",
    "UnresolvedReference",
    "UnsafeArgv",
    "VCenterError",
    "__version__",
    "deployments",
    "destroy",
    "doctor",
    "drift",
    "load_settings",
    "plan",
    "provision",
    "status",
]
