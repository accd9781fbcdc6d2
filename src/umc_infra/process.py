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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict

from umc_infra import deathsig as _deathsig
from umc_infra.errors import Cancelled, ProcessFailed, ProcessNotStarted, ProcessTimeout, UnsafeArgv
from umc_infra.secrets.redact import REDACTED, Redactor

__all__ = ["REDACTED", "ProcessResult", "Redactor", "run"]

Stream = Literal["stdout", "stderr"]
LineCallback = Callable[[Stream, str], None]

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
    output_dir: Path | None = None,
    umask: int | None = None,
    raw_output: bool = False,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run a child process to completion, streaming its output.

    Every child gets SIGINT when this process dies (see :mod:`umc_infra.deathsig`), so a run killed
    outright never leaves a tool running on its own.

    Args:
        argv: Program and arguments; no shell is involved.
        step: Name of the step, for errors and logs (``"sandbox.vcsim.build"``).
        env: The child's whole environment; nothing is inherited implicitly.
        cwd: Working directory.
        timeout: Seconds before the child is stopped and :class:`ProcessTimeout` raised.
        on_line: Called with each redacted output line as it arrives.
        redactor: Hides secret values in output and errors; argv containing one is refused.
        check: Raise :class:`ProcessFailed` on a non-zero exit status.
        stdin_text: Text written to the child's standard input (e.g. a secret), then closed.
        interrupt_grace_s: How long the child may take to stop after SIGINT before SIGTERM.
        cancel: When set (from another thread), the child is stopped the same way and
            :class:`Cancelled` raised.
        output_dir: The child writes its output to files in this private directory instead of pipes, and
            they are followed from there: a child whose reader dies then runs on until it has stopped
            cleanly (a pipe would kill it on its next write). Terraform runs this way so that it always
            gets to write its state.
        umask: The child's umask (``0o077``: what it creates is private to its owner).
        raw_output: ``on_line`` and the result's ``stdout``/``stderr`` get the output as it is, for
            machine-readable output the caller parses, then redacts (redacting a secret ``true`` inside JSON
            would corrupt it). Errors are redacted all the same.
        on_start: Called with the child's pid once it runs (to record the tools of a run).

    Returns:
        The result (redacted unless ``raw_output``).

    Raises:
        UnsafeArgv: A secret value the redactor knows is in ``argv``.
        ProcessNotStarted: The program could not be started.
        ProcessFailed: The child exited non-zero (and ``check`` is set).
        ProcessTimeout: The child ran past ``timeout``.
        Cancelled: ``cancel`` was set and the child was stopped.

    """
    redact = redactor or Redactor()
    args = tuple(str(a) for a in argv)
    if redact.in_argv(args):
        raise UnsafeArgv("refusing to start a process with a secret value in its argv", step=step)
    notify_argv(args)

    parent = os.getpid()

    def prepare_child() -> None:
        _deathsig.arm(parent)
        if umask is not None:
            os.umask(umask)

    started = time.monotonic()
    files: dict[Stream, Path] = {}
    try:
        with contextlib.ExitStack() as opened:
            targets: dict[Stream, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            if output_dir is not None:
                stem = f"out-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
                files = {"stdout": output_dir / f"{stem}.stdout", "stderr": output_dir / f"{stem}.stderr"}
                targets = {name: opened.enter_context(open(path, "wb", buffering=0)) for name, path in files.items()}
            proc = subprocess.Popen(
                args,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                stdout=targets["stdout"],
                stderr=targets["stderr"],
                text=True,
                bufsize=1,
                # Own process group: a terminal's Ctrl-C reaches us, and we decide how the child stops.
                start_new_session=True,
                preexec_fn=prepare_child,  # only a prctl and umask between fork and exec
            )
    except OSError as exc:
        for path in files.values():
            path.unlink(missing_ok=True)
        raise ProcessNotStarted(
            f"cannot start {args[0]!r}: {exc.strerror}", step=step, argv=args, returncode=None
        ) from None
    if on_start is not None:
        on_start(proc.pid)

    lines: queue.Queue[tuple[Stream, str | None]] = queue.Queue()
    exited = threading.Event()
    if files:
        readers = [
            threading.Thread(target=_follow, args=(name, path, lines, exited), daemon=True)
            for name, path in files.items()
        ]

        def waiter() -> None:
            proc.wait()
            exited.set()

        threading.Thread(target=waiter, daemon=True).start()
    else:
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

    raw: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
    out: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
    deadline = None if timeout is None else started + timeout
    open_streams = len(readers)
    timed_out = cancelled = False
    try:
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
                text = line.rstrip("\n")
                clean = redact(text)
                out[stream].append(clean)
                if raw_output:
                    raw[stream].append(text)
                if on_line is not None:
                    on_line(stream, text if raw_output else clean)
            returncode = proc.wait()
    finally:
        exited.set()
        for reader in readers:
            reader.join(timeout=1)
        for path in files.values():
            path.unlink(missing_ok=True)

    shown = raw if raw_output else out
    result = ProcessResult(
        argv=tuple(redact(a) for a in args),
        returncode=returncode,
        stdout="\n".join(shown["stdout"]),
        stderr="\n".join(shown["stderr"]),
        duration_s=time.monotonic() - started,
    )
    tail = tuple(line for line in (out["stderr"] or out["stdout"]) if line.strip())[-_TAIL_LINES:]
    if cancelled:
        raise Cancelled(f"{Path(args[0]).name} was cancelled and stopped", step=step)
    if timed_out:
        raise ProcessTimeout(f"{args[0]} did not finish within {timeout:.0f} s and was stopped", step=step,
                             argv=result.argv, returncode=returncode, output_tail=tail)  # fmt: skip
    if check and returncode != 0:
        shown_tail = "".join(f"\n  | {line}" for line in tail[-_SHOWN_LINES:]) or " (no output)"
        raise ProcessFailed(f"{Path(args[0]).name} exited with status {returncode}:{shown_tail}", step=step,
                            argv=result.argv, returncode=returncode, output_tail=tail)  # fmt: skip
    return result


def _pump(name: Stream, pipe: IO[str], lines: queue.Queue[tuple[Stream, str | None]]) -> None:
    with pipe:
        for line in pipe:
            lines.put((name, line))
    lines.put((name, None))


def _follow(name: Stream, path: Path, lines: queue.Queue[tuple[Stream, str | None]], exited: threading.Event) -> None:
    """Follow a file the child writes, line by line, until the child has exited and all of it is read."""
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        partial = ""
        while True:
            done = exited.is_set()  # checked before reading: what the child wrote before it exited is all there
            chunk = handle.readline()
            while chunk:
                partial += chunk
                if partial.endswith("\n"):
                    lines.put((name, partial))
                    partial = ""
                chunk = handle.readline()
            if done:
                break
            time.sleep(0.01)
        if partial:
            lines.put((name, partial))
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
