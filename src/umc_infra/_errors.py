"""The one exception tree of umc_infra.

Every error the library raises on purpose derives from :class:`UmcInfraError`::

    UmcInfraError
    ├── ProcessError                a child process failed (argv redacted, exit code, output tail)
    │   └── ProcessTimeout          ... or ran past its timeout and was stopped
    └── SandboxError                the local sandbox cannot start or answer
        ├── MissingDependency       a Debian package or binary is missing (names the install command)
        ├── PortInUse               a sandbox port is taken by a process the sandbox did not start
        ├── BuildFailed             building the vCenter simulator failed
        └── ComponentFailed         a component did not come up or answer its health check

Each message says what failed, where, and what to do next. None carries a secret value: messages are
built from names and redacted output only.
"""

from __future__ import annotations


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
