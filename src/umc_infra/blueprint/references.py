"""References: how values flow between the parts of a blueprint, parsed once, checked and resolved by kind.

A reference is a plain string of one of the kinds of :data:`KINDS`: ``deployment``, ``params.<name>``,
``secrets.<name>`` (a :class:`~pydantic.SecretStr`), ``site.<name>``, ``addresses.<module>`` (the IPv4
addresses claimed for it), ``modules.<module>.<output>`` (a Terraform output of another module) or
``hosts.<group>.ips`` (an inventory group's addresses); any of them with an index: ``hosts.db.ips[0]``.
A value may also be a literal, ``{value: ...}``, or a name, ``{format: "{deployment}-web"}``.

Each kind says where it may stand (:data:`Use`), how a blueprint is checked for it, and how it resolves
against the :class:`Values` of a run (or raises :class:`~umc_infra.errors.UnresolvedReference`). Modules
may be listed in any order: :func:`dependency_order` puts each after the modules whose outputs it reads.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, SecretStr

from umc_infra.errors import BlueprintError, BlueprintProblem, UnresolvedReference
from umc_infra.settings import SITE_FIELDS, Settings

if TYPE_CHECKING:
    from umc_infra.blueprint.model import Blueprint, Value
    from umc_infra.params import ResolvedParams
    from umc_infra.secrets.source import Secrets

KindName = Literal["deployment", "params", "secrets", "site", "addresses", "modules", "hosts"]
Use = Literal["input", "address", "var", "output", "ssh_key"]
"""Where a value stands: a module input, a module's ``addresses`` spec, a playbook var, a blueprint output,
``ansible.ssh_private_key``."""
USES: dict[Use, str] = {
    "input": "module inputs", "address": "address specs", "var": "playbook vars", "output": "outputs",
    "ssh_key": "ansible.ssh_private_key",
}  # fmt: skip
_NAME = "[a-z][a-z0-9_]*"
_INDEX = r"(?:\[\d{1,3}\])?"


class Reference(BaseModel):
    """A parsed reference: ``modules.db.ips[0]`` is kind ``modules``, name ``db``, sub ``ips``, index 0."""

    model_config = ConfigDict(frozen=True)

    kind: KindName
    name: str | None = None
    """The param, secret, site setting, module or group; None for ``deployment``."""
    sub: str | None = None
    """The output of a module (``modules.<module>.<output>``), ``ips`` of a group; else None."""
    index: int | None = None

    def __str__(self) -> str:
        text = ".".join(p for p in (self.kind, self.name, self.sub) if p is not None)
        return text if self.index is None else f"{text}[{self.index}]"


class Literal_(BaseModel):
    """A literal value: ``{value: 2}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: Any


class Format(BaseModel):
    """A string made of the deployment name and params: ``{format: "{deployment}-web"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str

    def fields(self) -> list[str]:
        """The placeholders the format uses."""
        return [name for _, name, _, _ in string.Formatter().parse(self.format) if name is not None]


# -- the table of kinds ---------------------------------------------------------------------------

Outputs = Mapping[str, frozenset[str]]
"""The outputs each module declares (a module whose files cannot be read is left out)."""


@dataclass(frozen=True)
class Kind:
    """One kind of reference: its syntax, where it may stand, its check and its resolution."""

    syntax: str
    """As the docs write it: ``modules.<module>.<output>``; ``<...>`` is a name, the rest literal."""
    uses: frozenset[Use]
    check: Callable[[Reference, Blueprint, Outputs], str | None]
    """What is wrong with the reference in a blueprint, or None."""
    resolve: Callable[[Reference, Values], Any]
    """Its value in a run (without the index); raises :class:`_Missing` saying what is missing."""
    secret: Callable[[Reference, Blueprint], bool] = lambda ref, blueprint: False
    reads_outputs: bool = False
    """A module reading it waits for the module ``name`` (:func:`dependency_order`)."""
    why: str = ""
    """Why it may not stand everywhere."""

    @property
    def pattern(self) -> str:
        """The regular expression of the syntax (without the index)."""
        return "".join(_NAME if part.startswith("<") else re.escape(part) for part in re.split(r"(<\w+>)", self.syntax))


class _Missing(Exception):
    """What a reference lacks in a run (turned into :class:`UnresolvedReference` by :func:`resolve`)."""


def _known(what: str, name: str | None, known: Mapping[str, Any] | Set[str]) -> str | None:
    if name in known:
        return None
    return f"unknown {what} {name!r}; {what}s: {', '.join(sorted(known)) or 'none'}"


def _item(mapping: Mapping[str, Any], name: str | None, missing: str) -> Any:
    if name is None or name not in mapping:
        raise _Missing(missing)
    return mapping[name]


def _check_addresses(ref: Reference, blueprint: Blueprint, outputs: Outputs) -> str | None:
    spec = blueprint.modules.get(ref.name or "")
    return None if spec is not None and spec.addresses is not None else f"module {ref.name!r} declares no addresses"


def _check_output(ref: Reference, blueprint: Blueprint, outputs: Outputs) -> str | None:
    declared = outputs.get(ref.name or "")
    unknown = _known("module", ref.name, blueprint.modules)
    if unknown is not None or declared is None or ref.sub in declared:
        return unknown  # a module whose files cannot be read: that is its problem
    return f"module {ref.name!r} has no output {ref.sub!r}; outputs: {', '.join(sorted(declared)) or 'none'}"


def _site(ref: Reference, values: Values) -> Any:
    setting = values.site.get(ref.name or "")
    if setting is None:
        field = SITE_FIELDS[ref.name or ""]
        alias = Settings.model_fields[field].validation_alias
        names = getattr(alias, "choices", [field.upper()])
        raise _Missing(f"site setting {ref.name!r} is not set; export {names[0]}=... (or pass Settings({field}=...))")
    return setting


def _output(ref: Reference, values: Values) -> Any:
    outputs = _item(values.outputs, ref.name, f"the outputs of module {ref.name!r} are not read yet (apply it first)")
    return _item(outputs, ref.sub, f"module {ref.name!r} returned no output {ref.sub!r}")


def _group(ref: Reference, values: Values) -> Any:
    if values.groups is None:
        raise _Missing("the inventory is not built yet: hosts.* are known once every module is applied")
    return list(_item(values.groups, ref.name, f"group {ref.name!r} is not in the inventory"))


_ALL: frozenset[Use] = frozenset(USES) - {"ssh_key"}
KINDS: dict[KindName, Kind] = {
    "deployment": Kind("deployment", _ALL, lambda ref, bp, out: None, lambda ref, values: values.deployment),
    "params": Kind(
        "params.<name>", _ALL, lambda ref, bp, out: _known("param", ref.name, bp.params),
        lambda ref, values: _item(values.params, ref.name, f"the run has no value for param {ref.name!r}"),
        secret=lambda ref, bp: ref.name in bp.params and bp.params[ref.name or ""].secret,
    ),
    "secrets": Kind(
        "secrets.<name>", frozenset(USES), lambda ref, bp, out: _known("secret", ref.name, bp.secrets),
        lambda ref, values: _item(values.secrets, ref.name, f"secret {ref.name!r} was not read from Vault"),
        secret=lambda ref, bp: True,
    ),
    "site": Kind("site.<name>", _ALL, lambda ref, bp, out: _known("site setting", ref.name, frozenset(SITE_FIELDS)),
                 _site),
    "addresses": Kind(
        "addresses.<module>", _ALL - {"address"}, _check_addresses,
        lambda ref, values: list(_item(values.addresses, ref.name, f"no addresses are claimed for {ref.name!r} yet")),
        why="an address spec says which addresses to claim, so it cannot read claimed ones",
    ),
    "modules": Kind("modules.<module>.<output>", _ALL, _check_output, _output, reads_outputs=True),
    "hosts": Kind(
        "hosts.<group>.ips", frozenset({"var", "output"}),
        lambda ref, bp, out: _known("host group", ref.name, bp.groups), _group,
        why="hosts are known once every module is applied",
    ),
}  # fmt: skip
"""Every kind of reference, by the word it starts with."""

GRAMMAR = re.compile(f"(?:{'|'.join(k.pattern for k in KINDS.values())}){_INDEX}")
"""What a reference looks like (the whole string must match)."""
SYNTAX = ", ".join(k.syntax for k in KINDS.values())


# -- parsing --------------------------------------------------------------------------------------


def parse(text: str) -> Reference:
    """Parse a reference: ``hosts.db.ips[0]`` -> ``Reference(kind="hosts", name="db", sub="ips", index=0)``.

    Raises:
        ValueError: Not a reference (the message lists the kinds there are).
    """
    if not isinstance(text, str) or GRAMMAR.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a reference: one of {SYNTAX}, optionally indexed ([0]); a literal is "
                         "{value: ...}, a name {format: \"{deployment}-web\"}")  # fmt: skip
    base, _, index = text.partition("[")
    kind, *parts = base.split(".")
    return Reference(kind=cast(KindName, kind), name=parts[0] if parts else None,
                     sub=parts[1] if len(parts) > 1 else None, index=int(index[:-1]) if index else None)  # fmt: skip


def references_in(value: Value) -> list[Reference]:
    """The references a value reads: a reference itself, or a format's ``deployment`` and ``params.<name>``."""
    if isinstance(value, str):
        return [parse(value)]
    if isinstance(value, Format):
        return [_placeholder(field) for field in value.fields()]
    return []


def _placeholder(field: str) -> Reference:
    """What a format's placeholder reads; its name is not parsed: checking it says what is wrong with it."""
    return Reference(kind="deployment") if field == "deployment" else Reference(kind="params", name=field)


# -- checking -------------------------------------------------------------------------------------


def check_reference(ref: Reference, blueprint: Blueprint, *, use: Use, outputs: Outputs) -> str | None:
    """What is wrong with a reference standing at ``use`` in a blueprint, or None.

    Args:
        ref: The reference.
        blueprint: The blueprint it is in.
        use: Where it stands.
        outputs: The outputs each module declares; a module left out is not checked for outputs.
    """
    kind = KINDS[ref.kind]
    if use not in kind.uses:
        if use == "ssh_key":
            return "must be a secrets.<name> reference"
        *others, last = [USES[u] for u in USES if u in kind.uses]
        allowed = f"{', '.join(others)} and {last}" if others else last
        return f"{kind.syntax} is only for {allowed}, not {USES[use]}: {kind.why}"
    return kind.check(ref, blueprint, outputs)


def is_secret(ref: Reference, blueprint: Blueprint) -> bool:
    """Whether a reference reads a secret: ``secrets.*``, or a param declared ``secret``."""
    return KINDS[ref.kind].secret(ref, blueprint)


def needs(blueprint: Blueprint, module: str) -> set[str]:
    """The modules whose outputs ``module``'s inputs or address spec read (it is applied after them)."""
    spec = blueprint.modules[module]
    values = [*spec.inputs.values()]
    if spec.addresses is not None:
        values += [spec.addresses.count, *([spec.addresses.given] if spec.addresses.given else [])]
    return outputs_read(blueprint, values)


def outputs_read(blueprint: Blueprint, values: Iterable[Value]) -> set[str]:
    """The modules whose outputs the values read."""
    return {
        ref.name for value in values for ref in references_in(value)
        if KINDS[ref.kind].reads_outputs and ref.name in blueprint.modules
    }  # fmt: skip


def playbooks_read_outputs(blueprint: Blueprint) -> bool:
    """Whether a playbook's vars read a module's outputs (then known only once Terraform has planned)."""
    return bool(outputs_read(blueprint, [value for play in blueprint.playbooks for value in play.vars.values()]))


def dependency_order(blueprint: Blueprint) -> list[str]:
    """The modules in the order to apply them (reversed: to destroy them).

    Each comes after the modules it :func:`needs`; among those whose needs are met, the one listed first in
    the blueprint goes first, so modules that read no outputs keep the blueprint's order.

    Raises:
        BlueprintError: Modules read each other's outputs in a cycle (the problem names it).
    """
    waiting = {module: needs(blueprint, module) for module in blueprint.modules}
    order: list[str] = []
    while waiting:
        ready = next((m for m, needed in waiting.items() if needed <= set(order)), None)
        if ready is None:
            cycle = _cycle(waiting)
            problem = BlueprintProblem(where=f"modules.{cycle[0]}", message="modules read each other's outputs in "
                                       f"a cycle: {' -> '.join(cycle)}; a module can only read outputs of modules "
                                       "applied before it")  # fmt: skip
            raise BlueprintError(f"blueprint {blueprint.name!r} has no module order:", problems=[problem])
        order.append(ready)
        del waiting[ready]
    return order


def _cycle(waiting: Mapping[str, set[str]]) -> list[str]:
    """A cycle among modules none of which can go next: follow unmet needs until one repeats."""
    path = [next(iter(waiting))]
    while True:
        following = min(sorted(waiting[path[-1]] & set(waiting)), key=list(waiting).index)
        if following in path:
            return [*path[path.index(following) :], following]
        path.append(following)


# -- resolving ------------------------------------------------------------------------------------


class Values(BaseModel):
    """What references resolve against: the caller fills it as the run learns each part.

    Each ``with_*`` method returns a new :class:`Values`; a missing part resolves to
    :class:`~umc_infra.errors.UnresolvedReference`, never a ``KeyError``.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    deployment: str
    params: Mapping[str, Any] = {}
    """Validated params; secret ones as :class:`~pydantic.SecretStr`."""
    secrets: Mapping[str, SecretStr] = {}
    site: Mapping[str, Any] = {}
    """Site settings by their name in ``site.<name>``; None: not set."""
    addresses: Mapping[str, Sequence[str]] = {}
    """The addresses claimed (or held) per module."""
    outputs: Mapping[str, Mapping[str, Any]] = {}
    """The outputs read (or planned) per module; sensitive ones as :class:`~pydantic.SecretStr`."""
    groups: Mapping[str, Sequence[str]] | None = None
    """The IPv4 addresses of each inventory group; None until the inventory is built."""

    @classmethod
    def of(cls, *, settings: Settings, params: ResolvedParams, secrets: Secrets) -> Values:
        """The values a run starts with: its deployment, params, secrets and the site settings."""
        site = {name: getattr(settings, field) for name, field in SITE_FIELDS.items()}
        return cls(deployment=params.deployment, params=params.values, secrets=secrets.values, site=site)

    def with_addresses(self, module: str, addresses: Sequence[str]) -> Values:
        """These values, with the addresses of ``module``."""
        return self.model_copy(update={"addresses": {**self.addresses, module: tuple(addresses)}})

    def with_outputs(self, module: str, outputs: Mapping[str, Any]) -> Values:
        """These values, with the outputs of ``module``."""
        return self.model_copy(update={"outputs": {**self.outputs, module: dict(outputs)}})

    def with_groups(self, groups: Mapping[str, Sequence[str]]) -> Values:
        """These values, with the addresses of each inventory group (``all`` included)."""
        return self.model_copy(update={"groups": {g: tuple(ips) for g, ips in groups.items()}})


def resolve(value: Value, values: Values, *, where: str | None = None) -> Any:
    """The value of a reference, literal or format in a run.

    Args:
        value: A reference (``modules.db.ips[0]``), a :class:`Literal_` or a :class:`Format`.
        values: What the run knows.
        where: Where the blueprint uses it (``modules.web.inputs.db_host``), for the error.

    Raises:
        UnresolvedReference: Something it reads is not known (names the reference, where, and what).
    """
    try:
        if isinstance(value, Literal_):
            return value.value
        if isinstance(value, Format):
            return _format(value, values)
        return _resolve(parse(value), values)
    except _Missing as missing:
        text = value.format if isinstance(value, Format) else str(value)
        at = f"{where}: " if where else ""
        raise UnresolvedReference(f"{at}cannot resolve {text}: {missing}", reference=text, where=where,
                                  missing=str(missing)) from None  # fmt: skip


def resolve_all(mapping: Mapping[str, Value], values: Values, *, where: str) -> dict[str, Any]:
    """Each value of a mapping (module inputs, playbook vars) resolved; ``where`` is the mapping's place."""
    return {key: resolve(value, values, where=f"{where}.{key}") for key, value in mapping.items()}


def _resolve(ref: Reference, values: Values) -> Any:
    whole = ref.model_copy(update={"index": None})
    found = KINDS[ref.kind].resolve(whole, values)
    if ref.index is None:
        return found
    if not isinstance(found, list | tuple) or ref.index >= len(found):
        size = f"{len(found)} item(s)" if isinstance(found, list | tuple) else "not a list"
        raise _Missing(f"{whole} has no item {ref.index} ({size})")
    return found[ref.index]


def _format(fmt: Format, values: Values) -> str:
    """Fill each placeholder with the deployment or a param's value (never a secret, never an attribute)."""
    formatter = string.Formatter()
    parts: list[str] = []
    for literal, field, spec, conversion in formatter.parse(fmt.format):
        parts.append(literal)
        if field is None:
            continue
        found = _resolve(_placeholder(field), values)
        if isinstance(found, SecretStr):
            raise _Missing(f"param {field!r} is secret and cannot be part of a name")
        try:
            parts.append(formatter.format_field(formatter.convert_field(found, conversion), spec or ""))
        except (ValueError, TypeError) as exc:
            raise _Missing(f"{{{field}}} cannot be formatted with {spec!r}: {exc}") from None
    return "".join(parts)
