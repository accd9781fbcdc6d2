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
    if not missing:
        return
    if not is_root() or shutil.which("apt-get") is None:
        raise MissingDependency(
            f"{purpose} needs the Debian packages {', '.join(missing)}, which are not installed",
            fix=install_command(missing),
            step=step,
        )
    on_progress(f"installing Debian packages {', '.join(missing)} (for {purpose})")
    env = host_env() | {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], step=step, env=env, timeout=600)
    run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        step=step,
        env=env,
        timeout=1200,
    )
