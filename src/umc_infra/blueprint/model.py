"""Service blueprints: the YAML schema, loading, and checking every reference before anything runs.

A blueprint composes Terraform modules (``modules/<source>``) and Ansible playbooks
(``playbooks/<name>.yml``). Values flow between them by *references*, plain strings of the form:

- ``params.<name>``                  a validated parameter
- ``secrets.<name>``                 a secret from Vault (never shown, never on disk)
- ``site.<name>``                    a site setting (datacenter, template, gateway ...)
- ``deployment``                     the deployment name
- ``addresses.<module>``             the IPv4 addresses allocated for a module
- ``modules.<module>.<output>``      a Terraform output of an earlier module
- ``hosts.<group>.ips``              the addresses of an inventory group (playbook vars only)

A list-valued reference may take an index: ``hosts.db.ips[0]``.

A literal is written ``{value: ...}``; a name built from other values ``{format: "{deployment}-web"}``
(only ``{deployment}`` and string or integer params may appear). Nothing is ever templated into HCL,
YAML or a shell line: values travel as JSON to Terraform and as unsafe text to Ansible.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from umc_infra.errors import BlueprintError, BlueprintProblem
from umc_infra.settings import SITE_FIELDS

IDENT = r"^[a-z][a-z0-9_]{0,62}$"
BLUEPRINT_NAME = r"^[a-z][a-z0-9-]{0,48}[a-z0-9]$"
SOURCE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SITE_KEYS = frozenset(SITE_FIELDS)
_REF = re.compile(
    r"^(?:deployment|params\.[a-z][a-z0-9_]*|secrets\.[a-z][a-z0-9_]*|site\.[a-z][a-z0-9_]*"
    r"|addresses\.[a-z][a-z0-9_]*|modules\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*|hosts\.[a-z][a-z0-9_]*\.ips)"
    r"(?:\[\d{1,3}\])?$"
)
_SECRET_REF = re.compile(r"^(?P<mount>[a-z0-9_-]+)/data/(?P<path>[A-Za-z0-9_{}./-]+)#(?P<key>[A-Za-z0-9_.-]+)$")

Ident = Annotated[str, Field(pattern=IDENT)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Literal_(_Model):
    """A literal value: ``{value: 2}``."""

    value: Any


class Format(_Model):
    """A string made of the deployment name and params: ``{format: "{deployment}-web"}``."""

    format: str

    def fields(self) -> list[str]:
        """The placeholders the format uses."""
        return [name for _, name, _, _ in string.Formatter().parse(self.format) if name is not None]


Reference = Annotated[str, Field(pattern=_REF.pattern)]
Value = Reference | Literal_ | Format


def refs_in(value: Value) -> list[str]:
    """The references a value reads (a format reads ``deployment`` and ``params.<name>``)."""
    if isinstance(value, str):
        return [value.partition("[")[0]]
    if isinstance(value, Format):
        return ["deployment" if f == "deployment" else f"params.{f}" for f in value.fields()]
    return []


class ParamSpec(_Model):
    """One parameter: its type, default and constraints."""

    type: Literal["string", "integer", "number", "boolean", "enum", "list"]
    description: str = ""
    title: str | None = None
    default: Any = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    pattern: str | None = None
    format: Literal["ipv4", "hostname", "username"] | None = None
    """A string's format: ``ipv4``; ``hostname`` (one DNS label); ``username`` (a Linux account name that is
    not a system or service account). ``hostname`` and ``username`` bring their own pattern."""
    values: list[str | int] | None = None
    """The allowed values of an enum."""
    items: Literal["string", "integer", "number", "boolean", "ipv4"] | None = None
    """The type of a list's items."""
    multiline: bool = False
    """Allow newlines and tabs in a string (other control characters are always refused)."""
    secret: bool = False

    @property
    def required(self) -> bool:
        """A parameter without a default must be given."""
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum needs 'values'")
        if self.type != "enum" and self.values is not None:
            raise ValueError("'values' is only for type enum")
        if self.type == "list" and self.items is None:
            raise ValueError("a list needs 'items' (string, integer, number, boolean or ipv4)")
        if self.type != "list" and self.items is not None:
            raise ValueError("'items' is only for type list")
        if self.format is not None and self.type != "string":
            raise ValueError("'format' is only for type string (a list of addresses: items: ipv4)")
        if self.format in ("hostname", "username") and self.pattern is not None:
            raise ValueError(f"format {self.format} has its own pattern: drop 'pattern'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"'pattern' is not a regular expression: {exc}") from None
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is greater than 'max'")
        return self


class SecretRef(_Model):
    """A KV v2 secret reference: ``<mount>/data/<path>#<key>``; ``{placeholders}`` come from params."""

    mount: str
    path: str
    key: str

    @classmethod
    def parse(cls, text: str) -> SecretRef:
        """Parse ``kv/data/apps/{deployment}#db_password``.

        Raises:
            ValueError: Not a KV v2 reference.

        """
        match = _SECRET_REF.match(text)
        if match is None or ".." in match["path"].split("/"):
            raise ValueError(f"{text!r} is not a KV v2 reference like 'kv/data/apps/{{deployment}}#db_password'")
        return cls(mount=match["mount"], path=match["path"], key=match["key"])

    def placeholders(self) -> list[str]:
        """Placeholder names in the path."""
        return [name for _, name, _, _ in string.Formatter().parse(self.path) if name is not None]

    def __str__(self) -> str:
        return f"{self.mount}/data/{self.path}#{self.key}"


class AddressSpec(_Model):
    """How many IPv4 addresses a module needs; given ones are used, missing ones allocated from the pool."""

    count: Value
    given: Reference | None = None


class ModuleSpec(_Model):
    """A Terraform module instance."""

    source: Annotated[str, Field(pattern=SOURCE_NAME)]
    inputs: dict[Ident, Value] = Field(default_factory=dict)
    addresses: AddressSpec | None = None


class HostsSpec(_Model):
    """Hosts from a module's outputs: one host per name, at the matching IP, in the given groups."""

    module: Ident
    groups: list[Ident] = Field(min_length=1)
    names: Ident = "names"
    ips: Ident = "ips"


class PlaybookSpec(_Model):
    """A playbook run on some groups, with its variables."""

    playbook: Annotated[str, Field(pattern=SOURCE_NAME)]
    hosts: Ident = "all"
    vars: dict[Ident, Value] = Field(default_factory=dict)
    secret_vars: list[Ident] = Field(default_factory=list)
    """Vars whose values are secrets (set automatically for ``secrets.*`` references)."""


class OutputSpec(_Model):
    """A value the result shows."""

    value: Value
    description: str = ""
    sensitive: bool = False


class AnsibleSpec(_Model):
    """How Ansible reaches the hosts."""

    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    ssh_private_key: Reference


HookPoint = Literal[
    "before_terraform", "after_terraform", "before_ansible", "after_ansible", "after_provision",
    "before_destroy", "after_destroy",
]  # fmt: skip
HOOK_GROUP = "umc_infra.hooks"


class HookSpec(_Model):
    """A Python callable run at a point of the run; ``call`` names its entry point in group ``umc_infra.hooks``."""

    call: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
    at: HookPoint


class Blueprint(_Model):
    """A named, versioned service blueprint (resolved: a child's ``extends`` already merged in)."""

    name: Annotated[str, Field(pattern=BLUEPRINT_NAME)]
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")]
    description: str
    extends: Annotated[str, Field(pattern=BLUEPRINT_NAME)] | None = None
    """The parent blueprint: its params, modules, playbooks and outputs are this one's too."""
    override: bool = False
    """Knowingly replace a blueprint of the same name from another source."""
    params: dict[Ident, ParamSpec] = Field(default_factory=dict)
    secrets: dict[Ident, str] = Field(default_factory=dict)
    modules: dict[Ident, ModuleSpec] = Field(min_length=1)
    hosts: list[HostsSpec] = Field(default_factory=list)
    playbooks: list[PlaybookSpec] = Field(default_factory=list)
    outputs: dict[Ident, OutputSpec] = Field(default_factory=dict)
    ansible: AnsibleSpec | None = None
    hooks: list[HookSpec] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)
    """The YAML file (set by the loader)."""
    roots: tuple[Path, ...] = Field(default=(), exclude=True)
    """Directories whose ``modules/`` and ``playbooks/`` it reads, its own first, then its parents' (loader)."""

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for ref in value.values():
            SecretRef.parse(ref)
        return value

    def secret_ref(self, name: str) -> SecretRef:
        """The parsed Vault reference of secret ``name``."""
        return SecretRef.parse(self.secrets[name])

    @property
    def groups(self) -> set[str]:
        """Every inventory group the hosts land in, plus ``all``."""
        return {"all", *(g for h in self.hosts for g in h.groups)}

    def module_dir(self, source: str) -> Path:
        """Where module ``source`` is: under the first of ``roots`` that has it."""
        return self._find("modules", source, lambda p: p.is_dir())

    def playbook_file(self, playbook: str) -> Path:
        """Where playbook ``playbook`` is: under the first of ``roots`` that has it."""
        return self._find("playbooks", f"{playbook}.yml", lambda p: p.is_file())

    def _find(self, kind: str, name: str, exists: Any) -> Path:
        candidates = [root / kind / name for root in self.roots] or [Path(kind) / name]
        return next((c for c in candidates if exists(c)), candidates[0])


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
        """The given directory, else the content shipped with umc_infra (source tree or installed data)."""
        import sys

        candidates = [content_dir] if content_dir is not None else [
            Path(__file__).resolve().parents[3],  # src/umc_infra/blueprint/model.py -> the checkout
            Path(sys.prefix) / "share" / "umc-infra",
        ]  # fmt: skip
        for root in candidates:
            if root is not None and (root / "blueprints").is_dir():
                return cls(root=root)
        raise BlueprintError(
            f"no blueprints/ directory in {', '.join(str(c) for c in candidates)}; "
            "set UMC_CONTENT_DIR to the directory that holds blueprints/, modules/ and playbooks/",
            step="blueprint.load",
        )


class ModuleInterface(BaseModel):
    """The variables (and which of them have no default) and outputs a Terraform module declares."""

    model_config = ConfigDict(frozen=True)

    variables: frozenset[str]
    required: frozenset[str]
    outputs: frozenset[str]
    sensitive: frozenset[str] = frozenset()
    """Variables declared ``sensitive = true``: Terraform hides their values in plans, output and errors."""


def module_interface(module_dir: Path) -> ModuleInterface:
    """What a module declares, read from its ``*.tf`` files with an HCL parser.

    Raises:
        BlueprintError: A file is not valid HCL (names it).
    """
    import hcl2

    variables: set[str] = set()
    required: set[str] = set()
    outputs: set[str] = set()
    sensitive: set[str] = set()
    for tf in sorted(module_dir.glob("*.tf")):
        try:
            parsed = hcl2.loads(tf.read_text())
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
    return ModuleInterface(variables=frozenset(variables), required=frozenset(required), outputs=frozenset(outputs),
                           sensitive=frozenset(sensitive))  # fmt: skip


def _is_secret(blueprint: Blueprint, ref: str) -> bool:
    """Whether a reference reads a secret: ``secrets.*``, or a param declared ``secret``."""
    kind, _, rest = ref.partition(".")
    return kind == "secrets" or (kind == "params" and rest in blueprint.params and blueprint.params[rest].secret)


def check(blueprint: Blueprint) -> list[BlueprintProblem]:
    """Every broken reference in a resolved blueprint, and every module input missing or param unused."""
    problems: list[BlueprintProblem] = []
    outputs_of: dict[str, frozenset[str]] = {}
    used: set[str] = set()

    def problem(where: str, message: str) -> None:
        problems.append(BlueprintProblem(where=where, message=message))

    def check_ref(ref: str, where: str, *, earlier_modules: set[str] | None, playbook: bool = False) -> None:
        used.add(ref)
        kind, _, rest = ref.partition(".")
        if kind == "params" and rest not in blueprint.params:
            problem(where, f"unknown param {rest!r}; params: {', '.join(sorted(blueprint.params)) or 'none'}")
        elif kind == "secrets" and rest not in blueprint.secrets:
            problem(where, f"unknown secret {rest!r}; secrets: {', '.join(sorted(blueprint.secrets)) or 'none'}")
        elif kind == "site" and rest not in SITE_KEYS:
            problem(where, f"unknown site setting {rest!r}; known: {', '.join(sorted(SITE_KEYS))}")
        elif kind == "addresses":
            spec = blueprint.modules.get(rest)
            if spec is None or spec.addresses is None:
                problem(where, f"module {rest!r} declares no addresses")
        elif kind == "modules":
            module, _, output = rest.partition(".")
            allowed = set(blueprint.modules) if earlier_modules is None else earlier_modules
            if module not in allowed:
                problem(where, f"{ref!r} needs module {module!r} to come earlier")
            elif output not in outputs_of.get(module, frozenset()):
                problem(where, f"module {module!r} has no output {output!r}")
        elif kind == "hosts":
            group = rest.partition(".")[0]
            if not playbook:
                problem(where, "hosts.* references are only for playbook vars")
            elif group not in blueprint.groups:
                problem(where, f"unknown host group {group!r}")

    done: set[str] = set()
    for name, module in blueprint.modules.items():
        where = f"modules.{name}"
        module_dir = blueprint.module_dir(module.source)
        if not module_dir.is_dir() or not list(module_dir.glob("*.tf")):
            searched = ", ".join(str(root / "modules") for root in blueprint.roots)
            problem(f"{where}.source", f"module {module.source!r} not found in {searched}")
            outputs_of[name] = frozenset()
        else:
            try:
                interface = module_interface(module_dir)
            except BlueprintError as exc:
                problem(f"{where}.source", str(exc))
                interface = ModuleInterface(variables=frozenset(), required=frozenset(), outputs=frozenset())
            outputs_of[name] = interface.outputs
            for unknown in sorted(set(module.inputs) - interface.variables):
                problem(f"{where}.inputs.{unknown}", f"module {module.source!r} has no variable {unknown!r}")
            for missing in sorted(interface.required - set(module.inputs)):
                problem(f"{where}.inputs", f"module {module.source!r} needs variable {missing!r} (it has no default)")
            for input_name, value in module.inputs.items():
                secret = next((r for r in refs_in(value) if _is_secret(blueprint, r)), None)
                if secret is not None and input_name in interface.variables and input_name not in interface.sensitive:
                    problem(f"{where}.inputs.{input_name}", f"receives a secret ({secret}), but variable "
                            f"{input_name!r} of module {module.source!r} is not declared `sensitive = true`: "
                            "Terraform would show its value in plans (the old one too, after a rotation) and in "
                            "errors")  # fmt: skip
        for input_name, value in module.inputs.items():
            for ref in refs_in(value):
                check_ref(ref, f"{where}.inputs.{input_name}", earlier_modules=done)
        if module.addresses is not None:
            given = [module.addresses.given] if module.addresses.given else []
            for address_ref in [*refs_in(module.addresses.count), *given]:
                check_ref(address_ref, f"{where}.addresses", earlier_modules=done)
        done.add(name)

    for i, hosts in enumerate(blueprint.hosts):
        where = f"hosts[{i}]"
        if hosts.module not in blueprint.modules:
            problem(f"{where}.module", f"unknown module {hosts.module!r}")
            continue
        for output_name in (hosts.names, hosts.ips):
            if outputs_of.get(hosts.module) and output_name not in outputs_of[hosts.module]:
                problem(where, f"module {hosts.module!r} has no output {output_name!r}")

    for i, play in enumerate(blueprint.playbooks):
        where = f"playbooks[{i}]"
        if not blueprint.playbook_file(play.playbook).is_file():
            searched = ", ".join(str(root / "playbooks") for root in blueprint.roots)
            problem(f"{where}.playbook", f"playbook {play.playbook!r} not found in {searched}")
        if play.hosts not in blueprint.groups:
            problem(f"{where}.hosts", f"unknown group {play.hosts!r}; groups: {', '.join(sorted(blueprint.groups))}")
        for var, value in play.vars.items():
            for ref in refs_in(value):
                check_ref(ref, f"{where}.vars.{var}", earlier_modules=None, playbook=True)
        for var in play.secret_vars:
            if var not in play.vars:
                problem(f"{where}.secret_vars", f"{var!r} is not one of its vars")

    for out_name, output in blueprint.outputs.items():
        for ref in refs_in(output.value):
            check_ref(ref, f"outputs.{out_name}", earlier_modules=None, playbook=True)

    for secret_name in blueprint.secrets:
        for placeholder in blueprint.secret_ref(secret_name).placeholders():
            used.add(f"params.{placeholder}")
            param = blueprint.params.get(placeholder)
            if placeholder != "deployment" and (param is None or param.secret or param.type not in ("string", "enum")):
                problem(f"secrets.{secret_name}", f"placeholder {{{placeholder}}} must be 'deployment' or a "
                        "non-secret string or enum param")  # fmt: skip
    formats = [v for m in blueprint.modules.values() for v in m.inputs.values() if isinstance(v, Format)]
    for fmt in formats:
        for field in fmt.fields():
            param = blueprint.params.get(field)
            if field != "deployment" and param is not None and param.type not in ("string", "integer", "enum"):
                problem("modules", f"format {fmt.format!r}: param {field!r} must be a string, integer or enum")
            elif param is not None and param.secret:
                problem("modules", f"format {fmt.format!r}: param {field!r} is secret and cannot be part of a name")
    if blueprint.playbooks and blueprint.ansible is None:
        problem("ansible", "a blueprint with playbooks needs 'ansible: {ssh_private_key: secrets.<name>}'")
    if blueprint.ansible is not None:
        check_ref(blueprint.ansible.ssh_private_key, "ansible.ssh_private_key", earlier_modules=None)
        if not blueprint.ansible.ssh_private_key.startswith("secrets."):
            problem("ansible.ssh_private_key", "must be a secrets.<name> reference")
    for name in blueprint.params:
        if f"params.{name}" not in used:
            problem(f"params.{name}", "is never used (by a module input, address, secret path, playbook var or output)")
    problems += _check_hooks(blueprint)
    return problems


def _check_hooks(blueprint: Blueprint) -> list[BlueprintProblem]:
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group=HOOK_GROUP)}
    return [
        BlueprintProblem(where=f"hooks[{i}].call", message=f"no hook {hook.call!r} is installed (entry points in "
                         f"group {HOOK_GROUP!r}: {', '.join(sorted(installed)) or 'none'})")
        for i, hook in enumerate(blueprint.hooks)
        if hook.call not in installed
    ]  # fmt: skip
