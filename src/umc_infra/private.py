"""Private run directories, and sweeping up after runs that died.

Each run gets one directory, mode 0700, in memory (``/dev/shm``) where the machine has it: plan files,
the SSH key and vars files of Ansible, ansible-runner's artifacts, SSH control sockets and the output of
Terraform live there, and the run removes it when it ends. A run killed outright cannot remove it, so its
name says who owns it (``umc-run.<pid>.<process start>.<random>``) and every run starts by sweeping the
directories whose owner is gone (:func:`sweep`). The tools a run started are registered in its directory
(``tools/<pid>.<start>``): a dead run's tools got SIGINT when it died (:mod:`umc_infra.deathsig`); the
sweep waits for those of the deployment it is about to work on, and stops them if they linger.

A process is identified by its pid *and* its start time (:mod:`umc_infra.process_identity`), so a reused
pid never makes a dead run look alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from umc_infra.process_identity import is_running, process_start

log = logging.getLogger("umc_infra")

PREFIX = "umc-run."


def private_root() -> Path:
    """Memory-backed ``/dev/shm`` when usable, so secrets never reach a disk; else the temp dir."""
    shm = Path("/dev/shm")  # noqa: S108 - private 0700 directories are made inside it
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, each made 0700 whatever the umask (existing ones are left as they are).

    ``Path.mkdir(mode=0o700, parents=True)`` would give the parents the umask's mode.
    """
    missing = []
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        each.mkdir(mode=0o700, exist_ok=True)
        os.chmod(each, 0o700)


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created with that mode (no moment where it is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


@contextlib.contextmanager
def run_directory(deployment: str) -> Iterator[Path]:
    """A new private directory for one run, removed when the block ends (whatever happens)."""
    pid = os.getpid()
    path = private_root() / f"{PREFIX}{pid}.{process_start(pid) or 0}.{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        path.chmod(0o700)
        (path / "tools").mkdir(mode=0o700)
        (path / "owner.json").write_text(json.dumps({"pid": pid, "deployment": deployment}))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def register_tool(directory: Path, pid: int) -> None:
    """Note a tool the run started, so the sweep can find it if the run dies."""
    with contextlib.suppress(OSError):
        (directory / "tools" / f"{pid}.{process_start(pid) or 0}").touch(mode=0o600)


def _owner(path: Path) -> tuple[int, int | None] | None:
    parts = path.name.removeprefix(PREFIX).split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]) or None


def _tools(path: Path) -> list[tuple[int, int | None]]:
    found = []
    for entry in (path / "tools").glob("*.*"):
        pid, _, start = entry.name.partition(".")
        if pid.isdigit() and start.isdigit():
            found.append((int(pid), int(start) or None))
    return [(pid, start) for pid, start in found if is_running(pid, start)]


def _deployment(path: Path) -> str | None:
    try:
        return str(json.loads((path / "owner.json").read_text())["deployment"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _other_processes() -> Iterator[Path]:
    """``/proc/<pid>`` of every process on this machine but this one (one that ends meanwhile may still show)."""
    me = str(os.getpid())
    return (entry for entry in Path("/proc").glob("[0-9]*") if entry.name != me)


def working_in(directory: Path) -> bool:
    """Whether a live process on this machine (other than this one) has ``directory`` as its working directory."""
    target = str(directory.resolve())
    for process in _other_processes():
        try:
            if os.readlink(process / "cwd") == target:
                return True
        except OSError:
            continue
    return False


def processes_naming(directory: Path) -> list[tuple[int, int | None]]:
    """Live processes other than this one whose command line names a path in ``directory`` (``(pid, start)``)."""
    marker = str(directory).encode()
    found = []
    for process in _other_processes():
        try:
            if marker in (process / "cmdline").read_bytes():
                found.append((int(process.name), process_start(int(process.name))))
        except OSError:
            continue
    return [(pid, start) for pid, start in found if start is not None]


def stop_leftovers(directory: Path, *, keep: Collection[int] = (), grace_s: float = 2.0) -> list[int]:
    """Stop what still runs of a finished tool run in ``directory``: SIGTERM, then SIGKILL; the pids it found.

    A tool's own helpers can outlive it: an Ansible worker runs in a session of its own, so stopping
    ``ansible-playbook``'s process group (ansible-runner's cancel) leaves it running; under Mitogen such a
    worker then waits for a multiplexer that is gone, forever. They name the run's files on their command line.
    Processes in ``keep`` are left alone.
    """
    found = [(pid, start) for pid, start in processes_naming(directory) if pid not in keep]
    _signal_in_turn(found, ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)))
    if found:
        log.info("stopped %d process(es) left running by a tool run in %s", len(found), directory)
    return [pid for pid, _ in found]


def sweep(*, deployment: str | None = None, grace_s: float = 60.0) -> list[Path]:
    """Remove the private directories of runs that died; returns them.

    Tools of a dead run that still run (Terraform finishing the resource it was creating, then writing
    its state) are left to finish, and their directory kept, unless the run was on ``deployment``: then
    they get ``grace_s`` to stop, then SIGTERM and SIGKILL, so the caller can work on that deployment.
    Processes that name the directory's files and are not its registered tools (Ansible's workers) are
    stopped whatever the deployment (:func:`stop_leftovers`): nothing of theirs is worth waiting for.
    """
    removed = []
    for path in sorted(private_root().glob(f"{PREFIX}*")):
        owner = _owner(path)
        if owner is None or is_running(*owner) or not path.is_dir():
            continue
        tools = _tools(path)
        stop_leftovers(path, keep={pid for pid, _ in tools})  # its Ansible helpers; its Terraform: below
        if tools and _deployment(path) == deployment:
            _stop_tools(tools, grace_s)
            tools = _tools(path)
        if tools:
            continue
        log.info("removing %s, the private directory of a run that died", path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _stop_tools(tools: list[tuple[int, int | None]], grace_s: float) -> None:
    """Wait for the tools to stop (they got SIGINT when their run died); then SIGTERM, then SIGKILL."""
    _signal_in_turn(tools, ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)))


def _signal_in_turn(processes: list[tuple[int, int | None]], steps: tuple[tuple[int, float], ...]) -> None:
    """Each signal in turn to the processes still running, each followed by its wait for them to end."""
    for sig, wait_s in steps:
        living = [(pid, start) for pid, start in processes if is_running(pid, start)]
        if not living:
            return
        for pid, _ in living:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(is_running(pid, start) for pid, start in living):
            time.sleep(0.05)
