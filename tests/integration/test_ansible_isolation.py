"""What a playbook can reach, on the sandbox: no inherited secret, no orphan, and only the pinned host keys.

- A blueprint package's playbook (``tests/fixtures/iso-blueprints``: ``linux-server`` plus a probe) writes,
  on the guest, what ``lookup('env', ...)`` returns for the runner's secrets; with secret-looking canaries
  in this process's environment none of them may arrive. The control runs the same probe with the
  environment minimisation switched off and finds them.
- ``ansible-playbook`` stops when the process that started it is SIGKILLed; the control, started without
  the launcher, runs on as an orphan.
- A guest whose host key is regenerated is refused: :func:`known_hosts` raises :class:`HostKeyChanged`, and
  SSH with the pinned keys does not connect.

Deployments are named ``iso-*``, the state is local to the test, and addresses come from
127.0.1.250-127.0.1.252, so other runs on the same sandbox are not touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from umc_infra import HostKeyChanged, PlaybookError, destroy, provision
from umc_infra import private as _private
from umc_infra.ansible import hostkeys as _hostkeys
from umc_infra.ansible import runner as _ansible
from umc_infra.ansible.inventory import Host, Inventory
from umc_infra.ansible.runner import Ansible
from umc_infra.process import Redactor
from umc_infra.state.store import LocalStore

from .conftest import destroy_vm, read_secret, vm_names

PREFIX = "iso-"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "iso-blueprints"
PLAYBOOKS = FIXTURES / "playbooks"
PROBED = ("VAULT_TOKEN", "UMC_VAULT_SECRET_ID", "UMC_VAULT_ROLE_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
          "VAULT_ADDR", "HOME", "PATH")  # fmt: skip
PARAMS = {"instances": 1}


@pytest.fixture(scope="module")
def site(info, tmp_path_factory):
    """Sandbox settings with a local state of this module, its own address range and the fixture blueprints."""
    for name in vm_names(info, PREFIX):  # left by an earlier run that died: they would hold our addresses
        destroy_vm(info, name)
    settings = info.settings(
        state_dir=tmp_path_factory.mktemp("iso-state"), backend="local", ip_pool="127.0.1.250-127.0.1.252"
    )
    return settings.model_copy(update={"blueprint_path": [FIXTURES]})


@pytest.fixture(scope="module")
def probe_deployment(site):
    """The probe's deployment, destroyed when the module's tests are done."""
    yield "iso-env"
    with contextlib.suppress(Exception):
        destroy("iso-env", settings=site)


@pytest.fixture
def canaries(monkeypatch):
    """Secret-looking values in this process's environment, as a CI runner or portal worker has them."""
    values = {
        "VAULT_TOKEN": f"hvs.CAESI{secrets.token_urlsafe(24)}",
        "UMC_VAULT_SECRET_ID": str(uuid.uuid4()),
        "UMC_VAULT_ROLE_ID": str(uuid.uuid4()),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)[:40],
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "VAULT_ADDR": f"http://127.0.0.1:1/canary-{secrets.token_hex(6)}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _probe(site, sandbox, deployment: str) -> tuple[dict[str, str], str]:
    """Provision the probe blueprint; what the probe playbook saw, by name, and the guest file as it is."""
    result = provision("iso-probe", PARAMS, deployment=deployment, settings=site)
    (host,) = result.hosts
    recap = result.ansible["env-probe"].hosts[host.name]
    assert recap.ok >= 1 and recap.failed == 0  # the play recap is read back (its event is the one written)
    text = (sandbox.guest_root(host.ip) / "root" / "umc-env-probe").read_text()
    seen = dict(line.split("=", 1) for line in text.splitlines())
    assert sorted(seen) == sorted(PROBED)  # the probe ran and wrote every name
    return seen, text


def test_no_inherited_secret_reaches_a_playbook(site, sandbox, probe_deployment, canaries):
    seen, text = _probe(site, sandbox, probe_deployment)
    for name, value in canaries.items():
        assert value not in text, name
        assert seen[name] == "", name
    assert seen["PATH"] == f"{Path(_ansible.ansible_playbook()).parent}:/usr/local/bin:/usr/bin:/bin"
    home = Path(seen["HOME"])
    assert home.name == "home" and home.parent.name.startswith("umc-ansible-")  # the playbook's private dir
    assert not home.exists()  # removed with it when the playbook ended


def test_control_the_probe_finds_inherited_secrets_without_the_minimal_environment(
    site, sandbox, probe_deployment, canaries, monkeypatch
):
    """The control: ansible-runner's own environment handling (a copy of os.environ) hands every canary on."""

    def inherit(config, env):
        config.envvars = dict(env)
        config.prepare()

    monkeypatch.setattr(_ansible, "prepare_isolated", inherit)
    seen, _ = _probe(site, sandbox, probe_deployment)
    assert {name: seen[name] for name in canaries} == canaries


# -- no orphan ----------------------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from pydantic import SecretStr
from umc_infra.ansible import runner as _ansible
from umc_infra.ansible.runner import Ansible
from umc_infra.ansible.inventory import Host, Inventory
from umc_infra.process import Redactor
from umc_infra.settings import Settings

run_dir, playbooks, seconds, armed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "armed"
if not armed:  # the control: ansible-playbook started directly, as ansible-runner does by default
    _ansible.wrapper_script = lambda directory, target, name: Path(target)
key = SecretStr("-----BEGIN OPENSSH PRIVATE KEY-----\\nunused\\n-----END OPENSSH PRIVATE KEY-----")
ansible = Ansible(Settings(), lambda name: playbooks / f"{name}.yml", on_event=lambda e: print(repr(e), flush=True),
                  redactor=Redactor([key]), deployment="iso-orphan", private_dir=run_dir)
inventory = Inventory(hosts=(Host(name="iso-orphan-1", ip="127.0.1.253", groups=("linux",), module="vm"),))
with ansible:
    ansible.run("wait", inventory=inventory, hosts="all", user="root", ssh_key=key, variables={"seconds": seconds})
"""


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
    return found


def _process_state(pid: int) -> str:
    """A process's state, parent, group, session and signal masks (what kept it alive), or why not readable."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text().splitlines()
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError as exc:
        return f"gone ({exc.strerror})"
    fields = stat[stat.rindex(")") + 2 :].split()
    wanted = ("State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return " ".join([f"pgrp={fields[2]} sid={fields[3]}", *(line for line in status if line.split(":")[0] in wanted)])


def _kill_mid_playbook(*, armed: bool) -> tuple[list[int], list[int]]:
    """SIGKILL a process while its playbook runs a task; the playbook's processes and tasks left 5 s later."""
    run_dir = Path(tempfile.mkdtemp(prefix="iso-", dir=_private.private_root()))
    # Names the task's ``sleep`` among all processes. Ends in 7: ``sleep`` gets the number, not the text
    # (``120.5`` for ``120.50``).
    seconds = f"120.{secrets.randbelow(10**5) * 10 + 7:06d}"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(run_dir), str(PLAYBOOKS), seconds, "armed" if armed else "plain"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        printed = []
        for line in child.stdout:
            printed.append(line)
            if "status='started'" in line:
                break
        deadline = time.monotonic() + 60
        while not _pids_mentioning(f"sleep {seconds}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _pids_mentioning(str(run_dir)) and _pids_mentioning(f"sleep {seconds}"), "".join(printed[-20:])
        child.kill()
        child.wait(timeout=10)
        time.sleep(5)
        left = _pids_mentioning(str(run_dir)), _pids_mentioning(f"sleep {seconds}")
        if any(left):  # what a leftover is doing, for the failure's message (a case seen once under the suite's load)
            for pid in {*left[0], *left[1]}:
                print(f"left: {pid} {_process_state(pid)}")
        return left
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait(timeout=10)
        for pid in _pids_mentioning(str(run_dir)):  # the control's orphans: stop them the way the launcher would
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 15
        while _pids_mentioning(str(run_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _pids_mentioning(str(run_dir)) + _pids_mentioning(f"sleep {seconds}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_ansible_playbook_stops_when_its_starter_is_killed():
    playbook, task = _kill_mid_playbook(armed=True)
    assert (playbook, task) == ([], [])


def test_control_without_the_launcher_ansible_playbook_runs_on_as_an_orphan():
    playbook, task = _kill_mid_playbook(armed=False)
    assert playbook and task


# -- host keys ----------------------------------------------------------------------------------------


def _regenerate_host_keys(sandbox, ip: str) -> None:
    """New host keys in the guest, then its sshd re-reads them (SIGHUP makes sshd re-execute itself)."""
    root = sandbox.guest_root(ip)  # /proc/<sshd pid>/root
    for key in (root / "etc" / "ssh").glob("ssh_host_*_key*"):
        key.unlink()
    subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], check=True, capture_output=True, timeout=60,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # fmt: skip
    os.kill(int(root.parent.name), signal.SIGHUP)


def _ping(site, key: SecretStr, host: Host, known_hosts: str) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="iso-", dir=_private.private_root()))
    ansible = Ansible(site, lambda name: PLAYBOOKS / f"{name}.yml", on_event=lambda e: None,
                      redactor=Redactor([key]), deployment="iso-keys", private_dir=run_dir)  # fmt: skip
    try:
        with ansible:
            ansible.run("ping", inventory=Inventory(hosts=(host,)), hosts="all", user="root", ssh_key=key,
                        variables={}, known_hosts=known_hosts)  # fmt: skip
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_regenerated_host_key_is_refused_until_forgotten(site, sandbox, info, tmp_path):
    deployment = "iso-keys"
    try:
        result = provision("linux-server", PARAMS, deployment=deployment, settings=site)
        (host,) = result.hosts
        name, ip = host.name, host.ip
        key = SecretStr(read_secret(info, info.inventory.vault_ansible_path)["ssh_private_key"])
        store = LocalStore(tmp_path / "pins")  # pins of this test alone, whatever the orchestrator pins
        served = (sandbox.guest_root(ip) / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]

        first = _hostkeys.known_hosts(store, deployment, [(name, ip, None)], recreated=())
        assert first == f"{ip} {served[0]} {served[1]}\n"  # what the guest's sshd really serves
        assert _hostkeys.known_hosts(store, deployment, [(name, ip, None)], recreated=()) == first
        _ping(site, key, host, first)  # SSH with the pinned key alone connects

        _regenerate_host_keys(sandbox, ip)
        pinned = tuple(line.split(" ", 1)[1] for line in first.splitlines())
        deadline = time.monotonic() + 30
        while _hostkeys.scan(ip, 22, timeout_s=5) in ((), pinned):  # () while sshd re-executes itself
            assert time.monotonic() < deadline, "sshd did not pick up its new host key"
            time.sleep(0.5)
        new = (sandbox.guest_root(ip) / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert new != served

        with pytest.raises(HostKeyChanged) as changed:
            _hostkeys.known_hosts(store, deployment, [(name, ip, None)], recreated=())
        error = changed.value
        assert (error.deployment, error.host, error.ip, error.step) == (deployment, name, ip, "ssh")
        assert error.pinned == (_hostkeys.fingerprint(" ".join(served)),)
        assert error.presented == (_hostkeys.fingerprint(" ".join(new)),)
        assert error.pinned[0] in str(error) and error.presented[0] in str(error) and "forget" in str(error)
        with pytest.raises(PlaybookError) as refused:  # and SSH itself refuses the host with the old pin
            _ping(site, key, host, first)
        assert [h for h, _, _ in refused.value.failures] == [name]

        assert _hostkeys.forget(store, deployment, name) == [name]
        second = _hostkeys.known_hosts(store, deployment, [(name, ip, None)], recreated=())
        assert second == f"{ip} {new[0]} {new[1]}\n"
        _ping(site, key, host, second)
        assert _hostkeys.known_hosts(store, deployment, [(name, ip, None)], recreated=(name,)) == second
    finally:
        with contextlib.suppress(Exception):
            destroy(deployment, settings=site)
