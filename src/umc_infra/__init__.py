"""umc_infra: self-service vSphere environments from service blueprints.

Terraform (vSphere provider) builds the VMs, Ansible configures them, Vault supplies every secret::

    from umc_infra import provision

    result = provision("web-server", {"instances": 2}, deployment="team-x-web")
    print([(h.name, h.ip) for h in result.hosts])

The local sandbox (:mod:`umc_infra.sandbox`) runs the whole stack on one machine.
"""

from importlib.metadata import PackageNotFoundError, version

from umc_infra._ansible import HostStats, PlaybookResult
from umc_infra._blueprint import Blueprint
from umc_infra._errors import (
    AddressError,
    BlueprintError,
    BlueprintNotFound,
    BuildFailed,
    ComponentFailed,
    MissingDependency,
    ParamProblem,
    ParamsError,
    PlaybookError,
    PortInUse,
    ProcessError,
    ProcessTimeout,
    SandboxError,
    SecretError,
    TerraformError,
    UmcInfraError,
)
from umc_infra._events import Event, OutputLine, ResourceChanged, StepFinished, StepStarted, TaskResult
from umc_infra._inventory import Host
from umc_infra._provision import Provisioner, ProvisionResult, provision
from umc_infra._secrets import SecretSource
from umc_infra._settings import Settings
from umc_infra._terraform import ChangeCounts

try:
    __version__ = version("umc-infra")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "AddressError",
    "Blueprint",
    "BlueprintError",
    "BlueprintNotFound",
    "BuildFailed",
    "ChangeCounts",
    "ComponentFailed",
    "Event",
    "Host",
    "HostStats",
    "MissingDependency",
    "OutputLine",
    "ParamProblem",
    "ParamsError",
    "PlaybookError",
    "PlaybookResult",
    "PortInUse",
    "ProcessError",
    "ProcessTimeout",
    "ProvisionResult",
    "Provisioner",
    "ResourceChanged",
    "SandboxError",
    "SecretError",
    "SecretSource",
    "Settings",
    "StepFinished",
    "StepStarted",
    "TaskResult",
    "TerraformError",
    "UmcInfraError",
    "__version__",
    "provision",
]
