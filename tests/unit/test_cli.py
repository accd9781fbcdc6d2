"""The command line, without services: errors, exit codes and the env output."""

import json
import subprocess

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from umc_infra import __version__
from umc_infra._cli import EXIT_ERROR, EXIT_UNHEALTHY, app
from umc_infra.sandbox._config import Credentials, write_private

runner = CliRunner()


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UMC_SANDBOX_STATE_DIR", str(tmp_path / "sandbox"))
    # ports nobody listens on, so status finds nothing running
    monkeypatch.setenv("UMC_SANDBOX_VCSIM_PORT", "1")
    monkeypatch.setenv("UMC_SANDBOX_VAULT_PORT", "2")
    monkeypatch.setenv("UMC_SANDBOX_S3_PORT", "3")
    return tmp_path / "sandbox"


def fake_credentials(state_dir):
    creds = Credentials(
        vault_root_token=SecretStr("root-canary-1"),
        vault_read_token=SecretStr("read-token-1"),
        vault_role_id="role-1",
        vault_secret_id=SecretStr("secret-id-1"),
        vsphere_password=SecretStr("vsphere-canary-1"),
        ssh_private_key=SecretStr("key-canary-1"),
        ssh_public_key="ssh-ed25519 AAAA test",
        jwt_signing_key=SecretStr("jwt-canary-1"),
        demo_db_password=SecretStr("db-canary-1"),
    )
    write_private(state_dir / "credentials.json", creds.dump())


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_env_without_a_sandbox_says_how_to_start_one(state_dir):
    result = runner.invoke(app, ["sandbox", "env"])
    assert result.exit_code == EXIT_ERROR
    assert "no sandbox at" in result.stderr
    assert "umc-infra sandbox up" in result.stderr
    assert result.stdout == ""


def test_env_prints_export_lines_a_shell_can_eval(state_dir):
    fake_credentials(state_dir)
    result = runner.invoke(app, ["sandbox", "env"])
    assert result.exit_code == 0, result.stderr
    shown = subprocess.run(
        [
            "bash",
            "-c",
            result.stdout + '\nprintf "%s|%s|%s" "$VAULT_ADDR" "$VAULT_TOKEN" "$UMC_VSPHERE_NETWORK"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == "http://127.0.0.1:2|read-token-1|VM Network"
    for canary in ("root-canary-1", "vsphere-canary-1", "key-canary-1", "jwt-canary-1", "db-canary-1"):
        assert canary not in result.stdout


def test_env_json(state_dir):
    fake_credentials(state_dir)
    result = runner.invoke(app, ["sandbox", "env", "--json"])
    assert json.loads(result.stdout)["VSPHERE_SERVER"] == "127.0.0.1:1"


def test_status_of_a_stopped_sandbox_is_unhealthy(state_dir):
    fake_credentials(state_dir)
    result = runner.invoke(app, ["sandbox", "status", "--json"])
    assert result.exit_code == EXIT_UNHEALTHY
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    assert components["vcsim"]["healthy"] is False
    assert components["vcsim"]["detail"] == "not running"


def test_bad_setting_in_the_environment_names_the_variable(state_dir, monkeypatch):
    monkeypatch.setenv("UMC_SANDBOX_HOST", "10.0.0.1")
    result = runner.invoke(app, ["sandbox", "env"])
    assert result.exit_code == EXIT_ERROR
    assert "UMC_SANDBOX_HOST" in result.stderr
    assert "not a loopback address" in result.stderr
