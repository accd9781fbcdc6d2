"""Long-running sandbox processes: started once, found again by pid file, stopped by pid.

A pid file records the pid and the process start time (``/proc/PID/stat`` field 22), so a recycled
pid is never mistaken for ours and never killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from umc_infra.errors import ComponentFailed, PortInUse
from umc_infra.process import spawn_daemon


class Daemon(BaseModel):
    """A process the sandbox started."""

    model_config = ConfigDict(frozen=True)

    name: str
    pid: int
    start_ticks: int
    log: Path
    stop_signal: int = signal.SIGTERM
    """The signal that asks it to shut down (PostgreSQL: SIGINT, a fast shutdown; SIGTERM waits for its clients)."""

    def alive(self) -> bool:
        """Running (not a zombie) and still the process we started."""
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[1] == self.start_ticks


def _stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time of a process, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def pid_file(pids_dir: Path, name: str) -> Path:
    return pids_dir / f"{name}.json"


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    pids_dir: Path,
    logs_dir: Path,
    cwd: Path | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Daemon:
    """Start ``argv`` in its own session and record it under ``name``; :func:`stop` sends it ``stop_signal``."""
    log = logs_dir / f"{name}.log"
    proc = spawn_daemon(argv, env=env, log_path=log, cwd=cwd)
    stat = _stat(proc.pid)
    daemon = Daemon(name=name, pid=proc.pid, start_ticks=stat[1] if stat else 0, log=log, stop_signal=stop_signal)
    pids_dir.mkdir(parents=True, exist_ok=True)
    pid_file(pids_dir, name).write_text(daemon.model_dump_json())
    return daemon


def find(pids_dir: Path, name: str) -> Daemon | None:
    """The recorded daemon ``name``, whether or not it still runs."""
    path = pid_file(pids_dir, name)
    try:
        return Daemon.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def running(pids_dir: Path, name: str) -> Daemon | None:
    """The recorded daemon ``name`` if it still runs."""
    daemon = find(pids_dir, name)
    return daemon if daemon is not None and daemon.alive() else None


def stop(daemon: Daemon, *, pids_dir: Path | None = None, timeout_s: float = 10.0) -> None:
    """Stop a daemon and everything in its process group: its stop signal (SIGTERM), then SIGKILL."""
    if daemon.alive():
        for sig, wait_s in ((daemon.stop_signal, timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(daemon.pid, sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, sig)
            if _wait_gone(daemon, wait_s):
                break
        else:
            raise ComponentFailed(
                f"{daemon.name} (pid {daemon.pid}) did not stop; kill it with: kill -9 {daemon.pid}",
                step=f"sandbox.{daemon.name}",
            )
    if pids_dir is not None:
        pid_file(pids_dir, daemon.name).unlink(missing_ok=True)


def _wait_gone(daemon: Daemon, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(daemon.pid)
        if not daemon.alive():
            return True
        time.sleep(0.05)
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (started in this Python process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def ensure_port_free(host: str, port: int, *, component: str, setting: str) -> None:
    """Raise :class:`PortInUse` naming the holder and the fix if host:port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    holder = listener_pid(port)
    who = f"pid {holder} ({_comm(holder)})" if holder else "another process"
    stop_it = f"kill {holder}" if holder else f"ss -ltnp 'sport = :{port}'  # find it, then stop it"
    raise PortInUse(
        f"{component} cannot listen on {host}:{port}: the port is used by {who}, not by this sandbox. "
        f"Stop it ({stop_it}) or choose another port: export {setting}=<free port>",
        step=f"sandbox.{component}",
    )


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on a TCP port, found through /proc (no extra tools)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "unknown"


def wait_until(
    check: Callable[[], bool],
    *,
    daemon: Daemon | None,
    component: str,
    timeout_s: float,
) -> None:
    """Poll ``check()`` until true; fail early with the log tail if the daemon died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if daemon is not None:
            _reap(daemon.pid)
            if not daemon.alive():
                raise ComponentFailed(
                    f"{component} exited during start-up; last log lines:\n{log_tail(daemon.log)}\n"
                    f"(full log: {daemon.log})",
                    step=f"sandbox.{component}",
                )
        time.sleep(0.1)
    raise ComponentFailed(
        f"{component} did not become ready within {timeout_s:.0f} s; see {daemon.log if daemon else 'its log'}",
        step=f"sandbox.{component}",
    )


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
