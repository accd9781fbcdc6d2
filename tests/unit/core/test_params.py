"""Parameter validation: every invalid field at once, what is allowed, hostile strings."""

import pytest
from pydantic import SecretStr

from umc_infra import ParamsError
from umc_infra.blueprint.model import Blueprint
from umc_infra.params import SYSTEM_ACCOUNTS, json_schema, validate

BLUEPRINT = Blueprint.model_validate(
    {
        "name": "demo",
        "version": "1.0.0",
        "description": "d",
        "params": {
            "instances": {"type": "integer", "default": 1, "min": 1, "max": 5},
            "ratio": {"type": "number", "default": 0.5, "min": 0, "max": 1},
            "debug": {"type": "boolean", "default": False},
            "size": {"type": "enum", "values": ["small", "large"], "default": "small"},
            "title": {"type": "string", "default": "x", "max_length": 20},
            "hostname": {"type": "string", "format": "hostname", "default": "web"},
            "ips": {"type": "list", "items": "ipv4", "default": [], "max_length": 3},
            "owner": {"type": "string"},
            "token": {"type": "string", "secret": True, "default": "s"},
        },
        "modules": {"vm": {"source": "x"}},
    }
)


def ok(**params):
    return validate(BLUEPRINT, {"owner": "team-x", **params}, "team-x-web")


def problems(params, deployment="team-x-web"):
    with pytest.raises(ParamsError) as info:
        validate(BLUEPRINT, params, deployment)
    return {p.field: p for p in info.value.problems}, str(info.value)


def test_defaults_fill_in_and_values_are_typed():
    result = ok(instances=3, ips=["127.0.1.10"])
    assert result.values["instances"] == 3
    assert result.values["size"] == "small"
    assert result.values["ips"] == ["127.0.1.10"]
    assert isinstance(result.values["token"], SecretStr)
    assert result.masked()["token"] == "***"
    assert result.deployment == "team-x-web"


def test_every_invalid_field_is_reported_at_once():
    found, text = problems({"instances": 9, "ratio": "high", "size": "huge", "extra": 1}, deployment="Bad Name")
    assert set(found) == {
        "deployment",
        "params.instances",
        "params.ratio",
        "params.size",
        "params.extra",
        "params.owner",
    }
    assert found["params.instances"].allowed == "integer, from 1 to 5"
    assert "one of 'small', 'large'" in found["params.size"].allowed
    assert found["params.extra"].message == "unknown parameter"
    assert "params of this blueprint: instances" in found["params.extra"].allowed
    assert found["params.owner"].message == "Field required"
    assert "params.instances" in text and "allowed: integer, from 1 to 5" in text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"instances": "2"}, "params.instances"),
        ({"instances": True}, "params.instances"),
        ({"instances": 2.5}, "params.instances"),  # 2.0 is the integer 2, as in JSON
        ({"debug": 1}, "params.debug"),
        ({"debug": "yes"}, "params.debug"),
        ({"title": "a\nb"}, "params.title"),
        ({"title": "x" * 21}, "params.title"),
        ({"title": "nul\x00byte"}, "params.title"),
        ({"hostname": "../etc"}, "params.hostname"),
        ({"hostname": "web'; drop"}, "params.hostname"),
        ({"hostname": "${var.x}"}, "params.hostname"),
        ({"ips": ["10.0.0.300"]}, "params.ips.0"),
        ({"ips": "127.0.1.10"}, "params.ips"),
        ({"ips": ["127.0.1.1"] * 4}, "params.ips"),
        ({"owner": None}, "params.owner"),
    ],
)
def test_wrong_types_and_hostile_values_are_refused(params, field):
    found, _ = problems({"owner": "o", **params})
    assert field in found, found


@pytest.mark.parametrize(
    "deployment",
    ["", "ab", "Team", "team x", "team_x", "../team", "team-", "-team", "team\n", "t" * 33, "${x}", "%{x}", 5, None],
)
def test_bad_deployment_names(deployment):
    found, _ = problems({"owner": "o"}, deployment=deployment)
    assert set(found) == {"deployment"}
    assert "lowercase letters" in found["deployment"].allowed


@pytest.mark.parametrize(
    "text", ["{{ lookup('pipe', 'id') }}", 'it\'s "quoted"', "${var.password}", "%{ if true }x%{ endif }", "a;b|c&"]
)
def test_free_text_may_hold_anything_printable(text):
    assert ok(title=text[:20]).values["title"] == text[:20]


def test_a_secret_param_is_never_echoed():
    secret_blueprint = BLUEPRINT.model_copy(
        update={"params": {"pin": BLUEPRINT.params["instances"].model_copy(update={"secret": True})}}
    )
    with pytest.raises(ParamsError) as info:
        validate(secret_blueprint, {"pin": 12345678}, "team-x")
    assert "12345678" not in str(info.value)


def test_params_must_be_a_mapping():
    found, _ = problems(["instances", 2])
    assert "params" in found


def test_json_schema_marks_secrets_write_only():
    schema = json_schema(BLUEPRINT)
    assert schema["properties"]["token"]["writeOnly"] is True
    assert schema["properties"]["instances"]["maximum"] == 5
    assert "owner" in schema["required"]


@pytest.mark.parametrize("name", ["../etc", "x\ny", "${x}", "it's", "A"])
def test_status_destroy_and_drift_refuse_hostile_deployment_names(tmp_path, name):
    from umc_infra import Provisioner, Settings

    provisioner = Provisioner(settings=Settings(state_dir=tmp_path, backend="local"))
    for call in (provisioner.status, provisioner.destroy, provisioner.drift):
        with pytest.raises(ParamsError) as info:
            call(name)
        assert [p.field for p in info.value.problems] == ["deployment"]
    assert not any(tmp_path.rglob("*"))


ADMIN = Blueprint.model_validate(
    {
        "name": "admin-demo",
        "version": "1.0.0",
        "description": "d",
        "params": {"admin": {"type": "string", "format": "username", "default": "umcadmin"}},
        "modules": {"vm": {"source": "x"}},
    }
)


@pytest.mark.parametrize(
    "name",
    [*SYSTEM_ACCOUNTS, "systemd-network", "systemd-timesync", "systemd-resolve", "systemd-", "a" * 33,
     "Admin", "9admin", "-admin", "ad min", "admin\n", "", "ad$min", "../root"],
)  # fmt: skip
def test_format_username_refuses_system_accounts_and_bad_names(name):
    with pytest.raises(ParamsError) as info:
        validate(ADMIN, {"admin": name}, "team-x")
    [problem] = info.value.problems
    assert problem.field == "params.admin"
    assert "format username: a Linux user name matching ^[a-z_][a-z0-9_-]{0,31}$" in problem.allowed
    assert "not a system or service account (root, daemon, " in problem.allowed and "systemd-*" in problem.allowed
    if name in SYSTEM_ACCOUNTS or name.startswith("systemd-"):
        assert problem.message.startswith("is a system or service account")


@pytest.mark.parametrize("name", ["umcadmin", "deploy", "a" * 32, "systemd", "rootless", "_svc", "web-admin", "adm1"])
def test_format_username_accepts_personal_accounts(name):
    assert validate(ADMIN, {"admin": name}, "team-x").values["admin"] == name


def test_format_username_in_the_json_schema():
    prop = json_schema(ADMIN)["properties"]["admin"]
    assert prop["pattern"] == "^[a-z_][a-z0-9_-]{0,31}$"
    assert prop["allOf"] == [{"not": {"enum": list(SYSTEM_ACCOUNTS)}}, {"not": {"pattern": "^systemd-"}}]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "string", "format": "username", "pattern": "^a"}, "format username has its own pattern"),
        ({"type": "string", "format": "hostname", "pattern": "^a"}, "format hostname has its own pattern"),
        ({"type": "list", "items": "string", "format": "username"}, "'format' is only for type string"),
        ({"type": "string", "format": "email"}, "format"),
    ],
)
def test_param_spec_format_rules(spec, message):
    from pydantic import ValidationError

    from umc_infra.blueprint.model import ParamSpec

    with pytest.raises(ValidationError, match=message):
        ParamSpec.model_validate(spec)


BOUNDED = Blueprint.model_validate(
    {
        "name": "bounded",
        "version": "1.0.0",
        "description": "d",
        "params": {
            "memory_mb": {"type": "integer", "default": 2048, "min": 512},
            "reservation_mb": {"type": "integer", "default": 0, "min": 0, "at_most": "memory_mb"},
        },
        "modules": {"vm": {"source": "x"}},
    }
)


def test_at_most_refuses_a_value_above_the_other_param_naming_both():
    assert validate(BOUNDED, {"memory_mb": 1024, "reservation_mb": 1024}, "team-x").values["reservation_mb"] == 1024
    with pytest.raises(ParamsError) as refused:
        validate(BOUNDED, {"memory_mb": 1024, "reservation_mb": 1025}, "team-x")
    (problem,) = refused.value.problems
    assert problem.field == "params.reservation_mb"
    assert problem.message == "1025 is more than memory_mb (1024)"
    assert "at most memory_mb" in problem.allowed
    assert json_schema(BOUNDED)["x-umc-at-most"] == {"reservation_mb": "memory_mb"}


def test_at_most_is_only_checked_when_both_values_are_valid():
    with pytest.raises(ParamsError) as refused:
        validate(BOUNDED, {"memory_mb": 100, "reservation_mb": 200}, "team-x")
    assert [p.field for p in refused.value.problems] == ["params.memory_mb"]  # the bound is moot, not a second error


def test_at_most_must_name_a_number_param():
    with pytest.raises(ValueError, match="only for type integer or number"):
        Blueprint.model_validate({**BOUNDED.model_dump(exclude={"source", "roots"}), "params": {
            "note": {"type": "string", "default": "", "at_most": "memory_mb"}}})  # fmt: skip
