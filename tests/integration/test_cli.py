"""umc-infra as a CI pipeline runs it: a subprocess, JSON on stdout, documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from umc_infra._cli_deploy import Exit


@pytest.fixture(scope="module")
def run(sandbox, info, tmp_path_factory):
    env = dict(os.environ) | info.environment()
    env["UMC_STATE_DIR"] = str(tmp_path_factory.mktemp("cli"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    def umc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["umc-infra", *args], env=env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    return umc


def test_blueprints_list_show_schema(run):
    listed = run("blueprints", "list", "--output", "json")
    assert listed.returncode == 0
    assert [b["name"] for b in json.loads(listed.stdout)] == ["app-stack", "linux-server", "web-server"]
    shown = json.loads(run("blueprints", "show", "web-server", "-o", "json").stdout)
    assert shown["modules"]["web"]["source"] == "vsphere-vm"
    schema = json.loads(run("blueprints", "schema", "app-stack").stdout)
    assert schema["properties"]["db_name"]["pattern"] == "^[a-z][a-z0-9_]{0,30}$"
    missing = run("blueprints", "show", "nope", "-o", "json")
    assert missing.returncode == Exit.BAD_INPUT
    assert json.loads(missing.stdout)["error"]["type"] == "BlueprintNotFound"


def test_bad_params_exit_2_with_every_field(run):
    result = run("provision", "web-server", "-d", "cli-bad", "-p", "instances=two", "-p", "cpu=99", "-p",
                 "name=x", "-o", "json")  # fmt: skip
    assert result.returncode == Exit.BAD_INPUT
    problems = {p["field"] for p in json.loads(result.stdout)["error"]["problems"]}
    assert problems == {"params.instances", "params.cpu", "params.name"}
    assert "error: [params] invalid parameters" in result.stderr


def test_provision_plan_drift_status_destroy_round_trip(run, sandbox):
    d = "cli-round"
    created = run("provision", "linux-server", "-d", d, "-p", "instances=1", "-o", "json")
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)  # one JSON document on stdout; progress went to stderr
    assert result["deployment"] == d and len(result["hosts"]) == 1
    assert "terraform.apply.vm" in created.stderr

    planned = json.loads(run("plan", "linux-server", "-d", d, "-p", "instances=2", "-o", "json").stdout)
    assert [(r["address"], r["action"]) for r in planned["resources"]] == [("vsphere_virtual_machine.vm[1]", "create")]

    assert run("drift", d).returncode == 0
    (sandbox.guest_root(result["hosts"][0]["ip"]) / "etc" / "motd").write_text("edited\n")
    drifted = run("drift", d, "-o", "json")
    assert drifted.returncode == Exit.DRIFT
    assert json.loads(drifted.stdout)["configuration"][0]["task"] == "Write the motd"

    record = json.loads(run("status", d, "-o", "json").stdout)
    assert record["state"] == "active" and record["runs"][0]["outcome"] == "succeeded"
    assert d in [r["deployment"] for r in json.loads(run("deployments", "-o", "json").stdout)]

    refused = run("destroy", d)
    assert refused.returncode == Exit.BAD_INPUT and "--yes" in refused.stderr  # no terminal to ask on
    gone = json.loads(run("destroy", d, "--yes", "-o", "json").stdout)
    assert gone["already_destroyed"] is False
    assert json.loads(run("destroy", d, "--yes", "-o", "json").stdout)["already_destroyed"] is True


def test_progress_and_summary_in_a_terminal(sandbox, info, tmp_path):
    """A person at a terminal: step lines while it runs, then the summary table (checked in a pty)."""
    import pexpect

    env = dict(os.environ) | info.environment()
    env.update(UMC_STATE_DIR=str(tmp_path / "state"), PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
               TERM="xterm-256color", COLUMNS="120", LINES="40")  # fmt: skip
    child = pexpect.spawn("umc-infra", ["provision", "linux-server", "-d", "cli-pty", "-p", "instances=1"], env=env,
                          encoding="utf-8", timeout=300, dimensions=(40, 120))  # fmt: skip
    child.expect(r"terraform\.apply\.vm\s+[\d.]+ s")  # progress while it runs
    child.expect(r"cli-pty-1\s+.\s+127\.0\.1\.\d+")  # the summary table's host row
    child.expect(r"terraform vm: \+1 ~0 -0; ansible base: \d+ changed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    from umc_infra import destroy

    destroy("cli-pty", settings=info.settings(state_dir=tmp_path / "state"))
