"""The deployment commands' pure parts: typing params from flags, exit codes."""

import pytest

from umc_infra import (
    BlueprintNotFound,
    Cancelled,
    DeploymentLocked,
    DestroyNotAllowed,
    ParamsError,
    PlaybookError,
    SecretError,
    TerraformError,
    UmcInfraError,
)
from umc_infra._blueprint import Blueprint
from umc_infra._cli_deploy import Exit, exit_code, typed_params

BLUEPRINT = Blueprint.model_validate({
    "name": "demo", "version": "1.0.0", "description": "d", "modules": {"vm": {"source": "x"}},
    "params": {
        "instances": {"type": "integer", "default": 1}, "ratio": {"type": "number", "default": 1.0},
        "debug": {"type": "boolean", "default": False}, "ips": {"type": "list", "items": "ipv4", "default": []},
        "title": {"type": "string", "default": "x"},
    },
})  # fmt: skip


def test_flags_are_typed_by_the_blueprint(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("instances: 5\ntitle: from file\n")
    params = typed_params(
        BLUEPRINT,
        ["instances=3", "ratio=0.5", "debug=yes", 'ips=["127.0.1.10"]', "title=a=b", "unknown=7"],
        params_file,
    )
    assert params == {"instances": 3, "ratio": 0.5, "debug": True, "ips": ["127.0.1.10"], "title": "a=b",
                      "unknown": "7"}  # fmt: skip


def test_values_that_do_not_convert_stay_text_for_validation_to_report():
    assert typed_params(BLUEPRINT, ["instances=two", "debug=maybe", "ips=1.2.3.4"], None) == {
        "instances": "two", "debug": "maybe", "ips": "1.2.3.4",
    }  # fmt: skip


def test_malformed_flags_and_files(tmp_path):
    with pytest.raises(ParamsError, match="is not KEY=VALUE"):
        typed_params(BLUEPRINT, ["instances"], None)
    bad = tmp_path / "params.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="is not a mapping"):
        typed_params(BLUEPRINT, [], bad)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ParamsError([], blueprint="x"), Exit.BAD_INPUT),
        (BlueprintNotFound("x"), Exit.BAD_INPUT),
        (DeploymentLocked("x", holder="h", since=__import__("datetime").datetime.now()), Exit.LOCKED),
        (TerraformError("x"), Exit.TERRAFORM),
        (PlaybookError("x", playbook="p", failures=[], step="s"), Exit.ANSIBLE),
        (DestroyNotAllowed("x", resources=[], step="s"), Exit.REFUSED),
        (SecretError("x"), Exit.SECRETS),
        (Cancelled("x"), Exit.INTERRUPTED),
        (KeyboardInterrupt(), Exit.INTERRUPTED),
        (UmcInfraError("x"), Exit.ERROR),
    ],
)
def test_exit_codes(error, code):
    assert exit_code(error) == code
