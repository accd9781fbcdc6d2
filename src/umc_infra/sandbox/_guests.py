"""SSH guests: one chrooted sshd per VM that has a guest IP, on a copy-on-write debootstrap root.

The root is built once with ``debootstrap`` into the shared cache. Each guest overlays it (its writes go
to ``<state>/guests/<ip>/upper``) inside mount, UTS, IPC and PID namespaces of its own, so packages,
files, hostnames and services live in the guest and never touch the host. See ``_guest_init``.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from umc_infra.errors import GuestNotRunning, RootRequired
from umc_infra.process import run
from umc_infra.sandbox import _daemons, _host
from umc_infra.sandbox._config import SandboxPaths, SandboxSettings

_READY = ".umc-ready"
_PACKAGES = "python3,openssh-server"
SEEDED = ("chrony", "sudo", "nginx", "ssl-cert", "postgresql-15", "postgresql-client")
"""The packages the shipped roles install: downloaded once into the root's apt cache, with the package
lists, so a guest installs them without the network (and the tests do not measure the Debian mirror)."""
# Stops package installs from starting services on their default all-address bind: the guests share
# the host's network, so a service must be configured for its guest IP before it starts.
_POLICY_RC_D = "#!/bin/sh\nexit 101\n"


class GuestVM(BaseModel):
    """The VM a guest belongs to."""

    model_config = ConfigDict(frozen=True)

    uuid: str
    name: str
    ip: ipaddress.IPv4Address


class Guest(BaseModel):
    """A guest as the sandbox sees it."""

    model_config = ConfigDict(frozen=True)

    vm: GuestVM
    running: bool
    pid: int | None


def ensure_rootfs(settings: SandboxSettings, paths: SandboxPaths, *, on_progress: Callable[[str], None]) -> Path:
    """Build the shared guest root once (about a minute, 340 MB with the seeded packages); later calls reuse it."""
    root = paths.rootfs(settings.debian_suite)
    if (root / _READY).exists():
        return root
    require_root()
    _host.require_packages(
        _host.GUEST_PACKAGES, purpose="sandbox guests", step="sandbox.guests", on_progress=on_progress
    )
    on_progress(f"building the guest root with debootstrap ({settings.debian_suite}, once, about a minute)")
    partial = root.with_name(f"{root.name}.partial")
    for leftover in (partial, root):  # an interrupted build; a mount in it would make rmtree fail
        unmount_under(leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    run(
        ["debootstrap", "--variant=minbase", f"--include={_PACKAGES}", settings.debian_suite, str(partial),
         settings.debian_mirror],
        step="sandbox.guests.debootstrap",
        env=_host.host_env(),
        timeout=1800,
    )  # fmt: skip
    # debootstrap unmounts the target's /proc at exit, but skips it silently when it is busy.
    unmount_under(partial)
    # Every guest makes its own host key; none may share the one debootstrap generated.
    for key in (partial / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    policy = partial / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(_POLICY_RC_D)
    policy.chmod(0o755)
    for deb in (partial / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    on_progress(f"seeding the guest root's apt cache: {', '.join(SEEDED)}")
    shutil.copyfile("/etc/resolv.conf", partial / "etc" / "resolv.conf")
    for argv in (["apt-get", "update"], ["apt-get", "install", "--download-only", "--yes", *SEEDED]):
        run(["chroot", str(partial), *argv], step="sandbox.guests.seed", env=_host.host_env(), timeout=1800)
    (partial / _READY).write_text("")
    partial.rename(root)
    return root


def unmount_under(path: Path) -> None:
    """Lazily unmount every mount at or below ``path`` in this mount namespace, deepest first."""
    prefix = str(path.absolute())
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")  # the kernel escapes spaces as \040
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", point], step="sandbox.guests", env=_host.host_env(), timeout=60)


def require_root() -> None:
    if not _host.is_root():
        raise RootRequired(
            "sandbox guests need root (mount namespaces, overlay mounts and chroot). "
            "Run `umc-infra sandbox up` "
            "as root, or start without guests: export UMC_SANDBOX_GUESTS=false",
            step="sandbox.guests",
        )


def hostname_for(vm_name: str) -> str:
    """A valid hostname (RFC 1123 label) derived from a VM name."""
    label = re.sub(r"[^a-z0-9]+", "-", vm_name.lower()).strip("-")[:63].strip("-")
    return label or "guest"


def _daemon_name(ip: ipaddress.IPv4Address) -> str:
    return f"guest-{ip}"


def guest_dir(paths: SandboxPaths, ip: ipaddress.IPv4Address) -> Path:
    return paths.guests / str(ip)


def recorded_vm(paths: SandboxPaths, ip: ipaddress.IPv4Address) -> GuestVM | None:
    try:
        return GuestVM.model_validate_json((guest_dir(paths, ip) / "vm.json").read_text())
    except (OSError, ValueError):
        return None


def start_guest(settings: SandboxSettings, paths: SandboxPaths, vm: GuestVM) -> _daemons.Daemon:
    """Start the guest for ``vm``: a fresh root if the IP belonged to another VM before."""
    directory = guest_dir(paths, vm.ip)
    previous = recorded_vm(paths, vm.ip)
    if previous is not None and previous.uuid != vm.uuid:
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vm.json").write_text(vm.model_dump_json())
    argv = [
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child=SIGTERM",
        "--propagation", "private",
        sys.executable, "-m", "umc_infra.sandbox._guest_init",
        "--lower", str(paths.rootfs(settings.debian_suite)),
        "--dir", str(directory),
        "--ip", str(vm.ip),
        "--port", str(settings.guest_ssh_port),
        "--hostname", hostname_for(vm.name),
        "--authorized-keys", str(paths.ssh_public_key),
    ]  # fmt: skip
    return _daemons.start(_daemon_name(vm.ip), argv, env=_host.host_env(), pids_dir=paths.pids, logs_dir=paths.logs)


def stop_guest(paths: SandboxPaths, ip: ipaddress.IPv4Address, *, remove: bool) -> None:
    """Stop a guest's processes; with ``remove`` also delete its root (the VM is gone)."""
    daemon = _daemons.find(paths.pids, _daemon_name(ip))
    if daemon is not None:
        _daemons.stop(daemon, pids_dir=paths.pids)
    if remove:
        shutil.rmtree(guest_dir(paths, ip), ignore_errors=True)


def guests(paths: SandboxPaths) -> list[Guest]:
    """Every guest with a root on disk, running or not, by IP."""
    found = []
    if paths.guests.is_dir():
        for directory in sorted(paths.guests.iterdir()):
            try:
                ip = ipaddress.IPv4Address(directory.name)
            except ValueError:
                continue
            vm = recorded_vm(paths, ip)
            if vm is None:
                continue
            daemon = _daemons.running(paths.pids, _daemon_name(ip))
            found.append(Guest(vm=vm, running=daemon is not None, pid=daemon.pid if daemon else None))
    return sorted(found, key=lambda g: g.vm.ip)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def guest_root(paths: SandboxPaths, ip: ipaddress.IPv4Address) -> Path:
    """The guest's root directory as the host sees it (through the guest sshd's ``/proc/PID/root``).

    Raises:
        GuestNotRunning: No guest runs for ``ip``.

    """
    daemon = _daemons.running(paths.pids, _daemon_name(ip))
    if daemon is not None:
        # unshare -> guest init (PID 1 inside) -> chroot'ed sshd
        for init in _children(daemon.pid):
            for child in _children(init):
                root = Path(f"/proc/{child}/root")
                if (root / "etc" / "hostname").exists():
                    return root
    raise GuestNotRunning(f"no guest runs for {ip}", step="sandbox.guests")
