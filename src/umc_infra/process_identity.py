"""Which process a pid names, and whether that process still runs.

A pid alone does not name a process: the kernel hands pids out again. Here a process is its pid *and*
its start time (field 22 of ``/proc/<pid>/stat``, clock ticks after boot), so a reused pid never makes a
dead process look alive. A start time only means something on the machine, boot and PID namespace it
was read in: a process recorded elsewhere (a lease held on another machine, or in another container on
this kernel) cannot be told alive or dead from here (:func:`is_gone` says None then).

Used by the deployment lease (:mod:`umc_infra.state.lease`: is the holder gone?) and by the private run
directories (:mod:`umc_infra.private`: did the run that owns this directory die?).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if it is gone or a zombie (or not on Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited: a zombie is only its exit status, waiting to be reaped
        return None
    return int(fields[19])


@functools.cache
def boot_id() -> str | None:
    """The id of the running kernel's boot (Linux): a start time of an earlier boot is another process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    """The PID namespace of this process (``pid:[4026531836]``): containers on one kernel have their own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def is_running(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` of this machine, started at ``start``, still runs (``start`` None: any process).

    Args:
        pid: The process id.
        start: Its start time as :func:`process_start` read it; None matches whatever process has ``pid``.
    """
    current = process_start(pid)
    return current is not None and (start is None or current == start)


def is_gone(pid: int, *, start: int | None, host: str, boot: str | None, namespace: str | None) -> bool | None:
    """Whether a process recorded with its identity (perhaps on another machine) has ended, as seen from here.

    Args:
        pid: The process id.
        start: Its start time (:func:`process_start` where it ran).
        host: The host name of the machine it ran on.
        boot: That machine's boot id when the process ran (:func:`boot_id`).
        namespace: Its PID namespace (:func:`pid_namespace`).

    Returns:
        True if the process is gone, False if it runs; None if that cannot be told from here (another
        machine, boot or PID namespace, or an identity without boot id or start time).
    """
    if (
        host != socket.gethostname()
        or boot is None
        or start is None
        or (boot, namespace) != (boot_id(), pid_namespace())
    ):
        return None
    return not is_running(pid, start)
