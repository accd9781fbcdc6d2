"""The deployment commands' pure parts: typing params from flags and files, exit codes, typed errors."""

import json

import hvac.exceptions
import pytest
import requests
import typer
import yaml

from umc_infra import (
    BlueprintNotFound,
    Cancelled,
    DeploymentLocked,
    DestroyNotAllowed,
    ExitCode,
    InternalError,
    ParamsError,
    PlaybookError,
    SecretError,
    TerraformError,
    UmcInfraError,
)
from umc_infra.blueprint.model import Blueprint
from umc_infra.cli.common import exit_code, guarded, requested_output, state, typed_params
from umc_infra.secrets.redact import Redactor

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
    with pytest.raises(ParamsError, match="is a list, not a mapping"):
        typed_params(BLUEPRINT, [], bad)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ParamsError([], blueprint="x"), ExitCode.BAD_INPUT),
        (BlueprintNotFound("x"), ExitCode.BAD_INPUT),
        (DeploymentLocked("x", holder="h", since=__import__("datetime").datetime.now()), ExitCode.LOCKED),
        (TerraformError("x"), ExitCode.TERRAFORM),
        (PlaybookError("x", playbook="p", failures=[], step="s"), ExitCode.ANSIBLE),
        (DestroyNotAllowed("x", resources=[], step="s"), ExitCode.REFUSED),
        (SecretError("x"), ExitCode.SECRETS),
        (Cancelled("x"), ExitCode.INTERRUPTED),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (InternalError("x", command="umc-infra status", cause="KeyError"), ExitCode.ERROR),
        (UmcInfraError("x"), ExitCode.ERROR),
    ],
)
def test_exit_codes(error, code):
    assert exit_code(error) == code


# -- --params-file: plain data only, never echoed ---------------------------------------------------

CANARY = "canary-params-7f3a"
"""A value in every params file below: no message may quote it (the file may hold secret params)."""


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (f"title: {CANARY}\ncmd: !!python/object/apply:os.system ['true']\n", 2, "a YAML tag that is not plain data"),
        (f"title: {CANARY}\nf: !!python/name:os.system\n", 2, "a YAML tag that is not plain data"),
        (f"title: {CANARY}\nips: [127.0.1.10\n", 3, "not valid YAML or JSON (expected ',' or ']'"),
        (f"title: *{CANARY}\n", 1, "not valid YAML or JSON (found undefined alias '...')"),
        (f"- {CANARY}\n- 2\n", None, "is a list, not a mapping"),
        (f"{CANARY}\n", None, "is text, not a mapping"),
        ("", None, "is empty, not a mapping"),
        (f"title: {CANARY}\nwhen: 2024-01-02\n", 2, "the value of 'when' is not plain data (date); quote it"),
        (f"title: {CANARY}\nips: !!binary aGVsbG8=\n", 2, "the value of 'ips' is not plain data (bytes)"),
        (
            f"title: {CANARY}\nips: &a [1]\nmore: {{list: *a}}\n",
            3,
            "the value of 'more.list' repeats a list or mapping",
        ),
        (f"title: {CANARY}\n1: x\n", 2, "the mapping has a key that is not text (int)"),
        (f"title: {CANARY}\ninstances: !!int many\n", None, "not plain YAML or JSON data (ValueError)"),
    ],
    ids=[
        "python-tag",
        "python-name",
        "bad-yaml",
        "undefined-alias",
        "list",
        "text",
        "empty",
        "date",
        "binary",
        "alias",
        "int-key",
        "bad-int",
    ],
)
def test_a_params_file_that_is_not_a_mapping_of_plain_data_is_a_params_error(tmp_path, content, line, says):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(content)
    with pytest.raises(ParamsError) as error:
        typed_params(BLUEPRINT, [], params_file)
    (problem,) = error.value.problems
    at = f"{params_file} line {line}: " if line else f"{params_file}"
    assert problem.field == "--params-file" and problem.message.startswith(at), problem.message
    assert says in problem.message
    assert problem.allowed.startswith("a YAML or JSON mapping of param names to plain values")
    assert CANARY not in str(error.value)


def test_a_python_tag_in_a_params_file_is_never_constructed(tmp_path):
    marker = tmp_path / "ran"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"instances: !!python/object/apply:os.system ['touch {marker}']\n")
    yaml.unsafe_load(params_file.read_text())  # the control: loaded unsafely, the file runs a command
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ParamsError, match="a YAML tag that is not plain data"):
        typed_params(BLUEPRINT, [], params_file)
    assert not marker.exists()


def test_yaml_would_quote_the_file_in_its_own_messages(tmp_path):
    """The control for the no-echo checks above: YAML's own error text does quote the file."""
    with pytest.raises(yaml.YAMLError) as raw:
        yaml.safe_load(f"title: *{CANARY}\n")
    assert CANARY in str(raw.value)


def test_unreadable_and_non_utf8_params_files(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"title: caf\xe9\n")
    cases = [(tmp_path / "missing.yaml", "cannot be read (FileNotFoundError"),
             (tmp_path, "cannot be read (IsADirectoryError"),
             (tmp_path / "latin1.yaml", "is not UTF-8 text")]  # fmt: skip
    for path, says in cases:
        with pytest.raises(ParamsError) as error:
            typed_params(BLUEPRINT, [], path)
        assert error.value.problems[0].field == "--params-file" and says in error.value.problems[0].message


def test_a_json_params_file_and_flags_together(tmp_path):
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"instances": 2, "ips": ["127.0.1.10"], "nested": {"a": [1, None, True]}}))
    assert typed_params(BLUEPRINT, ["instances=3"], params_file) == {
        "instances": 3, "ips": ["127.0.1.10"], "nested": {"a": [1, None, True]},
    }  # fmt: skip


# -- every error reaching a command is typed --------------------------------------------------------


def _validation_error() -> Exception:
    from pydantic import ValidationError

    from umc_infra.state.records import DeploymentRecord

    try:
        DeploymentRecord.model_validate({"deployment": 5})
    except ValidationError as exc:
        return exc
    raise AssertionError("a record without fields validated")


def _constructor_error() -> Exception:
    try:
        yaml.safe_load("!!python/object/apply:os.system ['true']")
    except yaml.YAMLError as exc:
        return exc
    raise AssertionError("safe_load constructed a python object")


@pytest.mark.parametrize(
    ("raised", "kind", "code"),
    [
        (ValueError("boom"), "InternalError", ExitCode.ERROR),
        (KeyError("records"), "InternalError", ExitCode.ERROR),
        (OSError(5, "Input/output error"), "InternalError", ExitCode.ERROR),
        (RecursionError("maximum recursion depth exceeded"), "InternalError", ExitCode.ERROR),
        (_validation_error(), "InternalError", ExitCode.ERROR),
        (_constructor_error(), "InternalError", ExitCode.ERROR),
        (
            hvac.exceptions.InternalServerError("internal error", url="http://127.0.0.1:9/v1/x"),
            "InternalError",
            ExitCode.ERROR,
        ),
        (requests.exceptions.ConnectionError("refused"), "InternalError", ExitCode.ERROR),
        (SecretError("x", reference="kv/data/a#b"), "SecretError", ExitCode.SECRETS),
        (ParamsError([], blueprint="x"), "ParamsError", ExitCode.BAD_INPUT),
        (TerraformError("x"), "TerraformError", ExitCode.TERRAFORM),
        (KeyboardInterrupt(), "KeyboardInterrupt", ExitCode.INTERRUPTED),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_guarded_types_every_error(capsys, monkeypatch, raised, kind, code, debug):
    monkeypatch.setattr(state, "debug", debug)
    monkeypatch.setattr(state, "command", "umc-infra deployments")
    monkeypatch.setattr(state, "emitted", False)

    def action() -> None:
        raise raised

    with pytest.raises(typer.Exit) as exited:
        guarded(action, "json")
    captured = capsys.readouterr()
    assert exited.value.exit_code == code
    error = json.loads(captured.out)["error"]  # exactly one JSON document: json.loads takes nothing else
    assert (error["type"], error["exit_code"]) == (kind, code)
    assert captured.err.startswith("error: ")
    assert ("Traceback" in captured.err) is debug
    if kind == "InternalError":
        qualified = type(raised).__qualname__
        assert error["cause"].endswith(qualified) and qualified in error["message"]
        assert error["message"].startswith("[internal] unexpected error in `umc-infra deployments`: ")
        assert "rerun with --debug" in error["message"] and "\n" not in error["message"]
        if debug:  # the original's traceback, where it was raised
            assert "in action\n    raise raised" in captured.err


@pytest.mark.parametrize("planted", [False, True], ids=["redacted", "control-planted-leak"])
def test_an_unexpected_error_never_shows_a_credential(capsys, monkeypatch, tmp_path, planted):
    """The credential in the exception's text is hidden in the message and in the --debug traceback."""
    from umc_infra.cli import common as _cli_common

    token = "hvs.canary-internal-5d1c"
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.setenv("UMC_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(state, "debug", True)
    monkeypatch.setattr(state, "settings", {})
    monkeypatch.setattr(state, "secret_files", {})
    if planted:  # without the redactor the same run leaks: the checks below can fail
        monkeypatch.setattr(_cli_common, "redactor", Redactor)

    def action() -> None:
        raise RuntimeError(f"request with token {token} failed\nsecond line {token}")

    with pytest.raises(typer.Exit):
        guarded(action, "json")
    captured = capsys.readouterr()
    message = json.loads(captured.out)["error"]["message"]
    assert ("second line" in message) is False  # one line
    assert (token in message, token in captured.err) == (planted, planted)
    if not planted:
        assert "request with token *** failed" in message


def test_requested_output_reads_the_command_line_before_click():
    assert [requested_output(args) for args in (
        ["deployments", "-o", "json"], ["deployments", "--output=json"], ["deployments", "-ojson"],
        ["sandbox", "status", "--json"], ["provision", "x", "-d", "y", "--output", "json", "--bogus"],
        ["deployments"], ["deployments", "-o", "text"], ["deployments", "-o"], ["-p", "json"],
    )] == ["json"] * 5 + ["text"] * 4  # fmt: skip
