"""A blueprint package from outside this repository: discovered, inherited from, provisioned, hooked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from umc_infra import HookError, Provisioner, destroy, plan, provision, status


@pytest.fixture
def site(info, tmp_path):
    return info.settings(state_dir=tmp_path / "state")


def test_a_package_blueprint_is_provisioned_with_its_hook_and_a_newer_version_shows_in_plan(
    site, sandbox, tmp_path, monkeypatch
):
    d = "ext-lab"
    cmdb = tmp_path / "cmdb.jsonl"
    monkeypatch.setenv("UMC_LAB_CMDB", str(cmdb))
    result = provision("lab-web", {"instances": 1, "team": "imaging"}, deployment=d, settings=site)

    (host,) = result.hosts
    assert (result.blueprint, result.version, host.name) == ("lab-web", "1.1.0", f"{d}-web-1")
    assert result.outputs["label"] == f"imaging/{d}"  # the package's own module ran
    marker = (sandbox.guest_root(host.ip) / "etc" / "umc-lab").read_text()
    assert marker == f"team=imaging\nlabel=imaging/{d}\n"  # the package's own playbook and role ran
    assert "nginx" in (sandbox.guest_root(host.ip) / "etc" / "nginx" / "nginx.conf").read_text()  # the parent's
    entries = [json.loads(line) for line in cmdb.read_text().splitlines()]
    assert entries == [{"deployment": d, "blueprint": "lab-web", "version": "1.1.0", "name": host.name,
                        "ip": host.ip, "team": "imaging", "at": "after_provision"}]  # fmt: skip
    assert result.timings["hook.after_provision.lab-cmdb"] >= 0

    # A newer release of the lab's content on the site's search path, knowingly overriding the package's.
    newer = tmp_path / "site-blueprints"
    packaged = Provisioner(settings=site).catalog.where("lab-web")[1]
    shutil.copytree(packaged.parent.parent, newer, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    raw = yaml.safe_load(packaged.read_text()) | {"version": "1.2.0", "override": True}
    (newer / "blueprints" / "lab-web.yaml").write_text(yaml.safe_dump(raw))
    upgraded = site.model_copy(update={"blueprint_path": [newer]})
    reviewed = plan("lab-web", {"instances": 1, "team": "imaging"}, deployment=d, settings=upgraded)
    assert reviewed.version_change == "1.1.0 -> 1.2.0" and reviewed.changed
    assert reviewed.resources == ()

    # A hook that raises stops the run; the record names the hook, the VM is kept.
    monkeypatch.delenv("UMC_LAB_CMDB")
    with pytest.raises(HookError, match="UMC_LAB_CMDB is not set") as stopped:
        provision("lab-web", {"instances": 1, "team": "imaging"}, deployment=d, settings=upgraded)
    assert stopped.value.hook == "lab-cmdb"
    record = status(d, settings=site)
    assert (record.last_run.outcome, record.last_run.failed_step) == ("failed", "hook.after_provision.lab-cmdb")
    assert record.version == "1.1.0"  # not recorded as upgraded: the run did not finish
    assert len(cmdb.read_text().splitlines()) == 1

    destroy(d, settings=site)
    assert status(d, settings=site).state == "destroyed"


def test_the_cli_lists_shows_and_validates_the_package(info, tmp_path):
    import subprocess
    import sys

    umc = [str(Path(sys.executable).parent / "umc-infra")]
    listed = subprocess.run([*umc, "blueprints", "list"], capture_output=True, text=True, env=info.environment()
                            | {"PATH": "/usr/bin:/bin", "UMC_STATE_DIR": str(tmp_path)}, check=True)  # fmt: skip
    assert "umc-lab-blueprints" in listed.stdout
    resolved = subprocess.run([*umc, "blueprints", "show", "lab-web", "--resolved"], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
    assert yaml.safe_load(resolved)["params"]["instances"]["max"] == 3
    written = subprocess.run([*umc, "blueprints", "show", "lab-web"], capture_output=True, text=True, check=True)
    assert "extends: web-server" in written.stdout and "cpu" not in written.stdout  # the file as written
