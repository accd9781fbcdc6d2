"""What the sandbox needs from the host: missing packages and root are clear errors with the fix."""

from pathlib import Path

import pytest

from umc_infra import MissingDependency, SandboxError
from umc_infra.sandbox import _guests, _host


def test_a_missing_package_while_not_root_names_the_exact_command(monkeypatch, tmp_path):
    monkeypatch.setattr(_host, "is_root", lambda: False)
    packages = {"golang-go": tmp_path / "no-go", "debootstrap": tmp_path / "no-debootstrap"}
    with pytest.raises(MissingDependency) as info:
        _host.require_packages(packages, purpose="the vCenter simulator", step="s", on_progress=print)
    assert info.value.fix == "sudo apt-get update && sudo apt-get install -y debootstrap golang-go"
    assert "the vCenter simulator needs the Debian packages debootstrap, golang-go" in str(info.value)


def test_present_packages_need_nothing(monkeypatch):
    monkeypatch.setattr(_host, "is_root", lambda: False)
    _host.require_packages({"bash": Path("/bin/bash")}, purpose="p", step="s", on_progress=print)


def test_guests_without_root_say_how_to_run_without_them(monkeypatch):
    monkeypatch.setattr(_host, "is_root", lambda: False)
    with pytest.raises(SandboxError, match="UMC_SANDBOX_GUESTS=false"):
        _guests.require_root()
