"""Parameters: a pydantic model built from a blueprint's params, and the deployment name.

Validation reports every invalid field at once, each with what is allowed. Strings refuse control
characters unless a param says ``multiline: true``; names (the deployment, ``format: hostname``,
``format: username``) follow a strict pattern, and ``format: username`` refuses system and service accounts
(an admin account ``root`` or ``www-data`` would give that account an SSH key and sudo); nothing is coerced
silently (``"2"`` is not an integer, ``1`` is not a boolean; ``2.0`` is the integer 2, as in JSON).
:func:`json_schema` gives a portal the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    create_model,
)

from umc_infra.blueprint.model import Blueprint, ParamSpec
from umc_infra.errors import BlueprintProblem, ParamProblem, ParamsError

DEPLOYMENT = r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$"
DEPLOYMENT_WORDS = "3 to 32 characters, lowercase letters, digits and '-'"
HOSTNAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
USERNAME = r"^[a-z_][a-z0-9_-]{0,31}$"
SYSTEM_ACCOUNTS = (
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
    "backup", "list", "irc", "gnats", "nobody", "nogroup", "_apt", "sshd", "messagebus", "postgres", "mysql",
    "nginx", "apache", "ftp", "adm", "halt", "shutdown", "operator", "chrony", "polkitd", "dbus", "tss",
)  # fmt: skip
"""Accounts of the OS and its services (Debian and RHEL); ``format: username`` refuses them and ``systemd-*``."""
SYSTEM_PREFIX = "systemd-"
REQUESTED_BY = r"^[A-Za-z0-9][A-Za-z0-9._@+:\[\]-]{0,127}$"
"""Who asked for a run: a login, a CI user (``GITHUB_ACTOR``: ``dependabot[bot]``), an e-mail or a token subject."""
TICKET = r"^[A-Za-z0-9#][A-Za-z0-9._#:-]{0,63}$"
"""A ticket reference: ``INC0012345``, ``OPS-1234``, ``#42`` (no spaces, quotes, slashes or ``${}``)."""
# U+FFFE and U+FFFF cannot be carried in XML (vCenter's API): a VM's notes would come back as U+FFFD, forever drifting.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f\ufffe\uffff]")
MASK = "***"


def _no_control(multiline: bool) -> AfterValidator:
    pattern = _CONTROL if multiline else _CONTROL_OR_NEWLINE

    def check(value: str) -> str:
        if pattern.search(value):
            raise ValueError("contains control characters" + ("" if multiline else " or newlines"))
        return value

    return AfterValidator(check)


def _integral(value: object) -> object:
    """``2.0`` is the integer 2, as in JSON (and JSON Schema); ``2.5``, ``"2"`` and ``True`` are not integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _username(value: str) -> str:
    if value in SYSTEM_ACCOUNTS or value.startswith(SYSTEM_PREFIX):
        raise ValueError("is a system or service account, not a person's admin account")
    return value


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError("is not an IPv4 address") from None


_ITEM_TYPES: dict[str, Any] = {
    "string": Annotated[str, _no_control(False)],
    "integer": Annotated[StrictInt, BeforeValidator(_integral)],
    "number": StrictFloat,
    "boolean": StrictBool,
    "ipv4": Annotated[str, AfterValidator(_ipv4)],
}


def _field_type(spec: ParamSpec) -> Any:
    if spec.type == "string":
        checks: list[Any] = [_no_control(spec.multiline)]
        if spec.format == "ipv4":
            checks.append(AfterValidator(_ipv4))
        if spec.format == "username":
            checks.append(AfterValidator(_username))
        pattern = {"hostname": HOSTNAME, "username": USERNAME}.get(spec.format or "", spec.pattern)
        constraints = Field(min_length=spec.min_length, max_length=spec.max_length, pattern=pattern)
        base: Any = Annotated[str, constraints, *checks]
    elif spec.type == "integer":
        base = Annotated[StrictInt, Field(ge=spec.min, le=spec.max), BeforeValidator(_integral)]
    elif spec.type == "number":
        base = Annotated[StrictFloat, Field(ge=spec.min, le=spec.max)]
    elif spec.type == "boolean":
        base = StrictBool
    elif spec.type == "enum":
        base = Literal[tuple(spec.values or ())]
    else:
        item: Any = _ITEM_TYPES[spec.items or "string"]
        if spec.pattern is not None:  # a list of strings: each item matches
            item = Annotated[item, Field(pattern=spec.pattern)]
        base = Annotated[list[item], Field(min_length=spec.min_length, max_length=spec.max_length)]
    return SecretStr if spec.secret else base


def allowed(spec: ParamSpec) -> str:
    """What a param accepts, in words."""
    if spec.type == "enum":
        return "one of " + ", ".join(repr(v) for v in spec.values or ())
    parts = [spec.type if spec.type != "list" else f"list of {spec.items}"]
    if spec.min is not None or spec.max is not None:
        parts.append(f"from {_num(spec.min, '-inf')} to {_num(spec.max, 'inf')}")
    if spec.at_most is not None:
        parts.append(f"at most {spec.at_most}")
    if spec.min_length is not None or spec.max_length is not None:
        unit = "items" if spec.type == "list" else "characters"
        parts.append(f"{spec.min_length or 0} to {spec.max_length if spec.max_length is not None else 'any'} {unit}")
    if spec.format == "username":
        parts.append(f"format username: a Linux user name matching {USERNAME} that is not a system or service "
                     f"account ({', '.join(SYSTEM_ACCOUNTS)} or {SYSTEM_PREFIX}*)")  # fmt: skip
    elif spec.format:
        parts.append(f"format {spec.format}")
    if spec.pattern:
        parts.append(f"matching {spec.pattern}")
    if spec.type == "string" and not spec.multiline:
        parts.append("no newlines or control characters")
    return ", ".join(parts)


def _num(value: float | None, missing: str) -> str:
    if value is None:
        return missing
    return str(int(value)) if float(value).is_integer() else str(value)


def params_model(blueprint: Blueprint) -> type[BaseModel]:
    """The pydantic model of a blueprint's params (unknown fields are refused)."""
    fields: dict[str, Any] = {}
    for name, spec in blueprint.params.items():
        default = ... if spec.required else spec.default
        fields[name] = (_field_type(spec), Field(default=default, description=spec.description or None))
    return create_model(
        f"Params_{blueprint.name.replace('-', '_')}",
        __config__=ConfigDict(extra="forbid", frozen=True, validate_default=True),
        **fields,
    )


def default_problems(blueprint: Blueprint) -> list[BlueprintProblem]:
    """Defaults their own param refuses (e.g. a child narrowed ``max`` below the inherited default)."""
    problems = []
    for name, spec in blueprint.params.items():
        if spec.required or spec.secret or (spec.default is None and spec.type != "boolean"):
            continue
        try:
            TypeAdapter(_field_type(spec)).validate_python(spec.default)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors(include_url=False, include_input=False))
            problems.append(BlueprintProblem(where=f"params.{name}.default", message=f"{spec.default!r} is not "
                                             f"allowed by the param: {reason} (allowed: {allowed(spec)})"))  # fmt: skip
    return problems


class ResolvedParams(BaseModel):
    """Validated parameters of one deployment. Secret params are ``SecretStr``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    blueprint: str
    deployment: str
    values: dict[str, Any]

    def masked(self) -> dict[str, Any]:
        """The values with secret params shown as ``***``."""
        return {k: MASK if isinstance(v, SecretStr) else v for k, v in self.values.items()}

    def secret_values(self) -> list[SecretStr]:
        """The secret params' values, for redaction."""
        return [v for v in self.values.values() if isinstance(v, SecretStr)]


Choices = Mapping[str, Sequence[str]]
"""The names of the site's vCenter objects per kind of ``choices`` (``{"networks": ["VM Network"]}``): what
:func:`umc_infra.vcenter.choices` returns. A kind left out is not known: its params are plain strings."""


def validate(
    blueprint: Blueprint, params: object, deployment: object, *, choices: Choices | None = None
) -> ResolvedParams:
    """Validate the deployment name and the params against the blueprint.

    Args:
        blueprint: The blueprint.
        params: The params asked for.
        deployment: The deployment's name.
        choices: The site's names per kind, where known: a param declaring ``choices`` of a kind given here
            must name one of them (or be its default).

    Raises:
        ParamsError: Every invalid field, with what is allowed.

    """
    problems = check_deployment(deployment)
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        problems.append(
            ParamProblem(
                field="params",
                message="must be a mapping of names to values",
                allowed="a dict such as {'instances': 2}",
            )
        )
        raise ParamsError(problems, blueprint=blueprint.name)
    model = params_model(blueprint)
    values: dict[str, Any] = {}
    try:
        values = dict(model.model_validate(params))
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "params"
            spec = blueprint.params.get(name)
            if error["type"] == "extra_forbidden":
                problems.append(ParamProblem(
                    field=f"params.{name}", message="unknown parameter",
                    allowed="params of this blueprint: " + (", ".join(blueprint.params) or "none"),
                ))  # fmt: skip
                continue
            where = ".".join(str(p) for p in error["loc"])
            shown = (
                "" if spec is None or spec.secret or error["type"] == "missing" else f" (got {_show(error['input'])})"
            )
            problems.append(ParamProblem(
                field=f"params.{where}",
                message=error["msg"].removeprefix("Value error, ") + shown,
                allowed=allowed(spec) if spec else "see the blueprint",
            ))  # fmt: skip
    problems += _bound_problems(blueprint, values) + _choice_problems(blueprint, values, choices)
    if problems:
        raise ParamsError(problems, blueprint=blueprint.name)
    return ResolvedParams(blueprint=blueprint.name, deployment=str(deployment), values=values)


def _bound_problems(blueprint: Blueprint, values: dict[str, Any]) -> list[ParamProblem]:
    """Each param above the param its ``at_most`` names (only where both values are valid)."""
    return [
        ParamProblem(field=f"params.{name}", message=f"{values[name]} is more than {spec.at_most} "
                     f"({values[spec.at_most]})", allowed=allowed(spec))
        for name, spec in blueprint.params.items()
        if spec.at_most is not None and isinstance(values.get(name), int | float)
        and isinstance(values.get(spec.at_most), int | float) and values[name] > values[spec.at_most]
    ]  # fmt: skip


def allowed_choices(spec: ParamSpec, choices: Choices | None) -> list[str] | None:
    """The values a param with ``choices`` may take (for a list: each item), or None where they are not known.

    The site's names of the param's kind, and its default (for a list: the default's items), which often means
    "the site's own" (an empty string) and must stay possible.
    """
    if spec.choices is None or choices is None or spec.choices not in choices:
        return None
    names = list(dict.fromkeys(str(name) for name in choices[spec.choices]))
    default = [] if spec.required else spec.default if spec.type == "list" else [spec.default]
    return names + [v for v in default or [] if isinstance(v, str) and v not in names]


def _choice_problems(blueprint: Blueprint, values: dict[str, Any], choices: Choices | None) -> list[ParamProblem]:
    """Each param whose value (or a list item) is not among its allowed choices (only where the value is valid)."""
    problems = []
    for name, spec in blueprint.params.items():
        names = allowed_choices(spec, choices)
        if names is None or name not in values:
            continue
        value = values[name]
        outside = [v for v in (value if isinstance(value, list) else [value]) if v not in names]
        if outside:
            shown = ", ".join(_show(v) for v in outside[:5]) + (" ..." if len(outside) > 5 else "")
            listed = ", ".join(repr(n) for n in names[:50]) + (f" and {len(names) - 50} more" if names[50:] else "")
            problems.append(ParamProblem(
                field=f"params.{name}", message=f"{shown} is not one of the site's {spec.choices}",
                allowed=f"one of {listed}" if names else f"none: the site has no {spec.choices}",
            ))  # fmt: skip
    return problems


def check_request(*, requested_by: object, ticket: object) -> list[ParamProblem]:
    """The problems with who asked for a run and its ticket reference (None: not given), as :class:`ParamProblem`.

    Both end up in the deployment's record, the audit and the logs: no newlines, quotes, ``${}`` or paths.
    """
    problems = []
    for field, value, pattern, words in (
        ("requested_by", requested_by, REQUESTED_BY, "1 to 128 characters: letters, digits and . _ @ + : [ ] -, "
         "starting with a letter or digit (a login, CI user, e-mail or token subject)"),
        ("ticket", ticket, TICKET, "1 to 64 characters: letters, digits and . _ # : -, starting with a letter, digit "
         "or # (e.g. INC0012345, OPS-1234, #42)"),
    ):  # fmt: skip
        if value is not None and not (isinstance(value, str) and re.fullmatch(pattern, value)):
            problems.append(ParamProblem(field=field, message=f"{_show(value)} is not a valid {field}",
                                         allowed=f"{words}, matching {pattern}"))  # fmt: skip
    return problems


def check_deployment(deployment: object) -> list[ParamProblem]:
    """The problem with a deployment name, if any (as a list, to join the params' problems)."""
    if isinstance(deployment, str) and re.fullmatch(DEPLOYMENT, deployment):
        return []
    return [
        ParamProblem(
            field="deployment",
            message=f"{_show(deployment)} is not a valid deployment name",
            allowed=f"{DEPLOYMENT_WORDS}, matching {DEPLOYMENT}",
        )
    ]


def _show(value: object) -> str:
    """A short, one-line rendering of a bad input for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_schema(blueprint: Blueprint) -> dict[str, Any]:
    """The params as JSON Schema, agreeing with :func:`validate` on every value (a test proves it).

    Each property has the param's title, description, default and constraints. Secret params are marked
    ``writeOnly`` and never show a default. Control characters are refused through a ``not``/``pattern`` pair, addresses
    carry ``format: ipv4``, and ``format: username`` refuses system accounts through ``not``/``enum`` and
    ``not``/``pattern`` (in ``allOf``). A param bounded by another (``at_most``) is listed in the schema's
    ``x-umc-at-most`` (``{"memory_reservation_mb": "memory_mb"}``: the first at most the second), which a portal
    checks itself; plain JSON Schema cannot compare two properties.
    """
    schema = params_model(blueprint).model_json_schema()
    bounds = {name: spec.at_most for name, spec in blueprint.params.items() if spec.at_most is not None}
    if bounds:
        schema["x-umc-at-most"] = bounds  # JSON Schema cannot compare two properties: a portal checks these itself
    for name, spec in blueprint.params.items():
        prop = schema.get("properties", {}).get(name)
        if prop is None:
            continue
        if spec.title:
            prop["title"] = spec.title
        if spec.secret:
            prop["writeOnly"] = True
            prop.pop("default", None)  # a secret's value, even a default, is never shown
            continue
        if spec.type == "string":
            _text_rules(prop, multiline=spec.multiline, ipv4=spec.format == "ipv4")
            if spec.format == "username":
                prop["allOf"] = [
                    {"not": {"enum": list(SYSTEM_ACCOUNTS)}},
                    {"not": {"pattern": f"^{SYSTEM_PREFIX}"}},  # a plain prefix: valid in ECMA-262 "u" mode
                ]
        elif spec.type == "list" and spec.items in ("string", "ipv4"):
            _text_rules(prop["items"], multiline=False, ipv4=spec.items == "ipv4")
            if spec.pattern is not None:
                prop["items"]["pattern"] = spec.pattern
    return schema


def form_schema(blueprint: Blueprint, *, choices: Choices | None = None) -> dict[str, Any]:
    """A portal's form: the deployment name and the params, with the hints a JSON-Schema form library reads.

    Built on :func:`json_schema`; the hints are those of ``@json-editor/json-editor``. The form's value is
    ``{"deployment": ..., "params": {...}}``; it is valid exactly when :func:`validate` accepts ``params`` and
    ``deployment`` with the same ``choices`` (a test proves it). Every property has a ``title``, a ``description``
    and a ``propertyOrder`` (the blueprint's order, the deployment first and required); widgets through ``format``
    (``checkbox``, ``select``, ``table``, ``textarea``, ``password``); a param with ``choices`` of a kind given here
    gets them as its ``enum`` (with ``options.enum_titles``). Secret params never carry a default or an example.

    Args:
        blueprint: The blueprint.
        choices: The site's names per kind (:func:`umc_infra.vcenter.choices`), where known.
    """
    params = json_schema(blueprint)
    params["title"] = "Parameters"
    properties = params.get("properties", {})
    for order, (name, spec) in enumerate(blueprint.params.items(), start=1):
        prop = properties[name]
        prop["propertyOrder"] = order
        prop.setdefault("description", spec.description or prop.get("title", name))
        if spec.secret:
            prop["format"] = "password"  # json_schema() gives it no default
            continue
        names = allowed_choices(spec, choices)
        target = prop["items"] if spec.type == "list" else prop
        if names is not None:
            target["enum"] = names
            target["options"] = {"enum_titles": [n or "(none)" for n in names]}
        widget = {"boolean": "checkbox", "list": "table"}.get(spec.type)
        widget = widget or ("select" if "enum" in prop else "textarea" if spec.multiline else None)
        if widget is not None:
            prop.setdefault("format", widget)  # a format that validates (ipv4) stays
    deployment = {
        "type": "string", "title": "Deployment", "pattern": DEPLOYMENT, "propertyOrder": 1,
        "description": f"The deployment's name: {DEPLOYMENT_WORDS}.",
    }  # fmt: skip
    _text_rules(deployment, multiline=False, ipv4=False)  # JSON Schema's "$" also matches before a final newline
    return {
        "title": blueprint.name, "description": blueprint.description, "type": "object",
        "properties": {"deployment": deployment, "params": params | {"propertyOrder": 2}},
        "required": ["deployment", "params"], "additionalProperties": False,
    }  # fmt: skip


def _text_rules(prop: dict[str, Any], *, multiline: bool, ipv4: bool) -> None:
    prop["not"] = {"pattern": (_CONTROL if multiline else _CONTROL_OR_NEWLINE).pattern}
    if ipv4:
        prop["format"] = "ipv4"
