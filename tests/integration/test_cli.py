"""umc-infra as a CI pipeline runs it: a subprocess, JSON on stdout, documented exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import read_secret
from umc_infra.errors import ExitCode as Exit

TRANSCRIPTS: list[str] = []
"""Everything the CLI printed in this module (stdout, stderr, the terminal), scanned for secrets at the end."""


@pytest.fixture(scope="module")
def cli_env(sandbox, info, tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ) | info.environment()
    env["UMC_STATE_DIR"] = str(tmp_path_factory.mktemp("cli"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


@pytest.fixture(scope="module")
def run(cli_env):
    def umc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["umc-infra", *args], env=cli_env | env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        TRANSCRIPTS.extend([done.stdout, done.stderr])
        return done

    return umc


def test_blueprints_list_show_schema(run):
    listed = run("blueprints", "list", "--output", "json")
    assert listed.returncode == 0
    names = [b["name"] for b in json.loads(listed.stdout)]
    assert names == ["app-stack", "lab-web", "linux-server", "web-ha", "web-server", "windows-server"]
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
    created = run("provision", "linux-server", "-d", d, "-p", "instances=2", "-o", "json")
    assert created.returncode == 0, created.stderr
    result = json.loads(created.stdout)  # one JSON document on stdout; progress went to stderr
    assert result["deployment"] == d and len(result["hosts"]) == 2
    assert "terraform.apply.vm" in created.stderr
    assert "\x1b" not in created.stderr  # not a terminal: no colour, no spinner

    planned = json.loads(run("plan", "linux-server", "-d", d, "-p", "instances=1", "-o", "json").stdout)
    assert [(r["address"], r["action"]) for r in planned["resources"]] == [("vsphere_virtual_machine.vm[1]", "delete")]
    refused = run("provision", "linux-server", "-d", d, "-p", "instances=1", "-o", "json")
    assert refused.returncode == Exit.REFUSED
    assert json.loads(refused.stdout)["error"]["type"] == "DestroyNotAllowed"
    assert "allow" in refused.stderr

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


def test_failure_kinds_give_their_exit_codes(run, cli_env, info, tmp_path):
    """Each failure a pipeline must tell apart: its own exit code, one line on stderr, a JSON error on stdout."""
    bogus_token = tmp_path / "token"
    bogus_token.write_text("hvs.not-a-real-token\n")
    secrets = run("--vault-token-file", str(bogus_token), "provision", "linux-server", "-d", "cli-f-secret", "-o",
                  "json")  # fmt: skip
    assert secrets.returncode == Exit.SECRETS, secrets.stderr
    assert json.loads(secrets.stdout)["error"]["type"] == "SecretError"

    terraform = run("--debug", "provision", "linux-server", "-d", "cli-f-tf", "-o", "json",
                    UMC_VSPHERE_DATASTORE="no-such-datastore")  # fmt: skip
    assert terraform.returncode == Exit.TERRAFORM, terraform.stderr
    assert "no-such-datastore" in terraform.stderr and "Traceback" in terraform.stderr  # --debug: the trace too

    ansible = run("provision", "linux-server", "-d", "cli-f-play", "-o", "json",
                  UMC_PYTHON_INTERPRETER="/nonexistent/python3")  # fmt: skip
    assert ansible.returncode == Exit.ANSIBLE, ansible.stderr
    assert "cli-f-play-1" in json.loads(ansible.stdout)["error"]["message"]

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom umc_infra import Settings\nfrom umc_infra.state.lease import locked\n"
         "from umc_infra.state.store import open_store\n"
         "with locked(open_store(Settings()), 'cli-f-play', operation='provision', timeout_s=5, ttl_s=120):\n"
         "    print('locked', flush=True); time.sleep(120)\n"],
        env=cli_env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked = run("provision", "linux-server", "-d", "cli-f-play", "--lock-timeout", "0", "-o", "json")
        assert locked.returncode == Exit.LOCKED, locked.stderr
        assert f"pid {holder.pid}" in locked.stderr
    finally:
        holder.kill()  # SIGKILL: it never lets go; `unlock` removes the stale lock
        holder.wait()
    assert run("unlock", "cli-f-play").returncode == Exit.BAD_INPUT  # it asks first; no terminal to ask on
    unlocked = run("unlock", "cli-f-play", "--yes", "-o", "json")
    assert json.loads(unlocked.stdout)["removed"]["pid"] == holder.pid
    assert json.loads(run("unlock", "cli-f-play", "--yes", "-o", "json").stdout)["removed"] is None

    interrupted = subprocess.Popen(["umc-infra", "provision", "linux-server", "-d", "cli-f-play", "-o", "json"],
                                   env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert interrupted.stderr is not None
    lines = []
    while not any(line.startswith("• ssh") for line in lines):  # mid-Ansible
        lines.append(interrupted.stderr.readline())
        assert lines[-1], "".join(lines)
    interrupted.send_signal(signal.SIGINT)
    stdout, stderr = interrupted.communicate(timeout=120)
    TRANSCRIPTS.extend([*lines, stdout, stderr])
    assert interrupted.returncode == Exit.INTERRUPTED, stderr
    assert json.loads(stdout)["error"]["type"] in ("Cancelled", "KeyboardInterrupt")
    assert json.loads(run("status", "cli-f-play", "-o", "json").stdout)["runs"][-1]["outcome"] == "interrupted"
    assert run("destroy", "cli-f-play", "--yes").returncode == 0


def test_progress_and_summary_in_a_terminal(sandbox, info, tmp_path):
    """A person at a terminal: step lines while it runs, then the summary table (checked in a pty)."""
    import pexpect

    env = dict(os.environ) | info.environment()
    env.update(UMC_STATE_DIR=str(tmp_path / "state"), PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
               TERM="xterm-256color", COLUMNS="120", LINES="40")  # fmt: skip
    child = pexpect.spawn("umc-infra", ["provision", "linux-server", "-d", "cli-pty", "-p", "instances=1"], env=env,
                          encoding="utf-8", timeout=300, dimensions=(40, 120))  # fmt: skip
    child.logfile_read = transcript = __import__("io").StringIO()
    child.expect(r"terraform\.apply\.vm\s+[\d.]+ s")  # progress while it runs
    child.expect(r"cli-pty-1\s+.\s+127\.0\.1\.\d+")  # the summary table's host row
    child.expect(r"terraform vm: \+1 ~0 -0; ansible base: \d+ changed")
    child.expect(pexpect.EOF)
    child.close()
    TRANSCRIPTS.append(transcript.getvalue())
    assert child.exitstatus == 0
    assert "\x1b[" in transcript.getvalue()  # a terminal: the live display redrew in place
    from umc_infra import destroy

    destroy("cli-pty", settings=info.settings(state_dir=tmp_path / "state"))


def test_no_secret_in_anything_the_cli_printed(info, cli_env):
    """The scan: the sandbox's real credentials appear nowhere in this module's output, in any mode."""
    assert len(TRANSCRIPTS) > 20
    control = subprocess.run(["umc-infra", "sandbox", "env"], env=cli_env, capture_output=True, text=True, check=True)
    assert info.vault_token.get_secret_value() in control.stdout  # the scan sees a secret printed on purpose
    vsphere = read_secret(info, info.inventory.vault_vsphere_path)["password"]
    key_lines = read_secret(info, info.inventory.vault_ansible_path)["ssh_private_key"].strip().splitlines()[1:-1]
    secrets = [vsphere, *key_lines, info.vault_token.get_secret_value(), info.vault_secret_id.get_secret_value()]
    assert all(len(secret) >= 16 for secret in secrets)
    for text in TRANSCRIPTS:
        for secret in secrets:
            assert secret not in text


# -- every failure typed: no sandbox needed (a local backend, a fake or no Vault) -------------------


@pytest.fixture
def bare_env(tmp_path) -> dict[str, str]:
    """The environment of a CI job with a local backend and no site settings from the sandbox."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMC_", "VAULT_", "AWS_", "VSPHERE_"))}
    env["UMC_STATE_DIR"] = str(tmp_path / "state")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def umc_infra(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `umc-infra` console script of this venv, as a CI job runs it."""
    return subprocess.run(["umc-infra", *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_cli_a_python_tag_in_a_params_file(bare_env, tmp_path, debug):
    marker = tmp_path / "ran"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"name: canary-file-8e2d\ninstances: !!python/object/apply:os.system ['touch {marker}']\n")
    done = umc_infra(bare_env, *(["--debug"] if debug else []), "provision", "linux-server", "-d", "h11-cli-tag",
                     "--params-file", str(params_file), "-o", "json")  # fmt: skip
    assert done.returncode == Exit.BAD_INPUT, done.stderr
    error = json.loads(done.stdout)["error"]  # exactly one JSON document
    (problem,) = error["problems"]
    assert problem["field"] == "--params-file"
    assert problem["message"] == f"{params_file} line 2: a YAML tag that is not plain data (such as !!python/...); " \
                                 "only plain values are read"  # fmt: skip
    assert not marker.exists()
    assert "canary-file-8e2d" not in done.stdout + done.stderr and "os.system" not in done.stdout + done.stderr
    assert ("Traceback" in done.stderr) is debug


SITECUSTOMIZE = """
import os

import umc_infra.run.provisioner


def _broken(self, *args, **kwargs):
    raise RuntimeError(f"injected: the record index is inconsistent (token {os.environ['VAULT_TOKEN']})")


umc_infra.run.provisioner.Provisioner.deployments = _broken
"""


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_cli_an_unexpected_error_is_typed_and_redacted(bare_env, tmp_path, debug):
    """A bug planted at startup (sitecustomize): exit 1, one JSON InternalError, the token never printed."""
    token = "hvs.canary-cli-token-a41f"
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = bare_env | {"PYTHONPATH": str(tmp_path / "inject"), "VAULT_TOKEN": token}
    done = umc_infra(env, *(["--debug"] if debug else []), "deployments", "-o", "json")
    assert done.returncode == Exit.ERROR, done.stderr
    error = json.loads(done.stdout)["error"]
    assert (error["type"], error["cause"], error["exit_code"]) == ("InternalError", "RuntimeError", Exit.ERROR)
    assert error["message"].startswith("[internal] unexpected error in `umc-infra deployments`: RuntimeError: "
                                       "injected: the record index is inconsistent (token ***)")  # fmt: skip
    assert "rerun with --debug" in error["message"]
    assert token not in done.stdout + done.stderr
    assert ("Traceback" in done.stderr) is debug
    if debug:
        assert "in _broken" in done.stderr and "RuntimeError: injected" in done.stderr
    text = umc_infra(env, "deployments")
    assert text.returncode == Exit.ERROR and text.stdout == "" and text.stderr.startswith("error: [internal]")


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_cli_a_vault_that_answers_500(bare_env, debug):
    from tests.unit.core.test_vault_errors import FakeVault

    vault = FakeVault()
    vault.answers = {path: (500, b'{"errors": ["internal error"]}', "application/json") for path in vault.answers}
    served = threading.Thread(target=vault.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    served.start()
    token = "hvs.canary-cli-vault-77c0"
    try:
        done = umc_infra(bare_env | {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": token},
                         *(["--debug"] if debug else []), "provision", "linux-server", "-d", "h11-cli-vault", "-o",
                         "json")  # fmt: skip
    finally:
        vault.shutdown()
        vault.server_close()
    assert done.returncode == Exit.SECRETS, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "SecretError"
    assert f"Vault at {vault.addr} answered 500 (internal server error: internal error) while logging in with " \
           "a token to read kv/data/" in error["message"]  # fmt: skip
    assert token not in done.stdout + done.stderr
    assert ("Traceback" in done.stderr) is debug


def test_cli_a_usage_error_with_json_output(bare_env):
    done = umc_infra(bare_env, "provision", "-o", "json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"] == {"type": "MissingParameter", "exit_code": 2, "step": "usage",
                                                "message": "Missing argument 'blueprint'."}  # fmt: skip
    assert "Missing argument" in done.stderr and "Traceback" not in done.stderr
