"""What the sandbox needs from the host: Debian packages, root for guests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from umc_infra.errors import MissingDependency
from umc_infra.process import run

# Debian package -> a file it installs, to tell whether it is there.
VCSIM_PACKAGES = {
    "golang-go": Path("/usr/bin/go"),
    "golang-github-vmware-govmomi-dev": Path("/usr/share/gocode/src/github.com/vmware/govmomi/simulator"),
}
GUEST_PACKAGES = {
    "debootstrap": Path("/usr/sbin/debootstrap"),
    "openssh-client": Path("/usr/bin/ssh"),
    "util-linux": Path("/usr/bin/unshare"),
}


def is_root() -> bool:
    return os.geteuid() == 0


def host_env() -> dict[str, str]:
    """A minimal environment for host tools (apt-get, debootstrap, go)."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def install_command(packages: list[str]) -> str:
    """The command a person runs to install ``packages``."""
    prefix = "" if is_root() else "sudo "
    return f"{prefix}apt-get update && {prefix}apt-get install -y {' '.join(packages)}"


def can_install() -> bool:
    """Whether this process can install Debian packages (root, with apt-get)."""
    return is_root() and shutil.which("apt-get") is not None


def require_packages(
    packages: dict[str, Path],
    *,
    purpose: str,
    step: str,
    on_progress: Callable[[str], None],
) -> None:
    """Make sure Debian packages are installed; as root install them, otherwise name the command.

    Raises:
        MissingDependency: A package is missing and this process cannot install it.

    """
    missing = sorted(name for name, marker in packages.items() if not marker.exists())
    if missing:
        install_packages(missing, purpose=purpose, step=step, on_progress=on_progress)


def install_packages(packages: list[str], *, purpose: str, step: str, on_progress: Callable[[str], None]) -> None:
    """Install Debian packages with apt-get.

    Raises:
        MissingDependency: This process cannot install packages; names the command that does.

    """
    if not can_install():
        raise MissingDependency(
            f"{purpose} needs the Debian packages {', '.join(packages)}, which are not installed",
            fix=install_command(packages),
            step=step,
        )
    on_progress(f"installing Debian packages {', '.join(packages)} (for {purpose})")
    env = host_env() | {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], step=step, env=env, timeout=600)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        step=step,
        env=env,
        timeout=1200,
    )
