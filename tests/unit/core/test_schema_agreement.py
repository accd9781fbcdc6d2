"""The portal's JSON Schema and the library agree: a value one rejects, the other rejects (hypothesis)."""

import string

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umc_infra import ParamsError, Settings
from umc_infra.blueprint.catalog import Catalog
from umc_infra.blueprint.model import Blueprint, ParamSpec
from umc_infra.params import DEPLOYMENT, SYSTEM_ACCOUNTS, USERNAME, form_schema, json_schema, validate

CATALOG = Catalog.from_settings(Settings())
BLUEPRINTS = [CATALOG.load(name) for name in CATALOG.names()]
TEXT = string.printable + "éß€\x00\x1b\x7f\u2028"
# Names around the line format: username draws: system accounts, systemd-*, too long, wrong case or characters.
NEAR_USERNAMES = st.sampled_from(
    [*SYSTEM_ACCOUNTS, "systemd-network", "systemd-timesync", "systemd-", "systemd", "systemdx", "Root", "root ",
     " root", "root\n", "_apt2", "www-data2", "a" * 32, "a" * 33, "umcadmin", "-admin", "9admin", ""]
)  # fmt: skip
USERNAMES = st.from_regex(USERNAME, fullmatch=True).filter(
    lambda v: v.isprintable() and v not in SYSTEM_ACCOUNTS and not v.startswith("systemd-")
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(TEXT, max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
)  # fmt: skip


def _at_most(validator, bounds, instance, schema):
    """``x-umc-at-most``, as a portal checks it: each named param at most the other (where both are numbers; a
    param not given has its default)."""
    given = {name: prop.get("default") for name, prop in schema["properties"].items()} | instance
    for name, other in bounds.items():
        value, limit = given.get(name), given.get(other)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, limit))
        if numbers and value > limit:
            yield jsonschema.ValidationError(f"{name} ({value}) is more than {other} ({limit})")


PORTAL = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-umc-at-most": _at_most})
"""What a portal validates with: JSON Schema plus the one rule it cannot say (``x-umc-at-most``)."""


SITE = {
    "networks": ["VM Network", "DC0_DVPG0", "Net (prod)", "x" * 90], "folders": ["cardiology", "a/b", "Radiology "],
    "datastore_clusters": ["SSD-pod", "pod\n2"], "templates": ["templates/rhel9"], "clusters": ["DC0_C0"],
    "hosts": ["DC0_H0"], "tags": ["Backup/Daily"],
}  # fmt: skip
"""Live choices as a site might have them: some the param's own rules refuse (a pattern, a length, a newline)."""


def near(spec: ParamSpec, choices: dict | None = None) -> st.SearchStrategy:
    """Values close to what the param accepts, inside and just outside each constraint."""
    if choices and spec.choices in choices:
        names = st.sampled_from([*choices[spec.choices], "not-a-choice", ""])
        return st.one_of(names, st.lists(names, max_size=3)) if spec.type == "list" else names
    low = int(spec.min) if spec.min is not None else -5
    high = int(spec.max) if spec.max is not None else 5
    numbers = st.integers(low - 2, high + 2)
    if spec.type == "integer":
        return st.one_of(numbers, numbers.map(float), st.floats(low - 2, high + 2))
    if spec.type == "number":
        return st.one_of(numbers, st.floats(low - 1, high + 1))
    if spec.type == "enum":
        return st.one_of(st.sampled_from(spec.values or ["x"]), st.text(TEXT, max_size=8))
    if spec.type == "list":
        item = st.one_of(st.from_regex(r"\A127\.0\.1\.\d{1,3}\Z"), st.text(TEXT, max_size=8), st.integers(0, 3))
        return st.lists(item, max_size=(spec.max_length or 3) + 2)
    if spec.type == "boolean":
        return st.one_of(st.booleans(), st.integers(0, 1), st.sampled_from(["true", "yes"]))
    strings = [st.text(TEXT, max_size=(spec.max_length or 16) + 2)]
    if spec.format == "username":
        strings += [NEAR_USERNAMES, NEAR_USERNAMES, st.sampled_from(SYSTEM_ACCOUNTS).map(lambda n: n + "x")]
    if spec.pattern:
        strings.append(st.from_regex(spec.pattern, fullmatch=True))
    return st.one_of(*strings)


def valid(spec: ParamSpec, choices: dict | None = None) -> st.SearchStrategy:
    """Values the param accepts, so that whole sets of params pass often enough to test that side too."""
    if choices and spec.choices in choices:
        if spec.type == "list":
            return st.lists(st.sampled_from(choices[spec.choices]), max_size=2)
        return st.sampled_from([*choices[spec.choices], spec.default])
    if spec.type in ("integer", "number"):
        low, high = int(spec.min or 0), int(spec.max if spec.max is not None else 100)
        return st.integers(low, high) if spec.type == "integer" else st.floats(low, high)
    if spec.type == "enum":
        return st.sampled_from(spec.values or ["x"])
    if spec.type == "boolean":
        return st.booleans()
    if spec.type == "list":
        return st.lists(st.from_regex(r"\A127\.0\.1\.\d{1,2}\Z"), max_size=spec.max_length or 3)
    if spec.format == "username":
        return USERNAMES
    if spec.pattern:
        return st.from_regex(spec.pattern, fullmatch=True).filter(lambda v: v.isprintable())
    return st.text(
        string.ascii_letters + " .-'\"${}", min_size=spec.min_length or 0, max_size=min(spec.max_length or 16, 64)
    )


def params_for(blueprint: Blueprint, choices: dict | None = None) -> st.SearchStrategy:
    def good(spec: ParamSpec) -> st.SearchStrategy:
        return valid(spec, choices)

    def close(spec: ParamSpec) -> st.SearchStrategy:
        return near(spec, choices)

    values = {name: st.one_of(good(spec), good(spec), good(spec), close(spec), JSON_SCALARS)
              for name, spec in blueprint.params.items()}  # fmt: skip
    known = st.fixed_dictionaries({}, optional=values)
    unknown = st.dictionaries(
        st.sampled_from(["extra", "instances ", "__class__"]), JSON_SCALARS, min_size=1, max_size=1
    )
    extra = st.one_of(st.just({}), st.just({}), st.just({}), unknown)
    mixed = st.builds(lambda a, b: {**b, **a}, known, extra)
    # With many params a mixed set is rarely valid as a whole: draw wholly valid sets too, and valid sets
    # with one value near the line, where schema and library are most likely to part.
    every_valid = st.fixed_dictionaries({}, optional={name: good(spec) for name, spec in blueprint.params.items()})

    def one_near(name: str) -> st.SearchStrategy:
        rest = {other: good(spec) for other, spec in blueprint.params.items() if other != name}
        return st.fixed_dictionaries({name: close(blueprint.params[name])}, optional=rest)

    all_but_one = st.sampled_from(sorted(blueprint.params)).flatmap(one_near) if blueprint.params else every_valid
    return st.one_of(mixed, mixed, every_valid, all_but_one, all_but_one)


def assert_agree(schema: dict, values: st.SearchStrategy, library) -> None:
    """On every drawn value, the schema (as a portal checks it) and ``library`` (raising ParamsError) agree."""
    checker = PORTAL(schema, format_checker=jsonschema.FormatChecker())
    seen = {True: 0, False: 0}

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(values)
    def agree(value):
        schema_says = checker.is_valid(value)
        try:
            library(value)
            library_says = True
        except ParamsError:
            library_says = False
        assert schema_says == library_says, (value, list(checker.iter_errors(value))[:2])
        seen[library_says] += 1

    agree()
    assert seen[True] >= 20 and seen[False] >= 20  # both sides of the line were tried


@pytest.mark.parametrize("blueprint", BLUEPRINTS, ids=lambda b: b.name)
def test_the_schema_and_provision_agree_on_every_value(blueprint):
    assert_agree(
        json_schema(blueprint), params_for(blueprint), lambda params: validate(blueprint, params, "portal-check")
    )


VALID_DEPLOYMENTS = st.from_regex(DEPLOYMENT, fullmatch=True)
BAD_DEPLOYMENTS = st.one_of(
    st.sampled_from(["team-x\n", "ab", "a" * 33, "Team-x", "team-x-", "-team", "../x", "web 1", "wéb"]),
    st.text(TEXT, max_size=34), JSON_SCALARS,
)  # fmt: skip
DEPLOYMENTS = st.integers(0, 7).flatmap(lambda n: BAD_DEPLOYMENTS if n == 0 else VALID_DEPLOYMENTS)
"""Mostly valid names: a whole form passes often enough to test that side too."""


@pytest.mark.parametrize("choices", [None, SITE], ids=["offline", "live-choices"])
@pytest.mark.parametrize("blueprint", BLUEPRINTS, ids=lambda b: b.name)
def test_the_portal_form_and_provision_agree_on_every_value(blueprint, choices):
    forms = st.fixed_dictionaries({"deployment": DEPLOYMENTS, "params": params_for(blueprint, choices)})
    assert_agree(form_schema(blueprint, choices=choices), forms,
                 lambda form: validate(blueprint, form["params"], form["deployment"], choices=choices))  # fmt: skip


USERNAME_BLUEPRINTS = [b for b in BLUEPRINTS if any(s.format == "username" for s in b.params.values())]
EDGE_USERNAMES = [*SYSTEM_ACCOUNTS, "systemd-network", "systemd-", "a" * 33, "umcadmin", "systemd", "rootx", "a" * 32]


@pytest.mark.parametrize("blueprint", USERNAME_BLUEPRINTS, ids=lambda b: b.name)
def test_the_schema_and_provision_agree_on_every_system_account(blueprint):
    checker = PORTAL(json_schema(blueprint), format_checker=jsonschema.FormatChecker())
    for name in (n for n, s in blueprint.params.items() if s.format == "username"):
        refused = set()
        for value in EDGE_USERNAMES:
            try:
                validate(blueprint, {name: value}, "portal-check")
            except ParamsError:
                refused.add(value)
            assert checker.is_valid({name: value}) == (value not in refused), value
        assert refused == {*SYSTEM_ACCOUNTS, "systemd-network", "systemd-", "a" * 33}


def test_the_built_in_blueprints_use_format_username_for_the_admin():
    assert {b.name for b in USERNAME_BLUEPRINTS} >= {"linux-server", "web-server", "app-stack"}
    assert all(b.params["admin_user"].format == "username" for b in USERNAME_BLUEPRINTS)


def test_the_schema_has_what_a_portal_renders():
    lab = CATALOG.load("lab-web")
    schema = json_schema(lab)
    team = schema["properties"]["team"]
    assert (team["enum"], team["default"], team["title"]) == (["genomics", "imaging"], "genomics", "Team")
    assert team["description"] == "The lab team that owns the servers."
    assert schema["properties"]["instances"]["maximum"] == 3  # narrowed by the child
    assert schema["additionalProperties"] is False
    app = json_schema(CATALOG.load("app-stack"))
    secret = [p for p in app["properties"].values() if p.get("writeOnly")]
    assert all(p.get("writeOnly") for p in secret)
