"""A site's modern Terraform (1.6 and up; these machines' image has 1.11 in /usr/local/bin) on the S3 backend.

Every address a run reaches must be one the settings name: an HTTP(S) proxy on loopback is set for the run, so
any call to another address (public AWS IAM and STS for an account lookup, instance metadata, a registry) goes
to the proxy and is recorded, and refused. Loopback addresses (the sandbox) are reached directly.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterator

import pytest

from umc_infra import RunOptions, Settings, destroy, plan, provision
from umc_infra.terraform.argv import argv_init
from umc_infra.terraform.backend import backend
from umc_infra.terraform.mirror import version_numbers

MODERN_S3 = (1, 6, 0)


def modern_terraform() -> str | None:
    """A Terraform of 1.6 or newer outside the venv, or None."""
    for candidate in ("/usr/local/bin/terraform", "/usr/bin/terraform"):
        if os.access(candidate, os.X_OK):
            shown = subprocess.run([candidate, "version", "-json"], capture_output=True, text=True, timeout=60,
                                   env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
            if shown.returncode == 0 and version_numbers(json.loads(shown.stdout)["terraform_version"]) >= MODERN_S3:
                return candidate
    return None


MODERN = modern_terraform()
pytestmark = pytest.mark.skipif(MODERN is None, reason="no Terraform 1.6 or newer in /usr/local/bin or /usr/bin")


class Recorder(socketserver.ThreadingTCPServer):
    """An HTTP proxy that records the first line of every request (``CONNECT host:443``) and refuses it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.seen: list[str] = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                self.seen.append(handler.rfile.readline().decode(errors="replace").strip())
                handler.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def recorder(monkeypatch) -> Iterator[Recorder]:
    proxy = Recorder()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # this process's own calls to the sandbox: direct
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.fixture
def site(info, tmp_path) -> Settings:
    assert MODERN is not None
    return info.settings(state_dir=tmp_path / "state", ip_pool="127.0.1.235-127.0.1.239", terraform_binary=MODERN)


def test_provision_plan_and_destroy_with_a_modern_terraform_reach_only_the_named_addresses(site, recorder):
    assert site.backend == "s3"
    d = "modern-tf"
    made = provision("linux-server", {"instances": 1}, deployment=d, settings=site)
    (host,) = made.hosts
    assert (host.name, host.ip, made.terraform["vm"].add) == (f"{d}-1", "127.0.1.235", 1)

    again = plan("linux-server", deployment=d, settings=site)
    assert again.resources == () and not again.changed  # converged: a no-change plan

    gone = destroy(d, settings=site, options=RunOptions(lock_timeout_s=30))
    assert (gone.terraform["vm"].remove, gone.released_addresses) == (1, ("127.0.1.235",))
    assert recorder.seen == []  # nothing but the sandbox's loopback addresses


def test_control_the_settings_before_1_6_make_a_modern_terraform_ask_public_aws(site, recorder, tmp_path):
    """Without the endpoints block and skip_requesting_account_id, 1.6+ looks up the account at AWS IAM and STS."""
    assert MODERN is not None and site.s3_secret_access_key is not None
    block, config = backend(site, deployment="modern-control", module="vm", version=(1, 0, 3))
    workdir = tmp_path / "control"
    workdir.mkdir()
    (workdir / "backend.tf.json").write_text(json.dumps(block))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "CHECKPOINT_DISABLE": "1",
           "AWS_ACCESS_KEY_ID": str(site.s3_access_key_id),
           "AWS_SECRET_ACCESS_KEY": site.s3_secret_access_key.get_secret_value(),
           **{k: os.environ[k] for k in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")}}  # fmt: skip
    init = subprocess.run(argv_init(MODERN, config | {"max_retries": "1"}), cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert init.returncode != 0 and "account" in init.stderr.lower()
    assert {line.split()[1].split(":")[0] for line in recorder.seen} >= {"iam.amazonaws.com"}


def test_the_provider_at_its_current_source_address_from_the_mirror(site):
    """``vmware/vsphere``, where the provider lives now: the module is pointed there (its version kept) and the
    mirror carries it under that address; a provision, a no-change plan and a destroy work with it."""
    moved = site.model_copy(update={"vsphere_provider_source": "vmware/vsphere", "backend": "local",
                                    "ip_pool": "127.0.1.236-127.0.1.239"})  # fmt: skip
    d = "modern-provider"
    made = provision("linux-server", {"instances": 1}, deployment=d, settings=moved)
    assert made.terraform["vm"].add == 1
    workdir = moved.state_dir / "work" / d / "vm"
    override = json.loads((workdir / "umc_provider_override.tf.json").read_text())
    assert override["terraform"]["required_providers"]["vsphere"] == {"source": "vmware/vsphere", "version": "2.0.2"}
    assert 'provider "registry.terraform.io/vmware/vsphere"' in (workdir / ".terraform.lock.hcl").read_text()
    assert plan("linux-server", deployment=d, settings=moved).resources == ()
    destroy(d, settings=moved)
