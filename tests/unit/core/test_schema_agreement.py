"""The portal's JSON Schema and the library agree: a value one rejects, the other rejects (hypothesis)."""

import string

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umc_infra import ParamsError, Settings
from umc_infra._blueprint import Blueprint, ParamSpec
from umc_infra._catalog import Catalog
from umc_infra._params import json_schema, validate

CATALOG = Catalog.from_settings(Settings())
BLUEPRINTS = [CATALOG.load(name) for name in CATALOG.names()]
TEXT = string.printable + "éß€\x00\x1b\x7f\u2028"
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(TEXT, max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
)  # fmt: skip


def near(spec: ParamSpec) -> st.SearchStrategy:
    """Values close to what the param accepts, inside and just outside each constraint."""
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
    if spec.pattern:
        strings.append(st.from_regex(spec.pattern, fullmatch=True))
    return st.one_of(*strings)


def valid(spec: ParamSpec) -> st.SearchStrategy:
    """Values the param accepts, so that whole sets of params pass often enough to test that side too."""
    if spec.type in ("integer", "number"):
        low, high = int(spec.min or 0), int(spec.max if spec.max is not None else 100)
        return st.integers(low, high) if spec.type == "integer" else st.floats(low, high)
    if spec.type == "enum":
        return st.sampled_from(spec.values or ["x"])
    if spec.type == "boolean":
        return st.booleans()
    if spec.type == "list":
        return st.lists(st.from_regex(r"\A127\.0\.1\.\d{1,2}\Z"), max_size=spec.max_length or 3)
    if spec.pattern:
        return st.from_regex(spec.pattern, fullmatch=True).filter(lambda v: v.isprintable())
    return st.text(string.ascii_letters + " .-'\"${}", min_size=spec.min_length or 0, max_size=spec.max_length or 16)


def params_for(blueprint: Blueprint) -> st.SearchStrategy:
    values = {name: st.one_of(valid(spec), valid(spec), valid(spec), near(spec), JSON_SCALARS)
              for name, spec in blueprint.params.items()}  # fmt: skip
    known = st.fixed_dictionaries({}, optional=values)
    unknown = st.dictionaries(
        st.sampled_from(["extra", "instances ", "__class__"]), JSON_SCALARS, min_size=1, max_size=1
    )
    extra = st.one_of(st.just({}), st.just({}), st.just({}), unknown)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


@pytest.mark.parametrize("blueprint", BLUEPRINTS, ids=lambda b: b.name)
def test_the_schema_and_provision_agree_on_every_value(blueprint):
    checker = jsonschema.Draft202012Validator(json_schema(blueprint), format_checker=jsonschema.FormatChecker())
    seen = {True: 0, False: 0}

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params_for(blueprint))
    def agree(params):
        schema_says = checker.is_valid(params)
        try:
            validate(blueprint, params, "portal-check")
            library_says = True
        except ParamsError:
            library_says = False
        assert schema_says == library_says, (params, list(checker.iter_errors(params))[:2])
        seen[library_says] += 1

    agree()
    assert seen[True] >= 20 and seen[False] >= 20  # both sides of the line were tried


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
