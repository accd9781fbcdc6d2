"""Tools stop when the process that started them dies: Linux's parent-death signal (``PR_SET_PDEATHSIG``).

A run killed outright (SIGKILL, the OOM killer, a CI job's hard timeout) cannot stop its tools itself.
Each tool is therefore started with SIGINT as its parent-death signal: Terraform then stops the way it
does on Ctrl-C (it finishes the resource operations in flight, writes its state and releases its lock),
and ``ansible-playbook`` stops too, instead of running on as an orphan.

This module imports nothing but the standard library, and nothing of umc_infra: :func:`wrapper_script`
loads it by file path inside a tiny launcher, so the launcher starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: a child of a threaded process must not call dlopen between fork and exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def arm(parent: int, sig: int = signal.SIGINT) -> None:
    """In a child between fork and exec: receive ``sig`` when ``parent`` dies (Linux; elsewhere a no-op).

    Used as ``preexec_fn`` (``parent`` is the pid of the process that starts the child, read before the
    fork). If the parent died before the call (the child was re-parented), the signal is sent at once: the
    parent-death signal would never come.
    """
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def exec_armed(target: str, argv: list[str], *, parent: int) -> None:
    """Arm the parent-death signal, then become ``target`` (the signal survives ``execv``).

    SIGINT gets its default action first: a caller started without job control (``cmd &`` in a script) ignores
    it, an ignored signal stays ignored across ``execv``, and a Python tool would then ignore its death signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    arm(parent)
    os.execv(target, [target, *argv])  # noqa: S606 - replaces this launcher with the tool, no shell


def wrapper_script(directory: Path, target: str, *, name: str) -> Path:
    """An executable in ``directory`` that runs ``target`` with its arguments, armed as above.

    For tools another library starts (ansible-runner starts ``ansible-playbook`` through pexpect, with
    SIGHUP ignored): give it this path as the tool's binary. The script starts Python in isolated mode
    and loads only this file, so it adds a few milliseconds. It is armed for the death of the process
    that writes it.
    """
    script = directory / name
    script.write_text(
        f"#!{sys.executable} -I\n"
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('umc_deathsig', {str(Path(__file__))!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"module.exec_armed({target!r}, sys.argv[1:], parent={os.getpid()})\n"
    )
    script.chmod(0o700)
    return script
