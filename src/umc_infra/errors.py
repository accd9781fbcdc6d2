"""The one exception tree of umc_infra.

Every error the library raises on purpose derives from :class:`UmcInfraError`::

    UmcInfraError
    ├── BlueprintNotFound           no blueprint of that name (lists the ones there are)
    ├── BlueprintError              a blueprint is invalid or references something missing
    ├── ParamsError                 parameters are wrong: every invalid field, with what is allowed
    ├── SettingsError               a site setting (UMC_* variable, flag or argument) is invalid
    ├── SecretError                 a secret is missing, denied, or Vault is unreachable (names the reference)
    ├── AddressError                the pool is exhausted, an address is taken, or its claim is unreadable
    ├── StateBackendError           the state backend (S3 bucket or local directory) cannot be reached or used
    ├── DeploymentLocked            another run holds the deployment (names the holder and since when)
    ├── DeploymentNotFound          no record of that deployment
    ├── DestroyNotAllowed           the change would delete or replace VMs (lists them); pass allow_destroy
    ├── PlanChanged                 the world moved since the reviewed plan (lists what differs)
    ├── Cancelled                   cancelled from another thread, or a step ran past its timeout
    ├── ProcessError                a child process failed (argv redacted, exit code, output tail)
    │   ├── ProcessTimeout          ... or ran past its timeout and was stopped
    │   └── TerraformError          terraform init/apply/output failed (step, exit code, redacted tail)
    ├── PlaybookError               a playbook failed: the failed hosts and tasks
    ├── RecoveryError               the run before died and left something this run cannot clean up
    ├── VCenterError                umc_infra's own vCenter call failed (login, reachability)
    ├── RollbackFailed              on_failure='destroy' could not remove a failed new deployment
    ├── HostKeyChanged              a VM's SSH host key differs from the pinned one (both fingerprints)
    ├── InternalError               an unexpected failure a command caught: its type and a redacted line
    └── SandboxError                the local sandbox cannot start or answer
        ├── MissingDependency       a Debian package or binary is missing (names the install command)
        ├── PortInUse               a sandbox port is taken by a process the sandbox did not start
        ├── BuildFailed             building the vCenter simulator failed
        └── ComponentFailed         a component did not come up or answer its health check

Each message says what failed, where, and what to do next. None carries a secret value: messages are
built from names and redacted output only.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class UmcInfraError(Exception):
    """Root of every error umc_infra raises on purpose.

    Args:
        message: What failed and what to do about it.
        step: The step that failed (``"sandbox.vcsim"``, ``"terraform.apply"`` ...), if known.

    """

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step

    def __str__(self) -> str:
        message = super().__str__()
        return f"[{self.step}] {message}" if self.step else message


class ProcessError(UmcInfraError):
    """A child process exited non-zero.

    Attributes:
        argv: The command line, with secret values redacted.
        returncode: The exit status (negative: killed by that signal).
        output_tail: The last lines the process printed, redacted.

    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        argv: tuple[str, ...] = (),
        returncode: int | None = None,
        output_tail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, step=step)
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail


class ProcessTimeout(ProcessError):
    """A child process ran past its timeout and was stopped."""


class BlueprintNotFound(UmcInfraError):
    """No blueprint has that name."""


class BlueprintProblem(BaseModel):
    """One thing wrong with a blueprint: where (file, line, path in the blueprint) and what."""

    model_config = ConfigDict(frozen=True)

    where: str
    """The path in the blueprint (``modules.web.inputs.cpu``), or ``extends``, ``name`` ..."""
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        return f"{at}{self.where}: {self.message}" if self.where else f"{at}{self.message}"


class BlueprintError(UmcInfraError):
    """A blueprint is invalid or references a module, playbook, param or secret that does not exist.

    Attributes:
        problems: Every problem found, each with its file and line where known.

    """

    def __init__(
        self, message: str, *, problems: list[BlueprintProblem] | None = None, step: str = "blueprint.load"
    ) -> None:
        problems = problems or []
        super().__init__(message + "".join(f"\n  {p}" for p in problems), step=step)
        self.problems = tuple(problems)


class ParamProblem(BaseModel):
    """One invalid parameter: which, what is wrong, what is allowed."""

    model_config = ConfigDict(frozen=True)

    field: str
    message: str
    allowed: str


def _lines(problems: list[ParamProblem]) -> str:
    return "; ".join(f"{p.field}: {p.message} (allowed: {p.allowed})" for p in problems)


class ParamsError(UmcInfraError):
    """The parameters do not fit the blueprint; ``problems`` lists every invalid field at once."""

    def __init__(self, problems: list[ParamProblem], *, blueprint: str | None, step: str = "params") -> None:
        lines = _lines(problems)
        where = f" for blueprint {blueprint!r}" if blueprint else ""
        super().__init__(f"invalid parameters{where}: {lines}", step=step)
        self.problems = tuple(problems)
        self.blueprint = blueprint


class SettingsError(UmcInfraError):
    """Site settings are invalid; ``problems`` names each setting (its variable or argument) and what is allowed."""

    def __init__(self, problems: list[ParamProblem]) -> None:
        super().__init__(f"invalid settings: {_lines(problems)}", step="settings")
        self.problems = tuple(problems)


class SecretError(UmcInfraError):
    """A secret could not be read: missing, denied, deleted, or Vault unreachable.

    Attributes:
        reference: The Vault reference (``kv/data/apps/x#db_password``), never the value.

    """

    def __init__(self, message: str, *, reference: str | None = None, step: str = "secrets") -> None:
        super().__init__(message, step=step)
        self.reference = reference


class StateBackendError(UmcInfraError):
    """The state backend cannot be reached or refused a request (names the bucket or directory)."""


class AddressError(UmcInfraError):
    """No free address in the pool, or a requested address belongs to another deployment."""


class DeploymentLocked(UmcInfraError):
    """Another run holds the deployment's lock.

    Attributes:
        holder: Who holds it (``user@host pid N``, or the CI job).
        since: When they took it.
    """

    def __init__(self, message: str, *, holder: str, since: datetime, step: str = "lock") -> None:
        super().__init__(message, step=step)
        self.holder = holder
        self.since = since


class DeploymentNotFound(UmcInfraError):
    """No record of that deployment in the state backend."""


class DestroyNotAllowed(UmcInfraError):
    """The change would delete or replace resources; ``resources`` lists them. Pass ``allow_destroy=True``."""

    def __init__(self, message: str, *, resources: list[str], step: str) -> None:
        super().__init__(message, step=step)
        self.resources = tuple(resources)


class PlanChanged(UmcInfraError):
    """What would change now differs from the reviewed plan; nothing was applied."""


class Cancelled(UmcInfraError):
    """The run was cancelled, or a step ran past its timeout; the record says where."""


class TerraformError(ProcessError):
    """A Terraform command failed; ``output_tail`` holds its last lines (redacted)."""


class PlaybookError(UmcInfraError):
    """A playbook failed on some hosts.

    Attributes:
        playbook: The playbook's name.
        failures: ``(host, task, message)`` for each failed or unreachable host (redacted).

    """

    def __init__(self, message: str, *, playbook: str, failures: list[tuple[str, str, str]], step: str) -> None:
        super().__init__(message, step=step)
        self.playbook = playbook
        self.failures = tuple(failures)


class HostKeyChanged(UmcInfraError):
    """A VM presents an SSH host key other than the one pinned for it: nothing connected to it.

    Either the VM was rebuilt outside umc_infra (then forget its pinned key and run again), or another
    machine answers at its address.

    Attributes:
        deployment: The deployment the VM belongs to.
        host: The VM's name.
        ip: The address that answered.
        pinned: SHA256 fingerprints of the pinned keys (``ssh-ed25519 SHA256:...``).
        presented: SHA256 fingerprints of the keys the address presented.

    """

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        host: str,
        ip: str,
        pinned: tuple[str, ...],
        presented: tuple[str, ...],
        step: str = "ssh",
    ) -> None:
        super().__init__(message, step=step)
        self.deployment = deployment
        self.host = host
        self.ip = ip
        self.pinned = pinned
        self.presented = presented


class InternalError(UmcInfraError):
    """An unexpected failure (not an :class:`UmcInfraError`) that a ``umc-infra`` command caught.

    It is a bug, or a failure umc_infra does not know yet: rerun with ``--debug`` for the traceback and report it.

    Attributes:
        command: The command that failed (``umc-infra deployments``).
        cause: The type of the original exception (``pydantic_core._pydantic_core.ValidationError``).

    """

    def __init__(self, message: str, *, command: str, cause: str, step: str = "internal") -> None:
        super().__init__(message, step=step)
        self.command = command
        self.cause = cause


class SandboxError(UmcInfraError):
    """The local sandbox cannot start, stop or answer."""


class MissingDependency(SandboxError):
    """A program or Debian package the sandbox needs is not installed.

    Attributes:
        fix: The exact command that installs what is missing.

    """

    def __init__(self, message: str, *, fix: str, step: str | None = None) -> None:
        super().__init__(f"{message}; fix: {fix}", step=step)
        self.fix = fix


class PortInUse(SandboxError):
    """A port the sandbox wants is taken by a process the sandbox did not start."""


class BuildFailed(SandboxError):
    """Building the vCenter simulator from Debian's govmomi source failed."""


class ComponentFailed(SandboxError):
    """A sandbox component did not start or did not pass its health check."""


class RecoveryError(UmcInfraError):
    """The deployment's previous run died and left something behind that this run cannot clean up itself.

    The message names what (VMs that exist in vCenter but not in Terraform's state, a state lock) and what
    to do; nothing was changed by this run.
    """


class VCenterError(UmcInfraError):
    """umc_infra's own vCenter call failed: vCenter unreachable, or the login refused."""


class RollbackFailed(UmcInfraError):
    """A new deployment failed and removing what it made (``on_failure="destroy"``) failed too.

    Attributes:
        cause: The error that failed the run (its message, redacted).
        rollback: The error of the rollback (its message, redacted).
    """

    def __init__(self, message: str, *, cause: str, rollback: str, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.cause = cause
        self.rollback = rollback
