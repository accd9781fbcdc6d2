"""``umc-infra serve`` and ``worker``: loopback only unless asked; a missing extra names the install command."""

import importlib.util

import pytest

from umc_infra.cli import service as cli_service
from umc_infra.cli.app import main
from umc_infra.errors import ExitCode, SettingsError
from umc_infra.service.serve import check_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.5", "::1", "localhost"])
def test_loopback_hosts_are_allowed(host):
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_other_hosts_need_the_explicit_flag(host):
    with pytest.raises(SettingsError, match="not a loopback address"):
        check_host(host, allow_remote=False)
    check_host(host, allow_remote=True)  # control: the flag lets it through


def test_serve_refuses_a_public_host_before_anything_starts(capsys, monkeypatch):
    monkeypatch.setattr("umc_infra.service.serve.build_service", lambda: pytest.fail("must not build the service"))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--host", "0.0.0.0", "--port", "8099"])
    assert exited.value.code == ExitCode.BAD_INPUT
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_missing_extra_names_the_install_command(command, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        cli_service.importlib.util, "find_spec", lambda name: None if name == "procrastinate" else real(name)
    )
    with pytest.raises(SystemExit) as exited:
        main([command])
    assert exited.value.code == ExitCode.ERROR
    err = " ".join(capsys.readouterr().err.split())
    assert "procrastinate missing" in err and "pip install 'umc-infra[service]'" in err
