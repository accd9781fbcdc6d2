"""PID 1 of one sandbox guest.

Started by the guest agent as ``unshare --mount --uts --ipc --pid --fork ... python -m
umc_infra.sandbox._guest_init ...``, so it runs in namespaces of its own. It mounts the guest's root
(an overlay of the shared debootstrap root), sets the hostname, authorises the Ansible key, and runs
sshd chrooted in that root, listening on the guest IP only. When it exits the kernel ends every
process of the guest and drops its mounts: nothing is left on the host but the overlay's upper dir.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from umc_infra.process import run
from umc_infra.sandbox._config import sshd_argv
from umc_infra.sandbox._host import host_env


class _Stop(BaseException):
    """Raised by the signal handler: os.wait() would otherwise resume after the handler returns.

    A stop, like KeyboardInterrupt, rather than an error: no ``except Exception`` on the way swallows it.
    """


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _mount(*args: str) -> None:
    run(["mount", *args], step="sandbox.guest.mount", env=host_env(), timeout=30)


def prepare_root(lower: Path, guest_dir: Path, hostname: str, ip: str, authorized_keys: Path) -> Path:
    """Mount the guest root and write its identity; returns the root path (in this mount namespace)."""
    upper, work, merged = guest_dir / "upper", guest_dir / "work", guest_dir / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True, exist_ok=True)
    _mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged))
    _mount("--rbind", "/dev", str(merged / "dev"))
    _mount("--make-rslave", str(merged / "dev"))
    _mount("-t", "proc", "proc", str(merged / "proc"))
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", str(merged / "run"))
    (merged / "run" / "sshd").mkdir(mode=0o755)

    etc = merged / "etc"
    shutil.copyfile("/etc/resolv.conf", etc / "resolv.conf")
    (etc / "hostname").write_text(f"{hostname}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{hostname}\n")
    ssh_dir = merged / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(authorized_keys.read_text())
    keys.chmod(0o600)
    socket.sethostname(hostname)

    if not (etc / "ssh" / "ssh_host_ed25519_key").exists():
        run(
            ["chroot", str(merged), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
             "/etc/ssh/ssh_host_ed25519_key"],
            step="sandbox.guest.hostkey",
            env=host_env(),
            timeout=60,
        )  # fmt: skip
    return merged


def serve(merged: Path, ip: ipaddress.IPv4Address, port: int) -> int:
    """Run sshd in the guest root; reap orphans (we are PID 1) until sshd ends or we are told to stop."""
    sshd = subprocess.Popen(["chroot", str(merged), *sshd_argv(ip, port)], env=host_env())
    print(f"guest {ip}: sshd (pid {sshd.pid} in the guest) on port {port}", flush=True)
    status = 0
    try:
        while True:
            pid, raw = os.wait()
            if pid == sshd.pid:
                status = os.waitstatus_to_exitcode(raw)
                print(f"guest {ip}: sshd exited with {status}", flush=True)
                break
    except (_Stop, ChildProcessError):
        pass
    # End the guest's processes gently; when we exit, the kernel kills whatever is left.
    os.kill(-1, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lower", type=Path, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--ip", type=ipaddress.IPv4Address, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--authorized-keys", type=Path, required=True)
    args = parser.parse_args(argv)
    merged = prepare_root(args.lower, args.dir, args.hostname, str(args.ip), args.authorized_keys)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return serve(merged, args.ip, args.port)


if __name__ == "__main__":
    sys.exit(main())
