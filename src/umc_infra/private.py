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
from collections.abc import Iterator
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


def working_in(directory: Path) -> bool:
    """Whether a live process on this machine (other than this one) has ``directory`` as its working directory."""
    target = str(directory.resolve())
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        if cwd.parent.name == str(os.getpid()):
            continue
        try:
            if os.readlink(cwd) == target:
                return True
        except OSError:
            continue
    return False


def sweep(*, deployment: str | None = None, grace_s: float = 60.0) -> list[Path]:
    """Remove the private directories of runs that died; returns them.

    Tools of a dead run that still run (Terraform finishing the resource it was creating, then writing
    its state) are left to finish, and their directory kept, unless the run was on ``deployment``: then
    they get ``grace_s`` to stop, then SIGTERM and SIGKILL, so the caller can work on that deployment.
    """
    removed = []
    for path in sorted(private_root().glob(f"{PREFIX}*")):
        owner = _owner(path)
        if owner is None or is_running(*owner) or not path.is_dir():
            continue
        tools = _tools(path)
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
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        living = [(pid, start) for pid, start in tools if is_running(pid, start)]
        if not living:
            return
        for pid, _ in living:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(is_running(pid, start) for pid, start in living):
            time.sleep(0.1)
