"""umc_infra: self-service vSphere environments from service blueprints.

Terraform (vSphere provider) builds the VMs, Ansible configures them, Vault supplies every secret.
The local sandbox (:mod:`umc_infra.sandbox`) runs the whole stack on one machine.
"""

from importlib.metadata import PackageNotFoundError, version

from umc_infra._errors import (
    BuildFailed,
    ComponentFailed,
    MissingDependency,
    PortInUse,
    ProcessError,
    ProcessTimeout,
    SandboxError,
    UmcInfraError,
)

try:
    __version__ = version("umc-infra")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "BuildFailed",
    "ComponentFailed",
    "MissingDependency",
    "PortInUse",
    "ProcessError",
    "ProcessTimeout",
    "SandboxError",
    "UmcInfraError",
    "__version__",
]
