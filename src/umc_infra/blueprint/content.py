"""Where blueprint content is (``blueprints/``, ``modules/``, ``playbooks/``), and what a module declares."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from umc_infra.errors import BlueprintError


class Content(BaseModel):
    """The content shipped with umc_infra (or ``UMC_CONTENT_DIR``): ``blueprints/``, ``modules/``, ``playbooks/``."""

    model_config = ConfigDict(frozen=True)

    root: Path

    @property
    def blueprints(self) -> Path:
        """The directory of blueprint YAML files."""
        return self.root / "blueprints"

    @property
    def modules(self) -> Path:
        """The directory of Terraform modules."""
        return self.root / "modules"

    @property
    def playbooks(self) -> Path:
        """The directory of playbooks and roles."""
        return self.root / "playbooks"

    @classmethod
    def locate(cls, content_dir: Path | None = None) -> Content:
        """The given directory, else the content shipped with umc_infra.

        In a checkout (an editable install) that is the checkout's own ``blueprints/``, ``modules/`` and
        ``playbooks/``; installed from a wheel, the package data ``umc_infra/content``.
        """
        candidates = [content_dir] if content_dir is not None else [
            Path(__file__).resolve().parents[3],  # src/umc_infra/blueprint/content.py -> the checkout
            Path(str(resources.files("umc_infra").joinpath("content"))),  # the wheel's package data
        ]  # fmt: skip
        for root in candidates:
            if root is not None and (root / "blueprints").is_dir():
                return cls(root=root)
        raise BlueprintError(
            f"no blueprints/ directory in {', '.join(str(c) for c in candidates)}; "
            "set UMC_CONTENT_DIR to the directory that holds blueprints/, modules/ and playbooks/",
            step="blueprint.load",
        )


class ProviderRequirement(BaseModel):
    """A provider a module requires: its source address and version constraint."""

    model_config = ConfigDict(frozen=True)

    source: str
    version: str | None = None


class ModuleInterface(BaseModel):
    """The variables (and which of them have no default) and outputs a Terraform module declares."""

    model_config = ConfigDict(frozen=True)

    variables: frozenset[str]
    required: frozenset[str]
    outputs: frozenset[str]
    sensitive: frozenset[str] = frozenset()
    """Variables declared ``sensitive = true``: Terraform hides their values in plans, output and errors."""
    providers: dict[str, ProviderRequirement] = {}
    """``required_providers`` by local name (``vsphere``)."""


def module_interface(module_dir: Path) -> ModuleInterface:
    """What a module declares, read from its ``*.tf`` files with an HCL parser.

    A run asks several times (loading the blueprint, preparing and applying each module): the files are read
    each time, and parsed once per content (parsing is what takes the time, about 0.3 s for vsphere-vm).

    Raises:
        BlueprintError: A file is not valid HCL (names it).
    """
    return _interface(tuple((str(tf), tf.read_text()) for tf in sorted(module_dir.glob("*.tf"))))


@functools.lru_cache(maxsize=64)
def _interface(files: tuple[tuple[str, str], ...]) -> ModuleInterface:
    """The interface the ``(path, text)`` files declare."""
    import hcl2

    variables: set[str] = set()
    required: set[str] = set()
    outputs: set[str] = set()
    sensitive: set[str] = set()
    providers: dict[str, ProviderRequirement] = {}
    for tf, text in files:
        try:
            parsed = hcl2.loads(text)
        except Exception as exc:  # the parser raises lark's errors, which have no common public base
            raise BlueprintError(f"{tf}: not valid HCL: {str(exc).splitlines()[0]}") from None
        for block in parsed.get("variable", []):
            for name, body in block.items():
                variables.add(name.strip('"'))
                if "default" not in body:
                    required.add(name.strip('"'))
                if body.get("sensitive") in (True, "true"):
                    sensitive.add(name.strip('"'))
        for block in parsed.get("output", []):
            outputs.update(name.strip('"') for name in block)
        for block in parsed.get("terraform", []):
            for required_providers in block.get("required_providers", []):
                for name, spec in required_providers.items():
                    if isinstance(spec, dict) and "source" in spec:
                        version = spec.get("version")
                        providers[name.strip('"')] = ProviderRequirement(
                            source=str(spec["source"]).strip('"'),
                            version=str(version).strip('"') if version is not None else None,
                        )
    return ModuleInterface(variables=frozenset(variables), required=frozenset(required), outputs=frozenset(outputs),
                           sensitive=frozenset(sensitive), providers=providers)  # fmt: skip


class _AnyTagLoader(yaml.SafeLoader):
    """YAML with Ansible's tags (``!unsafe``, ``!vault``) read as plain values."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def playbook_hosts(playbook: Path) -> set[str] | None:
    """The ``hosts`` every play of a playbook targets; None unless it is a list of plays each naming one pattern."""
    try:
        plays = yaml.load(playbook.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(plays, list) or not plays:
        return None
    targets = {play.get("hosts") if isinstance(play, dict) else None for play in plays}
    return targets if all(isinstance(t, str) for t in targets) else None  # type: ignore[return-value]
