"""The one exception tree of umc_infra, and the exit code of each error.

Every error the library raises derives from :class:`UmcInfraError`, and every raise names a leaf (a class
without subclasses): a caller catches a precise error, or a branch, or the root::

    UmcInfraError
    ├── BlueprintNotFound           no blueprint of that name (lists the ones there are)
    ├── BlueprintError              a blueprint is invalid or references something missing
    ├── ParamsError                 parameters are wrong: every invalid field, with what is allowed
    ├── SettingsError               a site setting (UMC_* variable, flag or argument) is invalid or missing
    ├── UnresolvedReference         a blueprint reference has no value during a run (an output, an item, a setting)
    ├── SecretError                 a secret is missing, denied, or Vault is unreachable (names the reference)
    ├── AddressError                the pool is exhausted, an address is taken, or its claim is unreadable
    ├── StateBackendError           the state backend (S3 bucket or local directory) cannot be reached or used
    ├── InvalidStateKey             a name cannot be a key in the state backend (it would escape its prefix)
    ├── DeploymentLocked            another run holds the deployment (names the holder and since when)
    ├── DeploymentNotFound          no record of that deployment
    ├── DestroyNotAllowed           the change would delete or replace VMs (lists them); pass allow_destroy
    ├── PlanChanged                 the world moved since the reviewed plan (lists what differs)
    ├── Cancelled                   cancelled from another thread, or a step ran past its timeout
    ├── UnsafeArgv                  refused to start a process with a secret value or a map in its argv
    ├── ToolMissing                 a program umc_infra runs (terraform, ssh-keyscan) is not installed
    ├── ToolTooOld                  a program umc_infra runs is older than it supports
    ├── ProcessError                a child process failed (argv redacted, exit code, output tail)
    │   ├── ProcessNotStarted       ... could not be started (not found, not executable)
    │   ├── ProcessFailed           ... exited non-zero
    │   ├── ProcessTimeout          ... ran past its timeout and was stopped
    │   └── TerraformError          terraform init/plan/apply/output failed (step, exit code, redacted tail)
    ├── PlaybookError               a playbook failed: the failed hosts and tasks
    ├── HookError                   a blueprint's hook stopped the run, or is not installed
    ├── InventoryError              after the apply, a module's outputs make no inventory (the VMs exist)
    ├── SshUnreachable              a VM did not answer SSH in time (names the hosts and their addresses)
    ├── HostKeyChanged              a VM's SSH host key differs from the pinned one (both fingerprints)
    ├── RecoveryError               the run before died and left something this run cannot clean up
    ├── VCenterError                umc_infra's own vCenter call failed (login, reachability)
    ├── RollbackFailed              on_failure='destroy' could not remove a failed new deployment
    ├── InternalError               an unexpected failure a command caught: its type and a redacted line
    ├── ServiceError                the self-service API refused a request (each answers its own HTTP status)
    │   ├── Unauthenticated         no bearer token, or one that does not verify: 401 (never quotes the token)
    │   ├── Forbidden               another department, or a blueprint the department may not use: 403
    │   ├── NotFound                no such deployment or job among the caller's departments': 404
    │   ├── RequestConflict         the name is another department's, or a job for it is already queued: 409
    │   └── QuotaExceeded           the request would take its department over its quota (the numbers): 409
    └── SandboxError                the local sandbox cannot start or answer
        ├── MissingDependency       a Debian package or binary is missing (names the install command)
        ├── RootRequired            the sandbox's SSH guests need root
        ├── PortInUse               a sandbox port is taken by a process the sandbox did not start
        ├── BuildFailed             building the vCenter simulator failed
        ├── ComponentFailed         a component did not come up or answer its health check
        ├── SandboxNotFound         no sandbox runs from this state directory
        ├── SandboxDamaged          the sandbox's state directory is damaged
        ├── GuestNotRunning         no SSH guest runs for an address
        └── UnknownSandboxUser      a token was asked for a user the sandbox's issuer does not have

Each message says what failed, where, and what to do next. None carries a secret value: messages are
built from names and redacted output only.

Each class declares the exit code of the ``umc-infra`` command it ends, one of :class:`ExitCode`, in its
``class`` line (``class DeploymentLocked(UmcInfraError, exit_code=ExitCode.LOCKED)``); the command line
takes it from ``exit_code`` and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ExitCode(IntEnum):
    """The exit codes of ``umc-infra``, for CI pipelines: the one table (docs/cli.md shows it, a test compares)."""

    OK = 0
    """The command did what it was asked."""
    ERROR = 1
    """Any other error, or an unexpected one (:class:`InternalError`)."""
    BAD_INPUT = 2
    """Bad parameters, blueprint, deployment name, settings or usage: nothing was created."""
    LOCKED = 3
    """Another run holds the deployment."""
    TERRAFORM = 4
    """Terraform failed."""
    ANSIBLE = 5
    """Ansible failed on some hosts."""
    DRIFT = 6
    """``drift`` found drift: a result, not an error."""
    REFUSED = 7
    """Refused: VMs would be deleted or replaced, the reviewed plan changed, or a VM's host key changed."""
    SECRETS = 8
    """A secret could not be read from Vault."""
    UNHEALTHY = 9
    """``sandbox status`` found a component unhealthy, or ``doctor`` a check failed: a result, not an error."""
    INTERRUPTED = 130
    """Interrupted (Ctrl-C, SIGTERM) or cancelled."""


class UmcInfraError(Exception):
    """Root of every error umc_infra raises; raise one of its leaves, never the root or a branch.

    Args:
        message: What failed and what to do about it.
        step: The step that failed (``"sandbox.vcsim"``, ``"terraform.apply"`` ...), if known.

    """

    exit_code: ClassVar[int] = ExitCode.ERROR
    """The exit code of a ``umc-infra`` command this error ends."""

    def __init_subclass__(cls, *, exit_code: ExitCode | None = None) -> None:
        """Take the exit code a class declares in its ``class`` line; without one, it keeps its parent's.

        Every class of this module declares its own (a test checks).
        """
        super().__init_subclass__()
        if exit_code is not None:
            cls.exit_code = exit_code

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step

    def __str__(self) -> str:
        message = super().__str__()
        return f"[{self.step}] {message}" if self.step else message


class BlueprintNotFound(UmcInfraError, exit_code=ExitCode.BAD_INPUT):
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


class BlueprintError(UmcInfraError, exit_code=ExitCode.BAD_INPUT):
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


class ParamsError(UmcInfraError, exit_code=ExitCode.BAD_INPUT):
    """The parameters do not fit the blueprint; ``problems`` lists every invalid field at once."""

    def __init__(self, problems: list[ParamProblem], *, blueprint: str | None, step: str = "params") -> None:
        lines = _lines(problems)
        where = f" for blueprint {blueprint!r}" if blueprint else ""
        super().__init__(f"invalid parameters{where}: {lines}", step=step)
        self.problems = tuple(problems)
        self.blueprint = blueprint


class SettingsError(UmcInfraError, exit_code=ExitCode.BAD_INPUT):
    """Site settings are invalid; ``problems`` names each setting (its variable or argument) and what is allowed."""

    def __init__(self, problems: list[ParamProblem]) -> None:
        super().__init__(f"invalid settings: {_lines(problems)}", step="settings")
        self.problems = tuple(problems)


class UnresolvedReference(UmcInfraError, exit_code=ExitCode.ERROR):
    """A blueprint reference has no value during a run: a module's output, a list item, a site setting.

    The blueprint checked out, so something may already have been created: the message names the reference,
    the module that needs it and what to do.

    Attributes:
        reference: The reference as written (``modules.db.ips[0]``, ``site.datacenter``, a format).
        where: Where the blueprint uses it (``modules.web.inputs.db_host``), if known.
        missing: What is missing, and what to do about it.
    """

    def __init__(
        self, message: str, *, reference: str, where: str | None, missing: str, step: str = "references"
    ) -> None:
        super().__init__(message, step=step)
        self.reference = reference
        self.where = where
        self.missing = missing


class SecretError(UmcInfraError, exit_code=ExitCode.SECRETS):
    """A secret could not be read: missing, denied, deleted, or Vault unreachable.

    Attributes:
        reference: The Vault reference (``kv/data/apps/x#db_password``), never the value.

    """

    def __init__(self, message: str, *, reference: str | None = None, step: str = "secrets") -> None:
        super().__init__(message, step=step)
        self.reference = reference


class AddressError(UmcInfraError, exit_code=ExitCode.ERROR):
    """No free address in the pool, or a requested address belongs to another deployment."""


class StateBackendError(UmcInfraError, exit_code=ExitCode.ERROR):
    """The state backend cannot be reached or refused a request (names the bucket or directory)."""


class InvalidStateKey(UmcInfraError, exit_code=ExitCode.ERROR):
    """A name cannot be a key in the state backend: it would leave its prefix, or is not lowercase text.

    Keys are made of deployment, module and host names; the message quotes the key and what keys may hold.
    """


class DeploymentLocked(UmcInfraError, exit_code=ExitCode.LOCKED):
    """Another run holds the deployment's lock.

    Attributes:
        holder: Who holds it (``user@host pid N``, or the CI job).
        since: When they took it.
    """

    def __init__(self, message: str, *, holder: str, since: datetime, step: str = "lock") -> None:
        super().__init__(message, step=step)
        self.holder = holder
        self.since = since


class DeploymentNotFound(UmcInfraError, exit_code=ExitCode.BAD_INPUT):
    """No record of that deployment in the state backend."""


class DestroyNotAllowed(UmcInfraError, exit_code=ExitCode.REFUSED):
    """The change would delete or replace resources; ``resources`` lists them. Pass ``allow_destroy=True``."""

    def __init__(self, message: str, *, resources: list[str], step: str) -> None:
        super().__init__(message, step=step)
        self.resources = tuple(resources)


class PlanChanged(UmcInfraError, exit_code=ExitCode.REFUSED):
    """What would change now differs from the reviewed plan; nothing was applied."""


class Cancelled(UmcInfraError, exit_code=ExitCode.INTERRUPTED):
    """The run was cancelled, or a step ran past its timeout; the record says where."""


class UnsafeArgv(UmcInfraError, exit_code=ExitCode.ERROR):
    """umc_infra refused to start a process whose argv holds a secret value or a map (a bug in the caller).

    Every process on the machine can read a command line: secrets go in the environment, maps in a vars file.
    """


class ToolMissing(UmcInfraError, exit_code=ExitCode.ERROR):
    """A program umc_infra runs (``terraform``, ``ssh-keyscan`` ...) is not installed; the message says how to."""


class ToolTooOld(UmcInfraError, exit_code=ExitCode.ERROR):
    """A program umc_infra runs is older than umc_infra supports (names both versions)."""


class ProcessError(UmcInfraError, exit_code=ExitCode.ERROR):
    """A child process failed: the branch of its leaves (not started, failed, timed out, Terraform).

    Attributes:
        argv: The command line, with secret values redacted.
        returncode: The exit status (negative: killed by that signal; None: it never ran).
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


class ProcessNotStarted(ProcessError, exit_code=ExitCode.ERROR):
    """A child process could not be started: its program is not there, or not executable."""


class ProcessFailed(ProcessError, exit_code=ExitCode.ERROR):
    """A child process exited non-zero."""


class ProcessTimeout(ProcessError, exit_code=ExitCode.ERROR):
    """A child process ran past its timeout and was stopped."""


class TerraformError(ProcessError, exit_code=ExitCode.TERRAFORM):
    """A Terraform command failed; ``output_tail`` holds its last lines (redacted)."""


class PlaybookError(UmcInfraError, exit_code=ExitCode.ANSIBLE):
    """A playbook failed on some hosts.

    Attributes:
        playbook: The playbook's name.
        failures: ``(host, task, message)`` for each failed or unreachable host (redacted).

    """

    def __init__(self, message: str, *, playbook: str, failures: list[tuple[str, str, str]], step: str) -> None:
        super().__init__(message, step=step)
        self.playbook = playbook
        self.failures = tuple(failures)


class HookError(UmcInfraError, exit_code=ExitCode.ERROR):
    """A blueprint's hook stopped the run (or is not installed).

    Attributes:
        hook: The hook's entry point name.
        at: Where in the run it was called.
    """

    def __init__(self, message: str, *, hook: str, at: str) -> None:
        super().__init__(message, step=f"hook.{at}.{hook}")
        self.hook = hook
        self.at = at


class InventoryError(UmcInfraError, exit_code=ExitCode.ERROR):
    """After the apply, a module's outputs do not make hosts (names and addresses): the VMs exist.

    Found only once Terraform has made the VMs, so it is not a bad-input error: the message says so, and what
    to fix (the module's outputs, or the VMs' guest customization).
    """


class SshUnreachable(UmcInfraError, exit_code=ExitCode.ERROR):
    """A VM did not answer SSH (or presented no host key) in time; the message names the hosts and addresses."""


class HostKeyChanged(UmcInfraError, exit_code=ExitCode.REFUSED):
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


class RecoveryError(UmcInfraError, exit_code=ExitCode.ERROR):
    """The deployment's previous run died and left something behind that this run cannot clean up itself.

    The message names what (VMs that exist in vCenter but not in Terraform's state, a state lock) and what
    to do; nothing was changed by this run.
    """


class VCenterError(UmcInfraError, exit_code=ExitCode.ERROR):
    """umc_infra's own vCenter call failed: vCenter unreachable, or the login refused."""


class RollbackFailed(UmcInfraError, exit_code=ExitCode.ERROR):
    """A new deployment failed and removing what it made (``on_failure="destroy"``) failed too.

    Attributes:
        cause: The error that failed the run (its message, redacted).
        rollback: The error of the rollback (its message, redacted).
    """

    def __init__(self, message: str, *, cause: str, rollback: str, step: str | None = None) -> None:
        super().__init__(message, step=step)
        self.cause = cause
        self.rollback = rollback


class InternalError(UmcInfraError, exit_code=ExitCode.ERROR):
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


class ServiceError(UmcInfraError, exit_code=ExitCode.ERROR):
    """The self-service API refused a request; ``status`` is the HTTP status it answers with.

    The API answers these; no ``umc-infra`` command ends with one, so they keep exit code 1.
    """

    status: ClassVar[int] = 400


class Unauthenticated(ServiceError, exit_code=ExitCode.ERROR):
    """No bearer token, or one that does not verify (signature, issuer, audience, expiry); never quotes the token.

    Attributes:
        reason: Why, for the ``WWW-Authenticate`` header.
    """

    status = 401

    def __init__(self, reason: str, *, step: str = "auth") -> None:
        super().__init__(f"unauthenticated: {reason}", step=step)
        self.reason = reason


class Forbidden(ServiceError, exit_code=ExitCode.ERROR):
    """The caller does not act for the department, or the department may not use the blueprint (names those it may)."""

    status = 403


class NotFound(ServiceError, exit_code=ExitCode.ERROR):
    """No such deployment or job among those the caller's departments may see (another department's looks the same)."""

    status = 404


class RequestConflict(ServiceError, exit_code=ExitCode.ERROR):
    """The deployment name belongs to another department, is of another blueprint, or already has a queued job."""

    status = 409


class QuotaExceeded(ServiceError, exit_code=ExitCode.ERROR):
    """The request would take its department over its quota; nothing was queued.

    Attributes:
        department: The department.
        numbers: ``quota``, ``current`` (its other deployments), ``requested``: each ``{vms, vcpus, memory_mb}``.
        over: The counts above the quota (``vms``, ``vcpus``, ``memory_mb``).
    """

    status = 409

    def __init__(self, message: str, *, department: str, numbers: dict[str, dict[str, int]], over: tuple[str, ...],
                 step: str = "quota") -> None:  # fmt: skip
        super().__init__(message, step=step)
        self.department = department
        self.numbers = numbers
        self.over = over


class SandboxError(UmcInfraError, exit_code=ExitCode.ERROR):
    """The local sandbox cannot start, stop or answer: the branch of its leaves."""


class MissingDependency(SandboxError, exit_code=ExitCode.ERROR):
    """A program or Debian package the sandbox needs is not installed.

    Attributes:
        fix: The exact command that installs what is missing.

    """

    def __init__(self, message: str, *, fix: str, step: str | None = None) -> None:
        super().__init__(f"{message}; fix: {fix}", step=step)
        self.fix = fix


class RootRequired(SandboxError, exit_code=ExitCode.ERROR):
    """The sandbox's SSH guests need root (mount namespaces, overlay mounts, chroot); or start it without guests."""


class PortInUse(SandboxError, exit_code=ExitCode.ERROR):
    """A port the sandbox wants is taken by a process the sandbox did not start."""


class BuildFailed(SandboxError, exit_code=ExitCode.ERROR):
    """Building the vCenter simulator from Debian's govmomi source failed."""


class ComponentFailed(SandboxError, exit_code=ExitCode.ERROR):
    """A sandbox component did not start or did not pass its health check."""


class SandboxNotFound(SandboxError, exit_code=ExitCode.ERROR):
    """No sandbox was started from this state directory (``umc-infra sandbox up`` starts one)."""


class SandboxDamaged(SandboxError, exit_code=ExitCode.ERROR):
    """A file of the sandbox's state directory is damaged (``umc-infra sandbox down --purge`` starts afresh)."""


class GuestNotRunning(SandboxError, exit_code=ExitCode.ERROR):
    """No SSH guest runs for that address."""


class UnknownSandboxUser(SandboxError, exit_code=ExitCode.ERROR):
    """A token was asked for a user the sandbox's OIDC issuer does not have (the message lists its users)."""
