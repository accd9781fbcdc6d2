"""``umc-infra doctor`` against the sandbox: a healthy site passes; each broken setting fails its own check with
its own message and fix, the checks that need it are skipped, and no secret shows in what it prints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leaks import leaks, sandbox_secrets
from tests.unit.core.conftest import HeaderDroppingProxy

UMC = str(Path(sys.executable).parent / "umc-infra")
PER_DEPLOYMENT = "secret kv/data/apps/{deployment}#db_password"


@pytest.fixture(scope="module")
def secrets(sandbox, info) -> list[str]:
    return sandbox_secrets(sandbox, info)


def doctor(info, tmp_path: Path, **changes: str | None) -> tuple[int, dict[str, dict[str, str]], str]:
    env = dict(os.environ) | info.environment() | {"UMC_STATE_DIR": str(tmp_path / "state")}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([UMC, "doctor", "-o", "json"], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]} if done.stdout.strip() else {}
    return done.returncode, checks, done.stdout + done.stderr


def test_a_healthy_sandbox_passes_every_check(info, tmp_path, secrets):
    code, checks, printed = doctor(info, tmp_path)
    assert code == 0, printed
    assert {"terraform", "provider", "vault", "vault.auth", "secret kv/data/umc/vsphere#password",
            "state.bucket", "state.lock_table", "state.conditional_writes", "vcenter", "vcenter.datacenter",
            "vcenter.host", "vcenter.datastore", "vcenter.network", "vcenter.folder",
            "vcenter.template", "vcenter.windows_template", "secret kv/data/umc/windows#admin_password",
            "secret kv/data/umc/windows#join_password"} <= set(checks)  # fmt: skip
    assert {name for name, c in checks.items() if c["status"] != "ok"} == {PER_DEPLOYMENT}
    assert not leaks(secrets, printed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BROKEN = {
    "no terraform": ({"UMC_TERRAFORM_BINARY": "/nonexistent/terraform"}, "terraform", "UMC_TERRAFORM_BINARY",
                     ["provider"]),
    "vault down": ({"VAULT_ADDR": "http://127.0.0.1:{port}"}, "vault", "cannot be reached",
                   ["vault.auth", "secret kv/data/umc/vsphere#user", "vcenter"]),
    "wrong approle secret": ({"VAULT_TOKEN": None, "UMC_VAULT_SECRET_ID": "0f9c2d3e-wrong-secret-id-0000"},
                             "vault.auth", "refused", ["secret kv/data/umc/vsphere#user", "vcenter"]),
    "a secret that is not there": ({"UMC_VSPHERE_CREDENTIALS": "kv/data/umc/nosuch"},
                                   ("secret kv/data/umc/nosuch#user", "secret kv/data/umc/nosuch#password"),
                                   "does not exist", ["vcenter"]),
    "no bucket": ({"UMC_STATE_BUCKET": "no-such-bucket"}, "state.bucket", "no-such-bucket",
                  ["state.conditional_writes"]),
    "no lock table": ({"UMC_LOCK_TABLE": "no-such-table"}, "state.lock_table", "ResourceNotFound", []),
    "no datastore": ({"UMC_VSPHERE_DATASTORE": "NoSuchDS"}, "vcenter.datastore", "no datastore 'NoSuchDS'", []),
    "no template": ({"UMC_VSPHERE_TEMPLATE": "templates/nothing"}, "vcenter.template", "templates/nothing", []),
    "no windows template": ({"UMC_VSPHERE_WINDOWS_TEMPLATE": "templates/nothing-win"}, "vcenter.windows_template",
                            "templates/nothing-win", []),
    "no folder": ({"UMC_VSPHERE_FOLDER": "elsewhere"}, "vcenter.folder", "no folder 'elsewhere'", []),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_each_broken_setting_fails_its_own_check(info, tmp_path, secrets, case):
    changes, failing, says, skipped = BROKEN[case]
    port = free_port()
    changes = {k: v.format(port=port) if v else v for k, v in changes.items()}
    code, checks, printed = doctor(info, tmp_path, **changes)
    assert code == 9, printed
    own = set(failing) if isinstance(failing, tuple) else {failing}
    assert {name for name, c in checks.items() if c["status"] == "failed"} == own, printed  # its own, only
    for name in own:
        assert says in checks[name]["detail"] + checks[name]["fix"]
        assert checks[name]["fix"]  # and what to do
    assert all(checks[name]["status"] == "skipped" for name in skipped)
    assert not leaks(secrets, printed)


def test_an_s3_endpoint_that_ignores_conditional_writes_fails_doctor(info, tmp_path, secrets):
    with HeaderDroppingProxy(info.s3_endpoint, dropped=frozenset({"if-none-match", "if-match"})) as proxy:
        code, checks, printed = doctor(info, tmp_path, UMC_S3_ENDPOINT=proxy.endpoint, AWS_ENDPOINT_URL=proxy.endpoint)
    assert code == 9, printed
    assert {name for name, c in checks.items() if c["status"] == "failed"} == {"state.conditional_writes"}
    assert "If-None-Match: * on PUT was ignored" in checks["state.conditional_writes"]["detail"]
    assert not leaks(secrets, printed)
