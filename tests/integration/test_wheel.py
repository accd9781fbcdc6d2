"""The built wheel, as a site installs it: into a fresh venv, used from another directory, on the S3 backend.

Nothing of the checkout is on the path: the blueprints, modules and playbooks come from the wheel's package
data, the command is the venv's ``umc-infra``, Terraform the one the ``sandbox`` extra installs there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BUILT_IN = {"app-stack", "linux-server", "web-ha", "web-server", "windows-server"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True, timeout=600)  # fmt: skip
    (built,) = dist.glob("umc_infra-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("site") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                    f"{wheel}[sandbox,windows]"], check=True, timeout=900)  # fmt: skip
    return venv


def test_the_wheel_carries_the_content_and_the_production_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line.removeprefix("Requires-Dist: ") for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist: ")]  # fmt: skip
    for shipped in ("blueprints/linux-server.yaml", "blueprints/app-stack.yaml", "modules/vsphere-vm/main.tf",
                    "playbooks/base.yml", "playbooks/roles/db/tasks/main.yml"):  # fmt: skip
        assert f"umc_infra/content/{shipped}" in names
    assert {"umc_infra/py.typed", "umc_infra/sandbox/vcsim/main.go"} <= names
    core = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert {"botocore", "pyvmomi", "hvac", "ansible-core", "pydantic"} <= core  # the S3 backend and vCenter calls
    assert "boto3" not in core  # only the sandbox seeds S3 with it: a run signs its few calls itself
    assert not [r for r in requires if "extra ==" not in r and "==" in r]  # ranges, never pins


def test_the_installed_wheel_lists_validates_and_provisions_from_another_directory(venv, info, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ["HOME"]} | info.environment() | {
        "UMC_STATE_DIR": str(tmp_path / "state"), "UMC_IP_POOL": "127.0.1.230-127.0.1.234",
    }  # fmt: skip

    def umc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "umc-infra"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)  # fmt: skip

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "from umc_infra.blueprint.content import Content; "
                            "print(Content.locate().root)"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the package data, not this checkout

    listed = umc("blueprints", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert {b["name"] for b in json.loads(listed.stdout)} == BUILT_IN

    validated = umc("blueprints", "validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr

    d = "wheel-site"
    made = umc("provision", "linux-server", "-d", d, "-p", "instances=1", "-o", "json")
    assert made.returncode == 0, made.stderr
    (host,) = json.loads(made.stdout)["hosts"]
    assert host["name"] == f"{d}-1" and host["ip"] == "127.0.1.230"
    gone = umc("destroy", d, "--yes", "-o", "json")
    assert gone.returncode == 0, gone.stderr
