"""Service blueprints: the YAML schema.

A blueprint composes Terraform modules (``modules/<source>``) and Ansible playbooks
(``playbooks/<name>.yml``). Values flow between them by *references* (``params.cpu``,
``modules.db.ips[0]`` ...), literals (``{value: ...}``) and formats (``{format: "{deployment}-web"}``):
:mod:`umc_infra.blueprint.references` has their grammar, checks and resolution. Nothing is ever templated
into HCL, YAML or a shell line: values travel as JSON to Terraform and as unsafe text to Ansible.

Checking a loaded blueprint against its modules and playbooks is :mod:`umc_infra.blueprint.checks`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from umc_infra.blueprint.references import SYNTAX, Format, Literal_, parse

IDENT = r"^[a-z][a-z0-9_]{0,62}$"
BLUEPRINT_NAME = r"^[a-z][a-z0-9-]{0,48}[a-z0-9]$"
SOURCE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_SECRET_REF = re.compile(r"^(?P<mount>[a-z0-9_-]+)/data/(?P<path>[A-Za-z0-9_{}./-]+)#(?P<key>[A-Za-z0-9_.-]+)$")

Ident = Annotated[str, Field(pattern=IDENT)]


def _reference_text(text: str) -> str:
    parse(text)
    return text


RefText = Annotated[str, AfterValidator(_reference_text)]
"""A reference: the string as written, accepted only if :func:`~umc_infra.blueprint.references.parse` accepts it."""


def _value_form(value: Any) -> str | None:
    """Which form a value has (a tag of :data:`Value`): validation then reports that form's problem only."""
    if isinstance(value, str):
        return "<reference>"
    if isinstance(value, Literal_) or (isinstance(value, dict) and "value" in value):
        return "<literal>"
    if isinstance(value, Format) or (isinstance(value, dict) and "format" in value):
        return "<format>"
    return None


Value = Annotated[
    Annotated[RefText, Tag("<reference>")] | Annotated[Literal_, Tag("<literal>")]
    | Annotated[Format, Tag("<format>")],
    Discriminator(_value_form, custom_error_type="value_form", custom_error_message=(
        f"a value is a reference ({SYNTAX}), a literal {{value: ...}} or a name {{format: \"...\"}}")),
]  # fmt: skip
"""A value in a blueprint: a reference (a string), a literal or a format."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


NUMBER_TYPES = ("integer", "number")
"""The param types that hold numbers (``at_most`` bounds one by another)."""
ChoiceKind = Literal[
    "templates", "networks", "datastores", "datastore_clusters", "folders", "clusters", "hosts", "tags",
]  # fmt: skip
"""What a param's ``choices`` names: a kind of object in the site's vCenter (:func:`umc_infra.vcenter.choices`)."""


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
    """A string's pattern; for a list of strings, each item's."""
    format: Literal["ipv4", "hostname", "username"] | None = None
    """A string's format: ``ipv4``; ``hostname`` (one DNS label); ``username`` (a Linux account name that is
    not a system or service account). ``hostname`` and ``username`` bring their own pattern."""
    values: list[str | int] | None = None
    """The allowed values of an enum."""
    items: Literal["string", "integer", "number", "boolean", "ipv4"] | None = None
    """The type of a list's items."""
    multiline: bool = False
    """Allow newlines and tabs in a string (other control characters are always refused)."""
    at_most: Ident | None = None
    """An integer or number param may not exceed the value of this other integer or number param (a memory
    reservation at most the memory); in the JSON Schema as ``x-umc-at-most``."""
    choices: ChoiceKind | None = None
    """A string (or each item of a list of strings) names an object of this kind in the site's vCenter: where its
    names are known (a portal, a service), a value outside them (other than the default) is refused and the JSON
    Schema lists them; without them (offline) the param is a plain string."""
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
        if self.pattern is not None and not (self.type == "string" or (self.type == "list" and self.items == "string")):
            raise ValueError("'pattern' is only for type string or a list of strings (each item matches)")
        if self.format in ("hostname", "username") and self.pattern is not None:
            raise ValueError(f"format {self.format} has its own pattern: drop 'pattern'")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"'pattern' is not a regular expression: {exc}") from None
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' is greater than 'max'")
        if self.at_most is not None and self.type not in NUMBER_TYPES:
            raise ValueError("'at_most' is only for type integer or number")
        if self.choices is not None and (self.secret or not (self.type == "string" or self.items == "string")):
            raise ValueError("'choices' is only for a non-secret string or list of strings")
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
    given: RefText | None = None


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
    ssh_private_key: RefText
    one_run: bool = False
    """Run the playbooks in as few ``ansible-playbook`` runs as they allow: one start, one connection per host.

    Consecutive playbooks share a run as long as no two give one var different values (each sees the other's
    vars) and each playbook's own plays target its ``hosts`` group (or it runs on ``all``): a run has one limit.
    Facts, ``include_vars`` and ``set_fact`` of one playbook stay visible to the next in its run: opt in only
    when the roles keep their names apart. See :meth:`Blueprint.playbook_runs`.
    """


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

    def playbook_runs(self, plays: Sequence[PlaybookSpec]) -> list[list[PlaybookSpec]]:
        """``plays`` in order, grouped into ``ansible-playbook`` runs: each alone, or as ``ansible.one_run`` allows.

        With ``one_run``, a playbook joins the run before it unless it gives a var of that run another value,
        or its plays do not all target its ``hosts`` group (a run has one limit: ``all``).
        """
        from umc_infra.blueprint.content import playbook_hosts

        if self.ansible is None or not self.ansible.one_run:
            return [[play] for play in plays]
        runs: list[list[PlaybookSpec]] = []
        given: dict[str, Value] | None = None  # the vars of the run a playbook may join (None: none may)
        for play in plays:
            limits = play.hosts != "all" and playbook_hosts(self.playbook_file(play.playbook)) != {play.hosts}
            if not limits and given is not None and all(given.get(k, v) == v for k, v in play.vars.items()):
                runs[-1].append(play)
                given |= play.vars
            else:
                runs.append([play])
                given = None if limits else dict(play.vars)
        return runs

    def _find(self, kind: str, name: str, exists: Any) -> Path:
        candidates = [root / kind / name for root in self.roots] or [Path(kind) / name]
        return next((c for c in candidates if exists(c)), candidates[0])
