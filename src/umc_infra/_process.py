"""The one place umc_infra starts child processes.

Every child gets an argv list (never a shell), an explicit environment, a working directory and a
timeout. Output is read line by line and handed to a callback as it arrives, after secret values are
redacted. On Ctrl-C (SIGINT) or SIGTERM the child gets SIGINT first, so a tool such as Terraform can
write its state and release its lock, then SIGTERM and SIGKILL if it does not stop in time.

Secret values never go into argv: :func:`run` refuses an argv that contains one of the redactor's
values, so a bug elsewhere cannot leak a secret into the process table.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra._errors import Cancelled, ProcessError, ProcessTimeout, UmcInfraError

Stream = Literal["stdout", "stderr"]
LineCallback = Callable[[Stream, str], None]

REDACTED = "***"
_TAIL_LINES = 20
_SHOWN_LINES = 8

# Observers see the argv of every child started here; tests use this to prove no secret reaches argv.
_argv_observers: list[Callable[[tuple[str, ...]], None]] = []


def find_tool(name: str) -> Path | None:
    """A program installed by a Python package: beside this Python (its venv) first, then on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def notify_argv(args: tuple[str, ...]) -> None:
    """Tell the observers about a child process started elsewhere (ansible-runner)."""
    for observer in list(_argv_observers):
        observer(args)


def add_argv_observer(observer: Callable[[tuple[str, ...]], None]) -> Callable[[], None]:
    """Register a callable that sees the argv of every child process; returns its remover."""
    _argv_observers.append(observer)
    return lambda: _argv_observers.remove(observer)


class Redactor:
    """Replaces known secret values in text with ``***``.

    Args:
        secrets: Values to hide. Empty values are ignored.

    """

    def __init__(self, secrets: Iterable[SecretStr | str] = ()) -> None:
        self._values: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: SecretStr | str) -> None:
        """Hide more values from now on."""
        for secret in secrets:
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            # Multi-line secrets (keys) are also hidden line by line, since output arrives in lines.
            for part in (value, *value.splitlines()):
                if part.strip() and part not in self._values:
                    self._values.append(part)
        self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        return text

    def contains_secret(self, text: str) -> bool:
        """Whether ``text`` holds any of the secret values."""
        return any(value in text for value in self._values)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} values)"


class ProcessResult(BaseModel):
    """What a finished child process left behind (redacted)."""

    model_config = ConfigDict(frozen=True)

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def run(
    argv: Sequence[str],
    *,
    step: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float | None = None,
    on_line: LineCallback | None = None,
    redactor: Redactor | None = None,
    check: bool = True,
    stdin_text: str | None = None,
    interrupt_grace_s: float = 30.0,
    cancel: threading.Event | None = None,
) -> ProcessResult:
    """Run a child process to completion, streaming its output.

    Args:
        argv: Program and arguments; no shell is involved.
        step: Name of the step, for errors and logs (``"sandbox.vcsim.build"``).
        env: The child's whole environment; nothing is inherited implicitly.
        cwd: Working directory.
        timeout: Seconds before the child is stopped and :class:`ProcessTimeout` raised.
        on_line: Called with each redacted output line as it arrives.
        redactor: Hides secret values in output and errors; argv containing one is refused.
        check: Raise :class:`ProcessError` on a non-zero exit status.
        stdin_text: Text written to the child's standard input (e.g. a secret), then closed.
        interrupt_grace_s: How long the child may take to stop after SIGINT before SIGTERM.
        cancel: When set (from another thread), the child is stopped the same way and
            :class:`Cancelled` raised.

    Returns:
        The redacted result.

    Raises:
        ProcessError: The child exited non-zero (and ``check`` is set), or could not start.
        ProcessTimeout: The child ran past ``timeout``.

    """
    redact = redactor or Redactor()
    args = tuple(str(a) for a in argv)
    if any(redact.contains_secret(a) for a in args):
        raise UmcInfraError("refusing to start a process with a secret value in its argv", step=step)
    notify_argv(args)

    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            # Own process group: a terminal's Ctrl-C reaches us, and we decide how the child stops.
            start_new_session=True,
        )
    except OSError as exc:
        raise ProcessError(f"cannot start {args[0]!r}: {exc.strerror}", step=step, argv=args, returncode=None) from None

    lines: queue.Queue[tuple[Stream, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(name, pipe, lines), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
        if pipe is not None
    ]
    for reader in readers:
        reader.start()
    if stdin_text is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin_text)
        proc.stdin.close()

    out: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
    deadline = None if timeout is None else started + timeout
    open_streams = len(readers)
    timed_out = cancelled = False
    with _forward_termination(proc, interrupt_grace_s):
        while open_streams:
            if cancel is not None and cancel.is_set() and not cancelled:
                cancelled = True
                _stop(proc, interrupt_grace_s)
                deadline = time.monotonic() + 10
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            try:
                stream, line = lines.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    if timed_out or cancelled:  # stopped, but something still holds its output open
                        break
                    # Stop it, then keep reading a while: what it prints while stopping matters most.
                    timed_out = True
                    _stop(proc, interrupt_grace_s)
                    deadline = time.monotonic() + 10
                continue
            if line is None:
                open_streams -= 1
                continue
            clean = redact(line.rstrip("\n"))
            out[stream].append(clean)
            if on_line is not None:
                on_line(stream, clean)
        returncode = proc.wait()
    for reader in readers:
        reader.join(timeout=1)

    result = ProcessResult(
        argv=tuple(redact(a) for a in args),
        returncode=returncode,
        stdout="\n".join(out["stdout"]),
        stderr="\n".join(out["stderr"]),
        duration_s=time.monotonic() - started,
    )
    tail = tuple(line for line in (out["stderr"] or out["stdout"]) if line.strip())[-_TAIL_LINES:]
    if cancelled:
        raise Cancelled(f"{Path(args[0]).name} was cancelled and stopped", step=step)
    if timed_out:
        raise ProcessTimeout(
            f"{args[0]} did not finish within {timeout:.0f} s and was stopped",
            step=step,
            argv=result.argv,
            returncode=returncode,
            output_tail=tail,
        )
    if check and returncode != 0:
        shown = "".join(f"\n  | {line}" for line in tail[-_SHOWN_LINES:]) or " (no output)"
        raise ProcessError(
            f"{Path(args[0]).name} exited with status {returncode}:{shown}",
            step=step,
            argv=result.argv,
            returncode=returncode,
            output_tail=tail,
        )
    return result


def _pump(name: Stream, pipe: IO[str], lines: queue.Queue[tuple[Stream, str | None]]) -> None:
    with pipe:
        for line in pipe:
            lines.put((name, line))
    lines.put((name, None))


def _stop(proc: subprocess.Popen[str], grace_s: float) -> None:
    """SIGINT, then SIGTERM, then SIGKILL, to the child's process group."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)


@contextlib.contextmanager
def _forward_termination(proc: subprocess.Popen[str], grace_s: float) -> Iterator[None]:
    """While the child runs, SIGTERM to us stops the child gracefully, then raises KeyboardInterrupt."""
    with sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt:
            _stop(proc, grace_s)
            raise


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For the block (main thread only): SIGTERM raises KeyboardInterrupt, as Ctrl-C does; then the old handler.

    A run stopped by a service manager or CI runner (SIGTERM) then stops its tools gracefully and is
    recorded as interrupted, instead of dying with its record saying "running".
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_set(event: threading.Event) -> Iterator[None]:
    """For the block (main thread only): SIGINT and SIGTERM set ``event`` instead of raising.

    For code that cannot be interrupted cleanly (ansible-runner's loop), but stops when asked.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: event.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def spawn_daemon(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running child in its own session, output appended to ``log_path``.

    The caller records the pid; the child survives the caller's exit.
    """
    args = tuple(str(a) for a in argv)
    notify_argv(args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
